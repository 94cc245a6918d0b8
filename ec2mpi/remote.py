"""Reaching the nodes from the client: paramiko for commands and SFTP, system ssh for logins.

The host key is verified against the cluster's own host key and nothing else: the key is
added to the client's host keys for the address we dial, and a policy that rejects any
other host stands in for AutoAddPolicy. Generated ssh configs say StrictHostKeyChecking yes.
"""
from __future__ import annotations

import base64
import io
import os
import posixpath
import select
import shlex
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .errors import CloudError, UserError
from .keys import ClusterKeys, known_hosts_line


class RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """Any host that did not present the cluster host key is refused."""

    def missing_host_key(self, client, hostname, key):
        raise CloudError(
            f"{hostname} offered a {key.get_name()} host key that is not the cluster's",
            "the node is not a cluster node (or was replaced); check 'ec2mpi status'",
        )


@dataclass(frozen=True)
class Link:
    """How to reach one node: its label (master, node-K), address, and whether via the master."""

    label: str
    instance_id: str
    address: str
    via_master: bool = False
    slots: int = 1


def _host_key(keys: ClusterKeys) -> paramiko.PKey:
    key_type, b64 = keys.host.public_openssh.decode().split()[:2]
    if key_type != "ssh-ed25519":
        raise CloudError(
            f"unexpected cluster host key type {key_type}", "recreate the cluster keys"
        )
    return paramiko.Ed25519Key(data=base64.b64decode(b64))


def _identity(keys: ClusterKeys) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(keys.identity.private_openssh.decode()))


