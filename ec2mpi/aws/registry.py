"""The cluster registry: one DynamoDB table per account and region.

Schema (the only definition of it):
  partition key `cluster` (S) = cluster name
  sort key      `item`    (S) = "cluster" for the cluster item, "node#<instance-id>" for nodes
Cluster item: epoch (N), spec (S, JSON), status (S), master (S, instance id), created (N),
              launch_token (S: the create launch's idempotency token, written before the
              launch call),
              hostfile_epoch (N: the epoch the master's hostfile reflects, written by its watcher).
Node item: instance_id, role, private_ip, hostname, slots (N), lifecycle, instance_type,
           state (booting|ready|draining), heartbeat (N), updated (N).

Every membership change (a node added, changing state, or removed) is ONE transaction
that writes the node item and adds exactly 1 to the cluster item's epoch, both
conditional. Watchers poll only the epoch (one small read) and read the node list only
when it moved.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, fields
from decimal import Decimal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from ..config import REGISTRY_TABLE
from ..errors import CloudError, UserError, explain_client_error
from .session import AwsSession, ClientError

CLUSTER_ITEM = "cluster"
NODE_ITEM_PREFIX = "node#"
NODE_STATES = ("booting", "ready", "draining")
_ser, _de = TypeSerializer(), TypeDeserializer()


def _dump(d: dict) -> dict:
    return {k: _ser.serialize(v) for k, v in d.items() if v is not None}


def _plain(value):
    """DynamoDB numbers come back as Decimal; callers want int (or float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _load(item: dict) -> dict:
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


@dataclass
class Node:
    instance_id: str
    role: str                 # master | worker
    private_ip: str
    hostname: str
    slots: int
    lifecycle: str = "spot"   # spot | on-demand
    instance_type: str = ""
    state: str = "booting"
    heartbeat: int = 0
    updated: int = 0

    @classmethod
    def from_item(cls, item: dict) -> Node:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in item.items() if k in names})


class ClusterExists(UserError):
    pass


class NoSuchCluster(UserError):
    pass


