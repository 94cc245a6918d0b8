"""The farm's worker, on every node (started over ssh by the scheduler, agent/farm.py):
runs the tasks it is sent, one process group each, and stops them all when its input
ends."""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("ec2mpi.agent.farm")

class _Stop(Exception):
    """SIGTERM, SIGHUP or SIGINT to the worker: stop like at the end of input."""


def worker(cwd: str, stdin=None, stdout=None, grace: float = 5.0) -> int:
    """Run the tasks sent on stdin (JSON lines: id, attempt, cmd, env), each `bash -c CMD` in
    `cwd` in a process group of its own; send back JSON lines: `ready`, then per task its
    output (`out`, base64) and `exit`. End of input (the scheduler is gone or done with this
    node): stop every task's group (SIGTERM, SIGKILL after `grace`) and exit."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    lock = threading.Lock()
    # The environment is ssh's, with ~/.bashrc already applied. bash started from an ssh
    # session (SSH_CLIENT set, SHLVL below 2) sources ~/.bashrc again: 100+ ms per task
    # where a .bashrc does much (pyenv, conda), for nothing.
    base = {k: v for k, v in os.environ.items() if k not in ("SSH_CLIENT", "SSH2_CLIENT")}
    level = base.get("SHLVL", "")
    base["SHLVL"] = str(max(1, int(level))) if level.isdigit() else "1"
    procs: dict = {}
    closed = threading.Event()

    def send(message: dict) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with lock:
            if closed.is_set():
                return
            try:
                stdout.write(data)
                stdout.flush()
            except (OSError, ValueError):
                closed.set()

    def run(req: dict) -> None:
        key, began = (req["id"], req["attempt"]), time.monotonic()
        env = {**base, **{str(k): str(v) for k, v in req.get("env", {}).items()}}
        try:
            proc = subprocess.Popen(["bash", "-c", req["cmd"]], cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            send({"id": key[0], "a": key[1], "out": base64.b64encode(
                f"ec2mpi farm: cannot start the task: {err}\n".encode()).decode()})
            send({"id": key[0], "a": key[1], "exit": 127, "secs": 0.0})
            return
        with lock:
            procs[key] = proc
            late = closed.is_set()        # the input ended while it started: stop it too
        if late:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            send({"id": key[0], "a": key[1], "out": base64.b64encode(chunk).decode()})
        code = proc.wait()
        with lock:
            procs.pop(key, None)
        send({"id": key[0], "a": key[1], "exit": 128 - code if code < 0 else code,
              "secs": round(time.monotonic() - began, 3)})

    def hang_up(*_):
        raise _Stop

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, hang_up)
    send({"ready": os.uname().nodename, "pid": os.getpid()})
    try:
        for line in iter(stdin.readline, b""):
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if isinstance(req, dict) and "cmd" in req:
                threading.Thread(target=run, args=(req,), daemon=True).start()
    except _Stop:
        pass
    closed.set()                 # nobody listens any more: stop what runs
    with lock:
        running = list(procs.values())
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for proc in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        running = [p for p in running if p.poll() is None]
        if not running:
            break
    return 0

