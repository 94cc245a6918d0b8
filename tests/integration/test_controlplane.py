"""The local control plane: moto over TLS with a local CA, and a faithful TLS-only bucket policy.

Real HTTP(S) requests with boto3 against the session's control-plane process. Test code
may use boto3 directly: these tests check the emulator itself, not the product.
"""


import json
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, SSLError

from ec2mpi.localcloud import controlplane as cpmod

_CFG = Config(retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})


def _s3(endpoint, verify=None):
    return boto3.client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, verify=verify, config=_CFG
    )


def _tls_only_policy(bucket):
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})


def _denied(exc_info):
    err = exc_info.value.response
    return (
        err["Error"]["Code"] == "AccessDenied" and err["ResponseMetadata"]["HTTPStatusCode"] == 403
    )


@pytest.fixture
def hardened_bucket(controlplane):
    """A bucket hardened like the product's key store: BPA, default encryption, TLS-only policy."""
    s3 = _s3(controlplane.endpoint, controlplane.ca_path)
    bucket = "cp-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_bucket_policy(Bucket=bucket, Policy=_tls_only_policy(bucket))
    return bucket


def test_endpoints_share_backends(controlplane):
    assert controlplane.endpoint.startswith("https://")
    assert controlplane.http_endpoint.startswith("http://")
    bucket = "cp-" + uuid.uuid4().hex[:12]
    _s3(controlplane.endpoint, controlplane.ca_path).create_bucket(Bucket=bucket)
    names = [b["Name"] for b in _s3(controlplane.http_endpoint).list_buckets()["Buckets"]]
    assert bucket in names


def test_tls_only_policy_allows_https(controlplane, hardened_bucket):
    s3, b = _s3(controlplane.endpoint, controlplane.ca_path), hardened_bucket
    s3.put_object(Bucket=b, Key="clusters/x/id_ed25519", Body=b"secret")
    assert s3.get_object(Bucket=b, Key="clusters/x/id_ed25519")["Body"].read() == b"secret"
    assert s3.head_object(Bucket=b, Key="clusters/x/id_ed25519")["ContentLength"] == 6
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]] == ["clusters/x/id_ed25519"]
    assert [o["Key"] for o in s3.list_objects(Bucket=b)["Contents"]] == ["clusters/x/id_ed25519"]
    s3.put_object(Bucket=b, Key="clusters/x/other", Body=b"x")
    res = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "clusters/x/other"}]})
    assert not res.get("Errors") and [d["Key"] for d in res["Deleted"]] == ["clusters/x/other"]
    s3.delete_object(Bucket=b, Key="clusters/x/id_ed25519")
    assert s3.list_objects_v2(Bucket=b)["KeyCount"] == 0
    # the hardening is still readable over TLS
    assert json.loads(s3.get_bucket_policy(Bucket=b)["Policy"])["Statement"][0]["Effect"] == "Deny"
    assert s3.get_public_access_block(Bucket=b)["PublicAccessBlockConfiguration"][
        "BlockPublicPolicy"
    ]
    rules = s3.get_bucket_encryption(Bucket=b)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_tls_only_policy_denies_plain_http(controlplane, hardened_bucket):
    tls, plain, b = (
        _s3(controlplane.endpoint, controlplane.ca_path),
        _s3(controlplane.http_endpoint),
        hardened_bucket,
    )
    tls.put_object(Bucket=b, Key="clusters/x/id_ed25519", Body=b"secret")

    with pytest.raises(ClientError) as e:
        plain.get_object(Bucket=b, Key="clusters/x/id_ed25519")
    assert _denied(e)
    with pytest.raises(ClientError) as e:
        plain.put_object(Bucket=b, Key="clusters/x/id_ed25519", Body=b"overwritten")
    assert _denied(e)
    with pytest.raises(ClientError) as e:
        plain.put_object(Bucket=b, Key="clusters/x/new", Body=b"new")
    assert _denied(e)
    with pytest.raises(ClientError) as e:
        plain.head_object(Bucket=b, Key="clusters/x/id_ed25519")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as e:
        plain.list_objects_v2(Bucket=b)
    assert _denied(e)
    with pytest.raises(ClientError) as e:
        plain.list_objects(Bucket=b)
    assert _denied(e)
    with pytest.raises(ClientError) as e:
        plain.delete_object(Bucket=b, Key="clusters/x/id_ed25519")
    assert _denied(e)
    res = plain.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "clusters/x/id_ed25519"}]})
    assert not res.get("Deleted")
    assert [(x["Key"], x["Code"]) for x in res["Errors"]] == [
        ("clusters/x/id_ed25519", "AccessDenied")
    ]
    with pytest.raises(ClientError) as e:  # bucket-level calls too: the policy says s3:*
        plain.get_bucket_policy(Bucket=b)
    assert _denied(e)
    with pytest.raises(ClientError) as e:
        plain.delete_bucket_policy(Bucket=b)
    assert _denied(e)

    # nothing above changed anything: the object is intact, nothing new, policy in place
    assert tls.get_object(Bucket=b, Key="clusters/x/id_ed25519")["Body"].read() == b"secret"
    assert [o["Key"] for o in tls.list_objects_v2(Bucket=b)["Contents"]] == [
        "clusters/x/id_ed25519"
    ]
    assert "SecureTransport" in tls.get_bucket_policy(Bucket=b)["Policy"]


