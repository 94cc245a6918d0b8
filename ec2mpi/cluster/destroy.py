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


def destroy(ops, name: str) -> DestroyReport:
    """Remove everything of the cluster, registry item or not; then prove nothing is left."""
    validate_name(name)
    ops.preflight()
    network, templates = Network(ops.aws, name), Templates(ops.aws, name)
    insts = Instances(ops.aws, name)
    item = ops.registry.get_cluster(name) if ops.table_exists() else None
    instances = insts.instances()
    if item is None and not instances and not leftovers(ops, name):
        raise UserError(
            f"no cluster named {name!r}", "see 'ec2mpi list' for the clusters that exist"
        )
    if item is not None:
        ops.registry.update_cluster(name, status="destroying")
    report = DestroyReport()
    ids = [i.instance_id for i in instances]

    def instances_gone() -> list:
        removed = insts.terminate(ids)
        insts.wait_terminated(ids)
        return removed

    def registry_items() -> list:
        if ops.table_exists() and ops.registry.get_cluster(name) is not None:
            return [f"{ops.registry.delete_cluster(name)} item(s)"]
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
        ("efs", lambda: Efs(ops.aws, name).delete()),
        ("security group", network.delete_security_group),
        ("iam", lambda: NodeRole(ops.aws, name).delete()),
        ("s3 objects", lambda: ops.keystore.delete_prefix(name)),
        ("registry items", registry_items),
    ]
    run_steps([(kind, _recorded(report, kind, step)) for kind, step in steps], ops.say)
    report.leftovers = leftovers(ops, name)
    return report


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
    insts, network, templates = (
        Instances(ops.aws, name),
        Network(ops.aws, name),
        Templates(ops.aws, name),
    )
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
    if templates.find_launch_template():
        left.append(f"launch-template/{insts.names.launch_template}")
    role = NodeRole(ops.aws, name).exists()
    left += [f"iam {kind}/{insts.names.role}" for kind, there in role.items() if there]
    fs = Efs(ops.aws, name).find()
    if fs:
        left.append(f"efs/{fs['FileSystemId']}")
    if ops.keystore.exists():
        left += [f"s3://{ops.keystore.bucket}/{k}" for k in ops.keystore.list(name)]
    if ops.table_exists() and ops.registry.get_cluster(name) is not None:
        left.append(f"registry/{name}")
    return left
