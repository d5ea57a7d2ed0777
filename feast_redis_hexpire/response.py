"""Feast's GetOnlineFeaturesResponse built as protobuf bytes from the HMGET replies.

Feast's own helper (``utils._populate_response_from_feature_data``) takes one ``(datetime,
dict)`` row per entity, turns every datetime back into a protobuf Timestamp and fills the
response message by message; for a 100-entity read that costs more than the Redis round trip.
Here each view's vectors are written as wire bytes (wire.py): the value entries come from the
stored bytes (reads.value_columns), the timestamps from the raw ``_ts`` microseconds, serialized
once per view and shared by its vectors, and the response is parsed once
(:func:`parse_response`) or merged into Feast's message (:func:`append_view`). The vectors are
Feast's: same feature names and order, same statuses, a null Value and Timestamp where nothing
was found, a repeated entity filling each of its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse

from . import wire

_track_statuses: Callable[[str, int, int], Any] | None
try:  # Feast's per-view PRESENT / NOT_FOUND counters (a no-op unless metrics are on)
    from feast.metrics import track_feature_statuses as _track_statuses
except ImportError:  # pragma: no cover - older Feast
    _track_statuses = None

__all__ = ["ViewResult", "append_view", "parse_response", "row_vectors", "slots", "view_vectors"]

PRESENT = FieldStatus.PRESENT
NOT_FOUND = FieldStatus.NOT_FOUND


@dataclass
class ViewResult:
    """One view's read, one entry per distinct entity.

    ``columns`` hold one FeatureVector ``values`` entry per entity (wire bytes; None: the field
    is missing). ``row_status`` is None when every found entity is PRESENT (no freshness check),
    else per entity PRESENT, OUTSIDE_MAX_AGE, or None for an entity dropped as stale. ``fanout``
    gives the response rows of each entity, or is None when entity i is response row i."""

    table: Any
    requested: list[str]
    names: list[str]  # the requested features the view has; one column each
    ts_raw: list[bytes | None]
    columns: list[list[bytes | None]]
    row_status: list[Any] | None
    fanout: list[list[int]] | None
    output_len: int
    slots: list[int | None] | None = None  # slots(requested, names), when known


def slots(requested: Sequence[str], names: Sequence[str]) -> list[int | None]:
    """Per requested feature, the column holding it, or None: not in the view, or a repeated
    name's earlier slot (Feast fills only the last one)."""
    column_of = {name: i for i, name in enumerate(names)}
    last = {name: i for i, name in enumerate(requested)}
    return [column_of.get(name) if last[name] == i else None for i, name in enumerate(requested)]


def _scatter(column: list, fanout: Sequence[list[int]] | None, output_len: int, fill: Any) -> list:
    """Entity-ordered values to response rows (a repeated entity fills all its rows)."""
    if fanout is None:
        return column
    out = [fill] * output_len
    for value, rows in zip(column, fanout):
        for row in rows:
            out[row] = value
    return out


def _stamps(result: ViewResult) -> bytes:
    """The ``event_timestamps`` entries every vector of the view shares."""
    status = result.row_status
    if len(result.ts_raw) == 1 and result.fanout is None:  # one entity
        raw = result.ts_raw[0]
        return (
            wire.NULL_STAMP
            if raw is None or (status is not None and status[0] is None)
            else wire.stamp(int(raw))
        )
    memo: dict[bytes, bytes] = {}  # rows written together share their event time
    stamps = []
    for i, raw in enumerate(result.ts_raw):
        if raw is None or (status is not None and status[i] is None):
            stamps.append(wire.NULL_STAMP)
        else:
            stamp = memo.get(raw)
            if stamp is None:
                stamp = memo[raw] = wire.stamp(int(raw))
            stamps.append(stamp)
    return b"".join(_scatter(stamps, result.fanout, result.output_len, wire.NULL_STAMP))


def _vector(result: ViewResult, column: list[bytes | None]) -> tuple[list[bytes], bytes, int]:
    """Value entries, the statuses field and the number of PRESENT / OUTSIDE_MAX_AGE values
    of one feature, in response-row order."""
    values: list[Any]
    n, fanout = result.output_len, result.fanout
    if result.row_status is None:
        if None in column:
            values = [wire.NULL_VALUE if v is None else v for v in column]
            statuses = [NOT_FOUND if v is None else PRESENT for v in column]
        else:  # the usual case: every entity has the feature
            return _scatter(column, fanout, n, wire.NULL_VALUE), wire.statuses_all(PRESENT, n), n
    else:
        pairs = list(zip(column, result.row_status))
        values = [wire.NULL_VALUE if v is None or st is None else v for v, st in pairs]
        statuses = [NOT_FOUND if v is None or st is None else st for v, st in pairs]
    statuses = _scatter(statuses, fanout, n, NOT_FOUND)
    found = n - statuses.count(NOT_FOUND)
    return _scatter(values, fanout, n, wire.NULL_VALUE), wire.statuses(statuses), found


