"""The Feast online store: one hash per entity, key EXPIRE for batch views, HPEXPIRE for streaming.

Writes run :data:`scripts.WRITE_ROW` once per row: one round trip per ``write_batch_size`` rows
(:func:`scripts.run_batches`), with the event-time check and both TTLs decided atomically on
the server. Reads send one HMGET per entity, covering every requested view, in one round trip
(``reads.py``) and fill Feast's response from the raw replies (``response.py``). Where each
view's values live is ``views.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import redis
from feast import Entity, FeatureView, RepoConfig
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.supported_async_methods import SupportedAsyncMethods
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from redis.exceptions import NoPermissionError, ResponseError

from . import clients, codec, layout, metrics
from .config import RedisHexpireOnlineStoreConfig
from .connection import IO_ERRORS, address, require_hfe
from .constants import TS_FIELD_PREFIX
from .exceptions import (
    BadValueError,
    ConfigError,
    FieldCollisionError,
    FieldTTLError,
    HexpireError,
    StoreUnavailableError,
)
from .policy import policy_for
from .reads import (
    ViewRead,
    decode_columns,
    entity_keys,
    freshness_statuses,
    hmget_direct,
    plan_reads,
)
from .response import ViewResult, append_view
from .scripts import (
    DELETE_VIEW_FIELDS,
    UNLINK_IF_OURS,
    WRITE_ROW,
    run_acked,
    run_acked_async,
    run_batches,
    run_pipelined,
    run_pipelined_async,
)
from .views import ViewLayout

__all__ = ["RedisHexpireOnlineStore"]

logger = logging.getLogger(__name__)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
ReadRow = tuple[datetime | None, dict[str, ValueProto] | None]
# One view of a get_online_features read: (view, distinct keys, requested features,
# response rows of each key (None: key i is row i), number of response rows).
_ViewRequest = tuple[Any, list[bytes], list[str], list[list[int]] | None, int]


class RedisHexpireOnlineStore(OnlineStore):
    """Feast online store; select it with ``type: feast_redis_hexpire.RedisHexpireOnlineStore``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards stats: writes may run in several threads
        # Rows written, skipped as not newer than the stored row, dropped as already expired.
        self.stats: Counter[str] = Counter()

    # Pickling (Feast's Ray engine ships the store to its workers): only the counters travel;
    # the lock is rebuilt, and clients come from the receiving process's registry (clients.py).
    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"stats": dict(self.stats)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.stats.update(state.get("stats", {}))

    @property
    def async_supported(self) -> SupportedAsyncMethods:
        return SupportedAsyncMethods(read=True, write=True)

    # ---- clients: config is read on every call; clients are shared per process (clients.py) ----

    def client(self, config: RepoConfig) -> Any:
        """The process's client for the config's connection settings (shared by every store)."""
        return clients.sync_client(config.online_store)

    def async_client(self, config: RepoConfig) -> Any:
        """The client of the running event loop (a new loop gets a new client; it is closed
        inside its loop when the loop shuts down)."""
        return clients.async_client(config.online_store)

    async def initialize(self, config: RepoConfig) -> None:
        await self.async_client(config).ping()

    async def close(self) -> None:
        await clients.close_loop_clients()

    # ---- writes ----

    def _write_calls(
        self, config: RepoConfig, table: Any, data: Sequence[Row]
    ) -> tuple[str, Callable[[int, Sequence[Row]], list]]:
        """The view's mode ("batch"/"streaming") and a function that encodes the chunk of
        ``data`` starting at a row into WRITE_ROW calls. Every row's key is built first, so a
        bad entity key fails before anything is written."""
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

        return policy.mode, encode

    def _tally(self, view: str, policy_mode: str, results: list, seconds: float | None = None) -> None:
        """Count one write batch's results (``seconds``: its round trip). METRICS HOOK (writes)."""
        counts = Counter({1: "written", 0: "skipped_not_newer", -1: "dropped_expired"}[r] for r in results)
        with self._lock:
            self.stats.update(counts)
        for outcome, count in counts.items():
            metrics.rows(view, policy_mode, outcome, count)
        if seconds is not None:
            metrics.write_batch_seconds(policy_mode, seconds)
        if counts["dropped_expired"]:
            logger.warning(
                "%s view %s: %d row(s) already expired by event time were dropped",
                policy_mode,
                view,
                counts["dropped_expired"],
            )

    def _failure(self, config: RepoConfig, table: Any, start: int, total: int, err: Exception) -> Exception:
        _count_failure(config, table, total - start, err)  # METRICS HOOK (failed writes)
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

    def _check_acks(self, config: RepoConfig, table: Any, start: int, count: int, acks: list) -> None:
        """Raise when a batch's WAIT / WAITAOF came back short: its rows count as failed."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        want_local = 1 if cfg.ack_aof else 0
        local = min(int(a[0]) if isinstance(a, list) else want_local for a in acks)
        replicas = min(int(a[1]) if isinstance(a, list) else int(a) for a in acks)
        if local >= want_local and replicas >= cfg.ack_replicas:
            return
        metrics.rows(table.name, policy_for(table, cfg).mode, "failed", count)  # METRICS HOOK
        what = f"{replicas} of {cfg.ack_replicas} replica(s)" + (" (AOF)" if cfg.ack_aof else "")
        if local < want_local:
            what += " and not the master's AOF"
        done = f"rows 0..{start - 1} were acknowledged" if start else "no row was acknowledged"
        raise StoreUnavailableError(
            f"feature view {table.name!r}: rows {start}..{start + count - 1} were written to "
            f"{address(cfg)} but acknowledged by only {what} within {cfg.ack_timeout_seconds} s "
            f"(ack_replicas); a failover may lose them ({done}; later rows were not sent); "
            f"rerunning the write converges"
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
        mode, encode = self._write_calls(config, table, data)
        client = self.client(config)
        size = config.online_store.write_batch_size
        ack = config.online_store.ack_command()
        if ack is not None:  # ack_replicas / ack_aof: each batch, then WAIT on its connection
            for start in range(0, len(data), size):
                chunk = data[start : start + size]
                began = time.perf_counter()
                try:
                    results, acks = run_acked(client, WRITE_ROW, encode(start, chunk), ack)
                except (ResponseError, *IO_ERRORS) as e:
                    raise self._failure(config, table, start, len(data), e) from e
                self._tally(table.name, mode, results, time.perf_counter() - began)
                self._check_acks(config, table, start, len(chunk), acks)
                if progress:
                    progress(len(chunk))
            return
        starts = range(0, len(data), size)
        batches = run_batches(client, WRITE_ROW, (encode(i, data[i : i + size]) for i in starts))
        for start in starts:  # one batch per start, replies in order
            began = time.perf_counter()
            try:
                results = next(batches)
            except (ResponseError, *IO_ERRORS) as e:
                raise self._failure(config, table, start, len(data), e) from e
            self._tally(table.name, mode, results, time.perf_counter() - began)
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
        mode, encode = self._write_calls(config, table, data)
        client = self.async_client(config)
        size = config.online_store.write_batch_size
        ack = config.online_store.ack_command()
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            began = time.perf_counter()
            acks: list = []
            try:
                if ack is None:
                    results = await run_pipelined_async(client, WRITE_ROW, encode(start, chunk))
                else:
                    results, acks = await run_acked_async(client, WRITE_ROW, encode(start, chunk), ack)
            except (ResponseError, *IO_ERRORS) as e:
                raise self._failure(config, table, start, len(data), e) from e
            self._tally(table.name, mode, results, time.perf_counter() - began)
            if ack is not None:
                self._check_acks(config, table, start, len(chunk), acks)
            if progress:
                progress(len(chunk))

    # ---- reads: every view, every entity, one HMGET per entity, one round trip ----

    def _hmget(self, config: RepoConfig, commands: list[tuple[bytes, list[str]]]) -> list:
        """The HMGET replies, timed and counted. METRICS HOOK (reads: round trip, errors)."""
        began = time.perf_counter()
        try:
            replies = self._hmget_replies(config, commands)
        except IO_ERRORS:
            metrics.connection_error("read")
            raise
        metrics.read_seconds(time.perf_counter() - began)
        return replies

    async def _hmget_async(self, config: RepoConfig, commands: list[tuple[bytes, list[str]]]) -> list:
        """:meth:`_hmget` on the running loop's client. METRICS HOOK (reads: round trip, errors)."""
        began = time.perf_counter()
        try:
            replies = await self._hmget_replies_async(config, commands)
        except IO_ERRORS:
            metrics.connection_error("read")
            raise
        metrics.read_seconds(time.perf_counter() - began)
        return replies

    def _hmget_replies(self, config: RepoConfig, commands: list[tuple[bytes, list[str]]]) -> list:
        client = self.client(config)
        if isinstance(client, redis.Redis):  # one server: skip the pipeline machinery
            replies = hmget_direct(client, commands)
            if replies is not None:
                return replies
        elif len(commands) == 1:  # a cluster, one entity: a plain command skips the pipeline
            key, fields = commands[0]
            return [client.hmget(key, fields)]
        with client.pipeline(transaction=False) as pipe:  # a cluster, or a retry after an I/O error
            for key, fields in commands:
                pipe.hmget(key, fields)
            return pipe.execute()

    async def _hmget_replies_async(self, config: RepoConfig, commands: list[tuple[bytes, list[str]]]) -> list:
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
    ) -> tuple[list[tuple[bytes, list[str]]], list[ViewRead]]:
        keys = ViewLayout.of(config, table).keys.keys(entity_keys)
        return plan_reads(config, [(table, keys, requested)])

    @staticmethod
    def _read_rows(config: RepoConfig, read: ViewRead, commands: list, replies: list) -> list[ReadRow]:
        """online_read's rows: (event time, {feature: value}), (None, None) when not found."""
        ts_raw, columns = decode_columns(read, commands, replies)
        row_status = freshness_statuses(config, read.table, ts_raw)
        _count_reads(read.view.name, ts_raw, row_status)  # METRICS HOOK (reads by status)
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
            keys, fanout, output_len = entity_keys(config, table, join_key_values, entity_map, shared)
            requests.append((table, keys, requested, fanout, output_len))
        return requests

    @staticmethod
    def _populate(
        config: RepoConfig, requests: list[_ViewRequest], reads: list[ViewRead], commands: list,
        replies: list, response: Any, full_names: bool, meta: bool,
    ) -> None:  # fmt: skip
        """Fill Feast's response from the replies (the work of Feast's
        ``_populate_response_from_feature_data``, column by column and without datetimes)."""
        for (table, _, requested, fanout, output_len), read in zip(requests, reads):
            ts_raw, columns = decode_columns(read, commands, replies, share=True)  # copied into protos
            row_status = freshness_statuses(config, table, ts_raw)
            _count_reads(read.view.name, ts_raw, row_status)  # METRICS HOOK (reads by status)
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
        commands, reads = plan_reads(config, [(t, k, r) for t, k, r, _, _ in requests])
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
        commands, reads = plan_reads(config, [(t, k, r) for t, k, r, _, _ in requests])
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
            _require_acks(client, config.online_store)
        except IO_ERRORS as e:
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


