"""The stock-image path on the local cloud (issue 13): a node root without the agent, Open MPI
or mpi4py, so user-data runs every install step as on stock Amazon Linux 2023: a venv from
the system python3, pip from the package index the local cloud serves on the bridge, the
ec2mpi wheel from the bucket with the instance role, the version check. Then plain `mpirun`
across the nodes. The host's /opt/ec2mpi stays an empty mount point: each stock node
installs into a prefix of its own.

Needs root and namespaces (like test_localcloud.py); elsewhere it skips and says why.
"""
import os
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
)

pytestmark = NEEDS_LOCAL_CLOUD


@pytest.fixture(scope="module")
def stock():
    name = "stock"
    started = time.monotonic()
    made = cli_json("create", name, "--nodes", "2", "--image", "stock", "--storage", "efs",
                    "--yes", "--timeout", "240", timeout=300)
    made["seconds"] = time.monotonic() - started
    yield made
    cli("destroy", name, "--yes", check=False, timeout=300)


def test_a_stock_node_installs_everything_at_boot_and_runs_mpirun(stock):
    assert stock["status"] == "ready" and len(stock["nodes"]) == 2
    nodes = cli_json("status", "-c", "stock")["nodes"]
    for node in nodes:
        assert node["image"].startswith("ami-") and node["install_s"] > 0, node
        prefix = Path(STATE["dir"], "nodes", node["instance_id"], "prefix")
        assert (prefix / "venv" / "bin" / "ec2mpi-agent").exists()   # its own install
    assert os.listdir("/opt/ec2mpi") == []           # nothing reached the host's prefix
    out = on_node("stock", "master", "mpirun -np 4 --map-by node hostname").stdout.split()
    assert len(out) == 4 and len(set(out)) == 2, out
    text = cli("status", "-c", "stock").stdout
    assert "INSTALLED" in text and nodes[0]["image"] in text
    print(f"stock image: create -> ready for 2 nodes in {stock['seconds']:.1f} s, "
          f"install {max(n['install_s'] for n in nodes):.0f} s per node")
