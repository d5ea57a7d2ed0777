"""What one entity's hash holds: every field, its value and TTL, the key TTL and the encoding.

With ``value_layout: packed`` a view's one field is shown unpacked: its event time, then each
feature as ``<view>[<feature>]`` with its stored text, all with the field's TTL.

The Python form of the seed's redis-cli checks (HGETALL, TTL, HTTL, OBJECT ENCODING)::

    report = inspect_entity(FeatureStore("feature_repo"), "user", "u0001")
    print(report.render())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from feast import FeatureStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

from . import codec, layout
from .online_store import hexpire_store
from .views import ViewLayout

__all__ = ["FieldReport", "EntityReport", "entity_key", "inspect_entity"]


@dataclass
class FieldReport:
    view: str
    feature: str  # "_ts" for the view's timestamp field
    field: str
    value: Optional[str]  # the stored text (None when missing)
    ttl_ms: int  # HPTTL: -2 missing, -1 no field TTL, else milliseconds left

    @property
    def ttl_text(self) -> str:
        if self.ttl_ms == -2:
            return "missing"
        if self.ttl_ms == -1:
            return "no TTL"
        return f"{self.ttl_ms / 1000:.1f} s"


@dataclass
class EntityReport:
    key: str
    exists: bool
    key_ttl_ms: int  # PTTL: -2 no key, -1 no key TTL
    encoding: Optional[str]
    fields: list[FieldReport] = field(default_factory=list)
    other_fields: dict[str, str] = field(default_factory=dict)  # fields no current view owns

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "exists": self.exists,
            "key_ttl_ms": self.key_ttl_ms,
            "encoding": self.encoding,
            "fields": [{**f.__dict__, "ttl": f.ttl_text} for f in self.fields],
            "other_fields": self.other_fields,
        }

    def render(self) -> str:
        key_ttl = {-2: "missing", -1: "no key TTL"}.get(self.key_ttl_ms, f"{self.key_ttl_ms / 1000:.0f} s")
        lines = [f"{self.key}  TTL = {key_ttl} (key-level)  encoding = {self.encoding or '-'}"]
        width = max([len(f.field) for f in self.fields] + [10])
        for f in self.fields:
            value = "<missing>" if f.value is None else f.value
            lines.append(f"  {f.field.ljust(width)} = {value:<24} {f.ttl_text}")
        for name, value in self.other_fields.items():
            lines.append(f"  {name.ljust(width)} = {value:<24} (no view owns this field)")
        return "\n".join(lines)


def entity_key(store: FeatureStore, entity: str, entity_id: str) -> EntityKeyProto:
    """The EntityKeyProto Feast would build for ``entity_id`` (typed by the entity's value type)."""
    spec = store.get_entity(entity, allow_registry_cache=True)
    value = ValueProto()
    if spec.value_type in (ValueType.INT64, ValueType.INT32):
        setattr(value, "int64_val" if spec.value_type == ValueType.INT64 else "int32_val", int(entity_id))
    else:
        value.string_val = entity_id
    return EntityKeyProto(join_keys=[spec.join_key], entity_values=[value])


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return repr(raw)


def _unpacked(lay: ViewLayout, raw: bytes | None, ttl: int) -> list[FieldReport]:
    """value_layout: packed: the view's one field shown as its event time and one line per
    feature (``<view>[<feature>]``), each with the field's TTL."""
    features = list(lay.fields)
    try:
        unpacked = None if raw is None else codec.unpack_values(raw, lay.head, len(features))
    except (ValueError, IndexError) as e:
        return [FieldReport(lay.name, "_ts", lay.ts_field, f"<not a packed value: {e}> {raw!r}", ttl)]
    if raw is not None and unpacked is None:
        note = "<packed for another feature list: reads as not found until materialized again>"
        return [FieldReport(lay.name, "_ts", lay.ts_field, note, ttl)]
    ts_text = None
    values: list[bytes | None] = [None] * len(features)
    if unpacked is not None:
        ts_text = f"{unpacked[0]} ({codec.decode_ts(unpacked[0]).isoformat()})"
        values = unpacked[1]
    reports = [FieldReport(lay.name, "_ts", lay.ts_field, ts_text, ttl)]
    for feature, value in zip(features, values):
        shown = None if value is None else _text(value)
        reports.append(FieldReport(lay.name, feature, f"{lay.ts_field}[{feature}]", shown, ttl))
    return reports


def inspect_entity(store: FeatureStore, entity: str, entity_id: str) -> EntityReport:
    """One round trip of HGETALL, PTTL, OBJECT ENCODING and HPTTL for the entity's hash."""
    config = store.config
    online = hexpire_store(store)
    views = [v for v in store.list_feature_views(allow_cache=True) if entity in (v.entities or [])]
    views += [v for v in store.list_stream_feature_views(allow_cache=True) if entity in (v.entities or [])]
    ek = entity_key(store, entity, entity_id)
    client = online.client(config)
    layouts = [ViewLayout.of(config, v, client) for v in views]  # fields as naming.py resolves them
    key = layout.KeyBuilder(config.online_store.prefix_for(config.project), [entity]).key(ek)
    expected = [
        (lay.name, feature, fld)
        for lay in layouts
        for feature, fld in [("_ts", lay.ts_field)]
        + ([] if lay.packed else [(f, spec[0]) for f, spec in lay.fields.items()])
    ]
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(key)
        pipe.pttl(key)
        pipe.object("encoding", key)
        if expected:
            pipe.hpttl(key, *[fld for _, _, fld in expected])
        replies = pipe.execute(raise_on_error=False)
    stored, key_ttl, encoding = replies[0], replies[1], replies[2]
    ttls = replies[3] if expected and isinstance(replies[3], list) else [-2] * len(expected)
    report = EntityReport(
        key=key.decode(),
        exists=bool(stored),
        key_ttl_ms=int(key_ttl),
        encoding=encoding.decode() if isinstance(encoding, bytes) else None,
    )
    packed = {lay.name: lay for lay in layouts if lay.packed}
    for (view, feature, fld), ttl in zip(expected, ttls):
        raw = stored.pop(fld.encode(), None)
        if view in packed:
            report.fields += _unpacked(packed[view], raw, int(ttl))
            continue
        report.fields.append(FieldReport(view, feature, fld, None if raw is None else _text(raw), int(ttl)))
    report.other_fields = {_text(k): _text(v) for k, v in stored.items()}
    return report
