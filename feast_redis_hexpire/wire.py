"""Protobuf wire bytes of Feast's read messages, written by hand: a ``GetOnlineFeaturesResponse``
assembled as bytes and parsed once costs a fraction of filling it message by message.

Only the handful of encodings the read path needs: varints, length-delimited fields, the
``Value`` of each stored value, ``Timestamp`` and packed ``FieldStatus`` lists. Field numbers are
read from the generated descriptors at import, so a renumbered field is caught there, not
answered wrongly. A value without a fast form is turned into its ValueProto by the view's own
decoder and serialized (:func:`value_encoder`), so every value parses to exactly what the
decoder would have given.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any

from feast.protos.feast.serving.ServingService_pb2 import (
    FieldStatus,
    GetOnlineFeaturesResponse,
    GetOnlineFeaturesResponseMetadata,
)
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = [
    "NULL_VALUE",
    "entity_values",
    "field",
    "metadata",
    "native_values",
    "null_stamps",
    "statuses",
    "statuses_all",
    "stamp",
    "value_encoder",
    "varint",
    "vector",
]

_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5
_U64 = (1 << 64) - 1


def varint(n: int) -> bytes:
    """A protobuf varint (negative numbers as their 64-bit two's complement, as int32/int64)."""
    n &= _U64
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes([i]) for i in range(0x80)]


def _tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else varint(n)) + payload


def _number(descriptor: Any, name: str) -> int:
    return int(descriptor.fields_by_name[name].number)


_VECTOR = GetOnlineFeaturesResponse.FeatureVector.DESCRIPTOR
VALUES_TAG = _tag(_number(_VECTOR, "values"), _LEN)
STATUSES_TAG = _tag(_number(_VECTOR, "statuses"), _LEN)
STAMPS_TAG = _tag(_number(_VECTOR, "event_timestamps"), _LEN)
RESULTS_TAG = _tag(_number(GetOnlineFeaturesResponse.DESCRIPTOR, "results"), _LEN)
METADATA_TAG = _tag(_number(GetOnlineFeaturesResponse.DESCRIPTOR, "metadata"), _LEN)
_TS_SECONDS = _tag(_number(Timestamp.DESCRIPTOR, "seconds"), _VARINT)
_TS_NANOS = _tag(_number(Timestamp.DESCRIPTOR, "nanos"), _VARINT)

NULL_VALUE = field(VALUES_TAG, b"")  # ValueProto(): what Feast sends for a value not found
NULL_STAMP = field(STAMPS_TAG, b"")  # Timestamp()
STATUS = {status: varint(status) for status in FieldStatus.values()}
assert all(len(code) == 1 for code in STATUS.values())


@functools.lru_cache(maxsize=4096)
def stamp(us: int) -> bytes:
    """One ``event_timestamps`` entry for ``us`` microseconds since the epoch (cached: rows
    written together share their event time, and its two varints cost more than the lookup)."""
    seconds, rest = divmod(us, 1_000_000)
    body = _TS_SECONDS + varint(seconds) if seconds else b""
    if rest:
        body += _TS_NANOS + varint(rest * 1000)
    return field(STAMPS_TAG, body)


def statuses(codes: Sequence[int]) -> bytes:
    """The packed ``statuses`` field."""
    return field(STATUSES_TAG, bytes(codes))  # every FieldStatus is a one-byte varint


@functools.lru_cache(maxsize=1024)
def statuses_all(code: int, n: int) -> bytes:
    """The packed ``statuses`` field of ``n`` times ``code``."""
    return field(STATUSES_TAG, STATUS[code] * n)


@functools.lru_cache(maxsize=1024)
def null_stamps(n: int) -> bytes:
    """``n`` null ``event_timestamps`` entries."""
    return NULL_STAMP * n


def vector(values: Sequence[bytes], status_field: bytes, stamps: bytes) -> bytes:
    """One ``results`` entry of the response: its value entries (each a ``values`` field, see
    :func:`entity_values`), statuses (:func:`statuses`) and timestamps (joined :func:`stamp`)."""
    return field(RESULTS_TAG, b"".join(values) + status_field + stamps)


