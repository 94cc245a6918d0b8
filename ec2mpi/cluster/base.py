"""What the lifecycle modules share: the AWS session, the lazy adapters, progress and the
checks every operation starts with. ClusterManager owns one; each module function takes it."""
from __future__ import annotations

from ..aws.keystore import KeyStore
from ..aws.registry import NoSuchCluster, Registry
from ..aws.session import AwsSession
from .model import ProgressFn

DRAIN_WAIT = 30.0   # s a removal waits for the master's hostfile before terminating


class Orchestrator:
    """The session, lazy adapters and shared checks of one ClusterManager."""

    def __init__(self, aws: AwsSession, progress: ProgressFn | None = None):
        self.aws = aws
        self.progress = progress or (lambda done, total, message: None)
        self.poll_interval = 0.5      # s between registry reads while waiting (one small read each)
        self.drain_wait = DRAIN_WAIT
        self._registry: Registry | None = None
        self._keystore: KeyStore | None = None
        self._region: str | None = None
        self._table = False

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

    def table_made(self) -> None:
        """create made (or found) the registry table."""
        self._table = True

    def table_exists(self) -> bool:
        """The registry table is never deleted by ec2mpi: once seen, skip asking again."""
        if not self._table:
            self._table = self.registry.table_exists()
        return self._table

    def require(self, name: str) -> dict:
        """The cluster item, or a UserError that says how to find the clusters that exist."""
        item = self.registry.get_cluster(name) if self.table_exists() else None
        if item is None:
            raise NoSuchCluster(f"no cluster named {name!r}",
                                "see 'ec2mpi list' for the clusters that exist")
        return item

    def say(self, done: int, total: int, message: str) -> None:
        self.progress(done, total, message)

    def preflight(self) -> str:
        """Credentials and region, before anything else: returns the region."""
        if self._region is None:
            region = self.aws.region
            self.aws.check_credentials()
            self._region = region
        return self._region
