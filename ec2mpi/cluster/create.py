"""create: a list of (label, step) pairs, each an idempotent ensure_*.

Re-running create after a crash (the cluster item still says 'creating' with the same
spec) resumes instead of duplicating: every step finds what an earlier run made, and
the launch is keyed by a token stored in the registry before anything is launched.
"""
from __future__ import annotations

import uuid

from .. import __version__, selfwheel
from ..aws.checkip import checkip_url, public_ipv4
from ..aws.iam import NodeRole, PolicyScope, master_policy, worker_policy
from ..aws.instances import Instances, LaunchRequest
from ..aws.jobrole import JobRole, job_role_arn
from ..aws.network import Network
from ..aws.storage import NFS_PORT, Efs
from ..aws.templates import PLACEMENT_UNSUPPORTED, Templates
from ..config import DEFAULT_IMAGE_PARAMETERS, NODE_PREFIX, REGISTRY_TABLE, ClusterSpec
from ..errors import UserError
from ..userdata import UserDataParams, render
from . import capacity
from .inspect import status as inspect_status
from .model import ClusterStatus, run_steps
from .wait import wait_ready


def create(ops, spec: ClusterSpec, wait: bool, timeout: float,
           min_nodes: int | None = None) -> ClusterStatus:
    """Create the cluster, resume a half-made one, or, for one that exists with the same
    settings, just wait for its nodes: re-running create is always safe. With fewer than
    `min_nodes` (default: all) launched, the launch is undone (capacity.settle)."""
    needed = capacity.needed_nodes(min_nodes, spec.nodes)
    region = ops.preflight()
    item = ops.registry.get_cluster(spec.name) if ops.table_exists() else None
    if item is not None and not spec.ssh_cidr:   # a re-run keeps the cluster's SSH range
        spec = spec.replace(ssh_cidr=ClusterSpec.from_json(item["spec"]).ssh_cidr)
    spec = complete_spec(ops, spec)
    if item is not None and item.get("status") not in ("creating", "destroying"):
        return existing(ops, item, spec, wait, timeout)
    run = Creation(ops, spec, region, item)
    run.needed = needed
    run.check()
    run_steps(run.steps(wait, timeout), ops.say)
    status = inspect_status(ops, spec.name)
    if run.report is not None and run.report.eventful:
        run.report.per_hour = status.cost.per_hour if status.cost else None
        status.launch = run.report
    return status


# What a re-run may change in a half-made cluster: nothing running depends on them yet (the
# launch templates name no type; a new type list must keep the architecture, checked).
RESUME_MAY_CHANGE = ("spot_fallback", "instance_types")


def differences(old: ClusterSpec, new: ClusterSpec, ignore=()) -> list[str]:
    """'nodes 4 (asked 6)', one per setting that differs."""
    mine, theirs = old.to_mapping(), new.to_mapping()
    return [f"{key.replace('_', '-')} {_show(mine[key])} (asked {_show(theirs[key])})"
            for key in mine if mine[key] != theirs.get(key) and key not in ignore]


def _show(value) -> str:
    return ",".join(value) if isinstance(value, (tuple, list)) else str(value)


def existing(ops, item: dict, spec: ClusterSpec, wait: bool, timeout: float) -> ClusterStatus:
    """create on a cluster that exists: the same settings wait for it; others are refused."""
    stored = ClusterSpec.from_json(item["spec"])
    diff = differences(stored, spec)
    if diff:
        raise UserError(f"cluster {spec.name!r} already exists with different settings: "
                        + "; ".join(diff),
                        f"change its size with 'ec2mpi resize N -c {spec.name}', or "
                        f"'ec2mpi destroy {spec.name}' first")
    ops.say(0, 0, f"cluster {spec.name} already exists with these settings")
    replaced = replace_lost_master(ops, spec, item)
    if wait:
        members = [n.instance_id for n in inspect_status(ops, spec.name, with_cost=False).nodes
                   if n.state not in ("lost", "terminated", "draining")]
        wait_ready(ops, spec.name, members, timeout)
    status = inspect_status(ops, spec.name)
    status.notice = (f"cluster {spec.name} already existed with these settings; "
                     + (f"its lost master was replaced by {replaced}" if replaced
                        else "nothing new was made"))
    return status


