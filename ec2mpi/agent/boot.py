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
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..aws.keystore import KeyStore
from ..aws.registry import Node, Registry
from ..aws.session import AwsSession
from ..keys import known_hosts_line
from .hostfile import MPICH_NAME, OPENMPI_NAME
from .imds import Imds

log = logging.getLogger("ec2mpi.agent")

EFS_OPTIONS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
ENV_BEGIN, ENV_END = "# >>> ec2mpi (managed by ec2mpi-agent) >>>", "# <<< ec2mpi <<<"


@dataclass(frozen=True)
class AgentParams:
    """The user-data parameters, as the stub writes them to /etc/ec2mpi/agent.json."""
    cluster: str
    region: str
    bucket: str
    table: str
    version: str
    wheel_key: str
    storage: str
    storage_id: str
    shared_path: str
    user: str
    prefix: str

    @classmethod
    def load(cls, path) -> AgentParams:
        data = json.loads(Path(path).read_text())
        return cls(**{f.name: str(data.get(f.name, "")) for f in fields(cls)})


@dataclass(frozen=True)
class AgentPaths:
    """Where the agent reads and writes; root='/' on a node, a tmp dir in tests."""
    root: Path = Path("/")

    def at(self, path: str) -> Path:
        return Path(self.root) / path.lstrip("/")

    @property
    def etc(self) -> Path:
        return self.at("/etc/ec2mpi")

    @property
    def agent_json(self) -> Path:
        return self.etc / "agent.json"

    @property
    def known_hosts(self) -> Path:
        return self.etc / "ssh_known_hosts"

    @property
    def host_key(self) -> Path:
        return self.etc / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.etc / "sshd_config"

    @property
    def sshd_dropin(self) -> Path:
        return self.at("/etc/ssh/sshd_config.d/00-ec2mpi.conf")

    @property
    def log_dir(self) -> Path:
        return self.at("/var/log/ec2mpi")

    @property
    def state(self) -> Path:
        return self.at("/var/lib/ec2mpi/node.json")

    @property
    def run(self) -> Path:
        return self.at("/run/ec2mpi")

    def shared(self, params: AgentParams) -> Path:
        return self.at(params.shared_path)

    def home(self, user: str) -> Path:
        """The real home on a node; a sandboxed one under a test root."""
        if Path(self.root) == Path("/"):
            return Path(pwd.getpwnam(user).pw_dir)
        return self.at("/home/" + user)

    def hostfile_dirs(self, params: AgentParams) -> list[Path]:
        """/etc/ec2mpi, plus a copy on shared storage when there is any (never on the root disk)."""
        if params.storage == "none":
            return [self.etc]
        return [self.etc, self.shared(params) / ".ec2mpi"]


@dataclass
class Identity:
    instance_id: str
    private_ip: str
    hostname: str
    instance_type: str
    lifecycle: str


def identity(imds: Imds) -> Identity:
    life = (imds.get("meta-data/instance-life-cycle") or "on-demand").strip()
    return Identity(imds.meta("instance-id"), imds.meta("local-ipv4"),
                    imds.meta("local-hostname").split(".")[0], imds.meta("instance-type"),
                    "spot" if life == "spot" else "on-demand")


def session_for(params: AgentParams) -> AwsSession:
    """Instance-role credentials (via IMDS); endpoint and CA only when the local cloud sets them."""
    return AwsSession(region=params.region, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                      ca_bundle=os.environ.get("AWS_CA_BUNDLE") or None)


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
    """The cluster user's MPI environment: venv on PATH, default hostfiles; --bind-to none
    locally."""
    lines = [
        ENV_BEGIN,
        (f'case ":$PATH:" in *":{prefix}/venv/bin:"*) ;; '
         f'*) export PATH="{prefix}/venv/bin:$PATH" ;; esac'),
        f"export PRTE_MCA_prte_default_hostfile={etc / OPENMPI_NAME}",
        f"export OMPI_MCA_orte_default_hostfile={etc / OPENMPI_NAME}",
        f"export HYDRA_HOST_FILE={etc / MPICH_NAME}",
    ]
    if local:
        lines += ["export OMPI_MCA_hwloc_base_binding_policy=none",
                  "export PRTE_MCA_hwloc_default_binding_policy=none"]
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


def wait_master(reg: Registry, cluster: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        item = reg.get_cluster(cluster)
        if item and item.get("master"):
            return item["master"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"the registry never named a master for cluster {cluster!r}")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def boot(params: AgentParams, paths: AgentPaths = AgentPaths(), *, imds: Imds | None = None,
         aws: AwsSession | None = None, ssh_port: int = 22, master_timeout: float = 600.0,
         ready_timeout: float = 120.0) -> Node:
    """The whole boot sequence; returns the node as registered (state ready)."""
    local = os.environ.get("EC2MPI_LOCAL") == "1"
    imds = imds or Imds()
    me = identity(imds)
    log.info("boot %s (%s) cluster=%s", me.instance_id, me.private_ip, params.cluster)
    aws = aws or session_for(params)
    reg = Registry(aws, table=params.table)

    master = wait_master(reg, params.cluster, master_timeout)
    node = Node(me.instance_id, "master" if master == me.instance_id else "worker", me.private_ip,
                me.hostname, os.cpu_count() or 1, me.lifecycle, me.instance_type, "booting")
    reg.put_node(params.cluster, node)
    _install(paths.state, json.dumps(asdict(node)).encode(), 0o644)
    log.info("registered as %s (booting)", node.role)

    keys = KeyStore(aws, bucket=params.bucket).get_keys(params.cluster)
    ensure_user(params.user, paths)
    install_keys(params, paths, keys)
    configure_sshd(paths, local, os.environ.get("EC2MPI_SSHD_PIDFILE") or None)
    mount_shared(params, paths, os.environ.get("EC2MPI_MOUNT_HOOK") or None)
    install_mpi_env(params, paths, local)
    wait_banner(me.private_ip, ssh_port, ready_timeout)

    reg.set_node_state(params.cluster, me.instance_id, "ready")
    node.state = "ready"
    _install(paths.state, json.dumps(asdict(node)).encode(), 0o644)
    log.info("ready")
    return node
