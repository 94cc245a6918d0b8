"""The node agent against moto's server and the IMDS emulator, in a temporary root."""


import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from ec2mpi.agent.boot import (
    AgentParams,
    AgentPaths,
    boot,
)
from ec2mpi.agent.imds import Imds, ImdsError
from ec2mpi.agent.watch import BOOT_TAIL, Watcher, WatchSettings
from ec2mpi.aws.registry import Node, Registry, node_pk
from ec2mpi.localcloud.imds import ImdsServer, InstanceView

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


ROLES = {"master": "AROAMASTERROLE000001", "worker": "AROAWORKERROLE000001"}
MASTER, WORKER = "i-0000000000000a01", "i-0000000000000b01"


@pytest.fixture
def cluster(aws, cluster_name, stored_keys):
    """A registry cluster item with keys in the bucket (what `create` leaves before launch)."""
    reg = Registry(aws)
    reg.ensure_table()
    reg.create_cluster(cluster_name, "{}")
    reg.update_cluster(cluster_name, roles=ROLES)
    return reg, stored_keys(cluster_name, owner="123456789012")


def params_for(name, user, shared="/shared", storage="none", role="worker"):
    return AgentParams(cluster=name, region="us-east-1", bucket=BUCKET, table="ec2mpi-registry",
                       version="0.1.0", wheel_key=f"clusters/{name}/ec2mpi-0.1.0-py3-none-any.whl",
                       storage=storage, storage_id="fs-12345678" if storage == "efs" else "",
                       shared_path=shared, user=user, prefix="/opt/ec2mpi", role=role,
                       account="123456789012")


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


def test_imds_emulator_requires_tokens_and_honours_ttl(imds):
    imds.views["me"] = InstanceView(
        "i-0abc", "127.0.0.1", role=ROLE, tags={"ec2mpi:cluster": "demo"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(imds.url + "latest/meta-data/instance-id", timeout=2)
    assert err.value.code == 401
    client = Imds(imds.url)
    assert client.meta("instance-id") == "i-0abc"
    assert client.meta("local-hostname") == "ip-127-0-0-1.ec2.internal"
    assert client.get("meta-data/iam/security-credentials/").strip() == ROLE
    creds = client.json("meta-data/iam/security-credentials/" + ROLE)
    assert {
        "Code",
        "LastUpdated",
        "Type",
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
    } <= set(creds)
    assert client.get("meta-data/tags/instance/ec2mpi:cluster") == "demo"
    assert client.json("dynamic/instance-identity/document")["instanceId"] == "i-0abc"
    assert client.interruption() is None and client.rebalance() is None
    imds.inject_interruption("i-0abc")
    assert client.interruption()["action"] == "terminate"
    imds.inject_rebalance("i-0abc")
    assert "noticeTime" in client.rebalance()

    short = Imds(imds.url, ttl=1)
    token = short.token()
    req = urllib.request.Request(imds.url + "latest/meta-data/instance-id",
                                 headers={"X-aws-ec2-metadata-token": token})
    assert urllib.request.urlopen(req, timeout=2).read() == b"i-0abc"
    time.sleep(1.2)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=2)
    assert err.value.code == 401
    assert short.meta("instance-id") == "i-0abc"      # the client refreshes its token

    imds.views.clear()                                  # an unknown caller gets nothing
    assert client.get("meta-data/instance-id") is None


def test_imds_client_never_falls_back_to_link_local_when_disabled(monkeypatch):
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ImdsError):
        Imds()


def test_imds_client_bounded_when_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # closed port: connection refused
    start = time.monotonic()
    with pytest.raises(ImdsError):
        Imds(f"http://127.0.0.1:{port}/", timeout=0.5, retries=2).get("meta-data/instance-id")
    assert time.monotonic() - start < 5


