"""Feature values and event timestamps as bytes in a Redis hash field.

The ``text`` encoding follows the seed: a value is stored as readable text and decoded with
the type the feature view declares (the schema is the type information, as in the seed):

=====================================  ==========================================
Feast type                             stored as
=====================================  ==========================================
String, Json, Uuid, TimeUuid, Decimal  the UTF-8 text itself
Bytes (PdfBytes, ImageBytes)           the raw bytes
Int32, Int64, UnixTimestamp            decimal digits (``612``)
Float64                                shortest text that round-trips (``92.4``)
Float32                                shortest text that round-trips as float32
Bool                                   ``true`` / ``false``
Array / Set of the scalars above       a JSON array (bytes items in base64)
null (no value set)                    a single NUL byte
anything else                          NUL, ``P``, then the serialized ValueProto
=====================================  ==========================================

NaN and infinities are written ``NaN``, ``Infinity``, ``-Infinity``. A value whose type does not
match the declared type, or a string or bytes value that itself starts with NUL, falls back to
the tagged protobuf form, so every value round-trips exactly. The ``proto`` encoding stores every
value as a plain serialized ValueProto, as Feast's built-in store does.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Callable

import numpy as np
import pandas as pd
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

from .constants import NULL_VALUE, PACKED_FORMAT, PACKED_TS_OFFSET, PACKED_TS_WIDTH, PROTO_MARKER

__all__ = [
    "INT_RANGES",
    "decode_ts",
    "decode_value",
    "decoder",
    "encode_ts",
    "encode_value",
    "expected_kind",
    "pack_values",
    "packed_head",
    "row_encoder",
    "unpack_columns",
    "unpack_values",
    "value_encoder",
]

_STRING_KINDS = {"string_val", "json_val", "uuid_val", "time_uuid_val", "decimal_val"}
_INT_KINDS = {"int32_val", "int64_val", "unix_timestamp_val"}
_LIST_ITEM = {  # repeated kind -> scalar kind of its items
    f"{base}_{shape}_val": f"{base}_val"
    for base in (
        [
            "bytes",
            "string",
            "int32",
            "int64",
            "double",
            "float",
            "bool",
            "unix_timestamp",
            "uuid",
            "time_uuid",
            "decimal",
        ]
    )
    for shape in ("list", "set")
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)  # a naive datetime means UTC
_MICROSECOND = timedelta(microseconds=1)
_ALIASES = {"pdf_bytes_val": "bytes_val", "image_bytes_val": "bytes_val"}
_ONEOFS = {f.name for f in ValueProto.DESCRIPTOR.oneofs_by_name["val"].fields}
_TEXT_KINDS = (
    _STRING_KINDS
    | _INT_KINDS
    | set(_LIST_ITEM)
    | {
        "bytes_val",
        "double_val",
        "float_val",
        "bool_val",
    }
)


def expected_kind(value_type: ValueType) -> str | None:
    """The ValueProto oneof a feature of this type is written with, if it has a text form."""
    kind = _ALIASES.get(f"{value_type.name.lower()}_val", f"{value_type.name.lower()}_val")
    return kind if kind in _ONEOFS and kind in _TEXT_KINDS else None


def _float_text(value: float, single: bool) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return str(np.float32(value)) if single else repr(value)


def _scalar_to_json(kind: str, item: object) -> str:
    if kind == "bytes_val":
        return json.dumps(base64.b64encode(item).decode("ascii"))  # type: ignore[arg-type]
    if kind in ("double_val", "float_val"):
        return _float_text(item, kind == "float_val")  # type: ignore[arg-type]
    if kind == "bool_val":
        return "true" if item else "false"
    if kind in _INT_KINDS:
        return str(item)
    return json.dumps(item, ensure_ascii=False)


def _scalar_from_json(kind: str, item: object) -> object:
    if kind == "bytes_val":
        return base64.b64decode(item)  # type: ignore[arg-type]
    return item


def _text(kind: str, value: ValueProto) -> bytes:
    item = getattr(value, kind)
    if kind == "bytes_val":
        return item
    if kind in _STRING_KINDS:
        return item.encode("utf-8")
    if kind in _INT_KINDS:
        return str(item).encode("ascii")
    if kind in ("double_val", "float_val"):
        return _float_text(item, kind == "float_val").encode("ascii")
    if kind == "bool_val":
        return b"true" if item else b"false"
    scalar = _LIST_ITEM[kind]
    items = ",".join(_scalar_to_json(scalar, x) for x in item.val)
    return f"[{items}]".encode()


def _from_text(kind: str, raw: bytes) -> ValueProto:
    value = ValueProto()
    if kind == "bytes_val":
        value.bytes_val = raw
    elif kind in _STRING_KINDS:
        setattr(value, kind, raw.decode("utf-8"))
    elif kind in _INT_KINDS:
        setattr(value, kind, int(raw))
    elif kind in ("double_val", "float_val"):
        setattr(value, kind, float(raw))
    elif kind == "bool_val":
        if raw not in (b"true", b"false"):
            raise ValueError(f"not a bool: {raw[:40]!r}")
        value.bool_val = raw == b"true"
    else:
        scalar = _LIST_ITEM[kind]
        container = getattr(value, kind)
        container.SetInParent()  # an empty list is still a list, not a null
        container.val.extend(_scalar_from_json(scalar, x) for x in json.loads(raw))
    return value


def encode_value(value: ValueProto, kind: str | None, encoding: str = "text") -> bytes:
    """Bytes to store for ``value``; ``kind`` is the oneof the feature's declared type uses."""
    if encoding == "proto":
        return value.SerializeToString()
    actual = value.WhichOneof("val")
    if actual is None:
        return NULL_VALUE
    if actual == kind:
        raw = _text(kind, value)
        if not raw.startswith(b"\x00"):
            return raw
    return PROTO_MARKER + value.SerializeToString()


