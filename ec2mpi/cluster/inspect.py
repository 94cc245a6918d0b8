"""Looking at a cluster: status (registry joined with EC2), list, cost, hostfile, keys, console."""
from __future__ import annotations

import time

from ..aws.instances import LIVE_STATES, Instances
from ..aws.pricing import on_demand_prices, spot_prices
from ..config import TAG_ROLE, ClusterSpec, validate_name
from ..errors import UserError
from .model import ClusterStatus, ClusterSummary, CostEstimate, NodeStatus, PriceLine

HEARTBEAT_LOST_AFTER = 60.0   # s without a heartbeat (agents beat every 15 s) -> reported lost


def status(ops, name: str, with_cost: bool = True) -> ClusterStatus:
    """The registry's view joined with EC2's: a member whose instance is gone, or whose agent
    stopped beating, is lost even before the master says so (it may be the master that is
    gone); an item that cannot be trusted is shown as invalid, with its instance's data only."""
    validate_name(name)
    ops.preflight()
    item = ops.require(name)
    spec = ClusterSpec.from_json(item["spec"])
    master = item.get("master")
    # Live instances only: a member whose instance is terminated is lost either way, and
    # EC2 keeps terminated instances listed for an hour (a re-created cluster's twice over).
    instances = {i.instance_id: i for i in Instances(ops.aws, name).instances(
        states=LIVE_STATES)}
    order = {iid: k for k, iid in enumerate(instances)}   # launch order (oldest first)
    now = time.time()
    nodes = [_node_status(n, instances.pop(n.instance_id, None), now)
             for n in ops.registry.nodes(name)]
    for inst in instances.values():
        if inst.state in ("shutting-down", "terminated"):
            continue  # gone before it ever registered
        nodes.append(NodeStatus(
            instance_id=inst.instance_id, role=inst.tags.get(TAG_ROLE, "worker"),
            instance_type=inst.instance_type, lifecycle=inst.lifecycle,
            private_ip=inst.private_ip, public_ip=inst.public_ip, state="pending", slots=0,
            image=inst.image))
    for n in nodes:   # the master is the one the client recorded; a replaced one is history
        if n.instance_id == master and n.state != "invalid":
            n.role = "master"
        elif n.role == "master":
            n.role = "old-master"
    nodes.sort(key=lambda n: (n.role != "master", order.get(n.instance_id, 1 << 30),
                              n.instance_id))
    st = ClusterStatus(name, item.get("status", "?"), spec, ops.registry.epoch(name) or 0,
                       nodes, master_state=ops.registry.master_state(name))
    if with_cost:
        st.cost = cost_of(ops, nodes)
        if st.stopped:
            st.storage_month = storage_cost_per_month(ops, name, spec)
    return st


EFS_GB_MONTH = 0.30   # USD, EFS Standard, us-east-1 (list price; other regions differ a little)
S3_GB_MONTH = 0.023   # USD, S3 Standard


def storage_cost_per_month(ops, name: str, spec) -> float | None:
    """What a stopped cluster still costs: its shared storage (keys, registry items and the
    bucket's few objects are cents). None when the size cannot be read."""
    gib = 1024 ** 3
    try:
        if spec.storage == "efs":
            from ..aws.storage import Efs
            fs = Efs(ops.aws, name).find()
            return round((fs or {}).get("SizeInBytes", {}).get("Value", 0) / gib
                         * EFS_GB_MONTH, 2)
        if spec.storage == "s3fs":
            size = sum(o.get("Size", 0) for o in ops.keystore.objects(name, "shared/"))
            return round(size / gib * S3_GB_MONTH, 2)
    except Exception:  # noqa: BLE001 - a figure for the user, never a failure
        return None
    return 0.0


