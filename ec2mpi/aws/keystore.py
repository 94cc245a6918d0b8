"""The private key-store bucket: one per account and region, objects under clusters/NAME/.

Why so strict: the cluster's private keys live here. The bucket blocks every kind of
public access, encrypts by default and denies any request made without TLS.
"""
from __future__ import annotations

import json

from ..config import ResourceNames, bucket_name
from ..errors import CloudError, explain_client_error
from ..keys import ClusterKeys
from .session import AwsSession, ClientError

PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                       "BlockPublicPolicy": True, "RestrictPublicBuckets": True}


def tls_only_policy(bucket: str) -> dict:
    """Deny every request that did not arrive over TLS (the standard AWS pattern, unweakened)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


class KeyStore:
    def __init__(self, session: AwsSession, bucket: str | None = None):
        self.session = session
        self.s3 = session.client("s3")
        self.bucket = bucket or bucket_name(session.account_id(), session.region)
        self._exists = False
        self._hardened = False

    # -- bucket -----------------------------------------------------------------
    def exists(self) -> bool:
        if self._exists:
            return True       # buckets are not deleted by ec2mpi: once seen, it stays
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            self._exists = True
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise explain_client_error("s3:HeadBucket", err) from err

    def ensure_bucket(self) -> bool:
        """Create and harden the bucket on first use. Returns True if it was created.

        An existing bucket is hardened too unless it already carries our policy (applied
        last), so a crash between CreateBucket and hardening never leaves it open.
        """
        if self.exists():
            if not self._hardened:
                if not self._has_policy():
                    self.harden()
                self._hardened = True
            return False
        region = self.session.region
        kwargs = (
            {}
            if region == "us-east-1"
            else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        )
        try:
            self.s3.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as err:
            if err.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise explain_client_error("s3:CreateBucket", err) from err
        self.harden()
        self._exists = self._hardened = True
        return True

    def _has_policy(self) -> bool:
        try:
            current = json.loads(self.s3.get_bucket_policy(Bucket=self.bucket)["Policy"])
        except ClientError as err:
            if err.response["Error"]["Code"] == "NoSuchBucketPolicy":
                return False
            raise explain_client_error("s3:GetBucketPolicy", err) from err
        return current == tls_only_policy(self.bucket)

    def harden(self) -> None:
        """Block Public Access (all four), default encryption, TLS-only policy. Idempotent."""
        calls = [
            ("s3:PutPublicAccessBlock", lambda: self.s3.put_public_access_block(
                Bucket=self.bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)),
            ("s3:PutBucketEncryption", lambda: self.s3.put_bucket_encryption(
                Bucket=self.bucket, ServerSideEncryptionConfiguration={"Rules": [
                    {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                     "BucketKeyEnabled": True}]})),
            ("s3:PutBucketPolicy", lambda: self.s3.put_bucket_policy(
                Bucket=self.bucket, Policy=json.dumps(tls_only_policy(self.bucket)))),
        ]
        for op, call in calls:
            try:
                call()
            except ClientError as err:
                raise explain_client_error(op, err) from err

    def hardening(self) -> dict:
        """Read the hardening back (for tests and 'doctor'-style checks)."""
        pab = self.s3.get_public_access_block(Bucket=self.bucket)["PublicAccessBlockConfiguration"]
        enc = self.s3.get_bucket_encryption(Bucket=self.bucket)["ServerSideEncryptionConfiguration"]
        policy = json.loads(self.s3.get_bucket_policy(Bucket=self.bucket)["Policy"])
        return {"public_access_block": pab, "encryption": enc, "policy": policy}

    # -- objects ----------------------------------------------------------------
    @staticmethod
    def prefix(cluster: str) -> str:
        return ResourceNames(cluster).key_prefix

    def put(self, cluster: str, name: str, data: bytes) -> str:
        key = self.prefix(cluster) + name
        try:
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=data, ServerSideEncryption="AES256"
            )
        except ClientError as err:
            raise explain_client_error("s3:PutObject", err) from err
        return key

    def get(self, cluster: str, name: str) -> bytes:
        key = self.prefix(cluster) + name
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise CloudError(
                    f"s3://{self.bucket}/{key} is missing",
                    "the cluster's key store was deleted; destroy and re-create the cluster",
                ) from None
            raise explain_client_error("s3:GetObject", err) from err

    def list(self, cluster: str, sub: str = "") -> list[str]:
        keys, kwargs = [], {}
        if not self.exists():
            return keys
        while True:
            try:
                resp = self.s3.list_objects_v2(
                    Bucket=self.bucket, Prefix=self.prefix(cluster) + sub, **kwargs
                )
            except ClientError as err:
                raise explain_client_error("s3:ListObjectsV2", err) from err
            keys += [o["Key"] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return keys
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def delete_prefix(self, cluster: str) -> list[str]:
        """Delete every object under clusters/NAME/ (keys, wheel, s3fs shared data)."""
        keys = self.list(cluster)
        for i in range(0, len(keys), 1000):
            try:
                self.s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            except ClientError as err:
                raise explain_client_error("s3:DeleteObjects", err) from err
        return keys

    # -- what the cluster stores --------------------------------------------------
    def put_keys(self, cluster: str, keys: ClusterKeys) -> None:
        for name, data in keys.objects().items():
            self.put(cluster, name, data)

    def get_keys(self, cluster: str) -> ClusterKeys:
        from ..keys import HOST_KEY, HOST_KEY_PUB, IDENTITY, IDENTITY_PUB

        return ClusterKeys.from_objects(
            {n: self.get(cluster, n) for n in (IDENTITY, IDENTITY_PUB, HOST_KEY, HOST_KEY_PUB)}
        )

    def has_keys(self, cluster: str) -> bool:
        from ..keys import HOST_KEY_PUB, IDENTITY
        present = set(self.list(cluster))
        return {self.prefix(cluster) + IDENTITY, self.prefix(cluster) + HOST_KEY_PUB} <= present

    def put_wheel(self, cluster: str, name: str, data: bytes) -> str:
        """Upload the client's own wheel; returns its key (the user-data's wheel_key)."""
        return self.put(cluster, name, data)

    def shared_prefix(self, cluster: str) -> str:
        """Where s3fs keeps the cluster's shared directory."""
        return self.prefix(cluster) + "shared/"