def metadata(feature_names: Sequence[str], views: Sequence[tuple[str, int]]) -> bytes:
    """The response's ``metadata`` field: feature names and per-view version metadata."""
    meta = GetOnlineFeaturesResponseMetadata()
    meta.feature_names.val.extend(feature_names)
    for name, version in views:
        item = meta.feature_view_metadata.add()
        item.name = name
        item.version = version
    return field(METADATA_TAG, meta.SerializeToString())


def _value_tag(kind: str) -> bytes:
    wire_type = {"double_val": _I64, "float_val": _I32}.get(kind)
    if wire_type is None:
        wire_type = _LEN if ValueProto.DESCRIPTOR.fields_by_name[kind].type in (9, 12) else _VARINT
    return _tag(_number(ValueProto.DESCRIPTOR, kind), wire_type)


_STRING_TAG = _value_tag("string_val")
_INT64_TAG = _value_tag("int64_val")
_INT32_TAG = _value_tag("int32_val")


def _inner(kind: str) -> Callable[[bytes], bytes] | None:
    """The ``Value`` bytes of a plain (text-encoded) value of ``kind``, or None: no fast form."""
    tag = _value_tag(kind) if kind in ValueProto.DESCRIPTOR.fields_by_name else b""
    if kind in ("string_val", "json_val", "uuid_val", "time_uuid_val", "decimal_val"):

        def text(raw: bytes) -> bytes:
            raw.decode("utf-8")  # as the decoder: bad UTF-8 is an error, not a value
            return field(tag, raw)

        return text
    if kind == "bytes_val":
        return lambda raw: field(tag, raw)
    if kind in ("int64_val", "unix_timestamp_val", "int32_val"):
        bound = 1 << (31 if kind == "int32_val" else 63)

        def integer(raw: bytes) -> bytes:
            n = int(raw)
            if not -bound <= n < bound:
                raise ValueError(f"value out of range: {n}")
            return tag + varint(n)

        return integer
    if kind == "double_val":
        return lambda raw: tag + struct.pack("<d", float(raw))
    if kind == "float_val":
        return lambda raw: tag + struct.pack("<f", float(raw))
    if kind == "bool_val":
        true, false = tag + b"\x01", tag + b"\x00"

        def boolean(raw: bytes) -> bytes:
            if raw == b"true":
                return true
            if raw == b"false":
                return false
            raise ValueError(f"not a bool: {raw[:40]!r}")

        return boolean
    return None


def value_encoder(
    decode: Callable[[bytes], ValueProto], kind: str | None, encoding: str
) -> Callable[[bytes], bytes]:
    """Stored bytes -> one ``values`` entry of a FeatureVector, parsing to ``decode(raw)``.

    ``decode`` is the view's decoder of the feature (codec.decoder); it serves every value
    without a fast form here (tagged protobuf values, lists, a layout's own decode step).
    Errors are the decoder's (ValueError / TypeError) for the caller to name."""
    if encoding == "proto":  # stored as Feast's serialized ValueProto: already the bytes

        def stored(raw: bytes) -> bytes:
            decode(raw)  # a value that does not parse fails here, named, not in the response
            return field(VALUES_TAG, raw)

        return stored
    inner = _inner(kind) if encoding == "text" and kind else None

    def general(raw: bytes) -> bytes:
        return field(VALUES_TAG, decode(raw).SerializeToString())

    if inner is None:
        return general

    def encode(raw: bytes) -> bytes:
        if raw[:1] == b"\x00":  # null or a tagged protobuf value
            return general(raw)
        try:
            return field(VALUES_TAG, inner(raw))
        except (ValueError, OverflowError):
            return general(raw)  # the decoder's own answer, or its own error

    return encode


def native_values(value_type: ValueType, values: Sequence[Any]) -> list[bytes]:
    """``values`` entries of plain join-key values: exact ``str`` for STRING, ``int`` in range
    for INT64 / INT32 (read_plan checks), as their ValueProtos serialize."""
    if value_type == ValueType.STRING:
        return [field(VALUES_TAG, field(_STRING_TAG, v.encode("utf-8"))) for v in values]
    tag = _INT64_TAG if value_type == ValueType.INT64 else _INT32_TAG
    return [field(VALUES_TAG, tag + varint(v)) for v in values]


def entity_values(protos: Sequence[ValueProto]) -> list[bytes]:
    """``values`` entries of join-key ValueProtos (the response's entity columns)."""
    return [field(VALUES_TAG, v.SerializeToString()) for v in protos]
