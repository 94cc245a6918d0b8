"""destroy: remove everything of the cluster, registry item or not; then prove nothing is left."""
from __future__ import annotations

from ..aws.iam import NodeRole
from ..aws.instances import Instances
from ..aws.network import Network
from ..aws.storage import Efs
from ..aws.tagging import tagged_resources
from ..aws.templates import Templates
from ..config import validate_name
from ..errors import UserError
from .model import DestroyReport, run_steps


def destroy(mgr, name: str) -> DestroyReport:
    """Remove everything of the cluster, registry item or not; then prove nothing is left."""
    validate_name(name)
    mgr.preflight()
    network, templates = Network(mgr.aws, name), Templates(mgr.aws, name)
    insts = Instances(mgr.aws, name)
    item = mgr.registry.get_cluster(name) if mgr.table_exists() else None
    instances = insts.instances()
    if item is None and not instances and not leftovers(mgr, name):
        raise UserError(
            f"no cluster named {name!r}", "see 'ec2mpi list' for the clusters that exist"
        )
    if item is not None:
        mgr.registry.update_cluster(name, status="destroying")
    report = DestroyReport()
    ids = [i.instance_id for i in instances]

    def instances_gone() -> list:
        removed = insts.terminate(ids)
        insts.wait_terminated(ids)
        return removed

    def registry_items() -> list:
        if mgr.table_exists() and mgr.registry.get_cluster(name) is not None:
            return [f"{mgr.registry.delete_cluster(name)} item(s)"]
        return []

    steps = [
        ("fleets", lambda: insts.delete_fleets_and_spot_requests(ids)),
        ("instances", instances_gone),
        (
            "launch template",
            lambda: (
                templates.delete_launch_template()
                + templates.delete_placement_group()
                + insts.delete_volumes()
            ),
        ),
        ("efs", lambda: Efs(mgr.aws, name).delete()),
        ("security group", network.delete_security_group),
        ("iam", lambda: NodeRole(mgr.aws, name).delete()),
        ("s3 objects", lambda: mgr.keystore.delete_prefix(name)),
        ("registry items", registry_items),
    ]
    run_steps([(kind, _recorded(report, kind, step)) for kind, step in steps], mgr.say)
    report.leftovers = leftovers(mgr, name)
    return report


def _recorded(report: DestroyReport, kind: str, step):
    """A destroy step that records what it removed and says how many."""
    def run() -> str:
        removed = step()
        if removed:
            report.removed.setdefault(kind, []).extend(removed)
        return f"{kind}: {len(removed)} removed"
    return run


def leftovers(mgr, name: str) -> list:
    """Everything of the cluster that still exists (tagging API + direct describes)."""
    insts, network, templates = (
        Instances(mgr.aws, name),
        Network(mgr.aws, name),
        Templates(mgr.aws, name),
    )
    live = {i.instance_id for i in insts.instances()}
    gone = {i.instance_id for i in insts.instances(states=("terminated",))}
    left = []
    for arn in tagged_resources(mgr.aws, name):
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
    if templates.find_launch_template():
        left.append(f"launch-template/{insts.names.launch_template}")
    role = NodeRole(mgr.aws, name).exists()
    left += [f"iam {kind}/{insts.names.role}" for kind, there in role.items() if there]
    fs = Efs(mgr.aws, name).find()
    if fs:
        left.append(f"efs/{fs['FileSystemId']}")
    if mgr.keystore.exists():
        left += [f"s3://{mgr.keystore.bucket}/{k}" for k in mgr.keystore.list(name)]
    if mgr.table_exists() and mgr.registry.get_cluster(name) is not None:
        left.append(f"registry/{name}")
    return left
