"""A direct writer for stream processors: rows of one feature view straight into the store.

``FeatureStore.push`` of one row costs milliseconds, almost all of it Feast's own work (it
reloads the registry on every call to find the views of the push source, then converts a
DataFrame through Arrow). A stream processor that knows which view it writes can skip that::

    from feast import FeatureStore
    from feast_redis_hexpire.writer import StreamWriter

    store = FeatureStore(repo_path=".")
    writer = StreamWriter(store, "user_streaming_features")
    writer.write({"user_id": "u0001", "event_timestamp": now, "tx_count_5m": 3, ...})
    writer.write_rows([...])            # several rows, one round trip per write_batch_size rows
    writer.write_table(arrow_table)     # a pyarrow Table (or a pandas DataFrame)
    await writer.write_async(row)       # and write_rows_async / write_table_async

Each row goes through the store's own write path (``online_write_batch``): the same atomic
script, event-time ordering, key TTL or per-field TTLs as a push or a materialization of that
view. A row carries the view's join key(s), its event-timestamp column (a naive datetime means
UTC) and every feature of the view; a missing or unknown column, or a value that does not
convert to the feature's type, is an error naming the row and column, and nothing of the call
is written. The view is looked up once and again whenever the registry is refreshed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

from .exceptions import BadValueError, ConfigError
from .online_store import RedisHexpireOnlineStore, hexpire_store
from .read_plan import registry_state

__all__ = ["StreamWriter"]

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]

# Value types whose exact Python values become protos without Feast's generic dispatch (the
# same protos Feast's converter makes); anything else goes through Feast's converter.
_FAST: dict[ValueType, tuple[type, Callable[[Any], ValueProto]]] = {
    ValueType.STRING: (str, lambda v: ValueProto(string_val=v)),
    ValueType.INT64: (int, lambda v: ValueProto(int64_val=v)),
    ValueType.INT32: (int, lambda v: ValueProto(int32_val=v)),
    ValueType.DOUBLE: (float, lambda v: ValueProto(double_val=v)),
    ValueType.BOOL: (bool, lambda v: ValueProto(bool_val=v)),
}


def _converter(value_type: ValueType) -> Callable[[Any], ValueProto]:
    fast = _FAST.get(value_type)

    def convert(value: Any) -> ValueProto:
        if fast is not None and type(value) is fast[0]:
            return fast[1](value)
        return python_values_to_proto_values([value], value_type)[0]

    return convert


class _ViewSchema:
    """What a row of one view must carry, and how each column becomes a proto."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.join_keys = [(c.name, _converter(c.dtype.to_value_type())) for c in view.entity_columns]
        self.features = [(f.name, _converter(f.dtype.to_value_type())) for f in view.features]
        source = getattr(view, "stream_source", None) or view.batch_source
        batch = getattr(source, "batch_source", None) or source
        self.timestamp = getattr(batch, "timestamp_field", None) or "event_timestamp"
        join_names = {name for name, _ in self.join_keys}
        self.columns = {name for name, _ in self.join_keys} | {self.timestamp}
        self.columns |= {name for name, _ in self.features if name not in join_names}

    def row(self, number: int, data: Mapping[str, Any]) -> Row:
        missing = self.columns - data.keys()
        unknown = data.keys() - self.columns
        if missing or unknown:
            problem = f"missing {sorted(missing)}" if missing else f"unknown {sorted(unknown)}"
            raise BadValueError(
                f"feature view {self.view.name!r}, row {number}: {problem} column(s); a row has "
                f"exactly {sorted(self.columns)}; nothing was written"
            )
        column = self.timestamp
        try:
            ts = _timestamp(data[column])
            ids = []
            for column, convert in self.join_keys:
                value = data[column]
                if value is None:
                    raise ValueError("a join key may not be null")
                if type(value) not in (str, int, bytes):  # Feast's converter accepts more, e.g. lists
                    raise TypeError(
                        f"a join key is a string, an integer or bytes, got {type(value).__name__}"
                    )
                ids.append(convert(value))
                if ids[-1].WhichOneof("val") is None:
                    raise ValueError(f"a join key may not be null (got {value!r})")
            values = {}
            for column, convert in self.features:
                values[column] = convert(data[column])
        except (TypeError, ValueError, OverflowError) as e:
            raise BadValueError(
                f"feature view {self.view.name!r}, row {number}, column {column!r}: {e}; nothing was written"
            ) from e
        key = EntityKeyProto(join_keys=[n for n, _ in self.join_keys], entity_values=ids)
        return key, values, ts, None


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):  # also a pandas Timestamp
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    raise TypeError(f"the event timestamp must be a datetime, got {type(value).__name__}")


class StreamWriter:
    """Writes rows of one feature view through the store's write path (see the module text)."""

    def __init__(self, store: Any, view: str) -> None:
        self._feature_store = store
        self._online: RedisHexpireOnlineStore = hexpire_store(store)
        self._name = view
        self._schema: _ViewSchema | None = None
        self._registry_ts: Any = None

    def _current(self) -> _ViewSchema:
        """The view's schema, looked up again when the registry's cache was refreshed or
        expired (the lookup refreshes it, as a read would)."""
        stamp, valid = registry_state(self._feature_store.registry)
        if self._schema is None or not valid or stamp is None or stamp != self._registry_ts:
            self._schema = _ViewSchema(self._lookup())
            self._registry_ts = getattr(self._feature_store.registry, "cached_registry_proto_created", None)
        return self._schema

    def _lookup(self) -> Any:
        store = self._feature_store
        registry, project = store.registry, store.project
        for get in (registry.get_stream_feature_view, registry.get_feature_view):
            try:
                return get(self._name, project, allow_cache=True)
            except Exception:  # noqa: BLE001 - Feast raises a different error per kind
                continue
        raise ConfigError(f"no feature view {self._name!r} in project {project!r}")

    @property
    def view(self) -> Any:
        """The feature view rows are written to."""
        return self._current().view

    def rows_of(self, rows: Iterable[Mapping[str, Any]]) -> list[Row]:
        """Rows as the store's write path takes them; every row is checked before any is written."""
        return self._rows(self._current(), rows)

    @staticmethod
    def _rows(schema: _ViewSchema, rows: Iterable[Mapping[str, Any]]) -> list[Row]:
        return [schema.row(number, data) for number, data in enumerate(rows)]

    def write(self, row: Mapping[str, Any]) -> int:
        """Write one row; returns the number of rows handed to the store (1)."""
        return self.write_rows((row,))

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        schema = self._current()
        data = self._rows(schema, rows)
        if data:
            self._online.online_write_batch(self._feature_store.config, schema.view, data, None)
        return len(data)

    def write_table(self, table: Any) -> int:
        """Write every row of a pyarrow Table or a pandas DataFrame."""
        return self.write_rows(_records(table))

    async def write_async(self, row: Mapping[str, Any]) -> int:
        return await self.write_rows_async((row,))

    async def write_rows_async(self, rows: Iterable[Mapping[str, Any]]) -> int:
        schema = self._current()
        data = self._rows(schema, rows)
        if data:
            await self._online.online_write_batch_async(self._feature_store.config, schema.view, data, None)
        return len(data)

    async def write_table_async(self, table: Any) -> int:
        return await self.write_rows_async(_records(table))


def _records(table: Any) -> list[dict[str, Any]]:
    if not isinstance(table, (pa.Table, pa.RecordBatch)):
        table = pa.Table.from_pandas(table, preserve_index=False)
    return table.to_pylist()
