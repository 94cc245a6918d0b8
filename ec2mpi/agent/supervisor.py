"""The job supervisor and the job manager, on the master, as the cluster user.

The manager (kept alive by the root agent) starts one supervisor per active job and starts
it again if it died (an agent restart, or a new master finding a job on shared storage).
A supervisor runs `mpirun` for its job in a process group of its own and follows it:
- a `cancel` file: SIGTERM to mpirun's group (it stops the ranks on every node), then SIGKILL;
- a node of the job draining (spot notice) or lost, per members.json (written by the
  master's watcher): the checkpoint signal to mpirun (which forwards it to every rank), a
  bounded wait for the job to exit, then, if --restarts allows, a bounded wait for the healed
  membership and the same command again with EC2MPI_RESTART=<n>;
- mpirun failing while a node of the job vanished (unreachable, or lost within a bounded
  wait): the same restart. Any other failure is the job's own.
Every interval has a setting (EC2MPI_JOB_<NAME>) that tests shorten.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .jobs import ACTIVE, JobStore
from .settings import from_env as settings_from_env

log = logging.getLogger("ec2mpi.agent.jobs")


@dataclass(frozen=True)
class JobSettings:
    poll: float = 0.5             # how often a supervisor looks at its job
    checkpoint_grace: float = 60.0    # after the checkpoint signal, before SIGTERM
    stop_grace: float = 10.0      # after SIGTERM, before SIGKILL
    loss_wait: float = 30.0       # after a failure: how long a vanished node may take to show
    heal_wait: float = 300.0      # before relaunching: how long to wait for enough slots

    @classmethod
    def from_env(cls) -> JobSettings:
        return settings_from_env(cls, "JOB")


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """(host, slots) of an Open MPI hostfile (`IP slots=N` lines)."""
    hosts = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            slots = next((int(p.split("=", 1)[1]) for p in parts[1:] if p.startswith("slots=")), 1)
            hosts.append((parts[0], slots))
    return hosts


def reachable(host: str, port: int = 22, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Supervisor:
    def __init__(self, store: JobStore, job_id: str, etc: Path, run_dir: Path, instance_id: str,
                 cwd: Path, settings: JobSettings | None = None):
        self.store, self.id = store, job_id
        self.hostfile, self.members_file = etc / "hostfile", run_dir / "members.json"
        self.instance_id, self.cwd = instance_id, cwd
        self.settings = settings or JobSettings.from_env()
        self.spec = store.spec(job_id)
        self.state = store.state(job_id)
        self.proc: subprocess.Popen | None = None
        self.dead: set = set()        # hosts seen gone or going: a relaunch waits them out

    # -- the members, as the master's watcher last wrote them ----------------------------
    def members(self) -> dict:
        """private IP -> member; addresses are reused, so a lost node's old item never
        hides the live node that has its address now."""
        try:
            items = json.loads(self.members_file.read_text())
        except (OSError, ValueError):
            return {}
        out: dict = {}
        for m in sorted(items, key=lambda m: m["state"] not in ("lost", "draining")):
            out[m["private_ip"]] = m      # the live ones come last and win
        return out

    def vanished(self, hosts) -> str:
        """Why one of `hosts` is gone or going, or ''; it joins `dead` (never used again)."""
        members = self.members()
        for host in hosts:
            m = members.get(host)
            why = ""
            if m is None:
                why = f"node {host} left the cluster"
            elif m["state"] in ("draining", "lost"):
                why = f"node {host} ({m['instance_id']}) is {m['state']}: {m.get('reason', '')}"
            if why:
                self.dead.add(host)
                return why
        return ""

    # -- one launch ------------------------------------------------------------------------
    def launch(self, restart: int) -> None:
        hosts = read_hostfile(self.hostfile)
        snapshot = self.store.dir(self.id) / f"hostfile.{restart}"
        snapshot.write_text("".join(f"{h} slots={s}\n" for h, s in hosts))
        np = self.spec.np or sum(s for _, s in hosts) or 1
        mpirun = shutil.which("mpirun") or "mpirun"
        cmd = [mpirun, "--hostfile", str(snapshot), "-np", str(np), *self.spec.command]
        env = {**os.environ, "EC2MPI_RESTART": str(restart), "EC2MPI_JOB_ID": self.id}
        with open(self.store.output(self.id), "ab") as out:
            if restart:
                out.write(f"\n[ec2mpi] restart {restart}: {self.state.reason}\n".encode())
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd, env=env,
                                         start_new_session=True)
        self.state.nodes = [h for h, _ in hosts]
        self.state.state, self.state.started = "running", self.state.started or time.time()
        self.store.save(self.id, self.state)

    def stop(self, grace: float) -> int:
        """SIGTERM to mpirun's group (it stops the ranks everywhere), SIGKILL after `grace`."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                return self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.wait()

    def interrupt(self) -> None:
        """The checkpoint signal (mpirun forwards it to every rank); then a bounded wait."""
        sig = getattr(signal, self.spec.checkpoint_signal, signal.SIGUSR1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(self.settings.checkpoint_grace)
        except subprocess.TimeoutExpired:
            self.stop(self.settings.stop_grace)

    # -- the job's life --------------------------------------------------------------------
    def run(self) -> int:
        st = self.state
        restart = len(st.restarts)
        if st.state in ("running", "restarting") and (st.host, st.pid) != (self.instance_id,
                                                                             os.getpid()):
            reason = "its supervisor was lost (the master restarted or was replaced)"
            if not self.may_restart(reason):
                return self.finish("failed", 1, reason)
            restart = len(st.restarts)
        st.host, st.pid = self.instance_id, os.getpid()
        self.store.save(self.id, st)
        began = time.monotonic()
        if not self.wait_for_slots():   # a new master's first hostfile may still list the old
            return self.finish("failed", 1, "the cluster has no usable nodes for the job")
        if st.restarts and st.restarts[-1].get("cost_s") is None:
            st.restarts[-1]["cost_s"] = round(time.monotonic() - began, 1)
        self.launch(restart)
        while True:
            reason = self.follow()
            if reason is None:
                return self.proc.returncode
            if not self.may_restart(reason):
                return self.finish("failed", self.proc.returncode or 1, reason)
            began = time.monotonic()
            if not self.wait_for_slots():
                return self.finish("failed", 1, f"{reason}; the cluster did not heal in time")
            restart = len(self.state.restarts)
            self.state.restarts[-1]["cost_s"] = round(time.monotonic() - began, 1)
            self.launch(restart)

    def follow(self) -> str | None:
        """Until mpirun ends: None when the job is over (done/failed/cancelled), or why it
        was interrupted."""
        while True:
            if self.store.cancel_requested(self.id):
                self.stop(self.settings.stop_grace)
                self.finish("cancelled", 143, "cancelled by the user")
                return None
            code = self.proc.poll()
            if code is not None:
                return self.ended(code)
            reason = self.vanished(self.state.nodes)
            if reason:
                log.warning("job %s: %s", self.id, reason)
                self.interrupt()
                return reason
            time.sleep(self.settings.poll)

    def ended(self, code: int) -> str | None:
        """mpirun is gone: the job's end, or an interruption. Open MPI 5's mpirun may exit 0
        after losing a daemon (its output says so), so a success counts only if every node of
        the job is still there."""
        if code == 0:
            gone = [h for h in self.state.nodes if not reachable(h)]
            self.dead.update(gone)
            reason = (f"node {gone[0]} is unreachable" if gone else "") \
                or self.vanished(self.state.nodes)
            if not reason:
                self.finish("done", 0, "")
                return None
            return reason
        deadline = time.monotonic() + self.settings.loss_wait
        while True:   # did a node of the job vanish? (the master may need a moment to see it)
            gone = [h for h in self.state.nodes if not reachable(h)]
            self.dead.update(gone)
            reason = (f"node {gone[0]} is unreachable" if gone else "") \
                or self.vanished(self.state.nodes)
            if reason:
                return reason
            if time.monotonic() > deadline:
                self.finish("failed", code, f"mpirun exited with status {code}")
                return None
            time.sleep(min(2.0, self.settings.poll * 4))

    def may_restart(self, reason: str) -> bool:
        if len(self.state.restarts) >= self.spec.restarts:
            return False
        self.state.restarts.append({"at": time.time(), "reason": reason, "cost_s": None})
        self.state.state, self.state.reason = "restarting", reason
        self.store.save(self.id, self.state)
        return True

    def wait_for_slots(self) -> bool:
        """Until the hostfile offers what the job needs (its -np, or any node), without a host
        that was seen gone, going or unreachable; bounded by heal_wait."""
        deadline = time.monotonic() + self.settings.heal_wait
        need = self.spec.np or 1
        while time.monotonic() < deadline:
            if self.store.cancel_requested(self.id):
                return False
            hosts = read_hostfile(self.hostfile)
            names = [h for h, _ in hosts]
            if sum(s for _, s in hosts) >= need and not set(names) & self.dead \
                    and not self.vanished(names) and all(reachable(h) for h in names):
                return True
            time.sleep(self.settings.poll * 2)
        return False

    def finish(self, state: str, code: int, reason: str) -> int:
        self.state.state, self.state.exit_status, self.state.reason = state, code, reason
        self.state.ended = time.time()
        self.store.save(self.id, self.state)
        return code


class Manager:
    """Starts a supervisor for every active job that has none on this master."""

    def __init__(self, store: JobStore, instance_id: str, supervise_cmd, lock_dir: Path,
                 poll: float = 0.5):
        self.store, self.instance_id, self.poll = store, instance_id, poll
        self.supervise_cmd, self.lock_dir = supervise_cmd, lock_dir
        self.children: dict = {}

    def supervised(self, job_id: str) -> bool:
        child = self.children.get(job_id)
        if child is not None and child.poll() is None:
            return True
        st = self.store.state(job_id)
        return st.host == self.instance_id and st.pid > 0 and _alive(st.pid, "supervise")

    def scan(self) -> None:
        for job_id in self.store.ids():
            if self.store.state(job_id).state in ACTIVE and not self.supervised(job_id):
                log.info("starting the supervisor of job %s", job_id)
                with open(self.store.dir(job_id) / "supervisor.log", "ab") as logf:
                    self.children[job_id] = subprocess.Popen(
                        self.supervise_cmd(job_id), stdout=logf, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True)

    def run(self, stop: threading.Event) -> None:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / "manager.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another job manager runs here")
                return
            while not stop.is_set():
                try:
                    self.scan()
                except Exception as err:  # noqa: BLE001 - shared storage blips must not end it
                    log.warning("job scan failed: %s", err)
                stop.wait(self.poll)


def _alive(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
