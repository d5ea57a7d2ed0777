"""``feast-hexpire migrate``: copy one project's online data from Feast's built-in ``type: redis``
layout into this store, while the old store keeps serving.

The built-in layout (``feast/infra/online_stores/redis.py``): key = serialized entity key +
project name; one field per feature named by the murmur3 hash of ``"<view>:<feature>"`` holding a
serialized ValueProto; ``_ts:<view>`` holds a protobuf Timestamp. The source is only read (SCAN,
HMGET). Every row is written through :meth:`RedisHexpireOnlineStore.online_write_batch`, so keys,
fields, value encoding, event-time ordering and both TTL layers follow this store's rules.

A rerun is safe and cheap: before writing, the destination's event time of each row is read
through the store's own ``online_read``, and a row whose destination copy is as new or newer is
not written at all (so a rerun changes nothing, key TTLs included). A value pushed to the new
store during the copy is newer than the copied one, so it is kept: by that read, or, when the
push lands between the read and the write, by the store's atomic event-time check.

Streaming rows are copied with their TTL counted from the event time (``ttl_from: event``
semantics, whatever the repo sets): the built-in store does not record when a row was written,
the event time is the best bound, and a copy must not give a stale value a fresh window. A
streaming row already past its window (event time + field TTL <= now) is not copied, and counted.
Batch rows get the key TTL a materialization would give them now.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import mmh3
import yaml
from feast import FeatureStore, RepoConfig
from feast.feature_view import DUMMY_ENTITY_ID
from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import ResponseError

from . import codec
from .config import STORE_TYPES, RedisHexpireOnlineStoreConfig, RedisType, redact
from .connection import IO_ERRORS, address, make_client, require_hfe
from .constants import TS_FIELD_PREFIX
from .exceptions import ConfigError, HexpireError, StoreUnavailableError
from .online_store import RedisHexpireOnlineStore
from .policy import policy_for
from .views import compute_versioned_name  # one fallback for Feast without versioned views

__all__ = ["MigrationReport", "Verification", "builtin_field", "decode_source_key", "migrate"]

# Why a source row was not copied (keys of the report's "rows skipped").
SKIP_EXPIRED = "streaming value past its window"
SKIP_NOT_NEWER = "destination already has this row or a newer one"
SKIP_NEWER_DURING_COPY = "destination got a newer row during the copy"
SKIP_EXPIRED_DURING_COPY = "streaming value expired during the copy"
SKIP_NO_TS = "values without a _ts field"
SKIP_NO_VALUES = "_ts field without values"
# Keys the SCAN pattern matched that hold no rows of the project.
KEY_FOREIGN = "not a built-in key of this project"
KEY_NO_VIEW = "no view of the project has these join keys"
KEY_NOT_HASH = "not a hash"
KEY_EMPTY = "no field of the project's views"

# Event times of the two stores are compared at this tolerance (Feast's built-in read goes
# through a float of seconds, which can be off by a microsecond).
_TS_TOLERANCE_US = 10
_GLOB_SPECIAL = frozenset(b"*?[]\\")


@dataclass
class Verification:
    """``get_online_features`` answered by both stores for a sample of entities, value by value."""

    entities: int = 0
    values: int = 0
    same: int = 0
    newer_in_destination: int = 0  # pushed to the new store since the copy
    expired: int = 0  # streaming values past their window: not copied, or expired since
    newer_in_source: int = 0  # written to the old store after its key was copied: rerun
    mismatched: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


@dataclass
class MigrationReport:
    project: str
    source: str
    destination: str
    keys_scanned: int = 0
    keys_copied_from: int = 0
    rows_copied: Counter[str] = field(default_factory=Counter)  # per view
    rows_skipped: Counter[str] = field(default_factory=Counter)  # per reason
    keys_skipped: Counter[str] = field(default_factory=Counter)  # per reason
    views_not_copied: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verification: Verification = field(default_factory=Verification)

    def as_dict(self) -> dict[str, Any]:
        v = self.verification
        return {
            "project": self.project,
            "source": self.source,
            "destination": self.destination,
            "keys_scanned": self.keys_scanned,
            "keys_copied_from": self.keys_copied_from,
            "rows_copied": sum(self.rows_copied.values()),
            "rows_copied_per_view": dict(sorted(self.rows_copied.items())),
            "rows_skipped": sum(self.rows_skipped.values()),
            "rows_skipped_per_reason": dict(sorted(self.rows_skipped.items())),
            "keys_skipped_per_reason": dict(sorted(self.keys_skipped.items())),
            "views_not_copied": self.views_not_copied,
            "seconds": round(self.seconds, 3),
            "verification": {
                "entities": v.entities,
                "values": v.values,
                "same": v.same,
                "newer_in_destination": v.newer_in_destination,
                "expired": v.expired,
                "newer_in_source": v.newer_in_source,
                "mismatched": v.mismatched,
                "examples": v.examples,
                "ok": v.ok,
            },
        }

    def render(self, verified: bool = True) -> str:
        v = self.verification
        lines = [
            f"project {self.project!r}: {self.source} (type: redis) -> {self.destination} "
            f"in {self.seconds:.1f} s",
            f"  keys scanned:  {self.keys_scanned} ({self.keys_copied_from} with rows of the project)",
        ]
        for title, counts in (
            ("rows copied:  ", self.rows_copied),
            ("rows skipped: ", self.rows_skipped),
            ("keys skipped: ", self.keys_skipped),
        ):
            if counts or title.startswith("rows"):
                lines.append(f"  {title} {sum(counts.values())}")
                lines += [f"    {name}: {n}" for name, n in sorted(counts.items())]
        if self.views_not_copied:
            lines.append(
                f"  not copied (on-demand views, recomputed on write): {', '.join(self.views_not_copied)}"
            )
        if not verified:
            lines.append("  verification: skipped (--verify 0)")
            return "\n".join(lines)
        lines += [
            f"  verification (get_online_features on both stores): {v.entities} entities, {v.values} values",
            f"    same {v.same}, newer in destination {v.newer_in_destination}, expired {v.expired}, "
            f"newer in source {v.newer_in_source}, mismatched {v.mismatched}",
        ]
        lines += [f"    mismatch: {example}" for example in v.examples]
        if v.newer_in_source or v.mismatched:
            lines.append(
                "  if the old store received writes during the copy, run migrate again (a rerun "
                "copies only rows newer than the destination's)"
            )
        return "\n".join(lines)


# ---- the repo: configs of both stores, the project's views ----


def _raw_yaml(repo: Path) -> dict[str, Any]:
    path = repo / "feature_store.yaml"
    if not path.exists():
        raise ConfigError(f"{path} does not exist (--repo is the directory of feature_store.yaml)")
    raw = yaml.safe_load(os.path.expandvars(path.read_text()))  # as Feast reads it
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a YAML mapping")
    return raw


def _repo_config(raw: dict[str, Any], repo: Path, online_store: dict[str, Any]) -> RepoConfig:
    config = RepoConfig(**{**raw, "online_store": online_store})
    config.repo_path = repo
    return config


def _views(store: FeatureStore, project: str) -> list[Any]:
    known = {p.name for p in store.list_projects()}
    views: dict[str, Any] = {}
    for view in [*store.list_feature_views(), *store.list_stream_feature_views()]:
        if getattr(view, "online", True):
            views.setdefault(view.name, view)
    if project not in known and not views:
        raise ConfigError(
            f"project {project!r} is not in the registry of this repo (known: "
            f"{', '.join(sorted(known)) or 'none'}); run `feast apply` first or pass --project"
        )
    if not views:
        raise ConfigError(f"project {project!r} has no online feature views to migrate")
    return list(views.values())


def _join_keys(view: Any) -> tuple[str, ...]:
    return tuple(sorted(getattr(view, "join_keys", None) or ())) or (DUMMY_ENTITY_ID,)


@dataclass(frozen=True)
class _SourceView:
    """Where one view's values live in the built-in layout."""

    view: Any
    features: list[str]
    fields: list[bytes]  # murmur3 field of each feature, then the _ts field
    streaming: bool
    field_ttl_ms: int

    @classmethod
    def of(cls, view: Any, config: RepoConfig) -> _SourceView:
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        name = compute_versioned_name(view, versioning)  # the built-in store's own naming
        features = [f.name for f in view.features]
        fields = [builtin_field(name, feature) for feature in features]
        policy = policy_for(view, config.online_store)
        return cls(
            view,
            features,
            [*fields, f"{TS_FIELD_PREFIX}{name}".encode()],
            policy.streaming,
            policy.field_ttl_ms,
        )


