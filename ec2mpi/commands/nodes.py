"""Handlers that change or show membership: add-nodes, remove-nodes, hostfile."""
from __future__ import annotations

from .. import output
from ..errors import UserError
from .access import resolve_node
from .context import Result


def cmd_add_nodes(ctx, a) -> Result:
    name = ctx.cluster_name()
    bar = ctx.progress(f"add-nodes {name}")
    try:
        added = ctx.manager(progress=bar).add_nodes(
            name, a.count, wait=not a.no_wait, timeout=a.timeout,
            min_nodes=getattr(a, "min_nodes", None),
            spot_fallback=getattr(a, "spot_fallback", None))
    finally:
        bar.finish()
    ids = [getattr(x, "instance_id", x) for x in added]
    launch = getattr(added, "launch", None)
    text = (f"added {len(ids)} node(s) to {name}: {', '.join(ids)}" if ids
            else f"no node added to {name}")
    if launch is not None:
        text += f"\ncapacity: {output.format_launch(launch)}"
    return Result({"cluster": name, "added": ids, "launch": output.to_data(launch)}, text)


def cmd_remove_nodes(ctx, a) -> Result:
    if a.count is None and not a.node:
        raise UserError("remove-nodes needs a count or --node ID",
                        "e.g. ec2mpi remove-nodes 2, or --node node-3")
    name = ctx.cluster_name()
    mgr = ctx.manager()
    ids = None
    if a.node:
        status = mgr.status(name, with_cost=False)
        ids = sorted({resolve_node(status, ref)[1].instance_id for ref in a.node})
    plan = mgr.plan_removal(name, count=None if ids else a.count, instance_ids=ids)
    states = ", ".join(f"{n.instance_id} ({n.state})" for n in plan.nodes)
    if not ctx.confirm(f"remove {len(plan.instance_ids)} node(s) from cluster {name}: {states}; "
                       f"saving about {output.money(plan.per_hour)}?"):
        return Result(text="nothing removed")
    removed = mgr.remove(plan)
    return Result({"cluster": name, "removed": removed, "saves_per_hour": plan.per_hour},
                  f"removed {len(removed)} node(s) from {name}: {', '.join(removed)} "
                  f"(saves {output.money(plan.per_hour)})")


def cmd_resize(ctx, a) -> Result:
    name = ctx.cluster_name()
    bar = ctx.progress(f"resize {name}")

    def confirm(plan) -> bool:
        states = ", ".join(f"{n.instance_id} ({n.state})" for n in plan.nodes)
        return ctx.confirm(f"remove {len(plan.instance_ids)} node(s) from cluster {name}: "
                           f"{states}; saving about {output.money(plan.per_hour)}?")
    try:
        done = ctx.manager(progress=bar).resize(
            name, a.count, wait=not a.no_wait, timeout=a.timeout, confirm=confirm,
            min_nodes=getattr(a, "min_nodes", None),
            spot_fallback=getattr(a, "spot_fallback", None))
    finally:
        bar.finish()
    if done.cancelled:
        return Result(output.to_data(done), "nothing removed", status=0)
    change = f"cluster {name}: {done.before} -> {done.target} nodes"
    if done.added:
        text = f"{change} (added {', '.join(done.added)})"
    elif done.removed:
        text = f"{change} (removed {', '.join(done.removed)})"
    else:
        text = f"cluster {name} has {done.target} node(s) already; nothing to do"
    if done.launch is not None:
        text += f"\ncapacity: {output.format_launch(done.launch)}"
    return Result(output.to_data(done), text)


def cmd_hostfile(ctx, a) -> Result:
    name = ctx.cluster_name()
    text = ctx.manager().hostfile(name)
    return Result({"cluster": name, "hostfile": text}, text.rstrip("\n"))
