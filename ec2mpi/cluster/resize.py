"""Grow and shrink a running cluster: add-nodes, remove-nodes."""
from __future__ import annotations

import uuid
from typing import Optional

from ..aws.instances import Instances, LaunchRequest
from ..aws.network import Network
from ..aws.templates import Templates
from ..config import ClusterSpec, parse_count, validate_name
from ..errors import CloudError, UserError
from .create import placement_group
from .wait import let_master_drop, wait_ready

DRAIN_WAIT = 30.0   # s remove-nodes waits for the master's hostfile before terminating


def ready_cluster(mgr, name: str) -> tuple[dict, ClusterSpec]:
    validate_name(name)
    mgr.preflight()
    item = mgr.require(name)
    if item.get("status") != "ready":
        raise UserError(f"cluster {name!r} is {item.get('status')}",
                        f"finish it first: re-run 'ec2mpi create {name}' or 'ec2mpi destroy {name}'")
    return item, ClusterSpec.from_json(item["spec"])


def add_nodes(mgr, name: str, count: int, wait: bool, timeout: float) -> list:
    count = parse_count(count)
    item, spec = ready_cluster(mgr, name)
    templates, instances = Templates(mgr.aws, name), Instances(mgr.aws, name)
    lt = templates.find_launch_template()
    if lt is None:
        raise CloudError(f"the launch template of cluster {name!r} is missing",
                         f"destroy and re-create the cluster: ec2mpi destroy {name}")
    subnets = Network(mgr.aws, name).subnets(spec.subnet_ids)
    pg = placement_group(mgr, templates, spec)
    ids = instances.launch(LaunchRequest(lt, count, uuid.uuid4().hex, spec.instance_types,
                                         tuple(subnets), spot=spec.spot, placement_group=pg))
    mgr.say(0, len(ids), f"launched {len(ids)} node(s)")
    if wait:
        wait_ready(mgr, name, ids, timeout)
    return ids


def remove_nodes(mgr, name: str, count: Optional[int], instance_ids: Optional[list]) -> list:
    if count is None and not instance_ids:
        raise UserError("remove-nodes needs a count or instance ids",
                        "e.g. remove-nodes 2, or --node i-0123")
    item, spec = ready_cluster(mgr, name)
    master = item.get("master")
    instances = Instances(mgr.aws, name)
    live = instances.instances()
    registered = {n.instance_id for n in mgr.registry.nodes(name)}
    members = [i.instance_id for i in live] + sorted(registered - {i.instance_id for i in live})
    if instance_ids:
        chosen = list(dict.fromkeys(instance_ids))
        unknown = [i for i in chosen if i not in members]
        if unknown:
            raise UserError(f"{', '.join(unknown)} not in cluster {name!r}",
                            "see 'ec2mpi status' for its nodes")
        if master in chosen:
            raise UserError("the master cannot be removed on its own",
                            f"destroy the whole cluster instead: ec2mpi destroy {name}")
    else:
        count = parse_count(count)
        workers = [i for i in members if i != master]
        if count > len(workers):
            raise UserError(f"cluster {name} has {len(workers)} worker node(s), cannot remove {count}",
                            f"give at most {len(workers)}, or destroy the cluster")
        chosen = workers[-count:]   # the newest (live instances are oldest first)
    for iid in chosen:
        if iid in registered:
            mgr.registry.set_node_state(name, iid, "draining")
    if any(i in registered for i in chosen):
        mgr.say(0, len(chosen), "draining: waiting for the master's hostfile to drop them")
        let_master_drop(mgr, name, DRAIN_WAIT)
    instances.terminate([i for i in chosen if i in {x.instance_id for x in live}])
    for iid in chosen:
        if iid in registered:
            mgr.registry.delete_node(name, iid)
    mgr.say(len(chosen), len(chosen), f"removed {len(chosen)} node(s)")
    return chosen
