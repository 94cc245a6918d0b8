"""Client cost is O(1) in the node count: create makes the same mutating calls for 4 and 64
nodes."""

import json
import ssl
import urllib.request

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


def counted_create(aws, name, nodes, **settings):
    counter = CallCounter(aws)
    try:
        ClusterManager(aws).create(
            ClusterSpec(name, nodes=nodes, ssh_cidr="203.0.113.7/32", storage="efs", **settings),
            wait=False
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


def _pools(cp, method, body=None):
    """The control plane's capacity pools (localcloud/fidelity_capacity.py)."""
    req = urllib.request.Request(cp.endpoint + "/_ec2mpi/capacity", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=cp.ca_path)):
        pass


def test_a_failover_launch_costs_the_same_for_4_and_64_nodes(aws, cluster_name, controlplane):
    """No spot capacity anywhere, --spot-fallback on-demand: every worker pool refuses in one
    call, the rest goes on-demand in one more; still O(1) in the node count."""
    _pools(controlplane, "DELETE")
    for itype in ClusterSpec("x").instance_types:
        _pools(controlplane, "POST", {"type": itype, "lifecycle": "spot", "count": 0})
    try:
        small = counted_create(aws, cluster_name + "a", 4, spot_fallback="on-demand")
        large = counted_create(aws, cluster_name + "b", 64, spot_fallback="on-demand")
        assert small.mutating == large.mutating, (small.calls, large.calls)
        assert small.calls.get("ec2:CreateFleet") == large.calls.get("ec2:CreateFleet") == 3
        assert small.total == large.total
    finally:
        _pools(controlplane, "DELETE")
        for suffix in "ab":
            assert ClusterManager(aws).destroy(cluster_name + suffix).leftovers == []

