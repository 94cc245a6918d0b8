"""Capacity failover (cluster/capacity.py) against moto's server with capacity pools.

Pools are set through the control plane's own endpoint (`/_ec2mpi/capacity`, see
localcloud/fidelity_capacity.py), so EC2 answers CreateFleet as it does when capacity runs
short: what the pools allow, and an `Errors` entry per exhausted (type, AZ, lifecycle).
create, add-nodes and resize then launch the rest without those pools, on-demand with
--spot-fallback, and undo a launch below --min-nodes. Healing reads the pools to avoid.
"""
import json
import ssl
import time
import urllib.request

import boto3
import pytest

from ec2mpi import output
from ec2mpi.agent.heal import ClusterSource, Healer
from ec2mpi.aws.instances import Instances
from ec2mpi.aws.network import Network
from ec2mpi.aws.registry import Registry, avoided
from ec2mpi.aws.templates import Templates
from ec2mpi.cluster import ClusterManager
from ec2mpi.cluster.capacity import CapacityShortfall
from ec2mpi.config import DEFAULT_IMAGE_PARAMETERS, ClusterSpec
from ec2mpi.errors import UserError

CIDR = "203.0.113.7/32"
TYPES = ("c6i.large", "c6a.large", "c5.large")   # the default instance types


@pytest.fixture(scope="module")
def aws(controlplane):
    from ec2mpi.aws.session import AwsSession
    return AwsSession(region="us-east-1", endpoint_url=controlplane.endpoint,
                      ca_bundle=controlplane.ca_path)


