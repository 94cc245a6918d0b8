"""Client cost is O(1) in the node count: create makes the same mutating calls for 4 and 64
nodes."""

import pytest

from ec2mpi.aws.keystore import KeyStore
from ec2mpi.aws.registry import Registry
from ec2mpi.aws.session import AwsSession, CallCounter
from ec2mpi.cluster import ClusterManager
from ec2mpi.config import ClusterSpec


@pytest.fixture(scope="module")
def aws(controlplane):
    s = AwsSession(
        region="us-east-1", endpoint_url=controlplane.endpoint, ca_bundle=controlplane.ca_path
    )
    KeyStore(s).ensure_bucket()          # account-wide, made once: not part of a cluster's cost
    Registry(s).ensure_table()
    return s


def counted_create(aws, name, nodes):
    counter = CallCounter(aws)
    try:
        ClusterManager(aws).create(
            ClusterSpec(name, nodes=nodes, ssh_cidr="203.0.113.7/32", storage="efs"), wait=False
        )
    finally:
        counter.close()
    return counter


def test_mutating_calls_do_not_grow_with_nodes(aws, cluster_name):
    small = counted_create(aws, cluster_name + "a", 4)
    large = counted_create(aws, cluster_name + "b", 64)
    try:
        mutating = {
            k: v
            for k, v in small.calls.items()
            if k.split(":")[1].startswith(("Create", "Put", "Run"))
        }
        assert small.mutating == large.mutating, (small.calls, large.calls)
        assert small.calls.get("ec2:CreateFleet") == large.calls.get("ec2:CreateFleet") == 2
        assert small.total == large.total
        assert mutating
    finally:
        for suffix in "ab":
            assert ClusterManager(aws).destroy(cluster_name + suffix).leftovers == []
