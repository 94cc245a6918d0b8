"""DynamoDB concurrency in the control plane is DynamoDB's (fidelity.py item 3), over HTTPS.

Races are made deterministic with the control plane's TEST-ONLY hook: a write carrying
`x-ec2mpi-test-hold-item-locks: SECONDS` keeps its item locks that long before it runs,
and `GET /_ec2mpi/dynamodb/item-locks` tells when it holds them.
"""
import json
import ssl
import threading
import time
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

HOLD = "x-ec2mpi-test-hold-item-locks"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=60)


def _client(cp, hold: float = 0, config: Config = NO_RETRIES):
    c = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=cp.endpoint,
                     verify=cp.ca_path, config=config)
    if hold:
        def add_header(request, **_):
            request.headers[HOLD] = str(hold)
        c.meta.events.register("before-sign.dynamodb.*", add_header)
    return c


def _held(cp, table):
    ctx = ssl.create_default_context(cafile=cp.ca_path)
    with urllib.request.urlopen(cp.endpoint + "/_ec2mpi/dynamodb/item-locks", context=ctx,
                                timeout=10) as r:
        return [lock for lock in json.load(r)["locks"] if lock["table"] == table]


def _wait_held(cp, table, n):
    deadline = time.monotonic() + 10
    while len(_held(cp, table)) < n:
        assert time.monotonic() < deadline, "the holding request never took its locks"
        time.sleep(0.02)


