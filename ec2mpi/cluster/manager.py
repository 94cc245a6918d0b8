"""ClusterManager: the one entry point of the orchestration, over the aws/ adapters.

The client never logs into nodes to configure them. It writes state to AWS and launches
instances; each node's agent pulls what it needs and registers itself. Client cost is
O(1) API calls in the number of nodes. The work lives in one module per lifecycle
(create, resize, inspect, destroy); this class hands each call to its module, with the
Orchestrator (base.py) that holds the session, the lazy adapters and the shared checks.
"""
from __future__ import annotations

from ..aws.session import AwsSession
from ..config import ClusterSpec
from . import create as _create
from . import destroy as _destroy
from . import inspect as _inspect
from . import resize as _resize
from . import wait as _wait
from .base import Orchestrator
from .model import ClusterStatus, CostEstimate, DestroyReport, ProgressFn, Removal, Resize


class ClusterManager:
    """All cluster operations. Every method raises UserError (exit 2) or CloudError (exit 1)."""

    def __init__(self, aws: AwsSession, progress: ProgressFn | None = None):
        self.ops = Orchestrator(aws, progress)   # session, adapters, settings (poll_interval, ...)

    # -- lifecycle (one module each) --------------------------------------------
    # min_nodes (default: all) and spot_fallback: capacity failover, see cluster/capacity.py
    def create(self, spec: ClusterSpec, wait: bool = True, timeout: float = 900.0,
               min_nodes: int | None = None) -> ClusterStatus:
        return _create.create(self.ops, spec, wait, timeout, min_nodes)

    def add_nodes(self, name: str, count: int, wait: bool = True, timeout: float = 900.0,
                  min_nodes: int | None = None, spot_fallback: str | None = None) -> list:
        return _resize.add_nodes(self.ops, name, count, wait, timeout, min_nodes, spot_fallback)

    def resize(self, name: str, target: int, wait: bool = True, timeout: float = 900.0,
               confirm=None, min_nodes: int | None = None,
               spot_fallback: str | None = None) -> Resize:
        return _resize.resize(self.ops, name, target, wait, timeout, confirm, min_nodes,
                              spot_fallback)

    def plan_removal(self, name: str, count: int | None = None,
                     instance_ids: list | None = None) -> Removal:
        return _resize.plan_removal(self.ops, name, count, instance_ids)

    def remove(self, removal: Removal) -> list:
        return _resize.remove(self.ops, removal)

    def wait_ready(self, name: str, ids: list, timeout: float) -> None:
        """Until these nodes are ready and in the master's hostfile (WaitTimeout names the rest)."""
        _wait.wait_ready(self.ops, name, ids, timeout)

    def set_autostop(self, name: str, seconds: int) -> dict:
        """Stop the cluster after `seconds` idle (0: never); the master reads it at once.
        Returns the master state as it now is."""
        self.ops.require(name)
        self.ops.registry.update_master(name, bump=True, autostop=int(seconds))
        return self.ops.registry.master_state(name)

    def status(self, name: str, with_cost: bool = True) -> ClusterStatus:
        return _inspect.status(self.ops, name, with_cost)

    def list_clusters(self) -> list:
        return _inspect.list_clusters(self.ops)

    def cost(self, name: str) -> CostEstimate:
        return _inspect.cost(self.ops, name)

    def hostfile(self, name: str) -> str:
        return _inspect.hostfile(self.ops, name)

    def keys(self, name: str):
        return _inspect.keys(self.ops, name)

    def console_output(self, name: str, instance_id: str) -> str:
        return _inspect.console_output(self.ops, name, instance_id)

    def destroy(self, name: str) -> DestroyReport:
        return _destroy.destroy(self.ops, name)

    def leftovers(self, name: str) -> list:
        return _destroy.leftovers(self.ops, name)
