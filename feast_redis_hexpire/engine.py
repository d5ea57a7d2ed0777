"""An opt-in Feast materialization engine that writes offline Arrow tables straight into this store.

Feast's default engine turns every offline row into protobuf values (``_convert_arrow_to_proto``)
before the online store sees it, and this store then turns each value back into bytes; on the
sample repo that conversion is most of ``feast materialize``'s time. This engine reads each
view's rows from the offline store as Arrow (``pull_latest_from_table_or_query(...).to_arrow()``,
the latest row per entity in the window, which is what the default engine writes after its
dedup step) and encodes whole columns into the very bytes the store writes, then hands them to
the store's own write path (:meth:`RedisHexpireOnlineStore.write_encoded`): the same atomic
WRITE_ROWS script, batches, event-time ordering, key TTL or per-field TTLs, acknowledgements,
metrics and per-row errors as a write through ``online_write_batch``. Select it with::

    batch_engine:
      type: feast_redis_hexpire.engine.ArrowMaterializationEngine

What it does not do itself, it leaves to Feast's default engine, unchanged: views with a
transformation (or udf), aggregations, a filter, validation, derived views (a source view), views
without entities or with a vector index, views also written offline, and a task asking for every
row rather than the latest per entity. A column whose Arrow type has no
direct encoding here (lists, JSON, maps, timestamps as values, nulls in an integer column, ...),
and every column under ``value_encoding: proto``, is converted with Feast's own converter and
``codec.encode_value``; a table whose columns are missing, or whose event times are not an Arrow
timestamp without nulls, goes through Feast's conversion and ``online_write_batch`` as a whole.
So every row is written as the default engine would write it, and a bad value fails with the
error Feast gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.importer import import_class
from feast.infra.common.materialization_job import (
    MaterializationJob,
    MaterializationJobStatus,
    MaterializationTask,
)
from feast.infra.compute_engines.base import ComputeEngine
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import BATCH_ENGINE_CLASS_FOR_TYPE, FeastConfigBaseModel
from feast.type_map import python_values_to_proto_values
from feast.utils import _convert_arrow_to_proto, _get_column_names
from feast.value_type import ValueType
from pydantic import ValidationError

from . import codec
from .constants import NULL_VALUE
from .exceptions import BadValueError, ConfigError
from .layout import ESCAPED, escape_id
from .online_store import RedisHexpireOnlineStore
from .views import ViewLayout

__all__ = [
    "ArrowMaterializationEngine",
    "ArrowMaterializationEngineConfig",
    "ArrowMaterializationJob",
    "write_arrow",
]

STORE_TYPE = "feast_redis_hexpire.RedisHexpireOnlineStore"
# Encoded values of one column (str, bytes or int, as the store sends them), or None: Feast's
# converter has to make this column.
Column = list[Any] | None
_INT64_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())
_INT32_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16())
# An id holding one of these characters is percent-escaped in its key (layout.escape_id).
_NEEDS_ESCAPE = "[" + "".join(f"\\x{{{ord(c):02x}}}" for c in ESCAPED) + "]"
_US_PER_UNIT = {"s": 1_000_000, "ms": 1000, "us": 1}


class ArrowMaterializationEngineConfig(FeastConfigBaseModel):
    """``batch_engine:`` settings of the engine (it has none besides its type)."""

    type: Literal[
        "feast_redis_hexpire.engine.ArrowMaterializationEngine",
        "feast_redis_hexpire.ArrowMaterializationEngine",
    ] = "feast_redis_hexpire.engine.ArrowMaterializationEngine"


class ArrowMaterializationJob(MaterializationJob):
    """A finished materialization of one view: succeeded, or failed with its error."""

    def __init__(self, job_id: str, error: BaseException | None = None) -> None:
        super().__init__()
        self._job_id = job_id
        self._error = error

    def status(self) -> MaterializationJobStatus:
        return MaterializationJobStatus.ERROR if self._error else MaterializationJobStatus.SUCCEEDED

    def error(self) -> BaseException | None:
        return self._error

    def should_be_retried(self) -> bool:
        return False

    def job_id(self) -> str:
        return self._job_id

    def url(self) -> str | None:
        return None


class ArrowMaterializationEngine(ComputeEngine):
    """Materializes offline Arrow tables into RedisHexpireOnlineStore without protobuf values
    (see the module text); other views go to Feast's default engine."""

    def __init__(self, *, repo_config: Any, offline_store: Any, online_store: Any, **settings: Any) -> None:
        super().__init__(repo_config=repo_config, offline_store=offline_store, online_store=online_store)
        try:
            self.config = ArrowMaterializationEngineConfig(**settings)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ConfigError(f"batch_engine: {problems}") from None
        self._default: Any = None

    # ---- what Feast calls ----

    def update(
        self,
        project: str,
        views_to_delete: Sequence[Any],
        views_to_keep: Sequence[Any],
        entities_to_delete: Sequence[Any],
        entities_to_keep: Sequence[Any],
    ) -> None:
        """At ``feast apply``: refuse an online store this engine cannot write to."""
        self._store()

    def teardown_infra(self, project: str, fvs: Sequence[Any], entities: Sequence[Any]) -> None:
        """Nothing to remove: the engine keeps no state of its own."""

    def materialize(self, registry: Any, tasks: Any, **kwargs: Any) -> list[MaterializationJob]:
        """One job per task (a MaterializationTask or a list of them), each run to completion."""
        if isinstance(tasks, MaterializationTask):
            tasks = [tasks]
        return [self._materialize_one(registry, task, **kwargs) for task in tasks]

    def get_historical_features(self, registry: Any, task: Any) -> Any:
        return self._default_engine().get_historical_features(registry, task)

    # ---- one view ----

    def _materialize_one(self, registry: Any, task: MaterializationTask, **kwargs: Any) -> MaterializationJob:
        view = task.feature_view
        job_id = f"{view.name}-{task.start_time}-{task.end_time}"
        try:
            store = self._store()
            if _needs_default_engine(view) or not getattr(task, "only_latest", True):
                return self._default_engine().materialize(registry, task, **kwargs)[0]  # type: ignore[no-any-return]
            self._write_view(store, registry, task)
        except Exception as e:  # noqa: BLE001 - Feast raises the job's error for the caller
            return ArrowMaterializationJob(job_id, e)
        return ArrowMaterializationJob(job_id)

    def _write_view(self, store: RedisHexpireOnlineStore, registry: Any, task: MaterializationTask) -> None:
        view = task.feature_view
        source: Any = view.batch_source  # not None: _needs_default_engine
        entities = [registry.get_entity(name, task.project) for name in view.entities]
        join_keys, features, ts_column, created_column = _get_column_names(view, entities)
        table = self.offline_store.pull_latest_from_table_or_query(
            config=self.repo_config,
            data_source=source,
            join_key_columns=join_keys,
            feature_name_columns=features,
            timestamp_field=ts_column,
            created_timestamp_column=created_column,
            start_date=task.start_time,
            end_date=task.end_time,
        ).to_arrow()
        mapping = _field_mapping(view)
        if mapping:
            table = table.rename_columns([mapping.get(c, c) for c in table.column_names])
        if table.num_rows == 0:
            return
        # Feast's setting (0.63+): rows per online-store call; unset means one call.
        settings = getattr(self.repo_config, "materialization_config", None)
        per_call = getattr(settings, "online_write_batch_size", None)
        batches = table.to_batches(max_chunksize=per_call) if per_call else [table]
        progress_bar = task.tqdm_builder(table.num_rows) if task.tqdm_builder else None
        try:
            progress = progress_bar.update if progress_bar is not None else None
            for batch in batches:
                write_arrow(store, self.repo_config, view, batch, progress)
        finally:
            if progress_bar is not None:
                progress_bar.close()

    # ---- helpers ----

    def _store(self) -> RedisHexpireOnlineStore:
        store = self.online_store
        if not isinstance(store, RedisHexpireOnlineStore):
            configured = getattr(getattr(self.repo_config, "online_store", None), "type", None)
            raise ConfigError(
                f"batch_engine: {self.config.type} writes only to the {STORE_TYPE} online store, "
                f"but online_store type is {configured or type(store).__name__!r}; set online_store "
                f"type: {STORE_TYPE}, or remove the batch_engine setting to use Feast's default engine"
            )
        return store

    def _default_engine(self) -> Any:
        """Feast's default engine ("local"), for what this engine leaves to it."""
        if self._default is None:
            module, name = BATCH_ENGINE_CLASS_FOR_TYPE["local"].rsplit(".", 1)
            self._default = import_class(module, name)(
                repo_config=self.repo_config, offline_store=self.offline_store, online_store=self.online_store
            )
        return self._default


