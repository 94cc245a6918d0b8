"""The scripted face: argument parsing, output formatting, exit statuses, and every command
against moto's server (the `controlplane` fixture) or, where it needs nodes, the local cloud."""


import json
import subprocess
import sys
from pathlib import Path

import pytest

from ec2mpi import cli, commands, userdirs
from ec2mpi.cluster import (
    ClusterStatus,
    CostEstimate,
    NodeStatus,
    PriceLine,
)
from ec2mpi.config import ClusterSpec
from ec2mpi.errors import UserError

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


def test_create_flags_parse_into_the_spec_fields():
    args, cmd = commands.parse(
        [
            "create",
            "demo",
            "--nodes",
            "4",
            "--instance-type",
            "c6i.large,c5.large",
            "--on-demand",
            "--storage",
            "s3fs",
            "--ssh-cidr",
            "203.0.113.7",
            "--placement-group",
            "--no-wait",
            "--timeout",
            "60",
        ]
    )
    assert cmd.name == "create" and args.name == "demo" and args.nodes == 4
    assert args.instance_type == ("c6i.large", "c5.large") and args.spot is False
    assert args.storage == "s3fs" and args.ssh_cidr == "203.0.113.7/32"
    assert args.placement_group is True and args.no_wait is True and args.timeout == 60.0


def test_global_options_work_before_and_after_the_command():
    before, _ = commands.parse(["--json", "-c", "demo", "add-nodes", "8"])
    after, _ = commands.parse(["add-nodes", "8", "-c", "demo", "--json"])
    for a in (before, after):
        assert (
            a.cluster == "demo"
            and a.json is True
            and a.count == 8
            and a.command_name == "add-nodes"
        )
    plain, _ = commands.parse(["status"])
    assert plain.cluster is None and plain.json is False and plain.yes is False


def test_ssh_takes_the_remote_command_after_double_dash():
    a, cmd = commands.parse(["ssh", "node-2", "--", "mpirun", "-np", "4", "hostname"])
    assert (
        cmd.name == "ssh"
        and a.node == "node-2"
        and a.remote_command == ["mpirun", "-np", "4", "hostname"]
    )
    a, _ = commands.parse(["ssh", "--", "ls", "-l"])
    assert a.node is None and a.remote_command == ["ls", "-l"]
    a, _ = commands.parse(["ssh"])
    assert a.remote_command == []


def test_shell_base_options_fill_in_what_a_line_leaves_out():
    base, _ = commands.parse(["--local", "--json"])
    a, _ = commands.parse(["status", "-c", "x"], base)
    assert a.local and a.json and a.cluster == "x"


def test_remove_nodes_count_and_node_list():
    a, _ = commands.parse(["remove-nodes", "2"])
    assert a.count == 2 and a.node is None
    a, _ = commands.parse(["remove-nodes", "--node", "node-1", "i-abc"])
    assert a.count is None and a.node == ["node-1", "i-abc"]


def test_flags_override_template_which_overrides_user_defaults(config_dir):
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        '[defaults]\nnodes = 3\nstorage = "none"\nspot = false\n'
    )
    args, _ = commands.parse(
        ["create", "demo", "--template", str(EXAMPLE), "--nodes", "6", "-t", "c5.large"]
    )
    spec = commands.spec_from_args(
        args, commands.read_template(args.template), userdirs.user_defaults()
    )
    assert spec.nodes == 6                      # flag beats template (4) and defaults (3)
    assert spec.instance_types == ("c5.large",)  # flag
    assert spec.storage == "efs"                 # template beats defaults
    assert spec.spot is True and spec.region == "us-east-1"
    args, _ = commands.parse(["create", "demo", "--on-demand"])
    assert commands.spec_from_args(args, {}, userdirs.user_defaults()).nodes == 3


def test_example_template_is_a_valid_spec():
    spec = ClusterSpec.from_mapping({"name": "demo", **commands.read_template(str(EXAMPLE))})
    assert spec.nodes >= 1 and spec.instance_types and spec.storage in ("efs", "s3fs", "none")