def _double_text(value: float) -> bytes:
    if value - value == 0.0:  # finite: repr is the shortest text that round-trips
        return b"%r" % value
    return _float_text(value, False).encode("ascii")


def _single_text(value: float) -> bytes:
    return _float_text(value, True).encode("ascii")


# The write path's scalar kinds: the stored text of a value of the kind, from the value's field
# (what _text gives). A text that starts with NUL still takes encode_value's tagged form.
_SCALAR_TEXT: dict[str, Callable[[Any], bytes]] = {
    **dict.fromkeys(_STRING_KINDS, str.encode),
    **dict.fromkeys(_INT_KINDS, b"%d".__mod__),
    "bytes_val": bytes,
    "double_val": _double_text,
    "float_val": _single_text,
    "bool_val": (b"false", b"true").__getitem__,
}
_NUL_KINDS = _STRING_KINDS | {"bytes_val"}  # kinds whose text may start with NUL


def row_encoder(
    fields: Mapping[str, tuple[Any, str | None]], encoding: str = "text"
) -> Callable[[Mapping[str, ValueProto]], list[Any]]:
    """The write path's :func:`encode_value` for whole rows, each feature's encoder chosen once.

    ``fields``: feature -> (the name to write it under, its declared kind). The returned function
    turns one row's ``{feature: ValueProto}`` into ``[name, stored bytes, name, ...]`` in the
    row's order, skipping features not in ``fields``; every value's bytes are exactly what
    ``encode_value(value, kind, encoding)`` gives: a value of its declared scalar kind is turned
    into text directly, anything else (another type, null, a list, NUL-leading text) goes
    through encode_value."""
    if encoding == "proto":
        serialize = ValueProto.SerializeToString
        names = {feature: name for feature, (name, _) in fields.items()}

        def proto_pairs(row: Mapping[str, ValueProto]) -> list[Any]:
            pairs: list[Any] = []
            for feature, value in row.items():
                name = names.get(feature)
                if name is not None:
                    pairs += (name, serialize(value))
            return pairs

        return proto_pairs
    # feature -> (name, kind, its field's getter and text (None: encode_value decides every
    # value), whether that text may start with NUL)
    specs: dict[str, tuple[Any, Any, Any, Callable[[Any], bytes] | None, bool]] = {
        feature: (name, kind, attrgetter(kind or "val"), _SCALAR_TEXT.get(kind or ""), kind in _NUL_KINDS)
        for feature, (name, kind) in fields.items()
    }

    def pairs_of(row: Mapping[str, ValueProto]) -> list[Any]:
        pairs: list[Any] = []
        append = pairs.append
        for feature, value in row.items():
            spec = specs.get(feature)
            if spec is None:
                continue
            name, kind, get, text, nul = spec
            if text is None:
                raw = encode_value(value, kind, encoding)
            else:
                # A oneof member holding a non-default value is the one set, so only a default
                # (0, "", False) asks which member is set.
                item = get(value)
                if item or value.WhichOneof("val") == kind:
                    raw = text(item)
                    if nul and raw[:1] == b"\x00":
                        raw = encode_value(value, kind, encoding)
                else:
                    raw = encode_value(value, kind, encoding)
            append(name)
            append(raw)
        return pairs

    return pairs_of


def decode_value(raw: bytes, kind: str | None, encoding: str = "text") -> ValueProto:
    """The ValueProto that :func:`encode_value` turned into ``raw``."""
    if encoding == "proto":
        value = ValueProto()
        value.ParseFromString(raw)
        return value
    if raw == NULL_VALUE:
        return ValueProto()
    if raw.startswith(PROTO_MARKER) or kind is None:
        value = ValueProto()
        value.ParseFromString(raw.removeprefix(PROTO_MARKER))
        return value
    return _from_text(kind, raw)


