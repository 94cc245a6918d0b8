"""The private key-store bucket: one per account and region, objects under clusters/NAME/.

Why so strict: the cluster's private keys live here. The bucket blocks every kind of
public access, encrypts by default and denies any request made without TLS. Its name is
predictable, so anyone could create it first: every call names the expected owner
(ExpectedBucketOwner), and a bucket owned by another account is refused before anything
is uploaded. The keys travel as ONE object (keys.json), so a booting node pays one GET.
"""
from __future__ import annotations

import json

from ..config import ResourceNames, bucket_name
from ..errors import CloudError, explain_client_error
from ..keys import ClusterKeys
from .session import AwsSession, ClientError, error_code

PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                       "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
KEY_BUNDLE = "keys.json"
FOREIGN = ("403", "AccessDenied", "Forbidden")


def tls_only_policy(bucket: str) -> dict:
    """Deny every request that did not arrive over TLS (the standard AWS pattern, unweakened)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


class KeyStore:
    """`owner` is the account the bucket must belong to (the caller's own by default)."""

    def __init__(self, session: AwsSession, bucket: str | None = None, owner: str | None = None):
        self.session = session
        self.s3 = session.client("s3")
        self.owner = owner or session.account_id()
        self.bucket = bucket or bucket_name(self.owner, session.region)
        self._exists = False
        self._hardened = False

    def _call(self, operation: str, method: str, **kwargs):
        """One S3 call on our bucket, always naming its expected owner."""
        try:
            return getattr(self.s3, method)(Bucket=self.bucket, ExpectedBucketOwner=self.owner,
                                            **kwargs)
        except ClientError as err:
            if error_code(err) in FOREIGN and method == "head_bucket":
                raise self._foreign() from err
            raise explain_client_error(operation, err) from err

    def _foreign(self) -> CloudError:
        return CloudError(f"bucket {self.bucket} exists but is not owned by account "
                          f"{self.owner}: refusing to store cluster keys in it",
                          "someone else created this name first; nothing was uploaded")

    # -- bucket -----------------------------------------------------------------
    def exists(self) -> bool:
        """True if our bucket exists; CloudError if a bucket of that name is someone else's."""
        if self._exists:
            return True       # buckets are not deleted by ec2mpi: once seen, it stays
        try:
            self.s3.head_bucket(Bucket=self.bucket, ExpectedBucketOwner=self.owner)
        except ClientError as err:
            if error_code(err) in ("404", "NoSuchBucket", "NotFound"):
                return False
            if error_code(err) in FOREIGN:
                raise self._foreign() from err
            raise explain_client_error("s3:HeadBucket", err) from err
        self._exists = True
        return True

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
        kwargs = ({} if region == "us-east-1"
                  else {"CreateBucketConfiguration": {"LocationConstraint": region}})
        try:
            self.s3.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as err:
            if error_code(err) == "BucketAlreadyExists":
                raise self._foreign() from err
            if error_code(err) != "BucketAlreadyOwnedByYou":
                raise explain_client_error("s3:CreateBucket", err) from err
        self.exists()            # and it is ours: checked before anything goes in
        self.harden()
        self._exists = self._hardened = True
        return True

    def _has_policy(self) -> bool:
        try:
            current = json.loads(self.s3.get_bucket_policy(
                Bucket=self.bucket, ExpectedBucketOwner=self.owner)["Policy"])
        except ClientError as err:
            if error_code(err) == "NoSuchBucketPolicy":
                return False
            raise explain_client_error("s3:GetBucketPolicy", err) from err
        return current == tls_only_policy(self.bucket)

    def harden(self) -> None:
        """Block Public Access (all four), default encryption, TLS-only policy. Idempotent."""
        self._call("s3:PutPublicAccessBlock", "put_public_access_block",
                   PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
        self._call("s3:PutBucketEncryption", "put_bucket_encryption",
                   ServerSideEncryptionConfiguration={"Rules": [
                       {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                        "BucketKeyEnabled": True}]})
        self._call("s3:PutBucketPolicy", "put_bucket_policy",
                   Policy=json.dumps(tls_only_policy(self.bucket)))

    def hardening(self) -> dict:
        """Read the hardening back (for tests and 'doctor'-style checks)."""
        pab = self._call("s3:GetPublicAccessBlock", "get_public_access_block")
        enc = self._call("s3:GetBucketEncryption", "get_bucket_encryption")
        policy = self._call("s3:GetBucketPolicy", "get_bucket_policy")
        return {"public_access_block": pab["PublicAccessBlockConfiguration"],
                "encryption": enc["ServerSideEncryptionConfiguration"],
                "policy": json.loads(policy["Policy"])}

    # -- objects ----------------------------------------------------------------
    @staticmethod
    def prefix(cluster: str) -> str:
        return ResourceNames(cluster).key_prefix

    def put(self, cluster: str, name: str, data: bytes) -> str:
        key = self.prefix(cluster) + name
        self._call("s3:PutObject", "put_object", Key=key, Body=data,
                   ServerSideEncryption="AES256")
        return key

    def get(self, cluster: str, name: str) -> bytes:
        data = self.get_optional(cluster, name)
        if data is None:
            raise CloudError(f"s3://{self.bucket}/{self.prefix(cluster) + name} is missing",
                             "the cluster's key store was deleted; destroy and re-create "
                             "the cluster")
        return data

    def get_optional(self, cluster: str, name: str) -> bytes | None:
        """The object, or None while it does not exist (a status someone else writes)."""
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self.prefix(cluster) + name,
                                      ExpectedBucketOwner=self.owner)["Body"].read()
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                return None
            raise explain_client_error("s3:GetObject", err) from err

    def objects(self, cluster: str, sub: str = "") -> list[dict]:
        """Every object under clusters/NAME/SUB (Key, Size, ...)."""
        out, kwargs = [], {}
        if not self.exists():
            return out
        while True:
            resp = self._call("s3:ListObjectsV2", "list_objects_v2",
                              Prefix=self.prefix(cluster) + sub, **kwargs)
            out += resp.get("Contents", [])
            if not resp.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def list(self, cluster: str, sub: str = "") -> list[str]:
        return [o["Key"] for o in self.objects(cluster, sub)]

    def delete_prefix(self, cluster: str) -> list[str]:
        """Delete every object under clusters/NAME/ (keys, wheel, s3fs shared data)."""
        keys = self.list(cluster)
        for i in range(0, len(keys), 1000):
            self._call("s3:DeleteObjects", "delete_objects", Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        return keys

    # -- what the cluster stores --------------------------------------------------
    def put_keys(self, cluster: str, keys: ClusterKeys) -> None:
        bundle = {name: data.decode() for name, data in keys.objects().items()}
        self.put(cluster, KEY_BUNDLE, json.dumps(bundle).encode())

    def get_keys(self, cluster: str) -> ClusterKeys:
        bundle = json.loads(self.get(cluster, KEY_BUNDLE))
        return ClusterKeys.from_objects({name: text.encode() for name, text in bundle.items()})

    def has_keys(self, cluster: str) -> bool:
        return self.prefix(cluster) + KEY_BUNDLE in set(self.list(cluster))

    def put_wheel(self, cluster: str, name: str, data: bytes) -> str:
        """Upload the client's own wheel; returns its key (the user-data's wheel_key)."""
        return self.put(cluster, name, data)
