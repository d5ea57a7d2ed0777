"""Server CPU per written row, and how long a PING waits during a write: plugin vs built-in.

    python bench/write_cpu.py                       # Redis 8.2 and Valkey 9.1, 20,000 rows
    python bench/write_cpu.py --rows 5000 --server redis

One run starts one server per kind and, as in bench/run.py, two copies of the sample repo: the
plugin (``hx``) and Feast's built-in redis store (``builtin``). For each store, in the same run:

- server CPU per row: ``INFO cpu`` ``used_cpu_user + used_cpu_sys`` before and after
  ``online_write_batch`` of N batch rows (the rows materialize hands over) and then N streaming
  rows (the rows push hands over), on an emptied server, then the same streaming rows one second
  later (rows that update stored ones), median of ``--rounds`` rounds, the
  stores alternating within each round;
- a PING sent during a 2000-row streaming write: a separate process (so the writer's GIL does
  not delay it) sends PINGs back to back on its own connection for the whole phase; the pings
  sent while one of the stores was writing are its samples (``--writes`` writes each).

The plugin runs with ``write_rows_per_call`` 1 (one EVALSHA per row: the write path before the
rows were batched), and with each value of ``--per-call``; with ``--layouts fields,packed`` (the
default) also in ``value_layout: packed`` at each value of ``--per-call``, in the same alternation.

``--cluster``: server CPU only, summed over the masters of a 3-master cluster, for the built-in
store and the plugin with the last ``--per-call`` value: rows per hash slot in each call
(``cluster_write_calls: slot``) and rows per master (``node``, the default), and with a hash-tag
key prefix (every key in one slot); 1 row per call for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine_info, server_info  # noqa: E402
from timing import percentile  # noqa: E402
from workload import (  # noqa: E402
    BUILTIN_STORE,
    PLUGIN_STORE,
    Bench,
    batch_proto_rows,
    make_bench,
    now_utc,
    streaming_proto_rows,
)

from feast_redis_hexpire.local_redis import LocalRedis  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PINGER = """
import json, sys, time, redis
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
r = redis.Redis(host=host, port=port)
r.ping()
out, end = [], time.time() + seconds
while time.time() < end:
    t0 = time.time(); p0 = time.perf_counter()
    r.ping()
    out.append((t0, (time.perf_counter() - p0) * 1000))