def replace_lost_master(ops, spec: ClusterSpec, item: dict) -> str | None:
    """A lost master is replaced from the same state (its template, role and shared storage;
    jobs with --restarts resume once it is back). Idempotent: the replacement's launch token
    is recorded first. Returns the new master's id, or None if the master is fine."""
    name = spec.name
    master = inspect_status(ops, name, with_cost=False).master
    if master is not None and master.state not in ("lost", "terminated", "invalid"):
        return None
    if master is None and not item.get("master"):
        return None     # never had one yet: create launches it
    token = item.get("master_token") or f"master-{uuid.uuid4().hex}"
    ops.registry.update_cluster(name, master_token=token)
    lt = Templates(ops.aws, name).find_launch_template("master")
    if lt is None:
        raise UserError(f"cluster {name!r} has no master launch template",
                        f"destroy and re-create it: ec2mpi destroy {name}")
    subnets = Network(ops.aws, name).subnets(spec.subnet_ids)
    stopped = ops.registry.master_state(name).get("stopped_at")
    ops.say(0, 0, f"{name} was stopped by autostop: launching its master" if stopped
            else f"the master of {name} is lost: launching a new one")
    new = Instances(ops.aws, name).launch(LaunchRequest(
        lt, 1, token, spec.instance_types, tuple(subnets), spot=spec.master_spot, role="master",
        spot_fallback=spec.spot_fallback == "on-demand"))
    ops.registry.update_cluster(name, master=new[0], master_token="")
    return new[0]


def complete_spec(ops, spec: ClusterSpec) -> ClusterSpec:
    """Fill what the user left out: SSH is opened to the caller's own public address, found
    with one short request to AWS's check-IP service; never to 0.0.0.0/0."""
    if spec.ssh_cidr:
        return spec
    ops.say(0, 0, "finding your public address (for --ssh-cidr)")
    try:
        address = public_ipv4()
    except (OSError, ValueError) as err:
        raise UserError(f"cannot find your public address at {checkip_url()} ({err})",
                        "pass --ssh-cidr YOUR.IP/32 (the address you SSH from)") from err
    return spec.replace(ssh_cidr=f"{address}/32")


def placement_group(ops, templates: Templates, spec: ClusterSpec) -> str | None:
    if not spec.placement_group:
        return None
    pg = templates.ensure_placement_group()
    if pg is None:
        ops.say(0, 0, PLACEMENT_UNSUPPORTED)
    return pg


