"""File writes of the root agent that no other user can redirect.

The rule (ARCHITECTURE.md, "Security model"): root never follows a symlink in a directory
another user can write. So every write starts with `walk`, which follows a path from / the
way the kernel would, but stops at the first component that root does not control; then:

- a directory only root controls is written as root, with O_EXCL|O_NOFOLLOW temp files
  renamed into place through a directory descriptor (`write_files`, `install_root`);
- a directory some user controls (the cluster user's home, the shared directory) is written
  in a child that has become that user (`asuser.run_as`): the kernel then checks every step
  with the user's own rights, so a planted symlink leads nowhere the user could not go
  anyway. The directory the agent writes into is its own: a symlink in its place is
  replaced by a real directory (the link's target is never touched).

The *_at helpers work on descriptors and never follow a symlink in the last component;
they are the building blocks of the work done in those children too (boot.py).
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .asuser import Account, account_of_uid, run_as

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
MAX_HOPS = 40   # symlinks followed in one walk, like the kernel's limit


@dataclass
class Walk:
    """Where control over a path changes hands. `trusted` is the real path of the longest
    prefix only root controls; `rest` the components after it; `owner` (and `gid`) the uid
    controlling `rest` (0 when `rest` is empty or does not exist yet: root creates it)."""
    trusted: str
    rest: list[str] = field(default_factory=list)
    owner: int = 0
    gid: int = 0
    missing: bool = False
    sticky: bool = False        # `trusted` is a sticky dir others may add entries to (/tmp)

    @property
    def first(self) -> str:
        """The first component out of root's control (for messages)."""
        return os.path.join(self.trusted, self.rest[0]) if self.rest else self.trusted


def walk(path) -> Walk:
    """Follow `path` from / without trusting anything root does not own: root-owned
    symlinks (in root-owned directories) are followed, the first entry owned by someone
    else ends the walk. A root directory others may write (no sticky bit) is refused."""
    parts = deque(PurePosixPath(os.path.abspath(path)).parts[1:])
    trusted, hops, sticky = "/", 0, False
    while parts:
        name = parts.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            trusted = os.path.dirname(trusted)
            continue
        sticky = _writable_by_others(trusted)
        here = os.path.join(trusted, name)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return Walk(trusted, [name, *parts], missing=True, sticky=sticky)
        if st.st_uid != 0:
            return Walk(trusted, [name, *parts], st.st_uid, st.st_gid, sticky=sticky)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_HOPS:
                raise OSError(errno.ELOOP, f"too many symlinks in {path}")
            target = PurePosixPath(os.readlink(here))
            parts.extendleft(reversed(target.parts[1:] if target.is_absolute() else target.parts))
            if target.is_absolute():
                trusted = "/"
            continue
        trusted = here
    return Walk(trusted)


def _writable_by_others(directory: str) -> bool:
    """True for a sticky directory others may add to (their entries are theirs, never
    root's); raises for a root directory others may rewrite: nothing under it is root's."""
    st = os.stat(directory)
    others = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0)
    if not others:
        return False
    if st.st_mode & stat.S_ISVTX:
        return True
    raise PermissionError(errno.EPERM, f"{directory} is writable by other users: refusing to "
                                       "work under it as root")


# -- descriptor helpers (root and user side alike) -----------------------------------
def ensure_dir_at(parent_fd: int, name: str, mode: int = 0o755,
                  replace_link: bool = True) -> tuple[int, bool]:
    """Open directory `name` under `parent_fd` without following a symlink, creating it if
    missing; with `replace_link`, a symlink in its place is removed first (the link only;
    its target is untouched). Returns (fd, replaced)."""
    replaced = False
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode) and replace_link:
        os.unlink(name, dir_fd=parent_fd)
        st, replaced = None, True
    if st is None:
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            pass    # someone was quicker: the O_NOFOLLOW open below decides
    try:
        return os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd), replaced
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError(errno.ENOTDIR, f"{name} is not a directory (a symlink or "
                                                    "a file is in its place)") from None
        raise


