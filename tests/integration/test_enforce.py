"""The local cloud's control plane enforces IAM as AWS would (issue 11, item 6).

An enforcing control plane (its own process, over TLS) with its credential store: the
client's key is an administrator's; node keys are issued per instance for a role made by
NodeRole with the real worker and master policies; requests signed with them go through the
policy evaluator. Clients here are plain boto3 and our own Registry, over HTTP.
"""
from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from ec2mpi.aws.iam import NodeRole, PolicyScope, master_policy, worker_policy
from ec2mpi.aws.node_session import NodeSession
from ec2mpi.aws.registry import Node, Registry, cluster_key, node_pk
from ec2mpi.aws.session import AwsSession
from ec2mpi.config import REGISTRY_TABLE, TAG_CLUSTER
from ec2mpi.errors import CloudError
from ec2mpi.localcloud.controlplane import start
from ec2mpi.localcloud.credentials import CredentialStore

ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = f"ec2mpi-{ACCOUNT}-{REGION}"


@pytest.fixture(scope="module")
def enforcing(tmp_path_factory):
    state = tmp_path_factory.mktemp("enforcing")
    store = CredentialStore(state)
    client = store.client()
    cp = start(state, enforce=True)
    yield cp, store, client
    cp.stop()


def _session(cp, key, token=None) -> AwsSession:
    return AwsSession(region=REGION, endpoint_url=cp.endpoint, ca_bundle=cp.ca_path,
                      credentials={"aws_access_key_id": key[0], "aws_secret_access_key": key[1],
                                   **({"aws_session_token": token} if token else {})})


def _code(err: ClientError) -> str:
    return err.response["Error"]["Code"]


@pytest.fixture(scope="module")
def world(enforcing):
    """Two clusters (a, b), each with a worker role and a master role, keys and a wheel in
    the bucket, a registry with their items, and one instance each tagged with its cluster."""
    cp, store, client = enforcing
    admin = _session(cp, (client.access_key_id, client.secret))
    registry = Registry(admin)
    registry.ensure_table()
    s3 = admin.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    ec2 = admin.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    out = {"admin": admin, "store": store, "cp": cp}
    for name in ("a", "b"):
        cluster = f"enf{name}"
        for obj in ("keys.json", "ec2mpi-0.1-py3-none-any.whl"):
            s3.put_object(Bucket=BUCKET, Key=f"clusters/{cluster}/{obj}", Body=b"x",
                          ExpectedBucketOwner=ACCOUNT)
        registry.create_cluster(cluster, json.dumps({"name": cluster}), status="ready")
        inst = ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, TagSpecifications=[{
            "ResourceType": "instance",
            "Tags": [{"Key": TAG_CLUSTER, "Value": cluster}]}])["Instances"]
        scope = PolicyScope(cluster=cluster, bucket=BUCKET, region=REGION, account=ACCOUNT,
                            storage="efs")
        for kind, policy in (("worker", worker_policy(scope)), ("master", master_policy(scope))):
            role = NodeRole(admin, cluster, kind)
            _, _, role_id = role.ensure(policy)
            iid = inst[0 if kind == "master" else 1]["InstanceId"]
            key = store.issue(iid, role.name, role_id)
            out[f"{name}-{kind}"] = {
                "cluster": cluster, "iid": iid, "role_id": role_id,
                "session": _session(cp, (key.access_key_id, key.secret), key.token),
                "keys": {"aws_access_key_id": key.access_key_id,
                         "aws_secret_access_key": key.secret, "aws_session_token": key.token}}
            node = Node(instance_id=iid, role=kind, private_ip="172.31.9.9",
                        hostname="ip-172-31-9-9", slots=2)
            node.key = node_pk(cluster, role_id, iid)
            registry.put_node(cluster, node)
            out[f"{name}-{kind}"]["node"] = node
    return out


def test_unknown_keys_and_bad_signatures_are_refused(enforcing):
    cp, _, client = enforcing
    for service, call, code in (
            ("dynamodb", lambda c: c.list_tables(), "UnrecognizedClientException"),
            ("s3", lambda c: c.list_buckets(), "InvalidAccessKeyId"),
            ("ec2", lambda c: c.describe_instances(), "AuthFailure"),
            ("sts", lambda c: c.get_caller_identity(), "InvalidClientTokenId")):
        stranger = _session(cp, ("AKIASTRANGER0000", "whatever")).client(service)
        with pytest.raises(ClientError) as err:
            call(stranger)
        assert _code(err.value) == code, service
    forged = _session(cp, (client.access_key_id, "not-the-secret")).client("dynamodb")
    with pytest.raises(ClientError) as err:
        forged.list_tables()
    assert _code(err.value) == "InvalidSignatureException"
    unsigned = boto3.client("dynamodb", region_name=REGION, endpoint_url=cp.endpoint,
                            verify=cp.ca_path, config=Config(signature_version=UNSIGNED))
    with pytest.raises(ClientError):
        unsigned.list_tables()