class Background(threading.Thread):
    """Runs fn() in a thread; join() returns its result or raises its exception."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except Exception as exc:  # noqa: BLE001
            self.error = exc

    def join(self, timeout=30):
        super().join(timeout)
        assert not self.is_alive(), "background request did not finish"
        if self.error:
            raise self.error
        return self.result


@pytest.fixture
def table(controlplane):
    """A fresh table with a composite key (pk, sk)."""
    name = "fd" + uuid.uuid4().hex[:10]
    _client(controlplane).create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "N"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}])
    return name


def _key(pk, sk=0):
    return {"pk": {"S": pk}, "sk": {"N": str(sk)}}


def _add(table, pk, sk=0):
    return {"Update": {"TableName": table, "Key": _key(pk, sk), "UpdateExpression": "ADD n :one",
                       "ExpressionAttributeValues": {":one": {"N": "1"}}}}


def _put(table, pk, sk=0):
    return {"Put": {"TableName": table, "Item": {**_key(pk, sk), "v": {"S": "x"}},
                    "ConditionExpression": "attribute_not_exists(pk)"}}


def _n(cp, table, pk, sk=0):
    item = _client(cp).get_item(TableName=table, Key=_key(pk, sk), ConsistentRead=True)
    return int(item["Item"]["n"]["N"]) if "Item" in item else None


def test_concurrent_transactions_on_one_item_one_commits_the_other_conflicts(controlplane,
                                                                            table):
    holder = Background(lambda: _client(controlplane, hold=3).transact_write_items(
        TransactItems=[_add(table, "counter"), _put(table, "a")]))
    _wait_held(controlplane, table, 2)

    t0 = time.monotonic()
    with pytest.raises(ClientError) as e:  # the same counter (as 1.0: the same number key)
        _client(controlplane).transact_write_items(TransactItems=[
            _put(table, "b"),
            {"Update": {**_add(table, "counter")["Update"],
                        "Key": {"pk": {"S": "counter"}, "sk": {"N": "0.0"}}}}])
    assert time.monotonic() - t0 < 2, "the conflicting transaction waited instead of cancelling"
    err = e.value.response
    assert err["Error"]["Code"] == "TransactionCanceledException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err["Error"]["Message"] == ("Transaction cancelled, please refer cancellation "
                                       "reasons for specific reasons [None, TransactionConflict]")
    assert err["CancellationReasons"] == [
        {"Code": "None"},
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]
    assert err["ResponseMetadata"]["RetryAttempts"] == 0

    holder.join()  # the first one commits
    assert _n(controlplane, table, "counter") == 1
    ddb = _client(controlplane)
    assert "Item" in ddb.get_item(TableName=table, Key=_key("a"), ConsistentRead=True)
    assert "Item" not in ddb.get_item(TableName=table, Key=_key("b"), ConsistentRead=True)
    assert _held(controlplane, table) == []


def test_botocore_does_not_retry_a_transaction_conflict(controlplane, table):
    holder = Background(lambda: _client(controlplane, hold=2).transact_write_items(
        TransactItems=[_add(table, "counter")]))
    _wait_held(controlplane, table, 1)
    default_retries = _client(controlplane, config=Config(retries={"mode": "standard"}))
    with pytest.raises(ClientError) as e:
        default_retries.transact_write_items(TransactItems=[_add(table, "counter")])
    assert [r["Code"] for r in e.value.response["CancellationReasons"]] == ["TransactionConflict"]
    assert e.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    holder.join()


def test_transactions_on_different_items_commit_concurrently(controlplane, table):
    holder = Background(lambda: _client(controlplane, hold=3).transact_write_items(
        TransactItems=[_add(table, "x")]))
    _wait_held(controlplane, table, 1)

    t0 = time.monotonic()
    _client(controlplane).transact_write_items(
        TransactItems=[_add(table, "y"), _add(table, "x", sk=1)])  # same pk, other sk
    assert time.monotonic() - t0 < 2, "a transaction on other items waited for the held one"
    assert [lock["operation"] for lock in _held(controlplane, table)] == ["TransactWriteItems"]
    assert _n(controlplane, table, "y") == 1 and _n(controlplane, table, "x", 1) == 1
    assert _n(controlplane, table, "x") is None  # a read does not wait and sees the last commit
    holder.join()
    assert _n(controlplane, table, "x") == 1


def test_fifty_concurrent_adds_on_one_counter(controlplane, table):
    ddb = _client(controlplane)  # botocore clients are thread-safe
    barrier = threading.Barrier(50)

    def add():
        barrier.wait()
        ddb.update_item(TableName=table, Key=_key("counter"), UpdateExpression="ADD n :one",
                        ExpressionAttributeValues={":one": {"N": "1"}})

    threads = [Background(add) for _ in range(50)]
    for t in threads:
        t.join(60)
    assert _n(controlplane, table, "counter") == 50


def test_transaction_meeting_a_single_item_write_is_cancelled_not_blocked(controlplane, table):
    writer = Background(lambda: _client(controlplane, hold=3).update_item(
        TableName=table, Key=_key("counter"), UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}}))
    _wait_held(controlplane, table, 1)
    t0 = time.monotonic()
    with pytest.raises(ClientError) as e:
        _client(controlplane).transact_write_items(
            TransactItems=[_add(table, "counter"), _add(table, "other")])
    assert time.monotonic() - t0 < 2
    assert [r["Code"] for r in e.value.response["CancellationReasons"]] == [
        "TransactionConflict", "None"]
    writer.join()
    assert _n(controlplane, table, "counter") == 1
    assert _n(controlplane, table, "other") is None  # cancelled: nothing of it applied

    # and a TransactGetItems meeting a write in progress is cancelled too
    writer = Background(lambda: _client(controlplane, hold=3).put_item(
        TableName=table, Item={**_key("counter"), "n": {"N": "7"}}))
    _wait_held(controlplane, table, 1)
    with pytest.raises(ClientError) as e:
        _client(controlplane).transact_get_items(TransactItems=[
            {"Get": {"TableName": table, "Key": _key("other")}},
            {"Get": {"TableName": table, "Key": _key("counter")}}])
    assert [r["Code"] for r in e.value.response["CancellationReasons"]] == [
        "None", "TransactionConflict"]
    writer.join()


def test_single_item_write_waits_for_a_transaction_holding_its_item(controlplane, table):
    holder = Background(lambda: _client(controlplane, hold=2).transact_write_items(
        TransactItems=[_add(table, "counter")]))
    _wait_held(controlplane, table, 1)
    t0 = time.monotonic()
    _client(controlplane).update_item(  # applied after the transaction, not lost
        TableName=table, Key=_key("counter"), UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}})
    assert time.monotonic() - t0 > 0.5
    holder.join()
    assert _n(controlplane, table, "counter") == 2


def test_client_request_token_while_the_first_is_running(controlplane, table):
    token = uuid.uuid4().hex
    items = [_add(table, "counter")]
    holder = Background(lambda: _client(controlplane, hold=2).transact_write_items(
        TransactItems=items, ClientRequestToken=token))
    _wait_held(controlplane, table, 1)
    with pytest.raises(ClientError) as e:  # botocore would retry this one
        _client(controlplane).transact_write_items(TransactItems=items, ClientRequestToken=token)
    assert e.value.response["Error"]["Code"] == "TransactionInProgressException"
    holder.join()
    _client(controlplane).transact_write_items(TransactItems=items, ClientRequestToken=token)
    assert _n(controlplane, table, "counter") == 1  # the retry replayed the first answer
    with pytest.raises(ClientError) as e:
        _client(controlplane).transact_write_items(TransactItems=[_add(table, "other")],
                                                   ClientRequestToken=token)
    assert e.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"


def test_scans_and_writes_on_many_items_at_once(controlplane, table):
    """Requests without item keys still see moto's structures whole."""
    ddb = _client(controlplane)

    def write(i):
        for j in range(20):
            ddb.put_item(TableName=table, Item={**_key(f"w{i}", j), "v": {"S": "x" * 100}})

    def scan():
        for _ in range(10):
            ddb.scan(TableName=table)
            ddb.query(TableName=table, KeyConditionExpression="pk = :p",
                      ExpressionAttributeValues={":p": {"S": "w0"}})
            ddb.describe_table(TableName=table)

    workers = [Background(lambda i=i: write(i)) for i in range(8)]
    workers += [Background(scan) for _ in range(4)]
    for w in workers:
        w.join(60)
    assert ddb.scan(TableName=table, Select="COUNT")["Count"] == 160


