"""The user-data stub: small, valid bash, parameters only, and it really runs (in a sandbox)."""


import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
        env={"PATH": os.environ["PATH"], "EC2MPI_ROOT": str(root), "EC2MPI_BOOT_RETRY_DELAY": "0",
             "EC2MPI_MOUNT_HOOK": "/x/hook"},
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


PM_STUB = """#!/bin/bash
# A stand-in package manager: records what it was asked; 'list --available' knows $AVAILABLE.
echo "$(basename "$0") $*" >> "$CALLS"
case "$*" in
  *"list --available"*) for p in $AVAILABLE; do [ "$p" = "${@: -1}" ] && exit 0; done; exit 1;;
esac
exit 0
"""
TOOLS = ("bash", "mkdir", "tee", "date", "cat", "grep", "mv", "chmod", "env", "setsid", "nohup",
         "sleep", "kill", "rm", "mktemp", "sed", "dirname", "basename")


def _sandbox_with(tmp_path, managers, available=""):
    """A PATH with only the tools the stub needs, stub package managers, and a python3 that
    has venv: no host s3fs or mount.efs is visible, nothing on the host is installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    for pm in managers:
        (bin_dir / pm).write_text(PM_STUB)
        (bin_dir / pm).chmod(0o755)
    prefix, root = tmp_path / "opt", tmp_path / "root"
    (prefix / "venv" / "bin").mkdir(parents=True)
    agent = prefix / "venv" / "bin" / "ec2mpi-agent"
    agent.write_text(FAKE_AGENT)
    agent.chmod(0o755)
    (prefix / "venv" / "bin" / "python").symlink_to(sys.executable)
    calls = tmp_path / "calls"
    calls.write_text("")
    env = {"PATH": str(bin_dir), "EC2MPI_ROOT": str(root), "CALLS": str(calls),
           "AVAILABLE": available}
    return prefix, root, calls, env


def _run_stub(tmp_path, storage, managers, available="", hook=""):
    prefix, root, calls, env = _sandbox_with(tmp_path, managers, available)
    if hook:
        env["EC2MPI_MOUNT_HOOK"] = hook
    script = tmp_path / "ud.sh"
    script.write_text(render(UserDataParams(**{**PARAMS.__dict__, "prefix": str(prefix),
                                               "storage": storage})))
    try:
        out = subprocess.run(["bash", str(script)], check=False, env=env, capture_output=True,
                             text=True, timeout=60)
    finally:
        pidfile = root / "run/ec2mpi/agent.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    return out, calls.read_text().splitlines()


@pytest.mark.parametrize("pm,package", [("apt-get", "s3fs")])
def test_a_stock_image_gets_its_mount_helper_from_the_package_manager(tmp_path, pm, package):
    out, calls = _run_stub(tmp_path, "s3fs", [pm])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"installing with {pm}: {package}" in out.stdout
    assert any(c.startswith(f"{pm} install") and c.endswith(package) for c in calls), calls


def test_s3fs_on_amazon_linux_stops_at_that_step_and_names_the_fix(tmp_path):
    out, calls = _run_stub(tmp_path, "s3fs", ["dnf"], available="amazon-efs-utils")
    assert out.returncode != 0
    assert "FAILED at step: system packages" in out.stdout
    assert "--storage efs" in out.stdout and "bake-image" in out.stdout
    assert not any(" install" in c for c in calls)


def test_efs_installs_efs_utils_with_dnf_and_refuses_on_debian(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out, calls = _run_stub(tmp_path / "a", "efs", ["dnf"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dnf install -y -q amazon-efs-utils" in calls
    out, calls = _run_stub(tmp_path / "b", "efs", ["apt-get"])
    assert out.returncode != 0 and "Debian and Ubuntu do not package" in out.stdout
    assert "--storage s3fs" in out.stdout


def test_the_local_cloud_mounts_through_its_hook_and_installs_nothing(tmp_path):
    out, calls = _run_stub(tmp_path, "s3fs", ["dnf"], hook="/x/hook")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nothing to install" in out.stdout and not [c for c in calls if "install" in c]