def _needs_default_engine(view: Any) -> bool:
    """Views whose rows are not simply the latest offline row per entity, or that are written
    elsewhere too: Feast's default engine materializes them."""
    return bool(
        getattr(view, "batch_source", None) is None
        or getattr(view, "source_views", None)
        or getattr(view, "feature_transformation", None)
        or getattr(view, "udf", None)
        or getattr(view, "aggregations", None)
        or getattr(view, "filter", None)
        or getattr(view, "enable_validation", False)
        or getattr(view, "offline", False)
        or not getattr(view, "online", True)
        or not getattr(view, "entity_columns", None)
        or any(getattr(f, "vector_index", False) for f in view.features)
    )


def _field_mapping(view: Any) -> dict[str, str] | None:
    """The column renaming Feast's default engine applies to what it reads (its source node)."""
    if getattr(view, "stream_source", None) is not None:
        return view.stream_source.field_mapping  # type: ignore[no-any-return]
    return view.batch_source.field_mapping  # type: ignore[no-any-return]


def write_arrow(
    store: RedisHexpireOnlineStore,
    config: Any,
    view: Any,
    table: pa.Table | pa.RecordBatch,
    progress: Callable[[int], Any] | None,
) -> None:
    """Write every row of ``table`` (the view's join keys, features and event-timestamp column,
    as the offline store returns them) as one ``online_write_batch`` call would write Feast's
    conversion of it."""
    if table.num_rows == 0:
        return
    if isinstance(table, pa.Table):  # one chunk per column, as Feast's conversion reads it
        table = table.combine_chunks().to_batches()[0]
    layout = ViewLayout.of(config, view, store.client(config))
    encoded = _encode(table, view, layout)
    if encoded is None:  # Feast's own conversion, then the store's usual path
        join_keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
        store.online_write_batch(config, view, _convert_arrow_to_proto(table, view, join_keys), progress)
        return
    keys, event_us, rows = encoded
    store.write_encoded(config, view, keys, event_us, rows.__getitem__, progress)


