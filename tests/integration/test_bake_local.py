"""`ec2mpi --local bake-image` (issue 13, item 3): the real builder user-data runs on a local
node (bake-ami.sh included: the package-manager stub, pip from the bridge's index, the wheel
from the bucket with the builder's role), the daemon captures the builder's prefix as the
new image's, and a 2-node cluster from that image boots like ec2mpi-local-baked (nothing
installed at boot) and runs mpirun across both nodes. Nothing of the bake is left.

Needs root and namespaces (like test_localcloud.py); elsewhere it skips and says why.
"""
import json
import time
from pathlib import Path

import pytest
from localcloud import (
    NEEDS_LOCAL_CLOUD,
    STATE,
    cli,
    cli_json,
    local_env,  # noqa: F401 - the module's local cloud (an autouse fixture)
    on_node,
    wait_for,
)

from ec2mpi import __version__, userdirs

pytestmark = NEEDS_LOCAL_CLOUD


@pytest.fixture(scope="module")
def baked():
    started = time.monotonic()
    made = cli_json("bake-image", "--default", "--timeout", "180", timeout=240)   # ~25 s
    made["client_seconds"] = time.monotonic() - started
    return made


@pytest.fixture(scope="module")
def cluster(baked):
    name = "bakedimg"
    started = time.monotonic()
    res = cli("--json", "create", name, "--nodes", "2", "--storage", "efs", "--yes",
              "--timeout", "240", timeout=300)
    made = json.loads(res.stdout)
    made["seconds"] = time.monotonic() - started
    made["stderr"] = res.stderr
    yield made
    cli("destroy", name, "--yes", check=False, timeout=300)


def test_bake_image_leaves_only_the_image(baked):
    assert baked["image_id"].startswith("ami-") and baked["version"] == __version__
    assert baked["leftovers"] == []
    captured = Path(STATE["dir"], "images", baked["image_id"])
    # the daemon copies the builder's prefix in its poll after CreateImage, before it
    # tears the builder's node down (and before it starts nodes of a later launch)
    wait_for(lambda: (captured / ".captured").exists(), 60, what="the image captured")
    assert (captured / "venv" / "bin" / "ec2mpi-agent").exists()
    wait_for(lambda: not Path(STATE["dir"], "nodes", baked["builder"]).exists(), 30,
             what="the builder's node torn down")
    assert userdirs.default_images("local") == {__version__: baked["image_id"]}
    # the builder instance and its role are gone (status --json of the bake's "cluster"
    # would need a registry item; ask EC2 and IAM through the CLI's own session instead)
    from ec2mpi.aws.iam import BUILDER, NodeRole
    from ec2mpi.aws.images import Images
    from ec2mpi.sessions import open_session
    aws, _ = open_session(True, None, None)
    assert Images(aws, "").image(baked["image_id"])["State"] == "available"
    state = aws.client("ec2").describe_instances(InstanceIds=[baked["builder"]])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    bake_id = next(t["Value"] for t in state["Reservations"][0]["Instances"][0]["Tags"]
                   if t["Key"] == "ec2mpi:bake")
    assert not any(NodeRole(aws, bake_id, BUILDER).exists().values())
    print(f"bake-image (local): {baked['seconds']:.1f} s "
          f"({baked['client_seconds']:.1f} s with the CLI's start)")


def test_a_cluster_from_the_baked_image_installs_nothing_and_runs_mpirun(baked, cluster):
    assert f"using your default image {baked['image_id']}" in cluster["stderr"]
    assert cluster["status"] == "ready" and len(cluster["nodes"]) == 2
    nodes = cli_json("status", "-c", "bakedimg")["nodes"]
    for node in nodes:
        assert node["image"] == baked["image_id"] and node["install_s"] == 0, node
    out = on_node("bakedimg", "master", "mpirun -np 4 --map-by node hostname").stdout.split()
    assert len(out) == 4 and len(set(out)) == 2, out
    print(f"baked image: create -> ready for 2 nodes in {cluster['seconds']:.1f} s")
