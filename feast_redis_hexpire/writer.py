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

Each row goes through the store's own write path (``write_encoded``, as the Arrow engine's rows):
the same atomic script, event-time ordering, key TTL or per-field TTLs, metrics and errors as a
push or a materialization of that view. Values are encoded straight into the bytes the store
writes (``codec.value_encoder``): byte for byte what a push of the same values stores, without
building protobuf values. A row carries the view's join key(s), its event-timestamp column (a
naive datetime means UTC) and every feature of the view; a missing or unknown column, or a value
that does not convert to the feature's type, is an error naming the row and column, and nothing
of the call is written. The view is looked up once and again whenever the registry is refreshed;
its encoders are rebuilt when its layout changes (a store setting, a field renamed at apply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

from . import codec
from .exceptions import BadValueError, ConfigError
from .online_store import RedisHexpireOnlineStore, hexpire_store
from .read_plan import registry_state
from .views import ViewLayout

__all__ = ["StreamWriter"]

# Rows of one call as the store's write_encoded takes them: keys, event times in µs since the
# epoch, per row its flat hash field / encoded value pairs.
Encoded = tuple[list[bytes], list[int], list[list[Any]]]
# (column, hash field (of a packed view: the feature), encoder) of each stored feature.
Specs = list[tuple[str, str, Callable[[Any], bytes]]]


class _ViewSchema:
    """What a row of one view must carry, and how each column becomes the bytes the store writes."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.join_keys = [(c.name, c.dtype.to_value_type()) for c in view.entity_columns]
        self.features = [(f.name, f.dtype.to_value_type()) for f in view.features]
        source = getattr(view, "stream_source", None) or view.batch_source
        batch = getattr(source, "batch_source", None) or source
        self.timestamp = getattr(batch, "timestamp_field", None) or "event_timestamp"
        self.join_names = [name for name, _ in self.join_keys]
        self.key_columns = ", ".join(self.join_names)  # what an error in the key names
        self.columns = {*self.join_names, self.timestamp}
        self.columns |= {name for name, _ in self.features if name not in self.join_names}
        self._specs: tuple[ViewLayout, Specs] | None = None

    def specs(self, layout: ViewLayout) -> Specs:
        """Each stored feature's column, hash field and encoder, built once per layout."""
        if self._specs is None or self._specs[0] is not layout:
            packed = layout.packed
            specs = [
                (
                    name,
                    name if packed else layout.fields[name][0],
                    codec.value_encoder(vt, layout.encoding),
                )
                for name, vt in self.features
                if name in layout.fields  # not a join key listed among a stream view's features
            ]
            self._specs = (layout, specs)
        return self._specs[1]

    def encode(self, layout: ViewLayout, rows: Iterable[Mapping[str, Any]]) -> Encoded:
        """Every row checked and encoded, before any is written."""
        specs = self.specs(layout)
        keys: list[bytes] = []
        event_us: list[int] = []
        pairs: list[list[Any]] = []
        columns, timestamp, encode_ts = self.columns, self.timestamp, codec.encode_ts
        for number, data in enumerate(rows):
            if data.keys() != columns:
                self._bad_columns(number, data)
            column = timestamp
            try:
                ts_us = encode_ts(_timestamp(data[column]))
                column = self.key_columns
                key = self._fast_key(layout, data)
                if key is None:
                    ids = []
                    for column, value_type in self.join_keys:
                        ids.append(_join_key_value(value_type, data[column]))
                    column = self.key_columns
                    key = layout.keys.key(EntityKeyProto(join_keys=self.join_names, entity_values=ids))
                row: list[Any] = []
                for column, field, encode in specs:
                    row += (field, encode(data[column]))
            except (TypeError, ValueError, OverflowError) as e:
                where = f"feature view {self.view.name!r}, row {number}, column {column!r}"
                raise BadValueError(f"{where}: {e}; nothing was written") from e
            keys.append(key)
            event_us.append(ts_us)
            pairs.append(row)
        return keys, event_us, pairs

    def _bad_columns(self, number: int, data: Mapping[str, Any]) -> None:
        missing = self.columns - data.keys()
        unknown = data.keys() - self.columns
        problem = f"missing {sorted(missing)}" if missing else f"unknown {sorted(unknown)}"
        raise BadValueError(
            f"feature view {self.view.name!r}, row {number}: {problem} column(s); a row has "
            f"exactly {sorted(self.columns)}; nothing was written"
        )

    def _fast_key(self, layout: ViewLayout, data: Mapping[str, Any]) -> bytes | None:
        """The row's hash key when its one join key is a str or int of the key's own type (what
        ``layout.keys`` makes of Feast's entity key of it), else None."""
        if layout.keys.head is None or len(self.join_keys) != 1:
            return None
        name, value_type = self.join_keys[0]
        value = data[name]
        if type(value) is str and value_type == ValueType.STRING:
            return layout.keys.id_key(value)
        if type(value) is int and value in codec.INT_RANGES.get(value_type, ()):
            return layout.keys.id_key(str(value))
        return None


def _join_key_value(value_type: ValueType, value: Any) -> Any:
    """Feast's ValueProto of one join-key value (as its conversion of a pushed row makes it)."""
    if value is None:
        raise ValueError("a join key may not be null")
    if type(value) not in (str, int, bytes):  # Feast's converter accepts more, e.g. lists
        raise TypeError(f"a join key is a string, an integer or bytes, got {type(value).__name__}")
    proto = python_values_to_proto_values([value], value_type)[0]
    if proto.WhichOneof("val") is None:
        raise ValueError(f"a join key may not be null (got {value!r})")
    return proto


def _timestamp(value: Any) -> datetime:
    """The row's event time (codec.encode_ts takes a naive datetime as UTC)."""
    if value is None or value != value:  # pandas' NaT is a datetime unequal to itself
        raise ValueError(f"the event timestamp is missing ({value})")
    if isinstance(value, datetime):  # also a pandas Timestamp
        return value
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

    def _encoded(self, rows: Iterable[Mapping[str, Any]]) -> tuple[Any, Any, Encoded]:
        """(config, view, the rows encoded); every row is checked before any is written."""
        schema = self._current()
        config = self._feature_store.config
        layout = ViewLayout.of(config, schema.view, self._online.client(config))
        return config, schema.view, schema.encode(layout, rows)

    def write(self, row: Mapping[str, Any]) -> int:
        """Write one row; returns the number of rows handed to the store (1)."""
        return self.write_rows((row,))

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write several rows, one round trip per ``write_batch_size`` rows; returns their number."""
        config, view, (keys, event_us, pairs) = self._encoded(rows)
        self._online.write_encoded(config, view, keys, event_us, pairs.__getitem__, None)
        return len(keys)

    def write_table(self, table: Any) -> int:
        """Write every row of a pyarrow Table or a pandas DataFrame."""
        return self.write_rows(_records(table))

    async def write_async(self, row: Mapping[str, Any]) -> int:
        return await self.write_rows_async((row,))

    async def write_rows_async(self, rows: Iterable[Mapping[str, Any]]) -> int:
        config, view, (keys, event_us, pairs) = self._encoded(rows)
        await self._online.write_encoded_async(config, view, keys, event_us, pairs.__getitem__, None)
        return len(keys)

    async def write_table_async(self, table: Any) -> int:
        return await self.write_rows_async(_records(table))


def _records(table: Any) -> list[dict[str, Any]]:
    if not isinstance(table, (pa.Table, pa.RecordBatch)):
        table = pa.Table.from_pandas(table, preserve_index=False)
    return table.to_pylist()
