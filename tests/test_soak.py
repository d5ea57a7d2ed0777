"""Soak: concurrent materialize, push and reads on one local server for a bounded time.

Off by default; run it with::

    HEXPIRE_SOAK=1 pytest -m slow tests/test_soak.py -s

``HEXPIRE_SOAK_SECONDS`` (default 120) bounds the run, ``HEXPIRE_SOAK_KIND`` picks redis or valkey.
Loopback only. Prints throughput, p50/p99 latencies and errors, then checks the final state:
every batch field equals the last completed materialization, every pushed streaming field is
either present with a TTL (and the last pushed value) or gone after its TTL, and no key is left
without a TTL that should have one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import apply_repo, write_data, write_repo
from feast import FeatureStore

from feast_redis_hexpire.codec import encode_ts
from feast_redis_hexpire.local_redis import LocalRedis
from feast_redis_hexpire.synth import BATCH_FEATURES, STREAMING_FEATURES, batch_rows, streaming_row, user_id

SECONDS = float(os.environ.get("HEXPIRE_SOAK_SECONDS", "120"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("HEXPIRE_SOAK") != "1", reason="soak runs with HEXPIRE_SOAK=1"),
    pytest.mark.timeout(SECONDS + 600),  # the soak's own length plus setup and the final checks
]

KIND = os.environ.get("HEXPIRE_SOAK_KIND", "redis")
USERS = 2000  # materialized every cycle
PUSH_ONLY = 200  # pushed but never materialized: keys held only by field TTLs
FIELD_TTL = 20  # short, so many streaming fields expire during the run
KEY_TTL = 3600
MARGIN = 2.0  # seconds of slack around an expiry instant for the final check
# By default the readers and pushers get their own copy of the registry, made after apply, like
# serving processes with a registry snapshot: Feast's file registry is rewritten in place by every
# materialization, and readers sharing it see it half-written ("Feature view ... does not
# exist") or see the view MATERIALIZING (refused unless serve_features_while_materializing).
# HEXPIRE_SOAK_SHARED_REGISTRY=1 makes every thread share the one file, to show that.
SHARED_REGISTRY = os.environ.get("HEXPIRE_SOAK_SHARED_REGISTRY") == "1"


@dataclass
class Pushed:
    values: dict[str, Any]
    ts: datetime
    sent: float  # wall clock before the push call
    acked: float  # wall clock after it returned


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, seconds: float, rows: int) -> None:
        with self.lock:
            self.latencies[op].append(seconds)
            self.rows[op] += rows


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def materializer(repo: Path, stop: threading.Event, stats: Stats, last: dict) -> None:
    store = FeatureStore(repo_path=str(repo))
    cycle = 0
    while not stop.is_set():
        cycle += 1
        ts = datetime.now(UTC).replace(microsecond=0) + timedelta(microseconds=cycle)
        frame = batch_rows(USERS, seed=100 + cycle, event_time=ts)
        frame.to_parquet(repo / "data" / "user_batch.parquet")
        started = time.perf_counter()
        try:
            store.materialize(ts - timedelta(minutes=1), ts + timedelta(seconds=1), ["user_batch_features"])
        except Exception as e:  # counted, and the final check then allows the previous cycle
            stats.errors.append(f"materialize cycle {cycle}: {e!r}"[:300])
            continue
        stats.record("materialize", time.perf_counter() - started, USERS)
        last["frame"], last["ts"] = frame, ts
        last["ready"].set()


def pusher(repo: Path, ids: list[str], seed: int, stop: threading.Event, stats: Stats, pushed: dict) -> None:
    store = FeatureStore(repo_path=str(repo))
    rng = random.Random(seed)
    # A fifth of the ids go cold well before the end, so their fields must have expired by then.
    hot = ids[: len(ids) * 4 // 5]
    cold_until = time.time() + SECONDS - (FIELD_TTL + 2 * MARGIN + 5)
    while not stop.is_set():
        size = rng.choice((1, 1, 10, 100))
        batch = rng.sample(ids if time.time() < cold_until else hot, size)
        now = datetime.now(UTC)
        rows = [{"user_id": u, **streaming_row(rng, now)} for u in batch]
        frame = pd.DataFrame(rows)
        frame["event_timestamp"] = pd.Timestamp(now)
        sent = time.time()
        started = time.perf_counter()
        try:
            store.push("user_events_push", frame)
        except Exception as e:
            stats.errors.append(f"push: {e!r}"[:300])
            continue
        stats.record(f"push x{size}", time.perf_counter() - started, size)
        acked = time.time()
        for row in rows:  # each pusher owns its ids, so this is the last write for the user
            pushed[row["user_id"]] = Pushed({k: row[k] for k in STREAMING_FEATURES}, now, sent, acked)


def reader(repo: Path, seed: int, stop: threading.Event, ready: threading.Event, stats: Stats) -> None:
    store = FeatureStore(repo_path=str(repo))
    rng = random.Random(seed)
    features = store.get_feature_service("fraud_model")
    ready.wait()  # users exist once the first materialization is done
    while not stop.is_set():
        size = rng.choice((1, 100))
        ids = [user_id(rng.randint(1, USERS)) for _ in range(size)]
        started = time.perf_counter()
        try:
            result = store.get_online_features(features=features, entity_rows=[{"user_id": u} for u in ids])
            values = result.to_dict()
        except Exception as e:
            stats.errors.append(f"read: {e!r}"[:300])
            continue
        stats.record(f"read x{size}", time.perf_counter() - started, size)
        # A materialized user never loses its batch fields while other writes run.
        missing = [u for u, v in zip(ids, values["risk_segment"]) if v is None]
        if missing:
            stats.anomalies.append(f"{time.strftime('%X')}: batch field missing on read for {missing[:3]}")


def snapshot_repo(repo: Path, target: Path) -> Path:
    """A client's copy of an applied repo: same yaml and features, its own registry file."""
    (target / "data").mkdir(parents=True)
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(repo / name, target / name)
    shutil.copy(repo / "data" / "registry.db", target / "data" / "registry.db")
    return target


