"""DynamoDB attribute values <-> Python, as boto3's TypeSerializer maps them, for the types
the registry stores. Here rather than boto3's own because importing anything under boto3
imports all of boto3 and s3transfer (~0.15 CPU-s), and a booting node needs none of that.

Numbers go in as int or Decimal and come out as Decimal (callers make floats Decimal first:
DynamoDB takes no float); binary values are not used.
"""
from __future__ import annotations

from decimal import Decimal


def serialize(value) -> dict:
    """One Python value as a DynamoDB attribute value ({"S": ...}, {"N": ...}, ...)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):      # before int: True is an int too
        return {"BOOL": value}
    if isinstance(value, (int, Decimal)):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {str(k): serialize(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [serialize(v) for v in value]}
    if isinstance(value, (set, frozenset)) and value:
        if all(isinstance(v, str) for v in value):
            return {"SS": sorted(value)}
        if all(isinstance(v, (int, Decimal)) and not isinstance(v, bool) for v in value):
            return {"NS": [str(v) for v in value]}
    raise TypeError(f"no DynamoDB type for {type(value).__name__} value {value!r}")


def deserialize(attr: dict):
    """One DynamoDB attribute value as Python (numbers as Decimal, sets as set)."""
    (kind, value), = attr.items()
    if kind == "S":
        return value
    if kind == "N":
        return Decimal(value)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: deserialize(v) for k, v in value.items()}
    if kind == "L":
        return [deserialize(v) for v in value]
    if kind == "SS":
        return set(value)
    if kind == "NS":
        return {Decimal(v) for v in value}
    raise TypeError(f"unsupported DynamoDB attribute type {kind!r}")
