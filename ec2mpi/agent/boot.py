"""`ec2mpi-agent boot`: a node configures itself (pull, not push).

Identity from the metadata service, keys from the private bucket, the cluster user,
ssh client and server set-up, shared storage, the MPI environment, then registration:
`booting` first (so `status` sees the node early), `ready` only once keys, storage and
sshd are really in place. Every filesystem path hangs off AgentPaths.root so the tests
run the whole thing in a temporary directory.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from ..aws.keystore import KeyStore
from ..aws.registry import Node, Registry, node_pk
from ..aws.session import AwsSession
from ..keys import known_hosts_line
from .hostfile import MPICH_NAME, OPENMPI_NAME
from .imds import Imds
from .params import AgentParams, AgentPaths, identity, session_for

log = logging.getLogger("ec2mpi.agent")

EFS_OPTIONS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
ENV_BEGIN, ENV_END = "# >>> ec2mpi (managed by ec2mpi-agent) >>>", "# <<< ec2mpi <<<"


# -- pure command lines (unit-tested) -----------------------------------------------
def efs_mount_command(fs_id: str, region: str, path: str, efs_utils: bool = False) -> list[str]:
    if efs_utils:
        return ["mount", "-t", "efs", "-o", "tls", f"{fs_id}:/", path]
    return ["mount", "-t", "nfs4", "-o", EFS_OPTIONS, f"{fs_id}.efs.{region}.amazonaws.com:/", path]


def s3fs_mount_command(
    bucket: str, cluster: str, region: str, path: str, uid: int, gid: int
) -> list[str]:
    opts = (f"iam_role=auto,allow_other,uid={uid},gid={gid},umask=0022,"
            f"url=https://s3.{region}.amazonaws.com,endpoint={region}")
    return ["s3fs", f"{bucket}:/clusters/{cluster}/shared", path, "-o", opts]


def mount_command(params: AgentParams, path: str, uid: int, gid: int, hook: str | None = None,
                  efs_utils: bool = False) -> list[str] | None:
    """The one command that mounts shared storage at `path`, or None for storage=none."""
    if params.storage == "none":
        return None
    if hook:
        return [hook, params.storage, params.storage_id, path]
    if params.storage == "efs":
        return efs_mount_command(params.storage_id, params.region, path, efs_utils)
    if params.storage == "s3fs":
        return s3fs_mount_command(params.bucket, params.cluster, params.region, path, uid, gid)
    raise ValueError(f"unknown storage kind {params.storage!r}")


def mpi_env_block(prefix: str, etc: Path, local: bool) -> str:
    """The cluster user's MPI environment: venv on PATH, OPAL_PREFIX (so singletons and
    ompi_info read the image's parameter file too), default hostfiles; --bind-to none locally,
    where every node shares the host's cores."""
    lines = [
        ENV_BEGIN,
        (f'case ":$PATH:" in *":{prefix}/venv/bin:"*) ;; '
         f'*) export PATH="{prefix}/venv/bin:$PATH" ;; esac'),
        f"export OPAL_PREFIX={prefix}/venv",
        f"export PRTE_MCA_prte_default_hostfile={etc / OPENMPI_NAME}",
        f"export OMPI_MCA_orte_default_hostfile={etc / OPENMPI_NAME}",
        f"export HYDRA_HOST_FILE={etc / MPICH_NAME}",
    ]
    if local:
        lines += ["export PRTE_MCA_hwloc_default_binding_policy=none"]
    return "\n".join(lines + [ENV_END]) + "\n"


def with_env_block(text: str, block: str) -> str:
    """Put the managed block at the very top (before any interactivity check), replacing an old
    one."""
    if ENV_BEGIN in text and ENV_END in text:
        head, rest = text.split(ENV_BEGIN, 1)
        text = head + rest.split(ENV_END, 1)[1].lstrip("\n")
    return block + text


def ssh_client_config(identity_file: Path, known_hosts: Path) -> str:
    return ("Host *\n"
            f"    IdentityFile {identity_file}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            "    StrictHostKeyChecking yes\n")


# -- steps --------------------------------------------------------------------------
def _run(cmd: list[str]) -> None:
    log.info("run: %s", " ".join(cmd))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )


