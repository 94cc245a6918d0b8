"""Print the AWS API calls that create (and destroy) make for N = 4, 16, 64 nodes.

Runs against a fresh local control plane (moto's server, started here) with dummy
credentials; nothing leaves this machine. A figure, not an assertion: the test suite
asserts that create's mutating calls do not depend on N. The rows marked `create*` are a
create when no spot capacity is left in any pool (the control plane's capacity pools) with
--spot-fallback on-demand: one more CreateFleet, whatever N.

    python bench/api_calls.py
"""
import os
import sys
import tempfile

os.environ.update(
    AWS_EC2_METADATA_DISABLED="true",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    AWS_CONFIG_FILE=os.devnull,
    AWS_SHARED_CREDENTIALS_FILE=os.devnull,
)
for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
    os.environ.pop(var, None)

from ec2mpi.aws.keystore import KeyStore
from ec2mpi.aws.registry import Registry
from ec2mpi.aws.session import AwsSession, CallCounter, is_mutating
from ec2mpi.cluster import ClusterManager
from ec2mpi.config import ClusterSpec
from ec2mpi.localcloud.controlplane import start


def measure(aws, what, call):
    counter = CallCounter(aws)
    try:
        call()
    finally:
        counter.close()
    muts = {k: v for k, v in sorted(counter.calls.items()) if is_mutating(k.split(":", 1)[1])}
    return counter.total, counter.mutating, muts


def pools(cp, method, body=None) -> None:
    """Set or reset the control plane's capacity pools (localcloud/fidelity_capacity.py)."""
    import json
    import ssl
    import urllib.request
    req = urllib.request.Request(cp.endpoint + "/_ec2mpi/capacity", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=cp.ca_path)):
        pass


def main(sizes=(4, 16, 64)) -> int:
    with tempfile.TemporaryDirectory() as state:
        cp = start(state)
        try:
            os.environ["AWS_ENDPOINT_URL"] = cp.endpoint
            aws = AwsSession(region="us-east-1", endpoint_url=cp.endpoint, ca_bundle=cp.ca_path)
            KeyStore(aws).ensure_bucket()       # account-wide, once
            Registry(aws).ensure_table()
            print(f"{'N':>4} {'op':8} {'total':>6} {'mutating':>9}  mutating calls by operation")
            for n in sizes:
                name = f"bench{n}"
                mgr = ClusterManager(aws)
                spec = ClusterSpec(name, nodes=n, ssh_cidr="203.0.113.7/32", storage="efs")
                for op, call in (("create", lambda m=mgr, s=spec: m.create(s, wait=False)),
                                 ("destroy", lambda m=mgr, n=name: m.destroy(n))):
                    total, mutating, muts = measure(aws, op, call)
                    detail = ", ".join(f"{k}={v}" for k, v in muts.items())
                    print(f"{n:>4} {op:8} {total:>6} {mutating:>9}  {detail}")
            for itype in ClusterSpec("x").instance_types:     # no spot capacity left anywhere
                pools(cp, "POST", {"type": itype, "lifecycle": "spot", "count": 0})
            for n in sizes:
                name, mgr = f"fallback{n}", ClusterManager(aws)
                spec = ClusterSpec(name, nodes=n, ssh_cidr="203.0.113.7/32", storage="efs",
                                   spot_fallback="on-demand")
                total, mutating, muts = measure(
                    aws, "create*", lambda m=mgr, s=spec: m.create(s, wait=False))
                detail = ", ".join(f"{k}={v}" for k, v in muts.items())
                print(f"{n:>4} {'create*':8} {total:>6} {mutating:>9}  {detail}")
                mgr.destroy(name)
        finally:
            cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