def _encode(
    table: pa.Table | pa.RecordBatch, view: Any, layout: ViewLayout
) -> tuple[list[bytes], list[int], list[tuple[Any, ...]]] | None:
    """(keys, event times in µs, per row the flat field/value pairs), or None when the table as
    a whole must take Feast's conversion (a missing column, event times that are not a
    timestamp column without nulls)."""
    names = set(table.column_names)
    entity_columns = list(view.entity_columns)
    ts_column = view.batch_source.timestamp_field
    needed = [f.name for f in view.features] + [c.name for c in entity_columns] + [ts_column]
    if any(name not in names for name in needed):
        return None
    event_us = _event_us(table.column(ts_column))
    if event_us is None:
        return None
    columns: list[Any] = []  # field, values, field, values, ...
    for feature in view.features:  # in the view's order, as Feast's rows list them
        spec = layout.fields.get(feature.name)
        if spec is None:
            continue  # a join key listed among a stream view's features
        value_type = feature.dtype.to_value_type()
        column = table.column(feature.name)
        values = _text_column(column, value_type, spec[1]) if layout.encoding == "text" else None
        if values is None:
            protos = _feast_values(column, value_type)
            values = [codec.encode_value(v, spec[1], layout.encoding) for v in protos]
        columns += (repeat(feature.name if layout.packed else spec[0]), values)  # packed: by feature
    keys = _keys(table, view, entity_columns, layout)
    return keys, event_us, list(zip(*columns)) if columns else [()] * len(keys)


def _feast_values(column: Any, value_type: ValueType) -> list[ValueProto]:
    """What Feast's conversion makes of one column (``_convert_arrow_to_proto``, column by column)."""
    return python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)


def _event_us(column: Any) -> list[int] | None:
    """Event times as µs since the epoch (what ``codec.encode_ts`` makes of Feast's datetimes),
    or None for a column that is not a timestamp without nulls."""
    if not pa.types.is_timestamp(column.type) or column.null_count:
        return None
    ticks = column.cast(pa.int64()).to_numpy()
    unit = column.type.unit
    if unit == "ns":  # Feast's datetimes drop the nanoseconds: floor to the microsecond
        return np.floor_divide(ticks, 1000).tolist()  # type: ignore[no-any-return]
    return (ticks * _US_PER_UNIT[unit]).tolist()  # type: ignore[no-any-return]


