"""ClusterManager: the one entry point of the orchestration, over the aws/ adapters.

The client never logs into nodes to configure them. It writes state to AWS and launches
instances; each node's agent pulls what it needs and registers itself. Client cost is
O(1) API calls in the number of nodes. The work lives in one module per lifecycle
(create, resize, inspect, destroy); this class holds the session, the lazy adapters and
the checks they share, and hands each call to its module.
"""
from __future__ import annotations

from ..aws.keystore import KeyStore
from ..aws.registry import NoSuchCluster, Registry
from ..aws.session import AwsSession
from ..config import ClusterSpec
from . import create as _create
from . import destroy as _destroy
from . import inspect as _inspect
from . import resize as _resize
from . import wait as _wait
from .model import ClusterStatus, CostEstimate, DestroyReport, ProgressFn, Removal
from .resize import DRAIN_WAIT


class ClusterManager:
    """All cluster operations. Every method raises UserError (exit 2) or CloudError (exit 1)."""

    poll_interval = 0.5   # seconds between registry reads while waiting (one small query each)
    drain_wait = DRAIN_WAIT   # seconds a removal waits for the master's hostfile to drop nodes

    def __init__(self, aws: AwsSession, progress: ProgressFn | None = None):
        self.aws = aws
        self.progress = progress or (lambda done, total, message: None)
        self._registry: Registry | None = None
        self._keystore: KeyStore | None = None
        self._region: str | None = None
        self._table = False

    # -- lifecycle (one module each) --------------------------------------------
    def create(self, spec: ClusterSpec, wait: bool = True, timeout: float = 900.0) -> ClusterStatus:
        return _create.create(self, spec, wait, timeout)

    def add_nodes(self, name: str, count: int, wait: bool = True, timeout: float = 900.0) -> list:
        return _resize.add_nodes(self, name, count, wait, timeout)

    def plan_removal(self, name: str, count: int | None = None,
                     instance_ids: list | None = None) -> Removal:
        return _resize.plan_removal(self, name, count, instance_ids)

    def remove(self, removal: Removal) -> list:
        return _resize.remove(self, removal)

    def remove_nodes(self, name: str, count: int | None = None,
                     instance_ids: list | None = None) -> list:
        """plan_removal, then remove: what scripts and tests call."""
        return self.remove(self.plan_removal(name, count, instance_ids))

    def wait_ready(self, name: str, ids: list, timeout: float) -> None:
        """Until these nodes are ready and in the master's hostfile (WaitTimeout names the rest)."""
        _wait.wait_ready(self, name, ids, timeout)

    def status(self, name: str, with_cost: bool = True) -> ClusterStatus:
        return _inspect.status(self, name, with_cost)

    def list_clusters(self) -> list:
        return _inspect.list_clusters(self)

    def cost(self, name: str) -> CostEstimate:
        return _inspect.cost(self, name)

    def hostfile(self, name: str) -> str:
        return _inspect.hostfile(self, name)

    def keys(self, name: str):
        return _inspect.keys(self, name)

    def console_output(self, name: str, instance_id: str) -> str:
        return _inspect.console_output(self, name, instance_id)

    def destroy(self, name: str) -> DestroyReport:
        return _destroy.destroy(self, name)

    def leftovers(self, name: str) -> list:
        return _destroy.leftovers(self, name)

    # -- what the modules share --------------------------------------------------
    @property
    def registry(self) -> Registry:
        """Lazy: bad input must fail before any client talks to AWS."""
        if self._registry is None:
            self._registry = Registry(self.aws)
        return self._registry

    @property
    def keystore(self) -> KeyStore:
        if self._keystore is None:
            self._keystore = KeyStore(self.aws)
        return self._keystore

    def table_exists(self) -> bool:
        """The registry table is never deleted by ec2mpi: once seen, skip asking again."""
        if not self._table:
            self._table = self.registry.table_exists()
        return self._table

    def require(self, name: str) -> dict:
        """The cluster item, or a UserError that says how to find the clusters that exist."""
        if not self.table_exists():
            raise NoSuchCluster(f"no cluster named {name!r}",
                                "see 'ec2mpi list' for the clusters that exist")
        return self.registry.require_cluster(name)

    def say(self, done: int, total: int, message: str) -> None:
        self.progress(done, total, message)

    def preflight(self) -> str:
        """Credentials and region, before anything else: returns the region."""
        if self._region is None:
            region = self.aws.region
            self.aws.check_credentials()
            self._region = region
        return self._region
