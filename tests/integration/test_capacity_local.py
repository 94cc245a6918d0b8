"""Capacity failover on the local cloud, through the real `ec2mpi --local` binary: the
user runs the local cloud out of spot capacity, create fails cleanly below --min-nodes, and
the suggested re-run with --spot-fallback on-demand makes the cluster.

Needs root and namespaces (like test_localcloud.py); elsewhere it skips and says why.
"""
import json

import pytest
from localcloud import (
    NEEDS_LOCAL_CLOUD,
    cli,
    cli_json,
    local_env,  # noqa: F401 - the module's local cloud (an autouse fixture)
)

pytestmark = NEEDS_LOCAL_CLOUD
TYPES = ("c6i.large", "c6a.large", "c5.large")    # the default instance types


@pytest.fixture
def no_spot():
    """No spot capacity for the default types in any zone; unlimited again afterwards."""
    for itype in TYPES:
        cli("local", "capacity", itype, "0", "--spot")
    yield
    for itype in TYPES:
        cli("local", "capacity", itype, "unlimited", "--spot", check=False)


def test_local_capacity_sets_and_lists_pools():
    res = cli("local", "capacity", "c6i.large@us-east-1b", "2", "--on-demand")
    assert "c6i.large  us-east-1b  on-demand  2" in res.stdout
    try:
        listed = cli_json("local", "capacity")["pools"]
        assert {"type": "c6i.large", "az": "us-east-1b", "lifecycle": "on-demand",
                "count": 2} in listed
        bad = cli("local", "capacity", "c6i.large", "lots", check=False)
        assert bad.returncode == 2 and "not a number" in bad.stderr
    finally:
        cli("local", "capacity", "c6i.large@us-east-1b", "unlimited", "--on-demand")
    assert {"type": "c6i.large", "az": "us-east-1b", "lifecycle": "on-demand",
            "count": 2} not in cli_json("local", "capacity")["pools"]


def test_no_spot_left_create_fails_cleanly_then_falls_back_to_on_demand(no_spot):
    name = "cap-local"
    try:
        res = cli("create", name, "--nodes", "3", "--storage", "none", "--no-wait", "--yes",
                  check=False, timeout=180)
        assert res.returncode == 1, res.stderr
        assert "only 1 of 3 node(s) launched" in res.stderr
        assert "c6i.large, c6a.large, c5.large in us-east-1a" in res.stderr
        assert "--spot-fallback on-demand" in res.stderr
        status = cli_json("status", "-c", name)
        assert status["status"] == "creating"
        assert [n for n in status["nodes"] if n["state"] not in ("lost", "terminated")] == []

        res = cli("--json", "create", name, "--nodes", "3", "--storage", "none", "--no-wait",
                  "--yes", "--spot-fallback", "on-demand", timeout=180)
        made = json.loads(res.stdout)
        assert made["status"] == "ready"
        assert sorted(n["lifecycle"] for n in made["nodes"]) == ["on-demand"] * 3
        assert made["launch"]["on_demand"] == 2 and made["launch"]["launched"] == 3
        text = cli("status", "-c", name).stdout
        assert "3 on-demand" in text and "capacity: avoiding" in text
    finally:
        cli("destroy", name, "--yes", check=False, timeout=300)
