"""The real `ec2mpi` binary in a pseudo-terminal (pexpect): the shell as a user meets it."""
import os
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect", reason="pexpect is in the test extra: pip install pexpect")

from conftest import have_root_namespaces

EXE = Path(sys.executable).with_name("ec2mpi")
PROMPT = r"ec2mpi[^\n]*\((aws|local)\)[^\n]*>"


ERROR = r"ec2mpi: (internal )?error: [^\r\n]*"


class Terminal:
    """The shell in a pty. expect() also watches for the CLI's error line and for EOF and then
    fails at once with what the screen showed, instead of waiting out its timeout."""

    def __init__(self, child):
        self.child = child

    def expect(self, pattern, timeout=-1, error_ok=False):
        patterns = [pattern, pexpect.EOF] + ([] if error_ok else [ERROR])
        try:
            index = self.child.expect(patterns, timeout=timeout)
        except pexpect.TIMEOUT:
            pytest.fail(f"no {pattern!r} within the timeout; the screen said:\n"
                        f"{self.child.before[-3000:]}")
        if index != 0:
            what = "the shell ended" if index == 1 else f"the CLI failed: {self.child.after}"
            pytest.fail(f"{what} while waiting for {pattern!r}; the screen said:\n"
                        f"{(self.child.before or '')[-3000:]}")
        return index

    def __getattr__(self, name):   # send, sendline, sendcontrol, close, ...
        return getattr(self.child, name)


def spawn(tmp_path, *args, timeout=30):
    env = dict(
        os.environ,
        EC2MPI_CONFIG_DIR=str(tmp_path / "config"),
        TERM="xterm",
        COLUMNS="160",
        LINES="40",
    )
    cmd = str(EXE) if EXE.exists() else sys.executable
    argv = list(args) if EXE.exists() else ["-m", "ec2mpi.cli", *args]
    child = pexpect.spawn(
        cmd, argv, env=env, encoding="utf-8", timeout=timeout, dimensions=(40, 160)
    )
    child.logfile_read = open(tmp_path / "pty.log", "w")  # noqa: SIM115
    return Terminal(child)


def leave(child):
    child.sendcontrol("d")
    child.child.expect(pexpect.EOF, timeout=30)
    child.close()
    return child.exitstatus


def test_shell_starts_on_a_terminal_runs_commands_and_leaves(controlplane, tmp_path):
    child = spawn(tmp_path)
    child.expect("ec2mpi shell")
    child.expect("\x1b\\[6n")  # prompt_toolkit asks where the cursor is: answer like a terminal,
    child.send("\x1b[1;1R")             # so it knows the screen height and draws the bottom toolbar
    child.expect(PROMPT)
    child.expect(r"loading cluster state|no cluster selected|\d+/\d+ ready|help: commands")
    child.sendline("help")
    child.expect("commands \\(help COMMAND for details\\)")
    child.expect(PROMPT)
    child.sendline("create demo --nodes 0")
    child.expect("node count must be at least 1", error_ok=True)
    child.expect(PROMPT)            # the error did not end the shell
    child.sendcontrol("c")          # Ctrl-C on an empty line: still here
    child.expect(PROMPT)
    assert leave(child) == 0
    assert "help" in (tmp_path / "config" / "history").read_text()


def test_a_wait_fails_at_once_when_the_cli_prints_an_error(controlplane, tmp_path):
    """The terminal helper itself: an error on screen ends the wait, not its timeout."""
    import time
    child = spawn(tmp_path)
    child.expect(PROMPT)
    child.sendline("status -c no-such-cluster")
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="no cluster named 'no-such-cluster'"):
        child.expect("a line that never comes", timeout=120)
    assert time.monotonic() - started < 60           # well before the 120 s timeout
    child.sendcontrol("d")
    child.close()


def test_destroy_asks_naming_what_goes(controlplane, cluster_name, tmp_path):
    child = spawn(tmp_path, timeout=120)
    child.expect(PROMPT)
    child.sendline(
        f"create {cluster_name} --nodes 2 --storage none --ssh-cidr 127.0.0.1/32 --no-wait"
    )
    child.expect(f"cluster {cluster_name}:")
    child.expect(PROMPT)
    child.sendline(f"destroy {cluster_name}")
    child.expect(f"destroy cluster {cluster_name}: 2 node\\(s\\).*saving about .*\\[y/N\\]")
    child.sendline("n")
    child.expect("nothing destroyed")
    child.expect(PROMPT)
    child.sendline(f"destroy {cluster_name}")
    child.expect("\\[y/N\\]")
    child.sendline("y")
    child.expect(f"destroyed cluster {cluster_name}")
    child.expect(PROMPT)
    assert leave(child) == 0


@pytest.mark.skipif(bool(have_root_namespaces()), reason=f"local cloud: {have_root_namespaces()}")
def test_create_status_destroy_on_the_local_cloud(cluster_name, tmp_path):
    """The issue's end-to-end: `ec2mpi --local` in a terminal, create, status, destroy."""
    child = spawn(tmp_path, "--local", timeout=60)
    child.expect(PROMPT)
    child.sendline(f"create {cluster_name} --nodes 2 --storage none -t c6i.large")
    child.expect(f"cluster {cluster_name}: ready, 2/2 nodes ready", timeout=240)
    child.expect(PROMPT)
    child.sendline("status")
    child.expect(f"cluster {cluster_name}: .*2/2 nodes ready")
    child.expect("master .* ready")
    child.expect(PROMPT)
    child.sendline(f"destroy {cluster_name}")
    child.expect("\\[y/N\\]")
    child.sendline("y")
    child.expect(f"destroyed cluster {cluster_name}", timeout=120)
    child.expect(PROMPT)
    assert leave(child) == 0
