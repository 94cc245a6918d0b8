"""Jobs that belong to the cluster, not to the laptop: their files, and the node-side commands
the client runs over SSH as the cluster user (`ec2mpi-agent job submit|attach|list|cancel`).

A job is a directory JOBS/ID/ (JOBS = SHARED/jobs, or ~/jobs on the master with storage
`none`): spec.json (what to run), state.json (where it is), output.log (mpirun's output,
across restarts) and, to ask for it, a `cancel` file. The supervisor (agent/supervisor.py)
runs it on the master, under the job manager the agent keeps alive; nothing on a node
depends on the client staying connected. Everything here runs as the cluster user, never
as root, so no root process reads a file the cluster user can write.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ACTIVE = ("submitted", "running", "restarting")
FINAL = ("done", "failed", "cancelled")


@dataclass
class JobSpec:
    id: str
    command: list                 # argv given to mpirun (run) or the task file (farm)
    kind: str = "run"             # run | farm
    np: int = 0                   # ranks (0: every slot of the hostfile)
    restarts: int = 0             # how often an interruption may restart it
    checkpoint_signal: str = "SIGUSR1"
    retries: int = 0              # farm: re-runs of a failed task
    created: float = field(default_factory=time.time)


@dataclass
class JobState:
    state: str = "submitted"      # submitted | running | restarting | done | failed | cancelled
    exit_status: int | None = None
    reason: str = ""              # why it failed, was cancelled or restarted last
    restarts: list = field(default_factory=list)   # [{"at", "reason", "cost_s"}]
    nodes: list = field(default_factory=list)      # hosts of the current launch
    host: str = ""                # instance id of the master its supervisor runs on
    pid: int = 0                  # the supervisor's pid there
    started: float = 0.0
    ended: float = 0.0
    progress: dict = field(default_factory=dict)   # farm: done/total/failed/running/eta


def jobs_root(params, paths) -> Path:
    """Where jobs live: on shared storage (a new master finds them), else the master's disk."""
    if params.storage == "none":
        return paths.home(params.user) / "jobs"
    return paths.shared(params) / "jobs"


class JobStore:
    """The job directories under one root; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def new(self, spec: JobSpec, files: dict | None = None) -> JobSpec:
        """Allocate the next id with an exclusive mkdir (two submits never share one); `files`
        (name -> text, e.g. a farm's tasks) are written before the spec and the state."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            ids = [int(p.name) for p in self.root.iterdir() if p.name.isdigit()]
            spec.id = str(max(ids, default=0) + 1)
            try:
                (self.root / spec.id).mkdir()
                break
            except FileExistsError:
                continue
        for name, text in (files or {}).items():
            target = self.dir(spec.id) / name
            target.with_name(f".{name}.tmp").write_text(text)
            os.replace(target.with_name(f".{name}.tmp"), target)
        self._write(spec.id, "spec.json", asdict(spec))
        self.save(spec.id, JobState())
        return spec

    def ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.name.isdigit()), key=int)

    def dir(self, job_id: str) -> Path:
        if not str(job_id).isdigit():
            raise ValueError(f"no job {job_id!r}")
        return self.root / str(job_id)

    def spec(self, job_id: str) -> JobSpec:
        return JobSpec(**json.loads((self.dir(job_id) / "spec.json").read_text()))

    def state(self, job_id: str) -> JobState:
        try:
            return JobState(**json.loads((self.dir(job_id) / "state.json").read_text()))
        except (OSError, ValueError):
            return JobState()

    def save(self, job_id: str, state: JobState) -> None:
        self._write(job_id, "state.json", asdict(state))

    def output(self, job_id: str) -> Path:
        return self.dir(job_id) / "output.log"

    def cancel_requested(self, job_id: str) -> bool:
        return (self.dir(job_id) / "cancel").exists()

    def _write(self, job_id: str, name: str, data: dict) -> None:
        target = self.dir(job_id) / name
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, target)


def summary(store: JobStore, job_id: str, now: float | None = None) -> dict:
    """One line of `ec2mpi jobs`: what a user (or --json) wants to know about a job."""
    spec, st = store.spec(job_id), store.state(job_id)
    now = now or time.time()
    return {"id": job_id, "kind": spec.kind, "state": st.state, "exit_status": st.exit_status,
            "restarts": len(st.restarts), "restart_costs_s": [r.get("cost_s") for r in st.restarts],
            "restart_reasons": [r.get("reason", "") for r in st.restarts],
            "nodes": len(st.nodes), "age_s": round(now - spec.created, 1), "reason": st.reason,
            "command": " ".join(spec.command), "progress": st.progress}


# -- the commands the client runs on the master (as the cluster user) --------------------------
def submit(store: JobStore, spec: JobSpec) -> int:
    spec = store.new(spec)
    print(json.dumps({"id": spec.id, "dir": str(store.dir(spec.id))}), flush=True)
    return 0


def attach(store: JobStore, job_id: str, from_start: bool = True, poll: float = 0.2,
           out=None) -> int:
    """Follow output.log until the job ends; exit with its status (the client's exit status)."""
    out = out or sys.stdout.buffer
    log = store.output(job_id)
    store.spec(job_id)                       # a missing job fails here, plainly
    offset = 0 if from_start else (log.stat().st_size if log.exists() else 0)
    while True:
        st = store.state(job_id)             # read first: output written before the end is shown
        if log.exists():
            with open(log, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            if chunk:
                out.write(chunk)
                out.flush()
                offset += len(chunk)
        if st.state in FINAL:
            return st.exit_status if st.exit_status is not None else 1
        time.sleep(poll)


def cancel(store: JobStore, job_id: str, timeout: float = 60.0) -> int:
    """Ask the supervisor to stop the job everywhere; wait (bounded) until it did."""
    store.spec(job_id)
    if store.state(job_id).state in FINAL:
        print(json.dumps({"id": job_id, "state": store.state(job_id).state}))
        return 0
    (store.dir(job_id) / "cancel").write_text(str(time.time()))
    deadline = time.monotonic() + timeout
    while store.state(job_id).state not in FINAL and time.monotonic() < deadline:
        time.sleep(0.2)
    st = store.state(job_id)
    print(json.dumps({"id": job_id, "state": st.state}), flush=True)
    return 0 if st.state in FINAL else 1


def listing(store: JobStore) -> int:
    print(json.dumps([summary(store, i) for i in store.ids()]), flush=True)
    return 0
