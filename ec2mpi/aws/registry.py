"""The cluster registry: one DynamoDB table per account and region. The only definition of
its schema; docs/internals.md has the table of who writes and who reads each item.

Key schema: `pk` (S, hash) and `sk` (S, range); the sparse index `members` (hash
`member_of`, range `instance_id`, all attributes) lists a cluster's node items.

  item          pk                          sk       written by                 read by
  cluster       NAME                        cluster  client                     everyone
  epoch         NAME#epoch                  epoch    everyone (ADD epoch only)  everyone
  master state  NAME#master                 state    master, client             master, client
  node          NAME#node#ROLEID:INSTANCE   node     that node; master, client  master, client

Why this shape:
- Trust: the node roles may write only what they own, by IAM `dynamodb:LeadingKeys`. A
  node's item key ends with its own `${aws:userid}` (role id : instance id, as AWS sets it
  for instance roles), so a worker can write its own item and nothing else; the client's
  spec, status and launch token sit where no node can write. Readers still validate every
  node item (see Node.problem): the key must name the instance and the role it claims.
- Scale: no hot transaction. A membership change is a write to the node's own item, then
  an atomic ADD to the epoch item (no transaction, so concurrent boots never cancel each
  other). Watchers read the small epoch item each poll and the node list only when it
  moved: O(1) requests per poll at any cluster size.
"""
from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import TYPE_CHECKING

from ..config import REGISTRY_TABLE
from ..errors import CloudError, UserError, explain_client_error
from .ddb_types import deserialize, serialize
from .registry_items import (  # noqa: F401 - the registry's names, in one place
    AVOID_MAX,
    AVOID_SECONDS,
    KEY_PROBLEM,
    LIFECYCLES,
    MEMBERS_INDEX,
    NODE_STATES,
    ROLES,
    Node,
    avoided,
    cluster_key,
    epoch_key,
    master_key,
    node_pk,
    node_problem,
    pool_key,
)
from .session import ClientError, error_code

if TYPE_CHECKING:
    from .session import AwsSession

ROLES_KEPT = 300.0   # s a Registry keeps a cluster's role ids


def _value(v):
    """DynamoDB takes Decimal, not float (rounded: seconds and such need no more)."""
    if isinstance(v, float):
        return Decimal(str(round(v, 3)))
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    return v


def _dump(d: dict) -> dict:
    return {k: serialize(_value(v)) for k, v in d.items() if v is not None}