# ---- the source: keys and rows ----


def builtin_field(view: str, feature: str) -> bytes:
    """The built-in store's hash field of a feature: murmur3 (32 bit, unsigned) of
    ``"<view>:<feature>"``, 4 bytes little-endian (Feast's online store format spec)."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def decode_source_key(key: bytes, project: bytes, version: int) -> EntityKeyProto | None:
    """The entity key of a built-in store's key (serialized entity key + project), or None when
    ``key`` is not one (another project's key that the SCAN pattern also matched)."""
    if not key.endswith(project) or len(key) == len(project):
        return None
    body = key[: -len(project)]
    try:
        entity_key = deserialize_entity_key(body, entity_key_serialization_version=version)
        if serialize_entity_key(entity_key, entity_key_serialization_version=version) != body:
            return None
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    return entity_key


def _scan_pattern(project: str) -> bytes:
    escaped = b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in project.encode())
    return b"*" + escaped


def _scan(client: Any, pattern: bytes, batch_size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=batch_size):
        batch.append(key)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _event_time(raw: bytes) -> tuple[datetime, int]:
    ts = Timestamp()
    ts.ParseFromString(raw)
    micros = ts.seconds * 1_000_000 + ts.nanos // 1000
    return codec.decode_ts(str(micros).encode()), micros


