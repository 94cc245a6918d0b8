"""The task farm: `ec2mpi farm TASKFILE` runs every non-empty line of TASKFILE as a shell
command in the shared directory, one per slot, across the ready nodes; a job like any other
(`jobs`, `attach`, `cancel`, `--detach`), supervised on the master as the cluster user.

Why not GNU parallel: it is not on the nodes (nor on the AMI, nor in the venv), and what the
farm needs around it would be ours anyway: a task whose node vanished is to it a failed task
(ssh's 255; with --retries it runs again, spending a retry), as it never learns that a node
was lost (members.json) rather than that a task failed; and it logs in over ssh per task.
So the farm is this small scheduler, in the agent (standard library only):

- The scheduler (`Farm`, run by `ec2mpi-agent job supervise ID` for a job of kind farm) keeps
  ONE ssh connection per ready node (the cluster user's ssh config: the cluster identity,
  host keys verified) to a worker (`python -m ec2mpi.agent.farm`, the image's venv) that runs
  the tasks it is sent, as many at a time as the node has slots (the hostfile's `slots=N`),
  and sends back each one's output and exit status as JSON lines. One connection and one
  Python per node per farm, not per task: a task costs a fork of `bash -c`.
- Membership: the scheduler rereads the hostfile (and members.json) every poll. A node
  that leaves the hostfile gets no new task; a draining one (spot notice) finishes what it
  runs; a lost one (or one whose connection ends: ssh keepalives bound it) has its running
  tasks put back at the front of the queue, WITHOUT spending a retry. A worker whose
  connection ends (its stdin closes: the scheduler died, was cancelled, or dropped the node)
  stops its tasks' process groups, so nothing runs on behind a farm.
- `--retries K`: a task that exits non-zero runs again, up to K times; then it is failed.
- State: the job directory holds tasks.txt (the task file; a task's id is its line number),
  tasks.log (the journal: one JSON line per event, appended by the one scheduler, which
  holds farm.lock: start, done, retry, failed, lost, resume), out/ID (a task's output, its
  last attempt's) and state.json's `progress`. The journal is the truth: replaying it
  gives every task's state; a `done` line is written only for a task not done yet, so a
  task is recorded done exactly once, though it may RUN more than once (its node vanished
  after it finished but before its result arrived): tasks should write their outputs
  atomically (a temporary file, then rename). A torn last line (a master lost mid-write)
  is skipped, and its task runs again.
- A new scheduler (the master restarted or was replaced; `farm --resume ID`) replays the
  journal: what was running runs again, done stays done; resume also gives failed tasks
  their retries again.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import fcntl
import json
import logging
import os
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

log = logging.getLogger("ec2mpi.agent.farm")

TASKS = "tasks.txt"       # the task file as submitted: a task's id is its line number
JOURNAL = "tasks.log"     # one JSON line per event
OUT = "out"               # out/ID: what a task printed (stdout and stderr), last attempt
LOCK = "farm.lock"        # held by the one scheduler of the job (and by resume)


@dataclass(frozen=True)
class FarmSettings:
    """Intervals of the scheduler; EC2MPI_JOB_FARM_<NAME> overrides (tests)."""
    poll: float = 0.2             # membership reread, cancel check, result batching
    progress_every: float = 5.0   # a progress line in output.log
    reconnect_after: float = 5.0  # after a lost connection to a node still listed (doubling
                                  # while its connections run nothing, up to 60 s)
    keepalive: int = 5            # ssh ServerAliveInterval (x3: a silent node is dropped)
    stop_grace: float = 10.0      # stopping: after closing the workers' input, before SIGKILL
    heal_wait: float = 300.0      # how long a farm with work left waits for any usable node
    max_lost: int = 5             # a task lost this often counts its next loss as a failure

    @classmethod
    def from_env(cls) -> FarmSettings:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"EC2MPI_JOB_FARM_{f.name.upper()}")
            if raw:
                values[f.name] = int(raw) if f.type in ("int", int) else float(raw)
        return replace(cls(), **values)


def parse_hostfile(text: str) -> dict:
    """host -> slots, from an Open MPI hostfile's text (`IP slots=N` lines)."""
    hosts = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            slots = next((p.split("=", 1)[1] for p in parts[1:] if p.startswith("slots=")), "1")
            hosts[parts[0]] = max(1, int(slots)) if slots.isdigit() else 1
    return hosts


