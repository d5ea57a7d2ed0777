"""The cached read plan behind ``get_online_features``: Feast's per-request work done once.

Feast's ``OnlineStore.get_online_features`` resolves the requested features against the
registry, converts every entity value to a protobuf, builds a response template and then reads.
For a one-entity read that preparation costs as much as the Redis round trip. A
:class:`ReadPlan` keeps what the resolution gives (views, requested features, join keys, their
value types, output names, feature types) per (registry, project, features or feature service,
full_feature_names), valid while the registry's cache is: it is rebuilt when the registry
refreshes (``cached_registry_proto_created`` changes, as Feast's own resolution cache) or its
cache TTL runs out. Where each view's values live stays :meth:`ViewLayout.of`'s answer, asked on
every read, so a changed setting or view is never served from a stale plan.

Requests the plan does not cover go through Feast's own method unchanged (:func:`plan_for`
returns None, :meth:`ReadPlan.prepare` returns None): on-demand views and request data,
precomputed feature services, entity-less views, entity names instead of join keys, and a Feast
release without either resolution helper this module uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from feast import utils
from feast.feature_service import FeatureService
from feast.online_response import OnlineResponse
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

from . import wire
from .response import parse_response, view_metadata

__all__ = ["PlanCache", "PreparedRead", "ReadPlan", "registry_state"]

# Feast's resolution of a request: cached by Feast from 0.6x, uncached before (Feast 0.55 has
# only _get_online_request_context); both answer the same 9-tuple, and the plan is cached here.
_resolve: Callable[..., tuple] | None = getattr(utils, "_get_cached_request_context", None) or getattr(
    utils, "_get_online_request_context", None
)
_to_protos: Callable[..., list] | None = None
try:
    from feast.type_map import python_values_to_proto_values as _to_protos
except ImportError:  # pragma: no cover - every supported Feast has it
    _to_protos = None

_metrics: Any = None
try:  # Feast's online-read duration metric (its flags object is replaced when metrics start)
    import feast.metrics as _metrics
except ImportError:  # pragma: no cover - older Feast
    pass

# Join-key value types whose Python values become protos without Feast's generic dispatch; only
# exact str / int objects take this way, anything else goes through Feast's converter.
_FAST_PROTO: dict[ValueType, tuple[type, Callable[[Any], ValueProto]]] = {
    ValueType.STRING: (str, lambda v: ValueProto(string_val=v)),
    ValueType.INT64: (int, lambda v: ValueProto(int64_val=v)),
    ValueType.INT32: (int, lambda v: ValueProto(int32_val=v)),
}


def _proto_column(value_type: ValueType, values: list[Any]) -> list[ValueProto]:
    """What Feast's ``python_values_to_proto_values(values, value_type)`` returns."""
    fast = _FAST_PROTO.get(value_type)
    if fast is not None:
        kind, make = fast
        if all(type(v) is kind for v in values):
            return [make(v) for v in values]
    assert _to_protos is not None
    return _to_protos(values, value_type)


# Join-key types whose plain Python values (exact str / int objects, ints in range) build keys
# and response entries directly (layout.id_text and wire.native_value give what their ValueProtos
# would), without a ValueProto per value.
_NATIVE: dict[ValueType, tuple[type, int]] = {
    ValueType.STRING: (str, 0),
    ValueType.INT64: (int, 1 << 63),
    ValueType.INT32: (int, 1 << 31),
}


_PRESENT = FieldStatus.PRESENT


def _native(value_type: ValueType, values: list[Any]) -> bool:
    kind = _NATIVE.get(value_type)
    if kind is None:
        return False
    cls, bound = kind
    if not all(type(v) is cls for v in values):
        return False
    return not bound or all(-bound <= v < bound for v in values)


