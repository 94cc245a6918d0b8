"""The scripted face: argument parsing, output formatting, exit statuses, and every command
against moto's server (the `controlplane` fixture) or, where it needs nodes, the local cloud."""


import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ec2mpi import catalog, cli, commands, output, remote, userdirs
from ec2mpi.cluster import (
    ClusterStatus,
    ClusterSummary,
    CostEstimate,
    DestroyReport,
    NodeStatus,
    PriceLine,
)
from ec2mpi.config import ClusterSpec
from ec2mpi.errors import UserError
from ec2mpi.keys import ClusterKeys

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


def test_status_table():
    text = output.format_status(sample_status())
    head, header, *rows = text.splitlines()
    assert head.startswith("cluster demo: ready, 2/3 nodes ready (2 spot, 1 on-demand), $0.119/h")
    assert header.split()[:3] == ["NODE", "INSTANCE", "TYPE"]
    assert [r.split()[0] for r in rows] == ["master", "node-1", "node-2"]
    assert "booting" in rows[2] and all(not line.endswith(" ") for line in text.splitlines())


def test_status_json_is_plain_data():
    data = json.loads(json.dumps(output.to_data(sample_status())))
    assert data["name"] == "demo" and data["ready"] == 2 and data["master"] == "i-" + "0" * 17
    assert data["spec"]["instance_types"] == ["c6i.large"] and len(data["nodes"]) == 3
    assert data["cost"]["per_hour"] == 0.119


def test_list_and_cost_and_destroy_formatting():
    rows = [
        ClusterSummary("demo", "ready", 4, 4, int(time.time())),
        ClusterSummary("big", "creating", 64, 10, 0),
    ]
    text = output.format_list(rows, current="demo")
    assert "* demo" in text and "10/64" in text and "creating" in text
    assert "no clusters" in output.format_list([])
    cost = output.format_cost(sample_status().cost)
    assert (
        cost.startswith("$0.119/h for the whole cluster (spot price history)")
        and "c6i.large" in cost
    )
    report = DestroyReport(removed={"instances": ["i-1", "i-2"], "security_groups": ["sg-1"]})
    assert "removed 3 resource(s)" in output.format_destroy("demo", report)
    assert "WARNING" in output.format_destroy("demo", DestroyReport(leftovers=["fs-1"]))


def test_progress_bar_text():
    assert output.progress_bar(3, 6, "ready", width=10) == "[#####.....] 3/6 ready"
    assert output.progress_bar(0, 0, "a note", width=4) == "a note"     # uncounted


def test_node_resolution_and_links():
    st = sample_status()
    assert commands.resolve_node(st, None)[0] == "master"
    assert commands.resolve_node(st, "demo-node-2")[1].instance_id == st.nodes[2].instance_id
    assert commands.resolve_node(st, "172.31.0.11")[0] == "node-1"
    with pytest.raises(UserError):
        commands.resolve_node(st, "node-9")
    aws = commands.links_for(st, local=False)
    assert [(l.label, l.address, l.via_master) for l in aws] == [
        ("master", "198.51.100.10", False),
        ("node-1", "198.51.100.11", False),
    ]  # node-2 is not ready
    st.nodes[2].state = "ready"
    last = commands.links_for(st, local=False)[-1]
    assert last.address == "172.31.0.12" and last.via_master          # no public IP: via the master
    assert all(not l.via_master for l in commands.links_for(st, local=True))


def test_ssh_files_and_parallel_hosts(tmp_path):
    keys = ClusterKeys.generate("demo")
    st = sample_status(("ready", "ready", "ready"))
    links = commands.links_for(st, local=False)
    config = remote.write_ssh_files(tmp_path / "demo", "demo", keys, links, "ec2mpi")
    text = config.read_text()
    assert "Host demo-master demo-node-0" in text and "Host demo-node-2" in text
    assert "StrictHostKeyChecking yes" in text and "ProxyJump demo-master" in text
    assert {line.split()[1] for line in text.splitlines() if "StrictHostKeyChecking" in line} == {
        "yes"
    }
    assert (tmp_path / "demo" / "known_hosts").read_text().startswith("* ssh-ed25519 ")
    assert oct((tmp_path / "demo" / "id_ed25519").stat().st_mode & 0o777) == "0o600"
    lines = remote.parallel_hosts_text("demo", links, config).splitlines()
    assert lines[0] == f"2/ssh -F {config} demo-master" and len(lines) == 3


def test_remote_paths_stay_in_the_shared_directory():
    assert remote.remote_path("/shared", None, "a.txt") == "/shared/a.txt"
    assert remote.remote_path("/shared", "out/r.csv") == "/shared/out/r.csv"
    assert remote.remote_path("/shared", "/shared/x") == "/shared/x"
    for bad in ("../etc/passwd", "/etc/passwd", "/sharedx"):
        with pytest.raises(UserError):
            remote.remote_path("/shared", bad)


def test_catalog_prices():
    assert catalog.vcpus("c6i.xlarge") == 4
    assert catalog.price("c6i.large", spot=False) == 0.085
    assert catalog.estimate_per_hour(["nope.x", "c6i.large"], 4, spot=False) == pytest.approx(0.34)
    assert "vCPU" in catalog.describe("c5.large")


def test_last_cluster_is_remembered_in_the_config_dir(config_dir):
    assert userdirs.last_cluster() is None
    userdirs.remember_cluster("demo")
    assert userdirs.last_cluster() == "demo" and (config_dir / "state.json").exists()
    userdirs.remember_cluster(None)
    assert userdirs.last_cluster() is None


def test_config_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("EC2MPI_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert userdirs.config_dir() == tmp_path / "ec2mpi"


def test_progress_without_a_terminal_prints_a_line_per_step_not_per_poll():
    import io
    out = io.StringIO()
    bar = commands.ProgressBar(out, "create demo")
    for _ in range(5):   # create's wait alternates these two messages once per poll
        bar(4, 4, "4/4 nodes ready")
        bar(4, 4, "waiting for the master's hostfile")
    bar(5, 5, "done")
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "4/4 4/4 nodes ready", "4/4 waiting for the master's hostfile", "5/5 done"]


def test_every_hint_that_names_an_ec2mpi_command_names_a_real_one():
    """Walk every string given to an error (message and hint), to explain_client_error's hint
    table and to ctx.say: `ec2mpi WORD` must be a command of the table."""
    import ast
    import re
    from pathlib import Path
    root = Path(commands.__file__).resolve().parents[1]
    sinks = ("Error", "Timeout", "NoSuchCluster", "ClusterExists", "say")
    strings = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
                if name.endswith(sinks):
                    strings += [(path.name, c.value) for a in node.args for c in ast.walk(a)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            if isinstance(node, ast.Dict) and path.name == "errors.py":
                strings += [(path.name, v.value) for v in node.values
                            if isinstance(v, ast.Constant)]
    named = [(f, m.group(1), s) for f, s in strings
             for m in re.finditer(r"\bec2mpi (?:(?:--?[a-z-]+|-c \S+) )*([a-z][a-z-]*)", s)]
    assert len(named) > 20          # the walk found the hints
    wrong = [(f, word, s) for f, word, s in named if word not in commands.COMMANDS]
    assert wrong == []
