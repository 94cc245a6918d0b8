"""Driving the local cloud the way a user does: the real `ec2mpi --local` binary."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import have_root_namespaces

WHY = have_root_namespaces()   # why the local cloud cannot run here ("" if it can)
NEEDS_LOCAL_CLOUD = pytest.mark.skipif(bool(WHY), reason=f"local cloud: {WHY}")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT = ("--timeout", "120")   # what a create or add-nodes of a few local nodes may take, at most
STATE = {"dir": ""}           # the local cloud's state dir, set by local_env


def cli(*args, check=True, timeout=120, env=None):
    """Run `ec2mpi --local ARGS` as a user would; returns the CompletedProcess."""
    res = subprocess.run(
        ["ec2mpi", "--local", *args], check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"ec2mpi --local {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        )
    return res


def cli_json(*args, **kw):
    return json.loads(cli("--json", *args, **kw).stdout)


def on_node(cluster, node, command, check=True):
    """Run a shell command on a node (as the cluster user) through `ec2mpi ssh`."""
    return cli("ssh", "-c", cluster, node, "--", command, check=check)  # one string, as with ssh


def hostfile_hosts(cluster):
    text = on_node(cluster, "master", "cat /etc/ec2mpi/hostfile").stdout
    return [
        line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


def wait_for(predicate, timeout, interval=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def nodes_of(cluster):
    return cli_json("status", "-c", cluster)["nodes"]


@pytest.fixture(scope="module", autouse=True)
def local_env(tmp_path_factory):
    """The machine's local cloud (a singleton); left as it was found."""
    saved = os.environ.get("EC2MPI_CONFIG_DIR")
    os.environ["EC2MPI_CONFIG_DIR"] = str(tmp_path_factory.mktemp("config"))
    was_up = cli_json("local", "status").get("up", False)
    cli("local", "up", timeout=300)
    STATE["dir"] = cli_json("local", "status")["state_dir"]
    yield
    if not was_up:
        cli("local", "down", check=False)
    if saved is None:
        os.environ.pop("EC2MPI_CONFIG_DIR", None)
    else:
        os.environ["EC2MPI_CONFIG_DIR"] = saved
