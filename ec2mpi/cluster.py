"""Cluster orchestration: create / add / remove / status / destroy, over the aws/ adapters.

CONTRACT (filled in by the control-plane work; the CLI and shell code against it):
the client never logs into nodes to configure them. It writes state to AWS and launches
instances; each node's agent pulls what it needs and registers itself. Client cost is
O(1) API calls in the number of nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .aws.session import AwsSession
from .config import ClusterSpec

# progress(done, total, message): called while waiting; must be cheap and never raise.
Progress = Callable[[int, int, str], None]


@dataclass
class NodeStatus:
    instance_id: str
    role: str                     # master | worker
    instance_type: str
    lifecycle: str                # spot | on-demand
    private_ip: str
    public_ip: str
    state: str                    # booting | ready | draining | pending | lost | terminated
    slots: int
    hostname: str = ""
    heartbeat_age: Optional[float] = None   # seconds since the node's last heartbeat


@dataclass
class CostEstimate:
    per_hour: float               # USD per hour for the whole cluster
    by_type: dict = field(default_factory=dict)   # instance type -> (count, unit price, lifecycle)
    source: str = ""              # where the prices came from, said to the user


@dataclass
class ClusterStatus:
    name: str
    status: str                   # creating | ready | destroying | ...
    spec: ClusterSpec
    epoch: int
    nodes: list = field(default_factory=list)   # list[NodeStatus], master first
    cost: Optional[CostEstimate] = None

    @property
    def ready(self) -> int:
        return sum(1 for n in self.nodes if n.state == "ready")

    @property
    def master(self) -> Optional[NodeStatus]:
        return next((n for n in self.nodes if n.role == "master"), None)


@dataclass
class ClusterSummary:
    name: str
    status: str
    nodes: int
    ready: int
    created: int


@dataclass
class DestroyReport:
    removed: dict = field(default_factory=dict)   # kind -> list of ids/names removed
    leftovers: list = field(default_factory=list)  # anything tagged that could not be removed (should be empty)


class ClusterManager:
    """All cluster operations. Every method raises UserError (exit 2) or CloudError (exit 1)."""

    def __init__(self, aws: AwsSession, progress: Optional[Progress] = None):
        self.aws = aws
        self.progress = progress or (lambda done, total, message: None)

    def create(self, spec: ClusterSpec, wait: bool = True, timeout: float = 900.0) -> ClusterStatus:
        raise NotImplementedError

    def add_nodes(self, name: str, count: int, wait: bool = True, timeout: float = 900.0) -> list:
        raise NotImplementedError

    def remove_nodes(self, name: str, count: Optional[int] = None, instance_ids: Optional[list] = None) -> list:
        raise NotImplementedError

    def status(self, name: str) -> ClusterStatus:
        raise NotImplementedError

    def list_clusters(self) -> list:
        raise NotImplementedError

    def destroy(self, name: str) -> DestroyReport:
        raise NotImplementedError

    def cost(self, name: str) -> CostEstimate:
        raise NotImplementedError

    def hostfile(self, name: str) -> str:
        raise NotImplementedError

    def keys(self, name: str):
        """The cluster's ClusterKeys (identity + host key) from the key store, for client SSH."""
        raise NotImplementedError

    def console_output(self, name: str, instance_id: str) -> str:
        raise NotImplementedError
