"""Grow and shrink a running cluster: add-nodes, resize, plan_removal and remove."""
from __future__ import annotations

import uuid

from ..aws.instances import Instances, LaunchRequest
from ..aws.network import Network
from ..aws.templates import Templates
from ..config import ClusterSpec, parse_count, validate_name
from ..errors import CloudError, UserError
from . import capacity
from .create import placement_group, replace_lost_master
from .inspect import cost, cost_of
from .inspect import status as inspect_status
from .model import NodeIds, Removal, Resize
from .wait import let_master_drop, wait_ready


def ready_cluster(ops, name: str) -> tuple[dict, ClusterSpec]:
    validate_name(name)
    ops.preflight()
    item = ops.require(name)
    if item.get("status") != "ready":
        raise UserError(
            f"cluster {name!r} is {item.get('status')}",
            f"finish it first: re-run 'ec2mpi create {name}' or 'ec2mpi destroy {name}'",
        )
    return item, ClusterSpec.from_json(item["spec"])


def add_nodes(ops, name: str, count: int, wait: bool, timeout: float,
              min_nodes: int | None = None, spot_fallback: str | None = None) -> NodeIds:
    """Launch `count` more nodes; with fewer than `min_nodes` of them (default: all), the
    launch is undone (capacity.settle). Returns the new ids, with the launch's report."""
    count = parse_count(count)
    needed = capacity.needed_nodes(min_nodes, count, "nodes to add")
    item, spec = ready_cluster(ops, name)
    replace_lost_master(ops, spec, item)      # lost, or stopped by autostop: nodes need one
    before = ops.registry.master_state(name).get("target")
    set_target(ops, name, size(ops, name) + count, wake=True)  # first: healing never fights it
    ids = launch(ops, name, spec, count, uuid.uuid4().hex, needed, spot_fallback,
                 f"add-nodes {name}", undo=lambda: _restore_target(ops, name, before))
    if wait:
        wait_ready(ops, name, ids, timeout)
    return ids


def launch(ops, name: str, spec: ClusterSpec, count: int, token: str, needed: int | None = None,
           spot_fallback: str | None = None, what: str = "", undo=None) -> NodeIds:
    """`count` instances of launch `token` from the cluster's template (those already made
    by an earlier try of the same token count): returns the token's instance ids, with a
    LaunchReport as `.launch` when capacity ran short. It fails over (capacity.launch);
    with fewer than `needed` (default: all), the launch is undone and `undo()` runs."""
    templates = Templates(ops.aws, name)
    lt = templates.find_launch_template("worker")
    if lt is None:
        raise CloudError(f"the launch template of cluster {name!r} is missing",
                         f"destroy and re-create the cluster: ec2mpi destroy {name}")
    subnets = Network(ops.aws, name).subnets(spec.subnet_ids)
    pg = placement_group(ops, templates, spec)
    fallback = (spot_fallback or spec.spot_fallback) == "on-demand"
    result = capacity.launch(ops, name, LaunchRequest(
        lt, count, token, spec.instance_types, tuple(subnets), spot=spec.spot,
        placement_group=pg, spot_fallback=fallback))
    rep = capacity.report([(result, spec.spot)], count, spec.keeps_size)
    capacity.settle(ops, name, [result], rep, count if needed is None else needed,
                    what or f"launch for {name}", spec.spot and not fallback,
                    "a cluster created with other --instance-type", undo)
    ids = NodeIds(result.ids)
    if rep.eventful:
        rep.per_hour = cost(ops, name).per_hour
        ids.launch = rep
    ops.say(0, len(ids), f"launched {len(ids)} of {count} node(s)")
    return ids


def _restore_target(ops, name: str, target) -> None:
    """A launch was undone: the size healing keeps is what it was before."""
    ops.registry.update_master(name, bump=True, target=int(target or 0))


def size(ops, name: str) -> int:
    """The members that count toward the cluster's size (not lost, not going)."""
    return sum(1 for n in inspect_status(ops, name, with_cost=False).nodes if n.state not in GONE)


def set_target(ops, name: str, target: int, wake: bool = False) -> None:
    """The size healing keeps; a membership change, so the master reads it at once. With
    `wake` (nodes asked for), a cluster autostop stopped runs again, its idle clock reset."""
    extra = {"stopped_at": 0, "idle_since": 0} if wake else {}
    ops.registry.update_master(name, bump=True, target=max(0, target), **extra)