class Registry:
    """Cluster and node records, with the epoch that tells watchers membership moved."""

    def __init__(self, session: AwsSession, table: str = REGISTRY_TABLE):
        self.session = session
        self.table = table
        self.ddb = session.client("dynamodb")

    # -- table ------------------------------------------------------------------
    def ensure_table(self) -> bool:
        """Create the table on first use (on-demand billing). Returns True if it was created."""
        try:
            self.ddb.describe_table(TableName=self.table)
            return False
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise explain_client_error("dynamodb:DescribeTable", err) from err
        try:
            self.ddb.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "cluster", "AttributeType": "S"},
                                      {"AttributeName": "item", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "cluster", "KeyType": "HASH"},
                           {"AttributeName": "item", "KeyType": "RANGE"}],
                Tags=[{"Key": "ec2mpi:registry", "Value": "true"}])
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceInUseException":
                raise explain_client_error("dynamodb:CreateTable", err) from err
        self.ddb.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        return True

    def table_exists(self) -> bool:
        try:
            self.ddb.describe_table(TableName=self.table)
            return True
        except ClientError:
            return False

    # -- cluster item -----------------------------------------------------------
    def create_cluster(self, name: str, spec_json: str, status: str = "creating") -> None:
        """Conditional put: fails with ClusterExists if the name is taken."""
        try:
            self.ddb.put_item(
                TableName=self.table,
                Item=_dump(
                    {
                        "cluster": name,
                        "item": CLUSTER_ITEM,
                        "epoch": 0,
                        "spec": spec_json,
                        "status": status,
                        "created": int(time.time()),
                    }
                ),
                ConditionExpression="attribute_not_exists(#c)",
                ExpressionAttributeNames={"#c": "cluster"},
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ClusterExists(
                    f"cluster {name!r} already exists",
                    "pick another name, or 'ec2mpi destroy " + name + "' first",
                ) from None
            raise explain_client_error("dynamodb:PutItem", err) from err

    def get_cluster(self, name: str) -> dict | None:
        resp = self.ddb.get_item(
            TableName=self.table,
            Key=_dump({"cluster": name, "item": CLUSTER_ITEM}),
            ConsistentRead=True,
        )
        return _load(resp["Item"]) if "Item" in resp else None

    def require_cluster(self, name: str) -> dict:
        """The cluster item, or NoSuchCluster (a UserError: exit 2)."""
        item = self.get_cluster(name)
        if item is None:
            raise NoSuchCluster(
                f"no cluster named {name!r}", "see 'ec2mpi list' for the clusters that exist"
            )
        return item

    def update_cluster(self, name: str, **attrs) -> None:
        """Set attributes on the cluster item (status, master, ...). Not a membership change."""
        names = {f"#a{i}": k for i, k in enumerate(attrs)}
        values = {f":v{i}": _ser.serialize(v) for i, v in enumerate(attrs.values())}
        sets = ", ".join(f"#a{i} = :v{i}" for i in range(len(attrs)))
        self._update(name, CLUSTER_ITEM, f"SET {sets}", names, values)

    def set_master(self, name: str, instance_id: str) -> str:
        """Record the master once; returns the master that is recorded (first writer wins)."""
        try:
            self._update(
                name,
                CLUSTER_ITEM,
                "SET #m = :m",
                {"#m": "master"},
                {":m": {"S": instance_id}},
                extra_condition="attribute_not_exists(#m)",
            )
            return instance_id
        except _ConditionFailed:
            return self.get_cluster(name)["master"]

    def epoch(self, name: str) -> int | None:
        """One small consistent read: the watchers' whole steady-state cost."""
        resp = self.ddb.get_item(
            TableName=self.table,
            Key=_dump({"cluster": name, "item": CLUSTER_ITEM}),
            ProjectionExpression="epoch",
            ConsistentRead=True,
        )
        return int(_de.deserialize(resp["Item"]["epoch"])) if "Item" in resp else None

    def list_clusters(self) -> list[dict]:
        if not self.table_exists():
            return []
        out, kwargs = [], {}
        while True:
            resp = self.ddb.scan(TableName=self.table, FilterExpression="#i = :c",
                                 ExpressionAttributeNames={"#i": "item"},
                                 ExpressionAttributeValues={":c": {"S": CLUSTER_ITEM}}, **kwargs)
            out += [_load(i) for i in resp["Items"]]
            if "LastEvaluatedKey" not in resp:
                return sorted(out, key=lambda c: c["cluster"])
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def delete_cluster(self, name: str) -> int:
        """Delete the cluster item and every node item; returns how many items went."""
        keys = [{"cluster": name, "item": CLUSTER_ITEM}] + [
            {"cluster": name, "item": NODE_ITEM_PREFIX + n.instance_id} for n in self.nodes(name)]
        for i in range(0, len(keys), 25):
            batch = [{"DeleteRequest": {"Key": _dump(k)}} for k in keys[i:i + 25]]
            while batch:
                resp = self.ddb.batch_write_item(RequestItems={self.table: batch})
                batch = resp.get("UnprocessedItems", {}).get(self.table, [])
        return len(keys)

    # -- nodes ------------------------------------------------------------------
    def nodes(self, name: str) -> list[Node]:
        out, kwargs = [], {}
        while True:
            resp = self.ddb.query(
                TableName=self.table,
                ConsistentRead=True,
                KeyConditionExpression="#c = :c AND begins_with(#i, :p)",
                ExpressionAttributeNames={"#c": "cluster", "#i": "item"},
                ExpressionAttributeValues={":c": {"S": name}, ":p": {"S": NODE_ITEM_PREFIX}},
                **kwargs,
            )
            out += [Node.from_item(_load(i)) for i in resp["Items"]]
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def put_node(self, name: str, node: Node) -> None:
        """Register (or re-register) a node: a membership change, so the epoch moves by one."""
        node.updated = node.heartbeat = int(time.time())
        put = {
            "Put": {
                "TableName": self.table,
                "Item": _dump(
                    {"cluster": name, "item": NODE_ITEM_PREFIX + node.instance_id, **asdict(node)}
                ),
            }
        }
        self._transact(name, put)

    def set_node_state(self, name: str, instance_id: str, state: str) -> None:
        """Change a node's state (ready, draining, ...): a membership change."""
        if state not in NODE_STATES:
            raise ValueError(state)
        update = {
            "Update": {
                "TableName": self.table,
                "Key": _dump({"cluster": name, "item": NODE_ITEM_PREFIX + instance_id}),
                "UpdateExpression": "SET #s = :s, #u = :u",
                "ConditionExpression": "attribute_exists(#c)",
                "ExpressionAttributeNames": {"#s": "state", "#u": "updated", "#c": "cluster"},
                "ExpressionAttributeValues": _dump({":s": state, ":u": int(time.time())}),
            }
        }
        self._transact(name, update)

    def delete_node(self, name: str, instance_id: str) -> bool:
        """Remove a node item: a membership change. False if it was not there."""
        delete = {
            "Delete": {
                "TableName": self.table,
                "Key": _dump({"cluster": name, "item": NODE_ITEM_PREFIX + instance_id}),
                "ConditionExpression": "attribute_exists(#c)",
                "ExpressionAttributeNames": {"#c": "cluster"},
            }
        }
        try:
            self._transact(name, delete)
            return True
        except _ConditionFailed:
            return False

    def heartbeat(self, name: str, instance_id: str) -> None:
        """Liveness only: not a membership change, the epoch does not move."""
        try:
            self._update(name, NODE_ITEM_PREFIX + instance_id, "SET #h = :h", {"#h": "heartbeat"},
                         {":h": {"N": str(int(time.time()))}})
        except _ConditionFailed:
            pass  # the node was removed meanwhile; nothing to beat for

    # -- internals --------------------------------------------------------------
    def _update(self, name, item, expr, names, values, extra_condition=None):
        cond = "attribute_exists(#c)" + (f" AND {extra_condition}" if extra_condition else "")
        try:
            self.ddb.update_item(TableName=self.table, Key=_dump({"cluster": name, "item": item}),
                                 UpdateExpression=expr, ConditionExpression=cond,
                                 ExpressionAttributeNames={"#c": "cluster", **names},
                                 ExpressionAttributeValues=values)
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise _ConditionFailed() from None
            raise explain_client_error("dynamodb:UpdateItem", err) from err

    def _transact(self, name: str, node_write: dict) -> None:
        """node_write + epoch += 1 on an existing cluster item, atomically; retried on conflicts."""
        bump = {"Update": {
            "TableName": self.table, "Key": _dump({"cluster": name, "item": CLUSTER_ITEM}),
            "UpdateExpression": "ADD #e :one", "ConditionExpression": "attribute_exists(#c)",
            "ExpressionAttributeNames": {"#e": "epoch", "#c": "cluster"},
            "ExpressionAttributeValues": {":one": {"N": "1"}}}}
        for attempt in range(12):
            try:
                self.ddb.transact_write_items(TransactItems=[node_write, bump])
                return
            except ClientError as err:
                code = err.response["Error"]["Code"]
                reasons = [r.get("Code") for r in err.response.get("CancellationReasons", [])]
                if code == "TransactionCanceledException" and "TransactionConflict" in reasons:
                    time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.random())
                    continue
                if (
                    code == "TransactionCanceledException"
                    and reasons
                    and reasons[1] == "ConditionalCheckFailed"
                ):
                    raise NoSuchCluster(f"no cluster named {name!r} in the registry",
                                        "it was destroyed, or never created") from None
                if code == "TransactionCanceledException" and "ConditionalCheckFailed" in reasons:
                    raise _ConditionFailed() from None
                raise explain_client_error("dynamodb:TransactWriteItems", err) from err
        raise CloudError(
            "dynamodb:TransactWriteItems kept conflicting", "too many concurrent writers; retry"
        )


class _ConditionFailed(Exception):
    """A conditional write found the item not in the expected state."""