def test_the_client_key_is_an_administrator(world):
    assert REGISTRY_TABLE in world["admin"].client("dynamodb").list_tables()["TableNames"]


def test_a_worker_writes_its_own_node_item_and_nothing_else(world):
    me, other = world["a-worker"], world["a-master"]
    registry = Registry(me["session"])
    registry.heartbeat(me["cluster"], me["node"], sessions=1)   # its own item: allowed
    assert registry.epoch(me["cluster"]) is not None             # reading the epoch: allowed
    ddb = me["session"].client("dynamodb")
    denied = [
        # the client's state: spec, status, launch token
        lambda: ddb.update_item(TableName=REGISTRY_TABLE, Key={
            k: {"S": v} for k, v in cluster_key(me["cluster"]).items()},
            UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": "pwned"}}),
        # another node's item (the master's), in its own cluster
        lambda: ddb.update_item(TableName=REGISTRY_TABLE, Key={
            "pk": {"S": other["node"].key}, "sk": {"S": "node"}},
            UpdateExpression="SET private_ip = :p",
            ExpressionAttributeValues={":p": {"S": "1.2.3.4"}}),
        # a node item it makes up under its cluster
        lambda: ddb.put_item(TableName=REGISTRY_TABLE, Item={
            "pk": {"S": f"{me['cluster']}#node#AROAFAKE:i-0123456789abcdef0"},
            "sk": {"S": "node"}, "member_of": {"S": me["cluster"]}}),
        # membership listing and the master state: the master's business
        lambda: ddb.query(TableName=REGISTRY_TABLE, IndexName="members",
                          KeyConditionExpression="member_of = :c",
                          ExpressionAttributeValues={":c": {"S": me["cluster"]}}),
        # the epoch, with anything but the epoch counter
        lambda: ddb.update_item(TableName=REGISTRY_TABLE, Key={
            "pk": {"S": f"{me['cluster']}#epoch"}, "sk": {"S": "epoch"}},
            UpdateExpression="SET spec = :s", ExpressionAttributeValues={":s": {"S": "x"}}),
    ]
    for i, call in enumerate(denied):
        with pytest.raises(ClientError) as err:
            call()
        assert _code(err.value) == "AccessDeniedException", i
    s3 = me["session"].client("s3")
    s3.get_object(Bucket=BUCKET, Key=f"clusters/{me['cluster']}/keys.json",
                  ExpectedBucketOwner=ACCOUNT)                     # its own keys: allowed
    for call in (
            lambda: s3.get_object(Bucket=BUCKET, Key="clusters/enfb/keys.json"),
            lambda: s3.put_object(Bucket=BUCKET, Body=b"evil",
                                  Key=f"clusters/{me['cluster']}/ec2mpi-0.1-py3-none-any.whl"),
            lambda: s3.delete_object(Bucket=BUCKET, Key=f"clusters/{me['cluster']}/keys.json"),
            lambda: s3.list_objects_v2(Bucket=BUCKET)):
        with pytest.raises(ClientError) as err:
            call()
        assert _code(err.value) == "AccessDenied"
    ec2 = me["session"].client("ec2")
    with pytest.raises(ClientError) as err:
        ec2.terminate_instances(InstanceIds=[other["iid"]])
    assert _code(err.value) == "UnauthorizedOperation"
    with pytest.raises(ClientError) as err:
        ec2.describe_instances()
    assert _code(err.value) == "UnauthorizedOperation"


def test_a_master_does_what_the_table_grants_for_its_own_cluster_only(world):
    me, worker, stranger = world["a-master"], world["a-worker"], world["b-worker"]
    registry = Registry(me["session"])
    assert {n.instance_id for n in registry.nodes(me["cluster"], validate=False)} == {
        me["iid"], worker["iid"]}
    assert registry.set_node_state(me["cluster"], worker["node"], "lost", "test")
    registry.update_master(me["cluster"], bump=True, target=3)
    ec2 = me["session"].client("ec2")
    assert ec2.describe_instances()["Reservations"]
    ddb = me["session"].client("dynamodb")
    for i, call in enumerate([
            lambda: ddb.update_item(TableName=REGISTRY_TABLE, Key={
                "pk": {"S": stranger["node"].key}, "sk": {"S": "node"}},
                UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues={":s": {"S": "lost"}}),
            lambda: ddb.query(TableName=REGISTRY_TABLE, IndexName="members",
                              KeyConditionExpression="member_of = :c",
                              ExpressionAttributeValues={":c": {"S": stranger["cluster"]}}),
            lambda: ddb.put_item(TableName=REGISTRY_TABLE, Item={
                k: {"S": v} for k, v in cluster_key(me["cluster"]).items()})]):
        with pytest.raises(ClientError) as err:
            call()
        assert _code(err.value) == "AccessDeniedException", i
    # a stranger's instance: neither terminated nor retagged into the cluster
    for call in (lambda: ec2.terminate_instances(InstanceIds=[stranger["iid"]]),
                 lambda: ec2.create_tags(Resources=[stranger["iid"]], Tags=[
                     {"Key": TAG_CLUSTER, "Value": me["cluster"]}])):
        with pytest.raises(ClientError) as err:
            call()
        assert _code(err.value) == "UnauthorizedOperation"
    s3 = me["session"].client("s3")
    with pytest.raises(ClientError):
        s3.get_object(Bucket=BUCKET, Key=f"clusters/{stranger['cluster']}/keys.json")
    # and its own cluster's instance: terminated
    ec2.terminate_instances(InstanceIds=[worker["iid"]])
    state = world["admin"].client("ec2").describe_instances(InstanceIds=[worker["iid"]])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] in (
        "shutting-down", "terminated")


