"""The local control plane: moto over TLS with a local CA, and a faithful TLS-only bucket policy.

Real HTTP(S) requests with boto3 against the session's control-plane process. Test code
may use boto3 directly: these tests check the emulator itself, not the product.
"""


import json
import uuid

import boto3
import pytest
from botocore.config import Config

from ec2mpi.localcloud.fidelity import evaluate_condition_block

_CFG = Config(retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})


def _s3(endpoint, verify=None):
    return boto3.client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, verify=verify, config=_CFG
    )


def _tls_only_policy(bucket):
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})


def _denied(exc_info):
    err = exc_info.value.response
    return (
        err["Error"]["Code"] == "AccessDenied" and err["ResponseMetadata"]["HTTPStatusCode"] == 403
    )


@pytest.fixture
def hardened_bucket(controlplane):
    """A bucket hardened like the product's key store: BPA, default encryption, TLS-only policy."""
    s3 = _s3(controlplane.endpoint, controlplane.ca_path)
    bucket = "cp-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_bucket_policy(Bucket=bucket, Policy=_tls_only_policy(bucket))
    return bucket


def test_condition_semantics():
    ctx_http, ctx_tls = {"aws:SecureTransport": "false"}, {"aws:SecureTransport": "true"}
    tls_only = {"Bool": {"aws:SecureTransport": "false"}}
    assert evaluate_condition_block(tls_only, ctx_http)
    assert not evaluate_condition_block(tls_only, ctx_tls)
    assert not evaluate_condition_block(tls_only, {})  # missing key: not met
    assert evaluate_condition_block(
        {"Bool": {"aws:securetransport": False}}, ctx_http
    )  # JSON bool, key case
    assert evaluate_condition_block({"BoolIfExists": {"aws:SecureTransport": "false"}}, {})
    assert evaluate_condition_block({"Null": {"aws:SecureTransport": "true"}}, {})
    assert not evaluate_condition_block({"Null": {"aws:SecureTransport": "true"}}, ctx_tls)
    assert evaluate_condition_block({"StringNotEquals": {"k": ["a", "b"]}}, {"k": "c"})
    assert not evaluate_condition_block({"StringNotEquals": {"k": ["a", "b"]}}, {"k": "b"})
    assert evaluate_condition_block({"StringNotEquals": {"k": "a"}}, {})  # negated: missing key met
    assert evaluate_condition_block(
        {"StringLike": {"k": ["clusters/*/id_?25519"]}}, {"k": "clusters/x/id_e25519"}
    )
    assert not evaluate_condition_block(
        {"StringLike": {"k": "a.*"}}, {"k": "abc"}
    )  # '.' is literal
    assert not evaluate_condition_block(
        {"StringEquals": {"k": "a"}, "Bool": {"b": "true"}}, {"k": "a", "b": "false"}
    )
