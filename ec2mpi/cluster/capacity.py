"""Capacity failover for the launches of create, add-nodes and resize.

A launch (`launch`) is the adapter's failover (`Instances.launch_some`: one CreateFleet
for everything missing, again without the (type, AZ, lifecycle) pools that refused for
capacity, until the count is met or every pool failed; then on-demand with
`--spot-fallback on-demand`), over the cluster's types and subnets minus the pools the
registry says to avoid. The pools that refused are recorded in the master state for
AVOID_SECONDS (10 minutes, as ParallelCluster's fast failover): the next command and the
master's healing leave them out too.

Then `settle` decides: with at least `needed` nodes the launch stands and the report says
how many are missing (with keep-size the master keeps trying for them); below, every
instance of that launch is terminated (and its node items deleted), the caller's `undo`
forgets the launch so a re-run starts cleanly, and the command fails (exit 1) naming the
types and zones tried.
"""
from __future__ import annotations

import dataclasses

from ..aws.instances import Instances, LaunchRequest, LaunchResult, describe_pools
from ..aws.registry import avoid_pools, avoided
from ..errors import CloudError, UserError
from .model import LaunchReport


class CapacityShortfall(CloudError):
    """Fewer nodes than --min-nodes: everything that launch made is gone again (exit 1)."""


def needed_nodes(min_nodes, asked: int, what: str = "nodes") -> int:
    """--min-nodes M (default: all) checked against the count asked."""
    if min_nodes is None:
        return asked
    try:
        m = int(str(min_nodes).strip())
    except ValueError:
        raise UserError(f"--min-nodes {min_nodes!r} is not a number",
                        "give a whole number such as 2") from None
    if not 1 <= m <= asked:
        raise UserError(f"--min-nodes {m} is not between 1 and the {asked} {what} asked",
                        f"give at most {asked}, or leave it out to need them all")
    return m


def launch(ops, name: str, req: LaunchRequest) -> LaunchResult:
    """launch_some, leaving out the pools the registry says to avoid; the pools that refuse
    are recorded there (with a membership bump, so the master reads them at once)."""
    avoid = avoided(ops.registry.master_state(name))
    req = dataclasses.replace(req, avoid=frozenset(req.avoid) | frozenset(avoid))
    result = Instances(ops.aws, name).launch_some(req)
    failed = result.capacity_failed
    if failed:
        avoid_pools(ops.registry, name, failed)
        ops.say(0, 0, f"no capacity in {describe_pools(failed)}: avoided for 10 minutes")
    return result


def report(launches, asked: int, keeps_trying: bool) -> LaunchReport:
    """One report over the launches of a command, (LaunchResult, spot asked) pairs (create:
    the master's and the workers')."""
    results = [r for r, _ in launches]
    ids = [i for r in results for i in r.ids]
    failed = [[*pool, r.failed[pool][0]] for r in results for pool in r.failed]
    tried = [pool for r in results for pool in r.tried]
    return LaunchReport(asked, len(ids),
                        spot=sum(len(r.ids) - len(r.on_demand) for r, spot in launches if spot),
                        on_demand=sum(len(r.on_demand) for r in results), failed=failed,
                        tried=describe_pools(list(dict.fromkeys(tried))),
                        keeps_trying=keeps_trying)


def settle(ops, name: str, results, rep: LaunchReport, needed: int, what: str,
           suggest_fallback: bool, other_types: str = "--instance-type", undo=None
           ) -> LaunchReport:
    """At least `needed` of the launch's nodes: the report stands. Below: terminate every
    instance of the launch, delete their node items, `undo()` (the caller forgets the
    launch), and raise CapacityShortfall naming the pools tried."""
    if rep.launched >= needed:
        return rep
    ids = [i for r in results for i in r.ids]
    gone = Instances(ops.aws, name).terminate(ids)
    for node in ops.registry.nodes(name):
        if node.instance_id in gone and not node.problem:
            ops.registry.delete_node(name, node)
    if undo is not None:
        undo()
    codes = ", ".join(dict.fromkeys(f[3] for f in rep.failed)) or "no capacity"
    fallback = "--spot-fallback on-demand, " if suggest_fallback else ""
    raise CapacityShortfall(
        f"{what}: only {rep.launched} of {rep.asked} node(s) launched, at least {needed} "
        f"needed ({codes}); tried {rep.tried or 'no pool'}"
        + (f"; the {len(gone)} launched were terminated" if gone else ""),
        f"try {fallback}other instance types ({other_types}), or again later; a re-run "
        "starts cleanly")
