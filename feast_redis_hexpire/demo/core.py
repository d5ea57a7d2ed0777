"""The demo's state: one FeatureStore, one streaming worker, the known population, counters.

Every operation here is the real Feast path: bulk loads materialize, the worker pushes, reads go
through ``get_online_features``. Only inspection, the per-field TTLs shown beside a read and the
user count talk to Redis directly, and none of them scans the keyspace (see :meth:`Demo.state`).
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from feast import FeatureStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

from .. import layout
from ..inspect import inspect_entity
from ..synth import BATCH_FEATURES, STREAMING_FEATURES
from . import repo as demo_repo
from .builder import bulk_load, check_count
from .errors import InputError, NotFoundError
from .worker import StreamingWorker

__all__ = ["Demo", "FEATURES", "EXACT_COUNT_LIMIT"]

FEATURES = {f: demo_repo.BATCH_VIEW for f in BATCH_FEATURES} | {
    f: demo_repo.STREAMING_VIEW for f in STREAMING_FEATURES
}
DEFAULT_READ = ("risk_segment", "tx_count_7d", "avg_amount_30d", "tx_count_5m", "failed_logins_15m")
EXACT_COUNT_LIMIT = 20_000  # above this, /state estimates the live count from a sample
SAMPLE_SIZE = 1_000
MAX_BATCH_READ = 1_000
_USER_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
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
        self.store = store
        self.population: list[str] = demo_repo.read_population(store)
        self._known = set(self.population)
        self._keys: list[bytes] = self._key_list(self.population)
        self._lock = threading.RLock()  # bulk load and reset change the population
        self.counters: Counter[str] = Counter()
        self.last_read_ms = 0.0
        self.batch_ttl_seconds: int | None = store.config.online_store.key_ttl_seconds
        self.worker = StreamingWorker(store, lambda: self.population, users_per_tick, interval, worker_seed)
        self.rng = random.Random(0)

    @classmethod
    def create(cls, repo: Path, **worker: Any) -> Demo:
        return cls(demo_repo.apply(repo), **worker)

    # ---- helpers ----

    @property
    def online(self) -> Any:
        return self.store._get_provider().online_store  # type: ignore[attr-defined]

    @property
    def client(self) -> Any:
        return self.online.client(self.store.config)

    @property
    def prefix(self) -> str:
        return self.store.config.online_store.prefix_for(self.store.config.project)

    @property
    def streaming_ttl_seconds(self) -> int:
        return int(self.store.config.online_store.stream_field_ttl_seconds)

    def _key_list(self, users: Sequence[str]) -> list[bytes]:
        keys = demo_repo.key_builder(self.store)
        return [keys.key(demo_repo.user_entity_key(u)) for u in users]

    def _set_population(self, users: list[str]) -> None:
        keys = self._key_list(users)
        self.population, self._known, self._keys = users, set(users), keys

    def key_of(self, user: str) -> bytes:
        return demo_repo.key_builder(self.store).key(demo_repo.user_entity_key(user))

    def check_user(self, value: Any, field: str = "user_id") -> str:
        user = str(value if value is not None else "").strip()
        if not user:
            raise InputError(field, "is required")
        if not _USER_ID.match(user):
            raise InputError(field, f"{user[:80]!r} is not a user id (letters, digits, _ . -)")
        if user not in self._known:
            raise NotFoundError(field, f"unknown user {user!r}: not in the loaded population")
        return user

    @staticmethod
    def check_features(value: Any, field: str = "features") -> list[str]:
        if value is None:
            return list(DEFAULT_READ)
        if isinstance(value, str):
            value = [v for v in re.split(r"[,\s]+", value) if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(field, "must be a list of feature names")
        value = [v.strip() for v in value if v.strip()]
        if not value:
            raise InputError(field, "is empty; name at least one feature")
        names = [v.split(":", 1)[1] if ":" in v else v for v in value]
        unknown = [v for v in names if v not in FEATURES]
        if unknown:
            raise InputError(field, f"unknown feature(s) {unknown}; known: {sorted(FEATURES)}")
        return list(dict.fromkeys(names))

    # ---- state ----

    def live_users(self) -> tuple[int, bool]:
        """Users of the population whose hash exists: multi-key EXISTS in chunks of 1000
        (one pipelined round trip, O(population), no SCAN); above EXACT_COUNT_LIMIT an estimate
        from a random sample of SAMPLE_SIZE keys. Returns (count, exact)."""
        keys = self._keys
        if not keys:
            return 0, True
        exact = len(keys) <= EXACT_COUNT_LIMIT
        probe = keys if exact else self.rng.sample(keys, SAMPLE_SIZE)
        with self.client.pipeline(transaction=False) as pipe:
            for i in range(0, len(probe), 1000):
                pipe.exists(*probe[i : i + 1000])
            live = sum(pipe.execute())
        return (live, True) if exact else (round(live * len(keys) / len(probe)), False)

    def state(self) -> dict[str, Any]:
        live, exact = self.live_users()
        return {
            "users": live,
            "users_exact": exact,
            "population": len(self.population),
            "key_prefix": self.prefix,
            "batch_ttl_seconds": self.batch_ttl_seconds,
            "streaming_ttl_seconds": self.streaming_ttl_seconds,
            "store_stats": dict(self.online.stats),
            "counters": dict(self.counters),
            "last_read_ms": self.last_read_ms,
            "worker": self.worker.status(),
            "features": {"batch": list(BATCH_FEATURES), "streaming": list(STREAMING_FEATURES)},
            "sample_users": self.population[:10],
        }

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
        if running is None:
            target = not self.worker.running
        elif isinstance(running, bool):
            target = running
        elif str(running).lower() in ("true", "1", "on", "yes"):
            target = True
        elif str(running).lower() in ("false", "0", "off", "no"):
            target = False
        else:
            raise InputError("running", f"must be true or false, got {running!r}")
        (self.worker.resume if target else self.worker.pause)()
        return self.worker.status()

    def _ttls(self, key: bytes, fields: Sequence[str]) -> tuple[int, list[int]]:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.pttl(key)
            pipe.hpttl(key, *fields)
            key_ttl, ttls = pipe.execute()
        return int(key_ttl), [int(t) for t in (ttls or [-2] * len(fields))]

    def read(self, user_id: Any, features: Any = None) -> dict[str, Any]:
        user = self.check_user(user_id)
        names = self.check_features(features)
        refs = [f"{FEATURES[f]}:{f}" for f in names]
        started = time.perf_counter()
        response = self.store.get_online_features(features=refs, entity_rows=[{"user_id": user}])
        latency_ms = (time.perf_counter() - started) * 1000
        values = response.to_dict()
        statuses = _statuses(response)
        key_ttl, ttls = self._ttls(self.key_of(user), names)
        self.counters["reads"] += 1
        self.last_read_ms = round(latency_ms, 3)
        return {
            "user_id": user,
            "key": self.key_of(user).decode(),
            "latency_ms": round(latency_ms, 3),
            "key_ttl_ms": key_ttl,
            "features": [
                {
                    "name": f,
                    "view": FEATURES[f],
                    "value": _plain(values[f][0]),
                    "status": statuses[f][0],
                    "field_ttl_ms": ttl,
                }
                for f, ttl in zip(names, ttls)
            ],
        }

    def batch_read(self, count: Any, features: Any = None) -> dict[str, Any]:
        n = check_count(count, "count", MAX_BATCH_READ)
        names = self.check_features(features)
        users = self.population[:n]
        if len(users) < n:
            raise InputError("count", f"only {len(self.population)} user(s) are loaded, asked for {n}")
        refs = [f"{FEATURES[f]}:{f}" for f in names]
        started = time.perf_counter()
        response = self.store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users])
        total_ms = (time.perf_counter() - started) * 1000
        statuses = _statuses(response)
        self.counters["batch_reads"] += 1
        per_user = [
            {
                "user_id": u,
                "present": sum(statuses[f][i] == "PRESENT" for f in names),
                "requested": len(names),
            }
            for i, u in enumerate(users)
        ]
        return {
            "count": n,
            "features": names,
            "total_ms": round(total_ms, 3),
            "per_user_ms": round(total_ms / n, 4),
            "users": per_user,
        }

    def inspect(self, user_id: Any) -> dict[str, Any]:
        user = self.check_user(user_id)
        self.counters["inspects"] += 1
        report = inspect_entity(self.store, demo_repo.ENTITY, user).as_dict()
        report["user_id"] = user
        report["streaming_ttl_seconds"] = self.streaming_ttl_seconds
        report["batch_ttl_seconds"] = self.batch_ttl_seconds
        return report

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
                names = (demo_repo.BATCH_VIEW, demo_repo.STREAMING_VIEW)
                views = [self.store.get_feature_view(name) for name in names]
                deleted = self.online.remove_project_keys(self.store.config, views)
                demo_repo.clear_offline_rows(self.store)
                self._set_population([])
                self.counters["resets"] += 1
            finally:
                if was_running:
                    self.worker.resume()
        return {"deleted": deleted, "pattern": pattern, "worker_running": was_running}


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