def connect(address: str, user: str, keys: ClusterKeys, port: int = 22, sock=None,
            timeout: float = 20.0) -> paramiko.SSHClient:
    """An SSH client logged in as `user`, compression on, host key = the cluster host key only."""
    client = paramiko.SSHClient()
    host_key = _host_key(keys)
    for name in (address, f"[{address}]:{port}"):
        client.get_host_keys().add(name, host_key.get_name(), host_key)
    client.set_missing_host_key_policy(RejectUnknownHost())
    try:
        client.connect(address, port=port, username=user, pkey=_identity(keys), sock=sock,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       allow_agent=False, look_for_keys=False, compress=True)
    except paramiko.BadHostKeyException:
        client.close()
        raise CloudError(
            f"{address} presented a host key that is not the cluster's",
            "refusing to connect: the address may belong to another machine now",
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        raise CloudError(
            f"{user}@{address} refused the cluster identity",
            "the node may still be booting; retry, or see 'ec2mpi logs NODE'",
        ) from None
    except (OSError, paramiko.SSHException) as err:
        client.close()
        if isinstance(err, CloudError):
            raise
        raise CloudError(
            f"cannot reach {address}:{port}: {err}",
            "check the node is ready ('ec2mpi status') and your address is in --ssh-cidr",
        ) from None
    return client


def connect_link(link: Link, master: Link, user: str, keys: ClusterKeys, port: int = 22):
    """Connect to a node directly, or through the master when it has no address we can reach.

    Returns (client, clients_to_close)."""
    if not link.via_master:
        client = connect(link.address, user, keys, port)
        return client, [client]
    jump = connect(master.address, user, keys, port)
    try:
        sock = jump.get_transport().open_channel(
            "direct-tcpip", (link.address, port), ("127.0.0.1", 0)
        )
    except paramiko.SSHException as err:
        jump.close()
        raise CloudError(
            f"the master cannot reach {link.label} at {link.address}: {err}",
            "check 'ec2mpi status'",
        ) from None
    client = connect(link.address, user, keys, port, sock=sock)
    return client, [client, jump]


def run(client: paramiko.SSHClient, command: str, stdout=None, stderr=None,
        guard: bool = False, stdin: bytes | None = None) -> int:
    """Run `command` in a login shell on the node, streaming its output; returns its exit
    status. With `guard`, the remote process tree is stopped when we stop: Ctrl-C (or
    SIGTERM, which the caller turns into KeyboardInterrupt) closes the remote stdin, and the
    node's `ec2mpi-agent guard` then ends the command's process group; a lost connection
    closes it too. Without a guard, sshd would leave the tree running (no terminal).
    `stdin` (without a guard) is the command's whole input."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    channel = client.get_transport().open_session()
    if guard:
        command = "exec ec2mpi-agent guard -- bash -c " + shlex.quote(command)
    channel.exec_command("bash -lc " + shlex.quote(command))
    if not guard:
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
    try:
        _pump(channel, stdout, stderr)
    except KeyboardInterrupt:
        channel.shutdown_write()            # EOF: the guard stops the command on the node
        channel.settimeout(15.0)
        try:
            _pump(channel, stdout, stderr, deadline=time.monotonic() + 15.0)
        except (OSError, TimeoutError):
            pass
        channel.close()
        raise
    status = channel.recv_exit_status()
    channel.close()
    return 255 if status < 0 else status


def capture(client: paramiko.SSHClient, command: str,
            stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run `command` in a login shell on the node: (exit status, stdout, stderr)."""
    out, err = io.BytesIO(), io.BytesIO()
    status = run(client, command, stdout=out, stderr=err, stdin=stdin)
    return status, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")


def _pump(channel, stdout, stderr, deadline: float | None = None) -> None:
    while True:
        select.select([channel], [], [], 1.0)
        got = False
        while channel.recv_ready():
            stdout.write(channel.recv(32768))
            got = True
        while channel.recv_stderr_ready():
            stderr.write(channel.recv_stderr(32768))
            got = True
        if got:
            stdout.flush()
            stderr.flush()
        if channel.exit_status_ready() and not channel.recv_ready() \
                and not channel.recv_stderr_ready():
            return
        if deadline is not None and time.monotonic() > deadline:
            return


def remote_path(shared: str, path: str | None, default_name: str = "") -> str:
    """Relative paths (and none) land in the cluster's shared directory; absolute ones must be in
    it."""
    if not path:
        path = default_name
    full = posixpath.normpath(posixpath.join(shared, path))
    if full != shared and not full.startswith(shared.rstrip("/") + "/"):
        raise UserError(f"{path!r} is outside the shared directory {shared}",
                        f"give a path under {shared} (relative paths are taken from there)")
    return full


def put(client: paramiko.SSHClient, local: str, remote: str) -> int:
    """Copy a file or a directory tree to the node; returns bytes sent."""
    if not os.path.exists(local):
        raise UserError(f"{local!r} does not exist", "give a local file or directory")
    sent = 0
    with client.open_sftp() as sftp:
        if os.path.isdir(local):
            for root, _dirs, files in os.walk(local):
                rel = os.path.relpath(root, local)
                target = remote if rel == "." else posixpath.join(remote, *Path(rel).parts)
                _mkdirs(sftp, target)
                for f in files:
                    sent += sftp.put(os.path.join(root, f), posixpath.join(target, f)).st_size or 0
        else:
            _mkdirs(sftp, posixpath.dirname(remote))
            sent += sftp.put(local, remote).st_size or 0
    return sent


def get(client: paramiko.SSHClient, remote: str, local: str) -> int:
    """Copy a file or directory tree from the node; returns bytes received. Names in a remote
    listing come from the node, which we do not trust: see _checked_names and _inside."""
    got = 0
    with client.open_sftp() as sftp:
        try:
            attrs = sftp.stat(remote)
        except FileNotFoundError:
            raise UserError(
                f"{remote} does not exist on the cluster", "list it with: ec2mpi ssh -- ls /shared"
            ) from None
        if stat.S_ISDIR(attrs.st_mode or 0):
            os.makedirs(local, exist_ok=True)
            top = os.path.realpath(local)
            stack = [(remote, local)]
            while stack:
                rdir, ldir = stack.pop()
                os.makedirs(_inside(ldir, top, local), exist_ok=True)
                entries = sftp.listdir_attr(rdir)
                for entry in _checked_names(entries, rdir):
                    r = posixpath.join(rdir, entry.filename)
                    dest = _inside(os.path.join(ldir, entry.filename), top, local)
                    if stat.S_ISDIR(entry.st_mode or 0):
                        stack.append((r, dest))
                    else:
                        sftp.get(r, dest)
                        got += entry.st_size or 0
        else:
            if os.path.isdir(local):
                local = os.path.join(local, posixpath.basename(remote))
            sftp.get(remote, local); got += attrs.st_size or 0
    return got


def bad_name(name) -> str:
    """Why a file name from a remote listing cannot be used as one local path component
    ('' if it can): a hostile node could send '../../.bashrc'."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        return "not a file name"
    if "\0" in name:
        return "it contains a NUL byte"
    for sep in {"/", os.sep, os.altsep} - {None}:
        if sep in name:
            return f"it contains {sep!r}"
    return ""


def _checked_names(entries, rdir: str) -> list:
    """The whole listing, checked before any of it is fetched."""
    for entry in entries:
        why = bad_name(entry.filename)
        if why:
            raise CloudError(
                f"the node listed an unsafe file name {entry.filename!r} in {rdir} ({why})",
                "nothing of that directory was copied; whoever can write there on the cluster "
                "may be trying to write outside your destination",
            )
    return list(entries)


def _inside(path: str, top: str, local: str) -> str:
    """`path` unchanged if it resolves (symlinks included) inside `top`, the real path of the
    destination `local`; a local symlink leading out stops the copy."""
    real = os.path.realpath(path)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        raise UserError(
            f"{path} leads outside the destination {local} (to {real})",
            "a symlink in the destination points elsewhere: remove it, or copy into an "
            "empty directory",
        )
    return path


def _mkdirs(sftp, path: str) -> None:
    parts, current = [p for p in path.split("/") if p], ""
    for part in parts:
        current += "/" + part
        try:
            sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current)


# -- files for the system ssh --------------------------------------------------------

def ssh_config_text(cluster: str, links: list[Link], user: str, identity: Path, known_hosts: Path,
                    port: int = 22) -> str:
    """Host entries NAME-master (alias NAME-node-0) and NAME-node-K, host keys strictly checked."""
    common = [f"    User {user}", f"    IdentityFile {identity}", "    IdentitiesOnly yes",
              f"    UserKnownHostsFile {known_hosts}", "    StrictHostKeyChecking yes",
              "    GlobalKnownHostsFile /dev/null", "    Compression yes"]
    if port != 22:
        common.append(f"    Port {port}")
    blocks = []
    for link in links:
        names = [f"{cluster}-{link.label}"] + (
            [f"{cluster}-node-0"] if link.label == "master" else []
        )
        lines = [f"Host {' '.join(names)}", f"    HostName {link.address}"]
        if link.via_master:
            lines.append(f"    ProxyJump {cluster}-master")
        blocks.append("\n".join(lines + common))
    return "\n\n".join(blocks) + "\n"


def write_ssh_files(directory: Path, cluster: str, keys: ClusterKeys, links: list[Link], user: str,
                    port: int = 22) -> Path:
    """Write identity, known_hosts and ssh_config (0600) under `directory`; returns the config
    path."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity, known, config = (
        directory / "id_ed25519",
        directory / "known_hosts",
        directory / "ssh_config",
    )
    _write_private(identity, keys.identity.private_openssh)
    _write_private(known, known_hosts_line(keys.host.public_openssh, "*").encode())
    _write_private(config, ssh_config_text(cluster, links, user, identity, known, port).encode())
    return config


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def parallel_hosts_text(cluster: str, links: list[Link], config: Path) -> str:
    """GNU parallel --sshloginfile lines: 'SLOTS/ssh -F CONFIG NAME-LABEL', one per node."""
    return "".join(f"{link.slots}/ssh -F {config} {cluster}-{link.label}\n" for link in links)


def system_ssh(config: Path, host: str, command: list[str] | None = None) -> int:
    """Hand over to the system ssh (an interactive login) with the generated config."""
    ssh = shutil.which("ssh")
    if not ssh:
        raise UserError(
            "no 'ssh' program found", "install OpenSSH client, or give a command: ec2mpi ssh -- CMD"
        )
    argv = [ssh, "-F", str(config), host] + (["--"] + command if command else [])
    return subprocess.call(argv)
