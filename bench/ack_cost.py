"""Cost of ack_replicas: online_write_batch rows/s (20,000-row writes) and 1-row write latency,
ack_replicas 0 and 1 side by side in one run, on a local Redis 8.2 master with one replica.

    python bench/ack_cost.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import apply_repo, online_store_of, user_key, write_data, write_repo  # noqa: E402
from feast.protos.feast.types.Value_pb2 import Value  # noqa: E402

from feast_redis_hexpire.local_redis import LocalRedis  # noqa: E402

ROWS, ROUNDS, SINGLES = 20_000, 3, 200


def main() -> None:
    print("load at start", os.getloadavg())
    with LocalRedis("redis") as master, LocalRedis("redis") as replica:
        replica.client().replicaof("127.0.0.1", master.port)
        while master.client().info("replication").get("slave0", {}).get("state") != "online":
            time.sleep(0.05)
        work = Path(tempfile.mkdtemp())
        stores = {}
        for n in (0, 1):
            repo = write_repo(work / f"r{n}", master.connection_string, ack_replicas=n)
            write_data(repo)
            stores[n] = apply_repo(repo)
        rates: dict[int, list[float]] = {0: [], 1: []}
        latencies: dict[int, list[float]] = {0: [], 1: []}
        base = datetime.now(UTC)
        for round_no in range(ROUNDS):
            for n in (0, 1):  # interleaved: both settings see the same machine load
                store = stores[n]
                online = online_store_of(store)
                view = store.get_feature_view("user_batch_features")
                ts = base + timedelta(seconds=round_no * 10 + n)
                values = [
                    {"risk_segment": Value(string_val="x"), "tx_count_7d": Value(int64_val=i)}
                    for i in range(ROWS)
                ]
                rows = [(user_key(f"b{i}"), values[i], ts, None) for i in range(ROWS)]
                began = time.perf_counter()
                online.online_write_batch(store.config, view, rows, None)
                rates[n].append(ROWS / (time.perf_counter() - began))
                for j in range(SINGLES):  # 1-row writes, as a push sends them
                    row = [(user_key(f"p{j}"), {"risk_segment": Value(string_val="y")}, ts, None)]
                    began = time.perf_counter()
                    online.online_write_batch(store.config, view, row, None)
                    latencies[n].append(time.perf_counter() - began)
        for n in (0, 1):
            q = statistics.quantiles(latencies[n], n=100)
            print(
                f"ack_replicas={n}: {ROWS}-row writes, rows/s per round {[round(x) for x in rates[n]]}; "
                f"1-row write p50 {q[49] * 1000:.3f} ms, p99 {q[98] * 1000:.3f} ms"
            )
    print("load at end", os.getloadavg())


if __name__ == "__main__":
    main()