def test_the_agents_own_session_is_held_to_its_role_as_boto3_is(world):
    """The agent signs DynamoDB and S3 GetObject itself (aws/node_session.py): the same
    signatures checked, the same policies, the same error codes; EC2 goes through boto3."""
    cp = world["cp"]
    me, master, other = world["a-worker"], world["a-master"], world["b-worker"]
    node = NodeSession(REGION, cp.endpoint, cp.ca_path, credentials=me["keys"])
    registry = Registry(node)
    before = registry.epoch(me["cluster"])
    mine = dataclasses.replace(me["node"], state="ready")   # (the master test marks it lost)
    registry.put_node(me["cluster"], mine)
    assert registry.heartbeat(me["cluster"], mine, sessions=2)
    assert registry.epoch(me["cluster"]) == before + 1
    with pytest.raises(CloudError, match="AccessDeniedException"):
        registry.update_cluster(me["cluster"], status="pwned")
    s3 = node.client("s3")
    assert s3.get_object(Bucket=BUCKET, Key=f"clusters/{me['cluster']}/keys.json",
                         ExpectedBucketOwner=ACCOUNT)["Body"].read() == b"x"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=BUCKET, Key=f"clusters/{other['cluster']}/keys.json")
    assert _code(err.value) == "AccessDenied"
    forged = NodeSession(REGION, cp.endpoint, cp.ca_path,
                         credentials={**me["keys"], "aws_secret_access_key": "not-the-secret"})
    with pytest.raises(ClientError) as err:
        forged.client("dynamodb").get_item(TableName=REGISTRY_TABLE, Key={
            k: {"S": v} for k, v in cluster_key(me["cluster"]).items()})
    assert _code(err.value) == "InvalidSignatureException"
    boss = NodeSession(REGION, cp.endpoint, cp.ca_path, credentials=master["keys"])
    assert me["iid"] in {n.instance_id for n in Registry(boss).nodes(me["cluster"],
                                                                     validate=False)}
    assert boss.client("ec2").describe_instances()["Reservations"]


def test_revoked_credentials_stop_working(world):
    me = world["b-master"]
    world["store"].revoke(me["iid"])
    with pytest.raises(ClientError) as err:
        me["session"].client("dynamodb").get_item(TableName=REGISTRY_TABLE, Key={
            k: {"S": v} for k, v in cluster_key(me["cluster"]).items()})
    assert _code(err.value) == "UnrecognizedClientException"


def test_a_query_sent_raw_but_signed_canonically_is_accepted(world):
    """s3fs lists with prefix=clusters/x/shared/ raw on the wire but signs it as SigV4
    canonicalizes it (%2F); AWS accepts that, and so must the local cloud, or a mounted
    /shared answers every listing with EPERM."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    cp, client = world["cp"], world["store"].client()
    host = urlsplit(cp.endpoint).netloc
    raw = f"/{BUCKET}/?delimiter=/&prefix=clusters/enfa/"
    for query, status in (("delimiter=%2F&prefix=clusters%2Fenfa%2F", 200),
                          ("delimiter=%2F&prefix=clusters%2Fenfb%2F", 403)):
        request = AWSRequest(method="GET", url=f"{cp.endpoint}/{BUCKET}/?{query}")
        S3SigV4Auth(Credentials(client.access_key_id, client.secret), "s3", REGION
                    ).add_auth(request)
        conn = http.client.HTTPSConnection(
            host, context=ssl.create_default_context(cafile=cp.ca_path), timeout=10)
        conn.request("GET", raw, headers=dict(request.headers.items()))
        assert conn.getresponse().status == status, query