def test_bucket_without_policy_is_reachable_over_http(controlplane):
    tls, plain = _s3(controlplane.endpoint, controlplane.ca_path), _s3(controlplane.http_endpoint)
    bucket = "cp-" + uuid.uuid4().hex[:12]
    tls.create_bucket(Bucket=bucket)
    plain.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert plain.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert plain.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_allow_statement_with_unmet_condition_does_not_deny(controlplane):
    """moto used to turn ANY statement with an unmet condition into a Deny."""
    tls, plain = _s3(controlplane.endpoint, controlplane.ca_path), _s3(controlplane.http_endpoint)
    bucket = "cp-" + uuid.uuid4().hex[:12]
    tls.create_bucket(Bucket=bucket)
    tls.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "true"}}}]}))
    plain.put_object(Bucket=bucket, Key="k", Body=b"v")  # condition unmet over HTTP: no effect
    assert plain.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert plain.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
    assert tls.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_server_certificate_verifies_only_with_the_ca(controlplane):
    host, port = controlplane.endpoint.split("://")[1].rsplit(":", 1)
    good = ssl.create_default_context(cafile=controlplane.ca_path)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            good.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with urllib.request.urlopen(controlplane.endpoint + "/moto-api/", context=good, timeout=10):
        pass
    for name in ("localhost", "127.0.0.1"):  # SANs beyond the bind address
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            good.wrap_socket(raw, server_hostname=name).close()

    with pytest.raises(urllib.error.URLError) as e:  # system trust store only: refused
        urllib.request.urlopen(
            controlplane.endpoint + "/moto-api/", context=ssl.create_default_context(), timeout=10
        )
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises(SSLError):
        boto3.client("s3", region_name="us-east-1", endpoint_url=controlplane.endpoint, verify=True,
                     config=_CFG).list_buckets()
    assert "Buckets" in _s3(controlplane.endpoint, controlplane.ca_path).list_buckets()


def test_stalled_or_plaintext_client_does_not_block_tls_listener(controlplane):
    host, port = controlplane.endpoint.split("://")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as stalled, \
            socket.create_connection((host, int(port)), timeout=10) as plaintext:
        plaintext.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s3 = _s3(controlplane.endpoint, controlplane.ca_path)
        assert "Buckets" in s3.list_buckets()  # served while the other two hang around
        assert stalled.fileno() >= 0