print(json.dumps(out))
"""


def server_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_per_row(r: Any, bench: Bench, view: Any, rows: list) -> float:
    """Server CPU microseconds per row of one online_write_batch of ``rows``."""
    before = server_cpu(r)
    bench.write(view, rows)
    return (server_cpu(r) - before) * 1e6 / len(rows)


def measure_cpu(r: Any, benches: dict[str, Bench], rows: int, rounds: int) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {
        k: {"batch": [], "stream": [], "update": []} for k in benches
    }
    labels = list(benches)
    for n in range(rounds):
        for label in labels if n % 2 == 0 else reversed(labels):
            bench = benches[label]
            r.flushall()
            batch = batch_proto_rows(bench)[:rows]
            samples[label]["batch"].append(cpu_per_row(r, bench, bench.batch_view, batch))
            stream = streaming_proto_rows(bench, rows, now_utc() + timedelta(seconds=n))
            samples[label]["stream"].append(cpu_per_row(r, bench, bench.stream_view, stream))
            # The same entities again, one second later: rows that update a stored streaming row.
            update = [(k, v, ts + timedelta(seconds=1), c) for k, v, ts, c in stream]
            samples[label]["update"].append(cpu_per_row(r, bench, bench.stream_view, update))
    return {k: {kind: statistics.median(v) for kind, v in s.items()} for k, s in samples.items()}


def measure_ping(server: LocalRedis, benches: dict[str, Bench], writes: int) -> dict[str, dict[str, float]]:
    """PING latency (ms) of pings sent while each store wrote 2000 streaming rows."""
    rows = {label: streaming_proto_rows(b, 2000, now_utc()) for label, b in benches.items()}
    seconds = 5 + writes * len(benches) * 1.5
    pinger = subprocess.Popen(
        [sys.executable, "-c", PINGER, "127.0.0.1", str(server.port), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # the pinger is connected and looping
    windows: dict[str, list[tuple[float, float]]] = {label: [] for label in benches}
    for n in range(writes):
        for label, bench in benches.items():
            batch = [(k, v, ts + timedelta(milliseconds=n + 1), c) for k, v, ts, c in rows[label]]
            start = time.time()
            bench.write(bench.stream_view, batch)
            windows[label].append((start, time.time()))
            time.sleep(0.05)
    out, _ = pinger.communicate(timeout=seconds + 60)
    pings = json.loads(out)
    result = {}
    for label, spans in windows.items():
        during = [ms for t0, ms in pings if any(a <= t0 <= b for a, b in spans)]
        result[label] = {
            "n": len(during),
            "p50": percentile(during, 50),
            "p90": percentile(during, 90),
            "max": max(during),
            "write_ms": statistics.median((b - a) * 1000 for a, b in spans),
        }
    return result


def run_kind(
    kind: str, rows: int, rounds: int, writes: int, per_call: list[int], layouts: list[str]
) -> dict[str, Any]:
    with LocalRedis(kind) as server, tempfile.TemporaryDirectory() as tmp:
        r = server.client()
        conn = server.connection_string
        benches: dict[str, Bench] = {
            "builtin": make_bench("builtin", Path(tmp), "builtin", conn, BUILTIN_STORE, rows, now_utc())
        }
        for n in [1, *per_call]:
            store = {**PLUGIN_STORE, "write_rows_per_call": n}
            benches[f"hx{n}"] = make_bench(f"hx{n}", Path(tmp), f"hx{n}", conn, store, rows, now_utc())
        if "packed" in layouts:
            for n in per_call:
                store = {**PLUGIN_STORE, "write_rows_per_call": n, "value_layout": "packed"}
                label = f"hx{n}packed"
                benches[label] = make_bench(label, Path(tmp), label, conn, store, rows, now_utc())
        load_start = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
        cpu = measure_cpu(r, benches, rows, rounds)
        r.flushall()
        ping = measure_ping(server, benches, writes)
        load_end = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
        return {"server": server_info(r), "cpu": cpu, "ping": ping, "load": (load_start, load_end)}


class _Masters:
    """The masters of a cluster, read as one server: INFO cpu summed, FLUSHALL on each."""

    def __init__(self, cluster: Any) -> None:
        self.clients = [m.client() for m in cluster.masters]

    def info(self, section: str) -> dict[str, float]:
        infos = [c.info(section) for c in self.clients]
        return {k: sum(float(i[k]) for i in infos) for k in ("used_cpu_user", "used_cpu_sys")}

    def flushall(self) -> None:
        for c in self.clients:
            c.flushall()


# The plugin's variants on a cluster: label -> (rows per call, key_prefix, cluster_write_calls).
def _cluster_variants(per_call: int) -> dict[str, tuple[int, str, str]]:
    return {
        "hx1": (1, "{project}:", "slot"),
        f"hx{per_call}": (per_call, "{project}:", "slot"),
        f"hx{per_call}node": (per_call, "{project}:", "node"),
        "hx1tag": (1, "{project}:{t}:", "slot"),
        f"hx{per_call}tag": (per_call, "{project}:{t}:", "node"),
    }


def run_cluster(kind: str, rows: int, rounds: int, per_call: int) -> dict[str, Any]:
    """Server CPU per row summed over the masters of a 3-master cluster (no replicas): the
    plugin with calls per slot and per master, without and with a hash-tag key prefix, and the
    built-in store."""
    from feast_redis_hexpire.topology import LocalCluster

    with (
        LocalCluster(kind, masters=3, replicas_per_master=0) as cluster,
        tempfile.TemporaryDirectory() as tmp,
    ):
        conn = cluster.connection_string
        cfg = {"redis_type": "redis_cluster"}
        benches = {
            "builtin": make_bench(
                "builtin", Path(tmp), "builtin", conn, {**BUILTIN_STORE, **cfg}, rows, now_utc()
            )
        }
        for label, (n, prefix, calls) in _cluster_variants(per_call).items():
            store = {
                **PLUGIN_STORE,
                **cfg,
                "write_rows_per_call": n,
                "key_prefix": prefix,
                "cluster_write_calls": calls,
            }
            benches[label] = make_bench(label, Path(tmp), label, conn, store, rows, now_utc())
        load_start = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
        cpu = measure_cpu(_Masters(cluster), benches, rows, rounds)
        load_end = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
        with cluster.masters[0].client() as c:
            server = server_info(c)
        return {"server": f"{server}, 3-master cluster", "cpu": cpu, "load": (load_start, load_end)}


def render_cluster(res: dict[str, Any], rows: int, per_call: int) -> str:
    cpu = res["cpu"]
    base = cpu["builtin"]
    names = {
        "builtin": "built-in `type: redis`",
        "hx1": "plugin, 1 row per call",
        f"hx{per_call}": f"plugin, {per_call} rows per call, prefix `{{project}}:`, per slot "
        "(`cluster_write_calls: slot`)",
        f"hx{per_call}node": f"plugin, {per_call} rows per call, prefix `{{project}}:`, per master "
        "(`cluster_write_calls: node`, the default)",
        "hx1tag": "plugin, 1 row per call, hash-tag prefix `{project}:{t}:`",
        f"hx{per_call}tag": f"plugin, {per_call} rows per call, prefix `{{project}}:{{t}}:` (one slot)",
    }
    lines = [
        f"#### {res['server']} ({rows:,} rows per write; load average {res['load'][0]} at start, "
        f"{res['load'][1]} at end)",
        "",
        "| store | server CPU per batch row, all masters (µs) | vs built-in | per streaming row (µs) "
        "| vs built-in | per streaming row updating a stored one (µs) | vs built-in |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name in names.items():
        c = cpu[label]
        lines.append(
            f"| {name} | {c['batch']:.2f} | {c['batch'] / base['batch']:.2f}x | {c['stream']:.2f} | "
            f"{c['stream'] / base['stream']:.2f}x | {c['update']:.2f} | {c['update'] / base['update']:.2f}x |"
        )
    return "\n".join(lines + [""])


def render(results: dict[str, Any], rows: int, per_call: list[int]) -> str:
    lines = []
    for res in results.values():
        cpu, ping = res["cpu"], res["ping"]
        base = cpu["builtin"]
        lines += [
            f"#### {res['server']} ({rows:,} rows per write; load average {res['load'][0]} at start, "
            f"{res['load'][1]} at end)",
            "",
            "| store | server CPU per batch row (µs) | vs built-in | per streaming row (µs) | vs built-in "
            "| per streaming row updating a stored one (µs) | vs built-in "
            "| PING during a 2000-row write p50 / p90 / max (ms) | p90 vs one EVALSHA per row "
            "| 2000-row write (ms) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        labels = ["builtin", "hx1", *(f"hx{n}" for n in per_call)]
        labels += [f"hx{n}packed" for n in per_call if f"hx{n}packed" in cpu]
        for label in labels:
            c, p = cpu[label], ping[label]
            name = {"builtin": "built-in `type: redis`", "hx1": "plugin, 1 row per call (before)"}.get(
                label, f"plugin, {label[2:].removesuffix('packed')} rows per call"
            )
            if label.endswith("packed"):
                name += ", `value_layout: packed`"
            lines.append(
                f"| {name} | {c['batch']:.2f} | {c['batch'] / base['batch']:.2f}x | {c['stream']:.2f} | "
                f"{c['stream'] / base['stream']:.2f}x | {c['update']:.2f} | "
                f"{c['update'] / base['update']:.2f}x | {p['p50']:.2f} / {p['p90']:.2f} / {p['max']:.2f} "
                f"(n={p['n']}) | {p['p90'] / ping['hx1']['p90']:.2f}x | {p['write_ms']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=10, help="2000-row writes per store for the PING phase")
    parser.add_argument("--per-call", default="10,100,500", help="write_rows_per_call values to compare")
    parser.add_argument("--server", choices=["redis", "valkey", "both"], default="both")
    parser.add_argument(
        "--layouts", default="fields,packed", help="value layouts of the plugin: fields, or fields,packed"
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--cluster", action="store_true", help="3-master cluster, server CPU only")
    args = parser.parse_args()
    per_call = [int(x) for x in args.per_call.split(",")]
    if args.cluster:
        info = machine_info()
        kinds = ["redis", "valkey"] if args.server == "both" else [args.server]
        print(f"machine: {info['CPU']}, {info['cores']} cores, {info['date (UTC)']} UTC")
        for kind in kinds:
            print(
                render_cluster(
                    run_cluster(kind, args.rows, args.rounds, per_call[-1]), args.rows, per_call[-1]
                )
            )
        return
    kinds = ["redis", "valkey"] if args.server == "both" else [args.server]
    info = machine_info()
    layouts = args.layouts.split(",")
    results = {kind: run_kind(kind, args.rows, args.rounds, args.writes, per_call, layouts) for kind in kinds}
    print(f"machine: {info['CPU']}, {info['cores']} cores, {info['date (UTC)']} UTC")
    print(render(results, args.rows, per_call))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