def _node_status(n, inst, now: float) -> NodeStatus:
    if n.problem:   # never shown from the item itself: only what EC2 says of the instance
        return NodeStatus(
            instance_id=n.instance_id if inst else "?", role="worker",
            instance_type=inst.instance_type if inst else "", lifecycle=inst.lifecycle
            if inst else "", private_ip=inst.private_ip if inst else "",
            public_ip=inst.public_ip if inst else "", state="invalid", slots=0,
            reason=f"registry item ignored: {n.problem}")
    state, reason = n.state, n.reason
    if state != "lost" and (inst is None or inst.state in ("shutting-down", "terminated")):
        state, reason = "lost", "its instance is gone"
    elif state not in ("lost", "booting") and n.heartbeat \
            and now - n.heartbeat > HEARTBEAT_LOST_AFTER:
        state, reason = "lost", f"no heartbeat for {now - n.heartbeat:.0f} s"
    return NodeStatus(
        instance_id=n.instance_id, role=n.role,
        instance_type=n.instance_type or (inst.instance_type if inst else ""),
        lifecycle=inst.lifecycle if inst else n.lifecycle, private_ip=n.private_ip,
        public_ip=inst.public_ip if inst else "", state=state, slots=n.slots,
        hostname=n.hostname, heartbeat_age=now - n.heartbeat if n.heartbeat else None,
        reason=reason, image=n.image or (inst.image if inst else ""), install_s=n.install_s)


def list_clusters(ops) -> list:
    ops.preflight()
    out = []
    for item in ops.registry.list_clusters():
        nodes = ops.registry.nodes(item["cluster"])
        out.append(
            ClusterSummary(
                item["cluster"],
                item.get("status", "?"),
                len(nodes),
                sum(1 for n in nodes if n.state == "ready"),
                int(item.get("created", 0)),
            )
        )
    return out


def cost(ops, name: str) -> CostEstimate:
    validate_name(name)
    ops.preflight()
    ops.require(name)
    live = Instances(ops.aws, name).instances(states=("pending", "running"))
    return price(ops, [(i.instance_type, i.lifecycle) for i in live])


def cost_of(ops, nodes: list) -> CostEstimate:
    """What these nodes cost per hour now: lost and terminated ones bill nothing."""
    return price(ops, [(n.instance_type, n.lifecycle) for n in nodes
                       if n.state not in ("lost", "terminated", "invalid") and n.instance_type])


def price(ops, members: list) -> CostEstimate:
    """The one price function: (instance type, lifecycle) pairs -> a CostEstimate with one
    PriceLine per pair (spot from EC2's price history, on-demand from the Pricing API or
    the static list)."""
    counts: dict = {}
    for itype, lifecycle in members:
        counts[(itype, lifecycle)] = counts.get((itype, lifecycle), 0) + 1
    spot_types = sorted({t for t, lc in counts if lc == "spot"})
    od_types = sorted({t for t, lc in counts if lc != "spot"})
    sources = []
    spot = spot_prices(ops.aws, spot_types) if spot_types else {}
    if spot_types:
        sources.append("spot: EC2 spot price history")
    od, od_source = on_demand_prices(ops.aws, ops.preflight(), od_types) if od_types else ({}, "")
    if od_types:
        sources.append(f"on-demand: {od_source}")
    lines = [PriceLine(itype, lifecycle, n, (spot if lifecycle == "spot" else od).get(itype))
             for (itype, lifecycle), n in sorted(counts.items())]
    est = CostEstimate(sum(line.per_hour or 0.0 for line in lines), lines,
                       "; ".join(sources) or "no running nodes")
    missing = sorted({line.instance_type for line in lines if line.unit is None})
    if missing:
        est.source += f"; no price known for {', '.join(missing)}"
    return est


def hostfile(ops, name: str) -> str:
    """Open MPI hostfile of the ready nodes, master first: exactly what the master writes."""
    from ..agent.hostfile import render_openmpi
    validate_name(name)
    ops.preflight()
    ops.require(name)
    return render_openmpi(ops.registry.nodes(name))


def keys(ops, name: str):
    """The cluster's ClusterKeys (identity + host key) from the key store, for client SSH."""
    validate_name(name)
    ops.preflight()
    ops.require(name)
    return ops.keystore.get_keys(name)


def console_output(ops, name: str, instance_id: str) -> str:
    validate_name(name)
    ops.preflight()
    instances = Instances(ops.aws, name)
    if not instances.instances(states=None, ids=[instance_id]):
        raise UserError(
            f"{instance_id} is not a node of cluster {name!r}", "see 'ec2mpi status' for its nodes"
        )
    return instances.console_output(instance_id)