def test_items_are_answered_exactly_as_moto_serializes_them(controlplane):
    """The control plane sends items as stored (moto's serializer walked the shape model per
    attribute: a 1000-item Query took most of a core); the answers must be what moto's own
    server answers, for every attribute type, in every operation that returns items."""
    from moto.server import ThreadedMotoServer
    plain = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    plain.start()
    try:
        host, port = plain.get_host_and_port()
        clients = [_client(controlplane), boto3.client(
            "dynamodb", region_name="us-east-1", endpoint_url=f"http://{host}:{port}")]
        item = {"pk": {"S": "k"}, "sk": {"S": "node"}, "n": {"N": "12.50"},
                "bool": {"BOOL": False}, "null": {"NULL": True}, "bin": {"B": b"\x00\xffz"},
                "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": [b"x"]},
                "m": {"M": {"inner": {"L": [{"S": "x"}, {"N": "3"}, {"M": {}}]}}}}
        answers = []
        for c in clients:
            bodies = []
            table = "fast-" + uuid.uuid4().hex[:8]
            def keep(response_dict, t=table, out=bodies, **_):
                out.append(json.loads((response_dict["body"] or b"{}").replace(t.encode(), b"T")))
            c.meta.events.register("before-parse.dynamodb.*", keep)
            c.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                           AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"}
                                                 for a in ("pk", "sk")],
                           KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                      {"AttributeName": "sk", "KeyType": "RANGE"}])
            c.put_item(TableName=table, Item=item)
            c.put_item(TableName=table, Item={**item, "sk": {"S": "other"}})
            key = {"pk": {"S": "k"}, "sk": {"S": "node"}}
            bodies.clear()
            c.get_item(TableName=table, Key=key, ConsistentRead=True)
            c.query(TableName=table, KeyConditionExpression="pk = :k",
                    ExpressionAttributeValues={":k": {"S": "k"}})
            c.scan(TableName=table, Limit=1)
            c.batch_get_item(RequestItems={table: {"Keys": [key]}})
            c.update_item(TableName=table, Key=key, UpdateExpression="SET n = :v",
                          ExpressionAttributeValues={":v": {"N": "7"}}, ReturnValues="ALL_NEW")
            c.delete_item(TableName=table, Key=key, ReturnValues="ALL_OLD")
            answers.append(bodies)
        assert answers[0] == answers[1]
        assert answers[0][0]["Item"]["bin"] == {"B": "AP96"}      # base64, as on the wire
        assert len(answers[0]) == 6 and all(answers[0])
    finally:
        plain.stop()
