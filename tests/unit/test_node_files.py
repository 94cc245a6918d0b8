"""The node agent against moto's server and the IMDS emulator, in a temporary root."""


import json
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from ec2mpi.agent import hostfile
from ec2mpi.agent.boot import (
    AgentParams,
    efs_mount_command,
    mount_command,
    mpi_env_block,
    s3fs_mount_command,
    with_env_block,
)
from ec2mpi.aws.registry import Node, Registry
from ec2mpi.localcloud.imds import ImdsServer

BUCKET = "ec2mpi-123456789012-us-east-1"


ROLE = "ec2mpi-test-node"


@pytest.fixture
def imds():
    """The emulator on loopback: every caller is 127.0.0.1, so the test decides who that is."""
    views = {}
    server = ImdsServer(
        "127.0.0.1", 0, lambda ip: views.get("me") if ip == "127.0.0.1" else None
    ).start()
    server.views = views
    yield server
    server.stop()


@pytest.fixture
def banner():
    """A tiny TCP server that greets like sshd (for the readiness check)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_test\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1]
    stop.set()
    sock.close()


@pytest.fixture
def cluster(aws, cluster_name, stored_keys):
    """A registry cluster item with keys in the bucket (what `create` leaves before launch)."""
    reg = Registry(aws)
    reg.ensure_table()
    reg.create_cluster(cluster_name, "{}")
    return reg, stored_keys(cluster_name)


def params_for(name, user, shared="/shared", storage="none"):
    return AgentParams(cluster=name, region="us-east-1", bucket=BUCKET, table="ec2mpi-registry",
                       version="0.1.0", wheel_key=f"clusters/{name}/ec2mpi-0.1.0-py3-none-any.whl",
                       storage=storage, storage_id="fs-12345678" if storage == "efs" else "",
                       shared_path=shared, user=user, prefix="/opt/ec2mpi")


def write_agent_json(paths, params):
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.agent_json.write_text(json.dumps(params.__dict__))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def wait_for(pred, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def test_hostfile_formats_master_first_ready_only():
    nodes = [Node("i-3", "worker", "172.31.0.10", "h3", 4, state="ready"),
             Node("i-2", "worker", "172.31.0.9", "h2", 2, state="ready"),
             Node("i-4", "worker", "172.31.0.11", "h4", 2, state="booting"),
             Node("i-5", "worker", "172.31.0.12", "h5", 2, state="draining"),
             Node("i-1", "master", "172.31.0.20", "h1", 8, state="ready")]
    assert (
        hostfile.render_openmpi(nodes)
        == "172.31.0.20 slots=8\n172.31.0.9 slots=2\n172.31.0.10 slots=4\n"
    )
    assert hostfile.render_mpich(nodes) == "172.31.0.20:8\n172.31.0.9:2\n172.31.0.10:4\n"


def test_hostfile_atomic_write(tmp_path):
    nodes = [Node("i-1", "master", "10.0.0.1", "h", 2, state="ready")]
    text = hostfile.write_hostfiles(nodes, [tmp_path / "etc", tmp_path / "shared" / ".ec2mpi"])
    assert text == "10.0.0.1 slots=2\n"
    for d in ("etc", "shared/.ec2mpi"):
        assert (tmp_path / d / "hostfile").read_text() == text
        assert (tmp_path / d / "hostfile.mpich").read_text() == "10.0.0.1:2\n"
        assert sorted(p.name for p in (tmp_path / d).iterdir()) == ["hostfile", "hostfile.mpich"]


def test_mount_command_lines():
    # EFS admits only the cluster's roles (its file-system policy): TLS + IAM, or no mount
    assert efs_mount_command("fs-1", "/shared", efs_utils=True) == [
        "mount", "-t", "efs", "-o", "tls,iam", "fs-1:/", "/shared"]
    with pytest.raises(RuntimeError, match="amazon-efs-utils"):
        efs_mount_command("fs-1", "/shared")
    cmd = s3fs_mount_command("bkt", "demo", "eu-west-1", "/shared", 1001, 1001)
    assert cmd[:3] == ["s3fs", "bkt:/clusters/demo/shared", "/shared"] and cmd[3] == "-o"
    assert "iam_role=auto" in cmd[4].split(",") and "uid=1001" in cmd[4].split(",")
    p = params_for("demo", "ec2mpi", storage="efs")
    assert mount_command(p, "/shared", 1, 1, hook="/x/hook") == [
        "/x/hook",
        "efs",
        "fs-12345678",
        "/shared",
    ]
    assert mount_command(params_for("demo", "u"), "/shared", 1, 1) is None


def test_mpi_env_binds_to_none_only_locally():
    aws_block = mpi_env_block("/opt/ec2mpi", Path("/etc/ec2mpi"), local=False)
    assert "PRTE_MCA_prte_default_hostfile=/etc/ec2mpi/hostfile\n" in aws_block
    assert "OMPI_MCA_orte_default_hostfile=/etc/ec2mpi/hostfile\n" in aws_block
    assert "HYDRA_HOST_FILE=/etc/ec2mpi/hostfile.mpich\n" in aws_block
    assert "binding_policy" not in aws_block
    local_block = mpi_env_block("/opt/ec2mpi", Path("/etc/ec2mpi"), local=True)
    assert "OMPI_MCA_hwloc_base_binding_policy" not in local_block   # not an Open MPI 5 name
    assert "export OPAL_PREFIX=/opt/ec2mpi/venv" in local_block and "OPAL_PREFIX" in aws_block
    assert "PRTE_MCA_hwloc_default_binding_policy=none" in local_block
    assert "AWS_CONTAINER" not in aws_block      # no run dir given: no job credentials
    jobs = mpi_env_block("/opt/ec2mpi", Path("/etc/ec2mpi"), False, Path("/run/ec2mpi"),
                         "eu-west-1")
    assert "export AWS_DEFAULT_REGION=eu-west-1\n" in jobs
    assert ("if [ -r /run/ec2mpi/job-token ]; then export AWS_CONTAINER_CREDENTIALS_FULL_URI="
            "http://127.0.0.1:51679/job-credentials AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="
            "/run/ec2mpi/job-token; fi\n") in jobs
    bashrc = "case $- in *i*) ;; *) return;; esac\nalias ll='ls -l'\n"
    once = with_env_block(bashrc, aws_block)
    assert once.startswith(aws_block) and once.endswith(bashrc)
    assert (
        with_env_block(once, local_block) == local_block + bashrc
    )  # idempotent, replaced in place


def _agent_env(imds_url, root):
    """What a node's agent sees: no static credentials, the role's come from the emulator."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_EC2_METADATA_DISABLED")}
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds_url
    return env


def _root_reason():
    if os.geteuid() != 0:
        return "creating the cluster user and running sshd needs root (CI runs as root)"
    if not (shutil.which("useradd") and os.path.exists("/usr/sbin/sshd") and shutil.which("ssh")):
        return "needs useradd, sshd and ssh (apt-get install passwd openssh-server openssh-client)"
    return ""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(i, role="worker", state="ready", slots=2):
    return Node(f"i-{i:04d}", role, f"172.31.0.{i}", f"ip-172-31-0-{i}", slots, state=state)
