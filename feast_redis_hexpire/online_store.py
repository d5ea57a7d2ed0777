"""The Feast online store: one hash per entity, key EXPIRE for batch views, HPEXPIRE for streaming.

Writes run :data:`scripts.WRITE_ROWS` once per ``write_rows_per_call`` rows (in a cluster: of one
master, ``cluster_write_calls``), one round trip per ``write_batch_size`` rows, with the
event-time check and both TTLs decided atomically on the server, row by row. Reads send one
HMGET per entity, covering every requested view, in one round trip (``reads.py``) and fill
Feast's response from the raw replies (``response.py``); ``get_online_features`` reuses Feast's
resolution of a request through a cached read plan (``read_plan.py``). Where each view's values
live is ``views.py``.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import redis.asyncio as aredis
from feast import Entity, FeatureView, RepoConfig
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.supported_async_methods import SupportedAsyncMethods
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from redis.crc import key_slot
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError

from . import clients, codec, layout, metrics
from .config import RedisHexpireOnlineStoreConfig, RedisType
from .connection import IO_ERRORS, address, has_hsetex, primaries, require_hfe
from .constants import MAX_FIELD_EXPIRE_AT_MS, TS_FIELD_PREFIX
from .direct import direct_reads
from .exceptions import (
    BadValueError,
    ConfigError,
    FieldCollisionError,
    FieldTTLError,
    HexpireError,
    StoreUnavailableError,
)
from .naming import apply_claims, release_views
from .policy import policy_for
from .read_plan import PlanCache, PreparedRead
from .reads import (
    Route,
    ViewRead,
    decode_columns,
    entity_keys,
    freshness_statuses,
    hmget_cluster_direct,
    hmget_direct,
    native_entity_keys,
    plan_reads,
    route_for,
    value_columns,
)
from .response import ViewResult, append_view, row_vectors, view_vectors
from .scripts import (
    DELETE_VIEW_FIELDS,
    FIELD_TTL_ERROR,
    UNLINK_IF_OURS,
    WRITE_PACKED,
    WRITE_ROWS,
    Call,
    NodeAck,
    NodeBatch,
    Script,
    run_acked_batch,
    run_acked_batch_async,
    run_batches,
    run_by_node,
    run_by_node_async,
    run_pipelined,
    run_pipelined_async,
)
from .views import ViewLayout, check_stored_layout, view_names

__all__ = ["RedisHexpireOnlineStore"]

logger = logging.getLogger(__name__)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
ReadRow = tuple[datetime | None, dict[str, ValueProto] | None]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Which rows may share a call: a function of the row's key (a hash slot, a cluster master), or
# None (one server: any rows).
GroupOf = Callable[[bytes], Hashable] | None
# Encodes rows (row numbers) into WRITE_ROWS calls of rows of one group, with the rows of each call.
Encode = Callable[[Sequence[int], GroupOf], tuple[list[Call], list[list[int]]]]
# One view of a get_online_features read: (view, distinct keys, requested features,
# response rows of each key (None: key i is row i), number of response rows).
_ViewRequest = tuple[Any, list[bytes], list[str], list[list[int]] | None, int]
# Feast releases before version metadata have no such argument on get_online_features.
_BASE_TAKES_META = (
    "include_feature_view_version_metadata" in inspect.signature(OnlineStore.get_online_features).parameters
)


class RedisHexpireOnlineStore(OnlineStore):
    """Feast online store; select it with ``type: feast_redis_hexpire.RedisHexpireOnlineStore``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards stats: writes may run in several threads
        self._hsetex_known: dict[tuple, bool] = {}  # connection settings -> server has HSETEX
        # Rows written, skipped as not newer than the stored row, dropped as already expired.
        self.stats: Counter[str] = Counter()
        self._read_plans = PlanCache(
            getattr(self, "_check_versioned_read_support", None), getattr(self, "_build_feature_types", None)
        )

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

    def _hsetex(self, config: RepoConfig) -> bool:
        """Whether the server has HSETEX, asked once per connection settings."""
        settings = clients.connection_settings(config.online_store)
        known = self._hsetex_known.get(settings)
        if known is None:
            known = self._hsetex_known[settings] = has_hsetex(self.client(config), config.online_store)
        return known

    def _write_calls(
        self, config: RepoConfig, table: Any, data: Sequence[Row]
    ) -> tuple[str, list[bytes], Encode]:
        """The view's mode ("batch"/"streaming"), every row's key, and the row encoder of
        :meth:`_row_calls` for Feast's rows. Every row's key is built first, so a bad entity key
        fails before anything is written."""
        view = ViewLayout.of(config, table, self.client(config))
        try:
            keys = view.keys.keys(row[0] for row in data)
        except ValueError as e:
            raise BadValueError(f"feature view {view.name!r}: {e}; nothing was written") from e
        # A packed view's pairs name features; a join key listed among a stream view's features
        # is not in view.fields and is skipped.
        names = {f: (f if view.packed else field, kind) for f, (field, kind) in view.fields.items()}
        row_pairs = codec.row_encoder(names, view.encoding)

        def pairs_of(i: int) -> list[Any]:
            return row_pairs(data[i][1])

        encode_ts = codec.encode_ts
        event_us = [encode_ts(row[2]) for row in data]
        mode, encode = self._row_calls(config, table, view, keys, event_us, pairs_of)
        return mode, keys, encode

    def _row_calls(
        self,
        config: RepoConfig,
        table: Any,
        view: ViewLayout,
        keys: Sequence[bytes],
        event_us: Sequence[int],
        pairs_of: Callable[[int], Sequence[Any]],
    ) -> tuple[str, Encode]:
        """The view's mode, and a function that encodes rows (row numbers) into WRITE_ROWS
        calls of up to ``write_rows_per_call`` rows each, of one group (``GroupOf``), with the
        row numbers of each call. Row i is ``keys[i]``, its event time ``event_us[i]``
        (microseconds since the epoch) and ``pairs_of(i)``: hash field, encoded value, ..."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        policy = policy_for(table, cfg)
        by_event = policy.streaming and cfg.ttl_from == "event"
        if by_event:
            _check_event_expiry(view.name, event_us, policy.field_ttl_ms)
        head: list[Any] = [
            view.ts_field,
            str(policy.key_ttl_ms),
            str(policy.field_ttl_ms) if not by_event else "0",
            "1" if cfg.skip_dedup else "0",
            "1" if policy.streaming and self._hsetex(config) else "0",
        ]
        head.append(view.head if view.packed else len(view.fields))
        per_call = cfg.write_rows_per_call
        row_args = _packed_args(view) if view.packed else _fields_args

        field_ttl_ms = policy.field_ttl_ms

        def encode(rows: Sequence[int], group_of: GroupOf) -> tuple[list[Call], list[list[int]]]:
            groups: Iterable[list[int]]
            if group_of is None:  # one server: the rows in order
                groups = [list(rows)]
            else:
                by_group: dict[Hashable, list[int]] = {}
                for i in rows:
                    by_group.setdefault(group_of(keys[i]), []).append(i)
                groups = by_group.values()
            calls: list[Call] = []
            rows_of_calls: list[list[int]] = []
            for group in groups:
                for first in range(0, len(group), per_call):
                    part = group[first : first + per_call]
                    argv: list[Any] = list(head)
                    for i in part:
                        ts_us = event_us[i]
                        argv += row_args(ts_us, ts_us // 1000 + field_ttl_ms if by_event else 0, pairs_of(i))
                    calls.append(([keys[i] for i in part], argv))
                    rows_of_calls.append(part)
            return calls, rows_of_calls

        return policy.mode, encode

    @staticmethod
    def _script(config: RepoConfig, table: Any) -> Script:
        """The write script of the view's value layout."""
        return WRITE_PACKED if ViewLayout.of(config, table).packed else WRITE_ROWS

    def _collect(
        self,
        table: Any,
        mode: str,
        rows_of_calls: list[list[int]],
        replies: list,
        failed: list[tuple[int, str]],
        seconds: float | None = None,
    ) -> int:
        """Count the per-row results of one batch (``seconds``: its round trip), add failed rows
        to ``failed``; returns the number of rows of the batch."""
        results: Counter[int] = Counter()  # row result -> rows
        refused = 0
        for rows, reply in zip(rows_of_calls, replies):
            if reply is None:  # its node failed (ack_replicas on a cluster): reported by the caller
                continue
            for row, result in zip(rows, reply):
                if isinstance(result, int):
                    results[result] += 1
                else:
                    refused += 1
                    failed.append((row, result.decode() if isinstance(result, bytes) else str(result)))
        self._tally(table.name, mode, results, seconds)
        if refused:  # METRICS HOOK (rows the server refused one by one)
            metrics.rows(table.name, mode, "failed", refused)
            metrics.script_error(table.name, "refused")
        return sum(len(rows) for rows in rows_of_calls)

    def _tally(
        self, view: str, policy_mode: str, results: Counter[int], seconds: float | None = None
    ) -> None:
        """Count one write batch's results (row result -> rows; ``seconds``: its round trip).
        METRICS HOOK (writes)."""
        named = {1: "written", 0: "skipped_not_newer", -1: "dropped_expired"}
        counts = Counter({named[result]: rows for result, rows in results.items()})
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

    @staticmethod
    def _row_failures(
        config: RepoConfig, table: Any, keys: list[bytes], failed: list[tuple[int, str]], total: int
    ) -> Exception:
        """One error naming every row the server refused (the other rows were written)."""
        count = f"{len(failed)} of {total} row(s)"
        shown = "; ".join(
            f"row {row} ({keys[row].decode(errors='replace')}): {message}" for row, message in failed[:5]
        )
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        text = (
            f"feature view {table.name!r}: the server at {address(config.online_store)} refused "
            f"{count}, which were not written (the other rows were): {shown}{more}"
        )
        if all(message.startswith(FIELD_TTL_ERROR) for _, message in failed):
            return FieldTTLError(text.replace(f"{FIELD_TTL_ERROR} ", ""))
        return HexpireError(text)

    def _failure(
        self, config: RepoConfig, table: Any, start: int, keys: list[bytes], err: Exception
    ) -> Exception:
        """The error of a batch that failed as a whole: rows ``start``.. are not confirmed
        written, named by their keys."""
        total = len(keys)
        _count_failure(config, table, total - start, err)  # METRICS HOOK (failed writes)
        where = (
            self._master_address(config)
            if config.online_store.ack_command()
            else address(config.online_store)
        )
        named = ", ".join(k.decode(errors="replace") for k in keys[start : start + 10])
        named += f" and {total - start - 10} more" if total - start > 10 else ""
        if isinstance(err, NoPermissionError):  # a refused call writes nothing; on a cluster per
            # slot, calls of keys the user may write can have been written beside it
            return StoreUnavailableError(
                f"feature view {table.name!r}: the Redis user at {where} may not write: {err}; "
                f"rows {start}..{total - 1} are not confirmed written (see docs/ACL.md): {named}"
            )
        if isinstance(err, ResponseError):
            return HexpireError(
                f"feature view {table.name!r}: the server at {where} refused a write: {err}; rows "
                f"{start}..{total - 1} are not confirmed written: {named}"
            )
        done = f"rows 0..{start - 1} were written" if start else "no row is confirmed written"
        return StoreUnavailableError(
            f"writing feature view {table.name!r} to {where} failed: {err}; rows {start}..{total - 1} "
            f"of this batch may not be written ({done}): {named}; rerunning the write converges, "
            f"older rows are skipped by event time"
        )

    def _unacked(
        self, config: RepoConfig, rows_of_calls: list[list[int]], nodes: list[NodeAck]
    ) -> list[tuple[str, list[int]]]:
        """Per node of a batch whose rows are not acknowledged (an error, or a WAIT / WAITAOF
        that came back short): a clause naming the node and the rows, and the rows."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        want_local = 1 if cfg.ack_aof else 0
        out: list[tuple[str, list[int]]] = []
        for name, calls, acks in nodes:
            where = name or self._master_address(config)
            rows = sorted(row for i in calls for row in rows_of_calls[i])
            if isinstance(acks, Exception):
                error = f"{type(acks).__name__}: {acks}"
                out.append((f"{_spans(rows)} sent to {where} but not confirmed written ({error})", rows))
                continue
            local = min(int(a[0]) if isinstance(a, list) else want_local for a in acks)
            replicas = min(int(a[1]) if isinstance(a, list) else int(a) for a in acks)
            if local >= want_local and replicas >= cfg.ack_replicas:
                continue
            what = f"{replicas} of {cfg.ack_replicas} replica(s)" + (" (AOF)" if cfg.ack_aof else "")
            if local < want_local:
                what += " and not the master's AOF"
            clause = (
                f"{_spans(rows)} written to {where} but acknowledged by only {what} "
                f"within {cfg.ack_timeout_seconds} s (ack_replicas)"
            )
            out.append((clause, rows))
        return out

    def _master_address(self, config: RepoConfig) -> str:
        """The configured address; through Sentinel with the master it names now (error path)."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        if cfg.redis_type != RedisType.redis_sentinel:
            return address(cfg)
        try:
            host, port = self.client(config).connection_pool.get_master_address()
            master = f"{host}:{port}"
        except (ResponseError, *IO_ERRORS) as e:  # the sentinels are out of reach too
            master = f"unknown ({e})"
        return f"master {cfg.sentinel_master!r} at {master} ({address(cfg)})"

    def _batch_done(
        self,
        config: RepoConfig,
        table: Any,
        keys: list[bytes],
        mode: str,
        start: int,
        rows_of_calls: list[list[int]],
        sent: tuple[list, list[NodeAck]],
        failed: list[tuple[int, str]],
        seconds: float,
    ) -> int:
        """Count one batch's results (rows the server refused go to ``failed``); raise naming
        every row not acknowledged (ack_replicas / ack_aof). Returns the batch's row count."""
        batch, nodes = sent
        done = self._collect(table, mode, rows_of_calls, batch, failed, seconds)
        unacked = self._unacked(config, rows_of_calls, nodes) if nodes else []
        if not unacked:
            return done
        rows = sorted(row for _, part in unacked for row in part)
        metrics.rows(table.name, mode, "failed", len(rows))  # METRICS HOOK (rows not acknowledged)
        shown = ", ".join(keys[i].decode(errors="replace") for i in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        status = [f"rows 0..{start - 1} were acknowledged"] if start else []
        if len(rows) < done:
            status.append("the batch's other rows were acknowledged")
        status = (status or ["no row was acknowledged"]) + ["later rows were not sent"]
        raise StoreUnavailableError(
            f"feature view {table.name!r}: {'; '.join(clause for clause, _ in unacked)}; not "
            f"acknowledged: {shown}{more}; a failover may lose them ({'; '.join(status)}); "
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
        client = self.client(config)
        mode, keys, encode = self._write_calls(config, table, data)
        self._write(config, table, client, mode, keys, encode, progress)

    def write_encoded(
        self,
        config: RepoConfig,
        table: Any,
        keys: Sequence[bytes],
        event_us: Sequence[int],
        pairs_of: Callable[[int], Sequence[Any]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """``online_write_batch`` of rows already encoded for ``table``'s layout (the Arrow
        materialization engine, engine.py): row i is ``keys[i]`` (``ViewLayout.keys``), its
        event time ``event_us[i]`` (microseconds since the epoch) and ``pairs_of(i)``: hash
        field (of a packed view: the feature's name), value encoded as ``codec.encode_value``
        would, and so on. The same calls, batches, acknowledgements, errors, metrics and
        progress as ``online_write_batch``."""
        if not keys:
            return
        client = self.client(config)
        view = ViewLayout.of(config, table, client)
        mode, encode = self._row_calls(config, table, view, keys, event_us, pairs_of)
        self._write(config, table, client, mode, list(keys), encode, progress)

    def _write(
        self,
        config: RepoConfig,
        table: Any,
        client: Any,
        mode: str,
        keys: list[bytes],
        encode: Encode,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Send every row of ``keys`` as ``encode`` makes the calls, ``write_batch_size`` rows
        per round trip; raise naming the rows that failed."""
        total = len(keys)
        size = config.online_store.write_batch_size
        script = self._script(config, table)
        starts = range(0, total, size)
        plans: deque[list[list[int]]] = deque()  # rows of each call of the batches sent
        group_of, by_node = _grouping(config.online_store, client, keys)

        def batches() -> Iterator[list[Call]]:
            for start in starts:
                calls, rows_of_calls = encode(range(start, min(start + size, total)), group_of)
                plans.append(rows_of_calls)
                yield calls

        def per_slot(rows: list[int]) -> tuple[list[Call], list[list[int]]]:
            return encode(rows, key_slot)

        ack = config.online_store.ack_command()
        replies: Iterator[NodeBatch]
        if by_node:  # one call per master's rows, the rows it did not serve again per slot
            replies = (
                run_by_node(client, script, calls, plans.popleft(), per_slot, ack) for calls in batches()
            )
        elif ack is None:  # batches overlap on one connection (run_batches)
            replies = ((plans.popleft(), batch, []) for batch in run_batches(client, script, batches()))
        else:  # ack_replicas / ack_aof: each batch, then WAIT on each of its nodes' connections
            replies = ((plans.popleft(), *run_acked_batch(client, script, calls, ack)) for calls in batches())
        failed: list[tuple[int, str]] = []
        for start in starts:  # one batch per start, replies in order
            began = time.perf_counter()
            try:
                rows_of_calls, batch, nodes = next(replies)
            except (ResponseError, *IO_ERRORS) as e:
                raise self._failure(config, table, start, keys, e) from e
            seconds = time.perf_counter() - began
            done = self._batch_done(
                config, table, keys, mode, start, rows_of_calls, (batch, nodes), failed, seconds
            )
            if progress:
                progress(done)
        if failed:
            raise self._row_failures(config, table, keys, failed, total)

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not data:
            return
        client = self.async_client(config)
        mode, keys, encode = self._write_calls(config, table, data)
        await self._write_async(config, table, client, mode, keys, encode, progress)

    async def write_encoded_async(
        self,
        config: RepoConfig,
        table: Any,
        keys: Sequence[bytes],
        event_us: Sequence[int],
        pairs_of: Callable[[int], Sequence[Any]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """:meth:`write_encoded` on the running loop's client (as ``online_write_batch_async``)."""
        if not keys:
            return
        client = self.async_client(config)
        view = ViewLayout.of(config, table, self.client(config))
        mode, encode = self._row_calls(config, table, view, keys, event_us, pairs_of)
        await self._write_async(config, table, client, mode, list(keys), encode, progress)

    async def _write_async(
        self,
        config: RepoConfig,
        table: Any,
        client: Any,
        mode: str,
        keys: list[bytes],
        encode: Encode,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """:meth:`_write` on an asyncio client: one batch after the other."""
        script = self._script(config, table)
        size = config.online_store.write_batch_size
        ack = config.online_store.ack_command()
        if isinstance(client, aredis.RedisCluster):
            try:  # a new asyncio cluster client reads its slot map on first use
                await client.initialize()
            except (ResponseError, RedisClusterException, *IO_ERRORS) as e:
                raise self._failure(config, table, 0, keys, e) from e
        group_of, by_node = _grouping(config.online_store, client, keys)

        def per_slot(rows: list[int]) -> tuple[list[Call], list[list[int]]]:
            return encode(rows, key_slot)

        failed: list[tuple[int, str]] = []
        for start in range(0, len(keys), size):
            calls, rows_of_calls = encode(range(start, min(start + size, len(keys))), group_of)
            began = time.perf_counter()
            sent: tuple[list, list[NodeAck]]
            try:
                if by_node:
                    rows_of_calls, batch, nodes = await run_by_node_async(
                        client, script, calls, rows_of_calls, per_slot, ack
                    )
                    sent = (batch, nodes)
                elif ack is None:
                    sent = (await run_pipelined_async(client, script, calls), [])
                else:
                    sent = await run_acked_batch_async(client, script, calls, ack)
            except (ResponseError, *IO_ERRORS) as e:
                raise self._failure(config, table, start, keys, e) from e
            seconds = time.perf_counter() - began
            done = self._batch_done(config, table, keys, mode, start, rows_of_calls, sent, failed, seconds)
            if progress:
                progress(done)
        if failed:
            raise self._row_failures(config, table, keys, failed, len(keys))

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
        cfg = config.online_store
        direct = direct_reads(cfg, clients.connection_settings(cfg))  # own sockets
        answer: Any = False
        if direct is not None:  # a cluster's keys are routed by its client's slot map
            answer = direct.hmget(commands, self.client(config) if direct.cluster else None)
        if isinstance(answer, list):
            return answer
        client = self.client(config)
        if answer is False:  # no own socket here, or an error reply: redis-py sends, and raises it
            # one server: one send on a pooled connection; a cluster: one per primary, all sent first
            send = hmget_direct if isinstance(client, redis.Redis) else hmget_cluster_direct
            replies = send(client, commands)
            if replies is not None:
                return replies
        # The own socket failed (no second try there), an I/O error or a cluster redirection:
        # redis-py's pipeline, with its retries, follows it.
        with client.pipeline(transaction=False) as pipe:
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
        keys = ViewLayout.of(config, table, self.client(config)).keys.keys(entity_keys)
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
        _check_join_keys(join_key_values)
        shared: dict[tuple, tuple[list[bytes], list[list[int]] | None, int]] = {}
        requests: list[_ViewRequest] = []
        for table, requested in grouped_refs:
            keys, fanout, output_len = entity_keys(config, table, join_key_values, entity_map, shared)
            requests.append((table, keys, requested, fanout, output_len))
        return requests

    @staticmethod
    def _view_results(
        config: RepoConfig, requests: list[_ViewRequest], reads: list[ViewRead], commands: list, replies: list
    ) -> Iterator[ViewResult]:
        """Each view's decoded read (the work of Feast's ``_populate_response_from_feature_data``,
        column by column, as wire bytes and without datetimes)."""
        for (table, _, requested, fanout, output_len), read in zip(requests, reads):
            ts_raw, columns = value_columns(read, commands, replies)
            row_status = freshness_statuses(config, table, ts_raw)
            _count_reads(read.view.name, ts_raw, row_status)  # METRICS HOOK (reads by status)
            yield ViewResult(table, requested, read.names, ts_raw, columns, row_status, fanout, output_len)

    def _populate(
        self, config: RepoConfig, requests: list[_ViewRequest], reads: list[ViewRead], commands: list,
        replies: list, response: Any, full_names: bool, meta: bool,
    ) -> None:  # fmt: skip
        """Fill Feast's response from the replies, one merge per view."""
        for result in self._view_results(config, requests, reads, commands, replies):
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

    # ---- get_online_features: Feast's resolution cached in a read plan (read_plan.py) ----

    def _prepared(
        self, features: Any, entity_rows: Any, registry: Any, project: str, full_feature_names: bool
    ) -> PreparedRead | None:
        plan = self._read_plans.plan_for(registry, project, features, full_feature_names)
        return plan.prepare(entity_rows) if plan is not None else None

    def _planned_read(self, config: RepoConfig, prepared: PreparedRead) -> tuple[Any, list, list]:
        """(how to answer, the HMGET commands, their context). A plan whose views key their
        entity the same way takes its :class:`Route` (fields and positions fixed per plan);
        others plan each read (:func:`plan_reads`)."""
        plan = prepared.plan
        entity_map = plan.entity_name_to_join_key
        _check_join_keys(prepared.protos)  # plain str / int columns have no nulls
        route = route_for(config, plan.grouped_refs, entity_map, plan.memo)
        column = prepared.native.get(route.join_key) if route is not None else None
        if route is not None and column:
            keys, fanout, output_len = route.keys(column)
            fields = route.fields
            return route, [(key, fields) for key in keys], [keys, fanout, output_len]
        shared: dict[tuple, tuple[list[bytes], list[list[int]] | None, int]] = {}
        requests: list[_ViewRequest] = []
        for table, requested in plan.grouped_refs:
            known = native_entity_keys(config, table, prepared.native, entity_map, shared)
            if known is None:  # compound entity, aliased join key, a column of protos
                known = entity_keys(config, table, prepared.join_key_values(), entity_map, shared)
            requests.append((table, known[0], requested, known[1], known[2]))
        commands, reads = plan_reads(config, [(t, k, r) for t, k, r, _, _ in requests], plan.memo)
        return None, commands, [requests, reads]

    def _planned_response(
        self, config: RepoConfig, prepared: PreparedRead, route: Route | None, commands: list, context: list,
        replies: list, meta: bool,
    ) -> Any:  # fmt: skip
        if route is None:
            requests, reads = context
            results = self._view_results(config, requests, reads, commands, replies)
            return prepared.finish([view_vectors(result) for result in results], meta)
        keys, fanout, n = context
        views = []
        if n == 1 and config.online_store.freshness_check == "off":  # one entity, nothing to check
            reply = replies[0]
            for part in route.views:
                raw_ts = reply[part.ts_position]
                _count_reads(part.view.name, [raw_ts], None)  # METRICS HOOK (reads by status)
                values = route.row(part, keys[0], reply)
                views.append(row_vectors(part.table, len(part.requested), part.slots, raw_ts, values))
            return prepared.finish(views, meta)
        for part in route.views:
            ts_raw, columns = route.columns(part, keys, replies)
            row_status = freshness_statuses(config, part.table, ts_raw)
            _count_reads(part.view.name, ts_raw, row_status)  # METRICS HOOK (reads by status)
            table, requested, names = part.table, part.requested, part.names
            result = ViewResult(table, requested, names, ts_raw, columns, row_status, fanout, n, part.slots)
            views.append(view_vectors(result))
        return prepared.finish(views, meta)

    def get_online_features(
        self,
        config: RepoConfig,
        features: Any,
        entity_rows: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
        include_feature_view_version_metadata: bool = False,
    ) -> Any:
        """Feast's get_online_features with its request resolution cached per registry
        version (read_plan.py); requests the plan does not cover take Feast's own method."""
        prepared = self._prepared(features, entity_rows, registry, project, full_feature_names)
        if prepared is None:
            meta = {"include_feature_view_version_metadata": include_feature_view_version_metadata}
            return super().get_online_features(
                config, features, entity_rows, registry, project, full_feature_names,
                **(meta if _BASE_TAKES_META else {}),
            )  # fmt: skip
        route, commands, context = self._planned_read(config, prepared)
        replies = self._hmget(config, commands) if commands else []
        return self._planned_response(
            config, prepared, route, commands, context, replies, include_feature_view_version_metadata
        )

    async def get_online_features_async(
        self,
        config: RepoConfig,
        features: Any,
        entity_rows: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
        include_feature_view_version_metadata: bool = False,
    ) -> Any:
        prepared = self._prepared(features, entity_rows, registry, project, full_feature_names)
        if prepared is None:
            meta = {"include_feature_view_version_metadata": include_feature_view_version_metadata}
            return await super().get_online_features_async(
                config, features, entity_rows, registry, project, full_feature_names,
                **(meta if _BASE_TAKES_META else {}),
            )  # fmt: skip
        route, commands, context = self._planned_read(config, prepared)
        replies = await self._hmget_async(config, commands) if commands else []
        return self._planned_response(
            config, prepared, route, commands, context, replies, include_feature_view_version_metadata
        )

    # ---- feast apply / feast teardown ----

    @staticmethod
    def check_views(config: RepoConfig, views: Sequence[Any]) -> None:
        """Refuse bad tags, reserved names and two views that could write one field of one hash;
        needs no server. With ``field_names: auto`` views may share a feature name (naming.py
        prefixes the later one's field), but no feature may be named like another view's
        prefixed field; with ``feature`` no two views of one entity may share a name."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        owners: dict[tuple[str, str], tuple[str, str]] = {}  # (segment, field) -> (view, bare feature or "")
        for table in views:
            policy_for(table, cfg)
            names = view_names(table, versioning, streaming=False)
            for feature in names.features:
                if feature.startswith(TS_FIELD_PREFIX):
                    raise ConfigError(
                        f"feature view {table.name!r}: feature {feature!r} uses the reserved prefix "
                        f"{TS_FIELD_PREFIX!r}"
                    )
                prefixed = f"{names.name}:{feature}"
                candidates = {
                    "feature": [(feature, feature)],
                    "view_feature": [(prefixed, "")],
                    "auto": [(feature, feature), (prefixed, "")],
                }[cfg.field_names]
                for field, bare in candidates:
                    other, other_bare = owners.setdefault((names.segment, field), (table.name, bare))
                    if other == table.name or (cfg.field_names == "auto" and bare and bare == other_bare):
                        continue  # auto: two views declaring one feature name is the handled case
                    hint = (
                        "rename one feature or remove field_names: feature (the default, auto, "
                        "gives the later view's feature the field '<view>:<feature>')"
                        if cfg.field_names == "feature"
                        else "rename one feature"
                    )
                    raise FieldCollisionError(
                        f"feature views {other!r} and {table.name!r} both write field {field!r} of "
                        f"the same '{names.segment}' hashes; {hint}"
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
    def _segment(config: RepoConfig, table: Any, join_keys_of: dict[str, str]) -> str:
        """The ``<entity>`` key segment of ``table``. A view object from Python code (e.g.
        ``FeatureStore.apply(objects_to_delete=[view])``) has no join keys before Feast infers
        them; a view of several entities then takes them from ``join_keys_of`` (entity name ->
        join key), completed from the registry's entities when a name is missing."""
        names = list(getattr(table, "entities", None) or ())
        join_keys = list(getattr(table, "join_keys", None) or ())
        if len(names) > 1 and not join_keys:
            if any(n not in join_keys_of for n in names):
                join_keys_of.update(
                    {
                        e.name: e.join_key
                        for e in _registered(config, "list_entities")
                        if e.name not in join_keys_of
                    }
                )
            for name in names:
                if name not in join_keys_of:
                    logger.warning(
                        "entity %s of feature view %s is not registered; its name is taken as join key",
                        name,
                        table.name,
                    )
            join_keys = [join_keys_of.get(n, n) for n in names]
        return layout.entity_segment(names, join_keys)

    def delete_view_fields(self, config: RepoConfig, table: Any, entities: Sequence[Entity] = ()) -> int:
        """Remove one view's fields from every hash of its entity; returns fields removed.
        ``entities``: Entity objects that may be the view's (for a view without join keys yet)."""
        client = self.client(config)
        view = ViewLayout.of(config, table, client)
        argv = [view.ts_field] + [f for f, _ in view.fields.values()]
        segment = self._segment(config, table, {e.name: e.join_key for e in entities})
        pattern = layout.scan_pattern(config.online_store.prefix_for(config.project), segment)
        removed = 0
        for keys in self._scan(client, pattern):
            removed += sum(run_pipelined(client, DELETE_VIEW_FIELDS, [((k,), argv) for k in keys]))
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
        # What remains registered after this apply: a partial apply (``FeatureStore.apply``)
        # passes only the views it changes; views it does not list stay registered either way.
        registered = {t.name: t for t in _registered_views(config)}
        views = dict(registered)
        views.update((t.name, t) for t in tables_to_keep)
        for table in tables_to_delete:
            views.pop(table.name, None)
        self.check_views(config, list(views.values()))  # before anything is changed
        client = self.client(config)
        try:
            require_hfe(client, config.online_store)
            _require_acks(client, config.online_store)
            check_stored_layout(config, client, list(views.values()))  # value_layout changed?
        except IO_ERRORS as e:
            raise StoreUnavailableError(f"cannot reach Redis at {address(config.online_store)}: {e}") from e
        if config.online_store.full_scan_for_deletion:
            for table in tables_to_delete:
                self.delete_view_fields(config, table, [*entities_to_keep, *entities_to_delete])
        # Deleted views' names are released first (their fields are gone), then the remaining
        # views claim contested names: registered ones first, then the new ones (naming.py).
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        named = {name: view_names(t, versioning) for name, t in views.items()}
        claims = apply_claims(
            config,
            client,
            [n for name, n in named.items() if name in registered],
            [n for name, n in named.items() if name not in registered],
        )
        logger.info("field owners: %(claimed)d name(s) claimed, %(released)d released", claims)
        for table in views.values():  # warm this process's layouts (one HMGET per view)
            ViewLayout.of(config, table, client)

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        unlinked = self.remove_project_keys(config, tables, entities)
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        names = [view_names(t, versioning, streaming=False) for t in tables]
        released = release_views(config, self.client(config), names) if names else 0
        logger.info(
            "teardown unlinked %d key(s) and released %d field owner(s) of project %s",
            unlinked,
            released,
            config.project,
        )

    def remove_project_keys(
        self, config: RepoConfig, tables: Sequence[Any], entities: Sequence[Entity] = ()
    ) -> int:
        """Unlink the hashes of these views: SCAN ``<escaped prefix><entity>:*`` per entity, then
        UNLINK only hashes holding one of their ``_ts`` fields (another project's fields in a
        shared hash stay). Never FLUSHDB. Returns the number of keys unlinked."""
        if not tables:
            return 0
        client = self.client(config)
        prefix = config.online_store.prefix_for(config.project)
        layouts = [ViewLayout.of(config, t, client) for t in tables]
        argv = [len(layouts), *(v.ts_field for v in layouts)]
        argv += [field for v in layouts for field, _ in v.fields.values()]
        unlinked = 0
        join_keys_of = {e.name: e.join_key for e in entities}
        for segment in sorted({self._segment(config, t, join_keys_of) for t in tables}):
            for keys in self._scan(client, layout.scan_pattern(prefix, segment)):
                unlinked += sum(run_pipelined(client, UNLINK_IF_OURS, [((k,), argv) for k in keys]))
        return unlinked

    def key_for(self, config: RepoConfig, table: Any, entity_key: EntityKeyProto) -> bytes:
        """The hash key of one entity of ``table`` (for inspection and tests)."""
        return ViewLayout.of(config, table, self.client(config)).keys.key(entity_key)


def _spans(rows: list[int]) -> str:
    """Sorted row numbers as ranges with their verb: ``rows 0..3, 7 were``, ``row 5 was``."""
    spans: list[str] = []
    first = prev = rows[0] if rows else 0
    for row in rows[1:] + [None]:  # type: ignore[list-item]
        if row is not None and row == prev + 1:
            prev = row
            continue
        spans.append(f"{first}..{prev}" if prev > first else str(first))
        if row is not None:
            first = prev = row
    return f"row {spans[0]} was" if len(rows) == 1 else f"rows {', '.join(spans)} were"


def _fields_args(ts_us: int, expire_at: int, pairs: Sequence[Any]) -> list[Any]:
    """WRITE_ROWS arguments of one row: event time, expiry, n, and n field, value pairs."""
    return [ts_us, expire_at, len(pairs) // 2, *pairs]


def _packed_args(view: ViewLayout) -> Callable[[int, int, Sequence[Any]], list[Any]]:
    """WRITE_PACKED arguments of one row of ``view``: expiry, "1" when the row lacks a feature,
    and its packed value, from the row's pairs (of a packed view: feature name, encoded value)."""
    features = list(view.fields)

    def args(ts_us: int, expire_at: int, pairs: Sequence[Any]) -> list[Any]:
        got = dict(zip(pairs[::2], pairs[1::2]))
        encoded = [got.get(feature) for feature in features]
        partial = "1" if None in encoded else "0"
        return [expire_at, partial, codec.pack_values(view.head, ts_us, encoded)]

    return args


def _check_event_expiry(view: str, event_us: Sequence[int], field_ttl_ms: int) -> None:
    """With ``ttl_from: event``, refuse a batch holding a row whose fields would expire after the
    latest time Redis accepts (an event far in the future), before anything is written."""
    for i, ts_us in enumerate(event_us):
        if ts_us // 1000 + field_ttl_ms > MAX_FIELD_EXPIRE_AT_MS:
            event_ts = _EPOCH + timedelta(microseconds=ts_us)
            raise BadValueError(
                f"feature view {view!r}: row {i} has event time {event_ts}; counted from "
                f"it, its field TTL would end after {MAX_FIELD_EXPIRE_AT_MS} ms since the epoch, the "
                f"latest Redis accepts; nothing was written"
            )


def hexpire_store(feature_store: Any) -> RedisHexpireOnlineStore:
    """The plugin instance behind a ``feast.FeatureStore`` (for its client, stats and layout)."""
    online = feature_store._get_provider().online_store
    if not isinstance(online, RedisHexpireOnlineStore):
        raise ConfigError(f"the repo's online store is {type(online).__name__}, not RedisHexpireOnlineStore")
    return online


def _registered_views(config: RepoConfig) -> list[Any]:
    """Views already in the registry (before this apply): they stay registered unless deleted,
    must not collide with a new view, and claim shared names first (naming.py)."""
    return _registered(config, "list_feature_views", "list_stream_feature_views")


def _registered(config: RepoConfig, *methods: str) -> list[Any]:
    """The objects ``FeatureStore.<method>()`` lists for each method, from the repo's registry;
    [] when there is none yet (first apply) or it cannot be read."""
    from feast import FeatureStore

    try:
        repo_path = str(config.repo_path) if config.repo_path else None
        registry = FeatureStore(repo_path=repo_path, config=config)
        return [obj for method in methods for obj in getattr(registry, method)()]
    except Exception as e:  # no registry yet (first apply) or unreadable: check what we have
        logger.debug("registry not read (%s): %s", ", ".join(methods), e)
        return []


def _check_join_keys(join_key_values: dict[str, list[ValueProto]]) -> None:
    for join_key, values in join_key_values.items():
        if any(v.WhichOneof("val") is None for v in values):  # Feast itself fails obscurely
            raise BadValueError(f"entity rows: join key {join_key!r} has a null value")


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
        metrics.script_error(name, "field_ttl" if FIELD_TTL_ERROR in str(err) else kind)
    else:
        metrics.connection_error("write")


def _require_acks(client: Any, cfg: RedisHexpireOnlineStoreConfig) -> None:
    """At `feast apply`: ack_replicas no larger than the replicas connected now to each master
    (on a cluster: every master), and ack_aof only with the master's AOF on."""
    if not (cfg.ack_replicas or cfg.ack_aof):
        return
    for where, server in primaries(client, cfg):
        connected = int(server.info("replication").get("connected_slaves", 0))
        if connected < cfg.ack_replicas:
            raise ConfigError(
                f"ack_replicas: {cfg.ack_replicas}, but the master at {where} has {connected} "
                f"replica(s) connected; every write to it would fail"
            )
        if cfg.ack_aof and not int(server.info("persistence").get("aof_enabled", 0)):
            raise ConfigError(f"ack_aof: true, but the master at {where} runs without AOF (appendonly no)")


def _grouping(cfg: RedisHexpireOnlineStoreConfig, client: Any, keys: Sequence[bytes]) -> tuple[GroupOf, bool]:
    """Which rows of a write may share a call, and whether calls go per master
    (:func:`scripts.run_by_node`): on one server any rows; on a cluster the rows of one master
    (``cluster_write_calls: node``, unless every key is in one slot) or of one hash slot."""
    if not isinstance(client, (redis.RedisCluster, aredis.RedisCluster)):
        return None, False
    if cfg.cluster_write_calls == "slot" or _hash_tagged(keys[0]):
        return key_slot, False

    def node_of(key: bytes) -> Hashable:
        try:
            node: Any = client.get_node_from_key(key)  # type: ignore[arg-type]  # takes bytes too
            return node.name
        except RedisClusterException:  # no node serves the slot now: its call fails, goes per slot
            return None

    return node_of, True


def _hash_tagged(key: bytes) -> bool:
    """Whether ``key`` hashes by a hash tag. Ids and entity names are escaped (layout.py), so a tag
    is in the key prefix: every key of the store is in one slot."""
    start = key.find(b"{")
    return start >= 0 and key.find(b"}", start + 1) > start + 1