def _batch_text(row: dict, name: str) -> bytes:
    value = row[name]
    return (repr(float(value)) if name == "avg_amount_30d" else str(value)).encode()


def final_check(client: Any, last: dict, pushed: dict[str, Pushed]) -> dict[str, int]:
    counts = defaultdict(int)
    frame, ts = last["frame"], last["ts"]
    batch_ts = str(encode_ts(ts)).encode()
    for row in frame.to_dict("records"):
        key = f"fs:user:{row['user_id']}"
        stored = client.hgetall(key)
        want = {n.encode(): _batch_text(row, n) for n in BATCH_FEATURES}
        assert {k: stored.get(k) for k in want} == want, f"{key}: batch field lost or stale"
        assert stored[b"_ts:user_batch_features"] == batch_ts, key
        counts["batch keys exact"] += 1
    stream_fields = ["_ts:user_streaming_features", *STREAMING_FEATURES]
    for uid, last_push in pushed.items():
        key = f"fs:user:{uid}"
        before = time.time()
        values = client.hmget(key, stream_fields)
        ttls = client.httl(key, *stream_fields)
        after = time.time()
        if after < last_push.sent + FIELD_TTL - MARGIN:  # must still be there, with a TTL
            assert all(v is not None for v in values), f"{key}: pushed field lost before its TTL"
            assert all(0 < t <= FIELD_TTL for t in ttls), f"{key}: field TTLs {ttls}"
            assert values[1:] == [str(last_push.values[f]).encode() for f in STREAMING_FEATURES], key
            counts["streaming users present with TTL"] += 1
        elif before > last_push.acked + FIELD_TTL + MARGIN:  # must have expired on schedule
            assert values == [None] * len(values), f"{key}: field outlived its TTL"
            counts["streaming users expired on schedule"] += 1
        else:
            assert all(t != -1 for t in ttls), f"{key}: streaming field without TTL"
            counts["streaming users at their expiry instant"] += 1
    # No key without a TTL unless every one of its fields has one; no streaming field without one.
    for key in client.scan_iter(match="fs:*", count=1000):
        key_ttl = client.pttl(key)
        fields = list(client.hkeys(key))
        if key_ttl == -2 or not fields:  # its last fields expired while we looked
            counts["keys expired during the check"] += 1
            continue
        if key_ttl > 0:
            counts["keys with key TTL"] += 1
            assert key_ttl <= KEY_TTL * 1000
        else:
            # -2: the field expired since HKEYS; -1 would be a field without any TTL.
            assert -1 not in client.httl(key, *fields), f"{key}: no TTL at all"
            counts["push-only keys held by field TTLs"] += 1
        present = [f for f in stream_fields if client.hexists(key, f)]
        if present:
            assert -1 not in client.httl(key, *present), f"{key}: streaming field without TTL"
    return dict(counts)


def test_soak(tmp_path):
    with LocalRedis(KIND) as server:
        repo = write_repo(tmp_path / "repo", server.connection_string,
                          key_ttl_seconds=KEY_TTL, stream_field_ttl_seconds=FIELD_TTL)  # fmt: skip
        write_data(repo, count=USERS)
        apply_repo(repo)
        stop, stats, ready = threading.Event(), Stats(), threading.Event()
        last: dict[str, Any] = {"ready": ready}
        pushed: dict[str, Pushed] = {}
        ids = [user_id(i) for i in range(1, USERS + 1)] + [f"p{i:04d}" for i in range(PUSH_ONLY)]
        random.Random(0).shuffle(ids)
        halves = [ids[: len(ids) // 2], ids[len(ids) // 2 :]]
        clients = [repo if SHARED_REGISTRY else snapshot_repo(repo, tmp_path / f"c{i}") for i in range(4)]
        threads = [threading.Thread(target=materializer, args=(repo, stop, stats, last))]
        threads += [threading.Thread(target=pusher, args=(clients[i], halves[i], i, stop, stats, pushed))
                    for i in range(2)]  # fmt: skip
        threads += [threading.Thread(target=reader, args=(clients[2 + i], 10 + i, stop, ready, stats))
                    for i in range(2)]  # fmt: skip
        started = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        info = server.client().info()
        counts = final_check(server.client(), last, pushed)

    report = {
        "server": f"{KIND} {info.get('valkey_version', info.get('redis_version'))}",
        "seconds": round(elapsed, 1),
        "shared_registry": SHARED_REGISTRY,
        "ops": {
            op: {
                "calls": len(lat),
                "rows_per_s": round(stats.rows[op] / elapsed, 1),
                "p50_ms": round(_pct(lat, 0.50), 2),
                "p99_ms": round(_pct(lat, 0.99), 2),
            }
            for op, lat in sorted(stats.latencies.items())
        },
        "errors": len(stats.errors),
        "error_samples": sorted({e[:160] for e in stats.errors})[:5],
        "anomalies": len(stats.anomalies),
        "anomaly_samples": stats.anomalies[:5],
        "final_check": counts,
    }
    print("\nSOAK " + json.dumps(report, indent=2))
    if os.environ.get("HEXPIRE_SOAK_REPORT"):
        Path(os.environ["HEXPIRE_SOAK_REPORT"]).write_text(json.dumps(report, indent=2))
    assert stats.errors == [] and stats.anomalies == []
    assert report["ops"]["materialize"]["calls"] >= 1
