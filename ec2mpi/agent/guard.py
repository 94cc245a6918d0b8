"""`ec2mpi-agent guard -- CMD...`: run CMD so that it dies with the connection that started it.

sshd gives a command without a terminal no signal when the client goes (Ctrl-C, SIGTERM,
a laptop closed): the command and everything it started (mpirun, its daemons and ranks
on every node) would run on. The guard starts CMD in a process group of its own and reads
its stdin, which only the client's end of the SSH channel writes; end of file means the
client is gone or asked us to stop, so the guard ends the group: SIGTERM (mpirun then stops
its ranks everywhere), SIGKILL after a grace period. CMD's own stdin is /dev/null.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

GRACE = 10.0


def guard(argv: list[str], grace: float = GRACE) -> int:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)

    def watch_stdin() -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except OSError:
            pass
        if proc.poll() is None:
            stop(proc, grace)

    threading.Thread(target=watch_stdin, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop(proc, grace))
    code = proc.wait()
    return 128 - code if code < 0 else code


def stop(proc: subprocess.Popen, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
