"""Handlers that change or show membership: add-nodes, remove-nodes, hostfile."""
from __future__ import annotations

from typing import Optional

from .. import catalog, output
from ..errors import UserError
from .access import resolve_node
from .context import Result


def per_hour_of(nodes, cost) -> Optional[float]:
    """What these nodes cost per hour, from the cluster's own price list (or the catalogue)."""
    total = 0.0
    for n in nodes:
        entry = (cost.by_type.get(n.instance_type) if cost else None)
        unit = entry[1] if entry and len(entry) > 1 else catalog.price(n.instance_type, n.lifecycle == "spot")
        if unit is None:
            return None
        total += unit
    return round(total, 4)


def cmd_add_nodes(ctx, a) -> Result:
    name = ctx.cluster_name()
    bar = ctx.progress(f"add-nodes {name}")
    try:
        added = ctx.manager(progress=bar).add_nodes(name, a.count, wait=not a.no_wait, timeout=a.timeout)
    finally:
        bar.finish()
    ids = [getattr(x, "instance_id", x) for x in added]
    return Result({"cluster": name, "added": ids},
                  f"added {len(ids)} node(s) to {name}: {', '.join(ids)}" if ids else f"no node added to {name}")


def cmd_remove_nodes(ctx, a) -> Result:
    if a.count is None and not a.node:
        raise UserError("remove-nodes needs a count or --node ID", "e.g. ec2mpi remove-nodes 2, or --node node-3")
    name = ctx.cluster_name()
    mgr = ctx.manager()
    status = mgr.status(name)
    ids = None
    if a.node:
        chosen = [resolve_node(status, ref) for ref in a.node]
        if any(label == "master" for label, _ in chosen):
            raise UserError("the master cannot be removed on its own", f"destroy the cluster instead: ec2mpi destroy {name}")
        ids = sorted({node.instance_id for _, node in chosen})
        gone = [n for n in status.nodes if n.instance_id in ids]
        what = f"{len(ids)} node(s) ({', '.join(ids)})"
    else:
        workers = [n for n in status.nodes if n.role != "master"]
        if a.count > len(workers):
            raise UserError(f"cluster {name} has {len(workers)} worker node(s), cannot remove {a.count}",
                            f"give at most {len(workers)}, or destroy the cluster")
        gone = workers[-a.count:]
        what = f"{a.count} of {len(workers)} worker node(s)"
    saves = per_hour_of(gone, status.cost)
    if not ctx.confirm(f"remove {what} from cluster {name}, saving about {output.money(saves)}?"):
        return Result(text="nothing removed")
    removed = mgr.remove_nodes(name, count=None if ids else a.count, instance_ids=ids)
    removed = [getattr(x, "instance_id", x) for x in removed]
    return Result({"cluster": name, "removed": removed, "saves_per_hour": saves},
                  f"removed {len(removed)} node(s) from {name}: {', '.join(removed)} (saves {output.money(saves)})")


def cmd_hostfile(ctx, a) -> Result:
    name = ctx.cluster_name()
    text = ctx.manager().hostfile(name)
    return Result({"cluster": name, "hostfile": text}, text.rstrip("\n"))