def parse_tasks(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every non-empty line; a comment line (`# ...`), a command
    that would do nothing, is no task."""
    return [(n, line) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


# -- the task table: pure logic, replayable from the journal ------------------------------
@dataclass
class Task:
    id: int
    command: str
    state: str = "pending"        # pending | running | done | failed
    attempts: int = 0             # attempts started
    errors: int = 0               # attempts that exited non-zero (they spend --retries)
    lost: int = 0                 # attempts whose node vanished (they spend nothing)
    exit: int | None = None
    host: str = ""


@dataclass
class TaskTable:
    tasks: dict
    retries: int = 0
    max_lost: int = 5
    queue: collections.deque = field(default_factory=collections.deque)
    counts: collections.Counter = field(default_factory=collections.Counter)

    @classmethod
    def from_text(cls, text: str, retries: int = 0, max_lost: int = 5) -> TaskTable:
        table = cls({n: Task(n, cmd) for n, cmd in parse_tasks(text)}, retries, max_lost)
        table.queue.extend(table.tasks)
        table.counts["pending"] = len(table.tasks)
        return table

    @property
    def total(self) -> int:
        return len(self.tasks)

    def complete(self) -> bool:
        return self.counts["pending"] == 0 and self.counts["running"] == 0

    def _move(self, task: Task, state: str) -> None:
        self.counts[task.state] -= 1
        self.counts[state] += 1
        task.state = state

    # -- transitions: each returns the journal event (None: nothing happened) -------------
    def next(self) -> Task | None:
        while self.queue:
            task = self.tasks[self.queue.popleft()]
            if task.state == "pending":       # a resumed or re-queued id may be queued twice
                return task
        return None

    def start(self, task: Task, host: str, now: float = 0.0) -> dict:
        task.attempts += 1
        task.host = host
        self._move(task, "running")
        return {"e": "start", "task": task.id, "attempt": task.attempts, "host": host,
                "t": round(now or time.time(), 3)}

    def finish(self, task_id: int, attempt: int, code: int, secs: float = 0.0,
               now: float = 0.0) -> dict | None:
        """An attempt's exit status. Only the running attempt counts: a result that arrives for
        an attempt already given up (or a task already done) changes nothing."""
        task = self.tasks.get(task_id)
        if task is None or task.state != "running" or task.attempts != attempt:
            return None
        event = {"task": task_id, "attempt": attempt, "host": task.host, "exit": code,
                 "secs": round(secs, 3), "t": round(now or time.time(), 3)}
        task.exit = code
        if code == 0:
            self._move(task, "done")
            return {"e": "done", **event}
        task.errors += 1
        if task.errors <= self.retries:
            self._move(task, "pending")
            self.queue.append(task_id)
            return {"e": "retry", **event}
        self._move(task, "failed")
        return {"e": "failed", **event}

    def lose(self, task_id: int, attempt: int, why: str, now: float = 0.0) -> dict | None:
        """The attempt's node vanished: run it again, first in line, spending no retry (unless
        it was lost too often: then the loss is the task's own failure)."""
        task = self.tasks.get(task_id)
        if task is None or task.state != "running" or task.attempts != attempt:
            return None
        task.lost += 1
        if task.lost > self.max_lost:
            event = self.finish(task_id, attempt, 255, now=now)
            return {**event, "why": f"lost {task.lost} times: {why}"}
        self._move(task, "pending")
        self.queue.appendleft(task_id)
        return {"e": "lost", "task": task_id, "attempt": attempt, "host": task.host,
                "why": why, "t": round(now or time.time(), 3)}

    def resume(self, now: float = 0.0) -> dict:
        """Failed tasks get their retries again (journal event; see apply)."""
        event = {"e": "resume", "t": round(now or time.time(), 3)}
        self.apply(event)
        return event

    # -- replay -------------------------------------------------------------------------------
    def apply(self, event: dict) -> None:
        """One journal event, as the scheduler that wrote it saw it."""
        kind = event.get("e")
        if kind == "resume":
            for task in self.tasks.values():
                if task.state == "failed":
                    task.errors, task.exit = 0, None
                    self._move(task, "pending")
                    self.queue.append(task.id)
            return
        task = self.tasks.get(event.get("task"))
        if task is None:
            return
        if kind == "start" and task.state == "pending":
            task.attempts = max(task.attempts + 1, int(event.get("attempt", 0)))
            task.host = event.get("host", "")
            self._move(task, "running")
        elif kind in ("done", "retry", "failed") and task.state == "running":
            task.exit = event.get("exit")
            if kind == "done":
                self._move(task, "done")
            else:
                task.errors += 1
                self._move(task, "pending" if kind == "retry" else "failed")
                if kind == "retry":
                    self.queue.append(task.id)
        elif kind == "lost" and task.state == "running":
            task.lost += 1
            self._move(task, "pending")
            self.queue.appendleft(task.id)

    def replay(self, events, why: str = "its scheduler was lost") -> list[dict]:
        """Apply the journal; attempts it shows running (their scheduler is gone) are lost.
        Returns the events that record those losses."""
        for event in events:
            self.apply(event)
        return [e for t in list(self.tasks.values()) if t.state == "running"
                for e in [self.lose(t.id, t.attempts, why)] if e]


def read_journal(path: Path) -> list[dict]:
    """The journal's events; a torn or foreign line is skipped."""
    events = []
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return events
    for line in data.split(b"\n"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


class Journal:
    """Appends events as JSON lines with O_APPEND; whole batches in one write."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pending: list[bytes] = []
        size = os.fstat(self.fd).st_size
        if size:                  # a torn last line must not glue onto the next event
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    os.write(self.fd, b"\n")
        self.synced = time.monotonic()

    def add(self, event: dict | None) -> None:
        if event:
            self.pending.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    def flush(self, sync_every: float = 1.0) -> None:
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            while data:
                data = data[os.write(self.fd, data):]
        if time.monotonic() - self.synced >= sync_every:
            os.fsync(self.fd)
            self.synced = time.monotonic()

    def close(self) -> None:
        self.flush(sync_every=0)
        os.close(self.fd)


class Progress:
    """done/total, failed, running and an ETA from the rate of the last minute."""

    def __init__(self, window: float = 60.0):
        self.window, self.began = window, time.monotonic()
        self.finished: collections.deque = collections.deque()

    def count(self, now: float | None = None) -> None:
        self.finished.append(now or time.monotonic())

    def rate(self, now: float | None = None) -> float:
        now = now or time.monotonic()
        while self.finished and self.finished[0] < now - self.window:
            self.finished.popleft()
        span = min(self.window, now - self.began)
        return len(self.finished) / span if span > 0 and self.finished else 0.0

    def snapshot(self, table: TaskTable, nodes: int, reruns: int,
                 now: float | None = None) -> dict:
        rate = self.rate(now)
        left = table.counts["pending"] + table.counts["running"]
        return {"total": table.total, "done": table.counts["done"],
                "failed": table.counts["failed"], "running": table.counts["running"],
                "pending": table.counts["pending"], "reruns": reruns, "nodes": nodes,
                "tasks_per_s": round(rate, 2),
                "eta_s": round(left / rate, 1) if rate > 0 else None}


def progress_line(p: dict) -> str:
    eta = "-" if p["eta_s"] is None else _duration(p["eta_s"])
    return (f"[farm] {p['done']}/{p['total']} done, {p['failed']} failed, {p['running']} "
            f"running on {p['nodes']} node(s), {p['tasks_per_s']:g} tasks/s, ETA {eta}")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# -- the worker, on every node (over ssh) --------------------------------------------------------
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


# -- the scheduler, on the master ---------------------------------------------------------------
class Link:
    """The connection to one node's worker."""

    def __init__(self, host: str, slots: int, proc: subprocess.Popen):
        self.host, self.slots, self.proc = host, slots, proc
        self.buf = b""
        self.ready = False
        self.usable = True            # listed in the hostfile: may get new tasks
        self.running: dict = {}       # task id -> attempt
        self.ran = 0                  # tasks finished over this connection
        self.outbox: list[bytes] = []

    @property
    def free(self) -> int:
        return self.slots - len(self.running) if self.ready and self.usable else 0


class Farm:
    """Runs a farm job to its end (see the module's docstring); returns its exit status."""

    def __init__(self, store, job_id: str, etc: Path, run_dir: Path, instance_id: str,
                 cwd: Path, python: str = "", settings: FarmSettings | None = None,
                 connect=None):
        self.store, self.id = store, job_id
        self.dir = store.dir(job_id)
        self.hostfile, self.members_file = Path(etc) / "hostfile", Path(run_dir) / "members.json"
        self.instance_id, self.cwd = instance_id, str(cwd)
        self.python = python or sys.executable
        self.settings = settings or FarmSettings.from_env()
        self.connect = connect or self.ssh_command
        self.spec = store.spec(job_id)
        self.state = store.state(job_id)
        self.links: dict = {}         # host -> Link
        self.failures: dict = {}      # host -> (connections in a row that ended, last end)
        self.hostfile_text = None
        self.selector = selectors.DefaultSelector()
        self.output_seen: set = set()  # task ids with an out/ID file
        self.tails: dict = {}         # (id, attempt) -> the last bytes it printed
        self.reruns = 0

    def ssh_command(self, host: str) -> list[str]:
        k = int(self.settings.keepalive)
        remote = shlex.join([self.python, "-m", "ec2mpi.agent.farm", "--cwd", self.cwd])
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", f"ServerAliveInterval={k}", "-o", "ServerAliveCountMax=3", host,
                "exec " + remote]

    # -- output.log and state.json --------------------------------------------------------
    def say(self, text: str) -> None:
        with open(self.store.output(self.id), "ab") as out:
            out.write(text.encode() + b"\n")

    def save_progress(self) -> dict:
        hosts = [l.host for l in self.links.values() if l.ready and l.usable]
        p = self.progress.snapshot(self.table, len(hosts), self.reruns)
        self.state.progress = p
        self.state.nodes = hosts or self.state.nodes
        self.store.save(self.id, self.state)
        return p

    # -- the farm's life --------------------------------------------------------------------
    def run(self) -> int:
        with open(self.dir / LOCK, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("farm %s: another scheduler runs it", self.id)
                return 0
            return self._run()

    def _run(self) -> int:
        s = self.settings
        self.table = TaskTable.from_text((self.dir / TASKS).read_text(), self.spec.retries,
                                         s.max_lost)
        events = read_journal(self.dir / JOURNAL)
        self.journal = Journal(self.dir / JOURNAL)
        lost = self.table.replay(events)
        for event in lost:
            self.journal.add(event)
        self.journal.flush(0)
        self.reruns = sum(1 for e in events if e.get("e") == "lost") + len(lost)
        (self.dir / OUT).mkdir(exist_ok=True)
        self.output_seen = {int(p.name) for p in (self.dir / OUT).iterdir() if p.name.isdigit()}
        st = self.state
        st.host, st.pid, st.state = self.instance_id, os.getpid(), "running"
        st.started = st.started or time.time()
        self.progress = Progress()
        self.say(f"[farm] {self.table.total} tasks ({self.table.counts['done']} done already"
                 f"{f', {len(lost)} were running: they run again' if lost else ''}), retries "
                 f"{self.spec.retries}; outputs in {self.dir / OUT}")
        p = self.save_progress()
        last_line, last_save, waiting_since, told = 0.0, 0.0, None, False
        try:
            while not self.table.complete():
                now = time.monotonic()
                if self.store.cancel_requested(self.id):
                    self.stop_all("the farm was cancelled")
                    self.save_progress()
                    self.say(f"[farm] cancelled: {progress_line(self.state.progress)[7:]}")
                    return self.finish("cancelled", 143, "cancelled by the user")
                self.membership()
                if any(l.ready and l.usable for l in self.links.values()):
                    waiting_since, told = None, False
                elif waiting_since is None:
                    waiting_since = now
                elif now - waiting_since > 10 and not told:
                    told = True
                    self.say(f"[farm] waiting for a usable node (at most {s.heal_wait:.0f}s)")
                elif now - waiting_since > s.heal_wait:
                    self.stop_all("no usable node")
                    self.save_progress()
                    return self.finish("failed", 1, f"no usable node for {s.heal_wait:.0f}s; "
                                       f"resume it with: ec2mpi farm --resume {self.id}")
                self.dispatch()
                self.pump(s.poll)
                self.journal.flush()
                now = time.monotonic()
                if now - last_save >= 1.0:
                    p, last_save = self.save_progress(), now
                if now - last_line >= s.progress_every:
                    self.say(progress_line(p))
                    last_line = now
        finally:
            self.stop_all("the farm ended")
            self.journal.close()
        p = self.save_progress()
        elapsed = max(time.time() - st.started, 1e-3)
        failed = self.table.counts["failed"]
        self.say(f"[farm] {'finished' if failed else 'done'}: {p['done']}/{p['total']} done, "
                 f"{failed} failed, {self.reruns} re-run(s) after a lost node, "
                 f"{elapsed:.1f}s since the start")
        if failed:
            ids = sorted(t.id for t in self.table.tasks.values() if t.state == "failed")
            shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
            return self.finish("failed", 1, f"{failed} of {self.table.total} tasks failed "
                               f"(lines {shown}); see {self.dir / OUT}/LINE; run them again "
                               f"with: ec2mpi farm --resume {self.id}")
        return self.finish("done", 0, "")

    def finish(self, state: str, code: int, reason: str) -> int:
        self.state.state, self.state.exit_status, self.state.reason = state, code, reason
        self.state.ended = time.time()
        self.store.save(self.id, self.state)
        return code

    # -- membership --------------------------------------------------------------------------
    def members(self) -> dict:
        """private IP -> member state (live members win over a lost one's old item)."""
        try:
            items = json.loads(self.members_file.read_text())
        except (OSError, ValueError):
            return {}
        out: dict = {}
        for m in sorted(items, key=lambda m: m.get("state") not in ("lost", "draining")):
            out[m.get("private_ip")] = m.get("state")
        return out

    def membership(self) -> None:
        try:
            text = self.hostfile.read_text()
        except OSError:
            text = ""
        if text != self.hostfile_text:
            self.hostfile_text = text
            self.failures.clear()         # a new membership: give every node a new chance
        hosts = parse_hostfile(text)
        members = self.members()
        for host, link in list(self.links.items()):
            if host in hosts:
                link.usable, link.slots = True, max(1, hosts[host])
            elif members.get(host) == "draining":
                link.usable = False       # a spot notice: it finishes what it runs
            else:
                why = members.get(host)
                self.drop(link, f"node {host} {'is ' + why if why else 'left the hostfile'}")
        now = time.monotonic()
        for host, slots in hosts.items():
            count, when = self.failures.get(host, (0, 0.0))
            backoff = min(60.0, self.settings.reconnect_after * 2 ** (count - 1)) if count else 0
            if host not in self.links and now - when >= backoff:
                self.open_link(host, slots)

    def open_link(self, host: str, slots: int) -> None:
        proc = subprocess.Popen(self.connect(host), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)
        os.set_blocking(proc.stdout.fileno(), False)
        link = Link(host, max(1, slots), proc)
        self.links[host] = link
        self.selector.register(proc.stdout, selectors.EVENT_READ, link)

    def drop(self, link: Link, why: str) -> None:
        """The node is gone (or its connection is): its running tasks run again elsewhere."""
        self.links.pop(link.host, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(link.proc.stdout)
        for stream in (link.proc.stdin, link.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(ProcessLookupError):
            link.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            link.proc.wait(5)
        count, _ = self.failures.get(link.host, (0, 0.0))
        self.failures[link.host] = (1 if link.ran else count + 1, time.monotonic())
        lost = [e for tid, attempt in link.running.items()
                for e in [self.table.lose(tid, attempt, why)] if e]
        for tid, attempt in link.running.items():
            self.tails.pop((tid, attempt), None)
        for event in lost:
            self.journal.add(event)
            if event["e"] == "failed":
                self.report_failure(event)
        self.reruns += sum(1 for e in lost if e["e"] == "lost")
        if link.ready or lost:
            self.say(f"[farm] {why}: {len(lost)} running task(s) go back to the queue")
        log.warning("farm %s: %s (%d running tasks requeued)", self.id, why, len(lost))

    def stop_all(self, why: str) -> None:
        """End every connection: the workers see their input close and stop their tasks."""
        links, self.links = list(self.links.values()), {}
        for link in links:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(link.proc.stdout)
            with contextlib.suppress(OSError):
                link.proc.stdin.close()
        deadline = time.monotonic() + self.settings.stop_grace
        for link in links:
            try:
                link.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                link.proc.kill()
                link.proc.wait()
            with contextlib.suppress(OSError):
                link.proc.stdout.close()
            for tid, attempt in link.running.items():
                self.journal.add(self.table.lose(tid, attempt, why))

    # -- tasks -------------------------------------------------------------------------------
    def dispatch(self) -> None:
        for link in sorted(self.links.values(), key=lambda l: -l.free):
            while link.free > 0:
                task = self.table.next()
                if task is None:
                    break
                self.journal.add(self.table.start(task, link.host))
                link.running[task.id] = task.attempts
                env = {"EC2MPI_JOB_ID": self.id, "EC2MPI_TASK": task.id,
                       "EC2MPI_TASK_ATTEMPT": task.attempts}
                link.outbox.append(json.dumps({"id": task.id, "attempt": task.attempts,
                                               "cmd": task.command, "env": env}).encode()
                                   + b"\n")
            if link.outbox:
                data, link.outbox = b"".join(link.outbox), []
                try:
                    link.proc.stdin.write(data)
                    link.proc.stdin.flush()
                except OSError:
                    self.drop(link, f"the connection to node {link.host} ended")

    def pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            link = key.data
            try:
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.drop(link, f"the connection to node {link.host} ended")
                continue
            link.buf += chunk
            *lines, link.buf = link.buf.split(b"\n")
            for line in lines:
                try:
                    self.handle(link, json.loads(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("farm %s: %s sent %r", self.id, link.host, line[:200])

    def handle(self, link: Link, msg: dict) -> None:
        if "ready" in msg:
            link.ready = True
            return
        key = (int(msg["id"]), int(msg["a"]))
        if link.running.get(key[0]) != key[1]:
            return                        # an attempt this connection no longer runs
        if "out" in msg:
            self.write_output(key, base64.b64decode(msg["out"]))
            return
        if "exit" not in msg:
            return
        del link.running[key[0]]
        link.ran += 1
        self.failures.pop(link.host, None)
        tail = self.tails.pop(key, None)
        if tail is None and key[0] in self.output_seen:    # this attempt printed nothing
            with contextlib.suppress(OSError):
                (self.dir / OUT / str(key[0])).unlink()
            self.output_seen.discard(key[0])
        event = self.table.finish(key[0], key[1], int(msg["exit"]), float(msg.get("secs", 0)))
        self.journal.add(event)
        if event and event["e"] in ("done", "failed"):
            self.progress.count()
        if event and event["e"] in ("retry", "failed"):
            self.report_failure(event, tail)

    def write_output(self, key: tuple, data: bytes) -> None:
        first = key not in self.tails
        with open(self.dir / OUT / str(key[0]), "wb" if first else "ab") as out:
            out.write(data)
        self.output_seen.add(key[0])
        self.tails[key] = (self.tails.get(key, b"") + data)[-300:]

    def report_failure(self, event: dict, tail: bytes | None = None) -> None:
        task = self.table.tasks[event["task"]]
        last = (tail or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        again = ", it runs again" if event["e"] == "retry" else ""
        why = f" ({event['why']})" if event.get("why") else ""
        self.say(f"[farm] task {task.id} failed with exit status {event['exit']} on "
                 f"{event.get('host', '?')}{why}, attempt {event['attempt']} (retries "
                 f"{self.spec.retries}){again}: {task.command[:80]}"
                 + (f"\n[farm]   {last[0][:200]}" if last[0] else ""))


# -- the commands the client runs on the master (as the cluster user) ------------------------
def submit(store, text: str, name: str, retries: int) -> int:
    """A new farm job from the task file's text (read from stdin by `job farm`)."""
    from .jobs import JobSpec
    count = len(parse_tasks(text))
    if not count:
        print("ec2mpi-agent job farm: the task file has no task (only empty or comment lines)",
              file=sys.stderr)
        return 2
    spec = store.new(JobSpec("", [name], kind="farm", retries=retries), files={TASKS: text})
    print(json.dumps({"id": spec.id, "dir": str(store.dir(spec.id)), "tasks": count}),
          flush=True)
    return 0


def resume(store, job_id: str, retries: int | None = None) -> int:
    """Go on with what is not done: failed tasks get their retries again; the job manager
    starts the scheduler (the journal says what is done)."""
    from dataclasses import asdict

    from .jobs import ACTIVE, JobState
    spec, st = store.spec(job_id), store.state(job_id)
    if spec.kind != "farm":
        print(f"ec2mpi-agent job resume: job {job_id} is not a farm (a job runs again with "
              "--restarts)", file=sys.stderr)
        return 2
    job_dir = store.dir(job_id)
    if st.state in ACTIVE:
        print(json.dumps({"id": job_id, "state": st.state, "resumed": False,
                          "progress": st.progress}), flush=True)
        return 0
    with open(job_dir / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"ec2mpi-agent job resume: farm {job_id} is still stopping; try again",
                  file=sys.stderr)
            return 1
        table = TaskTable.from_text((job_dir / TASKS).read_text(), spec.retries)
        table.replay(read_journal(job_dir / JOURNAL))
        if table.counts["done"] == table.total:
            print(json.dumps({"id": job_id, "state": st.state, "resumed": False,
                              "progress": st.progress}), flush=True)
            return 0
        if retries is not None and retries != spec.retries:
            spec.retries = retries
            store._write(job_id, "spec.json", asdict(spec))
        journal = Journal(job_dir / JOURNAL)
        journal.add(table.resume())
        journal.close()
        (job_dir / "cancel").unlink(missing_ok=True)
        store.save(job_id, JobState(state="submitted", reason="resumed", started=st.started,
                                    restarts=st.restarts, progress=st.progress))
    print(json.dumps({"id": job_id, "state": "submitted", "resumed": True,
                      "left": table.total - table.counts["done"]}), flush=True)
    return 0


def main(argv=None) -> int:
    """`python -m ec2mpi.agent.farm --cwd DIR`: the worker (the scheduler starts it over ssh)."""
    import argparse
    ap = argparse.ArgumentParser(prog="ec2mpi-farm-worker")
    ap.add_argument("--cwd", default=os.getcwd())
    args = ap.parse_args(argv)
    return worker(args.cwd)


if __name__ == "__main__":
    sys.exit(main())