def _micros(ts: datetime) -> int:
    return codec.encode_ts(ts)


# ---- the copy ----


class _Copier:
    def __init__(
        self, store: RedisHexpireOnlineStore, config: RepoConfig, source: Any, views: list[_SourceView],
        report: MigrationReport, sample_size: int,
    ) -> None:  # fmt: skip
        self.store, self.config, self.source, self.report = store, config, source, report
        self.project = config.project.encode()
        self.version = config.entity_key_serialization_version
        self.groups: dict[tuple[str, ...], list[_SourceView]] = defaultdict(list)
        for view in views:
            self.groups[_join_keys(view.view)].append(view)
        # The HMGET fields of a key of each group: every view's fields, then its _ts field.
        self.fields = {group: [f for v in views for f in v.fields] for group, views in self.groups.items()}
        self.sample_size = sample_size
        self.samples: dict[tuple[str, ...], list[EntityKeyProto]] = defaultdict(list)
        self.seen: Counter[tuple[str, ...]] = Counter()
        self.random = random.Random(0)

    def _sample(self, group: tuple[str, ...], entity_key: EntityKeyProto) -> None:
        """Reservoir sampling: every entity of the group equally likely to be verified."""
        self.seen[group] += 1
        kept = self.samples[group]
        if len(kept) < self.sample_size:
            kept.append(entity_key)
        else:
            slot = self.random.randrange(self.seen[group])
            if slot < self.sample_size:
                kept[slot] = entity_key

    def copy(self, keys: Sequence[bytes]) -> None:
        report = self.report
        report.keys_scanned += len(keys)
        wanted: list[tuple[bytes, EntityKeyProto, tuple[str, ...]]] = []
        for key in keys:
            entity_key = decode_source_key(key, self.project, self.version)
            if entity_key is None:
                report.keys_skipped[KEY_FOREIGN] += 1
                continue
            group = tuple(sorted(entity_key.join_keys))
            if group not in self.groups:
                report.keys_skipped[KEY_NO_VIEW] += 1
                continue
            wanted.append((key, entity_key, group))
        if not wanted:
            return
        with self.source.pipeline(transaction=False) as pipe:
            for key, _, group in wanted:
                pipe.hmget(key, self.fields[group])
            replies = pipe.execute(raise_on_error=False)
        now_ms = time.time() * 1000
        rows: dict[str, list] = defaultdict(list)
        by_name: dict[str, _SourceView] = {}
        for (_, entity_key, group), reply in zip(wanted, replies):
            if isinstance(reply, ResponseError):  # WRONGTYPE: a key of another kind
                report.keys_skipped[KEY_NOT_HASH] += 1
                continue
            found = self._rows(entity_key, self.groups[group], reply, now_ms, rows, by_name)
            if found:
                report.keys_copied_from += 1
                self._sample(group, entity_key)
            else:
                report.keys_skipped[KEY_EMPTY] += 1
        for name, view_rows in rows.items():
            self._write(by_name[name], view_rows)

    def _rows(
        self, entity_key: EntityKeyProto, views: list[_SourceView], reply: list, now_ms: float,
        rows: dict[str, list], by_name: dict[str, _SourceView],
    ) -> bool:  # fmt: skip
        """Append one row per view present in the hash; True if the hash held any of them."""
        found, offset = False, 0
        for view in views:
            values = reply[offset : offset + len(view.fields)]
            offset += len(view.fields)
            raw_ts, raw_values = values[-1], values[:-1]
            present = {f: v for f, v in zip(view.features, raw_values) if v is not None}
            if raw_ts is None and not present:
                continue
            found = True
            if raw_ts is None:
                self.report.rows_skipped[SKIP_NO_TS] += 1
                continue
            if not present:
                self.report.rows_skipped[SKIP_NO_VALUES] += 1
                continue
            event_ts, micros = _event_time(raw_ts)
            if view.streaming and micros / 1000 + view.field_ttl_ms <= now_ms:
                self.report.rows_skipped[SKIP_EXPIRED] += 1
                continue
            # An empty value is how the built-in store keeps a null: ValueProto() parses it.
            features = {f: ValueProto.FromString(v) for f, v in present.items()}
            rows[view.view.name].append((entity_key, features, event_ts, None))
            by_name[view.view.name] = view
        return found

    def _write(self, view: _SourceView, rows: list) -> None:
        # Only the event time is needed: ask for one feature (the _ts field comes with it).
        current = self.store.online_read(self.config, view.view, [row[0] for row in rows], view.features[:1])
        newer = [row for row, (ts, _) in zip(rows, current) if ts is None or _micros(ts) < _micros(row[2])]
        if len(newer) < len(rows):
            self.report.rows_skipped[SKIP_NOT_NEWER] += len(rows) - len(newer)
        if not newer:
            return
        stats = getattr(self.store, "stats", None)
        before = Counter(stats) if isinstance(stats, Counter) else None
        self.store.online_write_batch(self.config, view.view, newer, None)
        if before is None or not isinstance(stats, Counter):
            self.report.rows_copied[view.view.name] += len(newer)
            return
        delta = stats - before
        self.report.rows_copied[view.view.name] += delta["written"]
        for reason, counter in (
            (SKIP_NEWER_DURING_COPY, "skipped_not_newer"),
            (SKIP_EXPIRED_DURING_COPY, "dropped_expired"),
        ):
            if delta[counter]:
                self.report.rows_skipped[reason] += delta[counter]