def write_file_at(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Replace `name` under `dir_fd` atomically: a fresh O_EXCL|O_NOFOLLOW temp file, mode
    set on the open descriptor, renamed over the old entry (a symlink there is replaced,
    never followed)."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def read_regular_at(dir_fd: int, name: str, limit: int = 16 << 20) -> bytes | None:
    """The contents of regular file `name` under `dir_fd`, or None when it is missing, a
    symlink, not a regular file (a FIFO would block) or unreadable. Larger than `limit`:
    EFBIG (better to fail than to drop a user's file)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO):
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"{name} is larger than {limit} bytes")
    return data


# -- root-controlled directories -------------------------------------------------------
def _open_root_dir(w: Walk, mode: int = 0o755) -> int:
    """Open (creating what is missing) a directory whose path only root controls; each
    missing component is made and opened without following, and must then be ours."""
    fd = os.open(w.trusted, DIR_FLAGS)
    try:
        for name in w.rest:
            child, _ = ensure_dir_at(fd, name, mode, replace_link=False)
            os.close(fd)
            fd = child
            if os.fstat(fd).st_uid != os.geteuid():
                raise PermissionError(errno.EPERM, f"{name} was created by someone else")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refuse(w: Walk, what: str) -> PermissionError:
    return PermissionError(errno.EPERM, f"refusing to {what} as root: {w.first} belongs to "
                                        f"uid {w.owner}")


def install_root(path, data: bytes, mode: int) -> None:
    """A root-only file (/etc/ec2mpi/*, the host key, node state): written as root in a
    directory only root controls, or refused."""
    path = Path(path)
    write_files(path.parent, {path.name: data}, mode, root_only=True)


def write_files(directory, files: dict, mode: int = 0o644, root_only: bool = False) -> list:
    """Write `files` (name -> bytes or str, in order) into `directory`, creating it: as root
    where only root controls the path, else as the user who does (refused if
    `root_only`). Returns notes on what was replaced (for the log)."""
    files = {name: data.encode() if isinstance(data, str) else data
             for name, data in files.items()}
    if os.geteuid() != 0:   # nothing to drop: the kernel already checks our own rights
        return _write_as_owner(str(directory), files, mode)
    w = walk(directory)
    if w.owner == 0:
        fd = _open_root_dir(w)
        try:
            for name, data in files.items():
                write_file_at(fd, name, data, mode)
        finally:
            os.close(fd)
        return []
    if root_only:
        raise _refuse(w, f"write {', '.join(files)} in {directory}")
    acct = account_of_uid(w.owner, w.gid)
    return run_as(acct, f"writing {', '.join(files)} in {directory}", _write_as_owner,
                  str(directory), files, mode)


def ensure_dir(directory) -> list:
    """`directory` exists (as write_files makes it: by root or by the user in control)."""
    return write_files(directory, {})


def _write_as_owner(directory: str, files: dict, mode: int) -> list:
    """(As the owner.) The directory's parents may be followed; the directory itself is
    ours: a symlink in its place is replaced by a real directory."""
    parent, name = os.path.split(directory.rstrip("/") or "/")
    os.makedirs(parent, exist_ok=True)
    pfd = os.open(parent, DIR_FLAGS)
    try:
        fd, replaced = ensure_dir_at(pfd, name, 0o755)
    finally:
        os.close(pfd)
    try:
        for fname, data in files.items():
            write_file_at(fd, fname, data, mode)
    finally:
        os.close(fd)
    return [f"replaced the symlink {directory} by a directory"] if replaced else []


def run_in_dir_as(acct: Account, directory, what: str, work, *args):
    """`work(fd, *args)` as `acct`, on `directory` opened by the user (the kernel checks the
    way with the user's rights). For work richer than writing files (boot.py)."""
    return run_as(acct, what, _in_dir, str(directory), work, args)


def _in_dir(directory: str, work, args):
    os.makedirs(directory, exist_ok=True)
    fd = os.open(directory, DIR_FLAGS)
    try:
        return work(fd, *args)
    finally:
        os.close(fd)


def prepare_mount_point(path, mode: int = 0o755) -> None:
    """Root mounts on `path` (mount follows links): its entry must be root's, i.e. its
    parent only root controls; missing components are created as root."""
    w = walk(path)
    if w.owner == 0:
        os.close(_open_root_dir(w, mode))
    elif len(w.rest) > 1 or w.sticky:
        raise _refuse(w, f"mount on {path}")
    elif stat.S_ISLNK(os.lstat(w.first).st_mode):
        raise PermissionError(errno.EPERM, f"refusing to mount on {path}: a symlink of uid "
                                           f"{w.owner}")


def claim_dir(path, uid: int, gid: int, mode: int = 0o755) -> bool:
    """Make `path` a directory owned by uid:gid without ever following a link someone else
    controls: create it (as root) where root controls the way, chown it through a descriptor
    opened without following where root controls its entry. True if something changed. A
    directory deeper in another user's territory is refused, unless that user is uid."""
    w = walk(path)
    if w.trusted == "/" and not w.rest:
        raise PermissionError(errno.EPERM, "refusing to give / to a user")
    if w.owner == 0:
        fd = _open_root_dir(w, mode)
    elif len(w.rest) == 1 and not (w.sticky and w.owner != uid):
        parent = os.open(w.trusted, DIR_FLAGS)
        try:
            fd = os.open(w.rest[0], DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        finally:
            os.close(parent)
    elif w.owner == uid:
        return False
    else:
        raise _refuse(w, f"give {path} to uid {uid}")
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) == (uid, gid):
            return False
        os.fchown(fd, uid, gid)
        return True
    finally:
        os.close(fd)
