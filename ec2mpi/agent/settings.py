"""Intervals and limits of the node's duties, overridable by environment (tests, the local
cloud): one rule for every settings dataclass, EC2MPI_<PREFIX>_<FIELD NAME> in capitals."""
from __future__ import annotations

import os
from dataclasses import fields, replace


def from_env(cls, prefix: str, **given):
    """cls() with each field set from EC2MPI_<prefix>_<NAME> where that is set (ints stay
    ints), then from `given`."""
    values = {}
    for f in fields(cls):
        raw = os.environ.get(f"EC2MPI_{prefix}_{f.name.upper()}")
        if raw:
            values[f.name] = int(raw) if f.type in ("int", int) else float(raw)
    return replace(cls(), **values, **given)
