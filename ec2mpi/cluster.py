"""Cluster orchestration: create / add / remove / status / destroy, over the aws/ adapters.

The client never logs into nodes to configure them. It writes state to AWS and launches
instances; each node's agent pulls what it needs and registers itself. Client cost is
O(1) API calls in the number of nodes: one launch call per create or add-nodes, and
waiting reads the registry, not the nodes.

Every create step is an idempotent ensure_*: re-running create after a crash (the
cluster item still says 'creating' with the same spec) resumes instead of duplicating.
"""
from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlparse

from . import __version__, selfwheel
from .aws.fleet import LIVE_STATES, PLACEMENT_UNSUPPORTED, Fleet
from .aws.iam import NodeRole, node_policy
from .aws.keystore import KeyStore
from .aws.pricing import on_demand_prices, spot_prices
from .aws.registry import Registry
from .aws.session import AwsSession
from .aws.storage import NFS_PORT, Efs
from .aws.tagging import tagged_resources
from .config import (
    DEFAULT_IMAGE_PARAMETER,
    NODE_PREFIX,
    REGISTRY_TABLE,
    TAG_ROLE,
    ClusterSpec,
    parse_count,
    validate_name,
)
from .errors import CloudError, UserError, WaitTimeout
from .userdata import UserDataParams, render

log = logging.getLogger(__name__)

# progress(done, total, message): called while waiting; must be cheap and never raise.
Progress = Callable[[int, int, str], None]
CREATE_STEPS = 9
DRAIN_WAIT = 30.0             # s remove-nodes waits for the master's hostfile before terminating
HEARTBEAT_LOST_AFTER = 60.0   # s without a heartbeat (agents beat every 15 s) -> reported lost


@dataclass
class NodeStatus:
    instance_id: str
    role: str                     # master | worker
    instance_type: str
    lifecycle: str                # spot | on-demand
    private_ip: str
    public_ip: str
    state: str                    # booting | ready | draining | pending | lost | terminated
    slots: int
    hostname: str = ""
    heartbeat_age: Optional[float] = None   # seconds since the node's last heartbeat


@dataclass
class CostEstimate:
    per_hour: float               # USD per hour for the whole cluster
    by_type: dict = field(default_factory=dict)   # instance type -> (count, unit price, lifecycle)
    source: str = ""              # where the prices came from, said to the user


@dataclass
class ClusterStatus:
    name: str
    status: str                   # creating | ready | destroying | ...
    spec: ClusterSpec
    epoch: int
    nodes: list = field(default_factory=list)   # list[NodeStatus], master first
    cost: Optional[CostEstimate] = None

    @property
    def ready(self) -> int:
        return sum(1 for n in self.nodes if n.state == "ready")

    @property
    def master(self) -> Optional[NodeStatus]:
        return next((n for n in self.nodes if n.role == "master"), None)


@dataclass
class ClusterSummary:
    name: str
    status: str
    nodes: int
    ready: int
    created: int


@dataclass
class DestroyReport:
    removed: dict = field(default_factory=dict)   # kind -> list of ids/names removed
    leftovers: list = field(default_factory=list)  # anything tagged that could not be removed (should be empty)


