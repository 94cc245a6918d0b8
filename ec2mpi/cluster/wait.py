"""Waiting on the agents: reads of the registry only, so O(1) calls per poll at any size."""
from __future__ import annotations

import logging
import time

from ..errors import BootFailed, WaitTimeout

log = logging.getLogger(__name__)


def wait_ready(ops, name: str, ids: list, timeout: float) -> None:
    """Until every id is 'ready' and the master's hostfile lists them (mpirun can use them)."""
    want = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for n in ops.registry.nodes(name) if n.instance_id in want]
        ready = {n.instance_id for n in nodes if n.state == "ready"}
        failed = [n for n in nodes if n.state == "failed"]
        if failed:
            raise BootFailed(
                f"{len(failed)} of {len(want)} node(s) failed to boot: "
                f"{failed[0].instance_id}: {failed[0].reason or 'no reason recorded'}",
                f"see its boot log: ec2mpi logs {failed[0].instance_id} --console -c {name}; "
                f"remove it with: ec2mpi remove-nodes --node {failed[0].instance_id} -c {name}")
        ops.say(len(ready), len(want), f"{len(ready)}/{len(want)} nodes ready")
        if ready == want:
            if hostfile_caught_up(ops, name):
                return
            ops.say(len(ready), len(want), "waiting for the master's hostfile")
        if time.monotonic() >= deadline:
            if ready == want:
                raise WaitTimeout(f"all {len(want)} node(s) are ready but the master's hostfile "
                                  f"has not caught up after {timeout:.0f}s",
                                  f"check the master: ec2mpi logs master -c {name}")
            missing = sorted(want - ready)
            raise WaitTimeout(
                f"{len(missing)} of {len(want)} node(s) not ready after "
                f"{timeout:.0f}s: {', '.join(missing)}",
                f"they keep booting; see why with: ec2mpi logs {missing[0]} --console -c {name}",
            )
        time.sleep(max(0.0, min(ops.poll_interval, deadline - time.monotonic())))


def hostfile_caught_up(ops, name: str) -> bool:
    """The master's watcher has written the hostfile for the current membership epoch."""
    epoch = ops.registry.epoch(name) or 0
    return int(ops.registry.master_state(name).get("hostfile_epoch", -1)) >= epoch


def let_master_drop(ops, name: str, timeout: float) -> None:
    """After draining: give the master's hostfile a moment to drop the nodes (bounded: a
    dead master must not block a removal)."""
    deadline = time.monotonic() + timeout
    while not hostfile_caught_up(ops, name):
        if time.monotonic() >= deadline:
            log.warning("the master's hostfile did not drop the drained nodes within %.0fs; "
                        "removing anyway", timeout)
            return
        time.sleep(ops.poll_interval)