@dataclass
class ReadPlan:
    """What Feast's request resolution gives for one (features, full_feature_names) request."""

    registry: Any
    registry_ts: Any
    grouped_refs: list[tuple[Any, list[str]]]
    entity_name_to_join_key: dict[str, str]
    join_key_types: dict[str, ValueType]
    join_keys: frozenset[str]
    result_names: frozenset[str]
    feature_types: dict[str, ValueType] | None
    output_names: list[str]  # the feature vectors' names, in response order
    memo: dict = field(default_factory=dict)  # plan_reads' field lists, per view layouts
    heads: dict = field(default_factory=dict)  # response metadata, per entity columns and flag

    def prepare(self, entity_rows: Any) -> PreparedRead | None:
        """Feast's ``_prepare_entities_to_read_from_online_store`` for this plan: the join-key
        columns (as plain values where they allow it, else as protos). None: a request Feast
        must serve."""
        if isinstance(entity_rows, list) and len(entity_rows) == 1:  # one row: its columns
            entity_rows = {key: [value] for key, value in entity_rows[0].items()}
        elif isinstance(entity_rows, list):  # as Feast's get_online_features
            columnar: dict[str, list[Any]] = {k: [] for k in entity_rows[0].keys()}
            for entity_row in entity_rows:
                for key, value in entity_row.items():
                    try:
                        columnar[key].append(value)
                    except KeyError as e:
                        raise ValueError("All entity_rows must have the same keys.") from e
            entity_rows = columnar
        native: dict[str, list[Any]] = {}
        protos: dict[str, list[ValueProto]] = {}
        columns: list[str] = []
        lengths: dict[str, list] = {}
        for name, column in entity_rows.items():
            sequence = type(column) is list or isinstance(column, Sequence)
            values = list(column) if sequence else list(column.val)
            if name in self.join_keys:
                value_type = self.join_key_types.get(name, ValueType.UNKNOWN)
                columns.append(name)
                if _native(value_type, values):
                    native[name] = lengths[name] = values
                else:
                    protos[name] = lengths[name] = _proto_column(value_type, values)
            elif name in self.entity_name_to_join_key:
                return None  # an entity name instead of its join key (deprecated): Feast's way
            else:  # not read, but Feast converts and counts it: so must we, errors included
                lengths[name] = _proto_column(ValueType.UNKNOWN, values)
        rows = utils._validate_entity_values(lengths)
        return PreparedRead(self, columns, native, protos, rows)

    def head(self, columns: tuple[str, ...], version_metadata: bool) -> tuple[bytes, list[bool] | None]:
        """The response's metadata bytes for these entity columns, and which of the features'
        vectors Feast's ``_drop_unneeded_columns`` keeps (None: all)."""
        key = (columns, version_metadata)
        known = self.heads.get(key)
        if known is None:
            keep = self.result_names | set(columns)
            kept = [name in keep for name in self.output_names]
            views: list[tuple[str, int]] = []
            if version_metadata:
                for table, _ in self.grouped_refs:
                    meta = view_metadata(table)
                    if meta[0] not in [name for name, _ in views]:
                        views.append(meta)
            names = [*columns, *(n for n, k in zip(self.output_names, kept) if k)]
            known = self.heads[key] = (wire.metadata(names, views), None if all(kept) else kept)
        return known


@dataclass
class PreparedRead:
    """One request under a plan: its join-key columns, plain or as protos."""

    plan: ReadPlan
    columns: list[str]  # the join-key columns, in the request's order
    native: dict[str, list[Any]]
    protos: dict[str, list[ValueProto]]
    rows: int
    started: float = field(default_factory=time.monotonic)

    def join_key_values(self) -> dict[str, list[ValueProto]]:
        """Every join-key column as protos (Feast's ``join_key_values``), built on first use."""
        for name in [n for n in self.native if n not in self.protos]:
            self.protos[name] = _proto_column(self.plan.join_key_types[name], self.native[name])
        return {name: self.protos[name] for name in self.columns}

    def entity_vectors(self) -> list[bytes]:
        """The entity columns' vectors, as Feast's ``_populate_result_rows_from_columnar``."""
        present = wire.statuses_all(_PRESENT, self.rows)
        stamps = wire.null_stamps(self.rows)
        vectors = []
        for name in self.columns:
            values = self.native.get(name)
            if values is not None:
                entries = wire.native_values(self.plan.join_key_types[name], values)
            else:
                entries = wire.entity_values(self.protos[name])
            vectors.append(wire.vector(entries, present, stamps))
        return vectors

    def finish(self, views: list[list[bytes]], version_metadata: bool) -> Any:
        """The OnlineResponse from the views' vectors (response.view_vectors), as Feast ends
        ``get_online_features`` (read metric, unneeded columns dropped, feature types)."""
        if getattr(getattr(_metrics, "_config", None), "online_features", False):
            try:  # as Feast: metrics never fail a read
                _metrics.track_online_store_read(time.monotonic() - self.started)
            except Exception:  # noqa: BLE001
                pass
        head, kept = self.plan.head(tuple(self.columns), version_metadata)
        vectors = [v for view in views for v in view]
        if kept is not None:
            vectors = [v for v, k in zip(vectors, kept) if k]
        response = parse_response([head, *self.entity_vectors(), *vectors])
        if self.plan.feature_types is None:
            return OnlineResponse(response)
        return OnlineResponse(response, feature_types=dict(self.plan.feature_types))  # the caller's own