def _agent_env(imds_url, root):
    """What a node's agent sees: no static credentials, the role's come from the emulator."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_EC2_METADATA_DISABLED")}
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds_url
    return env


def test_an_agent_waits_for_role_credentials_that_come_late(imds, tmp_path, monkeypatch):
    """Right after launch the metadata service may have no role credentials yet (or answer
    too slowly): the agent asks again with a new session until they come (a boot saw
    'Unable to locate credentials' on all three tries of one botocore session)."""
    from ec2mpi.agent.params import session_for
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    imds.views["me"] = InstanceView(WORKER, "127.0.0.1")           # no instance profile yet
    params = params_for("late", "nobody")
    assert not session_for(params).has_credentials()      # what one try sees
    with pytest.raises(RuntimeError, match="no instance-role credentials"):
        session_for(params, wait=1.0)
    threading.Timer(1.5, lambda: imds.views.update(
        me=InstanceView(WORKER, "127.0.0.1", role=ROLE))).start()
    aws = session_for(params, wait=30)
    creds = aws.credentials()
    assert creds.access_key.startswith("ASIA") and creds.token and creds.expires > time.time()


def test_boot_installs_keys_registers_and_watch_deregisters(
    aws, cluster, cluster_name, imds, banner, tmp_path, monkeypatch
):
    reg, keys = cluster
    imds.views["me"] = InstanceView(MASTER, "127.0.0.1", instance_type="c6i.xlarge", role=ROLE)
    user = pwd.getpwuid(os.getuid()).pw_name            # exists already: no useradd needed here
    paths = AgentPaths(tmp_path / "root")
    params = params_for(cluster_name, user, storage="efs", role="master")
    write_agent_json(paths, params)
    hook_log = tmp_path / "hook.log"
    hook = tmp_path / "mount-hook"
    hook.write_text(f"#!/bin/sh\necho \"$@\" >> {hook_log}\n")
    hook.chmod(0o755)
    monkeypatch.setenv("EC2MPI_LOCAL", "1")
    monkeypatch.setenv("EC2MPI_MOUNT_HOOK", str(hook))
    monkeypatch.delenv("EC2MPI_SSHD_PIDFILE", raising=False)

    node = boot(params, paths, imds=Imds(imds.url), aws=aws, ssh_port=banner, master_timeout=5)

    assert (node.role, node.state, node.private_ip, node.instance_type) == (
        "master",
        "ready",
        "127.0.0.1",
        "c6i.xlarge",
    )
    [item] = reg.nodes(cluster_name)
    assert (item.instance_id, item.role, item.state, item.slots, item.lifecycle, item.hostname) == (
        MASTER, "master", "ready", os.cpu_count(), "spot", "ip-127-0-0-1")
    assert item.key == f"{cluster_name}#node#{ROLES['master']}:{MASTER}" and not item.problem
    assert reg.epoch(cluster_name) == 2                  # put (booting) + ready
    home = paths.home(user)
    ssh = home / ".ssh"
    assert mode(ssh) == 0o700
    assert (ssh / "id_ed25519").read_bytes() == keys.identity.private_openssh and mode(
        ssh / "id_ed25519"
    ) == 0o600
    assert (ssh / "authorized_keys").read_bytes() == keys.identity.public_openssh
    assert mode(ssh / "authorized_keys") == 0o600 and mode(ssh / "config") == 0o600
    config = (ssh / "config").read_text()
    assert (
        "StrictHostKeyChecking yes" in config
        and f"UserKnownHostsFile {paths.known_hosts}" in config
    )
    assert paths.known_hosts.read_text().startswith("* ssh-ed25519 ")
    assert (
        paths.host_key.read_bytes() == keys.host.private_openssh and mode(paths.host_key) == 0o600
    )
    assert f"HostKey {paths.host_key}" in paths.sshd_config.read_text()
    assert not paths.sshd_dropin.exists()                # EC2MPI_LOCAL: /etc/ssh is not ours
    assert hook_log.read_text().split() == ["efs", "fs-12345678", str(paths.shared(params))]
    bashrc = (home / ".bashrc").read_text()
    assert bashrc.startswith("# >>> ec2mpi") and "binding_policy=none" in bashrc
    assert "PRTE_MCA_prte_default_hostfile" in (home / ".profile").read_text()

    # The node service, as the stub starts it: `run` = boot again (idempotent, as after a
    # reboot), report it, then watch, in one process whose AWS credentials come from the
    # instance role through the emulator; it writes the hostfile and deregisters on SIGTERM.
    env = _agent_env(imds.url, paths.root)
    env.update(EC2MPI_WATCH_POLL="0.2", EC2MPI_SSH_PORT=str(banner))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ec2mpi.agent.main", "--root", str(paths.root), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: (paths.run / "boot.status").exists(), 30), (
            proc.stdout.read1().decode()
        )
        assert (paths.run / "boot.status").read_text() == f"ready {MASTER} master 127.0.0.1\n"
        assert wait_for(lambda: (paths.etc / "hostfile").exists(), 30), proc.stdout.read1().decode()
        assert (paths.etc / "hostfile").read_text() == f"127.0.0.1 slots={os.cpu_count()}\n"
        assert (paths.etc / "hostfile.mpich").read_text() == f"127.0.0.1:{os.cpu_count()}\n"
        assert (paths.shared(params) / ".ec2mpi" / "hostfile").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert reg.nodes(cluster_name) == [] and reg.epoch(cluster_name) == 5   # +2 re-boot, +1 leave


def test_boot_waits_for_the_roles_then_registers_as_a_worker_aws_style(
    aws, cluster, cluster_name, imds, banner, tmp_path, monkeypatch
):
    """Not the local cloud: the sshd drop-in is written, sshd is reloaded by SIGHUP, no --bind-to
    none."""
    reg, _ = cluster
    reg.update_cluster(cluster_name, roles={})                 # create has not named them yet
    imds.views["me"] = InstanceView(WORKER, "127.0.0.1", lifecycle="on-demand")
    threading.Timer(1.0, lambda: reg.update_cluster(cluster_name, roles=ROLES)).start()
    monkeypatch.delenv("EC2MPI_LOCAL", raising=False)
    monkeypatch.delenv("EC2MPI_MOUNT_HOOK", raising=False)
    fake_sshd = subprocess.Popen(["sleep", "60"])
    (tmp_path / "sshd.pid").write_text(f"{fake_sshd.pid}\n")
    monkeypatch.setenv("EC2MPI_SSHD_PIDFILE", str(tmp_path / "sshd.pid"))
    paths = AgentPaths(tmp_path / "root")
    user = pwd.getpwuid(os.getuid()).pw_name
    try:
        node = boot(
            params_for(cluster_name, user),
            paths,
            imds=Imds(imds.url),
            aws=aws,
            ssh_port=banner,
            master_timeout=10,
        )
        assert fake_sshd.wait(5) == -signal.SIGHUP
    finally:
        fake_sshd.kill()
    assert (node.role, node.lifecycle) == ("worker", "on-demand")
    assert [n.state for n in reg.nodes(cluster_name)] == ["ready"]
    assert paths.sshd_dropin.read_text() == f"Include {paths.sshd_config}\n"
    assert "binding_policy" not in (paths.home(user) / ".bashrc").read_text()


def _root_reason():
    if os.geteuid() != 0:
        return "creating the cluster user and running sshd needs root (CI runs as root)"
    if not (shutil.which("useradd") and os.path.exists("/usr/sbin/sshd") and shutil.which("ssh")):
        return "needs useradd, sshd and ssh (apt-get install passwd openssh-server openssh-client)"
    return ""


@pytest.mark.skipif(bool(_root_reason()), reason=_root_reason() or "n/a")
def test_boot_creates_user_and_real_sshd_serves_the_cluster_host_key(
    aws, cluster, cluster_name, imds, tmp_path, monkeypatch
):
    """End to end on one host: the user logs in over ssh with the cluster key, the host key
    is verified with StrictHostKeyChecking, and the login shell has the MPI environment."""
    _reg, _keys = cluster
    imds.views["me"] = InstanceView(MASTER, "127.0.0.1")
    user = "e2t" + uuid.uuid4().hex[:8]
    sandbox = tempfile.mkdtemp(
        prefix="ec2mpi-agent-"
    )  # pytest's tmp is 0700: the user could not enter
    os.chmod(sandbox, 0o755)
    paths = AgentPaths(Path(sandbox))
    # sshd as the local cloud runs it: a bootstrap host key, and an Include of the agent's config
    port = _free_port()
    boot_key = tmp_path / "boot_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-N", "", "-f", str(boot_key)], check=True)
    sshd_conf = tmp_path / "sshd_config"
    sshd_conf.write_text(f"Include {paths.sshd_config}\nPort {port}\nListenAddress 127.0.0.1\n"
                         f"HostKey {boot_key}\nPidFile {tmp_path / 'sshd.pid'}\nUsePAM no\n"
                         "StrictModes no\nPasswordAuthentication no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_conf)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sshd.log", "wb"))  # noqa: SIM115
    try:
        assert wait_for(lambda: (tmp_path / "sshd.pid").exists(), 10)
        monkeypatch.setenv("EC2MPI_LOCAL", "1")
        monkeypatch.setenv("EC2MPI_SSHD_PIDFILE", str(tmp_path / "sshd.pid"))
        boot(params_for(cluster_name, user, role="master"), paths, imds=Imds(imds.url), aws=aws,
             ssh_port=port, master_timeout=5)
        pw = pwd.getpwnam(user)
        assert pw.pw_shell == "/bin/bash" and pw.pw_dir == str(paths.home(user))
        ssh_dir = paths.home(user) / ".ssh"
        assert (
            os.stat(ssh_dir / "id_ed25519").st_uid == pw.pw_uid
            and os.stat(ssh_dir).st_uid == pw.pw_uid
        )
        with open("/etc/shadow") as f:
            assert [line.split(":")[1] for line in f if line.startswith(user + ":")] == ["*"]
        time.sleep(0.5)  # sshd re-executes on SIGHUP
        out = subprocess.run(
            [
                "ssh",
                "-F",
                str(ssh_dir / "config"),
                "-p",
                str(port),
                "-o",
                "BatchMode=yes",
                f"{user}@127.0.0.1",
                "echo $PRTE_MCA_prte_default_hostfile",
            ], check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr + (tmp_path / "sshd.log").read_text()
        assert out.stdout.strip() == str(paths.etc / "hostfile")
    finally:
        sshd.terminate()
        sshd.wait(10)
        subprocess.run(["userdel", "-f", user], check=False, capture_output=True)
        subprocess.run(["rm", "-f", f"/var/mail/{user}"], check=False)
        shutil.rmtree(sandbox, ignore_errors=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(name, i, role="worker", state="ready", slots=2):
    node = Node(_iid(i), role, f"172.31.0.{i}", f"ip-172-31-0-{i}", slots, state=state)
    node.key = node_pk(name, ROLES[role], node.instance_id)
    return node


def _iid(i):
    return f"i-{i:017x}"


def test_watch_follows_membership_within_two_poll_intervals(aws, cluster, cluster_name, tmp_path):
    """Counted in polls, not seconds: after a change, the hostfile follows by the 2nd poll."""
    reg, _ = cluster
    for n in (_node(cluster_name, 10, "master", slots=4), _node(cluster_name, 11)):
        reg.put_node(cluster_name, n)
    master = next(n for n in reg.nodes(cluster_name) if n.role == "master")
    watcher = Watcher(cluster_name, master, Registry(aws), [tmp_path / "etc", tmp_path / "shared"],
                      settings=WatchSettings(poll=0.05, master_heartbeat_every=60))
    hf = tmp_path / "etc" / "hostfile"

    def follows(expected):
        for _ in range(2):          # two poll intervals = two polls of the epoch
            watcher.check_membership()
            if hf.exists() and hf.read_text() == expected:
                return True
        return False

    assert follows("172.31.0.10 slots=4\n172.31.0.11 slots=2\n")
    twelve = _node(cluster_name, 12, state="booting")
    reg.put_node(cluster_name, twelve)
    reg.set_node_state(cluster_name, twelve, "ready")
    assert follows("172.31.0.10 slots=4\n172.31.0.11 slots=2\n172.31.0.12 slots=2\n")
    assert (
        tmp_path / "etc" / "hostfile.mpich"
    ).read_text() == "172.31.0.10:4\n172.31.0.11:2\n172.31.0.12:2\n"
    reg.set_node_state(cluster_name, _node(cluster_name, 11), "draining")
    assert follows("172.31.0.10 slots=4\n172.31.0.12 slots=2\n")
    reg.delete_node(cluster_name, twelve)
    assert follows("172.31.0.10 slots=4\n")
    assert (tmp_path / "shared" / "hostfile").read_text() == "172.31.0.10 slots=4\n"
    writes = watcher.hostfile_writes
    assert not follows("never") and watcher.hostfile_writes == writes   # no change, no rewrite

    # The running loop (a thread, as on a node) does the same and deregisters on stop.
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    reg.put_node(cluster_name, _node(cluster_name, 13))
    assert wait_for(lambda: "172.31.0.13" in hf.read_text(), 30)
    stop.set()
    thread.join(10)
    assert master.instance_id not in {
        n.instance_id for n in reg.nodes(cluster_name)
    }  # deregistered


def test_the_master_reads_the_epoch_often_only_while_the_last_members_boot(
    aws, cluster, cluster_name, tmp_path
):
    """create and add-nodes wait for the hostfile to list the new nodes: while the last few
    of the target size (BOOT_TAIL) boot, or are to come and the epoch moved lately, the
    master reads the epoch every busy_poll; otherwise, and while many are still to come,
    every poll (its steady-state budget)."""
    reg, _ = cluster
    reg.put_node(cluster_name, _node(cluster_name, 30, "master"))
    booting = _node(cluster_name, 31, state="booting")
    reg.put_node(cluster_name, booting)
    reg.update_master(cluster_name, bump=True, target=2 * BOOT_TAIL + 2)   # many to come
    master = next(n for n in reg.nodes(cluster_name) if n.role == "master")
    watcher = Watcher(cluster_name, master, Registry(aws), [tmp_path], deregister=False,
                      settings=WatchSettings(poll=0.5, busy_poll=0.05, tail_window=1.5,
                                             master_heartbeat_every=600, notice_every=600))
    reads: list = []
    unsubscribe = aws.on_call(lambda service, op: reads.append(op) if op == "GetItem" else None)
    hostfile = tmp_path / "hostfile"

    def reads_in(seconds):
        time.sleep(0.7)     # the poll in progress, at the old rate, and the one after it
        before = len(reads)
        time.sleep(seconds)
        return len(reads) - before

    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_for(hostfile.exists, 30)
        assert reads_in(1.5) <= 6            # one booting of many to come: 3 at the 0.5 s poll
        reg.update_master(cluster_name, bump=True, target=2)
        assert wait_for(lambda: watcher.master_state.get("target") == 2, 30)
        assert reads_in(1.0) >= 8            # the last one: ~20 at 0.05 s
        reg.set_node_state(cluster_name, booting, "ready")
        assert wait_for(lambda: booting.private_ip in hostfile.read_text(), 30)
        assert reads_in(1.5) <= 6            # all there: the 0.5 s poll again
        reg.update_master(cluster_name, bump=True, target=3)   # one more, not registered yet
        assert wait_for(lambda: watcher.master_state.get("target") == 3, 30)
        assert reads_in(0.6) >= 6            # the epoch just moved: quick
        time.sleep(1.5)
        assert reads_in(1.5) <= 6            # and after tail_window, though one is missing
    finally:
        stop.set()
        thread.join(10)
        unsubscribe()


def test_spot_notice_drains_the_node_and_the_master_drops_it(
    aws, cluster, cluster_name, imds, tmp_path
):
    reg, _ = cluster
    for n in (_node(cluster_name, 20, "master"), _node(cluster_name, 21)):
        reg.put_node(cluster_name, n)
    imds.views["me"] = InstanceView(_iid(21), "127.0.0.1")
    nodes = {n.instance_id: n for n in reg.nodes(cluster_name)}
    master = Watcher(cluster_name, nodes[_iid(20)], Registry(aws), [tmp_path],
                     settings=WatchSettings(poll=0.2, master_heartbeat_every=60))
    worker = Watcher(cluster_name, nodes[_iid(21)], Registry(aws), imds=Imds(imds.url),
                     settings=WatchSettings(notice_every=0.2, heartbeat_every=0.2))
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in (master, worker)]
    for t in threads:
        t.start()
    hf = tmp_path / "hostfile"
    try:
        assert wait_for(lambda: hf.exists() and hf.read_text().count("\n") == 2, 30)
        before = {n.instance_id: n.heartbeat for n in reg.nodes(cluster_name)}
        time.sleep(1.1)
        assert wait_for(
            lambda: (
                {n.instance_id: n.heartbeat for n in reg.nodes(cluster_name)}[_iid(21)]
                > before[_iid(21)]
            ),
            30,
        )
        imds.inject_interruption(_iid(21))
        assert wait_for(
            lambda: (
                {n.instance_id: n.state for n in reg.nodes(cluster_name)}[_iid(21)] == "draining"
            ),
            30,
        )
        assert wait_for(lambda: hf.read_text() == "172.31.0.20 slots=2\n", 30)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert reg.nodes(cluster_name) == []
