"""wire.py: every value entry, status run and timestamp parses to exactly what the message-by-
message way builds (the decoders' ValueProtos, Feast's Timestamps)."""

from __future__ import annotations

import math

import pytest
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
from feast.protos.feast.types.Value_pb2 import Value
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feast_redis_hexpire import codec, wire

VALUES = {
    "string_val": ["", "a", "päß 🙂", "x" * 300, "\x00lead", "null\x00in"],
    "json_val": ['{"a": 1}', "[]"],
    "uuid_val": ["123e4567-e89b-12d3-a456-426614174000"],
    "decimal_val": ["3.14159"],
    "bytes_val": [b"", b"\x00\x01", b"\xff" * 200],
    "int64_val": [0, 1, -1, 2**63 - 1, -(2**63), 300],
    "int32_val": [0, -1, 2**31 - 1, -(2**31)],
    "unix_timestamp_val": [0, 1_700_000_000, -5],
    "double_val": [0.0, -0.0, 1.5, 92.4, 1e308, -1e-308, math.inf, -math.inf, math.nan],
    "float_val": [0.0, 1.5, 3.4e38, -1.1754944e-38, math.inf, math.nan],
    "bool_val": [True, False],
}
# Kinds of the installed Feast's Value (json, uuid, decimal came after 0.55).
KINDS = sorted(k for k in VALUES if k in Value.DESCRIPTOR.fields_by_name)


def entry(value: Value) -> bytes:
    return wire.field(wire.VALUES_TAG, value.SerializeToString())


def parsed(entries: list[bytes]) -> GetOnlineFeaturesResponse.FeatureVector:
    vector = GetOnlineFeaturesResponse.FeatureVector()
    vector.ParseFromString(b"".join(entries))
    return vector


@pytest.mark.parametrize("encoding", ["text", "proto"])
@pytest.mark.parametrize("kind", KINDS)
def test_value_entries_parse_to_the_decoders_values(kind, encoding):
    decode = codec.decoder(kind, encoding)
    encode = wire.value_encoder(decode, kind, encoding)
    for item in VALUES[kind]:
        stored = codec.encode_value(Value(**{kind: item}), kind, encoding)
        expected = GetOnlineFeaturesResponse.FeatureVector(values=[decode(stored)])
        assert parsed([encode(stored)]) == expected or (
            isinstance(item, float)
            and math.isnan(item)
            and math.isnan(getattr(parsed([encode(stored)]).values[0], kind))
        ), (kind, item)
    null = codec.encode_value(Value(), kind, encoding)
    assert parsed([encode(null)]) == GetOnlineFeaturesResponse.FeatureVector(values=[Value()])


def test_lists_and_tagged_values_take_the_decoder():
    kind = "int64_list_val"
    decode = codec.decoder(kind)
    encode = wire.value_encoder(decode, kind, "text")
    value = Value()
    value.int64_list_val.val.extend([1, -2, 3])
    stored = codec.encode_value(value, kind)
    assert parsed([encode(stored)]).values[0] == value
    mismatched = codec.encode_value(Value(string_val="not an int"), "int64_val")  # tagged protobuf
    assert parsed([wire.value_encoder(codec.decoder("int64_val"), "int64_val", "text")(mismatched)]).values[
        0
    ] == (Value(string_val="not an int"))


@pytest.mark.parametrize(
    ("kind", "raw"),
    [("int64_val", b"12x"), ("bool_val", b"yes"), ("string_val", b"\xff\xfe"), ("int32_val", b"2147483648")],
)
def test_bad_stored_values_fail_as_the_decoder_does(kind, raw):
    encode = wire.value_encoder(codec.decoder(kind), kind, "text")
    with pytest.raises((ValueError, TypeError)):
        codec.decoder(kind)(raw)
    with pytest.raises((ValueError, TypeError)):
        encode(raw)


def test_stamps_statuses_and_entity_values():
    for us in (0, 1, 999_999, 1_000_000, 1_700_000_000_123_456, -1, -1_500_000):
        vector = parsed([wire.stamp(us)])
        seconds, rest = divmod(us, 1_000_000)
        assert vector.event_timestamps[0] == Timestamp(seconds=seconds, nanos=rest * 1000)
    codes = [FieldStatus.PRESENT, FieldStatus.NOT_FOUND, FieldStatus.OUTSIDE_MAX_AGE, FieldStatus.PRESENT]
    assert list(parsed([wire.statuses(codes)]).statuses) == codes
    assert list(parsed([wire.statuses_all(FieldStatus.NOT_FOUND, 3)]).statuses) == [FieldStatus.NOT_FOUND] * 3
    for value_type, kind, items in (
        (ValueType.STRING, "string_val", ["u1", "ü%:+"]),
        (ValueType.INT64, "int64_val", [0, -(2**63), 2**63 - 1]),
        (ValueType.INT32, "int32_val", [0, -1, 2**31 - 1]),
    ):
        assert parsed(wire.native_values(value_type, items)) == GetOnlineFeaturesResponse.FeatureVector(
            values=[Value(**{kind: v}) for v in items]
        )
