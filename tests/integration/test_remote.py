"""ec2mpi.remote against a real sshd on loopback that serves the cluster host key:
commands stream output and exit status, SFTP round-trips, and any other host key is refused."""
import io
import os
import shutil
import socket
import subprocess
import time

import pytest

from ec2mpi import remote
from ec2mpi.errors import CloudError
from ec2mpi.keys import ClusterKeys


def _why_not() -> str:
    if os.geteuid() != 0:
        return "running sshd on loopback and logging in as root needs root (CI runs as root)"
    if not os.path.exists("/usr/sbin/sshd"):
        return "needs sshd (apt-get install openssh-server)"
    return ""


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "ok")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def node(tmp_path):
    """sshd on 127.0.0.1 with the cluster's host key, accepting the cluster identity for root."""
    keys = ClusterKeys.generate("rt")
    host_key = tmp_path / "host_key"
    host_key.write_bytes(keys.host.private_openssh)
    host_key.chmod(0o600)
    auth = tmp_path / "authorized_keys"
    auth.write_bytes(keys.identity.public_openssh)
    port = _free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                 if os.path.exists(p)), "internal-sftp")
    conf = tmp_path / "sshd_config"
    conf.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {tmp_path / 'pid'}\n"
        f"AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        f"UsePAM no\nStrictModes no\nSubsystem sftp {sftp}\nCompression yes\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sshd.log", "wb"))  # noqa: SIM115
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield keys, port
    proc.terminate()
    proc.wait(10)


def test_run_streams_output_and_returns_the_exit_status(node):
    keys, port = node
    client = remote.connect("127.0.0.1", "root", keys, port=port)
    try:
        out, err = io.BytesIO(), io.BytesIO()
        status = remote.run(client, "echo out; echo err >&2; exit 7", stdout=out, stderr=err)
        assert status == 7 and out.getvalue() == b"out\n" and err.getvalue() == b"err\n"
        out = io.BytesIO()
        assert remote.run(client, "echo $0; shopt -q login_shell && echo login", stdout=out) == 0
        assert b"login" in out.getvalue()          # bash -lc: the user's login environment
    finally:
        client.close()


def test_sftp_put_and_get_round_trip_with_compression(node, tmp_path):
    keys, port = node
    shared = tmp_path / "shared"
    shared.mkdir()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    client = remote.connect("127.0.0.1", "root", keys, port=port)
    try:
        assert client.get_transport().use_compression  # asked for compression
        target = remote.remote_path(str(shared), "in")
        assert remote.put(client, str(src), target) == 100_006
        assert (shared / "in" / "sub" / "b.bin").read_bytes() == (
            src / "sub" / "b.bin"
        ).read_bytes()
        back = tmp_path / "back"
        remote.get(client, target, str(back))
        assert (back / "a.txt").read_text() == "alpha\n"
        one = tmp_path / "one.txt"
        remote.get(client, remote.remote_path(str(shared), "in/a.txt"), str(one))
        assert one.read_text() == "alpha\n"
    finally:
        client.close()


def test_a_host_with_another_host_key_is_refused(node):
    keys, port = node
    impostor_view = ClusterKeys(keys.identity, ClusterKeys.generate("other").host)
    with pytest.raises(CloudError, match="host key"):
        remote.connect("127.0.0.1", "root", impostor_view, port=port)


def test_system_ssh_with_the_generated_config(node, tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("needs the OpenSSH client (apt-get install openssh-client)")
    keys, port = node
    links = [remote.Link("master", "i-1", "127.0.0.1", slots=2)]
    config = remote.write_ssh_files(tmp_path / "c", "rt", keys, links, "root", port=port)
    proc = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "rt-master", "echo", "ok"], check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    # the same config with a different cluster's known_hosts is refused by ssh itself
    other = ClusterKeys(keys.identity, ClusterKeys.generate("other").host)
    config = remote.write_ssh_files(tmp_path / "d", "rt", other, links, "root", port=port)
    proc = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "rt-master", "true"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr
