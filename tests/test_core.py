"""Spec validation, key material and the registry over moto's server."""
import threading

import pytest

from ec2mpi.aws.registry import ClusterExists, NoSuchCluster, Node, Registry
from ec2mpi.config import ClusterSpec
from ec2mpi.errors import UserError
from ec2mpi.keys import ClusterKeys, known_hosts_line


@pytest.mark.parametrize("name", ["", "Demo", "a" * 33, "a/b", "../x", "demo-", "-demo", "de mo", "dé"])
def test_bad_cluster_names_are_user_errors(name):
    with pytest.raises(UserError) as err:
        ClusterSpec(name)
    assert err.value.exit_status == 2
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("nodes", [0, -1, "x", "1.5", None, 10**6])
def test_bad_node_counts(nodes):
    with pytest.raises(UserError):
        ClusterSpec("demo", nodes=nodes)


def test_spec_round_trips_through_json():
    spec = ClusterSpec("demo", nodes="4", instance_types="c6i.large, c5.large", storage="s3fs",
                       ssh_cidr="203.0.113.7")
    back = ClusterSpec.from_json(spec.to_json())
    assert back == spec and back.nodes == 4 and back.instance_types == ("c6i.large", "c5.large")
    assert back.ssh_cidr == "203.0.113.7/32"
    with pytest.raises(UserError, match="unknown cluster setting"):
        ClusterSpec.from_mapping({"name": "demo", "colour": "blue"})


def test_keys_are_openssh_ed25519():
    keys = ClusterKeys.generate("demo")
    assert keys.identity.private_openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert keys.identity.public_openssh.startswith(b"ssh-ed25519 ")
    assert keys.identity.public_openssh != keys.host.public_openssh
    line = known_hosts_line(keys.host.public_openssh)
    assert line.startswith("* ssh-ed25519 ") and line.split()[2] == keys.host.public_openssh.split()[1].decode()
    assert ClusterKeys.from_objects(keys.objects()) == keys


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
    assert reg.set_master(cluster_name, "i-9") == "i-9" and reg.set_master(cluster_name, "i-8") == "i-9"
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
            Registry(aws).put_node(cluster_name, Node(f"i-{i:04d}", "worker", f"172.31.1.{i}", f"h{i}", 2))
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(50)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert len({n.instance_id for n in reg.nodes(cluster_name)}) == 50
    assert reg.epoch(cluster_name) == 50
