"""Key and field names: where each entity and each feature lives in Redis.

One hash per entity::

    <key_prefix><entity>:<id>             fs:user:u0001
    <key_prefix><jk1>+<jk2>:<id1>:<id2>   fs:merchant_id+user_id:m7:u0001   (compound entity)

``<entity>`` is the entity's name when the view has one entity with one join key; for a compound
entity it is the join-key names, sorted, joined by ``+``, with the ids in the same order. An id is
written as text (integers as digits, bytes as ``0x`` + hex) with ``%``, ``:``, ``+``, braces, glob
characters, backslash and control characters percent-escaped, so keys are injective within an
entity whose join-key type does not change, and no id can change a SCAN pattern or a cluster hash
slot. Fields are named by the feature (``risk_segment``), or ``<view>:<feature>`` where another
view of the entity owns the name or ``field_names: view_feature`` is set (naming.py), plus one
``_ts:<view>`` event-timestamp field per view.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from .constants import COMPOUND_SEPARATOR, KEY_SEPARATOR, TS_FIELD_PREFIX

__all__ = [
    "ESCAPED",
    "KeyBuilder",
    "entity_segment",
    "escape_id",
    "id_text",
    "scan_pattern",
    "ts_field",
]

ESCAPED = "%:+{}*?[]\\" + "".join(chr(c) for c in range(0x20)) + "\x7f"  # characters escape_id escapes
_ESCAPE_TABLE = str.maketrans({c: f"%{ord(c):02X}" for c in ESCAPED})
_GLOB = re.compile(r"([*?\[\]\\])")


def escape_id(text: str) -> str:
    """Percent-escape the characters that would make a key ambiguous or glob-active."""
    return text.translate(_ESCAPE_TABLE)


def id_text(value: ValueProto) -> str:
    kind = value.WhichOneof("val")
    if kind == "string_val":
        return escape_id(value.string_val)
    if kind in ("int64_val", "int32_val"):
        return str(getattr(value, kind))
    if kind == "bytes_val":
        return "0x" + value.bytes_val.hex()
    if kind is None:
        raise ValueError("entity key has a null join-key value")
    raise ValueError(f"entity key join-key type {kind} is not supported (use string or int)")


def entity_segment(entity_names: Sequence[str], join_keys: Sequence[str]) -> str:
    """The ``<entity>`` part of a key for a view with these entities and join keys.

    A Feast entity has one join key, so a one-entity view is named by its entity (this also
    works for a view object whose join keys Feast has not inferred yet)."""
    if len(entity_names) == 1:
        return escape_id(entity_names[0])
    return COMPOUND_SEPARATOR.join(escape_id(k) for k in sorted(join_keys))


class KeyBuilder:
    """Builds the hash key of each entity of one view; the prefix work is done once."""

    def __init__(self, prefix: str, entity_names: Sequence[str]) -> None:
        self.prefix = prefix
        self.entity_names = list(entity_names)
        # One entity: every key is `head` + the escaped id, so that part is built once.
        self.head = f"{prefix}{escape_id(entity_names[0])}:" if len(entity_names) == 1 else None

    def key(self, entity_key: EntityKeyProto) -> bytes:
        join_keys = entity_key.join_keys
        values = entity_key.entity_values
        if len(join_keys) == 1:
            if self.head is not None:
                return (self.head + id_text(values[0])).encode("utf-8")
            segment = entity_segment(self.entity_names, join_keys)
            return f"{self.prefix}{segment}:{id_text(values[0])}".encode()
        pairs = sorted(zip(join_keys, values), key=lambda p: p[0])
        segment = entity_segment(self.entity_names, [k for k, _ in pairs])
        ids = KEY_SEPARATOR.join(id_text(v) for _, v in pairs)
        return f"{self.prefix}{segment}:{ids}".encode()

    def id_key(self, text: str) -> bytes:
        """A one-entity view's key (``head`` set) of an id given as its unescaped text: a string
        id, or an integer's decimal digits (which escape_id leaves as they are)."""
        assert self.head is not None
        # no escaped character is alphanumeric
        return (self.head + (text if text.isalnum() else text.translate(_ESCAPE_TABLE))).encode()

    def keys(self, entity_keys: Iterable[EntityKeyProto]) -> list[bytes]:
        """:meth:`key` of each; a one-entity view's string ids take a short path."""
        head = self.head
        if head is None:
            return [self.key(k) for k in entity_keys]
        out: list[bytes] = []
        append = out.append
        for entity_key in entity_keys:
            values = entity_key.entity_values
            if len(values) == 1 and len(entity_key.join_keys) == 1:
                text = values[0].string_val  # not empty: the id is a string (a oneof's member)
                if text:
                    append(self.id_key(text))
                    continue
            append(self.key(entity_key))
        return out


def ts_field(view_name: str) -> str:
    return f"{TS_FIELD_PREFIX}{view_name}"


def glob_escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


def scan_pattern(prefix: str, segment: str) -> str:
    """SCAN MATCH pattern for every entity of one segment; nothing outside it can match."""
    return f"{glob_escape(prefix)}{glob_escape(segment)}:*"