class Capacity:
    def __init__(self, cp):
        self.url = cp.endpoint + "/_ec2mpi/capacity"
        self.ctx = ssl.create_default_context(cafile=cp.ca_path)

    def call(self, method, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            return json.load(r)["pools"]

    def set(self, itype, count, az=None, lifecycle="spot"):
        return self.call("POST", {"type": itype, "az": az, "lifecycle": lifecycle,
                                  "count": count})

    def no_spot(self, *types):
        for itype in types:
            self.set(itype, 0)


@pytest.fixture
def capacity(controlplane):
    cap = Capacity(controlplane)
    cap.call("DELETE")
    yield cap
    cap.call("DELETE")     # every other test of the session sees unlimited capacity again


def manager(aws):
    mgr = ClusterManager(aws)
    mgr.ops.poll_interval = 0.1
    mgr.ops.drain_wait = 1.0
    return mgr


def live(aws, name):
    return Instances(aws, name).instances()


def pools_of(instances):
    return sorted((i.instance_type, i.zone, i.lifecycle) for i in instances)


def test_spot_runs_out_create_fails_over_and_falls_back_to_on_demand(aws, cluster_name,
                                                                     capacity):
    capacity.set("c6i.large", 1)          # one spot c6i.large in the whole region, no other spot
    capacity.no_spot("c6a.large", "c5.large")
    mgr = manager(aws)
    st = mgr.create(ClusterSpec(cluster_name, nodes=4, ssh_cidr=CIDR, storage="none",
                                spot_fallback="on-demand"), wait=False)
    try:
        assert len(st.nodes) == 4 and st.status == "ready"
        workers = [i for i in live(aws, cluster_name) if i.tags["ec2mpi:role"] == "worker"]
        assert sorted(i.lifecycle for i in workers) == ["on-demand", "on-demand", "spot"]
        assert output.lifecycle_mix(st.nodes) == "1 spot, 3 on-demand"
        rep = st.launch
        assert rep.launched == 4 and rep.on_demand == 2 and rep.missing == 0
        assert ["c6i.large", "us-east-1a", "spot", "InsufficientInstanceCapacity"] in rep.failed
        assert {tuple(f[:3]) for f in rep.failed} >= {(t, "us-east-1b", "spot") for t in TYPES}
        assert rep.per_hour == st.cost.per_hour and rep.per_hour > 0
        text = output.format_launch(rep)
        assert "2 node(s) launched on-demand instead of spot" in text
        assert "c6i.large, c6a.large, c5.large in us-east-1a" in text
        assert f"now costs {output.money(st.cost.per_hour)}" in text
        # the pools that refused are avoided for 10 minutes, where healing reads them too
        avoid = avoided(Registry(aws).master_state(cluster_name))
        assert ("c5.large", "us-east-1c", "spot") in avoid
        assert all(550 < until - time.time() <= 600 for until in avoid.values())
        assert "capacity: avoiding" in output.format_status(mgr.status(cluster_name))
    finally:
        mgr.destroy(cluster_name)


def test_below_min_nodes_the_launch_is_undone_and_a_rerun_starts_cleanly(aws, cluster_name,
                                                                          capacity):
    capacity.set("c6i.large", 1)
    capacity.no_spot("c6a.large", "c5.large")
    mgr = manager(aws)
    spec = ClusterSpec(cluster_name, nodes=4, ssh_cidr=CIDR, storage="none")
    with pytest.raises(CapacityShortfall) as err:
        mgr.create(spec, wait=False)               # master + 1 spot worker: 2 of 4
    message = str(err.value)
    assert err.value.exit_status == 1
    assert "only 2 of 4 node(s) launched, at least 4 needed" in message
    assert "InsufficientInstanceCapacity" in message
    assert "c6i.large, c6a.large, c5.large in us-east-1a, us-east-1b" in message
    assert "the 2 launched were terminated" in message
    assert "--spot-fallback on-demand" in err.value.hint and "later" in err.value.hint
    assert live(aws, cluster_name) == []           # every instance of that launch is gone
    item = Registry(aws).get_cluster(cluster_name)
    assert item["status"] == "creating" and not item["launch_token"] and not item["master"]
    assert {"type": "c6i.large", "az": None, "lifecycle": "spot", "count": 1} in \
        capacity.call("GET")                       # its spot unit came back

    # the suggested re-run: same cluster, --spot-fallback on-demand; nothing of the undone
    # launch is counted (new token), the spot pools that failed are still tried (all failed)
    try:
        st = mgr.create(spec.replace(spot_fallback="on-demand"), wait=False)
        assert st.status == "ready" and len(live(aws, cluster_name)) == 4
        assert sorted(n.lifecycle for n in st.nodes) == ["on-demand"] * 3 + ["spot"]
        assert ClusterSpec.from_json(Registry(aws).get_cluster(cluster_name)["spec"]) \
            .spot_fallback == "on-demand"
    finally:
        mgr.destroy(cluster_name)


def test_min_nodes_met_says_what_is_missing_and_healing_records_the_pools_that_refuse(
        aws, cluster_name, capacity):
    capacity.set("c6i.large", 1)
    capacity.no_spot("c6a.large", "c5.large")
    mgr = manager(aws)
    st = mgr.create(ClusterSpec(cluster_name, nodes=4, ssh_cidr=CIDR, storage="none"),
                    wait=False, min_nodes=2)
    try:
        rep = st.launch
        assert len(live(aws, cluster_name)) == 2 and rep.launched == 2 and rep.missing == 2
        assert rep.keeps_trying      # a spot cluster keeps its size by default
        assert "launched 2 of 4 node(s), 2 missing: the master keeps trying" in \
            output.format_launch(rep)
        state = Registry(aws).master_state(cluster_name)
        assert state["target"] == 4 and state["keep_size"]
        assert "2 of 4 node(s) up; the master keeps launching the rest" in \
            output.format_status(mgr.status(cluster_name))

        # capacity is back, except in the pools that failed: the master's healing, run here
        # with the master's code, reads the pools to avoid from the master state
        capacity.call("DELETE")
        capacity.set("c5.large", 5, "us-east-1f")   # as much as healing needs, one pool
        for itype in TYPES:                          # spot everywhere else: still none
            for zone in "abcde":
                capacity.set(itype, 0, f"us-east-1{zone}")
        capacity.set("c6i.large", 0, "us-east-1f")
        capacity.set("c6a.large", 0, "us-east-1f")
        Registry(aws).update_master(cluster_name, avoid={})   # forget: healing must find out
        healer = _healer(aws, cluster_name)
        now_live = {i.instance_id: i for i in live(aws, cluster_name)}
        new = healer.heal([], now_live, Registry(aws).master_state(cluster_name))
        assert pools_of(Instances(aws, cluster_name).instances(ids=new)) == [
            ("c5.large", "us-east-1f", "spot")] * 2
        # what refused healing is recorded for the client's next launch too
        avoid = avoided(Registry(aws).master_state(cluster_name))
        assert ("c6i.large", "us-east-1a", "spot") in avoid
        assert ("c5.large", "us-east-1f", "spot") not in avoid
    finally:
        mgr.destroy(cluster_name)


def _healer(aws, name):
    source = ClusterSource(Registry(aws), Templates(aws, name), Network(aws, name), name)
    return Healer(source, Instances(aws, name))


def test_a_failed_pool_is_avoided_by_add_nodes_and_healing_for_a_while(aws, cluster_name,
                                                                       capacity):
    mgr = manager(aws)
    mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none"), wait=False)
    try:
        capacity.set("c6i.large", 0, "us-east-1a")       # the first override's spot pool
        added = mgr.add_nodes(cluster_name, 1, wait=False)
        assert pools_of(Instances(aws, cluster_name).instances(ids=added)) == [
            ("c6i.large", "us-east-1b", "spot")]
        assert added.launch.failed == [
            ["c6i.large", "us-east-1a", "spot", "InsufficientInstanceCapacity"]]
        assert added.launch.missing == 0 and added.launch.on_demand == 0
        avoid = avoided(Registry(aws).master_state(cluster_name))
        assert list(avoid) == [("c6i.large", "us-east-1a", "spot")]

        capacity.call("DELETE")       # capacity is back, but the pool is avoided for a while
        more = mgr.add_nodes(cluster_name, 2, wait=False)
        assert more.launch is None    # nothing refused: nothing to report
        assert pools_of(Instances(aws, cluster_name).instances(ids=more)) == [
            ("c6i.large", "us-east-1b", "spot")] * 2

        state = Registry(aws).master_state(cluster_name)
        healer = _healer(aws, cluster_name)
        Registry(aws).update_master(cluster_name, target=len(live(aws, cluster_name)) + 1)
        state = Registry(aws).master_state(cluster_name)
        new = healer.heal([], {i.instance_id: i for i in live(aws, cluster_name)}, state)
        assert pools_of(Instances(aws, cluster_name).instances(ids=new)) == [
            ("c6i.large", "us-east-1b", "spot")]

        # once the 10 minutes are over, the pool is used again
        Registry(aws).update_master(cluster_name, avoid={
            "c6i.large@us-east-1a@spot": 1})
        again = mgr.add_nodes(cluster_name, 1, wait=False)
        assert pools_of(Instances(aws, cluster_name).instances(ids=again)) == [
            ("c6i.large", "us-east-1a", "spot")]
    finally:
        mgr.destroy(cluster_name)


def test_add_nodes_and_resize_min_nodes_and_spot_fallback(aws, cluster_name, capacity):
    mgr = manager(aws)
    mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none"), wait=False)
    try:
        first = {i.instance_id for i in live(aws, cluster_name)}
        capacity.no_spot(*TYPES)
        capacity.set("c5.large", 1, "us-east-1c")        # one spot instance left in the region

        # add-nodes 3 --min-nodes 1: one launched, two missing, the target stays 5
        added = mgr.add_nodes(cluster_name, 3, wait=False, min_nodes=1)
        assert len(added) == 1 and added.launch.missing == 2
        assert pools_of(Instances(aws, cluster_name).instances(ids=added)) == [
            ("c5.large", "us-east-1c", "spot")]
        assert Registry(aws).master_state(cluster_name)["target"] == 5

        # resize 6 (all needed): nothing left, so the launch is undone and the target restored
        with pytest.raises(CapacityShortfall) as err:
            mgr.resize(cluster_name, 6, wait=False)
        assert "resize" in str(err.value) and "only 0 of 3 node(s)" in str(err.value)
        assert {i.instance_id for i in live(aws, cluster_name)} == first | set(added)
        assert Registry(aws).get_cluster(cluster_name)["resize"] == {}
        assert Registry(aws).master_state(cluster_name)["target"] == 5

        # add-nodes below --min-nodes: undone too
        with pytest.raises(CapacityShortfall):
            mgr.add_nodes(cluster_name, 2, wait=False, min_nodes=1)
        assert len(live(aws, cluster_name)) == 3
        assert Registry(aws).master_state(cluster_name)["target"] == 5

        # resize 6 --spot-fallback on-demand: the rest on-demand, the new cost said
        done = mgr.resize(cluster_name, 6, wait=False, spot_fallback="on-demand")
        assert len(done.added) == 3 and done.launch.on_demand == 3
        assert {i.lifecycle for i in Instances(aws, cluster_name).instances(ids=done.added)} \
            == {"on-demand"}
        assert done.launch.per_hour == pytest.approx(mgr.cost(cluster_name).per_hour)
        assert "3 node(s) launched on-demand" in output.format_launch(done.launch)
    finally:
        mgr.destroy(cluster_name)


def test_bad_min_nodes_is_bad_input(aws, cluster_name):
    with pytest.raises(UserError, match="min-nodes 5"):
        manager(aws).create(ClusterSpec(cluster_name, nodes=4, ssh_cidr=CIDR), min_nodes=5)
    with pytest.raises(UserError, match="spot fallback"):
        ClusterSpec(cluster_name, spot_fallback="maybe")


def test_graviton_types_get_the_arm64_image_and_mixed_architectures_are_refused(
        aws, cluster_name, controlplane):
    mgr = manager(aws)
    with pytest.raises(UserError) as err:
        mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none",
                               instance_types=("c7g.large", "c6i.large")), wait=False)
    assert "mix CPU architectures: c7g.large (arm64), c6i.large (x86_64)" in str(err.value)
    assert err.value.exit_status == 2
    assert not Registry(aws).table_exists() or Registry(aws).get_cluster(cluster_name) is None

    try:
        mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none",
                               instance_types=("c7g.large", "c6g.large")), wait=False)
        ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=controlplane.endpoint,
                           verify=controlplane.ca_path)
        arm = ssm.get_parameter(Name=DEFAULT_IMAGE_PARAMETERS["arm64"])["Parameter"]["Value"]
        for kind in ("master", "worker"):
            assert Templates(aws, cluster_name).launch_template_data(kind)["ImageId"] == arm
        assert {i.instance_type for i in live(aws, cluster_name)} <= {"c7g.large", "c6g.large"}
    finally:
        mgr.destroy(cluster_name)