# The integers a feature (or join key) of these types holds.
INT_RANGES = {ValueType.INT64: range(-(2**63), 2**63), ValueType.INT32: range(-(2**31), 2**31)}
_INT64, _INT32 = INT_RANGES[ValueType.INT64], INT_RANGES[ValueType.INT32]

# Python values a feature's bytes are made of without Feast's converter: (value type, the value's
# exact type) -> (whether the value takes this way, its text: the write path's _SCALAR_TEXT). The
# bytes are exactly what encode_value writes for the ValueProto Feast's converter makes of the
# value. Others take the converter: a NaN and empty bytes (Feast makes them a null), an integer
# out of range (Feast refuses it), a string or bytes starting with NUL (stored tagged in text).
_DIRECT: dict[tuple[ValueType, type], tuple[Callable[[Any], bool], Callable[[Any], bytes]]] = {
    (ValueType.STRING, str): (lambda v: v[:1] != "\x00", _SCALAR_TEXT["string_val"]),
    (ValueType.BYTES, bytes): (lambda v: v != b"" and v[:1] != b"\x00", _SCALAR_TEXT["bytes_val"]),
    (ValueType.INT64, int): (lambda v: v in _INT64, _SCALAR_TEXT["int64_val"]),
    (ValueType.INT32, int): (lambda v: v in _INT32, _SCALAR_TEXT["int32_val"]),
    (ValueType.DOUBLE, float): (lambda v: v == v, _SCALAR_TEXT["double_val"]),
    (ValueType.BOOL, bool): (lambda v: True, _SCALAR_TEXT["bool_val"]),
}


def value_encoder(value_type: ValueType, encoding: str = "text") -> Callable[[Any], bytes]:
    """For one feature of ``value_type``: a function from a Python value to the bytes the store
    writes for it, byte for byte ``encode_value`` of the ValueProto Feast's converter
    (``python_values_to_proto_values``) makes of that value. A str, bytes, int, float or bool of
    the feature's own type skips the converter (and, in the ``text`` encoding, the ValueProto);
    any other value goes through it. A value that does not convert raises what the converter
    raises (TypeError, ValueError, OverflowError)."""
    kind = expected_kind(value_type)
    direct = {exact: way for (vt, exact), way in _DIRECT.items() if vt == value_type}

    def convert(value: Any) -> bytes:
        return encode_value(python_values_to_proto_values([value], value_type)[0], kind, encoding)

    if kind is None or not direct:
        return convert
    field: str = kind

    if encoding == "text":

        def encode(value: Any) -> bytes:
            way = direct.get(type(value))
            return way[1](value) if way is not None and way[0](value) else convert(value)

        return encode

    def encode_proto(value: Any) -> bytes:
        way = direct.get(type(value))
        if way is not None and way[0](value):
            return ValueProto(**{field: value}).SerializeToString()
        return convert(value)

    return encode_proto


# The read path's common kinds, decoded without the general dispatch of decode_value.
_PLAIN: dict[str, Callable[[bytes], ValueProto]] = {
    "string_val": lambda raw: ValueProto(string_val=raw.decode("utf-8")),
    "int64_val": lambda raw: ValueProto(int64_val=int(raw)),
    "int32_val": lambda raw: ValueProto(int32_val=int(raw)),
    "unix_timestamp_val": lambda raw: ValueProto(unix_timestamp_val=int(raw)),
    "double_val": lambda raw: ValueProto(double_val=float(raw)),
    "float_val": lambda raw: ValueProto(float_val=float(raw)),
    "bytes_val": lambda raw: ValueProto(bytes_val=raw),
}


def decoder(kind: str | None, encoding: str = "text") -> Callable[[bytes], ValueProto]:
    """``decode_value`` for one feature, specialised once so each read skips the dispatch."""
    plain = _PLAIN.get(kind or "") if encoding == "text" else None
    if plain is None:
        return lambda raw: decode_value(raw, kind, encoding)

    def decode(raw: bytes) -> ValueProto:
        return decode_value(raw, kind, encoding) if raw[:1] == b"\x00" else plain(raw)

    return decode


def encode_ts(ts: datetime) -> int:
    """Event time as integer microseconds since the epoch; a naive datetime means UTC."""
    if isinstance(ts, pd.Timestamp):  # its nanoseconds since the epoch (UTC), floored as below
        return int(ts.value) // 1000
    return (ts - (_NAIVE_EPOCH if ts.tzinfo is None else _EPOCH)) // _MICROSECOND


