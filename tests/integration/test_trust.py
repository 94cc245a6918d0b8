"""Trust boundaries against moto's server (over HTTPS): what ec2mpi refuses to adopt, share or
trust, and the hardening it puts on what it makes.

- IAM is global but clusters are per region: the same cluster name in two regions has two
  sets of node roles, and destroying one leaves the other intact; a role or instance profile
  of our name that is not tagged as ours is refused, never adopted, never deleted.
- The key-store bucket's name is predictable: if another account made it first, create
  stops before anything is uploaded, and an agent never boots from such a bucket.
- Launch templates encrypt the root volume and tag every resource a launch creates; the
  EFS file system admits only the cluster's node roles, over TLS.

The other account (999999999999) acts through credentials from STS AssumeRole into one of its
roles: moto maps those keys to that account, as AWS would (see test_fidelity_s3.py).
"""
from __future__ import annotations

import json
import uuid

import boto3
import pytest
from botocore.config import Config

from ec2mpi.aws.iam import (
    KINDS,
    POLICY_NAME,
    TRUST,
    NodeRole,
    PolicyScope,
    master_policy,
    role_name,
    worker_policy,
)
from ec2mpi.aws.keystore import KEY_BUNDLE, KeyStore
from ec2mpi.aws.session import AwsSession
from ec2mpi.aws.storage import Efs, file_system_policy
from ec2mpi.aws.templates import Templates
from ec2mpi.cluster import ClusterManager
from ec2mpi.config import TAG_CLUSTER, ClusterSpec, bucket_name
from ec2mpi.errors import CloudError, Ec2mpiError
from ec2mpi.keys import ClusterKeys

CIDR = "203.0.113.7/32"
OURS, OTHER = "123456789012", "999999999999"
TAG_REGION = "ec2mpi:region"
# A region no other test of the suite keeps a key-store bucket in: the foreign-bucket test
# needs that bucket name to be free when it starts.
FOREIGN_BUCKET_REGION = "ca-central-1"


def session(cp, region: str) -> AwsSession:
    return AwsSession(region=region, endpoint_url=cp.endpoint, ca_bundle=cp.ca_path)


def manager(aws) -> ClusterManager:
    mgr = ClusterManager(aws)
    mgr.ops.poll_interval = 0.1
    mgr.ops.drain_wait = 0.5
    return mgr


def node_policy(aws, name: str, kind: str) -> dict:
    scope = PolicyScope(name, bucket_name(OURS, aws.region), aws.region, OURS, "efs",
                        launch_template_id="lt-0123456789abcdef0")
    return worker_policy(scope) if kind == "worker" else master_policy(scope)