def test_restart_reuses_ca_and_serves_bridge_style_host(tmp_path):
    cp = cpmod.start(tmp_path)
    try:
        ca_first = (tmp_path / "ca.pem").read_bytes()
        key_first = (tmp_path / "ca-key.pem").read_bytes()
        assert (tmp_path / "ca-key.pem").stat().st_mode & 0o077 == 0
        assert "Buckets" in _s3(cp.endpoint, cp.ca_path).list_buckets()
    finally:
        cp.stop()
    assert cp.proc.returncode == 0
    cp2 = cpmod.start(tmp_path)
    try:
        assert cp2.ca_path == cp.ca_path
        assert (tmp_path / "ca.pem").read_bytes() == ca_first
        assert (tmp_path / "ca-key.pem").read_bytes() == key_first
        # a client that kept the old CA bundle still trusts the restarted control plane
        assert cp2.endpoint != cp.endpoint or cp2.info.pid != cp.info.pid
        assert "Buckets" in _s3(cp2.endpoint, str(tmp_path / "ca.pem")).list_buckets()
    finally:
        cp2.stop()


def test_server_certificate_names_the_bind_address(tmp_path):
    import ipaddress

    from cryptography import x509
    cpmod.ensure_tls(tmp_path, "172.31.0.1")
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) >= {ipaddress.ip_address("172.31.0.1"),
                                                            ipaddress.ip_address("127.0.0.1")}
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_dynamodb_conditional_adds_are_atomic(controlplane):
    """Concurrent transactions over TLS on one counter: every commit counted exactly once.

    As on DynamoDB, a transaction that meets another one on the counter may be cancelled
    with TransactionConflict (never retried by botocore); the writers retry those, as the
    product does."""
    ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=controlplane.endpoint,
                       verify=controlplane.ca_path, config=Config(retries={"max_attempts": 1}))
    table = "cp-" + uuid.uuid4().hex[:12]
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    ddb.put_item(TableName=table, Item={"pk": {"S": "c"}, "epoch": {"N": "0"}})
    ok, conflicts, errors = [], [], []

    def bump(i):
        c = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=controlplane.endpoint,
                         verify=controlplane.ca_path, config=Config(retries={"max_attempts": 1}))
        for j in range(10):
            for _ in range(50):
                try:
                    c.transact_write_items(TransactItems=[
                        {"Put": {"TableName": table, "Item": {"pk": {"S": f"n{i}-{j}"}},
                                 "ConditionExpression": "attribute_not_exists(pk)"}},
                        {"Update": {"TableName": table, "Key": {"pk": {"S": "c"}},
                                    "UpdateExpression": "ADD epoch :one",
                                    "ExpressionAttributeValues": {":one": {"N": "1"}}}}])
                    ok.append(1)
                    break
                except ClientError as exc:
                    reasons = [r["Code"] for r in exc.response.get("CancellationReasons", [])]
                    if reasons != ["None", "TransactionConflict"]:
                        errors.append(exc)
                        break
                    conflicts.append(1)
                    time.sleep(0.01 * random.random())
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                    break

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(ok) == 40, errors[:3]
    epoch = ddb.get_item(TableName=table, Key={"pk": {"S": "c"}}, ConsistentRead=True)["Item"][
        "epoch"
    ]["N"]
    took = time.monotonic() - t0
    assert int(epoch) == 40, f"lost updates ({took:.1f}s, {len(conflicts)} conflicts)"


def test_clients_keep_their_connection_across_requests(controlplane, caplog):
    """HTTP/1.1 keep-alive: werkzeug's own handler closed every connection, so each request
    paid a TCP and TLS handshake (and the client a CA-bundle load). One client, many
    requests of every shape (bodies, HEAD, 204, errors): one connection."""
    import logging
    caplog.set_level(logging.DEBUG, logger="urllib3.connectionpool")
    kw = {"region_name": "us-east-1", "endpoint_url": controlplane.endpoint,
          "verify": controlplane.ca_path}
    s3 = boto3.client("s3", **kw)
    bucket = "keepalive-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 300_000)
    assert len(s3.get_object(Bucket=bucket, Key="k")["Body"].read()) == 300_000
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == 300_000
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="missing")
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="missing")
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)
    ddb = boto3.client("dynamodb", **kw)
    for _ in range(3):
        ddb.list_tables()
    opened = [r.getMessage() for r in caplog.records if "Starting new" in r.getMessage()]
    dropped = [r.getMessage() for r in caplog.records if "dropped connection" in r.getMessage()]
    assert len(opened) == 2 and not dropped, opened + dropped     # one per client
