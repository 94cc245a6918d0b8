"""The registry's attribute values map as boto3's TypeSerializer maps them."""
from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from ec2mpi.aws.ddb_types import deserialize, serialize

VALUES = [
    "ip-10-0-0-1", "", 0, 7, -3, Decimal("0.125"), True, False, None,
    {"roles": {"master": "AROA1", "worker": "AROA2"}, "target": 4, "price": Decimal("0.0425")},
    ["a", 1, {"b": [True, None]}], [], {}, {"x", "y"}, {1, 2},
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:30] for v in VALUES])
def test_a_value_maps_as_boto3_maps_it(value):
    ours, boto = serialize(value), TypeSerializer().serialize(value)
    if "SS" in ours or "NS" in ours:        # a set's order is its own
        kind = next(iter(ours))
        assert kind in boto and sorted(ours[kind]) == sorted(boto[kind])
    else:
        assert ours == boto
    assert deserialize(ours) == TypeDeserializer().deserialize(boto)


def test_floats_empty_sets_and_types_the_registry_never_stores_are_refused():
    for value in (1.5, set(), b"binary", object()):     # floats: callers make them Decimal
        with pytest.raises(TypeError):
            serialize(value)
