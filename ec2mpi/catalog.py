"""A small catalogue of instance types: the one static price list of ec2mpi.

vCPUs, memory and us-east-1 Linux on-demand list prices (USD/hour). It helps a user
choose before a cluster exists (completion, the create dialog), and it is the fallback
of `aws/pricing.py` where the Pricing API does not answer. Spot is shown as an estimate
(SPOT_FACTOR of on-demand), and said to be one; a cluster's real spot prices come from
EC2's spot price history.
"""
from __future__ import annotations

SPOT_FACTOR = 0.4

# type: (vCPUs, memory GiB, on-demand USD/h)
INSTANCE_TYPES = {
    "t3.micro": (2, 1, 0.0104),
    "t3.small": (2, 2, 0.0208),
    "t3.medium": (2, 4, 0.0416),
    "t3.large": (2, 8, 0.0832),
    "m5.large": (2, 8, 0.096),
    "m7i.large": (2, 8, 0.1008),
    "c5n.large": (2, 5.25, 0.108),
    "c5.large": (2, 4, 0.085),
    "c5.xlarge": (4, 8, 0.17),
    "c5.2xlarge": (8, 16, 0.34),
    "c5.4xlarge": (16, 32, 0.68),
    "c5n.18xlarge": (72, 192, 3.888),
    "c6a.large": (2, 4, 0.0765),
    "c6a.xlarge": (4, 8, 0.153),
    "c6a.2xlarge": (8, 16, 0.306),
    "c6a.4xlarge": (16, 32, 0.612),
    "c6i.large": (2, 4, 0.085),
    "c6i.xlarge": (4, 8, 0.17),
    "c6i.2xlarge": (8, 16, 0.34),
    "c6i.4xlarge": (16, 32, 0.68),
    "c6i.8xlarge": (32, 64, 1.36),
    "c7i.large": (2, 4, 0.08925),
    "c7i.xlarge": (4, 8, 0.1785),
    "c7i.2xlarge": (8, 16, 0.357),
    "m6i.large": (2, 8, 0.096),
    "m6i.xlarge": (4, 16, 0.192),
    "m6i.2xlarge": (8, 32, 0.384),
    "r6i.large": (2, 16, 0.126),
    "hpc6a.48xlarge": (96, 384, 2.88),
}


def vcpus(instance_type: str) -> int | None:
    info = INSTANCE_TYPES.get(instance_type)
    return info[0] if info else None


def on_demand(instance_type: str) -> float | None:
    """The list price in USD/hour, or None for a type we do not know."""
    info = INSTANCE_TYPES.get(instance_type)
    return info[2] if info else None


def price(instance_type: str, spot: bool = True) -> float | None:
    """Approximate USD/hour, or None for a type we do not know."""
    info = INSTANCE_TYPES.get(instance_type)
    if not info:
        return None
    return round(info[2] * (SPOT_FACTOR if spot else 1.0), 5)


def describe(instance_type: str, spot: bool = True) -> str:
    """'2 vCPU, 4 GiB, ~$0.034/h spot' — the completion meta and dialog hint."""
    info = INSTANCE_TYPES.get(instance_type)
    if not info:
        return "unknown type (price not in the catalogue)"
    kind = "spot" if spot else "on-demand"
    return f"{info[0]} vCPU, {info[1]} GiB, ~${price(instance_type, spot):.3f}/h {kind}"


def estimate_per_hour(instance_types, nodes: int, spot: bool = True) -> float | None:
    """Cost of `nodes` nodes of the first known type in the list (the fleet prefers it)."""
    for t in instance_types:
        p = price(t, spot)
        if p is not None:
            return round(p * nodes, 4)
    return None
