"""S3 ExpectedBucketOwner is enforced as on AWS (fidelity.py item 5), over HTTPS.

The other account's bucket is made with credentials from STS AssumeRole into a role of
account 999999999999: moto maps those keys to that account, as AWS would.
"""
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

OTHER, OURS = "999999999999", "123456789012"
_CFG = Config(retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})


def _s3(cp, **creds):
    return boto3.client("s3", region_name="us-east-1", endpoint_url=cp.endpoint,
                        verify=cp.ca_path, config=_CFG, **creds)


@pytest.fixture
def other_account(controlplane):
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=controlplane.endpoint,
                       verify=controlplane.ca_path, config=_CFG)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{OTHER}:role/other",
                            RoleSessionName="fidelity")["Credentials"]
    other = _s3(controlplane, aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"])
    assert boto3.client(
        "sts", region_name="us-east-1", endpoint_url=controlplane.endpoint,
        verify=controlplane.ca_path, aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"],
    ).get_caller_identity()["Account"] == OTHER
    return other


def _denied(call, **kwargs):
    with pytest.raises(ClientError) as e:
        call(**kwargs)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403, err
    return err["Error"]["Code"]


def test_expected_bucket_owner_of_another_accounts_bucket(controlplane, other_account):
    ours, theirs = _s3(controlplane), other_account
    bucket = "fo-" + uuid.uuid4().hex[:12]
    theirs.create_bucket(Bucket=bucket)
    theirs.put_object(Bucket=bucket, Key="k", Body=b"v", ExpectedBucketOwner=OTHER)

    # the caller expects its own account: AccessDenied, and nothing written
    _denied(ours.head_bucket, Bucket=bucket, ExpectedBucketOwner=OURS)  # HEAD: no body
    assert _denied(ours.put_object, Bucket=bucket, Key="k", Body=b"overwritten",
                   ExpectedBucketOwner=OURS) == "AccessDenied"
    assert _denied(ours.get_object, Bucket=bucket, Key="k",
                   ExpectedBucketOwner=OURS) == "AccessDenied"
    assert _denied(ours.list_objects_v2, Bucket=bucket,
                   ExpectedBucketOwner=OURS) == "AccessDenied"
    assert _denied(ours.delete_object, Bucket=bucket, Key="k",
                   ExpectedBucketOwner=OURS) == "AccessDenied"
    assert _denied(theirs.head_object, Bucket=bucket, Key="k",
                   ExpectedBucketOwner=OURS) == "403"

    # the right owner: works
    theirs.head_bucket(Bucket=bucket, ExpectedBucketOwner=OTHER)
    assert theirs.get_object(Bucket=bucket, Key="k",
                             ExpectedBucketOwner=OTHER)["Body"].read() == b"v"
    theirs.put_object(Bucket=bucket, Key="k2", Body=b"w", ExpectedBucketOwner=OTHER)
    assert theirs.list_objects_v2(Bucket=bucket, ExpectedBucketOwner=OTHER)["KeyCount"] == 2


def test_expected_bucket_owner_of_our_own_bucket(controlplane):
    s3 = _s3(controlplane)
    bucket = "fo-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    s3.head_bucket(Bucket=bucket, ExpectedBucketOwner=OURS)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v", ExpectedBucketOwner=OURS)
    assert s3.get_object(Bucket=bucket, Key="k", ExpectedBucketOwner=OURS)["Body"].read() == b"v"
    s3.head_bucket(Bucket=bucket)  # no header: no check
    assert _denied(s3.get_object, Bucket=bucket, Key="k",
                   ExpectedBucketOwner=OTHER) == "AccessDenied"
    assert _denied(s3.get_bucket_tagging,
                   Bucket=bucket, ExpectedBucketOwner=OTHER) == "AccessDenied"

    # CopyObject checks the source bucket's owner too
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "k"},
                   ExpectedBucketOwner=OURS, ExpectedSourceBucketOwner=OURS)
    assert _denied(s3.copy_object, Bucket=bucket, Key="copy2",
                   CopySource={"Bucket": bucket, "Key": "k"},
                   ExpectedSourceBucketOwner=OTHER) == "AccessDenied"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["copy", "k"]