def _keys(table: Any, view: Any, entity_columns: list[Any], layout: ViewLayout) -> list[bytes]:
    """Every row's hash key, as ``layout.keys.key`` makes it of Feast's entity key."""
    head = layout.keys.head
    if head is not None and len(entity_columns) == 1:
        ids = _id_texts(table.column(entity_columns[0].name), entity_columns[0].dtype.to_value_type())
        if ids is not None:
            keys = pc.binary_join_element_wise(pa.scalar(head), ids, "")
            return keys.cast(pa.binary()).to_pylist()  # type: ignore[no-any-return]
    # Feast's entity keys (as _convert_arrow_to_proto builds them), then the store's key builder
    values = [_feast_values(table.column(c.name), c.dtype.to_value_type()) for c in entity_columns]
    names = [c.name for c in entity_columns]
    try:
        return layout.keys.keys(EntityKeyProto(join_keys=names, entity_values=row) for row in zip(*values))
    except ValueError as e:
        raise BadValueError(f"feature view {layout.name!r}: {e}; nothing was written") from e


def _id_texts(column: Any, value_type: ValueType) -> Any:
    """A join-key column as the text ``layout.id_text`` gives each id (an Arrow string array),
    when Feast's converter keeps each value as it is (a string or an integer column without
    nulls); else None."""
    if column.null_count:
        return None
    if value_type == ValueType.STRING and _is_string(column.type):
        if pc.any(pc.match_substring_regex(column, _NEEDS_ESCAPE)).as_py():
            return pa.array([escape_id(v) for v in column.to_pylist()], pa.string())
        return column
    if (value_type == ValueType.INT64 and column.type in _INT64_TYPES) or (
        value_type == ValueType.INT32 and column.type in _INT32_TYPES
    ):
        return column.cast(pa.string())
    return None


def _is_string(arrow_type: Any) -> bool:
    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))


def _text_column(column: Any, value_type: ValueType, kind: str | None) -> Column:
    """One feature column in the ``text`` encoding, byte for byte what ``codec.encode_value``
    writes for the ValueProto Feast's converter makes of each value (a null, and a NaN, which
    Feast turns into a null, as NULL_VALUE); None where this has no direct way for the column's
    Arrow type."""
    arrow_type = column.type
    if value_type == ValueType.STRING and kind == "string_val" and _is_string(arrow_type):
        return _raw(column, "string_val", "\x00")
    if value_type == ValueType.BYTES and kind == "bytes_val" and pa.types.is_binary(arrow_type):
        return _raw(column, "bytes_val", b"\x00")
    if column.null_count:
        return _with_nulls(column, value_type, kind)
    if value_type == ValueType.INT64 and kind == "int64_val" and arrow_type in _INT64_TYPES:
        return column.to_pylist()  # type: ignore[no-any-return]  # ints: sent as their digits
    if value_type == ValueType.INT32 and kind == "int32_val" and arrow_type in _INT32_TYPES:
        return column.to_pylist()  # type: ignore[no-any-return]
    return _with_nulls(column, value_type, kind)


def _raw(column: Any, kind: str, nul: str | bytes) -> list[Any]:
    """Strings or bytes stored as they are; a null as NULL_VALUE, a value starting with NUL in
    the tagged protobuf form (codec.encode_value decides both)."""
    values = column.to_pylist()
    if column.null_count or pc.any(pc.starts_with(column.cast(pa.binary()), b"\x00")).as_py():
        return [
            NULL_VALUE
            if v is None
            else (codec.encode_value(ValueProto(**{kind: v}), kind) if v[:1] == nul else v)
            for v in values
        ]
    return values  # type: ignore[no-any-return]


def _with_nulls(column: Any, value_type: ValueType, kind: str | None) -> Column:
    """Floats and bools (nulls allowed), or None."""
    arrow_type = column.type
    if value_type == ValueType.DOUBLE and kind == "double_val" and pa.types.is_float64(arrow_type):
        single = False
    elif value_type == ValueType.FLOAT and kind == "float_val" and pa.types.is_float32(arrow_type):
        single = True
    elif value_type == ValueType.BOOL and kind == "bool_val" and pa.types.is_boolean(arrow_type):
        texts = {True: b"true", False: b"false", None: NULL_VALUE}
        return [texts[v] for v in column.to_pylist()]
    else:
        return None
    if column.null_count == 0 and pc.all(pc.is_finite(column)).as_py():
        if single:  # float32: the shortest text that round-trips as float32
            return [str(v) for v in column.to_numpy()]
        return [float.__repr__(v) for v in column.to_pylist()]
    return [
        NULL_VALUE if v is None or v != v else codec.encode_value(ValueProto(**{kind: v}), kind)  # type: ignore[misc]
        for v in column.to_pylist()
    ]
