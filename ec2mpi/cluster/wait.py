"""Waiting on the agents: reads of the registry only, so O(1) calls per poll at any size."""
from __future__ import annotations

import logging
import os
import time

from ..aws.instances import Instances
from ..errors import BootFailed, WaitTimeout

log = logging.getLogger(__name__)


# A node that fails before it can write to the registry (no role credentials, say) is
# found in its console: read for the nodes still unregistered after a while, a few at a time.
CONSOLE_CHECK_AFTER = 30.0      # s into the wait (EC2MPI_CONSOLE_CHECK_AFTER: tests)
CONSOLE_CHECK_EVERY = 15.0      # s between two checks
CONSOLE_CHECK_NODES = 4         # consoles read per check (GetConsoleOutput each)
BOOT_FAILED_MARK = "ec2mpi-bootstrap: FAILED"   # what user-data prints when it gives up
FEW_LEFT = 4          # nodes left to be ready (or the hostfile alone) for the quick poll
LAST_POLL = 0.2       # s between reads then (else twice ops.poll_interval)


def wait_ready(ops, name: str, ids: list, timeout: float) -> None:
    """Until every id is 'ready' and the master's hostfile lists them (mpirun can use them).
    A node whose boot gave up ends the wait at once, with its reason."""
    want = set(ids)
    start = time.monotonic()
    deadline = start + timeout
    after = float(os.environ.get("EC2MPI_CONSOLE_CHECK_AFTER", CONSOLE_CHECK_AFTER))
    consoles = ConsoleCheck(ops, name, start + after)
    while True:
        nodes = [n for n in ops.registry.nodes(name) if n.instance_id in want]
        ready = {n.instance_id for n in nodes if n.state == "ready"}
        failed = [(n.instance_id, n.reason) for n in nodes if n.state == "failed"]
        failed = failed or consoles.failures(sorted(want - {n.instance_id for n in nodes}))
        if failed:
            iid, reason = failed[0]
            raise BootFailed(
                f"{len(failed)} of {len(want)} node(s) failed to boot: "
                f"{iid}: {reason or 'no reason recorded'}",
                f"see its boot log: ec2mpi logs {iid} --console -c {name}; "
                f"remove it with: ec2mpi remove-nodes --node {iid} -c {name}")
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
        # every poll reads the whole node list: seldom while many boot, often for the last few
        left = len(want - ready)
        pause = 2 * ops.poll_interval if left > FEW_LEFT else min(ops.poll_interval, LAST_POLL)
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))


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


class ConsoleCheck:
    """The consoles of nodes not yet in the registry, a few per check, in turn."""

    def __init__(self, ops, name: str, first: float):
        self.ops, self.name, self.due, self.turn = ops, name, first, 0

    def failures(self, unregistered: list) -> list:
        """[(instance id, reason)] of the nodes read this time whose user-data gave up."""
        if not unregistered or time.monotonic() < self.due:
            return []
        self.due = time.monotonic() + CONSOLE_CHECK_EVERY
        start = self.turn % len(unregistered)
        chosen = (unregistered[start:] + unregistered[:start])[:CONSOLE_CHECK_NODES]
        self.turn += len(chosen)
        instances = Instances(self.ops.aws, self.name)
        out = []
        for iid in chosen:
            try:
                reason = boot_failure(instances.console_output(iid))
            except Exception as err:  # noqa: BLE001 - only a hint: the wait goes on
                log.debug("console of %s: %s", iid, err)
                continue
            if reason:
                out.append((iid, reason))
        return out


def boot_failure(console: str) -> str:
    """Why user-data gave up, from a console ('' if it did not): its FAILED line and the
    line before it (the failing step's own message)."""
    lines = console.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if BOOT_FAILED_MARK in lines[i]:
            before = lines[i - 1].strip() if i else ""
            return " ".join(x for x in (before, lines[i].strip()) if x)[:400]
    return ""