class ClusterManager:
    """All cluster operations. Every method raises UserError (exit 2) or CloudError (exit 1)."""

    poll_interval = 0.5   # seconds between registry reads while waiting (one small query each)

    def __init__(self, aws: AwsSession, progress: Optional[Progress] = None):
        self.aws = aws
        self.progress = progress or (lambda done, total, message: None)
        self._registry: Optional[Registry] = None
        self._keystore: Optional[KeyStore] = None
        self._region: Optional[str] = None
        self._table = False

    # -- adapters (lazy: bad input must fail before any client talks to AWS) ----------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.aws)
        return self._registry

    @property
    def keystore(self) -> KeyStore:
        if self._keystore is None:
            self._keystore = KeyStore(self.aws)
        return self._keystore

    def _table_exists(self) -> bool:
        """The registry table is never deleted by ec2mpi: once seen, skip asking again."""
        if not self._table:
            self._table = self.registry.table_exists()
        return self._table

    def _require(self, name: str) -> dict:
        item = self.registry.get_cluster(name) if self._table_exists() else None
        if item is None:
            raise UserError(f"no cluster named {name!r}", "see 'ec2mpi list' for the clusters that exist")
        return item

    def _say(self, done: int, total: int, message: str) -> None:
        self.progress(done, total, message)

    def _preflight(self) -> str:
        """Credentials and region, before anything else: returns the region."""
        if self._region is None:
            region = self.aws.region
            self.aws.check_credentials()
            self._region = region
        return self._region

    # -- create -----------------------------------------------------------------
    def create(self, spec: ClusterSpec, wait: bool = True, timeout: float = 900.0) -> ClusterStatus:
        region = self._preflight()
        spec = self._complete_spec(spec)
        fleet = Fleet(self.aws, spec.name)
        fleet.check_instance_types(spec.instance_types)
        subnets = fleet.subnets(spec.subnet_ids)
        item = self.registry.get_cluster(spec.name) if self._table_exists() else None
        if item is not None:
            self._check_resumable(item, spec)

        step = 0

        def say(msg):
            nonlocal step
            step += 1
            self._say(step, CREATE_STEPS, msg)

        # 1. registry item first: from here on, a crash leaves something create can resume
        self.registry.ensure_table()
        self._table = True
        if item is None:
            self.registry.create_cluster(spec.name, spec.to_json(), status="creating")
            item = {}
        token = item.get("launch_token")
        if not token:
            token = uuid.uuid4().hex
            self.registry.update_cluster(spec.name, launch_token=token)
        say("registry")
        # 2. keys into the private bucket
        self.keystore.ensure_bucket()
        if not self.keystore.has_keys(spec.name):
            from .keys import ClusterKeys
            self.keystore.put_keys(spec.name, ClusterKeys.generate(spec.name))
        say("cluster keys stored")
        # 3. network
        sg = fleet.ensure_security_group(fleet.default_vpc(subnets), spec.ssh_cidr)
        say("security group")
        # 4. identity of the nodes
        role = NodeRole(self.aws, spec.name)
        profile_arn = role.ensure(node_policy(spec.name, self.keystore.bucket, region, self.aws.account_id(),
                                              spec.storage))
        role.wait_usable()
        say("instance role")
        # 5. shared storage
        storage_id = ""
        if spec.storage == "efs":
            fleet.authorize(sg, [{"IpProtocol": "tcp", "FromPort": NFS_PORT, "ToPort": NFS_PORT,
                                  "UserIdGroupPairs": [{"GroupId": sg, "Description": "NFS from the cluster"}]}])
            storage_id = Efs(self.aws, spec.name).ensure([s["SubnetId"] for s in subnets], sg)
        say(f"shared storage ({spec.storage})")
        # 6. the code the nodes run: this very client
        wheel_name, wheel = selfwheel.build()
        wheel_key = self.keystore.put_wheel(spec.name, wheel_name, wheel)
        say("ec2mpi wheel uploaded")
        # 7. launch template
        user_data = render(self._userdata_params(spec, region, wheel_key, storage_id))
        image = fleet.resolve_image(spec.image_id, DEFAULT_IMAGE_PARAMETER)
        lt = fleet.ensure_launch_template(image, profile_arn, sg, user_data)
        say("launch template")
        # 8. all N nodes in ONE call; node 0 is the master
        pg = self._placement_group(fleet, spec)
        ids = fleet.launch(lt, spec.nodes, token, spec.instance_types, subnets, spot=spec.spot,
                           placement_group=pg)
        master = self.registry.set_master(spec.name, ids[0])
        fleet.tag([master], **{TAG_ROLE: "master"})
        say(f"launched {len(ids)} node(s)")
        self.registry.update_cluster(spec.name, status="ready")
        # 9. wait for the agents
        if wait:
            self._wait(spec.name, ids, timeout)
        say("done")
        return self.status(spec.name)

    def _complete_spec(self, spec: ClusterSpec) -> ClusterSpec:
        """Fill what the user left out and we can know without asking the network."""
        if spec.ssh_cidr:
            return spec
        host = urlparse(self.aws.endpoint_url or "").hostname
        try:
            ip = ipaddress.ip_address(host or "")
        except ValueError:
            raise UserError("cannot tell which address you will SSH from",
                            "pass --ssh-cidr YOUR.IP/32 (your public address)") from None
        # an explicit endpoint by IP is a local cloud: its nodes see us at that address
        return spec.replace(ssh_cidr=f"{ip}/{ip.max_prefixlen}")

    def _check_resumable(self, item: dict, spec: ClusterSpec) -> None:
        status = item.get("status")
        if status == "creating" and item.get("spec") == spec.to_json():
            self._say(0, CREATE_STEPS, f"resuming the half-made cluster {spec.name}")
            return
        if status == "creating":
            raise UserError(f"cluster {spec.name!r} is half-created with different settings",
                            f"re-run create with the same settings, or 'ec2mpi destroy {spec.name}' first")
        if status == "destroying":
            raise UserError(f"cluster {spec.name!r} is being destroyed", f"re-run 'ec2mpi destroy {spec.name}' first")
        raise UserError(f"cluster {spec.name!r} already exists",
                        f"pick another name, or 'ec2mpi destroy {spec.name}' first")

    def _userdata_params(self, spec, region, wheel_key, storage_id) -> UserDataParams:
        return UserDataParams(cluster=spec.name, region=region, bucket=self.keystore.bucket, table=REGISTRY_TABLE,
                              version=__version__, wheel_key=wheel_key, storage=spec.storage,
                              storage_id=storage_id, shared_path=spec.shared_path, user=spec.user,
                              prefix=NODE_PREFIX)

    def _placement_group(self, fleet: Fleet, spec: ClusterSpec) -> Optional[str]:
        if not spec.placement_group:
            return None
        pg = fleet.ensure_placement_group()
        if pg is None:
            self._say(0, 0, PLACEMENT_UNSUPPORTED)
        return pg

    # -- waiting ------------------------------------------------------------------
    def _wait(self, name: str, ids: list, timeout: float) -> None:
        """Until every id is 'ready' in the registry (reads only: O(1) calls per poll)."""
        want = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            ready = {n.instance_id for n in self.registry.nodes(name) if n.state == "ready"} & want
            self._say(len(ready), len(want), f"{len(ready)}/{len(want)} nodes ready")
            if ready == want:
                if self._hostfile_caught_up(name):
                    return          # the master's hostfile lists them: mpirun can use them now
                self._say(len(ready), len(want), "waiting for the master's hostfile")
            if time.monotonic() >= deadline:
                if ready == want:
                    raise WaitTimeout(f"all {len(want)} node(s) are ready but the master's hostfile has not "
                                      f"caught up after {timeout:.0f}s",
                                      f"check the master: ec2mpi logs master -c {name}")
                missing = sorted(want - ready)
                raise WaitTimeout(f"{len(missing)} of {len(want)} node(s) not ready after {timeout:.0f}s: "
                                  f"{', '.join(missing)}",
                                  f"see 'ec2mpi console {missing[0]} -c {name}'; the nodes keep booting")
            time.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    def _hostfile_caught_up(self, name: str) -> bool:
        """The master's watcher has written the hostfile for the current membership epoch."""
        item = self.registry.get_cluster(name) or {}
        return item.get("hostfile_epoch", -1) >= item.get("epoch", 0)

    def _let_master_drop(self, name: str, timeout: float) -> None:
        """After draining: give the master's hostfile a moment to drop the nodes (bounded: a
        dead master must not block a removal)."""
        deadline = time.monotonic() + timeout
        while not self._hostfile_caught_up(name):
            if time.monotonic() >= deadline:
                log.warning("the master's hostfile did not drop the drained nodes within %.0fs; removing anyway",
                            timeout)
                return
            time.sleep(self.poll_interval)

    # -- grow and shrink ----------------------------------------------------------
    def _ready_cluster(self, name: str) -> tuple[dict, ClusterSpec]:
        validate_name(name)
        self._preflight()
        item = self._require(name)
        if item.get("status") != "ready":
            raise UserError(f"cluster {name!r} is {item.get('status')}",
                            f"finish it first: re-run 'ec2mpi create {name}' or 'ec2mpi destroy {name}'")
        return item, ClusterSpec.from_json(item["spec"])

    def add_nodes(self, name: str, count: int, wait: bool = True, timeout: float = 900.0) -> list:
        count = parse_count(count)
        item, spec = self._ready_cluster(name)
        fleet = Fleet(self.aws, name)
        lt = fleet.find_launch_template()
        if lt is None:
            raise CloudError(f"the launch template of cluster {name!r} is missing",
                             f"destroy and re-create the cluster: ec2mpi destroy {name}")
        subnets = fleet.subnets(spec.subnet_ids)
        pg = self._placement_group(fleet, spec)
        ids = fleet.launch(lt, count, uuid.uuid4().hex, spec.instance_types, subnets, spot=spec.spot,
                           placement_group=pg)
        self._say(0, len(ids), f"launched {len(ids)} node(s)")
        if wait:
            self._wait(name, ids, timeout)
        return ids

    def remove_nodes(self, name: str, count: Optional[int] = None, instance_ids: Optional[list] = None) -> list:
        if count is None and not instance_ids:
            raise UserError("remove-nodes needs a count or instance ids", "e.g. remove-nodes 2, or --node i-0123")
        item, spec = self._ready_cluster(name)
        master = item.get("master")
        fleet = Fleet(self.aws, name)
        live = fleet.instances()
        registered = {n.instance_id for n in self.registry.nodes(name)}
        members = [i.instance_id for i in live] + sorted(registered - {i.instance_id for i in live})
        if instance_ids:
            chosen = list(dict.fromkeys(instance_ids))
            unknown = [i for i in chosen if i not in members]
            if unknown:
                raise UserError(f"{', '.join(unknown)} not in cluster {name!r}", "see 'ec2mpi status' for its nodes")
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
                self.registry.set_node_state(name, iid, "draining")
        if any(i in registered for i in chosen):
            self._say(0, len(chosen), "draining: waiting for the master's hostfile to drop them")
            self._let_master_drop(name, DRAIN_WAIT)
        fleet.terminate([i for i in chosen if i in {x.instance_id for x in live}])
        for iid in chosen:
            if iid in registered:
                self.registry.delete_node(name, iid)
        self._say(len(chosen), len(chosen), f"removed {len(chosen)} node(s)")
        return chosen

    # -- looking ------------------------------------------------------------------
    def status(self, name: str, with_cost: bool = True) -> ClusterStatus:
        validate_name(name)
        self._preflight()
        item = self._require(name)
        spec = ClusterSpec.from_json(item["spec"])
        master = item.get("master")
        fleet = Fleet(self.aws, name)
        instances = {i.instance_id: i for i in fleet.instances(states=LIVE_STATES + ("terminated",))}
        order = {iid: k for k, iid in enumerate(instances)}   # launch order (oldest first)
        now = time.time()
        nodes = []
        for n in self.registry.nodes(name):
            inst = instances.pop(n.instance_id, None)
            state = n.state
            if inst is None or inst.state in ("shutting-down", "terminated"):
                state = "lost"   # still a member in the registry, but its instance is gone
            elif n.heartbeat and now - n.heartbeat > HEARTBEAT_LOST_AFTER:
                state = "lost"   # running, but its agent stopped answering
            nodes.append(NodeStatus(
                n.instance_id, "master" if n.instance_id == master else n.role,
                n.instance_type or (inst.instance_type if inst else ""),
                inst.lifecycle if inst else n.lifecycle, n.private_ip or (inst.private_ip if inst else ""),
                inst.public_ip if inst else "", state, n.slots, n.hostname,
                now - n.heartbeat if n.heartbeat else None))
        for inst in instances.values():
            if inst.state in ("shutting-down", "terminated"):
                continue   # gone before it ever registered
            nodes.append(NodeStatus(inst.instance_id, "master" if inst.instance_id == master else "worker",
                                    inst.instance_type, inst.lifecycle, inst.private_ip, inst.public_ip,
                                    "pending", 0))
        nodes.sort(key=lambda n: (n.role != "master", order.get(n.instance_id, 1 << 30), n.instance_id))
        st = ClusterStatus(name, item.get("status", "?"), spec, int(item.get("epoch", 0)), nodes)
        if with_cost:
            st.cost = self._cost_of(nodes)
        return st

    def list_clusters(self) -> list:
        self._preflight()
        out = []
        for item in self.registry.list_clusters():
            nodes = self.registry.nodes(item["cluster"])
            out.append(ClusterSummary(item["cluster"], item.get("status", "?"), len(nodes),
                                      sum(1 for n in nodes if n.state == "ready"), int(item.get("created", 0))))
        return out

    def cost(self, name: str) -> CostEstimate:
        validate_name(name)
        self._preflight()
        self._require(name)
        fleet = Fleet(self.aws, name)
        live = [i for i in fleet.instances(states=("pending", "running"))]
        return self._price([(i.instance_type, i.lifecycle) for i in live])

    def _cost_of(self, nodes: list) -> CostEstimate:
        return self._price([(n.instance_type, n.lifecycle) for n in nodes
                            if n.state not in ("lost", "terminated") and n.instance_type])

    def _price(self, members: list) -> CostEstimate:
        counts: dict = {}
        for itype, lifecycle in members:
            counts[(itype, lifecycle)] = counts.get((itype, lifecycle), 0) + 1
        spot_types = sorted({t for t, lc in counts if lc == "spot"})
        od_types = sorted({t for t, lc in counts if lc != "spot"})
        sources = []
        spot = spot_prices(self.aws, spot_types) if spot_types else {}
        if spot_types:
            sources.append("spot: EC2 spot price history")
        od, od_source = on_demand_prices(self.aws, self._preflight(), od_types) if od_types else ({}, "")
        if od_types:
            sources.append(f"on-demand: {od_source}")
        est = CostEstimate(0.0, source="; ".join(sources) or "no running nodes")
        for (itype, lifecycle), n in sorted(counts.items()):
            unit = (spot if lifecycle == "spot" else od).get(itype)
            est.by_type[itype] = (n, unit, lifecycle)
            est.per_hour += n * (unit or 0.0)
        missing = sorted(t for t, (_, unit, _) in est.by_type.items() if unit is None)
        if missing:
            est.source += f"; no price known for {', '.join(missing)}"
        return est

    def hostfile(self, name: str) -> str:
        """Open MPI hostfile of the ready nodes, master first: exactly what the master writes."""
        from .agent.hostfile import render_openmpi
        validate_name(name)
        self._preflight()
        self._require(name)
        return render_openmpi(self.registry.nodes(name))

    def keys(self, name: str):
        """The cluster's ClusterKeys (identity + host key) from the key store, for client SSH."""
        validate_name(name)
        self._preflight()
        self._require(name)
        return self.keystore.get_keys(name)

    def console_output(self, name: str, instance_id: str) -> str:
        validate_name(name)
        self._preflight()
        fleet = Fleet(self.aws, name)
        if not fleet.instances(states=None, ids=[instance_id]):
            raise UserError(f"{instance_id} is not a node of cluster {name!r}", "see 'ec2mpi status' for its nodes")
        return fleet.console_output(instance_id)

    # -- destroy ------------------------------------------------------------------
    def destroy(self, name: str) -> DestroyReport:
        """Remove everything of the cluster, registry item or not; then prove nothing is left."""
        validate_name(name)
        self._preflight()
        fleet = Fleet(self.aws, name)
        item = self.registry.get_cluster(name) if self._table_exists() else None
        instances = fleet.instances()
        if item is None and not instances and not self._anything_left(name, fleet):
            raise UserError(f"no cluster named {name!r}", "see 'ec2mpi list' for the clusters that exist")
        report = DestroyReport()
        total = 8

        def done(k, kind, removed):
            if removed:
                report.removed.setdefault(kind, []).extend(removed)
            self._say(k, total, f"{kind}: {len(removed)} removed")

        if item is not None:
            self.registry.update_cluster(name, status="destroying")
        ids = [i.instance_id for i in instances]
        done(1, "fleets", fleet.delete_fleets_and_spot_requests(ids))
        done(2, "instances", fleet.terminate(ids))
        fleet.wait_terminated(ids)
        done(3, "launch template", fleet.delete_launch_template() + fleet.delete_placement_group()
             + fleet.delete_volumes())
        done(4, "efs", Efs(self.aws, name).delete())
        done(5, "security group", fleet.delete_security_group())
        done(6, "iam", NodeRole(self.aws, name).delete())
        done(7, "s3 objects", self.keystore.delete_prefix(name))
        if self._table_exists() and self.registry.get_cluster(name) is not None:
            n = self.registry.delete_cluster(name)
            done(8, "registry items", [f"{n} item(s)"])
        report.leftovers = self.leftovers(name)
        return report

    def _anything_left(self, name: str, fleet: Fleet) -> bool:
        return bool(self.leftovers(name, fleet))

    def leftovers(self, name: str, fleet: Optional[Fleet] = None) -> list:
        """Everything of the cluster that still exists (tagging API + direct describes)."""
        fleet = fleet or Fleet(self.aws, name)
        live = {i.instance_id for i in fleet.instances()}
        gone = {i.instance_id for i in fleet.instances(states=("terminated",))}
        left = []
        for arn in tagged_resources(self.aws, name):
            kind, _, rid = arn.split(":")[-1].partition("/")
            if kind == "instance" and rid in gone:
                continue            # terminated instances stay visible for a while; they bill nothing
            if kind == "volume" and not fleet.volume_exists(rid):
                continue
            left.append(arn)
        left += [f"instance/{i}" for i in sorted(live) if not any(i in a for a in left)]
        if fleet.find_security_group() and not any("security-group/" in a for a in left):
            left.append(f"security-group/{fleet.find_security_group()}")
        if fleet.find_launch_template():
            left.append(f"launch-template/{fleet.names.launch_template}")
        role = NodeRole(self.aws, name).exists()
        left += [f"iam {kind}/{fleet.names.role}" for kind, there in role.items() if there]
        fs = Efs(self.aws, name).find()
        if fs:
            left.append(f"efs/{fs['FileSystemId']}")
        if self.keystore.exists():
            left += [f"s3://{self.keystore.bucket}/{k}" for k in self.keystore.list(name)]
        if self._table_exists() and self.registry.get_cluster(name) is not None:
            left.append(f"registry/{name}")
        return left
