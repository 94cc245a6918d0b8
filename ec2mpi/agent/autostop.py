"""Autostop, on the master: an idle cluster stops itself, so nobody pays for a weekend of
nothing. Idle means: no job (or farm) running on the master, and no SSH session open on
any node, for the cluster's autostop duration (master state `autostop`, seconds; 0 = off).

Then the master sets the target size to 0 (healing launches nothing) and terminates every
instance of its cluster, itself last in the same call; its role may terminate only
instances tagged with this cluster. Keys, registry, bucket and shared storage stay, so
`ec2mpi resize N` brings the cluster back with the same /shared.

Cost: no registry request of its own. Sessions ride on the nodes' heartbeats (which the
master re-reads for liveness anyway); jobs are local processes; the registry is written only
when the cluster turns idle or busy (`idle_since`, shown as a countdown) and when it stops.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("ec2mpi.agent.autostop")
SUPERVISOR = b"job\0supervise\0"    # a job supervisor's argv (agent/main.py); farms are jobs


def running_jobs(uid: int, proc: Path = Path("/proc")) -> int:
    """Job supervisors of the cluster user on THIS node: processes of `uid` in this node's
    network namespace (local nodes share the host's PID space)."""
    try:
        mine = os.readlink(proc / "self" / "ns" / "net")
    except OSError:
        mine = None
    count = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            if mine is not None and os.readlink(entry / "ns" / "net") != mine:
                continue
            if SUPERVISOR in (entry / "cmdline").read_bytes():
                count += 1
        except OSError:
            continue        # gone meanwhile, or not ours to read
    return count


class Autostop:
    """check(members, master_state) every few seconds; stop() when idle long enough."""

    def __init__(self, cluster: str, registry, instances, own_sessions, jobs,
                 clock=time.time):
        self.cluster, self.reg, self.instances = cluster, registry, instances
        self.own_sessions, self.jobs, self.clock = own_sessions, jobs, clock
        self.idle_since: float | None = None
        self.stopping = False

    def busy(self, members) -> str:
        """Why the cluster is not idle ('' when it is)."""
        jobs = self.jobs()
        if jobs:
            return f"{jobs} job(s) running"
        sessions = self.own_sessions() + sum(
            int(n.sessions or 0) for n in members
            if not n.problem and n.state in ("ready", "booting", "draining")
            and n.role != "master")
        return f"{sessions} SSH session(s) open" if sessions else ""

    def check(self, members, master_state: dict) -> bool:
        """True once it stopped the cluster."""
        limit = int(master_state.get("autostop") or 0)
        if self.stopping or not limit or master_state.get("stopped_at"):
            self.idle_since = None if not limit else self.idle_since
            return False
        now = self.clock()
        why = self.busy(members)
        if why:
            if self.idle_since is not None:
                log.info("busy again (%s)", why)
                self._record(master_state, idle_since=0)
            self.idle_since = None
            return False
        if self.idle_since is None:
            recorded = float(master_state.get("idle_since") or 0)
            self.idle_since = recorded if 0 < recorded <= now else now
            if recorded != self.idle_since:
                self._record(master_state, idle_since=int(self.idle_since))
            log.info("idle since %s: autostop in %.0f s", time.strftime(
                "%H:%M:%S", time.localtime(self.idle_since)), limit - (now - self.idle_since))
        if now - self.idle_since < limit:
            return False
        self.stop(master_state)
        return True

    def stop(self, master_state: dict) -> None:
        """Target 0 first (healing must not relaunch), then terminate every instance."""
        self.stopping = True
        now = self.clock()
        since = now if self.idle_since is None else self.idle_since
        log.warning("idle for %.0f s: stopping the cluster (autostop)", now - since)
        self.reg.update_master(self.cluster, bump=True, target=0, stopped_at=int(now),
                               idle_since=int(since))
        ids = [i.instance_id for i in self.instances.instances(
            states=("pending", "running", "stopping", "stopped"))]
        if ids:     # one call, the master's own instance included
            self.instances.terminate(ids)

    def _record(self, master_state: dict, **attrs) -> None:
        try:
            self.reg.update_master(self.cluster, **attrs)
            master_state.update(attrs)
        except Exception as err:  # noqa: BLE001 - a blip: the countdown is advisory
            log.warning("could not record %s: %s", attrs, err)
