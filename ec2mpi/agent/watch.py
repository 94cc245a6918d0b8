"""`ec2mpi-agent watch`: keep the cluster whole, cheaply. Losing a node is normal operation.

Every node: a spot interruption notice or rebalance recommendation marks it draining; a
heartbeat now and then (with its open SSH sessions); if the master marked it lost (a
network blip), it registers again.

The master, besides: membership (one small epoch read per poll; the node list only when it
moved) -> hostfiles and members.json; liveness (every few polls one DescribeInstances for
the cluster tag, and a heartbeat read less often) -> nodes whose instance is gone or whose
heartbeat is older than `lost_after` are marked lost, one membership change each; healing
(agent/heal.py) brings the cluster back to its target size.

Steady-state cost of the master, whatever the cluster size, with the default settings:
30 epoch reads + 2 own heartbeats + 4 DescribeInstances + 2 node-list reads = 38 per minute.
While the last few members of the target size (up to BOOT_TAIL) are to come, the epoch is
read every `busy_poll` (0.5 s) instead, while one of them boots or for `tail_window` after
the epoch moved: create and add-nodes wait for the hostfile to list them, and a 2 s poll
added a second to each of them.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from ..aws.registry import Node, Registry
from .hostfile import atomic_write, render_openmpi, write_hostfiles
from .imds import Imds
from .settings import from_env as settings_from_env

log = logging.getLogger("ec2mpi.agent.watch")
ACTIVE = ("booting", "ready")   # states that count toward the cluster's size
BOOT_TAIL = 4   # members still booting at most, for the quicker membership poll


@dataclass(frozen=True)
class WatchSettings:
    """Every interval of the watcher, in seconds; EC2MPI_WATCH_<NAME> overrides (tests)."""
    poll: float = 2.0                 # membership: epoch read
    busy_poll: float = 0.5            # the same for the last BOOT_TAIL of the target size
    tail_window: float = 10.0         # ... also this long after the epoch moved
    notice_every: float = 5.0         # spot notices (IMDS, local: free)
    heartbeat_every: float = 15.0     # a worker's heartbeat
    master_heartbeat_every: float = 30.0
    liveness_every: float = 15.0      # master: DescribeInstances for the cluster tag
    heartbeat_check_every: float = 30.0   # master: re-read heartbeats
    lost_after: float = 60.0          # a running node silent this long is lost
    boot_timeout: float = 900.0       # a node still booting after this long is lost
    lost_kept: float = 900.0          # lost items stay this long (status says why), then go
    autostop_every: float = 15.0      # master: is the cluster idle? (no registry request)

    @classmethod
    def from_env(cls, **given) -> WatchSettings:
        return settings_from_env(cls, "WATCH", **given)


class Watcher:
    def __init__(self, cluster: str, node: Node, registry: Registry, hostfile_dirs=(),
                 imds: Imds | None = None, settings: WatchSettings | None = None,
                 instances=None, healer=None, run_dir=None, deregister: bool = True,
                 sessions=None, keepers=(), autostop=None):
        self.cluster, self.node, self.reg = cluster, node, registry
        self.hostfile_dirs = list(hostfile_dirs)
        self.imds, self.instances, self.healer = imds, instances, healer
        self.settings = settings or WatchSettings.from_env()
        self.run_dir = run_dir
        self.deregister = deregister
        self.sessions = sessions or (lambda: 0)
        self.keepers = list(keepers)  # (period, callable): local duties (the job manager)
        self.autostop = autostop      # agent/autostop.Autostop on the master, or None
        self.epoch: int | None = None
        self.settle = False           # re-read once after a change: the index may lag
        self.moved_at = float("-inf")   # time.monotonic() when the epoch last moved
        self.members: list[Node] = []
        self.master_state: dict = {}
        self.hostfile_text: str | None = None
        self.hostfile_writes = 0
        self.last_write = 0.0         # time.time() of the last hostfile rewrite (benchmarks)
        self.draining = False
        self.live: dict = {}          # instance id -> Instance, from the last liveness check
        self.heartbeats_due = 0.0     # time.monotonic() of the next heartbeat check

    @property
    def is_master(self) -> bool:
        return self.node.role == "master"

    # -- membership (master) ----------------------------------------------------------
    def check_membership(self) -> bool:
        """One epoch read; the node list only when it moved. True if the hostfile changed."""
        epoch = self.reg.epoch(self.cluster)
        if epoch is None or (epoch == self.epoch and not self.settle):
            return False
        self.settle = epoch != self.epoch
        if self.settle:
            self.moved_at = time.monotonic()
        self.epoch = epoch
        return self.refresh()

    def refresh(self) -> bool:
        """Read the members and the master state; rewrite the hostfiles if they changed."""
        members = self.reg.nodes(self.cluster)   # local: the other loop may read meanwhile
        self.members = members
        self._write_members()
        changed = render_openmpi(members) != self.hostfile_text
        if changed:   # first: the master state read below must not delay mpirun's view
            text = write_hostfiles(members, self.hostfile_dirs)
            self.hostfile_text = text
            self.hostfile_writes += 1
            self.last_write = time.time()
            log.info("epoch %s: hostfile now has %d node(s)", self.epoch, text.count("\n"))
        self.master_state = self.reg.master_state(self.cluster)
        if self.epoch is not None and self.master_state.get("hostfile_epoch") != self.epoch:
            self.publish(self.epoch)
        return changed

    def publish(self, epoch: int) -> None:
        """Tell the registry which membership the hostfile reflects: create and add-nodes
        return only once it caught up, so an mpirun right after them sees every node."""
        try:
            self.reg.update_master(self.cluster, hostfile_epoch=epoch)
            self.master_state["hostfile_epoch"] = epoch
        except Exception as err:  # noqa: BLE001 - the cluster may be going away
            log.warning("could not record hostfile epoch %s: %s", epoch, err)

    def _write_members(self) -> None:
        """members.json for local readers (the job supervisor): who is in, who is going."""
        if self.run_dir is None:
            return
        data = [{"instance_id": n.instance_id, "private_ip": n.private_ip, "state": n.state,
                 "reason": n.reason, "role": n.role} for n in self.members if not n.problem]
        atomic_write(self.run_dir / "members.json", json.dumps(data))

    # -- liveness (master) ------------------------------------------------------------
    def check_liveness(self, heartbeats: bool = False) -> list[str]:
        """Mark lost the members whose instance is gone (and, with `heartbeats`, those whose
        heartbeat is stale); returns their ids. One DescribeInstances (+ one node-list read)."""
        if self.instances is None:
            return []
        self.live = {i.instance_id: i for i in self.instances.instances(
            states=("pending", "running"))}
        # its own read: never written back, so a read older than the hostfile's cannot replace
        # the members the membership loop renders (the two loops run side by side)
        members = self.reg.nodes(self.cluster) if heartbeats else list(self.members)
        now, s = time.time(), self.settings
        lost = []
        for n in members:
            if n.problem or n.instance_id == self.node.instance_id or n.state == "lost":
                continue
            if n.state == "failed" and n.instance_id in self.live:
                continue   # its boot gave up: status shows why; a replacement would fail alike
            reason = ""
            if n.instance_id not in self.live:
                reason = "its instance is gone (terminated or interrupted)"
            elif heartbeats and n.state != "booting" and now - n.heartbeat > s.lost_after:
                reason = f"no heartbeat for {now - n.heartbeat:.0f} s"
            elif heartbeats and n.state == "booting" and now - n.updated > s.boot_timeout:
                reason = f"still booting after {now - n.updated:.0f} s"
            if reason:
                log.warning("node %s is lost: %s", n.instance_id, reason)
                if self.healer is not None:
                    self.healer.avoid_pool_of(self.live.get(n.instance_id), n)
                if self.reg.set_node_state(self.cluster, n, "lost", reason):
                    lost.append(n.instance_id)
        self._forget_old_lost(now)
        return lost

    def liveness(self) -> list[str]:
        """The liveness duty: the heartbeats too when their check is due, on the same
        DescribeInstances (a separate heartbeat duty paid a second one every 30 s)."""
        now = time.monotonic()
        heartbeats = now >= self.heartbeats_due
        if heartbeats:   # half a period early: the loop runs duties a little late, never early
            s = self.settings
            self.heartbeats_due = now + s.heartbeat_check_every \
                - min(s.liveness_every, s.heartbeat_check_every) / 2
        return self.check_liveness(heartbeats=heartbeats)

    def _forget_old_lost(self, now: float) -> None:
        for n in self.members:
            if n.state == "lost" and n.instance_id not in self.live \
                    and now - n.updated > self.settings.lost_kept:
                self.reg.delete_node(self.cluster, n)

    def heal(self) -> None:
        if self.healer is not None:
            self.healer.heal(self.members, self.live, self.master_state)

    def check_idle(self) -> None:
        self.autostop.check(self.members, self.master_state)

    # -- every node -------------------------------------------------------------------
    def check_notice(self) -> bool:
        """Spot interruption or rebalance recommendation -> draining (once)."""
        if self.draining or self.imds is None:
            return False
        notice = self.imds.interruption() or self.imds.rebalance()
        if not notice:
            return False
        reason = "spot interruption notice" + (f" ({notice.get('action')} at {notice['time']})"
                                               if "time" in notice else "")
        log.warning("%s: draining %s", reason, self.node.instance_id)
        self.reg.set_node_state(self.cluster, self.node, "draining", reason)
        if self.run_dir is not None:
            atomic_write(self.run_dir / "notice.json", json.dumps(notice))
        self.draining = True
        return True

    def beat(self) -> None:
        """Heartbeat; if the master marked this node lost meanwhile, register again."""
        if self.reg.heartbeat(self.cluster, self.node, sessions=self.sessions()):
            return
        if self.draining:
            return
        log.warning("the registry says %s is lost or gone: registering again",
                    self.node.instance_id)
        self.node.state, self.node.reason = "ready", "rejoined"
        self.reg.put_node(self.cluster, self.node)

    # -- loop -------------------------------------------------------------------------
    def duties(self) -> list:
        """The duties of the main loop: what must stay prompt (notices, the hostfile)."""
        s = self.settings
        duties = [(s.notice_every, self.check_notice)]
        if self.is_master:
            duties += [(self.membership_period, self.check_membership),
                       (s.master_heartbeat_every, self.beat)]
        else:
            duties.append((s.heartbeat_every, self.beat))
        return duties + self.keepers

    def membership_period(self) -> float:
        """The membership poll: quicker while the last few members of the target size are to
        come (what create and add-nodes wait for), as long as one of them boots or the epoch
        moved lately (the last ones may not have registered yet: a boot can register and be
        ready within one 2 s poll). Not before: every poll that sees the epoch move reads the
        whole node list, and while many nodes register the epoch always moves (at 1000 nodes
        quick polls kept a 1000-item Query running and the registry queued). Not for good
        either: a cluster short of its size for lack of capacity is a steady state."""
        s = self.settings
        booting = sum(n.state == "booting" for n in self.members)
        ready = sum(n.state == "ready" for n in self.members)
        target = int(self.master_state.get("target") or 0)
        lately = time.monotonic() - self.moved_at < s.tail_window
        tail = 0 < target - ready <= BOOT_TAIL and (booting > 0 or lately)
        return min(s.poll, s.busy_poll) if tail else s.poll

    def slow_duties(self) -> list:
        """The master's cluster-wide checks, in a loop of their own: a DescribeInstances and a
        node-list read of a large cluster can take seconds, and the hostfile must not wait
        behind them (at 1000 nodes on the emulator it did, for 11 s)."""
        if not self.is_master:
            return []
        s = self.settings
        duties = [(min(s.liveness_every, s.heartbeat_check_every), self.liveness),
                  (s.liveness_every, self.heal)]
        if self.autostop is not None:
            duties.append((s.autostop_every, self.check_idle))
        return duties

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; each duty on its own period; errors are logged, never fatal."""
        slow = self.slow_duties()
        helper = None
        if slow:
            helper = threading.Thread(target=_loop, args=(slow, stop), name="watch-slow",
                                      daemon=True)
            helper.start()
        _loop(self.duties(), stop)
        if helper is not None:
            helper.join(timeout=30)
        if self.deregister:
            try:
                self.reg.delete_node(self.cluster, self.node)
                log.info("deregistered %s", self.node.instance_id)
            except Exception as err:  # noqa: BLE001 - shutting down anyway
                log.warning("deregister failed: %s", err)


def _loop(duties: list, stop: threading.Event) -> None:
    """Each (period, duty) on its own period until `stop`; errors are logged, never fatal.
    A period may be a function, asked again after each run of its duty."""
    due = [0.0] * len(duties)
    while not stop.is_set():
        now = time.monotonic()
        for i, (period, duty) in enumerate(duties):
            if now >= due[i]:
                try:
                    duty()
                except Exception as err:  # noqa: BLE001 - a network blip must not end it
                    log.warning("%s failed: %s", getattr(duty, "__name__", "duty"), err)
                due[i] = now + (period() if callable(period) else period)
        stop.wait(max(0.01, min(due) - time.monotonic()))
