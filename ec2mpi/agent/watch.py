"""`ec2mpi-agent watch`: keep the node's view of the cluster current, cheaply.

Master: poll the cluster item's epoch (one small read) and read the node list only when
it moved; rewrite the hostfiles when membership changed. Every node: watch for a spot
interruption notice or a rebalance recommendation and mark itself draining (the master
then drops it from the hostfile), heartbeat now and then, deregister on SIGTERM.
"""
from __future__ import annotations

import logging
import threading
import time

from ..aws.registry import Node, Registry
from .hostfile import render_openmpi, write_hostfiles
from .imds import Imds

log = logging.getLogger("ec2mpi.agent.watch")


class Watcher:
    def __init__(self, cluster: str, node: Node, registry: Registry, hostfile_dirs=(),
                 imds: Imds | None = None, poll: float = 2.0, notice_every: float = 5.0,
                 heartbeat_every: float = 15.0, deregister: bool = True):
        self.cluster, self.node, self.reg = cluster, node, registry
        self.hostfile_dirs = list(hostfile_dirs)
        self.imds = imds
        self.poll, self.notice_every, self.heartbeat_every = poll, notice_every, heartbeat_every
        self.deregister = deregister
        self.epoch: int | None = None
        self.hostfile_text: str | None = None
        self.hostfile_writes = 0
        self.last_write = 0.0        # time.time() of the last hostfile rewrite (benchmarks read it)
        self.draining = False

    @property
    def is_master(self) -> bool:
        return self.node.role == "master"

    # -- the three duties -----------------------------------------------------------
    def check_membership(self) -> bool:
        """One epoch read; the node list only when it moved. True if the hostfile was rewritten."""
        epoch = self.reg.epoch(self.cluster)
        if epoch is None or epoch == self.epoch:
            return False
        nodes = self.reg.nodes(self.cluster)
        self.epoch = epoch
        changed = render_openmpi(nodes) != self.hostfile_text
        if changed:
            text = write_hostfiles(nodes, self.hostfile_dirs)
            self.hostfile_text = text
            self.hostfile_writes += 1
            self.last_write = time.time()
            log.info("epoch %s: hostfile now has %d node(s)", epoch, text.count("\n"))
        self.publish(epoch)
        return changed

    def publish(self, epoch: int) -> None:
        """Tell the registry which membership the hostfile reflects: `create` and `add-nodes`
        return only once it caught up, so an mpirun right after them sees every node."""
        try:
            self.reg.update_cluster(self.cluster, hostfile_epoch=epoch)
        except Exception as err:  # noqa: BLE001 - the cluster may be going away; the hostfile itself is written
            log.warning("could not record hostfile epoch %s: %s", epoch, err)

    def check_notice(self) -> bool:
        """Spot interruption or rebalance recommendation -> draining (once). True if it drained."""
        if self.draining or self.imds is None:
            return False
        notice = self.imds.interruption() or self.imds.rebalance()
        if not notice:
            return False
        log.warning("notice %s: draining %s", notice, self.node.instance_id)
        self.reg.set_node_state(self.cluster, self.node.instance_id, "draining")
        self.draining = True
        return True

    def beat(self) -> None:
        self.reg.heartbeat(self.cluster, self.node.instance_id)

    # -- loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; each duty on its own period; errors are logged, never fatal."""
        duties = [(self.notice_every, self.check_notice), (self.heartbeat_every, self.beat)]
        if self.is_master:
            duties.insert(0, (self.poll, self.check_membership))
        due = [0.0] * len(duties)
        while not stop.is_set():
            now = time.monotonic()
            for i, (period, duty) in enumerate(duties):
                if now >= due[i]:
                    due[i] = now + period
                    try:
                        duty()
                    except Exception as err:  # noqa: BLE001 - a network blip must not end the watcher
                        log.warning("%s failed: %s", duty.__name__, err)
            stop.wait(max(0.01, min(due) - time.monotonic()))
        if self.deregister:
            try:
                self.reg.delete_node(self.cluster, self.node.instance_id)
                log.info("deregistered %s", self.node.instance_id)
            except Exception as err:  # noqa: BLE001
                log.warning("deregister failed: %s", err)
