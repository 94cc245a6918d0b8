"""The agent's node session (aws/node_session.py) over HTTP: SigV4 as AWS publishes it and as
botocore signs, the registry and the key bundle through it against the control plane, errors
shaped as botocore's, retries, and role credentials from the metadata service. (Against an
enforcing control plane, which checks each signature and the role's policies:
test_enforce.py.)"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from ec2mpi.agent.imds import Imds
from ec2mpi.aws.keystore import KeyStore
from ec2mpi.aws.node_session import NodeSession, RoleCredentials
from ec2mpi.aws.registry import ClusterExists, Node, Registry, node_pk
from ec2mpi.aws.session import CallCounter, error_code
from ec2mpi.aws.sigv4 import EMPTY_SHA256, Credentials, sign

ROLES = {"master": "AROAMASTER0000000001", "worker": "AROAWORKER0000000001"}
BUCKET = "ec2mpi-123456789012-us-east-1"
AMZ_DATE = "20150830T123600Z"


def test_a_signature_is_the_one_aws_publishes():
    """AWS's SigV4 test suite, 'get-vanilla'."""
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    headers = sign("GET", "example.amazonaws.com", "/", {}, EMPTY_SHA256, creds, "us-east-1",
                   "service", AMZ_DATE)
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


@pytest.mark.parametrize("service,method,path,headers,body", [
    ("dynamodb", "POST", "/", {"Content-Type": "application/x-amz-json-1.0",
                               "X-Amz-Target": "DynamoDB_20120810.GetItem"}, b'{"a": 1}'),
    ("s3", "GET", "/bucket/clusters/a%20b/keys%2B1.json", {
        "X-Amz-Expected-Bucket-Owner": "123456789012",
        "X-Amz-Content-SHA256": EMPTY_SHA256}, b""),
])
def test_a_signature_is_the_one_botocore_makes(service, method, path, headers, body):
    """With a session token, headers of any case and value spacing, an encoded S3 key."""
    import hashlib
    creds = Credentials("ASIAEXAMPLE", "secret/key+1", "token==")
    payload = hashlib.sha256(body).hexdigest()
    ours = sign(method, "127.0.0.1:8443", path, headers, payload, creds, "eu-west-1", service,
                AMZ_DATE)
    request = AWSRequest(method=method, url=f"https://127.0.0.1:8443{path}", data=body,
                         headers={k: v for k, v in ours.items() if k != "Authorization"})
    request.context["timestamp"] = AMZ_DATE
    auth = (S3SigV4Auth if service == "s3" else SigV4Auth)(
        BotoCredentials(creds.access_key, creds.secret_key, creds.token), service, "eu-west-1")
    canonical = auth.canonical_request(request)
    assert ours["Authorization"].endswith(
        "Signature=" + auth.signature(auth.string_to_sign(request, canonical), request))


@pytest.fixture
def node_aws(controlplane):
    """What an agent has, with the suite's keys from the environment instead of a role's."""
    return NodeSession("us-east-1", controlplane.endpoint, controlplane.ca_path)


def test_the_registry_works_through_the_node_session(aws, node_aws, cluster_name):
    admin = Registry(aws)
    admin.ensure_table()
    admin.create_cluster(cluster_name, "{}")
    admin.update_cluster(cluster_name, roles=ROLES, spec={"nodes": 4, "price": 0.5})
    counter = CallCounter(node_aws)
    reg = Registry(node_aws)
    assert reg.get_cluster(cluster_name)["roles"] == ROLES
    assert reg.get_cluster(cluster_name)["spec"] == {"nodes": 4, "price": 0.5}
    worker = Node("i-0000000000000c01", "worker", "172.31.0.9", "ip-172-31-0-9", 2)
    worker.key = node_pk(cluster_name, ROLES["worker"], worker.instance_id)
    reg.put_node(cluster_name, worker)
    assert reg.heartbeat(cluster_name, worker, sessions=2)
    assert reg.epoch(cluster_name) == 1
    seen = admin.nodes(cluster_name)
    assert [(n.instance_id, n.sessions, n.problem) for n in seen] == [(worker.instance_id, 2, "")]
    assert [n.instance_id for n in reg.nodes(cluster_name)] == [worker.instance_id]
    with pytest.raises(ClusterExists):            # a failed condition reads as with boto3
        reg.create_cluster(cluster_name, "{}")
    assert counter.calls["dynamodb:PutItem"] == 2 and counter.calls["dynamodb:Query"] == 1


