"""The builder's user-data (bake-image): bake-ami.sh embedded, parameters quoted, nothing
secret, under EC2's limit; the image name; the user's default image per region and version."""
import re
import subprocess

from ec2mpi import userdirs
from ec2mpi.aws.images import builder_policy
from ec2mpi.cluster.bake import image_name
from ec2mpi.userdata import BAKE_SCRIPT, MAX_BYTES, BakeParams, render_bake

PARAMS = BakeParams(region="us-east-1", bucket="ec2mpi-123456789012-us-east-1",
                    account="123456789012", wheel_key="clusters/bake-1/ec2mpi-1.0-py3-none-any.whl",
                    status_key="clusters/bake-1/bake-status.json", version="1.0",
                    prefix="/opt/ec2mpi")


def test_the_builder_stub_embeds_bake_ami_and_is_valid_bash(tmp_path):
    text = render_bake(PARAMS)
    assert len(text.encode()) < MAX_BYTES and not re.search(r"@[A-Z_]+@", text)
    assert BAKE_SCRIPT.read_text().strip().splitlines()[-1] in text
    assert "STATUS_KEY=clusters/bake-1/bake-status.json" in text
    script = tmp_path / "ud.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_the_builder_may_read_one_object_and_write_one():
    policy = builder_policy(PARAMS.bucket, PARAMS.wheel_key, PARAMS.status_key)
    assert [(s["Action"], s["Resource"]) for s in policy["Statement"]] == [
        (["s3:GetObject"], [f"arn:aws:s3:::{PARAMS.bucket}/{PARAMS.wheel_key}"]),
        (["s3:PutObject"], [f"arn:aws:s3:::{PARAMS.bucket}/{PARAMS.status_key}"])]


def test_image_names_keep_to_the_characters_ami_names_allow():
    assert image_name("1.2.3+dev", 0) == "ec2mpi-1.2.3-dev-19700101000000"


def test_default_images_are_per_region_and_version(tmp_path, monkeypatch):
    monkeypatch.setenv("EC2MPI_CONFIG_DIR", str(tmp_path))
    userdirs.remember_cluster("demo")
    userdirs.remember_image("us-east-1", "1.0", "ami-1")
    userdirs.remember_image("us-east-1", "1.1", "ami-2")
    userdirs.remember_image("local", "1.1", "ami-3")
    assert userdirs.default_images("us-east-1") == {"1.0": "ami-1", "1.1": "ami-2"}
    assert userdirs.default_images("eu-west-1") == {}
    assert userdirs.last_cluster() == "demo"
