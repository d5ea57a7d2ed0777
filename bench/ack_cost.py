"""Cost of ack_replicas: materialize and push with ack_replicas 0 and 1, side by side in one run,
on a local master with one replica (loopback).

    python bench/ack_cost.py                          # Redis 8.2, 2 runs of 3 rounds
    python bench/ack_cost.py --server valkey --rows 5000 --runs 1
    python bench/ack_cost.py --write RELIABILITY.md   # also replace the section between the markers

Each run starts a fresh master and replica and two copies of the sample repo on that master, one
with ``ack_replicas: 0`` and one with ``ack_replicas: 1`` (``ack_timeout_seconds: 1``). In each
round, the two settings alternate (so both see the same machine load):

- materialize: Feast's ``materialize`` of ``--rows`` users (parquet rewritten with fresh event
  times before each round, so no row is skipped as not newer); rows/s of the whole call;
- write batches: ``online_write_batch`` of the same number of rows (what materialize hands the
  store), each batch of ``write_batch_size`` rows timed through the progress callback: p50/p99 ms;
- push: ``--pushes`` one-row ``FeatureStore.push`` calls: rows/s, p50/p99 ms per call.

The machine is named and its load average printed at the start and end of each run: on a shared
machine the numbers move with the load, the ratios less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from conftest import apply_repo, online_store_of, user_key, write_data, write_repo  # noqa: E402
from feast.protos.feast.types.Value_pb2 import Value  # noqa: E402
from report import machine_info  # noqa: E402
from timing import percentile  # noqa: E402

from feast_redis_hexpire.local_redis import LocalRedis  # noqa: E402

START, END = "<!-- bench/ack_cost.py: start -->", "<!-- bench/ack_cost.py: end -->"
SETTINGS = (0, 1)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _push_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        [{
            "user_id": f"p{n:05d}", "last_login_ts": n, "last_device_id": f"d{n}", "tx_count_5m": n,
            "failed_logins_15m": 0, "session_country": "US",
            "event_timestamp": pd.Timestamp(datetime.now(UTC)),
        }]
    )  # fmt: skip


def run(kind: str, rows: int, pushes: int, rounds: int) -> dict[str, Any]:
    """One run: fresh servers, every round both settings; returns the numbers per setting."""
    out: dict[str, Any] = {"load_start": _load()}
    with LocalRedis(kind) as master, LocalRedis(kind) as replica:
        replica.client().replicaof("127.0.0.1", master.port)
        deadline = time.monotonic() + 60
        while master.client().info("replication").get("slave0", {}).get("state") != "online":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not come online")
            time.sleep(0.05)
        work = Path(tempfile.mkdtemp(prefix="ack-cost-"))
        stores, repos = {}, {}
        for n in SETTINGS:
            repos[n] = write_repo(
                work / f"r{n}", master.connection_string, ack_replicas=n, ack_timeout_seconds=1
            )
            write_data(repos[n], count=rows)
            stores[n] = apply_repo(repos[n])
        size = stores[0].config.online_store.write_batch_size
        found: dict[int, dict[str, list[float]]] = {
            n: {"materialize": [], "batch_ms": [], "push_ms": [], "push_s": []} for n in SETTINGS
        }
        for round_no in range(rounds):
            for n in SETTINGS:  # interleaved
                store, numbers = stores[n], found[n]
                event = datetime.now(UTC) - timedelta(minutes=5)
                write_data(repos[n], count=rows, seed=round_no + 1, event_time=event)
                began = time.perf_counter()
                store.materialize(
                    start_date=event - timedelta(seconds=1), end_date=event + timedelta(seconds=1)
                )
                numbers["materialize"].append(rows / (time.perf_counter() - began))

                online = online_store_of(store)
                view = store.get_feature_view("user_batch_features")
                ts = datetime.now(UTC)
                data = [
                    (user_key(f"b{i}"),
                     {"risk_segment": Value(string_val="x"), "tx_count_7d": Value(int64_val=i)}, ts, None)
                    for i in range(rows)
                ]  # fmt: skip
                marks = [time.perf_counter()]

                def mark(done: int, marks: list[float] = marks) -> None:  # after each batch
                    marks.append(time.perf_counter())

                online.online_write_batch(store.config, view, data, mark)
                numbers["batch_ms"] += [(b - a) * 1000 for a, b in zip(marks, marks[1:])]

                began = time.perf_counter()
                for j in range(pushes):
                    one = time.perf_counter()
                    store.push("user_events_push", _push_frame(round_no * pushes + j))
                    numbers["push_ms"].append((time.perf_counter() - one) * 1000)
                numbers["push_s"].append(pushes / (time.perf_counter() - began))
        for n in SETTINGS:
            numbers = found[n]
            out[n] = {
                "materialize rows/s": statistics.median(numbers["materialize"]),
                "batch p50": percentile(numbers["batch_ms"], 50),
                "batch p99": percentile(numbers["batch_ms"], 99),
                "push rows/s": statistics.median(numbers["push_s"]),
                "push p50": percentile(numbers["push_ms"], 50),
                "push p99": percentile(numbers["push_ms"], 99),
            }
        out["batch_size"] = size
        out["server"] = master.client().info("server").get("redis_version")
    out["load_end"] = _load()
    return out


def render(kind: str, runs: list[dict[str, Any]], rows: int, pushes: int, rounds: int) -> str:
    info = machine_info()
    lines = [
        f"Measured {info['date (UTC)']} UTC on {info['CPU']}, {info['cores']} cores, {info['OS']}, "
        f"python {info['python']}, redis-py {info['redis-py']}, feast {info['feast']}; {kind} "
        f"{runs[0]['server']} master + 1 replica on loopback; `python bench/ack_cost.py --server {kind} "
        f"--rows {rows} --pushes {pushes} --rounds {rounds} --runs {len(runs)}`. Medians of {rounds} "
        f"rounds (rows/s), percentiles over every sample of the run (ms); batches of "
        f"{runs[0]['batch_size']} rows.",
        "",
        "| run (load start → end) | ack_replicas | materialize rows/s | write batch p50 / p99 ms | "
        "push rows/s | push p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for i, result in enumerate(runs, 1):
        base = result[0]
        for n in SETTINGS:
            r = result[n]

            def ratio(key: str, r: dict = r, base: dict = base, n: int = n) -> str:
                return "" if n == 0 else f" ({r[key] / base[key]:.2f}x)"

            lines.append(
                f"| {i} ({result['load_start']} → {result['load_end']}) | {n} | "
                f"{r['materialize rows/s']:,.0f}{ratio('materialize rows/s')} | "
                f"{r['batch p50']:.2f} / {r['batch p99']:.2f}{ratio('batch p99')} | "
                f"{r['push rows/s']:,.0f}{ratio('push rows/s')} | "
                f"{r['push p50']:.2f} / {r['push p99']:.2f}{ratio('push p99')} |"
            )
    return "\n".join(lines)


def replace_section(path: Path, body: str) -> None:
    """Put ``body`` between this script's markers in ``path`` (appended when they are missing)."""
    text = path.read_text() if path.exists() else ""
    new = f"{START}\n{body.rstrip()}\n{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + new + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + new + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["redis", "valkey"], default="redis")
    parser.add_argument("--rows", type=int, default=20_000, help="users materialized per round")
    parser.add_argument("--pushes", type=int, default=200, help="one-row pushes per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="runs, each with fresh servers")
    parser.add_argument("--write", type=Path, help="replace this file's bench/ack_cost.py section")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        runs.append(run(args.server, args.rows, args.pushes, args.rounds))
        print(f"run {i + 1}: load {runs[-1]['load_start']} -> {runs[-1]['load_end']}", flush=True)
    body = render(args.server, runs, args.rows, args.pushes, args.rounds)
    print(body)
    if args.write:
        replace_section(args.write, body)


if __name__ == "__main__":
    main()