def test_the_key_bundle_comes_through_the_node_session(aws, node_aws, cluster_name,
                                                       stored_keys):
    keys = stored_keys(cluster_name, owner="123456789012")
    store = KeyStore(node_aws, bucket=BUCKET, owner="123456789012")
    assert store.get_keys(cluster_name).objects() == keys.objects()
    assert store.get_optional(cluster_name, "no such object") is None
    KeyStore(aws, bucket=BUCKET, owner="123456789012").put(cluster_name, "a b+c/ü.txt", b"x")
    assert store.get(cluster_name, "a b+c/ü.txt") == b"x"


class _Scripted(ThreadingHTTPServer):
    """Answers each request with the next (status, body) of a script, and keeps what came."""

    def __init__(self, script, hang_up=False):
        self.script, self.seen = list(script), []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.server.seen.append((dict(self.headers), body))
                status, reply = self.server.script.pop(0)
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                self.close_connection = hang_up    # without saying so (an idle timeout)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


def _ddb_error(code):
    return json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}",
                       "message": code + " here"}).encode()


def test_server_errors_and_throttling_are_retried_and_other_errors_are_not():
    server = _Scripted([(500, b"oops"), (400, _ddb_error("ThrottlingException")),
                        (200, b'{"Item": {"pk": {"S": "x"}}}'),
                        (400, _ddb_error("ConditionalCheckFailedException"))])
    try:
        ddb = NodeSession("us-east-1", server.endpoint).client("dynamodb")
        assert ddb.get_item(TableName="t", Key={}) == {"Item": {"pk": {"S": "x"}}}
        assert len(server.seen) == 3
        headers, body = server.seen[0]
        assert headers["X-Amz-Target"] == "DynamoDB_20120810.GetItem"
        assert json.loads(body) == {"TableName": "t", "Key": {}}
        assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
        with pytest.raises(ClientError) as err:
            ddb.put_item(TableName="t", Item={})
        assert len(server.seen) == 4
        assert error_code(err.value) == "ConditionalCheckFailedException"
        assert err.value.response["Error"]["Message"] == "ConditionalCheckFailedException here"
    finally:
        server.shutdown()
        server.server_close()


def test_a_kept_alive_connection_the_server_closed_is_replaced():
    server = _Scripted([(200, b'{"Item": {"n": {"N": "1"}}}'), (200, b'{"Item": {}}')],
                       hang_up=True)
    try:
        session = NodeSession("us-east-1", server.endpoint)
        failed = []
        session.on_failed_attempt(lambda service, code: failed.append(code))
        ddb = session.client("dynamodb")
        assert ddb.get_item(TableName="t", Key={}) == {"Item": {"n": {"N": "1"}}}
        assert ddb.get_item(TableName="t", Key={}) == {"Item": {}}
        assert len(server.seen) == 2 and len(failed) <= 1
    finally:
        server.shutdown()
        server.server_close()


class _Imds:
    """A metadata service whose role keys expire when the test says (the real shape)."""

    def __init__(self, expires_in):
        self.expires_in, self.fetches = expires_in, 0

    def get(self, path):
        assert path == "meta-data/iam/security-credentials/"
        return "node-role\n"

    def json(self, path):
        assert path == "meta-data/iam/security-credentials/node-role"
        self.fetches += 1
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.expires_in))
        return {"Code": "Success", "AccessKeyId": f"ASIA{self.fetches:016d}",
                "SecretAccessKey": "s", "Token": "t", "Expiration": expires}


def test_role_credentials_are_fetched_again_before_they_expire():
    lasting, expiring = _Imds(3600), _Imds(300)
    held = RoleCredentials(lasting)
    assert [held().access_key for _ in range(3)] == ["ASIA0000000000000001"] * 3
    soon = RoleCredentials(expiring)          # within 10 min of expiry: asked again each time
    assert [soon().access_key for _ in range(3)] == [
        "ASIA0000000000000001", "ASIA0000000000000002", "ASIA0000000000000003"]


def test_role_credentials_come_from_the_metadata_service(monkeypatch):
    from ec2mpi.localcloud.imds import ImdsServer, InstanceView
    view = InstanceView("i-0abc", "127.0.0.1", role="node-role",
                        credentials=("ASIANODE", "node-secret", "node-token"))
    server = ImdsServer("127.0.0.1", 0, lambda ip: view).start()
    try:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        creds = NodeSession("us-east-1", imds=Imds(server.url)).credentials()
        assert (creds.access_key, creds.secret_key, creds.token) == (
            "ASIANODE", "node-secret", "node-token")
        assert 5 * 3600 < creds.expires - time.time() <= 6 * 3600
    finally:
        server.stop()
