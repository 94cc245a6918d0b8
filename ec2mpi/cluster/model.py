"""What the orchestration reports: plain dataclasses, shared by the CLI, the shell and --json."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..config import ClusterSpec

# progress(done, total, message): called while working or waiting; cheap, never raises.
ProgressFn = Callable[[int, int, str], None]


@dataclass
class NodeStatus:
    instance_id: str
    role: str                     # master | worker
    instance_type: str
    lifecycle: str                # spot | on-demand
    private_ip: str
    public_ip: str
    state: str                    # booting | ready | draining | pending | lost | invalid
    slots: int
    hostname: str = ""
    heartbeat_age: float | None = None   # seconds since the node's last heartbeat
    reason: str = ""              # why it is lost, draining or invalid
    image: str = ""               # the image it booted from
    install_s: float = 0.0        # seconds its boot spent installing (0 on a baked image)


@dataclass(frozen=True)
class PriceLine:
    """`count` nodes of one instance type and lifecycle, at `unit` USD/h each (None: unknown)."""
    instance_type: str
    lifecycle: str                # spot | on-demand
    count: int
    unit: float | None

    @property
    def per_hour(self) -> float | None:
        return None if self.unit is None else self.unit * self.count


@dataclass
class CostEstimate:
    per_hour: float               # USD per hour for the whole cluster (unknown prices count 0)
    lines: list = field(default_factory=list)   # list[PriceLine], by type then lifecycle
    source: str = ""              # where the prices came from, said to the user

    @property
    def complete(self) -> bool:
        """Every line has a known price."""
        return all(line.unit is not None for line in self.lines)


@dataclass
class ClusterStatus:
    name: str
    status: str                   # creating | ready | destroying | ...
    spec: ClusterSpec
    epoch: int
    nodes: list = field(default_factory=list)   # list[NodeStatus], master first
    cost: CostEstimate | None = None
    master_state: dict = field(default_factory=dict)   # target size, healing, autostop
    notice: str = ""              # a line for the user (e.g. create found it already made)
    launch: LaunchReport | None = None   # what create's launch got, when capacity ran short
    storage_month: float | None = None   # USD/month a stopped cluster still costs (storage)

    @property
    def stopped(self) -> bool:
        """Autostop stopped it, and no node runs (a resize brings it back)."""
        return bool(self.master_state.get("stopped_at")) and not any(
            n.state in ("ready", "booting", "pending", "draining") for n in self.nodes)

    @property
    def ready(self) -> int:
        return sum(1 for n in self.nodes if n.state == "ready")

    @property
    def master(self) -> NodeStatus | None:
        return next((n for n in self.nodes if n.role == "master"), None)


@dataclass
class LaunchReport:
    """What a launch of create, add-nodes or resize got when capacity ran short."""
    asked: int                    # nodes the command launched for
    launched: int                 # nodes it got
    spot: int = 0
    on_demand: int = 0            # of those, on-demand because spot ran out (--spot-fallback)
    failed: list = field(default_factory=list)   # [type, AZ, lifecycle, error code] refused
    tried: str = ""               # the pools tried, said to the user
    keeps_trying: bool = False    # keep-size: the master launches the missing ones
    per_hour: float | None = None  # the cluster's cost per hour after the launch

    @property
    def missing(self) -> int:
        return max(0, self.asked - self.launched)

    @property
    def eventful(self) -> bool:
        """Worth a line to the user: a pool refused or nodes are missing."""
        return bool(self.failed or self.missing)


class NodeIds(list):
    """The instance ids add-nodes launched (a list), with its LaunchReport as `launch`."""
    launch: LaunchReport | None = None


@dataclass
class ClusterSummary:
    name: str
    status: str
    nodes: int
    ready: int
    created: int


@dataclass(frozen=True)
class Removal:
    """Which nodes a removal takes (by plan_removal's one rule) and what they cost now."""
    cluster: str
    instance_ids: tuple
    nodes: tuple                  # their NodeStatus, in the same order
    per_hour: float               # USD/h saved (lost nodes bill nothing)


@dataclass
class Resize:
    """What a resize did: nodes added and removed to reach `target` from `before`."""
    cluster: str
    target: int
    before: int
    added: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    cancelled: bool = False
    launch: LaunchReport | None = None   # what its launch got, when capacity ran short


@dataclass
class DestroyReport:
    removed: dict = field(default_factory=dict)   # kind -> list of ids/names removed
    leftovers: list = field(default_factory=list)  # anything tagged that could not be removed


def run_steps(steps, progress: ProgressFn) -> None:
    """Run (label, step) pairs in order; after each, report k/len(steps) with its label.

    One list drives both the work and the progress bar, so the count cannot drift."""
    for k, (label, step) in enumerate(steps, 1):
        message = step()
        progress(k, len(steps), message if isinstance(message, str) else label)
