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

    @property
    def ready(self) -> int:
        return sum(1 for n in self.nodes if n.state == "ready")

    @property
    def master(self) -> NodeStatus | None:
        return next((n for n in self.nodes if n.role == "master"), None)


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