@pytest.fixture
def other_account(controlplane):
    """An S3 client acting as account 999999999999."""
    cfg = Config(retries={"max_attempts": 1, "mode": "standard"},
                 s3={"addressing_style": "path"})
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=controlplane.endpoint,
                       verify=controlplane.ca_path, config=cfg)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{OTHER}:role/squatter",
                            RoleSessionName="trust")["Credentials"]
    return boto3.client("s3", region_name="us-east-1", endpoint_url=controlplane.endpoint,
                        verify=controlplane.ca_path, config=cfg,
                        aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def public_policy(bucket: str) -> dict:
    """What a squatter would put on the bucket: anyone may read, write and list it."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "Everyone", "Effect": "Allow", "Principal": "*",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}


def squat(other, bucket: str, region: str = "us-east-1") -> None:
    kwargs = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    other.create_bucket(Bucket=bucket, **kwargs)
    other.put_bucket_policy(Bucket=bucket, Policy=json.dumps(public_policy(bucket)),
                            ExpectedBucketOwner=OTHER)


def their_keys(other, bucket: str) -> list[str]:
    return [o["Key"] for o in other.list_objects_v2(
        Bucket=bucket, ExpectedBucketOwner=OTHER).get("Contents", [])]


# --- IAM: one cluster name, two regions ---------------------------------------------------

def test_the_same_cluster_name_in_two_regions_has_separate_roles(controlplane):
    name = "demo"
    east, west = session(controlplane, "us-east-1"), session(controlplane, "eu-west-1")
    try:
        made = {(aws.region, kind): NodeRole(aws, name, kind).ensure(node_policy(aws, name, kind))
                for aws in (east, west) for kind in KINDS}
        assert len({arns[1] for arns in made.values()}) == 4       # four distinct roles
        assert {NodeRole(aws, name, kind).name for aws in (east, west) for kind in KINDS} == {
            role_name(name, region, kind) for region in ("us-east-1", "eu-west-1")
            for kind in KINDS}

        removed = [r for kind in KINDS for r in NodeRole(west, name, kind).delete()]
        assert sorted(removed) == sorted(
            f"{what}/ec2mpi-{name}-eu-west-1-{kind}" for kind in KINDS
            for what in ("role", "instance-profile"))
        for kind in KINDS:
            assert NodeRole(west, name, kind).exists() == {"role": False,
                                                           "instance_profile": False}

        iam = east.client("iam")
        for kind in KINDS:       # us-east-1: roles, profiles and inline policies intact
            role = NodeRole(east, name, kind)
            assert role.exists() == {"role": True, "instance_profile": True}
            assert iam.list_role_policies(RoleName=role.name)["PolicyNames"] == [POLICY_NAME]
            assert role.policy() == node_policy(east, name, kind)
            assert "arn:aws:s3:::ec2mpi-123456789012-us-east-1/clusters/demo/*" in json.dumps(
                role.policy())
            profile = iam.get_instance_profile(InstanceProfileName=role.name)["InstanceProfile"]
            assert [r["RoleName"] for r in profile["Roles"]] == [role.name]
            assert iam.get_role(RoleName=role.name)["Role"]["Arn"] == made[("us-east-1", kind)][1]
            # and ensure again adopts it (ours: same cluster, same region) without a change
            assert role.ensure(node_policy(east, name, kind)) == made[("us-east-1", kind)]
    finally:
        for aws in (east, west):
            for kind in KINDS:
                NodeRole(aws, name, kind).delete()


FOREIGN_TAGS = [
    pytest.param([], id="untagged"),
    pytest.param([{"Key": TAG_CLUSTER, "Value": "other"},
                  {"Key": TAG_REGION, "Value": "us-east-1"}], id="another-cluster"),
    pytest.param(None, id="our-cluster-in-another-region"),
]


@pytest.mark.parametrize("tags", FOREIGN_TAGS)
def test_a_role_of_our_name_that_is_not_ours_is_never_adopted_nor_deleted(aws, cluster_name, tags):
    name = cluster_name
    if tags is None:
        tags = [{"Key": TAG_CLUSTER, "Value": name}, {"Key": TAG_REGION, "Value": "eu-west-1"}]
    iam, role = aws.client("iam"), NodeRole(aws, name, "worker")
    theirs = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]}
    kwargs = {"Tags": tags} if tags else {}
    iam.create_role(RoleName=role.name, AssumeRolePolicyDocument=json.dumps(TRUST), **kwargs)
    iam.put_role_policy(RoleName=role.name, PolicyName="theirs", PolicyDocument=json.dumps(theirs))
    try:
        with pytest.raises(CloudError, match="is not cluster") as err:
            role.ensure(node_policy(aws, name, "worker"))
        assert err.value.exit_status == 1
        # not adopted: no policy of ours, no instance profile, their tags as they were
        assert iam.list_role_policies(RoleName=role.name)["PolicyNames"] == ["theirs"]
        assert role.exists() == {"role": True, "instance_profile": False}
        assert iam.list_role_tags(RoleName=role.name)["Tags"] == tags
        # not deleted either (destroy says why)
        with pytest.raises(CloudError, match="made by someone else"):
            role.delete()
        assert role.exists()["role"]
        assert iam.list_role_policies(RoleName=role.name)["PolicyNames"] == ["theirs"]
    finally:
        iam.delete_role_policy(RoleName=role.name, PolicyName="theirs")
        iam.delete_role(RoleName=role.name)


def test_an_instance_profile_of_our_name_that_is_not_ours_is_refused(aws, cluster_name):
    """The instance profile is what nodes run with: one of our name that someone else made
    (holding their role) is never used and never deleted."""
    name = cluster_name
    iam, role = aws.client("iam"), NodeRole(aws, name, "worker")
    intruder = f"intruder-{uuid.uuid4().hex[:8]}"
    iam.create_role(RoleName=intruder, AssumeRolePolicyDocument=json.dumps(TRUST))
    iam.create_instance_profile(InstanceProfileName=role.name)
    iam.add_role_to_instance_profile(InstanceProfileName=role.name, RoleName=intruder)
    try:
        with pytest.raises(CloudError, match="instance profile .* is not cluster"):
            role.ensure(node_policy(aws, name, "worker"))
        with pytest.raises(CloudError, match="instance profile .* is not cluster"):
            role.delete()
        profile = iam.get_instance_profile(InstanceProfileName=role.name)["InstanceProfile"]
        assert [r["RoleName"] for r in profile["Roles"]] == [intruder]
    finally:
        iam.remove_role_from_instance_profile(InstanceProfileName=role.name, RoleName=intruder)
        iam.delete_instance_profile(InstanceProfileName=role.name)
        iam.delete_role(RoleName=intruder)
        role.delete()       # our role (ensure made it before it met the profile)
    assert role.exists() == {"role": False, "instance_profile": False}


# --- S3: a key-store bucket another account made first -------------------------------------

def test_create_refuses_a_key_store_bucket_owned_by_another_account(
        controlplane, other_account, cluster_name):
    aws = session(controlplane, FOREIGN_BUCKET_REGION)
    bucket = bucket_name(OURS, FOREIGN_BUCKET_REGION)
    assert KeyStore(aws).bucket == bucket
    squat(other_account, bucket, FOREIGN_BUCKET_REGION)
    spec = ClusterSpec(cluster_name, nodes=1, ssh_cidr=CIDR, storage="none")
    try:
        with pytest.raises(Ec2mpiError) as err:
            manager(aws).create(spec, wait=False)
        assert err.value.exit_status == 1
        assert f"bucket {bucket} exists but is not owned by account {OURS}" in str(err.value)
        assert "nothing was uploaded" in str(err.value)
        # nothing reached it, and it was not "hardened" (changed) either
        assert their_keys(other_account, bucket) == []
        assert json.loads(other_account.get_bucket_policy(
            Bucket=bucket, ExpectedBucketOwner=OTHER)["Policy"]) == public_policy(bucket)
    finally:
        other_account.delete_bucket_policy(Bucket=bucket, ExpectedBucketOwner=OTHER)
        other_account.delete_bucket(Bucket=bucket, ExpectedBucketOwner=OTHER)

    # the name is free again: the same create resumes and works
    mgr = manager(aws)
    st = mgr.create(spec, wait=False)
    assert st.status == "ready" and len(st.nodes) == 1
    ks = KeyStore(aws)
    assert ks.has_keys(cluster_name) and all(ks.hardening()["public_access_block"].values())
    assert aws.client("s3").get_bucket_location(Bucket=bucket)["LocationConstraint"] == (
        FOREIGN_BUCKET_REGION)
    assert mgr.destroy(cluster_name).leftovers == []


def test_an_agent_never_reads_keys_from_a_bucket_another_account_owns(
        aws, other_account, cluster_name):
    """A node is told its bucket and its account (user-data); keys planted in a bucket of
    that name by someone else are refused, even where the bucket's policy would serve them."""
    bucket = f"ec2mpi-squat-{uuid.uuid4().hex[:12]}"
    squat(other_account, bucket)
    bundle = {n: d.decode() for n, d in ClusterKeys.generate(cluster_name).objects().items()}
    key = f"clusters/{cluster_name}/{KEY_BUNDLE}"
    other_account.put_object(Bucket=bucket, Key=key, Body=json.dumps(bundle).encode(),
                             ExpectedBucketOwner=OTHER)
    try:
        # the threat is real: asked without the owner check, the planted keys are served
        plain = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        assert json.loads(plain) == bundle
        store = KeyStore(aws, bucket=bucket, owner=OURS)
        with pytest.raises(CloudError, match="AccessDenied"):
            store.get_keys(cluster_name)
        with pytest.raises(CloudError, match="not owned by account"):
            store.exists()
        with pytest.raises(CloudError):
            store.put_keys(cluster_name, ClusterKeys.generate(cluster_name))
        assert their_keys(other_account, bucket) == [key]
        assert json.loads(other_account.get_object(
            Bucket=bucket, Key=key, ExpectedBucketOwner=OTHER)["Body"].read()) == bundle
    finally:
        other_account.delete_object(Bucket=bucket, Key=key, ExpectedBucketOwner=OTHER)
        other_account.delete_bucket_policy(Bucket=bucket, ExpectedBucketOwner=OTHER)
        other_account.delete_bucket(Bucket=bucket, ExpectedBucketOwner=OTHER)


# --- what a cluster's launch templates and file system carry -------------------------------

@pytest.fixture(scope="module")
def efs_cluster(controlplane):
    aws = session(controlplane, "us-east-1")
    name = "trust" + uuid.uuid4().hex[:8]
    manager(aws).create(ClusterSpec(name, nodes=2, ssh_cidr=CIDR, storage="efs"), wait=False)
    yield aws, name
    assert manager(aws).destroy(name).leftovers == []


@pytest.mark.parametrize("kind", KINDS)
def test_launch_templates_encrypt_the_root_volume_and_tag_what_a_launch_creates(efs_cluster,
                                                                              kind):
    aws, name = efs_cluster
    data = Templates(aws, name).launch_template_data(kind)
    image = aws.client("ec2").describe_images(ImageIds=[data["ImageId"]])["Images"][0]
    source = next(m["Ebs"] for m in image["BlockDeviceMappings"]
                  if m["DeviceName"] == image["RootDeviceName"])
    (root,) = data["BlockDeviceMappings"]
    assert root["DeviceName"] == image["RootDeviceName"]
    assert root["Ebs"]["Encrypted"] is True and root["Ebs"]["DeleteOnTermination"] is True
    assert root["Ebs"]["VolumeSize"] == source["VolumeSize"]
    assert root["Ebs"]["VolumeType"] == source["VolumeType"]
    tags = {t["ResourceType"]: t["Tags"] for t in data["TagSpecifications"]}
    launched = {"instance", "volume", "network-interface"}
    # moto echoes CreateLaunchTemplate's own TagSpecifications (launch-template) into the
    # template's data; AWS does not, and ec2mpi never puts it there
    assert launched <= set(tags) <= launched | {"launch-template"}
    assert all({"Key": TAG_CLUSTER, "Value": name} in tags[k] for k in launched)
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1


def test_the_masters_policy_names_its_own_placement_group(efs_cluster):
    aws, name = efs_cluster
    statements = NodeRole(aws, name, "master").policy()["Statement"]
    (use,) = [s for s in statements if s["Sid"] == "UseTheClusterResources"]
    assert f"arn:aws:ec2:us-east-1:{OURS}:placement-group/ec2mpi-{name}" in use["Resource"]
    lt = Templates(aws, name).find_launch_template("worker")
    assert f"arn:aws:ec2:us-east-1:{OURS}:launch-template/{lt}" in use["Resource"]
    assert not any(r.endswith("launch-template/*") for s in statements for r in s["Resource"])


def test_the_file_system_admits_only_the_node_roles_over_tls(efs_cluster):
    """moto stores the policy (Put/DescribeFileSystemPolicy) but enforces nothing: what is
    checked here is the policy EFS is given, read back."""
    aws, name = efs_cluster
    iam, efs = aws.client("iam"), Efs(aws, name)
    fs = efs.find()
    roles = [iam.get_role(RoleName=NodeRole(aws, name, k).name)["Role"]["Arn"] for k in KINDS]
    applied = efs.policy(fs["FileSystemId"])     # create put it there
    assert applied == file_system_policy(fs["FileSystemArn"], roles)
    calls = []
    stop = aws.on_call(lambda service, op: calls.append(op))
    try:
        assert efs.apply_policy(roles, fs_id=fs["FileSystemId"]) == applied  # idempotent
        assert "PutFileSystemPolicy" not in calls
    finally:
        stop()
    (allow,) = [s for s in applied["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"AWS": sorted(roles)}
    assert allow["Condition"] == {"Bool": {"aws:SecureTransport": "true"}}