class Creation:
    """One run of create: the state its steps hand to each other."""

    def __init__(self, ops, spec: ClusterSpec, region: str, item: dict | None):
        self.ops, self.spec, self.region, self.item = ops, spec, region, item
        self.network = Network(ops.aws, spec.name)
        self.templates = Templates(ops.aws, spec.name)
        self.instances = Instances(ops.aws, spec.name)
        self.subnets: list = []
        self.sg = self.wheel_key = self.storage_id = ""
        self.roles: dict = {}          # kind -> (profile ARN, role ARN, role id)
        self.lts: dict = {}            # kind -> launch template id
        self.ids: list = []
        self.needed = spec.nodes       # --min-nodes: fewer launched undoes the launch
        self.report = None             # the launch's LaunchReport
        self.arch = "x86_64"           # of the instance types: the default image follows it

    def check(self) -> None:
        """Everything that can refuse before anything is made."""
        self.arch = self.templates.architecture(self.spec.instance_types)
        if not self.spec.image_id and self.arch not in DEFAULT_IMAGE_PARAMETERS:
            raise UserError(f"no default image for {self.arch} instance types",
                            "pass --image with an AMI for them")
        self.subnets = self.network.subnets(self.spec.subnet_ids)
        if self.item is not None:
            self._check_resumable(self.item)

    def _check_resumable(self, item: dict) -> None:
        name, status = self.spec.name, item.get("status")
        if status == "destroying":
            raise UserError(f"cluster {name!r} is being destroyed",
                            f"re-run 'ec2mpi destroy {name}' first")
        stored = ClusterSpec.from_json(item["spec"])
        diff = differences(stored, self.spec, ignore=RESUME_MAY_CHANGE)
        if diff:
            raise UserError(f"cluster {name!r} is half-created with different settings: "
                            + "; ".join(diff),
                            f"re-run create with the same settings, or destroy it first: "
                            f"ec2mpi destroy {name}")
        if stored.instance_types != self.spec.instance_types \
                and self.templates.architecture(stored.instance_types) != self.arch:
            raise UserError(f"cluster {name!r} is half-created for "
                            f"{self.templates.architecture(stored.instance_types)} instance "
                            f"types, not {self.arch}",
                            f"use types of that architecture, or destroy it first: "
                            f"ec2mpi destroy {name}")
        self.ops.say(0, 0, f"resuming the half-made cluster {name}")

    def steps(self, wait: bool, timeout: float) -> list:
        return [
            ("registry", self.registry_item),
            ("cluster keys stored", self.cluster_keys),
            ("security group", self.security_group),
            ("instance roles", self.instance_roles),
            ("shared storage", self.shared_storage),
            ("ec2mpi wheel uploaded", self.wheel),
            ("launch templates", self.launch_templates),
            ("launched", self.launch),
            ("ready", self.mark_ready),
            ("done", lambda: self.wait(wait, timeout)),
        ]

    # -- the steps ----------------------------------------------------------------
    def registry_item(self) -> None:
        """First: from here on, a crash leaves something create can resume."""
        reg = self.ops.registry
        reg.ensure_table()
        self.ops.table_made()
        if self.item is None:
            reg.create_cluster(self.spec.name, self.spec.to_json(), status="creating")
            self.item = {}
        elif self.item.get("spec") != self.spec.to_json():   # RESUME_MAY_CHANGE
            reg.update_cluster(self.spec.name, spec=self.spec.to_json())
        if not self.item.get("launch_token"):
            self.item["launch_token"] = uuid.uuid4().hex
            reg.update_cluster(self.spec.name, launch_token=self.item["launch_token"])

    def cluster_keys(self) -> None:
        ks = self.ops.keystore
        ks.ensure_bucket()
        if not ks.has_keys(self.spec.name):
            from ..keys import ClusterKeys
            ks.put_keys(self.spec.name, ClusterKeys.generate(self.spec.name))

    def security_group(self) -> None:
        self.sg = self.network.ensure_security_group(self.network.default_vpc(self.subnets),
                                                   self.spec.ssh_cidr)

    def scope(self, **more) -> PolicyScope:
        """What the node policies name; the job role's ARN is known before the role exists."""
        aws = self.ops.aws
        job = job_role_arn(aws.account_id(), self.spec.name, self.region) \
            if self.spec.job_policy_arns else ""
        return PolicyScope(self.spec.name, self.ops.keystore.bucket, self.region,
                           aws.account_id(), self.spec.storage, job_role_arn=job, **more)

    def instance_roles(self) -> None:
        """A worker role, and the master's (which may pass the worker role to the nodes it
        launches when it heals); their ids make up the node item keys."""
        aws, name = self.ops.aws, self.spec.name
        job = self.scope().job_role_arn
        self.roles["worker"] = NodeRole(aws, name, "worker").ensure(worker_policy(self.scope()))
        self.roles["master"] = NodeRole(aws, name, "master").ensure(
            master_policy(self.scope(worker_role_arn=self.roles["worker"][1])))
        if job:     # trusted by the node roles, which must exist first
            JobRole(aws, name).ensure_job([arn for _, arn, _ in self.roles.values()],
                                          self.spec.job_policy_arns)
        for kind in ("worker", "master"):
            NodeRole(aws, name, kind).wait_usable()
        self.ops.registry.update_cluster(name, job_role=job, roles={
            kind: role_id for kind, (_, _, role_id) in self.roles.items()})

    def shared_storage(self) -> str:
        if self.spec.storage == "efs":
            self.network.authorize(self.sg, [{
                "IpProtocol": "tcp", "FromPort": NFS_PORT, "ToPort": NFS_PORT,
                "UserIdGroupPairs": [{"GroupId": self.sg, "Description": "NFS from the cluster"}]}])
            efs = Efs(self.ops.aws, self.spec.name)
            self.storage_id = efs.ensure([s["SubnetId"] for s in self.subnets], self.sg)
            # only this cluster's node roles may mount it (over TLS, with IAM)
            efs.apply_policy([arn for _, arn, _ in self.roles.values()], self.storage_id)
        return f"shared storage ({self.spec.storage})"

    def wheel(self) -> None:
        """The code the nodes run: this very client."""
        wheel_name, data = selfwheel.build()
        self.wheel_key = self.ops.keystore.put_wheel(self.spec.name, wheel_name, data)

    def launch_templates(self) -> None:
        """One per kind of node; then the master's policy names the worker template, the only
        one it may launch from."""
        spec, aws = self.spec, self.ops.aws
        image = self.templates.resolve_image(spec.image_id,
                                             DEFAULT_IMAGE_PARAMETERS.get(self.arch, ""))
        for kind in ("worker", "master"):
            params = UserDataParams(
                cluster=spec.name, region=self.region, bucket=self.ops.keystore.bucket,
                table=REGISTRY_TABLE, version=__version__, wheel_key=self.wheel_key,
                storage=spec.storage, storage_id=self.storage_id, shared_path=spec.shared_path,
                user=spec.user, prefix=NODE_PREFIX, role=kind, account=aws.account_id())
            self.lts[kind] = self.templates.ensure_launch_template(
                kind, image, self.roles[kind][0], self.sg, render(params))
        NodeRole(aws, spec.name, "master").put_policy(master_policy(self.scope(
            worker_role_arn=self.roles["worker"][1], launch_template_id=self.lts["worker"])))

    def launch(self) -> str:
        """The master (on-demand unless --master-spot) and the workers: one call each while
        capacity lasts (capacity.launch fails over). Fewer than `needed`: undone."""
        spec, token, name = self.spec, self.item["launch_token"], self.spec.name
        pg = placement_group(self.ops, self.templates, spec)
        fallback = spec.spot_fallback == "on-demand"
        master = capacity.launch(self.ops, name, LaunchRequest(
            self.lts["master"], 1, f"{token}-master", spec.instance_types, tuple(self.subnets),
            spot=spec.master_spot, role="master", placement_group=pg, spot_fallback=fallback))
        launches = [(master, spec.master_spot)]
        if master.ids:
            self.ops.registry.update_cluster(name, master=master.ids[0])
            if spec.nodes > 1:
                launches.append((capacity.launch(self.ops, name, LaunchRequest(
                    self.lts["worker"], spec.nodes - 1, f"{token}-worker", spec.instance_types,
                    tuple(self.subnets), spot=spec.spot, placement_group=pg,
                    spot_fallback=fallback)), spec.spot))
        results = [r for r, _ in launches]
        self.ids = [i for r in results for i in r.ids]
        self.report = capacity.report(launches, spec.nodes, spec.keeps_size)
        capacity.settle(self.ops, name, results, self.report, self.needed, f"create {name}",
                        spec.spot and not fallback, undo=self._forget_launch)
        return f"launched {len(self.ids)} of {spec.nodes} node(s)"

    def _forget_launch(self) -> None:
        """The launch was undone: a re-run launches afresh, under a new token."""
        self.ops.registry.update_cluster(self.spec.name, launch_token="", master="")

    def mark_ready(self) -> None:
        self.ops.registry.update_cluster(self.spec.name, status="ready")
        self.ops.registry.update_master(self.spec.name, bump=True, target=self.spec.nodes,
                                        keep_size=self.spec.keeps_size,
                                        autostop=self.spec.autostop_seconds)

    def wait(self, wait: bool, timeout: float) -> None:
        if wait:
            wait_ready(self.ops, self.spec.name, self.ids, timeout)