def _plain(value):
    """DynamoDB numbers come back as Decimal; callers want int (or float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_plain(v) for v in value]
    return value


def _load(item: dict) -> dict:
    return {k: _plain(deserialize(v)) for k, v in item.items()}


class ClusterExists(UserError):
    pass


class NoSuchCluster(UserError):
    pass


class Registry:
    """Cluster, epoch, master-state and node items (see the module docstring)."""

    def __init__(self, session: AwsSession, table: str = REGISTRY_TABLE):
        self.session = session
        self.table = table
        self.ddb = session.client("dynamodb")
        self._roles: dict = {}     # cluster -> (role ids, time.monotonic() until kept)

    # -- table ------------------------------------------------------------------
    def ensure_table(self) -> bool:
        """Create the table on first use (on-demand billing). Returns True if it was created."""
        if self.table_exists():
            return False
        try:
            self.ddb.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"}
                                      for a in ("pk", "sk", "member_of", "instance_id")],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}],
                GlobalSecondaryIndexes=[{
                    "IndexName": MEMBERS_INDEX, "Projection": {"ProjectionType": "ALL"},
                    "KeySchema": [{"AttributeName": "member_of", "KeyType": "HASH"},
                                  {"AttributeName": "instance_id", "KeyType": "RANGE"}]}],
                Tags=[{"Key": "ec2mpi:registry", "Value": "true"}])
        except ClientError as err:
            if error_code(err) != "ResourceInUseException":
                raise explain_client_error("dynamodb:CreateTable", err) from err
        self.ddb.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        return True

    def table_exists(self) -> bool:
        try:
            self.ddb.describe_table(TableName=self.table)
            return True
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return False
            raise explain_client_error("dynamodb:DescribeTable", err) from err

    # -- the client's cluster item ----------------------------------------------
    def create_cluster(self, name: str, spec_json: str, status: str = "creating") -> None:
        """Conditional put of the cluster item, its epoch and its master state; fails with
        ClusterExists if the name is taken."""
        item = {**cluster_key(name), "spec": spec_json, "status": status,
                "created": int(time.time())}
        try:
            self.ddb.put_item(TableName=self.table, Item=_dump(item),
                              ConditionExpression="attribute_not_exists(pk)")
        except ClientError as err:
            if error_code(err) == "ConditionalCheckFailedException":
                raise ClusterExists(f"cluster {name!r} already exists",
                                    f"pick another name, or 'ec2mpi destroy {name}' first") \
                    from None
            raise explain_client_error("dynamodb:PutItem", err) from err
        for key in (epoch_key(name), master_key(name)):
            self._write("dynamodb:PutItem", lambda k=key: self.ddb.put_item(
                TableName=self.table, Item=_dump(k),
                ConditionExpression="attribute_not_exists(pk)"),
                ok=("ConditionalCheckFailedException",))

    def get_cluster(self, name: str) -> dict | None:
        return self._get(cluster_key(name))

    def update_cluster(self, name: str, **attrs) -> None:
        """Set attributes of the cluster item (status, master, ...): the client's own state."""
        try:
            self._set(cluster_key(name), attrs)
        except _Missing:
            raise NoSuchCluster(f"no cluster named {name!r}", "it was destroyed") from None

    def list_clusters(self) -> list[dict]:
        if not self.table_exists():
            return []
        out, kwargs = [], {}
        while True:
            resp = self._call("dynamodb:Scan", lambda kw=kwargs: self.ddb.scan(
                TableName=self.table, FilterExpression="sk = :c",
                ExpressionAttributeValues={":c": {"S": "cluster"}}, ConsistentRead=True, **kw))
            out += [_load(i) for i in resp["Items"]]
            if "LastEvaluatedKey" not in resp:
                return sorted(({**i, "cluster": i["pk"]} for i in out), key=lambda c: c["pk"])
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def delete_cluster(self, name: str) -> int:
        """Delete every item of the cluster; returns how many went."""
        keys = [cluster_key(name), epoch_key(name), master_key(name)]
        keys += [{"pk": n.key, "sk": "node"} for n in self.nodes(name, validate=False)]
        for i in range(0, len(keys), 25):
            batch = [{"DeleteRequest": {"Key": _dump(k)}} for k in keys[i:i + 25]]
            while batch:
                resp = self._call("dynamodb:BatchWriteItem",
                                  lambda b=batch: self.ddb.batch_write_item(
                                      RequestItems={self.table: b}))
                batch = resp.get("UnprocessedItems", {}).get(self.table, [])
        return len(keys)

    # -- epoch and master state -------------------------------------------------
    def epoch(self, name: str) -> int | None:
        """One small consistent read: a watcher's whole steady-state cost."""
        item = self._get(epoch_key(name))
        return None if item is None else int(item.get("epoch", 0))

    def _bump(self, name: str) -> None:
        """Membership moved: one atomic ADD (not a transaction, so writers never cancel each
        other; a retried ADD only costs watchers one extra read)."""
        self._write("dynamodb:UpdateItem", lambda: self.ddb.update_item(
            TableName=self.table, Key=_dump(epoch_key(name)), UpdateExpression="ADD epoch :one",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":one": {"N": "1"}}), gone=name)

    def master_state(self, name: str) -> dict:
        """hostfile_epoch, target size, healing and idle state: what the master keeps."""
        return self._get(master_key(name)) or {}

    def update_master(self, name: str, bump: bool = False, **attrs) -> None:
        """Set attributes of the master state; `bump` when the change concerns membership
        (a new target size), so the master's watcher reads it at its next poll."""
        try:
            self._set(master_key(name), attrs)
        except _Missing:
            raise NoSuchCluster(f"no cluster named {name!r}", "it was destroyed") from None
        if bump:
            self._bump(name)

    # -- nodes ------------------------------------------------------------------
    def nodes(self, name: str, validate: bool = True) -> list[Node]:
        """Every node item of the cluster (the members index). With `validate`, each Node
        carries `problem` when its item cannot be trusted (callers must skip those)."""
        if not validate:
            return self._nodes(name, False, {})
        roles = self.roles(name)
        nodes = self._nodes(name, True, roles)
        if any(n.problem.startswith(KEY_PROBLEM) for n in nodes):
            self._roles.pop(name, None)     # kept ids may be old: ask, judge again if so
            if self.roles(name) != roles:
                nodes = self._nodes(name, True, self.roles(name))
        return nodes

    def roles(self, name: str) -> dict:
        """The role ids the client recorded (node keys name them), from the cluster item;
        kept for ROLES_KEPT seconds: they change only when the cluster's roles are made
        again, and a watcher reading them with every node list paid a request for nothing."""
        now = time.monotonic()
        if name not in self._roles or now >= self._roles[name][1]:
            roles = (self.get_cluster(name) or {}).get("roles", {})
            if not roles:
                return {}          # not recorded yet (a boot waits for them): not kept
            self._roles[name] = (roles, now + ROLES_KEPT)
        return self._roles[name][0]

    def _nodes(self, name: str, validate: bool, roles: dict) -> list[Node]:
        out, kwargs = [], {}
        while True:
            resp = self._call("dynamodb:Query", lambda kw=kwargs: self.ddb.query(
                TableName=self.table, IndexName=MEMBERS_INDEX,
                KeyConditionExpression="member_of = :c",
                ExpressionAttributeValues={":c": {"S": name}}, **kw))
            out += [Node.from_item(_load(i), name if validate else "", roles)
                    for i in resp["Items"]]
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def put_node(self, name: str, node: Node) -> None:
        """Register (or re-register) a node; idempotent. Needs node.key (its own pk)."""
        node.updated = node.heartbeat = int(time.time())
        self._write("dynamodb:PutItem", lambda: self.ddb.put_item(
            TableName=self.table, Item=_dump(node.attributes(name))))
        self._bump(name)

    def set_node_state(self, name: str, node: Node, state: str, reason: str = "") -> bool:
        """Change an existing node's state (ready, draining, lost): a membership change.
        False if the item is gone."""
        if state not in NODE_STATES:
            raise ValueError(state)
        try:
            self._set({"pk": node.key, "sk": "node"},
                      {"state": state, "reason": reason, "updated": int(time.time())})
        except _Missing:
            return False
        node.state, node.reason = state, reason
        self._bump(name)
        return True

    def delete_node(self, name: str, node: Node) -> bool:
        """Remove a node item: a membership change. False if it was not there."""
        try:
            self._call("dynamodb:DeleteItem", lambda: self.ddb.delete_item(
                TableName=self.table, Key=_dump({"pk": node.key, "sk": "node"}),
                ConditionExpression="attribute_exists(pk)"))
        except _Missing:
            return False
        self._bump(name)
        return True

    def heartbeat(self, name: str, node: Node, **extra) -> bool:
        """Liveness (and e.g. open sessions); not a membership change. False when the item
        is gone or the master marked the node lost: then it must register again."""
        try:
            self._set({"pk": node.key, "sk": "node"}, {"heartbeat": int(time.time()), **extra},
                      condition="#s <> :lost", values={":lost": "lost"}, names={"#s": "state"})
            return True
        except _Missing:
            return False

    # -- internals --------------------------------------------------------------
    def _get(self, key: dict) -> dict | None:
        resp = self._call("dynamodb:GetItem", lambda: self.ddb.get_item(
            TableName=self.table, Key=_dump(key), ConsistentRead=True))
        return _load(resp["Item"]) if "Item" in resp else None

    def _set(self, key: dict, attrs: dict, condition: str = "", values: dict | None = None,
             names: dict | None = None) -> None:
        """SET attrs on an existing item (conditionally); _Missing if the condition fails."""
        sets = ", ".join(f"#a{i} = :v{i}" for i in range(len(attrs)))
        cond = "attribute_exists(pk)" + (f" AND {condition}" if condition else "")
        self._call("dynamodb:UpdateItem", lambda: self.ddb.update_item(
            TableName=self.table, Key=_dump(key), UpdateExpression=f"SET {sets}",
            ConditionExpression=cond,
            ExpressionAttributeNames={**{f"#a{i}": k for i, k in enumerate(attrs)},
                                      **(names or {})},
            ExpressionAttributeValues={**{f":v{i}": serialize(_value(v))
                                          for i, v in enumerate(attrs.values())},
                                       **_dump(values or {})}))

    def _call(self, operation: str, call):
        """One request; a failed condition is _Missing, anything else a CloudError."""
        try:
            return call()
        except ClientError as err:
            if error_code(err) == "ConditionalCheckFailedException":
                raise _Missing() from None
            raise explain_client_error(operation, err) from err

    def _write(self, operation: str, call, ok=(), gone: str = "", attempts: int = 8):
        """A write retried with jittered backoff on throttling and conflicts (on top of
        botocore's own retries), so a thousand booting nodes all get through."""
        for attempt in range(attempts):
            try:
                return call()
            except ClientError as err:
                code = error_code(err)
                if code in ok:
                    return None
                if code == "ConditionalCheckFailedException" and gone:
                    raise NoSuchCluster(f"no cluster named {gone!r} in the registry",
                                        "it was destroyed, or never created") from None
                retry = code in ("TransactionConflictException", "ThrottlingException",
                                 "ProvisionedThroughputExceededException",
                                 "RequestLimitExceeded", "InternalServerError")
                if not retry or attempt == attempts - 1:
                    raise explain_client_error(operation, err) from err
                time.sleep(min(5.0, 0.1 * 2 ** attempt) * (0.5 + random.random()))
        raise CloudError(f"{operation} kept failing", "retry later")


def avoid_pools(registry: Registry, name: str, pools, seconds: float = AVOID_SECONDS,
                bump: bool = True) -> dict:
    """Record capacity pools that just refused a launch, (type, AZ, lifecycle): create,
    add-nodes, resize and healing leave them out for `seconds`. The master state's `avoid`
    map is read, merged (expired entries dropped) and written back; a lost race with another
    writer only costs one pool an early retry. Returns the map written."""
    now = time.time()
    merged = avoided(registry.master_state(name), now)
    merged.update({tuple(p): now + seconds for p in pools})
    avoid = {pool_key(p): int(until) for p, until in
             sorted(merged.items(), key=lambda kv: -kv[1])[:AVOID_MAX]}
    registry.update_master(name, bump=bump, avoid=avoid)
    return avoid


class _Missing(Exception):
    """A conditional write found no item (or not in the expected state)."""
