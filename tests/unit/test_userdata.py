"""The user-data stub: small, valid bash, parameters only, and it really runs (in a sandbox)."""


import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ec2mpi.userdata import MAX_BYTES, UserDataParams, render

PARAMS = UserDataParams(cluster="demo", region="eu-west-1", bucket="ec2mpi-123456789012-eu-west-1",
                        table="ec2mpi-registry", version="0.1.0",
                        wheel_key="clusters/demo/ec2mpi-0.1.0-py3-none-any.whl", storage="efs",
                        storage_id="fs-0123456789abcdef0", shared_path="/shared", user="ec2mpi",
                        prefix="/opt/ec2mpi")


def test_renders_small_valid_bash_without_placeholders_or_secrets(tmp_path):
    text = render(PARAMS)
    assert len(text.encode()) < MAX_BYTES
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert not re.search(r"@[A-Z_]+@", text), "placeholder left"
    for secret in (
        "AKIA",
        "ASIA",
        "aws_secret_access_key",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SESSION_TOKEN",
        "PRIVATE KEY",
        "password",
    ):
        assert secret not in text
    assert "CLUSTER=demo\n" in text and "STORAGE_ID=fs-0123456789abcdef0\n" in text
    script = tmp_path / "ud.sh"
    script.write_text(text)
    assert (
        subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True).returncode
        == 0
    )
    odd = render(UserDataParams(**{**PARAMS.__dict__, "cluster": "x'; rm -rf / #"}))
    assert "CLUSTER='x'\"'\"'; rm -rf / #'" in odd          # shell-quoted, not executed


FAKE_AGENT = """#!/bin/bash
# A stand-in for an installed ec2mpi-agent: reports the version, records what it was asked.
if [ "$1" = --version ]; then echo 0.1.0; exit 0; fi
echo "$* EC2MPI_MOUNT_HOOK=${EC2MPI_MOUNT_HOOK:-}" >> "$CALLS"
case "$*" in *" run"*)
  root="${1#--root=}"; mkdir -p "$root/run/ec2mpi"
  echo "ready i-0fake master 172.31.0.4" > "$root/run/ec2mpi/boot.status"
  trap 'echo "term $*" >> "$CALLS"; exit 0' TERM; while :; do sleep 0.1; done;; esac
"""


def test_stub_runs_in_a_sandbox_skips_install_and_is_idempotent(tmp_path):
    """A PREFIX whose venv already reports VERSION: nothing is installed, the agent is booted,
    the agent service (boot, then watch) starts once (a second run finds it running and
    booted), the environment passes through."""
    prefix, root = tmp_path / "opt", tmp_path / "root"
    (prefix / "venv" / "bin").mkdir(parents=True)
    agent = prefix / "venv" / "bin" / "ec2mpi-agent"
    agent.write_text(FAKE_AGENT)
    agent.chmod(0o755)
    (prefix / "venv" / "bin" / "python").symlink_to(sys.executable)
    script = tmp_path / "ud.sh"
    script.write_text(render(UserDataParams(**{**PARAMS.__dict__, "prefix": str(prefix)})))
    calls = tmp_path / "calls"
    env = {"PATH": os.environ["PATH"], "EC2MPI_ROOT": str(root), "CALLS": str(calls),
           "EC2MPI_MOUNT_HOOK": "/x/hook", "AWS_ENDPOINT_URL": "https://172.31.0.1:5000"}
    try:
        for _ in range(2):
            out = subprocess.run(
                ["bash", str(script)],
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert "already installed; skipping install" in out.stdout
        assert (
            json.loads((root / "etc/ec2mpi/agent.json").read_text())["storage_id"]
            == "fs-0123456789abcdef0"
        )
        agent_env = (root / "etc/ec2mpi/agent.env").read_text()
        assert (
            "EC2MPI_MOUNT_HOOK=/x/hook\n" in agent_env
            and "AWS_ENDPOINT_URL=https://172.31.0.1:5000\n" in agent_env
        )
        assert "CALLS" not in agent_env
        assert "ec2mpi-bootstrap" in (root / "var/log/ec2mpi/bootstrap.log").read_text()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and calls.read_text().count(" run ") < 1:
            time.sleep(0.05)
        lines = calls.read_text().splitlines()
        assert lines.count(f"--root={root} run EC2MPI_MOUNT_HOOK=/x/hook") == 1  # supervised once
        assert "ready i-0fake master 172.31.0.4" in out.stdout
    finally:
        pidfile = root / "run/ec2mpi/agent.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "term" not in calls.read_text():
        time.sleep(0.05)
    assert "term" in calls.read_text()          # SIGTERM reaches the watcher (it deregisters)


def test_stub_names_the_failing_step(tmp_path):
    prefix, root = tmp_path / "opt", tmp_path / "root"
    (prefix / "venv" / "bin").mkdir(parents=True)
    agent = prefix / "venv" / "bin" / "ec2mpi-agent"
    agent.write_text('#!/bin/bash\n[ "$1" = --version ] && { echo 0.1.0; exit 0; }\nexit 3\n')
    agent.chmod(0o755)
    (prefix / "venv" / "bin" / "python").symlink_to(sys.executable)
    script = tmp_path / "ud.sh"
    script.write_text(render(UserDataParams(**{**PARAMS.__dict__, "prefix": str(prefix)})))
    out = subprocess.run(
        ["bash", str(script)], check=False,
        env={"PATH": os.environ["PATH"], "EC2MPI_ROOT": str(root), "EC2MPI_BOOT_RETRY_DELAY": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3
    assert "FAILED at step: ec2mpi-agent boot (exit 3)" in out.stdout
    assert "ec2mpi-agent: boot failed: exit 3" in out.stdout   # the service gave up (exit 3)


def test_bake_script_and_unit_are_well_formed():
    root = str(Path(__file__).resolve().parents[2])
    assert (
        subprocess.run(
            ["bash", "-n", os.path.join(root, "bootstrap", "bake-ami.sh")], check=False
        ).returncode
        == 0
    )
    unit = open(os.path.join(root, "bootstrap", "ec2mpi-agent.service")).read()  # noqa: SIM115
    assert (
        "ExecStart=@PREFIX@/venv/bin/ec2mpi-agent run" in unit
        and "RestartPreventExitStatus=3" in unit
        and "EnvironmentFile=-/etc/ec2mpi/agent.env" in unit
    )


def test_agent_reports_its_version():
    import ec2mpi

    out = subprocess.run(
        [sys.executable, "-m", "ec2mpi.agent.main", "--version"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == ec2mpi.__version__
