"""The demo's state: one FeatureStore, one streaming worker, the known population, counters.

Every operation here is the real Feast path: bulk loads materialize, the worker pushes, reads go
through ``get_online_features``. Bulk loads, the worker and the reads each use their own
``FeatureStore`` on the same repo and config: Feast's file registry updates its in-memory copy in
place while a materialization changes a view's state, and a read or push in another thread that
looks the view up in the same copy at that moment finds it missing; and every lookup here uses
the store's loaded registry, never a re-read of a file that a bulk load may be rewriting. Only
inspection, the per-field TTLs and event times shown beside a read, the user counts and the key
memory talk to Redis directly, and none of them scans the keyspace (see :meth:`Demo.state`).
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Sequence

from feast import FeatureStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

from .. import codec, layout
from ..inspect import inspect_entity
from ..policy import mode_reason, policy_for
from ..synth import BATCH_FEATURES, STREAMING_FEATURES, streaming_frame
from ..views import ViewLayout
from . import repo as demo_repo
from .builder import bulk_load, check_count, check_ttl
from .errors import InputError, NotFoundError, UnavailableError, quote
from .metrics import Metrics, Sampler
from .worker import StreamingWorker

__all__ = ["Demo", "FEATURES", "EXACT_COUNT_LIMIT", "MAX_USER_ID", "MAX_TICK_SECONDS", "MAX_USERS_PER_TICK"]

FEATURES = {f: demo_repo.BATCH_VIEW for f in BATCH_FEATURES} | {
    f: demo_repo.STREAMING_VIEW for f in STREAMING_FEATURES
}
DEFAULT_READ = ("risk_segment", "tx_count_7d", "avg_amount_30d", "tx_count_5m", "failed_logins_15m")
EXACT_COUNT_LIMIT = 20_000  # above this, /state estimates the live count from a sample
EXACT_FRESH_LIMIT = 5_000  # above this, the count of users with fresh streaming data is estimated
SAMPLE_SIZE = 1_000
MAX_BATCH_READ = 1_000
MAX_USER_ID = 64
MAX_USERS_PER_TICK = 10_000
MAX_TICK_SECONDS = 3600.0
PROBE_BATCH = 50  # users of the sampler's probe batch read
_USER_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")
_GLOB_OR_SEPARATOR = re.compile(r"[*?\[\]\\:\s{}]")


def check_prefix(prefix: str) -> str:
    """Refuse a key prefix that is empty or only glob characters and separators: a reset
    under it would be a reset of (nearly) the whole database in any tool that does not escape."""
    if not _GLOB_OR_SEPARATOR.sub("", prefix):
        raise InputError("key_prefix", f"{prefix!r} is empty or only glob characters; refusing", 400)
    return prefix


class Demo:
    def __init__(
        self,
        store: FeatureStore,
        users_per_tick: int = 5,
        interval: float = 1.0,
        worker_seed: int | None = None,
    ) -> None:
        self.store = store  # bulk loads and resets
        self.reader = _twin(store)  # get_online_features, views, inspect
        self.pusher = _twin(store)  # the streaming worker's pushes
        self.population: list[str] = demo_repo.read_population(store)
        self._known = set(self.population)
        self._keys: list[bytes] = self._key_list(self.population)
        self._lock = threading.RLock()  # bulk load and reset change the population
        self.counters: Counter[str] = Counter()
        self.last_read_ms = 0.0
        self.last_read_kind: str | None = None
        self.batch_ttl_seconds: int | None = store.config.online_store.key_ttl_seconds
        self.worker = StreamingWorker(
            self.pusher, lambda: self.population, users_per_tick, interval, worker_seed
        )
        self.worker.watched = self.population[0] if self.population else None
        self.metrics = Metrics()
        self.sampler = Sampler(self.sample)
        self.rng = random.Random(0)

    @classmethod
    def create(cls, repo: Path, **worker: Any) -> Demo:
        return cls(demo_repo.apply(repo), **worker)

    def start(self) -> Demo:
        """Start the streaming worker and the chart sampler."""
        self.worker.start()
        self.sampler.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()
        self.worker.stop()

    # ---- helpers ----

    @property
    def online(self) -> Any:
        return _online(self.store)

    @property
    def client(self) -> Any:
        return self.online.client(self.store.config)

    @property
    def prefix(self) -> str:
        return self.store.config.online_store.prefix_for(self.store.config.project)

    @property
    def streaming_ttl_seconds(self) -> int:
        return int(self.store.config.online_store.stream_field_ttl_seconds)

    @property
    def watched(self) -> str | None:
        return self.worker.watched

    def _key_list(self, users: Sequence[str]) -> list[bytes]:
        keys = demo_repo.key_builder(self.store)
        return [keys.key(demo_repo.user_entity_key(u)) for u in users]

    def _set_population(self, users: list[str]) -> None:
        keys = self._key_list(users)
        self.population, self._known, self._keys = users, set(users), keys
        if self.worker.watched not in self._known:
            self.worker.watched = users[0] if users else None

    def key_of(self, user: str) -> bytes:
        return demo_repo.key_builder(self.store).key(demo_repo.user_entity_key(user))

    def layouts(self) -> dict[str, ViewLayout]:
        """The demo views' layouts as the store computes them (fields follow its settings)."""
        config = self.reader.config
        return {
            name: ViewLayout.of(config, self.reader.get_feature_view(name, allow_registry_cache=True))
            for name in VIEWS
        }

    def check_user(self, value: Any, field: str = "user_id") -> str:
        if value is not None and not isinstance(value, str):
            raise InputError(field, f"must be a string, got {quote(value)}")
        user = (value or "").strip()
        if not user:
            raise InputError(field, "is required")
        if len(user) > MAX_USER_ID:
            raise InputError(field, f"is {len(user)} characters long; the limit is {MAX_USER_ID}")
        if not _USER_ID.match(user):
            raise InputError(field, f"{quote(user)} is not a user id (letters, digits, _ . -)")
        if user not in self._known:
            raise NotFoundError(field, f"unknown user {quote(user)}: not in the loaded population")
        return user

    @staticmethod
    def check_features(value: Any, field: str = "features") -> list[str]:
        """Feature names, each optionally as ``view:feature``; the view part must be the view
        that serves the feature."""
        if value is None:
            return list(DEFAULT_READ)
        if isinstance(value, str):
            value = [v for v in re.split(r"[,\s]+", value) if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(field, f"must be a list of feature names, got {quote(value)}")
        value = [v.strip() for v in value if v.strip()]
        if not value:
            raise InputError(field, "is empty; name at least one feature")
        names = []
        for ref in value:
            view, _, name = ref.rpartition(":")
            if name not in FEATURES:
                raise InputError(
                    field, f"unknown feature {quote(name)}; known: {', '.join(sorted(FEATURES))}"
                )
            if view and view != FEATURES[name]:
                raise InputError(
                    field,
                    f"{quote(ref)}: {quote(name)} is served by view {quote(FEATURES[name])}, not "
                    f"{quote(view)} (views: {', '.join(VIEWS)})",
                )
            names.append(name)
        return list(dict.fromkeys(names))

    # ---- state ----

    def _probe(self) -> tuple[list[bytes], bool]:
        keys = self._keys
        exact = len(keys) <= EXACT_COUNT_LIMIT
        return (keys if exact else self.rng.sample(keys, SAMPLE_SIZE)), exact

    def live_users(self) -> tuple[int, bool]:
        """Users of the population whose hash exists: multi-key EXISTS in chunks of 1000
        (one pipelined round trip, O(population), no SCAN); above EXACT_COUNT_LIMIT an estimate
        from a random sample of SAMPLE_SIZE keys. Returns (count, exact)."""
        keys = self._keys
        if not keys:
            return 0, True
        probe, exact = self._probe()
        with self.client.pipeline(transaction=False) as pipe:
            for i in range(0, len(probe), 1000):
                pipe.exists(*probe[i : i + 1000])
            live = sum(pipe.execute())
        return (live, True) if exact else (round(live * len(keys) / len(probe)), False)

    def fresh_users(self) -> tuple[int, bool]:
        """Users whose hash holds the streaming view's timestamp field, i.e. whose streaming
        fields are within their TTL: one pipelined HEXISTS per key (no SCAN); above
        EXACT_FRESH_LIMIT an estimate from a random sample of SAMPLE_SIZE keys."""
        keys = self._keys
        if not keys:
            return 0, True
        exact = len(keys) <= EXACT_FRESH_LIMIT
        probe = keys if exact else self.rng.sample(keys, SAMPLE_SIZE)
        ts = self.layouts()[demo_repo.STREAMING_VIEW].ts_field
        with self.client.pipeline(transaction=False) as pipe:
            for key in probe:
                pipe.hexists(key, ts)
            fresh = sum(bool(x) for x in pipe.execute())
        return (fresh, True) if exact else (round(fresh * len(keys) / len(probe)), False)

    def state(self) -> dict[str, Any]:
        live, exact = self.live_users()
        fresh, fresh_exact = self.fresh_users()
        return {
            "users": live,
            "users_exact": exact,
            "fresh_users": fresh,
            "fresh_users_exact": fresh_exact,
            "population": len(self.population),
            "watched": self.watched,
            "key_prefix": self.prefix,
            "batch_ttl_seconds": self.batch_ttl_seconds,
            "streaming_ttl_seconds": self.streaming_ttl_seconds,
            "store_stats": dict(self.online.stats + _online(self.pusher).stats),
            "counters": dict(self.counters),
            "last_read_ms": self.last_read_ms,
            "last_read_kind": self.last_read_kind,
            "worker": self.worker.status(),
            "features": {"batch": list(BATCH_FEATURES), "streaming": list(STREAMING_FEATURES)},
            "sample_users": self.population[:10],
        }

    def views(self) -> list[dict[str, Any]]:
        """The repo's feature views as the store sees them: layer and why, TTLs, hash fields."""
        config = self.reader.config
        out = []
        for view in [
            *self.reader.list_feature_views(allow_cache=True),
            *self.reader.list_stream_feature_views(allow_cache=True),
        ]:
            policy = policy_for(view, config.online_store)
            lay = ViewLayout.of(config, view)
            out.append(
                {
                    "name": view.name,
                    "mode": policy.mode,
                    "why": mode_reason(view)[1],
                    "entities": list(view.entities or []),
                    "key_ttl_seconds": policy.key_ttl_ms // 1000 if not policy.streaming else None,
                    "field_ttl_seconds": policy.field_ttl_ms // 1000 if policy.streaming else None,
                    "feast_ttl_seconds": int(view.ttl.total_seconds()) if view.ttl else None,
                    "ts_field": lay.ts_field,
                    "key_example": lay.keys.key(demo_repo.user_entity_key("u0001")).decode(),
                    "features": [
                        {"name": name, "field": spec[0], "type": str(f.dtype)}
                        for f in view.features
                        for name, spec in lay.fields.items()
                        if name == f.name
                    ],
                    "tags": dict(view.tags or {}),
                }
            )
        return out

    # ---- actions ----

    def bulk_load(self, count: Any, ttl_seconds: Any, seed: Any = 1) -> dict[str, Any]:
        # Feast prints a banner per materialize; the server's console is not the place for it.
        with self._lock, contextlib.redirect_stdout(io.StringIO()):
            result = bulk_load(self.store, count, ttl_seconds, seed)
            self._set_population(demo_repo.read_population(self.store))
            self.batch_ttl_seconds = result.ttl_seconds
            self.counters["bulk_loads"] += 1
            return result.as_dict()

    def toggle_worker(self, running: Any = None) -> dict[str, Any]:
        """``running`` True/False (or their form spellings) sets the state; None flips it."""
        if running is None:
            target = not self.worker.running
        elif isinstance(running, bool):
            target = running
        elif isinstance(running, str) and running.strip().lower() in ("true", "1", "on", "yes"):
            target = True
        elif isinstance(running, str) and running.strip().lower() in ("false", "0", "off", "no"):
            target = False
        else:
            raise InputError("running", f"must be true or false, got {quote(running)}")
        (self.worker.resume if target else self.worker.pause)()
        return self.worker.status()

    def settings(
        self, streaming_ttl_seconds: Any = None, users_per_tick: Any = None, tick_seconds: Any = None
    ) -> dict[str, Any]:
        """Change the streaming TTL of the next pushes and the worker's rate (each optional).
        Every value is checked before any is applied."""
        ttl = (
            None
            if streaming_ttl_seconds is None
            else check_ttl(streaming_ttl_seconds, "streaming_ttl_seconds")
        )
        per_tick = (
            self.worker.users_per_tick
            if users_per_tick is None
            else check_count(users_per_tick, "users_per_tick", MAX_USERS_PER_TICK)
        )
        interval = (
            self.worker.interval if tick_seconds is None else _check_seconds(tick_seconds, "tick_seconds")
        )
        if ttl is not None:
            # Read by the plugin on every write: the next push uses it, earlier fields keep theirs.
            self.store.config.online_store.stream_field_ttl_seconds = ttl
        if (per_tick, interval) != (self.worker.users_per_tick, self.worker.interval):
            self.worker.set_rate(per_tick, interval)
        return self.settings_view()

    def settings_view(self) -> dict[str, Any]:
        return {
            "streaming_ttl_seconds": self.streaming_ttl_seconds,
            "users_per_tick": self.worker.users_per_tick,
            "tick_seconds": self.worker.interval,
        }

    def watch(self, user_id: Any = None) -> dict[str, Any]:
        """Watch ``user_id``, or (None) a user with fresh streaming data; the worker then keeps
        that user's streaming data fresh."""
        if user_id is not None:
            user = self.check_user(user_id)
        else:
            found = self._fresh_user()
            if found is None:
                raise NotFoundError(
                    "user_id",
                    "no user has fresh streaming data; resume the worker or bulk-load"
                    if self.population
                    else "no users are loaded; bulk-load first",
                )
            user = found
        self.worker.watched = user
        return {"user_id": user, "fresh": self._is_fresh(user)}

    def _is_fresh(self, user: str) -> bool:
        return bool(self.client.hexists(self.key_of(user), self.layouts()[demo_repo.STREAMING_VIEW].ts_field))

    def _fresh_user(self) -> str | None:
        """A user of the population with fresh streaming data (pipelined HEXISTS over a random
        sample of up to SAMPLE_SIZE users), None if the sample holds none."""
        users = self.population
        probe = users if len(users) <= SAMPLE_SIZE else self.rng.sample(users, SAMPLE_SIZE)
        ts = self.layouts()[demo_repo.STREAMING_VIEW].ts_field
        with self.client.pipeline(transaction=False) as pipe:
            for user in probe:
                pipe.hexists(self.key_of(user), ts)
            found = [u for u, fresh in zip(probe, pipe.execute()) if fresh]
        return found[0] if found else None

    def watch_expire(self, ttl_seconds: Any = 20) -> dict[str, Any]:
        """The one-click scenario: new pushes get a ``ttl_seconds`` field TTL, the watched user
        gets one fresh push with it, then the worker pauses; the page watches the fields run out
        while the batch fields stay."""
        ttl = check_ttl(ttl_seconds, "ttl_seconds")
        user = self.watched
        if user is None:
            raise NotFoundError("user_id", "no users are loaded; bulk-load first")
        self.worker.pause()
        if not self.worker.wait_for_idle(30):
            raise TimeoutError("streaming worker still busy after 30 s")
        self.store.config.online_store.stream_field_ttl_seconds = ttl
        pushed = time.time()
        self.pusher.push(demo_repo.PUSH_SOURCE, streaming_frame([user], self.rng))
        return {
            "user_id": user,
            "streaming_ttl_seconds": ttl,
            "pushed_at": round(pushed, 3),
            "expires_by": round(time.time() + ttl, 3),
            "worker": self.worker.status(),
        }

    def _entity_times(self, user: str, fields: Sequence[str]) -> tuple[int, list[int], dict[str, int | None]]:
        """Key PTTL, HPTTL of ``fields`` and each demo view's event time (µs) in one round trip."""
        key = self.key_of(user)
        layouts = self.layouts()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.pttl(key)
            pipe.hpttl(key, *fields)
            pipe.hmget(key, *(lay.ts_field for lay in layouts.values()))
            key_ttl, ttls, stamps = pipe.execute()
        times = {name: _micros(raw, lay) for (name, lay), raw in zip(layouts.items(), stamps)}
        return int(key_ttl), [int(t) for t in (ttls or [-2] * len(fields))], times

    @contextlib.contextmanager
    def _serving(self) -> Iterator[None]:
        """Feast's refusal to serve a view in a non-servable state becomes a clear 503."""
        try:
            yield
        except ValueError as e:
            if "cannot serve features" in str(e):
                raise UnavailableError(None, f"the store refuses to serve right now: {e}") from None
            raise

    def read(self, user_id: Any, features: Any = None) -> dict[str, Any]:
        user = self.check_user(user_id)
        names = self.check_features(features)
        refs = [f"{FEATURES[f]}:{f}" for f in names]
        started = time.perf_counter()
        with self._serving():
            response = self.reader.get_online_features(features=refs, entity_rows=[{"user_id": user}])
        latency_ms = (time.perf_counter() - started) * 1000
        values = response.to_dict()
        statuses = _statuses(response)
        layouts = self.layouts()
        fields = [layouts[FEATURES[f]].fields[f][0] for f in names]
        key_ttl, ttls, times = self._entity_times(user, fields)
        now_us = time.time_ns() // 1000
        self.counters["reads"] += 1
        self.last_read_ms, self.last_read_kind = round(latency_ms, 3), "single"
        self.metrics.record("single", latency_ms)
        return {
            "user_id": user,
            "key": self.key_of(user).decode(),
            "latency_ms": round(latency_ms, 3),
            "key_ttl_ms": key_ttl,
            "features": [
                {
                    "name": f,
                    "view": FEATURES[f],
                    "layer": "streaming" if FEATURES[f] == demo_repo.STREAMING_VIEW else "batch",
                    "field": f"{fld}[{f}]" if layouts[FEATURES[f]].packed else fld,  # packed: in fld
                    "value": _plain(values[f][0]),
                    "status": statuses[f][0],
                    "field_ttl_ms": ttl,
                    # A batch field has no TTL of its own: it lives as long as the key.
                    "expires_with_key": ttl == -1 and key_ttl >= 0,
                    "event_time": _iso(times[FEATURES[f]]) if statuses[f][0] == "PRESENT" else None,
                    "age_ms": _age_ms(times[FEATURES[f]], now_us) if statuses[f][0] == "PRESENT" else None,
                }
                for f, fld, ttl in zip(names, fields, ttls)
            ],
        }

    def batch_read(self, count: Any, features: Any = None, record: bool = True) -> dict[str, Any]:
        n = check_count(count, "count", MAX_BATCH_READ)
        names = self.check_features(features)
        users = self.population[:n]
        if len(users) < n:
            raise InputError("count", f"only {len(self.population)} user(s) are loaded, asked for {n}")
        refs = [f"{FEATURES[f]}:{f}" for f in names]
        started = time.perf_counter()
        with self._serving():
            response = self.reader.get_online_features(
                features=refs, entity_rows=[{"user_id": u} for u in users]
            )
        total_ms = (time.perf_counter() - started) * 1000
        statuses = _statuses(response)
        self.metrics.record("batch", total_ms)
        if record:
            self.counters["batch_reads"] += 1
            self.last_read_ms, self.last_read_kind = round(total_ms, 3), "batch"
        per_user = [
            {
                "user_id": u,
                "present": sum(statuses[f][i] == "PRESENT" for f in names),
                "requested": len(names),
                "missing": [f for f in names if statuses[f][i] != "PRESENT"],
            }
            for i, u in enumerate(users)
        ]
        return {
            "count": n,
            "features": names,
            "total_ms": round(total_ms, 3),
            "per_user_ms": round(total_ms / n, 4),
            "summary": {
                "users": n,
                "complete_users": sum(u["present"] == len(names) for u in per_user),
                "per_feature": [
                    {
                        "name": f,
                        "layer": "streaming" if FEATURES[f] == demo_repo.STREAMING_VIEW else "batch",
                        "present": sum(s == "PRESENT" for s in statuses[f]),
                        "missing": sum(s != "PRESENT" for s in statuses[f]),
                    }
                    for f in names
                ],
            },
            "users": per_user,
        }

    def inspect(self, user_id: Any) -> dict[str, Any]:
        user = self.check_user(user_id)
        self.counters["inspects"] += 1
        report = inspect_entity(self.reader, demo_repo.ENTITY, user).as_dict()
        report["user_id"] = user
        report["streaming_ttl_seconds"] = self.streaming_ttl_seconds
        report["batch_ttl_seconds"] = self.batch_ttl_seconds
        report["memory_bytes"] = self.client.memory_usage(report["key"]) if report["exists"] else None
        return report

    def sample(self) -> dict[str, Any]:
        """One chart point; first a few probe reads so the latency series move by themselves."""
        user = self.watched
        if user is not None and user in self._known:
            for _ in range(5):
                self._probe_read(user)
            if self.population:
                self.batch_read(min(PROBE_BATCH, len(self.population)), record=False)
        live, _ = self.live_users()
        fresh, _ = self.fresh_users()
        memory = self.client.memory_usage(self.key_of(user)) if user is not None else None
        written = self.online.stats.get("written", 0) + _online(self.pusher).stats.get("written", 0)
        return self.metrics.add_point(int(written), fresh, live, memory)

    def _probe_read(self, user: str) -> None:
        refs = [f"{FEATURES[f]}:{f}" for f in DEFAULT_READ]
        started = time.perf_counter()
        with self._serving():
            self.reader.get_online_features(features=refs, entity_rows=[{"user_id": user}])
        self.metrics.record("single", (time.perf_counter() - started) * 1000)

    def reset(self, idle_timeout: float = 30.0) -> dict[str, Any]:
        """Delete the demo's keys only: pause the worker, wait out an in-flight tick, then an
        escaped SCAN of ``<prefix>user:*`` and UNLINK of hashes holding one of the demo views'
        timestamp fields. The worker goes back to its previous state afterwards."""
        prefix = check_prefix(self.prefix)
        with self._lock:
            was_running = self.worker.running
            self.worker.pause()
            try:
                if not self.worker.wait_for_idle(idle_timeout):
                    raise TimeoutError(f"streaming worker still busy after {idle_timeout} s; nothing deleted")
                pattern = layout.scan_pattern(prefix, layout.escape_id(demo_repo.ENTITY))
                views = [self.store.get_feature_view(name) for name in VIEWS]
                deleted = self.online.remove_project_keys(self.store.config, views)
                demo_repo.clear_offline_rows(self.store)
                self._set_population([])
                self.counters["resets"] += 1
            finally:
                if was_running:
                    self.worker.resume()
        return {"deleted": deleted, "pattern": pattern, "worker_running": was_running}


VIEWS = (demo_repo.BATCH_VIEW, demo_repo.STREAMING_VIEW)


def _twin(store: FeatureStore) -> FeatureStore:
    """Another FeatureStore on the same repo and the same config object (settings changed at
    run time apply to both), with its own registry copy and its own Redis clients. The copy is
    loaded now, before any bulk load can be rewriting the registry file."""
    twin = FeatureStore(repo_path=str(store.repo_path), config=store.config)
    twin.list_feature_views()
    return twin


def _online(store: FeatureStore) -> Any:
    return store._get_provider().online_store  # type: ignore[attr-defined]


def _check_seconds(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(field, f"must be a number of seconds, got {quote(value)}")
    try:
        seconds = float(value)
    except ValueError:
        raise InputError(field, f"must be a number of seconds, got {quote(value)}") from None
    if not 0.05 <= seconds <= MAX_TICK_SECONDS:  # NaN fails this too
        raise InputError(field, f"must be between 0.05 and {MAX_TICK_SECONDS:g} seconds, got {quote(value)}")
    return seconds


def _micros(raw: Any, lay: Any = None) -> int | None:
    """The event time (µs) of a ``_ts`` field, or of a view's field with value_layout: packed."""
    try:
        if raw is not None and lay is not None and lay.packed:
            unpacked = codec.unpack_values(raw, lay.head, len(lay.fields))
            return None if unpacked is None else unpacked[0]
        return int(raw) if raw is not None else None
    except (ValueError, IndexError):
        return None


def _iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age_ms(micros: int | None, now_us: int) -> int | None:
    return None if micros is None else max(0, (now_us - micros) // 1000)


def _statuses(response: Any) -> dict[str, list[str]]:
    proto = response.proto
    return {
        name: [FieldStatus.Name(s) for s in result.statuses]
        for name, result in zip(proto.metadata.feature_names.val, proto.results)
    }


def _plain(value: Any) -> Any:
    """A JSON-friendly value (numpy scalars and bytes become Python/text)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