# ---- the check: get_online_features on both stores ----


def _present(value: ValueProto, status: int) -> bool:
    return (
        status in (FieldStatus.PRESENT, FieldStatus.OUTSIDE_MAX_AGE) and value.WhichOneof("val") is not None
    )


def _verify(old: FeatureStore, new: FeatureStore, copier: _Copier, report: MigrationReport) -> None:
    check = report.verification
    for group, entity_keys in copier.samples.items():
        if not entity_keys or group == (DUMMY_ENTITY_ID,):  # entityless views: no entity rows to ask
            continue
        views = copier.groups[group]
        refs = [f"{v.view.name}:{f}" for v in views for f in v.features]
        streaming = {f"{v.view.name}__{f}": v.field_ttl_ms for v in views if v.streaming for f in v.features}
        rows = [
            {k: feast_value_type_to_python_type(v) for k, v in zip(ek.join_keys, ek.entity_values)}
            for ek in entity_keys
        ]
        answers = [
            store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).proto
            for store in (old, new)
        ]
        now_ms = time.time() * 1000
        check.entities += len(rows)
        columns = [dict(zip(a.metadata.feature_names.val, a.results)) for a in answers]
        for name in columns[0]:
            if name in group:
                continue
            old_col, new_col = columns[0][name], columns[1][name]
            for i in range(len(rows)):
                check.values += 1
                o_val, n_val = old_col.values[i], new_col.values[i]
                o_ok, n_ok = _present(o_val, old_col.statuses[i]), _present(n_val, new_col.statuses[i])
                o_ts, n_ts = (
                    col.event_timestamps[i].seconds * 1_000_000 + col.event_timestamps[i].nanos // 1000
                    for col in (old_col, new_col)
                )
                if not o_ok and not n_ok:
                    check.same += 1
                elif o_ok and n_ok and abs(o_ts - n_ts) <= _TS_TOLERANCE_US:
                    if o_val.SerializeToString() == n_val.SerializeToString():
                        check.same += 1
                    else:
                        _mismatch(check, rows[i], name, "values differ at the same event time")
                elif n_ok and (not o_ok or n_ts > o_ts):
                    check.newer_in_destination += 1
                elif o_ok and n_ok:
                    check.newer_in_source += 1
                elif name in streaming and o_ts / 1000 + streaming[name] <= now_ms:
                    check.expired += 1
                else:
                    _mismatch(check, rows[i], name, "present in the old store only")


def _mismatch(check: Verification, row: dict[str, Any], name: str, why: str) -> None:
    check.mismatched += 1
    if len(check.examples) < 5:
        check.examples.append(f"{row} {name}: {why}")


