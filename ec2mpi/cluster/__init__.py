"""Cluster orchestration over the aws/ adapters, one module per lifecycle: create, resize,
inspect, destroy (and wait, which create and resize share). `ClusterManager` is the one
entry point; see manager.py."""
from .base import DRAIN_WAIT
from .inspect import HEARTBEAT_LOST_AFTER
from .manager import ClusterManager
from .model import (
                    ClusterStatus,
                    ClusterSummary,
                    CostEstimate,
                    DestroyReport,
                    NodeStatus,
                    PriceLine,
                    ProgressFn,
                    Removal,
)

__all__ = [
                    "DRAIN_WAIT",
                    "HEARTBEAT_LOST_AFTER",
                    "ClusterManager",
                    "ClusterStatus",
                    "ClusterSummary",
                    "CostEstimate",
                    "DestroyReport",
                    "NodeStatus",
                    "PriceLine",
                    "ProgressFn",
                    "Removal",
]
