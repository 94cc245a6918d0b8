"""The interactive face, driven through prompt_toolkit's pipe input and a dummy output."""


import time

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from ec2mpi import commands, userdirs
from ec2mpi.cluster import ClusterStatus, CostEstimate, NodeStatus
from ec2mpi.config import ClusterSpec
from ec2mpi.shell import Shell
from ec2mpi.shell.completer import CommandCompleter
from ec2mpi.shell.dialog import summary
from ec2mpi.shell.state import LiveState
from ec2mpi.shell.toolbar import prompt_fragments, toolbar_text


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    path = tmp_path / "config"
    monkeypatch.setenv("EC2MPI_CONFIG_DIR", str(path))
    return path


def run_shell(text: str, **kwargs) -> int:
    """Feed keystrokes to a shell with no terminal; returns its exit status when input ends."""
    with create_pipe_input() as inp:
        inp.send_text(text)
        inp.close()
        return Shell(input=inp, output=DummyOutput(), background=False, **kwargs).run()


def state_with(names=("demo", "other"), status=None) -> LiveState:
    state = LiveState(make_manager=lambda: None)
    state.clusters, state.status, state.updated = list(names), status, time.time()
    state.current = status.name if status else None
    return state


def sample_status():
    spec = ClusterSpec("demo", nodes=2, instance_types="c6i.large")
    nodes = [
        NodeStatus("i-0aaa", "master", "c6i.large", "spot", "172.31.0.10", "", "ready", 2),
        NodeStatus("i-0bbb", "worker", "c6i.large", "on-demand", "172.31.0.11", "", "booting", 2),
    ]
    return ClusterStatus("demo", "ready", spec, 3, nodes, CostEstimate(0.12))


def completions(state, text):
    return [c.text for c in CommandCompleter(state).get_completions(Document(text), None)]


def test_completion_offers_add_nodes_for_add():
    assert completions(state_with(), "add") == ["add-nodes"]


def test_completion_uses_live_state_and_the_table():
    state = state_with(status=sample_status())
    assert completions(state, "use ") == ["demo", "other"]
    assert completions(state, "status -c o") == ["other"]
    assert completions(state, "-c d") == ["demo"]
    assert completions(state, "remove-nodes --node node") == ["node-1"]
    assert "i-0bbb" in completions(state, "logs i-")
    assert completions(state, "create x --instance-type c6i.l") == ["c6i.large"]
    assert completions(state, "create x -t c5.large,c6i.x") == ["c5.large,c6i.xlarge"]
    assert completions(state, "create x --st") == ["--storage"]
    assert completions(state, "create x --storage ") == ["efs", "s3fs", "none"]
    assert completions(state, "local ") == ["up", "down", "status", "interrupt", "kill", "slow",
                                            "capacity"]
    assert completions(state, "help rem") == ["remove-nodes"]
    assert completions(state, "ssh -- ls -") == []


def test_tab_completes_in_the_running_shell(capsys):
    """Tab completes asynchronously: type, wait for the completer, Tab, wait for the text, Enter."""
    import threading

    def wait_for(cond, timeout=10.0):
        deadline = time.time() + timeout
        while not cond() and time.time() < deadline:
            time.sleep(0.02)

    with create_pipe_input() as inp:
        shell = Shell(input=inp, output=DummyOutput(), background=False)
        buffer = lambda: shell.session.app.current_buffer

        def typist():
            wait_for(lambda: shell.session.app.is_running)
            inp.send_text("help add")
            wait_for(
                lambda: buffer().complete_state is not None and buffer().complete_state.completions
            )
            inp.send_text("\t")
            wait_for(lambda: buffer().text == "help add-nodes")
            inp.send_text("\r")
            time.sleep(0.2)
            inp.close()
        threading.Thread(target=typist, daemon=True).start()
        assert shell.run() == 0
    out, _err = capsys.readouterr()
    assert "usage: ec2mpi add-nodes" in out


def test_a_command_runs_and_an_error_does_not_end_the_shell(capsys):
    status = run_shell("create demo --nodes 0\rfrobnicate\rhelp\r--json help status\r")
    out, err = capsys.readouterr()
    assert status == 0
    assert "at least 1" in err and "unknown command 'frobnicate'" in err
    assert "commands (help COMMAND for details)" in out and '"command": "status"' in out
    assert "Traceback" not in out + err


def test_ctrl_c_cancels_the_line_and_ctrl_d_leaves(capsys):
    assert run_shell("create demo --nodes 0\x03help\r\x04list\r") == 0
    out, err = capsys.readouterr()
    assert "at least 1" not in err          # the cancelled line never ran
    assert "commands (help" in out          # the next one did
    assert "no cluster" not in out          # nothing after Ctrl-D ran


