"""The Feast online store: one hash per entity, key EXPIRE for batch views, HPEXPIRE for streaming.

Writes run :data:`scripts.WRITE_ROW` once per row, pipelined: one round trip per
``write_batch_size`` rows, with the event-time check and both TTLs decided atomically on the
server. Reads send one HMGET per entity, covering every requested view, in one pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import hiredis
import redis
from feast import Entity, FeatureView, RepoConfig, utils
from feast.infra.online_stores.helpers import compute_versioned_name
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.supported_async_methods import SupportedAsyncMethods
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import codec, layout
from .config import RedisHexpireOnlineStoreConfig
from .connection import address, make_async_client, make_client, require_hfe
from .constants import TS_FIELD_PREFIX
from .exceptions import (
    BadValueError,
    ConfigError,
    FieldCollisionError,
    FieldTTLError,
    HexpireError,
    StoreUnavailableError,
)
from .policy import ViewPolicy, policy_for
from .response import ViewResult, append_view
from .scripts import (
    DELETE_VIEW_FIELDS,
    UNLINK_IF_OURS,
    WRITE_ROW,
    run_batches,
    run_pipelined,
    run_pipelined_async,
)

__all__ = ["RedisHexpireOnlineStore"]

logger = logging.getLogger(__name__)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
ReadRow = tuple[datetime | None, dict[str, ValueProto] | None]
# One view of a get_online_features read: (view, distinct keys, requested features,
# response rows of each key (None: key i is row i), number of response rows).
_ViewRequest = tuple[Any, list[bytes], list[str], list[list[int]] | None, int]

_IO_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


_LAYOUT_ATTR = "_hexpire_layout"


@dataclass(frozen=True)
class ViewLayout:
    """Where one feature view's values live: its key builder, fields and value types."""

    name: str
    ts_field: str
    keys: layout.KeyBuilder
    fields: dict[str, tuple[str, str | None]]  # feature -> (hash field, codec kind)
    encoding: str
    decoders: dict[str, Callable[[bytes], ValueProto]]  # feature -> codec.decoder(kind)

    @classmethod
    def of(cls, config: RepoConfig, table: Any) -> ViewLayout:
        """The layout of ``table``, cached on the view object (Feast's registry cache hands
        the same objects to every read) and rebuilt when a setting it depends on changes."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        signature = (
            config.project,
            cfg.key_prefix,
            cfg.field_names,
            cfg.value_encoding,
            versioning,
            len(table.features),
        )
        cached = getattr(table, _LAYOUT_ATTR, None)
        if cached is not None and cached[0] == signature:
            return cached[1]
        built = cls._build(config, table, versioning)
        try:
            setattr(table, _LAYOUT_ATTR, (signature, built))
        except AttributeError:  # a view type that refuses new attributes: just don't cache
            pass
        return built

    @classmethod
    def _build(cls, config: RepoConfig, table: Any, versioning: bool) -> ViewLayout:
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        name = compute_versioned_name(table, versioning)
        join_keys = set(getattr(table, "join_keys", None) or ())
        fields = {
            f.name: (
                layout.feature_field(name, f.name, cfg.field_names),
                codec.expected_kind(f.dtype.to_value_type()),
            )
            for f in table.features
            if f.name not in join_keys
        }
        entities = [e for e in (getattr(table, "entities", None) or ())]
        return cls(
            name=name,
            ts_field=layout.ts_field(name),
            keys=layout.KeyBuilder(cfg.prefix_for(config.project), entities),
            fields=fields,
            encoding=cfg.value_encoding,
            decoders={f: codec.decoder(kind, cfg.value_encoding) for f, (_, kind) in fields.items()},
        )


class RedisHexpireOnlineStore(OnlineStore):
    """Feast online store; select it with ``type: feast_redis_hexpire.RedisHexpireOnlineStore``."""

    def __init__(self) -> None:
        self._clients: dict[tuple, Any] = {}
        self._async_clients: dict[tuple, Any] = {}  # (event loop, settings) -> client
        self._lock = threading.Lock()
        # Rows written, skipped as not newer than the stored row, dropped as already expired.
        self.stats: Counter[str] = Counter()

    @property
    def async_supported(self) -> SupportedAsyncMethods:
        return SupportedAsyncMethods(read=True, write=True)

    # ---- clients: config is read on every call, clients are cached per connection settings ----

    @staticmethod
    def _settings(cfg: RedisHexpireOnlineStoreConfig) -> tuple:
        return (
            cfg.connection_string,
            cfg.redis_type,
            cfg.sentinel_master,
            cfg.socket_timeout,
            cfg.socket_connect_timeout,
            cfg.retries,
        )

    def client(self, config: RepoConfig) -> Any:
        cfg = config.online_store
        settings = self._settings(cfg)
        with self._lock:
            if settings not in self._clients:
                if cfg.client == "glide":
                    logger.warning("online_store client: glide is ignored; this store uses redis-py")
                self._clients[settings] = make_client(cfg)
            return self._clients[settings]

    def async_client(self, config: RepoConfig) -> Any:
        """A client bound to the running event loop (a new loop gets a new client)."""
        loop = asyncio.get_running_loop()
        cfg = config.online_store
        for stale in [k for k in self._async_clients if k[0].is_closed()]:
            del self._async_clients[stale]
        key = (loop, self._settings(cfg))
        if key not in self._async_clients:
            self._async_clients[key] = make_async_client(cfg)
        return self._async_clients[key]

    async def initialize(self, config: RepoConfig) -> None:
        await self.async_client(config).ping()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for key in [k for k in self._async_clients if k[0] is loop]:
            await self._async_clients.pop(key).aclose()

    # ---- writes ----

    def _write_calls(
        self, config: RepoConfig, table: Any, data: Sequence[Row]
    ) -> tuple[list[bytes], Callable[[int, Sequence[Row]], list]]:
        """Keys of every row (built first, so a bad entity key fails before anything is
        written) and a function that encodes one chunk into WRITE_ROW calls."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        view = ViewLayout.of(config, table)
        policy = policy_for(table, cfg)
        try:
            keys = view.keys.keys(row[0] for row in data)
        except ValueError as e:
            raise BadValueError(f"feature view {view.name!r}: {e}; nothing was written") from e
        head = (
            str(policy.key_ttl_ms),
            str(policy.field_ttl_ms) if cfg.ttl_from == "write" else "0",
        )
        skip = "1" if cfg.skip_dedup else "0"
        by_event = policy.streaming and cfg.ttl_from == "event"
        fields, encoding = view.fields, view.encoding

        def encode(start: int, chunk: Sequence[Row]) -> list:
            calls = []
            for offset, (_, values, event_ts, _) in enumerate(chunk):
                ts_us = codec.encode_ts(event_ts)
                expire_at = ts_us // 1000 + policy.field_ttl_ms if by_event else 0
                argv: list[Any] = [view.ts_field, ts_us, *head, expire_at, skip]
                for feature, value in values.items():
                    spec = fields.get(feature)
                    if spec is None:
                        continue  # a join key listed among a stream view's features
                    argv.append(spec[0])
                    argv.append(codec.encode_value(value, spec[1], encoding))
                calls.append((keys[start + offset], argv))
            return calls

        return keys, encode

    def _tally(self, view: str, policy_mode: str, results: list) -> None:
        counts = Counter({1: "written", 0: "skipped_not_newer", -1: "dropped_expired"}[r] for r in results)
        self.stats.update(counts)
        if counts["dropped_expired"]:
            logger.warning(
                "%s view %s: %d row(s) already expired by event time were dropped",
                policy_mode,
                view,
                counts["dropped_expired"],
            )

    def _failure(self, config: RepoConfig, table: Any, start: int, total: int, err: Exception) -> Exception:
        where = address(config.online_store)
        if isinstance(err, ResponseError):
            if "HPEXPIRE returned" in str(err):
                return FieldTTLError(f"feature view {table.name!r}: {err}")
            if isinstance(err, NoPermissionError):  # every row of the batch was refused alike
                return StoreUnavailableError(
                    f"feature view {table.name!r}: the Redis user at {where} may not write: {err}; "
                    f"nothing of rows {start}..{total - 1} was written (see docs/ACL.md)"
                )
            # e.g. WRONGTYPE: a key of the same name that is not a hash; the other rows were written.
            return HexpireError(f"feature view {table.name!r}: the server at {where} refused a row: {err}")
        done = f"rows 0..{start - 1} were written" if start else "no row is confirmed written"
        return StoreUnavailableError(
            f"writing feature view {table.name!r} to {where} failed: {err}; rows {start}..{total - 1} "
            f"of this batch may not be written ({done}); rerunning the write converges, older "
            f"rows are skipped by event time"
        )

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not data:
            return
        _, encode = self._write_calls(config, table, data)
        client = self.client(config)
        size = config.online_store.write_batch_size
        mode = policy_for(table, config.online_store).mode
        starts = range(0, len(data), size)
        batches = run_batches(client, WRITE_ROW, (encode(i, data[i : i + size]) for i in starts))
        for start in starts:  # one batch per start, replies in order
            try:
                results = next(batches)
            except (ResponseError, *_IO_ERRORS) as e:
                raise self._failure(config, table, start, len(data), e) from e
            self._tally(table.name, mode, results)
            if progress:
                progress(len(results))

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not data:
            return
        _, encode = self._write_calls(config, table, data)
        client = self.async_client(config)
        size = config.online_store.write_batch_size
        mode = policy_for(table, config.online_store).mode
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            try:
                results = await run_pipelined_async(client, WRITE_ROW, encode(start, chunk))
            except (ResponseError, *_IO_ERRORS) as e:
                raise self._failure(config, table, start, len(data), e) from e
            self._tally(table.name, mode, results)
            if progress:
                progress(len(chunk))

    # ---- reads: every view, every entity, one HMGET per entity, one round trip ----

    def _plan_reads(
        self, config: RepoConfig, requests: Sequence[tuple[Any, Sequence[bytes], list[str] | None]]
    ) -> tuple[list[tuple[bytes, list[str]]], list[_ViewRead]]:
        """HMGET commands (one per distinct key) for several (view, keys, features) requests,
        and where each view's values sit in their replies."""
        reads = []
        members: dict[bytes, list[int]] = {}  # key -> the requests reading it
        for request_no, (table, keys, requested) in enumerate(requests):
            view = ViewLayout.of(config, table)
            names = [f for f in (requested or view.fields) if f in view.fields]
            fields = [view.ts_field] + [view.fields[f][0] for f in names]
            reads.append(_ViewRead(table, view, names, fields, [], []))
            for key in keys:
                members.setdefault(key, []).append(request_no)
        # Keys read by the same requests share one field list: work per combination, not per key.
        combos: dict[tuple[int, ...], tuple[list[str], dict[int, list[int]]]] = {}
        commands: list[tuple[bytes, list[str]]] = []
        where: dict[bytes, tuple[int, dict[int, list[int]]]] = {}
        for key, request_nos in members.items():
            combo = combos.get(tuple(request_nos))
            if combo is None:
                combo = _combine([reads[n].fields for n in request_nos], request_nos)
                combos[tuple(request_nos)] = combo
            where[key] = (len(commands), combo[1])
            commands.append((key, combo[0]))
        for request_no, (read, (_, keys, _)) in enumerate(zip(reads, requests)):
            read.replies = [where[key][0] for key in keys]
            read.positions = [where[key][1][request_no] for key in keys]
        return commands, reads

    def _hmget(self, config: RepoConfig, commands: list[tuple[bytes, list[str]]]) -> list:
        client = self.client(config)
        if isinstance(client, redis.Redis):  # one server: skip the pipeline machinery
            replies = _hmget_direct(client, commands)
            if replies is not None:
                return replies
        elif len(commands) == 1:  # a cluster, one entity: a plain command skips the pipeline
            key, fields = commands[0]
            return [client.hmget(key, fields)]
        with client.pipeline(transaction=False) as pipe:  # a cluster, or a retry after an I/O error
            for key, fields in commands:
                pipe.hmget(key, fields)
            return pipe.execute()

    async def _hmget_async(self, config: RepoConfig, commands: list[tuple[bytes, list[str]]]) -> list:
        if len(commands) == 1:
            key, fields = commands[0]
            return [await self.async_client(config).hmget(key, fields)]
        async with self.async_client(config).pipeline(transaction=False) as pipe:
            for key, fields in commands:
                pipe.hmget(key, fields)
            return await pipe.execute()

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[ReadRow]:
        commands, reads = self._plan_online_read(config, table, entity_keys, requested_features)
        return self._read_rows(config, reads[0], commands, self._hmget(config, commands))

    async def online_read_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[ReadRow]:
        commands, reads = self._plan_online_read(config, table, entity_keys, requested_features)
        return self._read_rows(config, reads[0], commands, await self._hmget_async(config, commands))

    def _plan_online_read(
        self, config: RepoConfig, table: Any, entity_keys: list[EntityKeyProto], requested: list[str] | None
    ) -> tuple[list[tuple[bytes, list[str]]], list[_ViewRead]]:
        keys = ViewLayout.of(config, table).keys.keys(entity_keys)
        return self._plan_reads(config, [(table, keys, requested)])

    @staticmethod
    def _read_rows(config: RepoConfig, read: _ViewRead, commands: list, replies: list) -> list[ReadRow]:
        """online_read's rows: (event time, {feature: value}), (None, None) when not found."""
        ts_raw, columns = _decode_columns(read, commands, replies)
        row_status = _row_status(config, read.table, ts_raw)
        rows: list[ReadRow] = []
        for i, (raw_ts, values) in enumerate(zip(ts_raw, zip(*columns) if columns else [()] * len(ts_raw))):
            features = {name: v for name, v in zip(read.names, values) if v is not None}
            if (raw_ts is None and not features) or (row_status is not None and row_status[i] is None):
                rows.append((None, None))
            else:
                rows.append((codec.decode_ts(raw_ts) if raw_ts is not None else None, features))
        return rows

    @staticmethod
    def _feature_requests(
        config: RepoConfig, grouped_refs: list, join_key_values: dict, entity_map: dict
    ) -> list[_ViewRequest]:
        """Per view: (view, distinct keys, requested features, response rows of each key or
        None when key i is row i, number of response rows)."""
        for join_key, values in join_key_values.items():
            if any(v.WhichOneof("val") is None for v in values):  # Feast itself fails obscurely
                raise BadValueError(f"entity rows: join key {join_key!r} has a null value")
        shared: dict[tuple, tuple[list[bytes], list[list[int]] | None, int]] = {}
        requests: list[_ViewRequest] = []
        for table, requested in grouped_refs:
            keys, fanout, output_len = _entity_keys(config, table, join_key_values, entity_map, shared)
            requests.append((table, keys, requested, fanout, output_len))
        return requests

    @staticmethod
    def _populate(
        config: RepoConfig, requests: list[_ViewRequest], reads: list[_ViewRead], commands: list,
        replies: list, response: Any, full_names: bool, meta: bool,
    ) -> None:  # fmt: skip
        """Fill Feast's response from the replies (the work of Feast's
        ``_populate_response_from_feature_data``, column by column and without datetimes)."""
        for (table, _, requested, fanout, output_len), read in zip(requests, reads):
            ts_raw, columns = _decode_columns(read, commands, replies, share=True)  # copied into protos
            row_status = _row_status(config, table, ts_raw)
            result = ViewResult(table, requested, read.names, ts_raw, columns, row_status, fanout, output_len)
            append_view(response, result, full_names, meta)

    def _read_features_per_fv(
        self,
        config: RepoConfig,
        grouped_refs: list,
        join_key_values: dict,
        entity_name_to_join_key_map: dict,
        online_features_response: Any,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        requests = self._feature_requests(config, grouped_refs, join_key_values, entity_name_to_join_key_map)
        commands, reads = self._plan_reads(config, [(t, k, r) for t, k, r, _, _ in requests])
        replies = self._hmget(config, commands) if commands else []
        self._populate(
            config, requests, reads, commands, replies, online_features_response, full_feature_names,
            include_feature_view_version_metadata,
        )  # fmt: skip

    async def _read_features_per_fv_async(
        self,
        config: RepoConfig,
        grouped_refs: list,
        join_key_values: dict,
        entity_name_to_join_key_map: dict,
        online_features_response: Any,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        requests = self._feature_requests(config, grouped_refs, join_key_values, entity_name_to_join_key_map)
        commands, reads = self._plan_reads(config, [(t, k, r) for t, k, r, _, _ in requests])
        replies = await self._hmget_async(config, commands) if commands else []
        self._populate(
            config, requests, reads, commands, replies, online_features_response, full_feature_names,
            include_feature_view_version_metadata,
        )  # fmt: skip

    # ---- feast apply / feast teardown ----

    @staticmethod
    def check_views(config: RepoConfig, views: Sequence[Any]) -> None:
        """Refuse bad tags, reserved names and two views writing one field of one hash."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        owners: dict[tuple[str, str], str] = {}
        for table in views:
            policy_for(table, cfg)
            view = ViewLayout.of(config, table)
            segment = layout.entity_segment(
                list(getattr(table, "entities", None) or ()), list(getattr(table, "join_keys", None) or ())
            )
            for feature, (field, _) in view.fields.items():
                if field.startswith(TS_FIELD_PREFIX):
                    raise ConfigError(
                        f"feature view {table.name!r}: feature {feature!r} uses the reserved prefix "
                        f"{TS_FIELD_PREFIX!r}"
                    )
                other = owners.setdefault((segment, field), table.name)
                if other != table.name:
                    raise FieldCollisionError(
                        f"feature views {other!r} and {table.name!r} both write field {field!r} of "
                        f"the same '{segment}' hashes; rename one feature or set "
                        f"field_names: view_feature in the online_store config"
                    )

    def _scan(self, client: Any, pattern: str) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                yield batch
                batch = []
        if batch:
            yield batch

    @staticmethod
    def _segment(table: Any) -> str:
        return layout.entity_segment(
            list(getattr(table, "entities", None) or ()), list(getattr(table, "join_keys", None) or ())
        )

    def delete_view_fields(self, config: RepoConfig, table: Any) -> int:
        """Remove one view's fields from every hash of its entity; returns fields removed."""
        client = self.client(config)
        view = ViewLayout.of(config, table)
        argv = [view.ts_field] + [f for f, _ in view.fields.values()]
        pattern = layout.scan_pattern(config.online_store.prefix_for(config.project), self._segment(table))
        removed = 0
        for keys in self._scan(client, pattern):
            removed += sum(run_pipelined(client, DELETE_VIEW_FIELDS, [(k, argv) for k in keys]))
        logger.info("removed %d field(s) of deleted feature view %s", removed, view.name)
        return removed

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        views = {t.name: t for t in _registered_views(config)} if partial else {}
        views.update((t.name, t) for t in tables_to_keep)
        for table in tables_to_delete:
            views.pop(table.name, None)
        self.check_views(config, list(views.values()))
        client = self.client(config)
        try:
            require_hfe(client, config.online_store)
        except _IO_ERRORS as e:
            raise StoreUnavailableError(f"cannot reach Redis at {address(config.online_store)}: {e}") from e
        if config.online_store.full_scan_for_deletion:
            for table in tables_to_delete:
                self.delete_view_fields(config, table)

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        unlinked = self.remove_project_keys(config, tables)
        logger.info("teardown unlinked %d key(s) of project %s", unlinked, config.project)

    def remove_project_keys(self, config: RepoConfig, tables: Sequence[Any]) -> int:
        """Unlink the hashes of these views: SCAN ``<escaped prefix><entity>:*`` per entity, then
        UNLINK only hashes holding one of their ``_ts`` fields (another project's fields in a
        shared hash stay). Never FLUSHDB. Returns the number of keys unlinked."""
        if not tables:
            return 0
        client = self.client(config)
        prefix = config.online_store.prefix_for(config.project)
        layouts = [ViewLayout.of(config, t) for t in tables]
        argv = [len(layouts), *(v.ts_field for v in layouts)]
        argv += [field for v in layouts for field, _ in v.fields.values()]
        unlinked = 0
        for segment in sorted({self._segment(t) for t in tables}):
            for keys in self._scan(client, layout.scan_pattern(prefix, segment)):
                unlinked += sum(run_pipelined(client, UNLINK_IF_OURS, [(k, argv) for k in keys]))
        return unlinked

    def policy(self, config: RepoConfig, table: Any) -> ViewPolicy:
        return policy_for(table, config.online_store)

    def key_for(self, config: RepoConfig, table: Any, entity_key: EntityKeyProto) -> bytes:
        """The hash key of one entity of ``table`` (for inspection and tests)."""
        return ViewLayout.of(config, table).keys.key(entity_key)


def hexpire_store(feature_store: Any) -> RedisHexpireOnlineStore:
    """The plugin instance behind a ``feast.FeatureStore`` (for its client, stats and layout)."""
    online = feature_store._get_provider().online_store
    if not isinstance(online, RedisHexpireOnlineStore):
        raise ConfigError(f"the repo's online store is {type(online).__name__}, not RedisHexpireOnlineStore")
    return online


def _registered_views(config: RepoConfig) -> list[Any]:
    """Views already in the registry: a partial apply (``FeatureStore.apply``) passes only the
    views it changes, and a new view must not collide with one applied earlier."""
    from feast import FeatureStore

    try:
        repo_path = str(config.repo_path) if config.repo_path else None
        registered = FeatureStore(repo_path=repo_path, config=config)
        return [*registered.list_feature_views(), *registered.list_stream_feature_views()]
    except Exception as e:  # no registry yet (first apply) or unreadable: check what we have
        logger.debug("field collision check without the registry: %s", e)
        return []


def _decode(view: ViewLayout, feature: str, key: bytes, raw: bytes) -> ValueProto:
    try:
        return view.decoders[feature](raw)
    except (ValueError, TypeError) as e:  # also protobuf's DecodeError, a ValueError
        raise BadValueError(
            f"feature view {view.name!r}, feature {feature!r} of key {key.decode(errors='replace')}: "
            f"stored value {raw[:40]!r} does not decode as the declared type ({e}); if the feature's "
            f"type changed, materialize the view again"
        ) from e


# ---- read helpers ----


@dataclass
class _ViewRead:
    """One view's part of a read: its fields, and where each entity's values sit in the replies."""

    table: Any
    view: ViewLayout
    names: list[str]  # requested features the view has, in request order
    fields: list[str]  # hash fields: the view's _ts field, then one per name
    replies: list[int]  # per key: its reply (set by _plan_reads)
    positions: list[list[int]]  # per key: where fields sit in that reply


def _combine(field_lists: list[list[str]], request_nos: list[int]) -> tuple[list[str], dict[int, list[int]]]:
    """One HMGET field list covering several views' fields, and each view's positions in it."""
    index: dict[str, int] = {}
    positions = {
        n: [index.setdefault(f, len(index)) for f in fields] for n, fields in zip(request_nos, field_lists)
    }
    return list(index), positions


def _hmget_direct(client: redis.Redis, commands: list[tuple[bytes, list[str]]]) -> list | None:
    """The HMGETs written in one send on one pooled connection and their replies read back: a
    third of a redis-py pipeline's client work. None after an I/O error (the caller retries
    through the pipeline; reads are safe to repeat); an error reply is raised after every
    reply was read, so the connection stays in step."""
    pool = client.connection_pool
    conn = pool.get_connection()
    replies: list = []
    error: ResponseError | None = None
    try:
        pack = hiredis.pack_command
        packed = b"".join([pack(("HMGET", key, *fields)) for key, fields in commands])  # type: ignore[arg-type]
        conn.send_packed_command([packed], check_health=False)
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as e:  # e.g. WRONGTYPE: the key holds no hash
                error = error or e
                replies.append(e)
    except _IO_ERRORS:
        conn.disconnect()
        return None
    except BaseException:  # replies may still be on the wire: this connection is out of step
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if error is not None:
        raise error
    return replies


def _entity_keys(
    config: RepoConfig, table: Any, join_key_values: dict, entity_map: dict, shared: dict
) -> tuple[list[bytes], list[list[int]] | None, int]:
    """The distinct hash keys of the request's entity rows for ``table``, the response rows
    each one fills (None: key i is row i), and the number of response rows: what Feast's
    ``_get_unique_entities`` gives, as keys. Keys are built straight from the join-key values;
    an aliased projection (join_key_map) or missing columns go through Feast's helper."""
    view = ViewLayout.of(config, table)
    join_keys = tuple(entity_map[name] for name in table.entities)
    columns: list[list[ValueProto]] = [join_key_values.get(jk) or [] for jk in join_keys]
    if table.projection.join_key_map or not all(columns):
        entities, groups, total = utils._get_unique_entities(table, join_key_values, entity_map)
        return view.keys.keys(utils._get_entity_key_protos(entities)), list(groups), total
    builder = view.keys
    signature = (builder.prefix, tuple(builder.entity_names), join_keys)
    if signature not in shared:  # views of one entity share their keys
        rows: dict[bytes, list[int]] = {}
        head = builder.head  # one entity, one join key: the key is this plus the escaped id
        if head is not None and len(columns) == 1:
            for row_no, value in enumerate(columns[0]):
                rows.setdefault((head + layout.id_text(value)).encode(), []).append(row_no)
        else:
            for row_no, values in enumerate(zip(*columns)):
                key = builder.key(EntityKeyProto(join_keys=join_keys, entity_values=values))
                rows.setdefault(key, []).append(row_no)
        output_len = min(len(c) for c in columns)
        fanout = None if len(rows) == output_len else list(rows.values())  # no repeated entity
        shared[signature] = (list(rows), fanout, output_len)
    return shared[signature]


def _decode_columns(
    read: _ViewRead, commands: list, replies: list, share: bool = False
) -> tuple[list, list[list]]:
    """The raw _ts values and one decoded column per feature (None: missing), per entity.
    ``share``: entities with the same stored value get the same ValueProto object (decoded
    once; counts and categories repeat a lot), for callers that only copy the values."""
    mine = [replies[n] for n in read.replies]
    ts_raw = [reply[pos[0]] for reply, pos in zip(mine, read.positions)]
    columns = []
    for i, (name, decode) in enumerate(((n, read.view.decoders[n]) for n in read.names), start=1):
        raws = [reply[pos[i]] for reply, pos in zip(mine, read.positions)]
        try:
            if share:
                decoded = {raw: None if raw is None else decode(raw) for raw in dict.fromkeys(raws)}
                columns.append(list(map(decoded.__getitem__, raws)))
            else:
                columns.append([None if raw is None else decode(raw) for raw in raws])
        except (ValueError, TypeError):  # find the entity for a clear error
            for reply_no, raw in zip(read.replies, raws):
                if raw is not None:
                    _decode(read.view, name, commands[reply_no][0], raw)
            raise
    return ts_raw, columns


def _row_status(config: RepoConfig, table: Any, ts_raw: list[bytes | None]) -> list | None:
    """freshness_check against ``table.ttl``: per entity PRESENT, OUTSIDE_MAX_AGE (flag) or None
    (drop); None for the whole view when nothing is checked."""
    mode = config.online_store.freshness_check
    max_age = getattr(table, "ttl", None) if mode != "off" else None
    if not max_age:
        return None
    oldest = codec.encode_ts(datetime.now(UTC)) - max_age // timedelta(microseconds=1)
    stale = None if mode == "drop" else FieldStatus.OUTSIDE_MAX_AGE
    return [FieldStatus.PRESENT if raw is None or int(raw) >= oldest else stale for raw in ts_raw]
