"""Memory per entity, both views of the sample repo: built-in store, value_layout fields and packed.

    python bench/memory.py                  # Redis 8.2 and Valkey 9.1, 20,000 users, two runs
    python bench/memory.py --write          # and put the result in BENCHMARKS.md (marked section)
    python bench/memory.py --users 2000 --runs 1 --server redis

Each run starts one server per kind and three copies of the sample repo under different projects:
Feast's built-in redis store, the plugin with ``value_layout: fields`` (the default) and with
``value_layout: packed``. Per store, on a FLUSHALLed server: ``INFO memory used_memory`` after
FLUSHALL, then after ``online_write_batch`` of every user's batch row (the rows materialize hands
over), then after every user's streaming row (the rows push hands over); the differences divided
by the number of users, median of ``--rounds`` rounds, the stores alternating within a round
(as bench/run.py's memory phase does). ``OBJECT ENCODING`` of one entity's hash is shown too.

The same run also measures what the packed layout costs elsewhere, for fields and packed side by
side: server CPU per streaming row (``INFO cpu`` delta over ``online_write_batch`` of every user's
row) for complete rows and for partial rows (one feature of five, which packed merges in Lua),
and get_online_features p50 / p99 of the fraud_model features (3 batch + 2 streaming) for 1 and
100 entities (blocks alternating between the stores, bench/timing.py).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine_info, replace_section, server_info  # noqa: E402
from timing import interleaved, percentile, server_cpu  # noqa: E402
from workload import (  # noqa: E402
    BUILTIN_STORE,
    PLUGIN_STORE,
    Bench,
    batch_proto_rows,
    feature_refs,
    make_bench,
    now_utc,
    streaming_proto_rows,
)

from feast_redis_hexpire.local_redis import LocalRedis  # noqa: E402
from feast_redis_hexpire.synth import user_id  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STORES = {
    "builtin": ("built-in `type: redis`", BUILTIN_STORE),
    "fields": ("plugin, `value_layout: fields` (default)", PLUGIN_STORE),
    "packed": ("plugin, `value_layout: packed`", {**PLUGIN_STORE, "value_layout": "packed"}),
}
# issue 9's targets for value_layout: packed, memory per entity (both views) vs built-in.
TARGETS = {"redis": 1.0, "valkey": 1.3}


def used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def flush(r: Any) -> int:
    r.flushall(asynchronous=False)
    gc.collect()
    time.sleep(0.2)
    return used_memory(r)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(r: Any, benches: dict[str, Bench], users: int, rounds: int) -> dict[str, dict[str, Any]]:
    rows = {label: batch_proto_rows(b) for label, b in benches.items()}
    samples: dict[str, dict[str, list[float]]] = {k: {"batch": [], "both": []} for k in benches}
    encodings: dict[str, str] = {}
    labels = list(benches)
    for n in range(rounds):
        for label in labels if n % 2 == 0 else labels[::-1]:
            bench = benches[label]
            stream = streaming_proto_rows(bench, users, now_utc())
            base = flush(r)
            bench.write(bench.batch_view, rows[label])
            assert r.dbsize() == users, f"{label}: {r.dbsize()} keys after the batch write, not {users}"
            samples[label]["batch"].append((used_memory(r) - base) / users)
            bench.write(bench.stream_view, stream)
            assert r.dbsize() == users, f"{label}: {r.dbsize()} keys after the streaming write, not {users}"
            samples[label]["both"].append((used_memory(r) - base) / users)
            key = r.randomkey()
            encodings[label] = f"{r.object('encoding', key).decode()}, {r.hlen(key)} fields"
    return {
        label: {kind: statistics.median(v) for kind, v in s.items()} | {"encoding": encodings[label]}
        for label, s in samples.items()
    }


def costs(r: Any, benches: dict[str, Bench], users: int, reads: int) -> dict[str, dict[str, float]]:
    """Server CPU per streaming row (complete, partial) and read latency, fields vs packed."""
    out: dict[str, dict[str, float]] = {}
    labels = ["fields", "packed"]
    for label in labels:
        bench = benches[label]
        flush(r)
        bench.write(bench.batch_view, batch_proto_rows(bench))
        full = streaming_proto_rows(bench, users, now_utc())
        before = server_cpu(r)
        bench.write(bench.stream_view, full)
        complete = (server_cpu(r) - before) * 1e6 / users
        later = now_utc() + timedelta(seconds=1)
        partial = [(k, {"tx_count_5m": v["tx_count_5m"]}, later, c) for k, v, _, c in full]
        before = server_cpu(r)
        bench.write(bench.stream_view, partial)
        out[label] = {"stream_row_us": complete, "partial_row_us": (server_cpu(r) - before) * 1e6 / users}
    refs = feature_refs()
    for n in (1, 100):
        rows = [{"user_id": user_id(i)} for i in range(1, n + 1)]
        calls = {
            label: (
                lambda b=benches[label], rows=rows: b.store.get_online_features(
                    features=refs, entity_rows=rows
                )
            )
            for label in labels
        }
        samples, _ = interleaved(calls, reads, warmup=20)
        for label in labels:
            out[label][f"read{n}_p50"] = percentile(samples[label], 50)
            out[label][f"read{n}_p99"] = percentile(samples[label], 99)
    return out


def run_kind(kind: str, users: int, rounds: int, reads: int) -> dict[str, Any]:
    with LocalRedis(kind) as server, tempfile.TemporaryDirectory() as tmp:
        r = server.client()
        conn = server.connection_string
        start = now_utc()
        benches = {
            label: make_bench(label, Path(tmp), f"m{label}", conn, store, users, start)
            for label, (_, store) in STORES.items()
        }
        load_start = load()
        memory = measure(r, benches, users, rounds)
        cost = costs(r, benches, users, reads) if reads else {}
        return {"server": server_info(r), "memory": memory, "costs": cost, "load": (load_start, load())}


def render(kind: str, res: dict[str, Any], users: int, run: int) -> str:
    mem = res["memory"]
    base = mem["builtin"]
    lines = [
        f"#### run {run}: {res['server']} ({users:,} users; load average {res['load'][0]} at start, "
        f"{res['load'][1]} at end)",
        "",
        "| store | batch view only (B/entity) | vs built-in | both views (B/entity) | vs built-in "
        "| one entity's hash |",
        "|---|---|---|---|---|---|",
    ]
    for label, (name, _) in STORES.items():
        m = mem[label]
        lines.append(
            f"| {name} | {m['batch']:.0f} | {m['batch'] / base['batch']:.2f}x | {m['both']:.0f} | "
            f"{m['both'] / base['both']:.2f}x | {m['encoding']} |"
        )
    ratio = mem["packed"]["both"] / base["both"]
    verdict = "met" if ratio <= TARGETS[kind] else f"missed by {ratio / TARGETS[kind] - 1:.0%}"
    lines += [
        "",
        f"Target for `value_layout: packed`, both views, vs built-in: <= {TARGETS[kind]:.1f}x; "
        f"measured {ratio:.2f}x ({verdict}). `fields` vs `packed`: "
        f"{mem['fields']['both'] / mem['packed']['both']:.2f}x.",
        "",
    ]
    cost = res["costs"]
    if cost:
        f, p = cost["fields"], cost["packed"]
        lines += [
            "| cost | `fields` | `packed` | packed vs fields |",
            "|---|---|---|---|",
        ]
        for key, name in (
            ("stream_row_us", "server CPU per streaming row, all 5 features (µs)"),
            ("partial_row_us", "server CPU per streaming row, 1 of 5 features (µs; packed merges)"),
            ("read1_p50", "get_online_features p50, 1 entity (ms)"),
            ("read1_p99", "get_online_features p99, 1 entity (ms)"),
            ("read100_p50", "get_online_features p50, 100 entities (ms)"),
            ("read100_p99", "get_online_features p99, 100 entities (ms)"),
        ):
            lines.append(f"| {name} | {f[key]:.3f} | {p[key]:.3f} | {p[key] / f[key]:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--reads", type=int, default=1000, help="reads per store and size; 0 skips the costs")
    parser.add_argument("--server", choices=["redis", "valkey", "both"], default="both")
    parser.add_argument("--write", action="store_true", help="put the result in BENCHMARKS.md")
    args = parser.parse_args()
    kinds = ["redis", "valkey"] if args.server == "both" else [args.server]
    info = machine_info()
    shown = " ".join(a for a in sys.argv[1:] if a != "--write")
    parts = [
        "### Memory per entity by value layout (issue 9)",
        "",
        f"`python bench/memory.py {shown}`".replace(" `", "`") + f" on {info['CPU']}, {info['cores']} "
        f"cores, {info['date (UTC)']} UTC. Sample repo (6 batch + 5 streaming features), "
        f"`key_ttl_seconds: 86400`, `stream_field_ttl_seconds: 3600`; `INFO memory used_memory` "
        f"after the writes minus after FLUSHALL, per user, median of {args.rounds} rounds, stores "
        f"alternating. Then, on the same servers, what packed costs elsewhere ({args.reads} reads "
        f"per store and size).",
        "",
    ]
    for run in range(1, args.runs + 1):
        for kind in kinds:
            text = render(kind, run_kind(kind, args.users, args.rounds, args.reads), args.users, run)
            print(text, flush=True)
            parts.append(text)
    if args.write:
        replace_section(ROOT / "BENCHMARKS.md", "bench/memory.py", "\n".join(parts))
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