def view_vectors(result: ViewResult) -> list[bytes]:
    """One ``results`` entry per requested feature of the view, in request order, and Feast's
    per-view status counters (METRICS HOOK: ``feast.metrics.track_feature_statuses``)."""
    n, requested, columns = result.output_len, result.requested, result.columns
    if n == 1 and result.fanout is None and result.row_status is None:  # one entity, no check
        slots_ = result.slots if result.slots is not None else slots(requested, result.names)
        return row_vectors(result.table, len(requested), slots_, result.ts_raw[0], [c[0] for c in columns])
    stamps = _stamps(result)
    plain = result.row_status is None and result.fanout is None  # entity i is row i, no check
    all_present = wire.statuses_all(PRESENT, n)
    present = 0
    vectors = []
    missing = None
    for slot in result.slots if result.slots is not None else slots(requested, result.names):
        if slot is None:
            if missing is None:
                missing = wire.vector([wire.NULL_VALUE] * n, wire.statuses_all(NOT_FOUND, n), stamps)
            vectors.append(missing)
            continue
        column = columns[slot]
        if plain and None not in column:  # the usual case: every entity has the feature
            present += n
            values = b"".join(cast(list[bytes], column))
            vectors.append(wire.field(wire.RESULTS_TAG, values + all_present + stamps))
        else:
            values_, statuses, found = _vector(result, column)
            present += found
            vectors.append(wire.vector(values_, statuses, stamps))
    if _track_statuses is not None:
        try:  # as in Feast: metrics never fail a read
            _track_statuses(result.table.name, present, len(requested) * n - present)
        except Exception:  # noqa: BLE001
            pass
    return vectors


_PRESENT_ONE = wire.statuses_all(PRESENT, 1)
_NOT_FOUND_ONE = wire.statuses_all(NOT_FOUND, 1)


def row_vectors(
    table: Any, requested: int, slots: Sequence[int | None], raw_ts: bytes | None, values: Sequence[Any]
) -> list[bytes]:
    """:func:`view_vectors` of a one-entity read without a freshness check: one ``results``
    entry per requested feature (``slots``: its value in ``values``, a ``values`` entry or None
    when missing) and Feast's status counters (METRICS HOOK)."""
    stamp = wire.NULL_STAMP if raw_ts is None else wire.stamp(int(raw_ts))
    found = _PRESENT_ONE + stamp
    field, tag = wire.field, wire.RESULTS_TAG
    missing = None
    present = 0
    vectors = []
    for slot in slots:
        value = None if slot is None else values[slot]
        if value is None:
            if missing is None:
                missing = field(tag, wire.NULL_VALUE + _NOT_FOUND_ONE + stamp)
            vectors.append(missing)
        else:
            present += 1
            vectors.append(field(tag, value + found))
    if _track_statuses is not None:
        try:  # as in Feast: metrics never fail a read
            _track_statuses(table.name, present, requested - present)
        except Exception:  # noqa: BLE001
            pass
    return vectors


def output_names(table: Any, requested: Sequence[str], full_feature_names: bool) -> list[str]:
    """The response's names of a view's requested features."""
    prefix = f"{table.projection.name_to_use()}__" if full_feature_names else ""
    return [prefix + name for name in requested]


def view_metadata(table: Any) -> tuple[str, int]:
    """(name, version) of a view's ``feature_view_metadata`` entry, as Feast fills it."""
    projection = table.projection
    return projection.name_alias or projection.name, getattr(table, "current_version_number", 0) or 0


def append_view(response: Any, result: ViewResult, full_feature_names: bool, version_metadata: bool) -> None:
    """Add one view's feature names, metadata and vectors to ``response``, as Feast's helper does
    (one merge of the view's bytes)."""
    views: list[tuple[str, int]] = []
    if version_metadata:
        meta = view_metadata(result.table)
        if meta[0] not in [m.name for m in response.metadata.feature_view_metadata]:
            views.append(meta)
    names = output_names(result.table, result.requested, full_feature_names)
    response.MergeFromString(wire.metadata(names, views) + b"".join(view_vectors(result)))


def parse_response(parts: Sequence[bytes]) -> GetOnlineFeaturesResponse:
    """The response whose wire bytes are ``parts`` (metadata, then the vectors), parsed once."""
    response = GetOnlineFeaturesResponse()
    response.ParseFromString(b"".join(parts))
    return response
