"""The registry over moto's server: membership, the epoch, node-item validation, concurrency."""
import threading

import pytest

from ec2mpi.agent.hostfile import render_openmpi
from ec2mpi.aws.registry import ClusterExists, Node, NoSuchCluster, Registry, node_pk
from ec2mpi.config import ClusterSpec

ROLES = {"master": "AROAMASTER0000000001", "worker": "AROAWORKER0000000001"}


def cluster(aws, name):
    reg = Registry(aws)
    reg.ensure_table()
    reg.create_cluster(name, ClusterSpec(name).to_json())
    reg.update_cluster(name, roles=ROLES)
    return reg


def node(name, iid, ip, role="worker", **kw):
    n = Node(iid, role, ip, "ip-" + ip.replace(".", "-"), 2, **kw)
    n.key = node_pk(name, ROLES[role], iid)
    return n


def test_registry_epoch_counts_every_membership_change(aws, cluster_name):
    reg = cluster(aws, cluster_name)
    with pytest.raises(ClusterExists):
        reg.create_cluster(cluster_name, "{}")
    assert reg.epoch(cluster_name) == 0
    master = node(cluster_name, "i-0000000000000001", "172.31.0.4", "master")
    reg.put_node(cluster_name, master)
    reg.set_node_state(cluster_name, master, "ready")
    assert reg.heartbeat(cluster_name, master, sessions=1)      # not a membership change
    assert reg.epoch(cluster_name) == 2
    got = reg.nodes(cluster_name)
    assert [(n.state, n.sessions, n.problem) for n in got] == [("ready", 1, "")]
    assert reg.delete_node(cluster_name, master) is True
    assert reg.delete_node(cluster_name, master) is False
    assert reg.epoch(cluster_name) == 3
    reg.update_master(cluster_name, bump=True, target=4)          # a new size is membership too
    assert reg.epoch(cluster_name) == 4 and reg.master_state(cluster_name)["target"] == 4
    assert reg.delete_cluster(cluster_name) == 3
    assert reg.get_cluster(cluster_name) is None
    with pytest.raises(NoSuchCluster):
        reg.put_node(cluster_name, node(cluster_name, "i-0000000000000002", "172.31.0.5"))


def test_a_lost_node_that_comes_back_registers_again(aws, cluster_name):
    reg = cluster(aws, cluster_name)
    worker = node(cluster_name, "i-0000000000000003", "172.31.0.6", state="ready")
    reg.put_node(cluster_name, worker)
    seen = reg.nodes(cluster_name)[0]
    reg.set_node_state(cluster_name, seen, "lost", "no heartbeat for 61 s")   # the master says
    assert reg.nodes(cluster_name)[0].reason == "no heartbeat for 61 s"
    assert reg.heartbeat(cluster_name, worker) is False         # the node learns it is lost
    worker.state = "ready"
    reg.put_node(cluster_name, worker)                          # and registers again
    assert [n.state for n in reg.nodes(cluster_name)] == ["ready"]
    assert reg.heartbeat(cluster_name, worker) is True
    reg.delete_cluster(cluster_name)


def test_node_items_that_cannot_be_trusted_are_flagged_and_never_reach_a_hostfile(
        aws, cluster_name):
    """Nodes write their own items: whatever a (compromised) node wrote is checked."""
    reg = cluster(aws, cluster_name)
    good = node(cluster_name, "i-0000000000000004", "172.31.0.7", "master", state="ready")
    reg.put_node(cluster_name, good)
    bad = {
        "ip": node(cluster_name, "i-0000000000000005", "172.31.0.8\n  LocalCommand id"),
        "slots": node(cluster_name, "i-0000000000000006", "172.31.0.9"),
        "claims master": node(cluster_name, "i-0000000000000007", "172.31.0.10"),
        "other instance": node(cluster_name, "i-0000000000000008", "172.31.0.11"),
        "hostname": node(cluster_name, "i-0000000000000009", "172.31.0.12"),
    }
    bad["slots"].slots = "2; touch /tmp/pwned"
    bad["claims master"].role = "master"              # its key is a worker's
    bad["other instance"].key = node_pk(cluster_name, ROLES["worker"], "i-0000000000000004")
    bad["hostname"].hostname = "ip-1 ProxyCommand id"
    for n in bad.values():
        n.state = "ready"
        reg.put_node(cluster_name, n)
    nodes = {n.instance_id: n for n in reg.nodes(cluster_name)}
    assert nodes["i-0000000000000004"].problem == ""
    problems = {k: nodes[n.instance_id].problem if n.instance_id in nodes else "absent"
                for k, n in bad.items()}
    assert all(problems.values()), problems
    assert "IPv4" in problems["ip"] and "slots" in problems["slots"]
    assert "master role" in problems["claims master"] and "DNS" in problems["hostname"]
    assert render_openmpi(reg.nodes(cluster_name)) == "172.31.0.7 slots=2\n"
    reg.delete_cluster(cluster_name)


def test_fifty_concurrent_registrations_are_all_kept(aws, cluster_name):
    """No transaction on a shared item: concurrent boots never cancel each other."""
    reg = cluster(aws, cluster_name)
    errors = []

    def register(i):
        try:
            Registry(aws).put_node(cluster_name, node(cluster_name, f"i-{i:017x}",
                                                      f"172.31.1.{i}"))
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(50)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors[:3]
    assert len({n.instance_id for n in reg.nodes(cluster_name)}) == 50
    assert reg.epoch(cluster_name) >= 50        # a retried ADD may count twice; never less
    reg.delete_cluster(cluster_name)


def test_node_lists_read_the_role_ids_once_until_they_change(aws, cluster_name):
    """Every node-list read validates item keys against the cluster's role ids; a watcher
    paid one cluster-item read per node list for ids that do not change. They are kept, and
    read again when an item's key names other ids (the roles were made again)."""
    from ec2mpi.aws.session import CallCounter
    cluster(aws, cluster_name)
    writer = Registry(aws)
    writer.put_node(cluster_name, node(cluster_name, "i-00000000000000001", "10.0.0.1"))
    reader = Registry(aws)
    counter = CallCounter(aws)
    for _ in range(3):
        assert [n.problem for n in reader.nodes(cluster_name)] == [""]
    assert counter.calls == {"dynamodb:Query": 3, "dynamodb:GetItem": 1}
    new = {"master": "AROAMASTER0000000002", "worker": "AROAWORKER0000000002"}
    writer.update_cluster(cluster_name, roles=new)
    late = Node("i-00000000000000002", "worker", "10.0.0.2", "ip-10-0-0-2", 2)
    late.key = node_pk(cluster_name, new["worker"], late.instance_id)
    writer.put_node(cluster_name, late)
    problems = {n.instance_id: n.problem for n in reader.nodes(cluster_name)}
    assert problems["i-00000000000000002"] == ""        # read the new ids, not refused
    assert problems["i-00000000000000001"].startswith("its key does not name")
    counter.close()
