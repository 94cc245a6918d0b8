"""Shared storage on a node: the one command that mounts it (EFS over TLS with IAM, s3fs
with the instance role, or the local cloud's hook), the mount itself on a mount point only
root controls, and the check that it answers before the node says it is ready."""
from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from .asuser import Account, account
from .params import AgentParams, AgentPaths
from .safefiles import claim_dir, ensure_dir, prepare_mount_point

log = logging.getLogger("ec2mpi.agent")


def _run(cmd: list[str]) -> None:
    log.info("run: %s", " ".join(cmd))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )


def _account(user: str) -> Account:
    """The cluster user's account; an unprivileged agent (tests) works as itself."""
    try:
        return account(user)
    except KeyError:
        if os.geteuid() == 0:
            raise RuntimeError(f"the cluster user {user!r} does not exist") from None
        me = pwd.getpwuid(os.getuid())
        return Account(me.pw_name, me.pw_uid, os.getgid(), tuple(os.getgroups()))


def _log_notes(notes) -> None:
    for note in notes or ():
        log.warning("%s", note)


# -- pure command lines (unit-tested) -----------------------------------------------
def efs_mount_command(fs_id: str, path: str, efs_utils: bool = False) -> list[str]:
    """EFS over TLS, authorized by the node's role: the file system's policy admits only this
    cluster's roles, so a plain NFS mount (anonymous to EFS) is refused there."""
    if not efs_utils:
        raise RuntimeError("EFS needs amazon-efs-utils (mount.efs) on the image: the file system "
                        "admits only this cluster's roles, over TLS with IAM; bake the image "
                        "with bootstrap/bake-ami.sh, or use --storage s3fs")
    return ["mount", "-t", "efs", "-o", "tls,iam", f"{fs_id}:/", path]


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
        return efs_mount_command(params.storage_id, path, efs_utils)
    if params.storage == "s3fs":
        return s3fs_mount_command(params.bucket, params.cluster, params.region, path, uid, gid)
    raise ValueError(f"unknown storage kind {params.storage!r}")


def mount_shared(params: AgentParams, paths: AgentPaths, hook: str | None) -> None:
    """Mount shared storage (on a mount point whose entry only root controls), give its root
    to the cluster user, and make the agent's .ec2mpi directory in it as that user (a
    symlink there is replaced, never followed)."""
    if params.storage == "none":
        return
    acct = _account(params.user)
    target = paths.shared(params)
    if os.geteuid() == 0:
        prepare_mount_point(target)
    else:
        target.mkdir(parents=True, exist_ok=True)
    if is_mount_point(target):
        log.info("shared storage already mounted at %s", target)
    else:
        _run(
            mount_command(
                params, str(target), acct.uid, acct.gid, hook,
                efs_utils=bool(shutil.which("mount.efs"))
            )
        )
    _check_mounted(target, params.storage, sandbox=Path(paths.root) != Path("/"))
    if os.geteuid() == 0:
        try:
            claim_dir(target, acct.uid, acct.gid)
        except OSError as err:  # s3fs ownership comes from its uid= option
            log.warning("could not chown %s: %s", target, err)
    _log_notes(ensure_dir(target / ".ec2mpi"))


def is_mount_point(path: Path) -> bool:
    """From the kernel's mount table: os.path.ismount misses a bind mount of a directory of
    the same file system (the local cloud's EFS)."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as fh:
            points = {line.split()[4].replace("\\040", " ") for line in fh if line.strip()}
    except OSError:
        return os.path.ismount(real)
    return real in points


def _check_mounted(target: Path, storage: str, sandbox: bool = False, wait: float = 5.0) -> None:
    """A mount helper can exit 0 and its FUSE daemon die right after (s3fs refused by S3):
    the node is not ready until the mount answers (in a test sandbox: until it lists)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if sandbox or is_mount_point(target):
                os.listdir(target)
                return
            problem = "nothing is mounted there"
        except OSError as err:
            problem = err.strerror or str(err)
        if time.monotonic() > deadline:
            raise RuntimeError(f"shared storage ({storage}) at {target} is not usable: {problem}; "
                            "see the mount helper's messages above")
        time.sleep(0.2)
