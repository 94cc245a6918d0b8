"""What the registry's items hold and how far to trust them: keys, node states, the Node
item and its validation, the master state's capacity `avoid` map. Nodes write their own
items, so every reader checks them here first (aws/registry.py says who writes what)."""
from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import asdict, dataclass, field, fields

MEMBERS_INDEX = "members"
KEY_PROBLEM = "its key does not name"   # a node item's key and claimed identity disagree
NODE_STATES = ("booting", "ready", "draining", "lost", "failed")   # failed: boot gave up
LIFECYCLES = ("spot", "on-demand")
ROLES = ("master", "worker")
_INSTANCE = re.compile(r"^i-[0-9a-f]{8,17}$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
_ZONE = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+[a-z]$")
AVOID_SECONDS = 600.0      # a pool that refused for capacity is left out this long
AVOID_MAX = 200            # entries kept in the master state's `avoid` map
_AVOID_SEP = "@"


def pool_key(pool) -> str:
    """(type, AZ, lifecycle) -> the avoid map's key."""
    return _AVOID_SEP.join(pool)


def avoided(master_state: dict, now: float | None = None) -> dict:
    """The capacity pools the master state says to avoid: (type, AZ, lifecycle) -> until
    (epoch seconds), unexpired and well-formed entries only (the master writes them too)."""
    now = time.time() if now is None else now
    raw = master_state.get("avoid")
    out: dict = {}
    for key, until in (raw.items() if isinstance(raw, dict) else ()):
        parts = str(key).split(_AVOID_SEP)
        if (len(parts) == 3 and _TYPE.match(parts[0]) and _ZONE.match(parts[1])
                and parts[2] in LIFECYCLES and isinstance(until, (int, float))
                and until > now):
            out[tuple(parts)] = float(until)
    return out


def cluster_key(name: str) -> dict:
    return {"pk": name, "sk": "cluster"}


def epoch_key(name: str) -> dict:
    return {"pk": f"{name}#epoch", "sk": "epoch"}


def master_key(name: str) -> dict:
    return {"pk": f"{name}#master", "sk": "state"}


def node_pk(name: str, role_id: str, instance_id: str) -> str:
    """The node's partition: its role's id and its instance id are the IAM `aws:userid` of
    its instance-role credentials, which the node policy names in dynamodb:LeadingKeys."""
    return f"{name}#node#{role_id}:{instance_id}"


@dataclass
class Node:
    instance_id: str
    role: str                 # master | worker
    private_ip: str
    hostname: str
    slots: int
    lifecycle: str = "spot"   # spot | on-demand
    instance_type: str = ""
    state: str = "booting"    # booting | ready | draining | lost | failed
    heartbeat: int = 0
    updated: int = 0
    reason: str = ""          # why the node is lost or draining, said to the user
    sessions: int = 0         # open SSH sessions on the node (autostop's idle rule)
    image: str = ""           # the image the node booted from
    install_s: float = 0.0    # seconds its boot spent installing (0 on a baked image)
    key: str = field(default="", compare=False)      # its pk; not an attribute
    problem: str = field(default="", compare=False)  # why the item cannot be trusted, or ""

    @classmethod
    def from_item(cls, item: dict, cluster: str = "", roles: dict | None = None) -> Node:
        names = {f.name for f in fields(cls)} - {"key", "problem"}
        node = cls(**{k: v for k, v in item.items() if k in names})
        node.key = str(item.get("pk", ""))
        if cluster:
            node.problem = node_problem(node, cluster, roles or {})
        return node

    def attributes(self, cluster: str) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("key", "problem")}
        return {"pk": self.key, "sk": "node", "member_of": cluster, **data}


def node_problem(node: Node, cluster: str, roles: dict) -> str:
    """Why a node item must not be used ('' if it may). Nodes write their own items, so
    nothing in them reaches ssh_config, a hostfile or a command line unchecked."""
    if not _INSTANCE.match(str(node.instance_id)):
        return "instance id is malformed"
    if node.role not in ROLES:
        return "role is unknown"
    if roles and node.key != node_pk(cluster, roles.get(node.role, "?"), node.instance_id):
        return f"{KEY_PROBLEM} {node.instance_id} with the {node.role} role"
    try:
        if ipaddress.ip_address(node.private_ip).version != 4:
            raise ValueError
    except ValueError:
        return "private IP is not an IPv4 address"
    if not all(_LABEL.match(label) for label in str(node.hostname).split(".")):
        return "hostname is not a DNS name"
    if not isinstance(node.slots, int) or isinstance(node.slots, bool) \
            or not 1 <= node.slots <= 4096:
        return "slots is not a positive number"
    if node.state not in NODE_STATES or node.lifecycle not in LIFECYCLES:
        return "state or lifecycle is unknown"
    if node.instance_type and not _TYPE.match(str(node.instance_type)):
        return "instance type is malformed"
    return ""
