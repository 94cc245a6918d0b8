"""DynamoDB concurrency with AWS semantics, for the control-plane process only (fidelity.py, 3).

moto's DynamoDB backend is plain Python dicts served by a threaded server. This module wraps
`DynamoHandler.call_action` (after moto has read and parsed the whole request, before it
touches the backend) with:

- item locks, keyed by (account, region, table, hash key value, range key value), read
  from the request body with the table's key schema taken from moto's backend. Single-item
  writes (PutItem/UpdateItem/DeleteItem) and BatchWriteItem wait for their items' locks;
  TransactWriteItems takes all of its items' locks at once or none (never waits): if
  another request holds one, it is cancelled with TransactionConflict at that position, as
  on AWS. TransactGetItems is cancelled the same way while a write holds one of its items.
- one short backend lock held only while moto runs its in-memory operation (never while a
  request waits for item locks, reads its body or writes its response): moto's structures,
  and its TransactWriteItems rollback (which swaps in a deep copy of the whole table), are
  not safe against concurrent mutation. Reads take it too: they iterate moto's dicts.
- AWS's ClientRequestToken idempotency for TransactWriteItems (10 minutes).
- items answered as they are stored (`serialized`): moto 5.2 serializes every attribute
  value of a response by walking botocore's shape model, ~0.4 ms per attribute; a
  1000-node Query took most of a core, and under a cluster's heartbeats it starved every
  other request. Items are already DynamoDB JSON (`{"S": ...}`, `{"N": ...}`, M, L, sets),
  so Item/Items/Attributes/Responses go out as they are when they hold only JSON values,
  and moto serializes the rest of the response. Same bytes on the wire (a test compares
  both serializers).

TEST-ONLY hook: a write request carrying the header `x-ec2mpi-test-hold-item-locks: SECONDS`
(at most 10) keeps its item locks that long before it runs, so that tests can race a second
request against it deterministically; `GET /_ec2mpi/dynamodb/item-locks` lists the held
locks. No AWS client sends that header; the product never does.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

HOLD_HEADER = "x-ec2mpi-test-hold-item-locks"
MAX_HOLD_SECONDS = 10.0
WRITE_WAIT_SECONDS = 30.0  # a single-item write waits this long for its item, then conflicts
TOKEN_TTL_SECONDS = 600.0
_ERR = "com.amazonaws.dynamodb.v20120810#"
_CONFLICT_MESSAGE = "Transaction is ongoing for the item"

ItemId = tuple  # (account, region, table, hash key, range key)


class ItemLocks:
    """Exclusive per-item locks, taken all at once (so no lock order, no deadlock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[ItemId, str] = {}  # item -> operation holding it

    def acquire(self, items: list[ItemId], operation: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(i in self._held for i in items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._held.update(dict.fromkeys(items, operation))
            return True

    def try_acquire(self, items: list[ItemId], operation: str) -> set[ItemId]:
        """Take every item or none; returns the items held by others (empty: all taken)."""
        with self._cond:
            busy = {i for i in items if i in self._held}
            if not busy:
                self._held.update(dict.fromkeys(items, operation))
            return busy

    def busy(self, items: list[ItemId]) -> set[ItemId]:
        with self._cond:
            return {i for i in items if i in self._held}

    def release(self, items: list[ItemId]) -> None:
        with self._cond:
            for i in items:
                self._held.pop(i, None)
            self._cond.notify_all()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return [{"account": i[0], "region": i[1], "table": i[2], "key": [i[3], i[4]],
                     "operation": op} for i, op in self._held.items()]


LOCKS = ItemLocks()
_BACKEND_LOCK = threading.Lock()  # held only for moto's in-memory operation
_TOKENS_LOCK = threading.Lock()
_DONE: dict[tuple, tuple[float, str, tuple]] = {}  # token -> (time, request digest, response)
_IN_FLIGHT: dict[tuple, str] = {}  # token -> request digest
_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")


def _canon(value: Any) -> str:
    """One string per DynamoDB key value ({"N": "1"} and {"N": "1.0"} are the same key)."""
    if isinstance(value, dict) and isinstance(value.get("N"), str):
        try:
            value = {"N": str(Decimal(value["N"]).normalize())}
        except InvalidOperation:
            pass
    return json.dumps(value, sort_keys=True)


def _item_id(handler: Any, table_name: Any, attrs: Any) -> ItemId | None:
    """The item a Key (or a whole Item) names; None if moto will reject the request anyway."""
    if not isinstance(table_name, str) or not isinstance(attrs, dict):
        return None
    try:
        table = handler.dynamodb_backend.get_table(table_name)  # by name or ARN
    except Exception:  # noqa: BLE001 - no such table: moto answers ResourceNotFound
        return None
    hash_attr, range_attr = table.hash_key_attr, table.range_key_attr
    if hash_attr not in attrs or (range_attr and range_attr not in attrs):
        return None
    return (handler.current_account, handler.region, table.name, _canon(attrs[hash_attr]),
            _canon(attrs[range_attr]) if range_attr else None)


def _write_items(handler: Any, operation: str, body: dict) -> list[ItemId]:
    if operation == "BatchWriteItem":
        found = []
        for table, requests in (body.get("RequestItems") or {}).items():
            for req in requests if isinstance(requests, list) else []:
                req = req if isinstance(req, dict) else {}
                put, delete = req.get("PutRequest") or {}, req.get("DeleteRequest") or {}
                found.append(_item_id(handler, table, put.get("Item") or delete.get("Key")))
        items = found
    else:
        items = [_item_id(handler, body.get("TableName"),
                          body.get("Item") if operation == "PutItem" else body.get("Key"))]
    return sorted({i for i in items if i is not None}, key=repr)


def _transact_items(handler: Any, body: dict) -> list[ItemId | None]:
    """One entry per TransactItems position (None where moto will reject the entry)."""
    out = []
    for entry in body.get("TransactItems") or []:
        op = next(iter(entry.values()), {}) if isinstance(entry, dict) and entry else {}
        op = op if isinstance(op, dict) else {}
        out.append(_item_id(handler, op.get("TableName"), op.get("Key") or op.get("Item")))
    return out


def _error(handler: Any, exc: Any) -> tuple[int, dict, str]:
    from moto.utilities.aws_headers import gen_amz_crc32
    body = exc.get_body()
    headers = dict(exc.get_headers())
    gen_amz_crc32(body, headers)
    headers, body = handler._enrich_response(headers, body)
    return exc.code, headers, body


def _json_error(name: str, message: str) -> Any:
    from moto.dynamodb.exceptions import DynamodbException
    return DynamodbException(_ERR + name, message)


def _cancelled(handler: Any, items: list[ItemId | None], busy: set[ItemId]) -> tuple:
    from moto.dynamodb.exceptions import TransactionCanceledException
    return _error(handler, TransactionCanceledException(
        [("TransactionConflict", _CONFLICT_MESSAGE, None) if i in busy else (None, None, None)
         for i in items]))


def _hold(handler: Any) -> None:
    """TEST-ONLY: keep the item locks just taken for the seconds the hold header asks."""
    try:
        seconds = float(handler.headers.get(HOLD_HEADER) or 0)
    except ValueError:
        return
    if seconds > 0:
        time.sleep(min(seconds, MAX_HOLD_SECONDS))


def _run(handler: Any, original: Callable) -> tuple:
    with _BACKEND_LOCK:
        return original(handler)


def call_action(handler: Any, original: Callable) -> tuple:
    """`DynamoHandler.call_action` with AWS's concurrency semantics (see the module doc)."""
    operation = handler._get_action()
    if operation not in (*_WRITES, "TransactWriteItems", "TransactGetItems"):
        return _run(handler, original)
    try:
        body = json.loads(handler.body or "{}")  # moto's decoded body (call_action replaces it)
    except (TypeError, ValueError):
        body = None
    if not isinstance(body, dict):
        return _run(handler, original)  # moto answers the malformed request

    if operation == "TransactGetItems":
        items = _transact_items(handler, body)
        busy = LOCKS.busy([i for i in items if i is not None])
        return _cancelled(handler, items, busy) if busy else _run(handler, original)
    if operation == "TransactWriteItems":
        return _transact_write(handler, original, body)

    items = _write_items(handler, operation, body)
    if not LOCKS.acquire(items, operation, WRITE_WAIT_SECONDS):
        return _error(handler, _json_error("TransactionConflictException", _CONFLICT_MESSAGE))
    try:
        _hold(handler)
        return _run(handler, original)
    finally:
        LOCKS.release(items)


def _transact_write(handler: Any, original: Callable, body: dict) -> tuple:
    token = body.get("ClientRequestToken")
    key = (handler.current_account, handler.region, token) if token else None
    if key:
        digest = hashlib.sha256(json.dumps(
            {k: v for k, v in body.items() if k != "ClientRequestToken"}, sort_keys=True
        ).encode()).hexdigest()
        with _TOKENS_LOCK:
            now = time.monotonic()
            for old in [t for t, v in _DONE.items() if now - v[0] > TOKEN_TTL_SECONDS]:
                del _DONE[old]
            seen = _DONE[key][1] if key in _DONE else _IN_FLIGHT.get(key)
            if seen is not None and seen != digest:
                return _error(handler, _json_error(
                    "IdempotentParameterMismatchException",
                    "The request uses the same client token as a previous, but non-identical "
                    "request. Do not reuse a client token with different requests, unless the "
                    "requests are identical."))
            if key in _DONE:
                status, headers, answer = _DONE[key][2]
                return status, dict(headers), answer
            if key in _IN_FLIGHT:  # botocore retries this one
                return _error(handler, _json_error(
                    "TransactionInProgressException",
                    "The transaction with the given request token is already in progress."))
            _IN_FLIGHT[key] = digest
    try:
        items = _transact_items(handler, body)
        mine = sorted({i for i in items if i is not None}, key=repr)
        busy = LOCKS.try_acquire(mine, "TransactWriteItems")
        if busy:
            return _cancelled(handler, items, busy)
        try:
            _hold(handler)
            response = _run(handler, original)
        finally:
            LOCKS.release(mine)
        if key and int(response[0]) == 200:
            with _TOKENS_LOCK:
                _DONE[key] = (time.monotonic(), digest, (response[0], dict(response[1]),
                                                         response[2]))
        return response
    finally:
        if key:
            with _TOKENS_LOCK:
                _IN_FLIGHT.pop(key, None)


ITEM_MEMBERS = ("Item", "Items", "Attributes", "Responses")   # what `serialized` passes as is


class _NotPlain(Exception):
    pass


def wire(value: Any) -> Any:
    """An item member as DynamoDB JSON puts it on the wire: binary values in base64, every
    other value JSON's own type; _NotPlain for anything else (moto serializes it then)."""
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (str, bool, int, float)):
        return value
    raise _NotPlain


def serialized(handler: Any, action_result: Any, original: Callable) -> tuple:
    """moto's `serialized`, with the item members of a result sent as they are stored."""
    from moto.core.responses import ActionResult, PaginatedResult
    result = action_result.result
    if not isinstance(action_result, ActionResult) or isinstance(action_result, PaginatedResult) \
            or not isinstance(result, dict):
        return original(handler, action_result)
    items = {}
    for key in ITEM_MEMBERS:
        if key in result:
            try:
                items[key] = wire(result[key])
            except _NotPlain:
                pass
    if not items:
        return original(handler, action_result)
    rest = ActionResult({k: v for k, v in result.items() if k not in items})
    status, headers, body = original(handler, rest)
    data = json.loads(body) if body else {}
    data.update(items)
    return status, headers, json.dumps(data, separators=(",", ":"))


def apply() -> None:
    """Wrap moto's DynamoDB handler (the caller makes this idempotent)."""
    from moto.dynamodb.responses import DynamoHandler
    original = DynamoHandler.call_action
    original_serialized = DynamoHandler.serialized

    def patched(self):
        return call_action(self, original)

    def patched_serialized(self, action_result):
        return serialized(self, action_result, original_serialized)

    DynamoHandler.call_action = patched
    DynamoHandler.serialized = patched_serialized
