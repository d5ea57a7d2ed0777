"""The seed's walkthrough through Feast: bulk load, streaming push, mixed read, batch scoring,
and the redis-cli checks, all on the sample repo.

    python examples/walkthrough.py    # starts a local Redis unless $REDIS_CONNECTION_STRING is set
                                      # (measured 216 s on a busy 2-core machine)
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from _local import REPO, feast, generate_data, redis_server
from feast import FeatureStore

from feast_redis_hexpire.inspect import inspect_entity
from feast_redis_hexpire.online_store import hexpire_store
from feast_redis_hexpire.synth import STREAMING_FEATURES, streaming_frame, user_id

USERS = 200
TIME = "%Y-%m-%dT%H:%M:%S"
MIXED = [
    "user_batch_features:risk_segment",
    "user_batch_features:tx_count_7d",
    "user_batch_features:avg_amount_30d",
    "user_streaming_features:tx_count_5m",
    "user_streaming_features:failed_logins_15m",
]


def step(title: str) -> None:
    print(f"\n=== {title} ===")


def main() -> None:
    with redis_server():
        step(f"1. Bulk load: {USERS} users into the batch view, key-level TTL")
        generate_data(USERS)
        feast("apply")
        now = datetime.now(UTC)
        feast(
            "materialize", "--views", "user_batch_features",
            (now - timedelta(days=1)).strftime(TIME), now.strftime(TIME),
        )  # fmt: skip
        store = FeatureStore(repo_path=str(REPO))
        redis = hexpire_store(store).client(store.config)
        print(f"fs:user:u0001 TTL = {redis.ttl('fs:user:u0001')} s (key-level, from key_ttl_seconds)")

        step("2. Streaming push: five real-time features with a per-field TTL")
        rng = random.Random(7)
        store.push("user_events_push", streaming_frame([user_id(i) for i in range(1, 51)], rng))
        ttls = redis.httl("fs:user:u0001", *STREAMING_FEATURES)
        print(f"HTTL of the streaming fields of fs:user:u0001: {ttls}")

        step("3. Inference read: a mixed batch/streaming subset for one user")
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            features = store.get_online_features(features=MIXED, entity_rows=[{"user_id": "u0001"}])
            timings.append((time.perf_counter() - started) * 1000)
        for name, values in features.to_dict().items():
            print(f"  {name:<20} {values[0]}")
        print(f"  p50 {statistics.median(timings):.2f} ms over 20 reads (one HMGET each)")

        step("4. Batch scoring: 100 users in one round trip")
        rows = [{"user_id": user_id(i)} for i in range(1, 101)]
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            batch = store.get_online_features(features=MIXED, entity_rows=rows).to_dict()
            timings.append((time.perf_counter() - started) * 1000)
        fresh = sum(v is not None for v in batch["tx_count_5m"])
        print(f"  100 users, p50 {statistics.median(timings):.2f} ms over 20 reads")
        print(
            f"  {fresh} of 100 have streaming features (50 were pushed), all have batch features:"
            f" {all(v is not None for v in batch['risk_segment'])}"
        )

        step("5. The seed's redis-cli checks, from Python")
        users = sum(1 for _ in redis.scan_iter(match="fs:user:*", count=1000))
        print(f"redis-cli --scan --pattern 'fs:user:*' | wc -l   -> {users}")
        fields = len(redis.hgetall("fs:user:u0001"))
        print(f"redis-cli HGETALL fs:user:u0001                  -> {fields} fields")
        print(f"redis-cli TTL fs:user:u0001                      -> {redis.ttl('fs:user:u0001')}")
        httl = redis.httl("fs:user:u0001", *STREAMING_FEATURES)
        print(f"redis-cli HTTL fs:user:u0001 FIELDS 5 ...        -> {httl}")
        hmget = redis.hmget("fs:user:u0001", "risk_segment", "tx_count_7d", "avg_amount_30d", "tx_count_5m")
        print(f"redis-cli HMGET fs:user:u0001 risk_segment ...   -> {hmget}")
        print()
        print(inspect_entity(store, "user", "u0001").render())


if __name__ == "__main__":
    main()
