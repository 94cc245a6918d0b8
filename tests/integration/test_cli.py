"""The scripted face: argument parsing, output formatting, exit statuses, and every command
against moto's server (the `controlplane` fixture) or, where it needs nodes, the local cloud."""


import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import have_root_namespaces

from ec2mpi import cli, userdirs
from ec2mpi.cluster import (
    ClusterStatus,
    CostEstimate,
    NodeStatus,
    PriceLine,
)
from ec2mpi.config import ClusterSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.toml"


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """Every test gets its own user config dir (history, last cluster, ssh files)."""
    path = tmp_path / "config"
    monkeypatch.setenv("EC2MPI_CONFIG_DIR", str(path))
    return path






def run_cli(capsys, *argv):
    """main([...]) in-process: (status, stdout, stderr)."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_binary(*argv, stdin=subprocess.DEVNULL, timeout=120):
    """The real console script, with the test environment (moto endpoint, dummy credentials)."""
    exe = Path(sys.executable).with_name("ec2mpi")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ec2mpi.cli"]
    return subprocess.run(
        cmd + list(argv), check=False, stdin=stdin, capture_output=True, text=True, timeout=timeout
    )


def sample_status(states=("ready", "ready", "booting")):
    spec = ClusterSpec("demo", nodes=len(states), instance_types="c6i.large", storage="efs")
    nodes = []
    for i, state in enumerate(states):
        nodes.append(
            NodeStatus(
                instance_id=f"i-{i:017x}",
                role="master" if i == 0 else "worker",
                instance_type="c6i.large",
                lifecycle="spot" if i else "on-demand",
                private_ip=f"172.31.0.{10 + i}",
                public_ip=f"198.51.100.{10 + i}" if i < 2 else "",
                state=state,
                slots=2,
                hostname=f"ip-172-31-0-{10 + i}",
                heartbeat_age=3.2,
            )
        )
    cost = CostEstimate(
        per_hour=0.119,
        lines=[PriceLine("c6i.large", "spot", 3, 0.0397)],
        source="spot price history",
    )
    return ClusterStatus(name="demo", status="ready", spec=spec, epoch=7, nodes=nodes, cost=cost)


def test_lifecycle_in_scripted_form(controlplane, cluster_name, capsys, tmp_path):
    """create -> list -> status -> cost -> hostfile -> add-nodes -> remove-nodes -> ssh-config ->
    parallel-hosts -> logs -> destroy, all with --json parsed (moto: nodes never become ready)."""
    name = cluster_name
    status, out, err = run_cli(capsys, "--json", "create", name, "--nodes", "2", "-t", "c6i.large",
                               "--storage", "none", "--ssh-cidr", "127.0.0.1/32", "--no-wait")
    assert status == 0, err
    created = json.loads(out)
    assert created["name"] == name and created["spec"]["nodes"] == 2
    assert userdirs.last_cluster() == name

    status, out, err = run_cli(capsys, "--json", "list")
    assert status == 0 and name in [c["name"] for c in json.loads(out)]

    status, out, err = run_cli(capsys, "status", "--json")  # default cluster: the last one used
    assert status == 0, err
    st = json.loads(out)
    assert st["name"] == name and len(st["nodes"]) == 2 and st["nodes"][0]["role"] == "master"

    status, out, _ = run_cli(capsys, "status", "-c", name)
    assert status == 0 and out.startswith(f"cluster {name}:")

    status, out, err = run_cli(capsys, "--json", "cost", "-c", name)
    assert status == 0, err
    assert json.loads(out)["per_hour"] >= 0

    status, out, err = run_cli(capsys, "--json", "hostfile", "-c", name)
    assert status == 0, err
    assert "hostfile" in json.loads(out)

    status, out, err = run_cli(capsys, "--json", "add-nodes", "2", "-c", name, "--no-wait")
    assert status == 0, err
    added = json.loads(out)["added"]
    assert len(added) == 2

    status, out, err = run_cli(
        capsys, "--json", "--yes", "remove-nodes", "--node", added[0], "-c", name
    )
    assert status == 0, err
    assert json.loads(out)["removed"] == [added[0]]
    status, out, err = run_cli(capsys, "--json", "--yes", "remove-nodes", "1", "-c", name)
    assert status == 0, err

    status, out, err = run_cli(capsys, "--json", "ssh-config", "-c", name)
    assert status == 0, err
    cfg = json.loads(out)
    assert Path(cfg["config"]).exists() and cfg["hosts"] == []  # nothing is ready on bare moto
    status, out, err = run_cli(capsys, "parallel-hosts", "-c", name)
    assert status == 0 and out == "" and "ready" in err

    status, out, err = run_cli(capsys, "--json", "logs", "--console", "-c", name)
    assert status == 0, err
    assert json.loads(out)["node"] == "master"

    status, out, err = run_cli(
        capsys, "ssh", "-c", name, "--", "hostname"
    )  # master not ready: no dialling
    assert status == 1 and "not ready" in err

    status, out, err = run_cli(capsys, "--json", "--yes", "destroy", name)
    assert status == 0, err
    assert json.loads(out)["leftovers"] == []
    assert userdirs.last_cluster() is None


def test_unknown_cluster_is_bad_input(controlplane, capsys):
    status, _out, err = run_cli(capsys, "status", "-c", "nosuchcluster")
    assert status == 2 and err.count("\n") == 1


def test_aws_refusal_exits_1_with_one_line(controlplane, cluster_name, capsys):
    # EC2 refuses an IPv6 range in an IPv4 ingress rule (moto, like AWS): a refusal mid-create
    status, _out, err = run_cli(capsys, "create", cluster_name, "--storage", "none",
                               "--ssh-cidr", "2001:db8::/32", "--no-wait")
    try:
        last = err.strip().splitlines()[-1]  # before it: the progress lines
        assert (
            status == 1 and last.startswith("ec2mpi: error: AWS refused") and "Traceback" not in err
        )
    finally:
        run_cli(capsys, "--yes", "destroy", cluster_name)


def test_binary_in_a_subprocess(controlplane, cluster_name, tmp_path):
    """The real console script: --json on stdout only, messages and -v calls on stderr."""
    proc = run_binary(
        "--json",
        "-v",
        "create",
        cluster_name,
        "--storage",
        "none",
        "--ssh-cidr",
        "127.0.0.1/32",
        "--no-wait",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads(proc.stdout)["name"] == cluster_name
        and "aws: ec2:DescribeInstances" in proc.stderr
    )
    proc = run_binary("--json", "list")
    assert proc.returncode == 0 and cluster_name in proc.stdout
    proc = run_binary("destroy", cluster_name)  # no terminal, no --yes
    assert proc.returncode == 2 and "--yes" in proc.stderr
    proc = run_binary("--yes", "destroy", cluster_name)
    assert proc.returncode == 0, proc.stderr


def test_ctrl_c_during_a_wait_stops_waiting_and_leaves_a_consistent_cluster(
    controlplane, cluster_name
):
    """On moto nodes never become ready, so create waits until we interrupt it."""
    import signal
    exe = Path(sys.executable).with_name("ec2mpi")
    proc = subprocess.Popen(
        [
            str(exe),
            "create",
            cluster_name,
            "--storage",
            "none",
            "--ssh-cidr",
            "127.0.0.1/32",
            "--timeout",
            "300",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stderr.readline()          # the progress bar has started
        assert cluster_name in first
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (
        proc.returncode == 130
        and "stopped waiting" in err
        and "status" in err
        and "Traceback" not in err
    )
    st = run_binary("--json", "status", "-c", cluster_name)
    assert st.returncode == 0 and json.loads(st.stdout)["name"] == cluster_name
    assert run_binary("--yes", "destroy", cluster_name).returncode == 0


@pytest.mark.skipif(bool(have_root_namespaces()), reason=f"local cloud: {have_root_namespaces()}")
def test_remote_commands_on_the_local_cloud(capsys, cluster_name, tmp_path):
    """ssh (exit status, worker via its address), put/get over SFTP, ssh-config with the system
    ssh, parallel-hosts and logs, on real nodes."""
    name = cluster_name

    def ok(*argv):
        status, out, err = run_cli(capsys, "--local", "-c", name, *argv)
        assert status == 0, err
        return out

    status, _, err = run_cli(capsys, "--local", "create", name, "--nodes", "2", "--storage", "efs",
                             "-t", "c6i.large", "--timeout", "600")
    assert status == 0, err
    try:
        status, _out, err = run_cli(capsys, "--local", "ssh", "-c", name, "--", "hostname; exit 3")
        assert status == 3, err
        assert ok("ssh", "node-1", "--", "echo", "hi") == "hi\n"
        src = tmp_path / "in.txt"
        src.write_text("payload\n")
        ok("put", str(src), "in.txt")
        dst = tmp_path / "back.txt"
        ok("get", "in.txt", str(dst))
        assert dst.read_text() == "payload\n"
        assert ok("ssh", "node-1", "--", "cat", "/shared/in.txt") == "payload\n"  # shared storage
        assert len(ok("parallel-hosts").splitlines()) == 2
        config = json.loads(ok("--json", "ssh-config"))["config"]
        proc = subprocess.run(
            ["ssh", "-F", config, "-o", "BatchMode=yes", f"{name}-node-1", "true"], check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        ok("logs", "node-1")
    finally:
        status, _, err = run_cli(capsys, "--local", "--yes", "destroy", name)
        assert status == 0, err


def test_create_re_run_waits_and_exits_0_and_other_settings_exit_2(controlplane, cluster_name,
                                                                    capsys):
    args = ("create", cluster_name, "--nodes", "1", "--storage", "none", "--no-wait")
    status, out, err = run_cli(capsys, *args)
    assert status == 0, err
    assert "ssh: open to 198.51.100.23/32 only" in out      # the check-IP stub's answer
    try:
        status, out, err = run_cli(capsys, *args)
        assert status == 0, err
        assert out.startswith(f"cluster {cluster_name} already existed with these settings")
        status, out, err = run_cli(capsys, "create", cluster_name, "--nodes", "2", "--storage",
                                   "none", "--no-wait")
        assert status == 2 and "nodes 1 (asked 2)" in err and "ec2mpi resize" in err
    finally:
        run_cli(capsys, "--yes", "destroy", cluster_name)
