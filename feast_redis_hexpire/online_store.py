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
from datetime import UTC, datetime
from typing import Any

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
from .scripts import (
    DELETE_VIEW_FIELDS,
    UNLINK_IF_OURS,
    WRITE_ROW,
    run_pipelined,
    run_pipelined_async,
)

__all__ = ["RedisHexpireOnlineStore"]

logger = logging.getLogger(__name__)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
ReadRow = tuple[datetime | None, dict[str, ValueProto] | None]

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
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            try:
                results = run_pipelined(client, WRITE_ROW, encode(start, chunk))
            except (ResponseError, *_IO_ERRORS) as e:
                raise self._failure(config, table, start, len(data), e) from e
            self._tally(table.name, mode, results)
            if progress:
                progress(len(chunk))

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
        self, config: RepoConfig, requests: Sequence[tuple[Any, Sequence[EntityKeyProto], list[str] | None]]
    ) -> tuple[list[tuple[bytes, list[str]]], Callable[[list], list[list[ReadRow]]], list]:
        """HMGET commands (one per distinct entity key) for several (view, entity keys,
        features) requests, and a function turning their replies into online_read rows."""
        per_key: dict[bytes, dict[str, int]] = {}
        plans = []
        for table, entity_keys, requested in requests:
            view = ViewLayout.of(config, table)
            names = [f for f in (requested or view.fields) if f in view.fields]
            wanted = [view.ts_field] + [view.fields[f][0] for f in names]
            slots = []
            for key in view.keys.keys(entity_keys):
                positions = per_key.setdefault(key, {})
                slots.append((key, [positions.setdefault(f, len(positions)) for f in wanted]))
            plans.append((table, view, names, slots))
        commands = [(key, list(positions)) for key, positions in per_key.items()]
        index = {key: i for i, key in enumerate(per_key)}
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        now = datetime.now(UTC)
        stale_marks: list[list[int]] = []

        def decode(replies: list) -> list[list[ReadRow]]:
            out = []
            stale_marks.clear()
            for table, view, names, slots in plans:
                rows: list[ReadRow] = []
                stale: list[int] = []
                max_age = getattr(table, "ttl", None) if cfg.freshness_check != "off" else None
                for row_no, (key, positions) in enumerate(slots):
                    reply = replies[index[key]]
                    raw_ts = reply[positions[0]]
                    features = {}
                    for name, pos in zip(names, positions[1:]):
                        raw = reply[pos]
                        if raw is not None:
                            features[name] = _decode(view, name, key, raw)
                    if raw_ts is None and not features:
                        rows.append((None, None))
                        continue
                    event_ts = codec.decode_ts(raw_ts) if raw_ts is not None else None
                    if max_age and event_ts is not None and now - event_ts > max_age:
                        if cfg.freshness_check == "drop":
                            rows.append((None, None))
                            continue
                        stale.append(row_no)
                    rows.append((event_ts, features))
                out.append(rows)
                stale_marks.append(stale)
            return out

        return commands, decode, stale_marks

    def _hmget(self, config: RepoConfig, commands: list[tuple[bytes, list[str]]]) -> list:
        if len(commands) == 1:  # one entity: a plain command skips the pipeline machinery
            key, fields = commands[0]
            return [self.client(config).hmget(key, fields)]
        with self.client(config).pipeline(transaction=False) as pipe:
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
        commands, decode, _ = self._plan_reads(config, [(table, entity_keys, requested_features)])
        return decode(self._hmget(config, commands))[0]

    async def online_read_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[ReadRow]:
        commands, decode, _ = self._plan_reads(config, [(table, entity_keys, requested_features)])
        return decode(await self._hmget_async(config, commands))[0]

    @staticmethod
    def _feature_requests(grouped_refs: list, join_key_values: dict, entity_map: dict) -> list:
        for join_key, values in join_key_values.items():
            if any(v.WhichOneof("val") is None for v in values):  # Feast itself fails obscurely
                raise BadValueError(f"entity rows: join key {join_key!r} has a null value")
        requests = []
        for table, requested in grouped_refs:
            entity_values, idxs, output_len = utils._get_unique_entities(table, join_key_values, entity_map)
            requests.append((table, utils._get_entity_key_protos(entity_values), requested, idxs, output_len))
        return requests

    @staticmethod
    def _populate(requests: list, all_rows: list, stale_marks: list, response: Any, full_names: bool, meta: bool) -> None:
        for (table, _, requested, idxs, output_len), rows, stale in zip(requests, all_rows, stale_marks):
            utils._populate_response_from_feature_data(
                requested, rows, idxs, response, full_names, table, output_len, meta
            )
            if stale:  # freshness_check: flag -> values kept, status OUTSIDE_MAX_AGE
                vectors = response.results[len(response.results) - len(requested) :]
                for row_no in stale:
                    for out_idx in idxs[row_no]:
                        for vector in vectors:
                            if vector.statuses[out_idx] == FieldStatus.PRESENT:
                                vector.statuses[out_idx] = FieldStatus.OUTSIDE_MAX_AGE

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
        requests = self._feature_requests(grouped_refs, join_key_values, entity_name_to_join_key_map)
        commands, decode, stale = self._plan_reads(config, [(t, k, r) for t, k, r, _, _ in requests])
        rows = decode(self._hmget(config, commands))
        self._populate(
            requests, rows, stale, online_features_response, full_feature_names,
            include_feature_view_version_metadata,
        )

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
        requests = self._feature_requests(grouped_refs, join_key_values, entity_name_to_join_key_map)
        commands, decode, stale = self._plan_reads(config, [(t, k, r) for t, k, r, _, _ in requests])
        rows = decode(await self._hmget_async(config, commands))
        self._populate(
            requests, rows, stale, online_features_response, full_feature_names,
            include_feature_view_version_metadata,
        )

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
        raise ConfigError(
            f"the repo's online store is {type(online).__name__}, not RedisHexpireOnlineStore"
        )
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

