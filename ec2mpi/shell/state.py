"""What the shell knows about the clusters, refreshed in a background thread.

The prompt, toolbar and completer only read this snapshot; they never call AWS, so
typing never waits on the network.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from .. import userdirs


class LiveState:
    """Cluster names and the current cluster's status, refreshed every `interval` seconds."""

    def __init__(self, make_manager: Callable[[], object], interval: float = 15.0):
        self._make_manager = make_manager
        self.interval = interval
        self.clusters: list[str] = []
        self.current: str | None = userdirs.last_cluster()
        self.status = None                  # ClusterStatus of `current`, or None
        self.error: str | None = None    # why the last refresh failed, one line
        self.updated: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._manager = None

    # the snapshot readers use
    def node_names(self) -> list[str]:
        from ..output import node_labels
        st = self.status
        if st is None:
            return []
        return node_labels(st.nodes) + [n.instance_id for n in st.nodes]

    def refresh(self) -> None:
        """One refresh; failures are kept as `error`, never raised (this runs in the background)."""
        try:
            if self._manager is None:
                self._manager = self._make_manager()
            names = sorted(s.name for s in self._manager.list_clusters())
            last = userdirs.last_cluster()
            current = last if last in names else (names[0] if len(names) == 1 else None)
            status = self._manager.status(current) if current else None
            self.clusters, self.current, self.status = names, current, status
            self.error, self.updated = None, time.time()
        except BaseException as exc:  # noqa: BLE001 - a background thread must survive anything
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.error = msg.splitlines()[0] if msg else type(exc).__name__
            self.current = userdirs.last_cluster()

    def start(self, on_change: Callable[[], None]) -> None:
        def loop():
            while not self._stop.is_set():
                self.refresh()
                try:
                    on_change()
                except Exception:  # noqa: BLE001, S110
                    pass
                self._wake.wait(self.interval)
                self._wake.clear()
        self._thread = threading.Thread(target=loop, name="ec2mpi-shell-refresh", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Refresh soon (after a command changed something)."""
        self.current = userdirs.last_cluster() or self.current
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
