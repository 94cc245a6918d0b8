"""Run a piece of file work as another user: the root agent's way into directories it
must not trust (the cluster user's home, the shared directory).

Root following a symlink that the cluster user planted is how a user becomes root; a child
that has dropped to the user's uid, gid and groups can follow anything, because the kernel
then checks every step with the user's rights. `run_as` forks, drops privileges for good
(setgroups, setgid, setuid: no way back, no capabilities left), runs the work, and sends its
result or its error back through a pipe; the parent raises the error as an OSError.

The child is a fork of a process that may have threads: it only makes system calls on data
computed before the fork (no logging, no NSS look-ups: the groups are read in the parent),
closes every inherited descriptor, and leaves with os._exit.
"""
from __future__ import annotations

import gc
import json
import os
import pwd
from dataclasses import dataclass
from typing import Any, Callable


class AsUserError(OSError):
    """The work failed in the child (or the child died): errno and message from there."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Account:
    """Who the child becomes: everything resolved in the parent, before the fork."""
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def account(user: str) -> Account:
    """The account of a user by name (KeyError if there is none)."""
    pw = pwd.getpwnam(user)
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)))


def account_of_uid(uid: int, gid: int) -> Account:
    """The account behind a file owner; an owner without a passwd entry gets only `gid`."""
    try:
        return account(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return Account(str(uid), uid, gid, (gid,))


def needs_drop(acct: Account) -> bool:
    """Only root has privileges to drop; an unprivileged agent already runs with its own."""
    return os.geteuid() == 0 and acct.uid != 0


def run_as(acct: Account, what: str, work: Callable[..., Any], *args) -> Any:
    """`work(*args)` with the rights of `acct` (in a forked child when we are root); returns
    its JSON-able result, raises AsUserError naming `what` and the user when it fails."""
    if not needs_drop(acct):
        return work(*args)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its effects are what the tests check
        _child(acct, w, r, work, args)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    return _outcome(acct, what, data, status)


def _child(acct: Account, w: int, r: int, work, args) -> None:
    """Drop privileges, do the work, report; never returns."""
    code = 1
    gc.disable()    # no finalizer of the parent's objects runs here
    try:
        os.close(r)
        os.closerange(3, w)
        os.closerange(w + 1, _max_fd())
        os.setgroups(list(acct.groups))
        os.setgid(acct.gid)
        os.setuid(acct.uid)
        if os.getuid() != acct.uid or os.geteuid() != acct.uid:
            raise PermissionError(1, "privileges were not dropped")
        os.umask(0o022)
        report = {"ok": True, "result": work(*args)}
        code = 0
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
        report = {"ok": False, "errno": getattr(err, "errno", None) or 0, "error": _describe(err)}
    try:
        data = json.dumps(report).encode()
        while data:
            data = data[os.write(w, data):]
    finally:
        os._exit(code)


def _describe(err: BaseException) -> str:
    """'Permission denied: id_ed25519' rather than '[Errno 13] Permission denied: ...'."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f": {err.filename}" if err.filename else "")
    return str(err) or type(err).__name__


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 65536


def _outcome(acct: Account, what: str, data: bytes, status: int) -> Any:
    """The child's result, or its error as an AsUserError."""
    try:
        report = json.loads(data.decode() or "{}")
    except ValueError:
        report = {}
    if report.get("ok") and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return report.get("result")
    if "error" in report:
        raise AsUserError(report.get("errno") or 0, f"as user {acct.name}: {what}: "
                                                     f"{report['error']}")
    raise AsUserError(0, f"as user {acct.name}: {what}: the child ended with status {status}")