def _features_key(features: Any) -> tuple:
    if isinstance(features, FeatureService):
        return ("__fs__", features.name)  # Feast's resolution cache keys a service by name too
    return tuple(features)


def registry_state(registry: Any) -> tuple[Any, bool]:
    """(the registry cache's version, whether its cache is still valid)."""
    is_valid = getattr(registry, "is_cache_valid", None)
    return getattr(registry, "cached_registry_proto_created", None), bool(
        is_valid() if callable(is_valid) else False
    )


class PlanCache:
    """Read plans of one store, per (registry, project, features, full_feature_names)."""

    def __init__(self, check_versioned: Callable[[list], None] | None, feature_types: Any) -> None:
        self._plans: dict[tuple, ReadPlan] = {}
        self._lock = threading.Lock()
        self._check_versioned = check_versioned
        self._feature_types = feature_types

    def plan_for(
        self, registry: Any, project: str, features: Any, full_feature_names: bool
    ) -> ReadPlan | None:
        """The plan of a request, or None where Feast's own method must serve it."""
        if _resolve is None or _to_protos is None:
            return None
        if isinstance(features, FeatureService) and getattr(features, "precompute_online", False):
            return None
        key = (project, _features_key(features), full_feature_names)
        registry_ts, valid = registry_state(registry)
        plan = self._plans.get(key)
        if (
            plan is not None
            and valid
            and registry_ts is not None
            and plan.registry is registry
            and plan.registry_ts == registry_ts
        ):
            return plan
        # Feast's resolution (it refreshes an expired registry cache first).
        context = _resolve(registry, project, features, full_feature_names)
        if not isinstance(context, tuple) or len(context) != 9:
            return None  # a Feast release whose helper answers differently: Feast's own method
        (
            feature_refs,
            on_demand_views,
            entity_name_to_join_key,
            join_key_types,
            join_keys,
            grouped_refs,
            result_names,
            needed_request_data,
            entityless,
        ) = context
        if on_demand_views or needed_request_data or entityless:
            return None
        grouped_refs = [(view, list(names)) for view, names in grouped_refs]
        if self._check_versioned is not None:
            self._check_versioned(grouped_refs)  # as Feast: refuses version-pinned refs
        output_names = [
            f"{view.projection.name_to_use()}__{name}" if full_feature_names else name
            for view, names in grouped_refs
            for name in names
        ]
        plan = ReadPlan(
            registry=registry,
            registry_ts=getattr(registry, "cached_registry_proto_created", None),
            grouped_refs=grouped_refs,
            entity_name_to_join_key=dict(entity_name_to_join_key),
            join_key_types=dict(join_key_types),
            join_keys=frozenset(join_keys),
            result_names=frozenset(result_names),
            feature_types=self._feature_types(grouped_refs) if self._feature_types else None,
            output_names=output_names,
        )
        if plan.registry_ts is not None:
            with self._lock:
                if len(self._plans) > 1000:  # many distinct feature lists: start over
                    self._plans.clear()
                self._plans[key] = plan
        return plan