def resize(ops, name: str, target: int, wait: bool, timeout: float, confirm=None,
           min_nodes: int | None = None, spot_fallback: str | None = None) -> Resize:
    """Set the node count (master included) to `target`: launch or remove the difference.

    Idempotent: the target and a launch token are recorded before anything is launched, so
    a re-run after a crash counts what that try already launched and never launches twice.
    `confirm(removal)` is asked before nodes are removed (False keeps them). A growing
    resize that ends below `min_nodes` (default: the target) is undone (capacity.settle)."""
    target = parse_count(target, "node count")
    needed = capacity.needed_nodes(min_nodes, target)
    item, spec = ready_cluster(ops, name)
    replace_lost_master(ops, spec, item)
    members = [n for n in inspect_status(ops, name, with_cost=False).nodes
               if n.state not in GONE]
    plan = item.get("resize") or {}
    if plan.get("target") != target or not plan.get("token"):
        plan = {"target": target, "token": uuid.uuid4().hex}
        ops.registry.update_cluster(name, resize=plan)
    before = ops.registry.master_state(name).get("target")
    set_target(ops, name, target, wake=True)
    result = Resize(name, target, len(members))
    if len(members) < target:
        made = Instances(ops.aws, name).instances(launch_token=plan["token"])
        others = [n for n in members if n.instance_id not in {i.instance_id for i in made}]

        def undo():
            ops.registry.update_cluster(name, resize={})
            _restore_target(ops, name, before)
        ids = launch(ops, name, spec, target - len(others), plan["token"],
                     max(0, needed - len(others)), spot_fallback, f"resize {name}", undo)
        result.added = [i for i in ids if i not in {n.instance_id for n in members}]
        result.launch = ids.launch
    elif len(members) > target:
        removal = plan_removal(ops, name, count=len(members) - target)
        if confirm is not None and not confirm(removal):
            result.cancelled = True
            return result
        result.removed = remove(ops, removal, lower_target=False)
    if wait:   # also after a crashed try: its nodes are members now, perhaps not ready yet
        live = [n.instance_id for n in inspect_status(ops, name, with_cost=False).nodes
                if n.state not in GONE]
        wait_ready(ops, name, live, timeout)
    return result


GONE = ("lost", "terminated", "draining", "invalid")   # members that do not count toward the size

# Which nodes a removal takes first: those already gone or going, then the newest.
_REMOVAL_ORDER = {"lost": 0, "terminated": 0, "failed": 0, "draining": 1, "pending": 2,
                  "booting": 2}


def plan_removal(ops, name: str, count: int | None = None,
                 instance_ids: list | None = None) -> Removal:
    """The one rule for which nodes a removal takes, and what they cost now. The prompt
    and the action both use it, so the nodes priced are the nodes removed."""
    if count is None and not instance_ids:
        raise UserError("remove-nodes needs a count or instance ids",
                        "e.g. remove-nodes 2, or --node i-0123")
    ready_cluster(ops, name)
    st = inspect_status(ops, name, with_cost=False)
    workers = [n for n in st.nodes if n.role != "master"]
    if instance_ids:
        known = {n.instance_id: n for n in st.nodes}
        chosen_ids = list(dict.fromkeys(instance_ids))
        unknown = [i for i in chosen_ids if i not in known]
        if unknown:
            raise UserError(f"{', '.join(unknown)} not in cluster {name!r}",
                            "see 'ec2mpi status' for its nodes")
        if any(known[i].role == "master" for i in chosen_ids):
            raise UserError("the master cannot be removed on its own",
                            f"destroy the whole cluster instead: ec2mpi destroy {name}")
        chosen = [known[i] for i in chosen_ids]
    else:
        count = parse_count(count)
        if count > len(workers):
            raise UserError(
                f"cluster {name} has {len(workers)} worker node(s), cannot remove {count}",
                f"give at most {len(workers)}, or destroy the cluster",
            )
        newest_first = list(reversed(workers))     # status lists nodes in launch order
        chosen = sorted(newest_first, key=lambda n: _REMOVAL_ORDER.get(n.state, 3))[:count]
    return Removal(name, tuple(n.instance_id for n in chosen), tuple(chosen),
                   cost_of(ops, chosen).per_hour)


def remove(ops, removal: Removal, lower_target: bool = True) -> list:
    """Lower the target (healing must not replace them), drain (the master's hostfile drops
    them), terminate, deregister: exactly removal's nodes."""
    name, chosen = removal.cluster, list(removal.instance_ids)
    if lower_target:
        going = sum(1 for n in removal.nodes if n.state not in GONE)
        set_target(ops, name, int(ops.registry.master_state(name).get("target") or 0) - going)
    instances = Instances(ops.aws, name)
    live = {i.instance_id for i in instances.instances()}
    registered = {n.instance_id: n for n in ops.registry.nodes(name) if not n.problem}
    for iid in chosen:
        if iid in registered and registered[iid].state != "lost":
            ops.registry.set_node_state(name, registered[iid], "draining", "being removed")
    if any(i in registered for i in chosen):
        ops.say(0, len(chosen), "draining: waiting for the master's hostfile to drop them")
        let_master_drop(ops, name, ops.drain_wait)
    instances.terminate([i for i in chosen if i in live])
    for iid in chosen:
        if iid in registered:
            ops.registry.delete_node(name, registered[iid])
    ops.say(len(chosen), len(chosen), f"removed {len(chosen)} node(s)")
    return chosen