@pytest.mark.parametrize("argv, words", [
    (["create", "demo", "--nodes", "0"], "at least 1"),
    (["create", "demo", "--nodes", "many"], "not a number"),
    (["create", "Bad_Name"], "invalid cluster name"),
    (["create", "demo", "-t", "not a type"], "unknown instance type"),
    (["create", "demo", "--storage", "nfs"], "invalid choice"),
    (["create", "demo", "--ssh-cidr", "300.1.1.1/8"], "invalid --ssh-cidr"),
    (["create", "demo", "--spot", "--on-demand"], "not allowed"),
    (["create"], "needs a cluster NAME"),
    (["add-nodes"], "required"),
    (["add-nodes", "-3"], ""),
    (["frobnicate"], "unknown command"),
    (["list", "--", "x"], "after '--'"),
    (["help", "nosuch"], "no command"),
    (["local", "kill"], "needs an instance id"),
    (["local", "interrupt", "i-0123456789abcdef0", "--grace", "-1"], "0 to 3600 seconds"),
    (["local", "interrupt", "i-0123456789abcdef0", "--grace", "soon"], "soon"),
    (["status", "-c", "NO"], "invalid cluster name"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, words):
    status, out, err = run_cli(capsys, *argv)
    assert status == 2, err
    assert err.startswith("ec2mpi: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert words in err and out == ""


def test_template_errors_are_user_errors(capsys, tmp_path):
    status, _, err = run_cli(capsys, "create", "demo", "--template", str(tmp_path / "nope.toml"))
    assert status == 2 and "not found" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = [\n")
    assert run_cli(capsys, "create", "demo", "--template", str(bad))[0] == 2
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('colour = "blue"\n')
    status, _, err = run_cli(capsys, "create", "demo", "--template", str(unknown))
    assert status == 2 and "unknown cluster setting" in err


def test_destructive_commands_refuse_without_yes_and_without_a_terminal(capsys):
    for argv in (["destroy", "demo"], ["remove-nodes", "1", "-c", "demo"]):
        status, out, err = run_cli(capsys, *argv)
        assert status == 2 and "--yes" in err and out == ""


def test_help_comes_from_the_table(capsys):
    status, out, _ = run_cli(capsys, "help")
    assert status == 0
    for name in commands.COMMANDS:
        assert name in out
    status, out, _ = run_cli(capsys, "help", "create")
    assert status == 0 and "--instance-type" in out and "--template" in out
    status, out, _ = run_cli(capsys, "--json", "help")
    assert status == 0 and {c["command"] for c in json.loads(out)} == set(commands.COMMANDS)
    assert run_cli(capsys, "create", "--help")[0] == 0


def test_every_required_command_is_in_the_table():
    wanted = {
        "create",
        "add-nodes",
        "remove-nodes",
        "list",
        "status",
        "hostfile",
        "ssh",
        "put",
        "get",
        "ssh-config",
        "parallel-hosts",
        "logs",
        "cost",
        "destroy",
        "local",
        "help",
    }
    assert wanted <= set(commands.COMMANDS)
    assert {c.name for c in commands.COMMANDS.values() if c.destructive} == {
        "destroy",
        "remove-nodes",
    }
    assert {"create", "add-nodes", "destroy"} <= {
        c.name for c in commands.COMMANDS.values() if c.waits
    }


def test_no_command_without_a_terminal_is_bad_input():
    proc = run_binary()
    assert proc.returncode == 2 and "no command" in proc.stderr


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


def test_binary_bad_input_and_help():
    proc = run_binary("create", "demo", "--nodes", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    proc = run_binary("--help")
    assert proc.returncode == 0 and "add-nodes" in proc.stdout


def test_one_session_factory_for_aws_and_the_local_cloud(tmp_path):
    from ec2mpi.aws.session import AwsSession
    from ec2mpi.localcloud.credentials import CredentialStore
    from ec2mpi.sessions import open_session
    aws, info = open_session(False, region="eu-west-1")
    assert isinstance(aws, AwsSession) and info is None and aws.region == "eu-west-1"
    given = type("Info", (), {"endpoint": "https://172.31.0.1:1", "ca_path": None,
                              "region": "us-east-1", "state_dir": str(tmp_path)})
    aws, info = open_session(True, local_info=given)  # an already running local cloud is reused
    assert (
        info is given and aws.endpoint_url == "https://172.31.0.1:1" and aws.region == "us-east-1"
    )
    # signed with the local cloud's client key (a root-only file), never a well-known dummy
    key = CredentialStore(tmp_path / "controlplane").client()
    assert aws._session.get_credentials().access_key == key.access_key_id
    assert (tmp_path / "controlplane" / "credentials.json").stat().st_mode & 0o777 == 0o600


def _failing_command(capture):
    """A command whose handler meets an AWS refusal, as the adapters report it."""
    from botocore.exceptions import ClientError

    from ec2mpi.errors import explain_client_error

    def handler(ctx, a):
        try:
            raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}},
                              "RunInstances")
        except ClientError as err:
            raise explain_client_error("ec2:RunInstances", err) from err
    return commands.Command("fail", "fails", handler)


@pytest.mark.parametrize("verbose", [False, True])
def test_aws_refusals_keep_their_cause_and_show_it_with_v(verbose):
    import io
    err = io.StringIO()
    args = commands.parse(["-v", "list"] if verbose else ["list"])[0]
    ctx = commands.Context(args, out=io.StringIO(), err=err, can_ask=False)
    status = commands.execute(_failing_command(err), args, ctx)
    text = err.getvalue()
    assert status == 1 and text.splitlines()[-1].startswith(
        "ec2mpi: error: AWS refused ec2:RunInstances"
    )
    if verbose:
        assert "botocore.exceptions.ClientError" in text and "direct cause" in text
    else:
        assert len(text.strip().splitlines()) == 1 and "Traceback" not in text


def test_no_adapter_drops_the_botocore_cause():
    """`raise explain_client_error(...) from None` would hide the cause from -v."""
    import re
    from pathlib import Path
    root = Path(commands.__file__).resolve().parents[1]
    offenders = [str(p) for p in root.rglob("*.py")
                 if re.search(r"explain_client_error\([^\n]*\)[^\n]* from None", p.read_text())]
    assert offenders == []


def test_cluster_name_is_a_getter_and_a_successful_command_remembers_c(config_dir):
    import io
    seen = []

    def handler(ctx, a):
        seen.append(ctx.cluster_name())
        if a.fail:
            raise UserError("refused", "as asked")
        return commands.Result(text="ok")
    cmd = commands.Command("probe", "reads the cluster name", handler)
    for fail, name in ((True, "first"), (False, "second")):
        args = commands.parse(["-c", name, "list"])[0]
        args.fail = fail
        ctx = commands.Context(args, out=io.StringIO(), err=io.StringIO(), can_ask=False)
        assert ctx.cluster_name() == name and userdirs.last_cluster() != name   # no side effect
        commands.execute(cmd, args, ctx)
        assert userdirs.last_cluster() == (None if fail else name)
    assert seen == ["first", "second"]
