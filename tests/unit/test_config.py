"""Spec validation, key material and the registry over moto's server."""




import pytest

from ec2mpi.config import ClusterSpec
from ec2mpi.errors import UserError
from ec2mpi.keys import ClusterKeys, known_hosts_line


@pytest.mark.parametrize(
    "name", ["", "Demo", "a" * 33, "a/b", "../x", "demo-", "-demo", "de mo", "dé"]
)
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
    assert (
        line.startswith("* ssh-ed25519 ")
        and line.split()[2] == keys.host.public_openssh.split()[1].decode()
    )
    assert ClusterKeys.from_objects(keys.objects()) == keys
