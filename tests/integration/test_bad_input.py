"""Bad input: one line naming the problem and the fix, exit status 2, and NOTHING created.

"Nothing created" is checked by listing what exists in EC2, IAM, EFS, S3 and the
registry before and after each attempt.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from ec2mpi.aws.session import AwsSession
from ec2mpi.cluster import ClusterManager
from ec2mpi.config import ClusterSpec
from ec2mpi.errors import CloudError, Ec2mpiError, UserError

CIDR = "203.0.113.7/32"


@pytest.fixture(scope="module")
def aws(controlplane):
    return AwsSession(
        region="us-east-1", endpoint_url=controlplane.endpoint, ca_bundle=controlplane.ca_path
    )


@pytest.fixture(scope="module")
def existing(aws):
    """A one-node cluster (master only) that bad requests must leave untouched."""
    name = "exists-" + os.urandom(3).hex()
    ClusterManager(aws).create(
        ClusterSpec(name, nodes=1, ssh_cidr=CIDR, storage="none"), wait=False
    )
    yield name
    ClusterManager(aws).destroy(name)


def world(aws) -> dict:
    """Everything a create could have made, account-wide."""
    ec2, iam, ddb, s3 = (
        aws.client("ec2"),
        aws.client("iam"),
        aws.client("dynamodb"),
        aws.client("s3"),
    )
    out = {
        "instances": sorted(
            i["InstanceId"]
            for r in ec2.describe_instances(
                Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
            )["Reservations"]
            for i in r["Instances"]
        ),
        "security_groups": sorted(
            g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
        ),
        "launch_templates": sorted(
            t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]
        ),
        "fleets": sorted(f["FleetId"] for f in ec2.describe_fleets()["Fleets"]),
        "roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
        "profiles": sorted(
            p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
        ),
        "efs": sorted(
            f["FileSystemId"] for f in aws.client("efs").describe_file_systems()["FileSystems"]
        ),
        "tables": sorted(ddb.list_tables()["TableNames"]),
        "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"]),
    }
    out["objects"] = sorted(o["Key"] for b in out["buckets"]
                            for o in s3.list_objects_v2(Bucket=b).get("Contents", []))
    out["registry"] = sorted(
        (i["pk"]["S"], i["sk"]["S"]) for t in out["tables"] if t == "ec2mpi-registry"
        for i in ddb.scan(TableName=t)["Items"])
    return out


def refused(aws, *calls, kind=UserError, match=None) -> Ec2mpiError:
    """Each call fails with a one-line `kind`; together they change nothing. Returns the last
    error."""
    before = world(aws)
    for call in calls:
        with pytest.raises(kind, match=match) as err:
            call()
        text = str(err.value)
        assert text and "\n" not in text and "Traceback" not in text
        assert err.value.exit_status == (2 if kind is UserError else 1)
    assert world(aws) == before, "a refused request created (or removed) something"
    return err.value


def mgr(aws):
    return ClusterManager(aws)


@pytest.mark.parametrize("name", ["", "Demo", "a" * 33, "a/b", "../x", "demo-"])
def test_bad_names_create_nothing(aws, name):
    refused(aws, lambda: mgr(aws).create(ClusterSpec(name, nodes=2, ssh_cidr=CIDR)),
            lambda: mgr(aws).add_nodes(name, 1), lambda: mgr(aws).destroy(name))


@pytest.mark.parametrize("count", [0, -1, "x", "1.5", None])
def test_bad_counts_create_nothing(aws, existing, count):
    refused(aws, lambda: mgr(aws).create(ClusterSpec("fine", nodes=count, ssh_cidr=CIDR)),
            lambda: mgr(aws).add_nodes(existing, count))


def test_unknown_instance_type_is_named(aws, cluster_name):
    err = refused(aws, lambda: mgr(aws).create(
        ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, instance_types="c6i.large,zz9.huge")))
    assert "zz9.huge" in str(err) and "c6i.large" not in err.message


def test_unknown_region(aws, cluster_name):
    far = AwsSession(region="mars-north-9")
    err = refused(aws, lambda: mgr(far).create(ClusterSpec(cluster_name, nodes=1, ssh_cidr=CIDR)))
    assert "mars-north-9" in str(err)


def test_without_ssh_cidr_and_no_public_address_create_refuses(aws, cluster_name, checkip):
    checkip.reply = "not an address"
    try:
        err = refused(aws, lambda: mgr(aws).create(ClusterSpec(cluster_name, nodes=1)))
        assert "--ssh-cidr" in str(err) and err.exit_status == 2
        checkip.reply = "10.0.0.7"          # a private address is not where SSH comes from
        err = refused(aws, lambda: mgr(aws).create(ClusterSpec(cluster_name, nodes=1)))
        assert "--ssh-cidr" in str(err)
        checkip.reply = None                # the service does not answer
        err = refused(aws, lambda: mgr(aws).create(ClusterSpec(cluster_name, nodes=1)))
        assert "--ssh-cidr" in str(err) and "0.0.0.0" not in str(err)
    finally:
        checkip.reply = "198.51.100.23"


def test_name_taken_with_other_settings_names_the_differences(aws, existing):
    err = refused(
        aws,
        lambda: mgr(aws).create(ClusterSpec(existing, nodes=3, ssh_cidr=CIDR, storage="efs")),
        match="already exists with different settings",
    )
    assert "nodes 1 (asked 3)" in str(err) and "storage none (asked efs)" in str(err)
    assert "ec2mpi resize" in str(err)


def test_create_again_with_the_same_settings_makes_nothing_and_says_so(aws, existing):
    before = world(aws)
    st = mgr(aws).create(ClusterSpec(existing, nodes=1, storage="none"), wait=False)
    assert "already existed" in st.notice and st.spec.ssh_cidr == CIDR   # its own SSH range
    assert world(aws) == before


def test_missing_cluster(aws, cluster_name):
    refused(
        aws,
        lambda: mgr(aws).add_nodes(cluster_name, 1),
        lambda: mgr(aws).remove(mgr(aws).plan_removal(cluster_name, 1)),
        lambda: mgr(aws).destroy(cluster_name),
        lambda: mgr(aws).status(cluster_name),
        match="no cluster named",
    )


def test_remove_more_workers_than_exist(aws, existing):
    err = refused(aws, lambda: mgr(aws).remove(mgr(aws).plan_removal(existing, 1)))
    assert "0 worker" in str(err)
    with pytest.raises(UserError, match="not in cluster"):
        mgr(aws).remove(mgr(aws).plan_removal(existing, instance_ids=["i-00000000000000000"]))


def test_aws_refusal_names_call_and_creates_nothing(aws, cluster_name):
    err = refused(
        aws,
        lambda: mgr(aws).create(
            ClusterSpec(cluster_name, nodes=1, ssh_cidr=CIDR, subnet_ids=("subnet-00000000",))
        ),
        kind=CloudError,
    )
    assert "ec2:DescribeSubnets" in str(err) and "InvalidSubnetID" in str(err)


def test_missing_credentials(aws, controlplane, cluster_name):
    """A separate process with every credential source removed."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    }
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    script = textwrap.dedent(f"""
        from ec2mpi.aws.session import AwsSession
        from ec2mpi.cluster import ClusterManager
        from ec2mpi.config import ClusterSpec
        from ec2mpi.errors import Ec2mpiError
        aws = AwsSession(region="us-east-1", endpoint_url={controlplane.endpoint!r},
                         ca_bundle={controlplane.ca_path!r})
        try:
            ClusterManager(aws).create(ClusterSpec({cluster_name!r}, nodes=1, ssh_cidr="{CIDR}"))
        except Ec2mpiError as err:
            print(err.exit_status, err)
    """)
    before = world(aws)
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("2 no AWS credentials found"), out.stdout
    assert world(aws) == before