# ---- the command ----


def migrate(
    repo: Path,
    source: str,
    *,
    source_type: RedisType = RedisType.redis,
    sentinel_master: str = "mymaster",
    destination: str | None = None,
    project: str | None = None,
    batch_size: int = 500,
    verify: int = 100,
    progress: bool = True,
) -> MigrationReport:
    """Copy ``project``'s online data (default: the repo's) from the built-in store at ``source``
    into the repo's configured online store (or ``destination``). Nothing is written before every
    check passed: the project and its views are in the registry, both servers answer, the
    destination has hash-field expiration, the source holds built-in data of the project."""
    started = time.monotonic()
    if batch_size < 1 or verify < 0:
        raise ConfigError(f"--batch-size must be >= 1 and --verify >= 0, got {batch_size} and {verify}")
    repo = Path(repo).resolve()
    raw = _raw_yaml(repo)
    if project:
        raw["project"] = project
    online = dict(raw.get("online_store") or {})
    if online.get("type") not in STORE_TYPES:
        raise ConfigError(
            f"the repo's online_store is type {online.get('type')!r}; set it to {STORE_TYPES[0]} "
            f"first (the destination of the copy), see README 'Switching from type: redis'"
        )
    if destination:
        online["connection_string"] = destination
    # Reads of the destination ignore freshness; streaming TTLs count from the event time.
    config = _repo_config(raw, repo, {**online, "ttl_from": "event", "freshness_check": "off"})
    if config.entity_key_serialization_version < 3:
        raise ConfigError(
            f"entity_key_serialization_version {config.entity_key_serialization_version}: only "
            f"version 3 keys can be decoded (Feast removed the older ones)"
        )
    source_cfg = RedisHexpireOnlineStoreConfig.model_validate(
        {"connection_string": source, "redis_type": source_type, "sentinel_master": sentinel_master}
    )
    old_online = {"type": "redis", "connection_string": source, "redis_type": source_type.value}
    if source_type == RedisType.redis_sentinel:
        old_online["sentinel_master"] = sentinel_master
    new_store = FeatureStore(repo_path=str(repo), config=_repo_config(raw, repo, online))
    report = MigrationReport(config.project, address(source_cfg), address(config.online_store))
    all_views = _views(new_store, config.project)
    RedisHexpireOnlineStore.check_views(config, all_views)  # what `feast apply` refuses, refused here too
    views = [_SourceView.of(v, config) for v in all_views]
    report.views_not_copied = sorted(
        v.name for v in new_store.list_on_demand_feature_views() if getattr(v, "write_to_online_store", False)
    )

    store = RedisHexpireOnlineStore()
    where = report.destination
    try:
        require_hfe(store.client(config), config.online_store)
    except IO_ERRORS as e:
        raise StoreUnavailableError(f"cannot reach the destination Redis at {where}: {redact(str(e))}") from e
    source_client = make_client(source_cfg)
    try:
        source_client.ping()
    except IO_ERRORS as e:
        raise StoreUnavailableError(
            f"cannot reach the source Redis at {report.source}: {redact(str(e))}"
        ) from e

    copier = _Copier(store, config, source_client, views, report, verify)
    from tqdm import tqdm

    bar = tqdm(unit="key", desc=f"migrate {config.project}", disable=None if progress else True)
    try:
        for keys in _scan(source_client, _scan_pattern(config.project), batch_size):
            try:
                copier.copy(list(dict.fromkeys(keys)))  # SCAN may return a key twice
            except IO_ERRORS as e:
                raise StoreUnavailableError(
                    f"migration interrupted after {report.keys_scanned} keys: {redact(str(e))}; "
                    f"run it again (rows already copied are skipped)"
                ) from e
            bar.update(len(keys))
    except HexpireError:
        raise
    except IO_ERRORS as e:
        raise StoreUnavailableError(
            f"scanning the source Redis at {report.source} failed: {redact(str(e))}"
        ) from e
    finally:
        bar.close()
        source_client.close()
    if not report.keys_copied_from:
        raise HexpireError(
            f"the source Redis at {report.source} holds no built-in (type: redis) data of project "
            f"{config.project!r} ({report.keys_scanned} key(s) matched *{config.project}); nothing "
            f"was copied"
        )
    if verify > 0:
        old_store = FeatureStore(repo_path=str(repo), config=_repo_config(raw, repo, old_online))
        _verify(old_store, new_store, copier, report)
    report.seconds = time.monotonic() - started
    return report
