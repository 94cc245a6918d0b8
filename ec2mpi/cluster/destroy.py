"""destroy: remove everything of the cluster, registry item or not; then prove nothing is left."""
from __future__ import annotations

import time

from ..aws.iam import KINDS, NodeRole
from ..aws.instances import Instances
from ..aws.jobrole import JobRole
from ..aws.network import Network
from ..aws.storage import Efs
from ..aws.tagging import tagged_resources
from ..aws.templates import Templates
from ..config import validate_name
from ..errors import UserError
from .model import DestroyReport, run_steps
from .wait import let_master_drop


def destroy(ops, name: str) -> DestroyReport:
    """Stop healing, remove everything of the cluster (registry item or not), then prove
    nothing is left."""
    validate_name(name)
    ops.preflight()
    network, templates = Network(ops.aws, name), Templates(ops.aws, name)
    insts = Instances(ops.aws, name)
    item = ops.registry.get_cluster(name) if ops.table_exists() else None
    if item is None and not insts.instances() and not leftovers(ops, name):
        raise UserError(f"no cluster named {name!r}",
                        "see 'ec2mpi list' for the clusters that exist")
    report = DestroyReport()
    gone: list = []

    def stop_healing() -> list:
        """Target 0 first: the master then launches nothing more (bounded wait for it to see
        that: a dead master must not block a destroy)."""
        if item is not None:
            ops.registry.update_cluster(name, status="destroying")
            ops.registry.update_master(name, bump=True, target=0, keep_size=False)
            if master_alive(ops, name):
                let_master_drop(ops, name, min(ops.drain_wait, 10.0))
        return []

    def instances_gone() -> list:
        """Terminate until none is left: a launch racing the destroy is caught too."""
        for _ in range(3):
            ids = [i.instance_id for i in insts.instances()]
            if not ids:
                break
            insts.delete_fleets_and_spot_requests(ids)
            gone.extend(insts.terminate(ids))
            insts.wait_terminated(ids)
        return list(dict.fromkeys(gone))

    def registry_items() -> list:
        if ops.table_exists() and ops.registry.get_cluster(name) is not None:
            return [f"{ops.registry.delete_cluster(name)} item(s)"]
        return []

    steps = [
        ("healing stopped", stop_healing),
        ("instances", instances_gone),
        ("fleets", lambda: insts.delete_fleets_and_spot_requests(gone)),
        ("launch templates", lambda: templates.delete_launch_templates()
         + templates.delete_placement_group() + insts.delete_volumes()),
        ("efs", lambda: Efs(ops.aws, name).delete()),
        ("security group", network.delete_security_group),
        ("iam", lambda: [r for role in _roles(ops, name) for r in role.delete()]),
        ("s3 objects", lambda: ops.keystore.delete_prefix(name)),
        ("registry items", registry_items),
    ]
    run_steps([(kind, _recorded(report, kind, step)) for kind, step in steps], ops.say)
    report.leftovers = leftovers(ops, name)
    return report


def _roles(ops, name: str) -> list:
    """Every IAM role a cluster may have: the node roles and the job role."""
    return [NodeRole(ops.aws, name, kind) for kind in KINDS] + [JobRole(ops.aws, name)]


def master_alive(ops, name: str, within: float = 90.0) -> bool:
    """The master's agent beat within `within` seconds (it may still be healing)."""
    now = time.time()
    return any(n.role == "master" and n.state in ("booting", "ready")
               and now - n.heartbeat < within for n in ops.registry.nodes(name))


def _recorded(report: DestroyReport, kind: str, step):
    """A destroy step that records what it removed and says how many."""
    def run() -> str:
        removed = step()
        if removed:
            report.removed.setdefault(kind, []).extend(removed)
        return f"{kind}: {len(removed)} removed"
    return run


def leftovers(ops, name: str) -> list:
    """Everything of the cluster that still exists (tagging API + direct describes)."""
    insts, network = Instances(ops.aws, name), Network(ops.aws, name)
    templates = Templates(ops.aws, name)
    live = {i.instance_id for i in insts.instances()}
    gone = {i.instance_id for i in insts.instances(states=("terminated",))}
    left = []
    for arn in tagged_resources(ops.aws, name):
        kind, _, rid = arn.split(":")[-1].partition("/")
        if kind == "instance" and rid in gone:
            continue            # terminated instances stay visible for a while; they bill nothing
        if kind == "volume" and not insts.volume_exists(rid):
            continue
        left.append(arn)
    left += [f"instance/{i}" for i in sorted(live) if not any(i in a for a in left)]
    sg = network.find_security_group()
    if sg and not any("security-group/" in a for a in left):
        left.append(f"security-group/{sg}")
    for kind in KINDS:
        if templates.find_launch_template(kind):
            left.append(f"launch-template/{insts.names.launch_template(kind)}")
    for role in _roles(ops, name):
        left += [f"iam {what}/{role.name}" for what, there in role.exists().items() if there]
    fs = Efs(ops.aws, name).find()
    if fs:
        left.append(f"efs/{fs['FileSystemId']}")
    if ops.keystore.exists():
        left += [f"s3://{ops.keystore.bucket}/{k}" for k in ops.keystore.list(name)]
    if ops.table_exists() and ops.registry.get_cluster(name) is not None:
        left.append(f"registry/{name}")
    return left
