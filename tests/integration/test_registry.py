"""Spec validation, key material and the registry over moto's server."""


import threading

import pytest

from ec2mpi.aws.registry import ClusterExists, Node, NoSuchCluster, Registry
from ec2mpi.config import ClusterSpec


def test_registry_epoch_counts_every_membership_change(aws, cluster_name):
    reg = Registry(aws)
    reg.ensure_table()
    reg.create_cluster(cluster_name, ClusterSpec(cluster_name).to_json())
    with pytest.raises(ClusterExists):
        reg.create_cluster(cluster_name, "{}")
    assert reg.epoch(cluster_name) == 0
    reg.put_node(cluster_name, Node("i-1", "master", "172.31.0.4", "ip-172-31-0-4", 2))
    reg.set_node_state(cluster_name, "i-1", "ready")
    reg.heartbeat(cluster_name, "i-1")          # not a membership change
    assert reg.epoch(cluster_name) == 2
    assert [n.state for n in reg.nodes(cluster_name)] == ["ready"]
    assert reg.delete_node(cluster_name, "i-1") is True
    assert reg.delete_node(cluster_name, "i-1") is False
    assert reg.epoch(cluster_name) == 3
    assert (
        reg.set_master(cluster_name, "i-9") == "i-9"
        and reg.set_master(cluster_name, "i-8") == "i-9"
    )
    reg.delete_cluster(cluster_name)
    assert reg.get_cluster(cluster_name) is None
    with pytest.raises(NoSuchCluster):
        reg.put_node(cluster_name, Node("i-2", "worker", "172.31.0.5", "h", 2))


def test_fifty_concurrent_registrations_give_fifty_items_and_epoch_fifty(aws, cluster_name):
    reg = Registry(aws)
    reg.ensure_table()
    reg.create_cluster(cluster_name, "{}")
    errors = []

    def register(i):
        try:
            Registry(aws).put_node(
                cluster_name, Node(f"i-{i:04d}", "worker", f"172.31.1.{i}", f"h{i}", 2)
            )
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(50)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert len({n.instance_id for n in reg.nodes(cluster_name)}) == 50
    assert reg.epoch(cluster_name) == 50