def _count_reads(view: str, ts_raw: list[bytes | None], row_status: list | None) -> None:
    """metrics.reads for one view of a read: entities present, not found (no ``_ts`` field, or
    dropped by ``freshness_check: drop``) and flagged OUTSIDE_MAX_AGE."""
    if not metrics.available():
        return
    missing = ts_raw.count(None)
    stale = dropped = 0
    if row_status is not None:
        dropped = sum(1 for raw, status in zip(ts_raw, row_status) if raw is not None and status is None)
        stale = sum(1 for status in row_status if status == FieldStatus.OUTSIDE_MAX_AGE)
    metrics.reads(view, len(ts_raw) - missing - dropped - stale, missing + dropped, stale)


def _count_failure(config: RepoConfig, table: Any, rows: int, err: Exception) -> None:
    """metrics for a write batch that failed: ``rows`` rows counted failed, and the kind of error."""
    if not metrics.available():
        return
    name = getattr(table, "name", "?")
    try:
        mode = policy_for(table, config.online_store).mode
    except HexpireError:
        mode = "unknown"
    metrics.rows(name, mode, "failed", rows)
    if isinstance(err, ResponseError):
        kind = "no_permission" if isinstance(err, NoPermissionError) else "refused"
        metrics.script_error(name, "field_ttl" if "HPEXPIRE returned" in str(err) else kind)
    else:
        metrics.connection_error("write")


def _require_acks(client: Any, cfg: RedisHexpireOnlineStoreConfig) -> None:
    """At `feast apply`: ack_replicas no larger than the replicas connected now, and ack_aof only
    with the master's AOF on."""
    if cfg.ack_replicas:
        connected = int(client.info("replication").get("connected_slaves", 0))
        if connected < cfg.ack_replicas:
            raise ConfigError(
                f"ack_replicas: {cfg.ack_replicas}, but the master at {address(cfg)} has {connected} "
                f"replica(s) connected; every write would fail"
            )
    if cfg.ack_aof and not int(client.info("persistence").get("aof_enabled", 0)):
        raise ConfigError(f"ack_aof: true, but the master at {address(cfg)} runs without AOF (appendonly no)")