def test_history_is_written_to_the_config_dir(config_dir, capsys):
    run_shell("help\rhelp status\r")
    history = (config_dir / "history").read_text()
    assert "+help\n" in history and "+help status\n" in history
    # and a later session sees it
    with create_pipe_input() as inp:
        inp.close()
        shell = Shell(input=inp, output=DummyOutput(), background=False)
        assert "help status" in list(shell.session.history.load_history_strings())


def test_create_dialog_asks_summarises_and_can_be_declined(capsys):
    # name, nodes, spot/on-demand, instance types, storage, then "n" at the confirmation
    status = run_shell("create\rmy-demo\r4\ron-demand\rc6i.xlarge\rnone\rn\r")
    out, _err = capsys.readouterr()
    assert status == 0
    assert "create cancelled; nothing was made" in out


def test_create_dialog_defaults_come_from_flags(capsys):
    # only Enter everywhere: defaults (name demo, flags' nodes), then decline
    status = run_shell("create --nodes 3 --storage s3fs\r\r\r\r\r\rn\r")
    assert status == 0 and "create cancelled" in capsys.readouterr().out


def test_dialog_summary_names_cores_and_cost():
    text = summary(
        ClusterSpec("demo", nodes=4, instance_types="c6i.xlarge", spot=False, storage="none")
    )
    assert (
        "4 x c6i.xlarge, 4 vCPU each, 16 in all" in text
        and "on-demand" in text
        and "$0.680/h" in text
    )


def test_destructive_commands_ask_in_the_shell():
    ctx = commands.Context(can_ask=True, ask=lambda q: False)
    ctx.args.yes = False
    assert ctx.confirm("destroy?") is False
    ctx.args.yes = True
    assert ctx.confirm("destroy?") is True
    scripted = commands.Context(can_ask=False)
    scripted.args.yes = False
    with pytest.raises(Exception, match="--yes"):
        scripted.confirm("destroy?")


def test_toolbar_and_prompt_read_only_the_snapshot():
    state = state_with(status=sample_status())
    text = toolbar_text(state)
    assert "demo: ready, 1/2 ready" in text and "1 spot, 1 on-demand" in text and "$0.120/h" in text
    assert "demo" in "".join(t for _, t in prompt_fragments(state, local=True))
    st = sample_status()
    st.master_state = {"autostop": 3600, "idle_since": 1000.0}
    assert "autostop in 50m (idle)" in toolbar_text(state_with(status=st), now=1600.0)
    st.master_state = {"autostop": 3600}
    assert "autostop after 1h idle" in toolbar_text(state_with(status=st), now=1600.0)
    st.master_state, st.nodes = {"autostop": 3600, "idle_since": 1000.0, "stopped_at": 4600}, []
    assert "stopped (idle since" in toolbar_text(state_with(status=st), now=5000.0)
    empty = state_with(names=())
    assert "no cluster selected" in toolbar_text(empty)
    empty.error = "no AWS credentials found"
    assert "no AWS credentials found" in toolbar_text(empty)


def test_background_refresh_survives_failures_and_never_raises():
    def broken():
        raise RuntimeError("network down")
    state = LiveState(make_manager=broken, interval=0.05)
    seen = []
    state.start(lambda: seen.append(state.error))
    deadline = time.time() + 5
    while len(seen) < 2 and time.time() < deadline:
        time.sleep(0.02)
    state.stop()
    assert seen and "network down" in seen[0]


def test_shell_start_up_cluster_becomes_the_remembered_one():
    with create_pipe_input() as inp:
        inp.close()
        args, _ = commands.parse(["-c", "demo"])
        shell = Shell(args, input=inp, output=DummyOutput(), background=False)
        assert userdirs.last_cluster() == "demo" and shell.base.cluster is None
        assert shell.run() == 0


def test_tab_right_after_typing_completes_a_single_candidate():
    """'li' then Tab at once (a completion for 'li' is still running) must give 'list'."""
    import threading
    seen = []
    with create_pipe_input() as inp:
        shell = Shell(input=inp, output=DummyOutput(), background=False)

        def typist():
            deadline = time.time() + 10
            while not shell.session.app.is_running and time.time() < deadline:
                time.sleep(0.02)
            inp.send_text("li\t")
            deadline = time.time() + 5
            while shell.session.app.current_buffer.text != "list" and time.time() < deadline:
                time.sleep(0.02)
            seen.append(shell.session.app.current_buffer.text)
            shell.session.app.exit(result="")
        threading.Thread(target=typist, daemon=True).start()
        shell.session.prompt("> ")
    assert seen == ["list"]
