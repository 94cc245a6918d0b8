"""`ec2mpi-agent boot`: a node configures itself (pull, not push).

Identity from the metadata service, keys from the private bucket, the cluster user,
ssh client and server set-up, shared storage, the MPI environment, then registration:
`booting` first (so `status` sees the node early), `ready` only once keys, storage and
sshd are really in place. Every filesystem path hangs off AgentPaths.root so the tests
run the whole thing in a temporary directory.

The agent is root, and the cluster user owns its home and the shared directory: everything
written there is written by a child that has become the user (asuser, safefiles), so a
symlink the user planted leads nowhere the user could not go anyway. Root writes only its
own files (/etc/ec2mpi, the host key, node state), in directories only root controls.
Creating the home (and giving the user the home and the shared mount) stays root's, on
descriptors opened without following links.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import random
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..aws.keystore import KeyStore
from ..aws.registry import Node, Registry, node_pk
from ..keys import known_hosts_line
from .asuser import Account
from .hostfile import MPICH_NAME, OPENMPI_NAME
from .imds import Imds
from .jobcreds import env_lines
from .mounts import (  # noqa: F401 - boot's steps, in one place
    _account,
    _log_notes,
    _run,
    efs_mount_command,
    is_mount_point,
    mount_command,
    mount_shared,
    s3fs_mount_command,
)
from .params import AgentParams, AgentPaths, identity, session_for
from .safefiles import (
    claim_dir,
    ensure_dir_at,
    install_root,
    read_regular_at,
    run_in_dir_as,
    write_file_at,
)

if TYPE_CHECKING:
    from ..aws.node_session import NodeSession

log = logging.getLogger("ec2mpi.agent")

ENV_BEGIN, ENV_END = "# >>> ec2mpi (managed by ec2mpi-agent) >>>", "# <<< ec2mpi <<<"


LOCAL_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_CA_BUNDLE")


def mpi_env_block(prefix: str, etc: Path, local: bool, run: Path | None = None,
                  region: str = "") -> str:
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
    if region:
        lines += [f"export AWS_DEFAULT_REGION={region}"]
    if run is not None:     # the job role's credentials, where the agent serves them
        lines += env_lines(run)
    if local:
        lines += ["export PRTE_MCA_hwloc_default_binding_policy=none"]
        # jobs reach the local cloud's AWS endpoint as the agent does
        lines += [f"export {k}={shlex.quote(os.environ[k])}" for k in LOCAL_AWS_ENV
                  if os.environ.get(k)]
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


def ensure_home(acct: Account, home: Path) -> None:
    """The home exists and is the user's: made (and handed over) by root where root controls
    the way there (useradd -M leaves it missing), never chowned through a user's link."""
    if os.geteuid() != 0:
        home.mkdir(parents=True, exist_ok=True)
    elif claim_dir(home, acct.uid, acct.gid):
        log.info("gave %s to %s", home, acct.name)


def install_keys(params: AgentParams, paths: AgentPaths, keys) -> None:
    """User identity + authorized_keys + ssh client config, written by the user in ~/.ssh;
    shared host key + known_hosts by root in /etc/ec2mpi."""
    acct = _account(params.user)
    home = paths.home(params.user)
    ensure_home(acct, home)
    config = ssh_client_config(home / ".ssh" / "id_ed25519", paths.known_hosts).encode()
    files = [("id_ed25519", keys.identity.private_openssh, 0o600),
             ("id_ed25519.pub", keys.identity.public_openssh, 0o644),
             ("authorized_keys", keys.identity.public_openssh, 0o600),
             ("config", config, 0o600)]
    _log_notes(run_in_dir_as(acct, home, f"installing the ssh keys in {home}/.ssh",
                             _user_ssh_files, files))
    install_root(paths.host_key, keys.host.private_openssh, 0o600)
    install_root(paths.host_key.with_name(paths.host_key.name + ".pub"),
                 keys.host.public_openssh, 0o644)
    install_root(paths.known_hosts, known_hosts_line(keys.host.public_openssh).encode(), 0o644)


def _user_ssh_files(home_fd: int, files) -> list:
    """(As the user.) ~/.ssh is the agent's: a symlink there is replaced by a real 0700
    directory (its target untouched); a file there fails the step."""
    fd, replaced = ensure_dir_at(home_fd, ".ssh", 0o700)
    try:
        os.fchmod(fd, 0o700)
        for name, data, mode in files:
            write_file_at(fd, name, data, mode)
    finally:
        os.close(fd)
    return ["~/.ssh was a symlink: replaced by a directory (its target was not touched)"] \
        if replaced else []


def configure_sshd(paths: AgentPaths, local: bool, pidfile: str | None) -> None:
    """Serve the shared host key. On AWS a drop-in Includes our config; locally sshd already
    does."""
    install_root(paths.sshd_config, (f"# written by ec2mpi-agent\nHostKey {paths.host_key}\n"
                                     "PasswordAuthentication no\n").encode(), 0o644)
    if not local:
        install_root(paths.sshd_dropin, f"Include {paths.sshd_config}\n".encode(), 0o644)
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


def install_mpi_env(params: AgentParams, paths: AgentPaths, local: bool) -> None:
    """The managed block on top of ~/.bashrc and ~/.profile, merged by the user (see
    _merge_env_files for what happens to a symlink there)."""
    block = mpi_env_block(params.prefix, paths.etc, local, paths.run, params.region)
    _log_notes(run_in_dir_as(_account(params.user), paths.home(params.user),
                             "adding the MPI environment to ~/.bashrc and ~/.profile",
                             _merge_env_files, block))


def _merge_env_files(home_fd: int, block: str) -> list:
    """(As the user.) Each file is read without following a symlink: a symlink (or a file
    that is not regular or not readable) is replaced by a regular file holding only the
    managed block; its target is never read or changed."""
    notes = []
    for name in (".bashrc", ".profile"):
        old = read_regular_at(home_fd, name)
        if old is None and _present(home_fd, name):
            notes.append(f"~/{name} was a symlink or not a readable regular file: replaced by "
                         "a fresh file with the MPI environment")
        text = with_env_block((old or b"").decode("utf-8", "surrogateescape"), block)
        write_file_at(home_fd, name, text.encode("utf-8", "surrogateescape"), 0o644)
    return notes


def _present(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


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
        time.sleep(0.1)   # sshd re-executes itself on SIGHUP: usually back within 0.1 s
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


def install_seconds(paths: AgentPaths) -> float:
    """What user-data spent installing (0 on a baked image), as it wrote it."""
    try:
        return max(0.0, float((paths.run / "install.seconds").read_text().strip()))
    except (OSError, ValueError):
        return 0.0


def boot(params: AgentParams, paths: AgentPaths | None = None, *, imds: Imds | None = None,
         aws: NodeSession | None = None, ssh_port: int = 22, master_timeout: float = 600.0,
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
                me.lifecycle, me.instance_type, "booting", image=me.image,
                install_s=install_seconds(paths))
    node.key = node_pk(params.cluster, roles[params.role], me.instance_id)
    register(reg, params.cluster, node, master_timeout)
    install_root(paths.state, json.dumps(asdict(node)).encode(), 0o644)
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
    install_root(paths.state, json.dumps(asdict(node)).encode(), 0o644)
    log.info("ready")
    return node