def decode_ts(raw: bytes | int) -> datetime:
    """The event time of a ``_ts`` field's digits, or of a packed value's microseconds."""
    return _EPOCH + timedelta(microseconds=int(raw))


# ---- value_layout: packed (the framing is described in the module docstring) ----

_MISSING = b"\x00"


def packed_head(features: Sequence[str], encoding: str) -> bytes:
    """The first bytes of every packed value of a view: the format byte and the fingerprint of
    its value ``encoding`` and feature names in declared order. Types are not in it: a retyped
    feature decodes with its new type, as in the fields layout (or fails naming it)."""
    text = "\n".join([encoding, *features])
    return PACKED_FORMAT + zlib.crc32(text.encode()).to_bytes(4, "big")


def _varint(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while n >= 128:
        out.append(n & 127 | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def pack_values(head: bytes, ts_us: int, encoded: Sequence[bytes | None]) -> bytes:
    """One packed value: ``head``, the event time ``ts_us`` and each feature's stored bytes
    (:func:`encode_value`), or None for a feature the row does not have."""
    parts = [head, (ts_us + PACKED_TS_OFFSET).to_bytes(PACKED_TS_WIDTH, "big")]
    for raw in encoded:
        if raw is None:
            parts.append(_MISSING)
        else:
            parts.append(_varint(len(raw) + 1))
            parts.append(raw)
    return b"".join(parts)


def _entries(raw: bytes, pos: int) -> tuple[list[bytes | None], int]:
    """The entries of a packed value from ``pos`` (after the event time), and where they end."""
    values: list[bytes | None] = []
    append = values.append
    end = len(raw)
    while pos < end:
        n = raw[pos]
        pos += 1
        if n >= 128:  # a value of 127 bytes or more: the varint goes on
            n &= 127
            shift = 7
            while True:
                byte = raw[pos]
                pos += 1
                n |= (byte & 127) << shift
                if byte < 128:
                    break
                shift += 7
        if n:
            n += pos - 1
            append(raw[pos:n])
            pos = n
        else:
            append(None)
    return values, pos


def _not_packed(head: bytes) -> ValueError:
    return ValueError(
        f"not a value of value_layout: packed (format byte {head[:1]!r}); was it written with "
        f"value_layout: fields?"
    )


def unpack_values(raw: bytes, head: bytes, count: int) -> tuple[int, list[bytes | None]] | None:
    """(event time in microseconds, each feature's stored bytes or None when missing) of a packed
    value; None when it was packed for another feature list or value encoding (see packed_head).
    ValueError when ``raw`` is not a packed value of this format."""
    if raw[:1] != head[:1]:
        raise _not_packed(head)
    if not raw.startswith(head):
        return None
    start = len(head) + PACKED_TS_WIDTH
    values, pos = _entries(raw, start)
    if start > len(raw) or pos != len(raw) or len(values) != count:
        raise ValueError(f"truncated packed value ({len(values)} of {count} features)")
    return int.from_bytes(raw[len(head) : start], "big") - PACKED_TS_OFFSET, values


def unpack_columns(
    packed: Sequence[bytes | None], head: bytes, count: int, wanted: Sequence[int]
) -> tuple[list[int | None], list[list[bytes | None]], list[int]]:
    """The read path's decode step for packed views: from each entity's packed value (None: the
    view's field is missing), the event time per entity (integer microseconds, which the
    response builder takes as it takes a ``_ts`` field's digits) and, per wanted feature (its
    position among the view's ``count`` features), its stored bytes per entity (None: missing),
    as the fields layout's HMGET replies give them. Entities whose value was packed for another
    feature list read as not found; their positions are returned too. A value that is not
    packed raises ValueError (with the entity's position in ``args[1]``)."""
    ts_raw: list[int | None] = []
    rows: list[list[bytes | None] | None] = []
    stale: list[int] = []
    size = len(head)
    start = size + PACKED_TS_WIDTH
    from_bytes = int.from_bytes
    for i, raw in enumerate(packed):
        if raw is None:
            ts_raw.append(None)
            rows.append(None)
            continue
        if not raw.startswith(head):
            if raw[:1] != head[:1]:
                raise ValueError(str(_not_packed(head)), i)
            stale.append(i)
            ts_raw.append(None)
            rows.append(None)
            continue
        try:
            values, pos = _entries(raw, start)
        except IndexError:
            pos = -1
        if pos != len(raw) or len(values) != count:
            raise ValueError(f"truncated packed value ({len(values)} of {count} features)", i)
        ts_raw.append(from_bytes(raw[size:start], "big") - PACKED_TS_OFFSET)
        rows.append(values)
    columns = [[None if row is None else row[j] for row in rows] for j in wanted]
    return ts_raw, columns, stale
