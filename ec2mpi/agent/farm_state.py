"""A farm's state in its job directory (see agent/farm.py): the task file, the journal
that is the truth (replayed into the task table by any new scheduler), progress, and
the job commands that create and resume a farm."""
from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .settings import from_env as settings_from_env

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
        return settings_from_env(cls, "JOB_FARM")


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

