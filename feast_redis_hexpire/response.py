"""Filling Feast's GetOnlineFeaturesResponse straight from decoded HMGET replies.

Feast's own helper (``utils._populate_response_from_feature_data``) takes one ``(datetime,
dict)`` row per entity and turns every datetime back into a protobuf Timestamp; for a
100-entity read that costs more than the Redis round trip. :func:`append_view` builds the same
vectors (same feature names and order, same statuses, a null Timestamp where nothing was found)
column by column, from the decoded values and the raw ``_ts`` microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

_track_statuses: Callable[[str, int, int], Any] | None
try:  # Feast's per-view PRESENT / NOT_FOUND counters (a no-op unless metrics are on)
    from feast.metrics import track_feature_statuses as _track_statuses
except ImportError:  # pragma: no cover - older Feast
    _track_statuses = None

__all__ = ["ViewResult", "append_view", "timestamp"]

NULL_VALUE = ValueProto()
NULL_TS = Timestamp()
PRESENT = FieldStatus.PRESENT
NOT_FOUND = FieldStatus.NOT_FOUND
FeatureVector = GetOnlineFeaturesResponse.FeatureVector


def timestamp(raw: bytes) -> Timestamp:
    """The Timestamp of a stored ``_ts`` field (integer microseconds since the epoch)."""
    us = int(raw)
    return Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)


@dataclass
class ViewResult:
    """One view's decoded read, one entry per distinct entity.

    ``row_status`` is None when every found entity is PRESENT (no freshness check), else per
    entity PRESENT, OUTSIDE_MAX_AGE, or None for an entity dropped as stale. ``fanout`` gives the
    response rows of each entity, or is None when entity i is response row i."""

    table: Any
    requested: list[str]
    names: list[str]  # the requested features the view has; one column each
    ts_raw: list[bytes | None]
    columns: list[list[ValueProto | None]]  # None: field missing
    row_status: list[Any] | None
    fanout: list[list[int]] | None
    output_len: int


def _scatter(column: list, fanout: Sequence[list[int]] | None, output_len: int, fill: Any) -> list:
    """Entity-ordered values to response rows (a repeated entity fills all its rows)."""
    if fanout is None:
        return column
    out = [fill] * output_len
    for value, rows in zip(column, fanout):
        for row in rows:
            out[row] = value
    return out


def _stamps(result: ViewResult) -> list[Timestamp]:
    memo: dict[bytes, Timestamp] = {}  # rows written together share their event time
    status = result.row_status or [PRESENT] * len(result.ts_raw)
    stamps = []
    for raw, st in zip(result.ts_raw, status):
        if raw is None or st is None:
            stamps.append(NULL_TS)
        else:
            stamp = memo.get(raw)
            if stamp is None:
                stamp = memo[raw] = timestamp(raw)
            stamps.append(stamp)
    return _scatter(stamps, result.fanout, result.output_len, NULL_TS)


def _vector(result: ViewResult, column: list[ValueProto | None]) -> tuple[list, list]:
    """Values and statuses of one feature, in response-row order."""
    values: list[Any]
    if result.row_status is None:
        if None in column:
            values = [NULL_VALUE if v is None else v for v in column]
            statuses = [NOT_FOUND if v is None else PRESENT for v in column]
        else:  # the usual case: every entity has the feature
            values, statuses = column, [PRESENT] * len(column)
    else:
        pairs = list(zip(column, result.row_status))
        values = [NULL_VALUE if v is None or st is None else v for v, st in pairs]
        statuses = [NOT_FOUND if v is None or st is None else st for v, st in pairs]
    n, fanout = result.output_len, result.fanout
    return _scatter(values, fanout, n, NULL_VALUE), _scatter(statuses, fanout, n, NOT_FOUND)


def append_view(response: Any, result: ViewResult, full_feature_names: bool, version_metadata: bool) -> None:
    """Add one view's feature names, metadata and vectors to ``response``, as Feast's helper does."""
    table, requested, n = result.table, result.requested, result.output_len
    projection = table.projection
    prefix = f"{projection.name_to_use()}__" if full_feature_names else ""
    response.metadata.feature_names.val.extend([prefix + name for name in requested])
    if version_metadata:
        name = projection.name_alias or projection.name
        if name not in [m.name for m in response.metadata.feature_view_metadata]:
            meta = response.metadata.feature_view_metadata.add()
            meta.name = name
            meta.version = getattr(table, "current_version_number", 0) or 0
    # The views' vectors share their timestamps: serialize them once and merge that into each
    # vector, much cheaper than copying the Timestamp messages into every vector.
    stamps = FeatureVector(event_timestamps=_stamps(result)).SerializeToString()
    column_of = dict(zip(result.names, result.columns))
    last = {name: i for i, name in enumerate(requested)}  # Feast fills a repeated name's last slot
    present = 0
    for i, name in enumerate(requested):
        column = column_of.get(name) if last[name] == i else None
        if column is None:
            values, statuses = [NULL_VALUE] * n, [NOT_FOUND] * n
        else:
            values, statuses = _vector(result, column)
            present += n - statuses.count(NOT_FOUND)
        response.results.add(values=values, statuses=statuses).MergeFromString(stamps)
    if _track_statuses is not None:
        try:  # as in Feast: metrics never fail a read
            _track_statuses(table.name, present, len(requested) * n - present)
        except Exception:  # noqa: BLE001
            pass
