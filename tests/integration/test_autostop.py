"""Autostop on the local cloud (issue 14, item 3): an idle cluster terminates every node,
itself included, keeps its keys, registry and shared storage, says so in status, and a
resize brings it back with the same /shared.

Needs root and namespaces (CI is root); elsewhere it skips and says why.
"""
import pytest
from localcloud import (
    NEEDS_LOCAL_CLOUD,
    WAIT,
    cli,
    cli_json,
    local_env,  # noqa: F401 - the module's local cloud (an autouse fixture)
    on_node,
    wait_for,
)

pytestmark = NEEDS_LOCAL_CLOUD
NAME = "e2e-auto"


@pytest.fixture(scope="module")
def cluster():
    cli("create", NAME, "--nodes", "2", "--storage", "efs", "--autostop", "off", "--yes",
        *WAIT, timeout=180)
    yield NAME
    cli("destroy", NAME, "--yes", check=False, timeout=180)


def test_an_idle_cluster_stops_itself_and_resize_brings_it_back(cluster, tmp_path):
    keep = tmp_path / "before.txt"
    keep.write_text("written before the stop\n")
    cli("put", "-c", cluster, str(keep), "before.txt")
    st = cli_json("status", "-c", cluster)
    assert st["master_state"]["autostop"] == 0 and not st["stopped"]
    # the shortest duration autostop takes (10 s): the same countdown and stop, sooner
    assert "autostop after 10s idle" in cli("autostop", "10s", "-c", cluster).stdout

    def stopped():
        status = cli_json("status", "-c", cluster)
        return status if status["stopped"] else None
    st = wait_for(stopped, 150, interval=1, what="autostop to stop it")
    assert not [n for n in st["nodes"] if n["state"] in ("ready", "booting", "pending")]
    assert st["master_state"]["target"] == 0 and st["master_state"]["stopped_at"]
    text = cli("status", "-c", cluster).stdout
    assert "stopped (idle since" in text and "/month" in text and "resize 2" in text

    cli("resize", "2", "-c", cluster, "--yes", *WAIT, timeout=180)
    st = cli_json("status", "-c", cluster)
    assert not st["stopped"] and st["ready"] == 2, st
    assert on_node(cluster, "master", "cat /shared/before.txt").stdout == \
        "written before the stop\n"
    assert not st["master_state"].get("stopped_at")