def _owner(user: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return os.getuid(), os.getgid()


def _install(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    if owner and os.geteuid() == 0:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def ensure_user(user: str, paths: AgentPaths) -> None:
    """Create the cluster user if missing: bash, a home, password '*' (locked, keys allowed)."""
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    cmd = ["useradd", "-m", "-s", "/bin/bash", "-p", "*"]
    if Path(paths.root) != Path("/"):
        home = paths.home(user)
        home.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["-d", str(home)]
    _run(cmd + [user])


def install_keys(params: AgentParams, paths: AgentPaths, keys) -> None:
    """User identity + authorized_keys + ssh client config; shared host key + known_hosts."""
    owner = _owner(params.user)
    home = paths.home(params.user)
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    if os.geteuid() == 0:
        os.chown(home, *owner)
        os.chown(ssh, *owner)
    _install(ssh / "id_ed25519", keys.identity.private_openssh, 0o600, owner)
    _install(ssh / "id_ed25519.pub", keys.identity.public_openssh, 0o644, owner)
    _install(ssh / "authorized_keys", keys.identity.public_openssh, 0o600, owner)
    _install(
        ssh / "config",
        ssh_client_config(ssh / "id_ed25519", paths.known_hosts).encode(),
        0o600,
        owner,
    )
    paths.etc.mkdir(parents=True, exist_ok=True)
    _install(paths.host_key, keys.host.private_openssh, 0o600, (0, 0))
    _install(
        paths.host_key.with_name(paths.host_key.name + ".pub"),
        keys.host.public_openssh,
        0o644,
        (0, 0),
    )
    _install(paths.known_hosts, known_hosts_line(keys.host.public_openssh).encode(), 0o644, (0, 0))


def configure_sshd(paths: AgentPaths, local: bool, pidfile: str | None) -> None:
    """Serve the shared host key. On AWS a drop-in Includes our config; locally sshd already
    does."""
    _install(paths.sshd_config, (f"# written by ec2mpi-agent\nHostKey {paths.host_key}\n"
                                 "PasswordAuthentication no\n").encode(), 0o644, (0, 0))
    if not local:
        _install(paths.sshd_dropin, f"Include {paths.sshd_config}\n".encode(), 0o644, (0, 0))
    if pidfile:
        pid = int(Path(pidfile).read_text().split()[0])
        log.info("reload sshd: SIGHUP to %d", pid)
        os.kill(pid, signal.SIGHUP)
    elif not local:
        for unit in ("ssh", "sshd"):
            if (
                subprocess.run(
                    ["systemctl", "reload-or-restart", unit], check=False, capture_output=True
                ).returncode
                == 0
            ):
                return
        raise RuntimeError("could not reload sshd (systemctl reload ssh/sshd failed)")


def mount_shared(params: AgentParams, paths: AgentPaths, hook: str | None) -> None:
    if params.storage == "none":
        return
    target = paths.shared(params)
    target.mkdir(parents=True, exist_ok=True)
    uid, gid = _owner(params.user)
    if os.path.ismount(target):
        log.info("shared storage already mounted at %s", target)
    else:
        _run(
            mount_command(
                params, str(target), uid, gid, hook, efs_utils=bool(shutil.which("mount.efs"))
            )
        )
    if os.geteuid() == 0:
        try:
            st = target.stat()
            if st.st_uid != uid:
                os.chown(target, uid, gid)
        except OSError as err:  # s3fs ownership comes from its uid= option
            log.warning("could not chown %s: %s", target, err)
    (target / ".ec2mpi").mkdir(exist_ok=True)


def install_mpi_env(params: AgentParams, paths: AgentPaths, local: bool) -> None:
    block = mpi_env_block(params.prefix, paths.etc, local)
    home = paths.home(params.user)
    for name in (".bashrc", ".profile"):
        f = home / name
        old = f.read_text() if f.exists() else ""
        _install(f, with_env_block(old, block).encode(), 0o644, _owner(params.user))


def wait_banner(ip: str, port: int, timeout: float) -> None:
    """sshd is in place when it answers with an SSH banner."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=3) as s:
                s.settimeout(3)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError as err:
            last = err
        time.sleep(0.5)
    raise RuntimeError(f"sshd does not answer on {ip}:{port} ({last})")


def cluster_roles(reg: Registry, cluster: str, timeout: float) -> dict:
    """The role ids the client recorded (they make up node keys); a node can boot before
    the client's write is visible, so wait a little (bounded)."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        roles = (reg.get_cluster(cluster) or {}).get("roles") or {}
        if roles.get("master") and roles.get("worker"):
            return roles
        if time.monotonic() > deadline:
            raise RuntimeError(f"the registry names no node roles for cluster {cluster!r}")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def register(reg: Registry, cluster: str, node: Node, budget: float) -> None:
    """Write the node's own item (idempotent) and bump the epoch, retrying with jittered
    backoff within `budget` seconds; a registration that fails for good fails the boot."""
    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        try:
            reg.put_node(cluster, node)
            return
        except Exception as err:  # any failure: retry until the budget ends
            attempt += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not register in the registry after {attempt} "
                                   f"tries: {err}") from err
            log.warning("registration failed (try %d): %s", attempt, err)
            time.sleep(min(10.0, 0.2 * 2 ** attempt) * (0.5 + random.random()))


def boot(params: AgentParams, paths: AgentPaths | None = None, *, imds: Imds | None = None,
         aws: AwsSession | None = None, ssh_port: int = 22, master_timeout: float = 600.0,
         ready_timeout: float = 120.0) -> Node:
    """The whole boot sequence; returns the node as registered (state ready)."""
    local = os.environ.get("EC2MPI_LOCAL") == "1"
    paths = paths or AgentPaths()
    imds = imds or Imds()
    me = identity(imds)
    log.info("boot %s (%s) cluster=%s as %s", me.instance_id, me.private_ip, params.cluster,
             params.role)
    aws = aws or session_for(params)
    reg = Registry(aws, table=params.table)
    roles = cluster_roles(reg, params.cluster, master_timeout)
    node = Node(me.instance_id, params.role, me.private_ip, me.hostname, os.cpu_count() or 1,
                me.lifecycle, me.instance_type, "booting", image=me.image)
    node.key = node_pk(params.cluster, roles[params.role], me.instance_id)
    register(reg, params.cluster, node, master_timeout)
    _install(paths.state, json.dumps(asdict(node)).encode(), 0o644)
    log.info("registered as %s (booting)", node.role)

    keys = KeyStore(aws, bucket=params.bucket, owner=params.account or None).get_keys(
        params.cluster)
    ensure_user(params.user, paths)
    install_keys(params, paths, keys)
    configure_sshd(paths, local, os.environ.get("EC2MPI_SSHD_PIDFILE") or None)
    mount_shared(params, paths, os.environ.get("EC2MPI_MOUNT_HOOK") or None)
    install_mpi_env(params, paths, local)
    wait_banner(me.private_ip, ssh_port, ready_timeout)

    node.state = "ready"
    register(reg, params.cluster, node, master_timeout)
    _install(paths.state, json.dumps(asdict(node)).encode(), 0o644)
    log.info("ready")
    return node
