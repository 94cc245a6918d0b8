"""Trust boundaries on a real local node (issue 11): the cluster user never reaches role
credentials; a worker's root credentials write its own node item and nothing else; the
master's do what docs/internals.md's table grants, for its own cluster only; the control
plane's ports belong to root and the nodes.

Needs root and namespaces (CI is root); elsewhere it skips and says why.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from localcloud import (
    NEEDS_LOCAL_CLOUD,
    STATE,
    WAIT,
    cli,
    cli_json,
    local_env,  # noqa: F401 - the module's local cloud (an autouse fixture)
    nodes_of,
    on_node,
)

pytestmark = NEEDS_LOCAL_CLOUD
NAME = "e2e-trust"
OTHER = "e2e-trust-stranger"
PROBE = Path(__file__).with_name("node_probe.py")
JOB_BUCKET = "e2e-trust-job-input"


@pytest.fixture(scope="module")
def trust():
    """A cluster whose jobs may read one input bucket (--job-policy-arn), and a stranger
    cluster's item and keys in the registry and the key bucket."""
    from ec2mpi.aws.registry import Registry
    from ec2mpi.config import bucket_name
    from ec2mpi.localcloud import control
    aws = control.session(control.ensure_up())
    s3, iam = aws.client("s3"), aws.client("iam")
    s3.create_bucket(Bucket=JOB_BUCKET)
    s3.put_object(Bucket=JOB_BUCKET, Key="input.txt", Body=b"job input")
    policy = iam.create_policy(PolicyName=f"{NAME}-read-input", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{JOB_BUCKET}/*"}]}))["Policy"]["Arn"]
    cli("create", NAME, "--nodes", "2", "--storage", "efs", "--job-policy-arn", policy,
        "--yes", *WAIT, timeout=180)
    Registry(aws).create_cluster(OTHER, json.dumps({"name": OTHER}), status="ready")
    account = aws.client("sts").get_caller_identity()["Account"]
    bucket = bucket_name(account, aws.region)
    s3.put_object(Bucket=bucket, Key=f"clusters/{OTHER}/keys.json", Body=b"{}")
    cli("put", "-c", NAME, str(PROBE), "node_probe.py")
    yield {"name": NAME, "keys_bucket": bucket}
    Registry(aws).delete_cluster(OTHER)
    s3.delete_object(Bucket=bucket, Key=f"clusters/{OTHER}/keys.json")
    cli("destroy", NAME, "--yes", check=False, timeout=180)
    s3.delete_object(Bucket=JOB_BUCKET, Key="input.txt")
    s3.delete_bucket(Bucket=JOB_BUCKET)
    iam.delete_policy(PolicyArn=policy)


def as_root_on(node: dict, *args: str) -> dict:
    """Run the probe as root inside the node (the agent's environment)."""
    anchor = (Path(STATE["dir"]) / "nodes" / node["instance_id"] / "anchor.pid").read_text()
    res = subprocess.run(
        ["nsenter", "-t", anchor.strip(), "-n", "-u", "-m", "--", "/bin/sh", "-c",
         "set -a; . /etc/ec2mpi/agent.env; exec /opt/ec2mpi/venv/bin/python "
         "/shared/node_probe.py " + " ".join(args)],
        capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]}, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def node(cluster: str, role: str) -> dict:
    return next(n for n in nodes_of(cluster) if n["role"] == role)


def test_the_cluster_user_gets_the_job_role_only(trust):
    """No metadata service, no node role: the job role's credentials (from the agent on
    loopback), which read the job's input and nothing of the cluster's."""
    for name in ("master", "node-1"):
        res = on_node(trust["name"], name, "/opt/ec2mpi/venv/bin/python /shared/node_probe.py "
                      f"user {JOB_BUCKET} {trust['keys_bucket']} {trust['name']}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["imds"] != "ok" and not out["static_credentials"], out
        assert out["credentials"] == "container-role", out
        assert out["job_input"] == "ok" and out["cluster_keys"] == "AccessDenied", out


def test_a_workers_root_credentials_write_its_own_node_item_only(trust):
    out = as_root_on(node(trust["name"], "worker"), "root", trust["name"], OTHER)
    assert out.pop("own_node_item") == "ok", out
    assert out.pop("own_keys") == "ok", out
    assert out.pop("another_node_item") == "AccessDeniedException"
    for name in ("client_state", "master_state", "other_cluster_item", "list_members",
                 "list_other_members"):
        assert out.pop(name) == "AccessDeniedException", name
    assert out.pop("other_cluster_keys") == "AccessDenied"
    assert out.pop("replace_wheel") == "AccessDenied"
    assert out.pop("describe_instances") == "UnauthorizedOperation"
    assert out == {}


def test_the_masters_root_credentials_do_what_the_table_grants_for_its_cluster(trust):
    out = as_root_on(node(trust["name"], "master"), "root", trust["name"], OTHER)
    for name in ("own_node_item", "own_keys", "another_node_item", "master_state",
                 "list_members", "describe_instances"):
        assert out.pop(name) == "ok", (name, out)
    for name in ("client_state", "other_cluster_item", "list_other_members"):
        assert out.pop(name) == "AccessDeniedException", name
    assert out.pop("other_cluster_keys") == "AccessDenied"
    assert out.pop("replace_wheel") == "AccessDenied"
    assert out == {}


def test_the_control_plane_answers_root_and_nodes_only(trust):
    """A non-root user on the host is refused at the port; the nodes' firewall rule stands."""
    endpoint = cli_json("local", "status")["endpoint"]
    if shutil.which("runuser") is None:
        pytest.skip("needs runuser to act as a non-root host user")
    probe = ("import sys, urllib.request, ssl\n"
             "try:\n"
             "    urllib.request.urlopen(sys.argv[1], timeout=3, "
             "context=ssl._create_unverified_context())\n"
             "except Exception as e:\n"
             "    print(type(e).__name__, e)\n")
    res = subprocess.run(["runuser", "-u", "nobody", "--", "python3", "-c", probe, endpoint],
                         capture_output=True, text=True, timeout=30, check=False)
    assert "refused" in res.stdout.lower() or "reset" in res.stdout.lower(), res.stdout
