"""Server CPU per written row, and how long a PING waits during a write: plugin vs built-in.

    python bench/write_cpu.py                       # Redis 8.2 and Valkey 9.1, two runs
    python bench/write_cpu.py --rows 5000 --server redis --runs 1 --out /tmp/write_cpu.md

One run starts one server per kind and, as in bench/run.py, two copies of the sample repo: the
plugin (``hx``) and Feast's built-in redis store (``builtin``). For each store, in the same run:

- server CPU per row: CPU of the server's main thread (``INFO cpu``
  ``used_cpu_{user,sys}_main_thread``; background threads, such as a lazy FLUSHALL still freeing
  keys, are left out) before and after each ``online_write_batch``. A round starts on a server
  emptied with ``FLUSHALL SYNC`` and writes, for every store, N batch rows (the rows materialize
  hands over; new entities), then N streaming rows of the same entities (the rows push hands
  over; new fields), then the same streaming rows one second later (rows that update stored
  ones), each kind in writes of ``--chunk`` rows with the stores taking turns write by write
  (A B B A ...), so a burst of other jobs weighs on every store alike. One unmeasured warm-up
  round, then ``--rounds`` rounds; per store and kind, the median over rounds of its ratio to the
  built-in store's sample of the same round, with the lowest and highest round;
- a PING sent during a 2000-row streaming write: a separate process (so the writer's GIL does
  not delay it) sends PINGs back to back on its own connection for the whole phase; the pings
  sent while one of the stores was writing are its samples (``--writes`` writes each).

``--runs`` independent runs (fresh servers each) in one command; ``--out FILE`` puts the result
in FILE's ``bench/write_cpu.py`` section (``--out BENCHMARKS.md`` for the repository's).

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

from report import machine_info, replace_section, server_info  # noqa: E402
from timing import percentile, server_cpu  # noqa: E402
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


def _clients(r: Any) -> list[Any]:
    return r.clients if isinstance(r, _Masters) else [r]


def flush(r: Any) -> None:
    """Empty the server(s) now (``FLUSHALL SYNC``): a lazy free (Valkey's default for FLUSHALL)
    would still be freeing the previous store's keys in the background during the next sample."""
    for c in _clients(r):
        c.execute_command("FLUSHALL", "SYNC")


KINDS = ("batch", "stream", "update")


def _later(rows: list, seconds: float) -> list:
    return [(k, v, ts + timedelta(seconds=seconds), c) for k, v, ts, c in rows]


def measure_cpu(
    r: Any, benches: dict[str, Bench], rows: int, rounds: int, chunk: int
) -> dict[str, dict[str, Any]]:
    """Server CPU per row of each store and kind of write: one sample per round.

    A round starts on an emptied server (``flush``; the stores' keys differ by project) and
    writes, for every store, ``rows`` batch rows (new entities), then ``rows`` streaming rows of
    the same entities (new fields of existing hashes), then the same streaming rows one second
    later (rows that update stored ones): the same key population for every store. Each kind
    goes in writes of ``chunk`` rows, the stores taking turns write by write (in order, then
    reversed: A B B A ...), so a burst of other jobs on the machine weighs on every store alike;
    a store's sample is the CPU of all its writes of that kind over its rows. One unmeasured
    round first (scripts loaded, the allocator grown to the round's size, so later rounds reuse
    freed memory alike). Per store and kind: the median over rounds of the ratio to the built-in
    store's sample of the same round, its lowest and highest, and the median µs per row.
    """
    labels = list(benches)
    start = now_utc()
    batch = {label: batch_proto_rows(b)[:rows] for label, b in benches.items()}
    stream = {label: streaming_proto_rows(b, rows, start) for label, b in benches.items()}

    def one_round(n: int) -> dict[str, dict[str, float]]:
        flush(r)
        first = {label: _later(rs, 2 * n) for label, rs in stream.items()}
        writes = {
            "batch": (lambda b: b.batch_view, batch),
            "stream": (lambda b: b.stream_view, first),
            "update": (lambda b: b.stream_view, {label: _later(rs, 1) for label, rs in first.items()}),
        }
        out: dict[str, dict[str, float]] = {label: {} for label in labels}
        for kind, (view_of, rows_of) in writes.items():
            seconds = dict.fromkeys(labels, 0.0)
            for c, at in enumerate(range(0, rows, chunk)):
                for label in labels if c % 2 == 0 else reversed(labels):
                    bench = benches[label]
                    before = server_cpu(*_clients(r))
                    bench.write(view_of(bench), rows_of[label][at : at + chunk])
                    seconds[label] += server_cpu(*_clients(r)) - before
            for label in labels:
                out[label][kind] = seconds[label] * 1e6 / rows
        return out

    one_round(0)  # warm-up, not counted
    samples = [one_round(n) for n in range(1, rounds + 1)]
    flush(r)
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        out[label] = {}
        for kind in KINDS:
            mine = [s[label][kind] for s in samples]
            ratios = [s[label][kind] / s["builtin"][kind] for s in samples]
            out[label][kind] = {
                "us": statistics.median(mine),
                "ratio": statistics.median(ratios),
                "lo": min(ratios),
                "hi": max(ratios),
                "samples": mine,
            }
    return out


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
    kind: str, rows: int, rounds: int, chunk: int, writes: int, per_call: list[int], layouts: list[str]
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
        cpu = measure_cpu(r, benches, rows, rounds, chunk)
        ping = measure_ping(server, benches, writes)
        load_end = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
        return {"server": server_info(r), "cpu": cpu, "ping": ping, "load": (load_start, load_end)}


class _Masters:
    """The masters of a cluster, read as one server (``server_cpu``, ``flush``)."""

    def __init__(self, cluster: Any) -> None:
        self.clients = [m.client() for m in cluster.masters]


# The plugin's variants on a cluster: label -> (rows per call, key_prefix, cluster_write_calls).
def _cluster_variants(per_call: int) -> dict[str, tuple[int, str, str]]:
    return {
        "hx1": (1, "{project}:", "slot"),
        f"hx{per_call}": (per_call, "{project}:", "slot"),
        f"hx{per_call}node": (per_call, "{project}:", "node"),
        "hx1tag": (1, "{project}:{t}:", "slot"),
        f"hx{per_call}tag": (per_call, "{project}:{t}:", "node"),
    }


def run_cluster(kind: str, rows: int, rounds: int, chunk: int, per_call: int) -> dict[str, Any]:
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
        cpu = measure_cpu(_Masters(cluster), benches, rows, rounds, chunk)
        load_end = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
        with cluster.masters[0].client() as c:
            server = server_info(c)
        return {"server": f"{server}, 3-master cluster", "cpu": cpu, "load": (load_start, load_end)}


def render_cluster(res: dict[str, Any], rows: int, per_call: int) -> str:
    cpu = res["cpu"]
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
        f"#### {res['server']} ({rows:,} rows of each kind per store and round; "
        f"load average {res['load'][0]} at start, "
        f"{res['load'][1]} at end)",
        "",
        "| store | server CPU per batch row, all masters (µs) | vs built-in (rounds) "
        "| per streaming row (µs) | vs built-in (rounds) "
        "| per streaming row updating a stored one (µs) | vs built-in (rounds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name in names.items():
        lines.append(f"| {name} | {cpu_cells(cpu[label])} |")
    return "\n".join(lines + [""])


def cpu_cells(c: dict[str, dict[str, Any]]) -> str:
    """µs per row and the median ratio to the built-in store (lowest-highest round) per kind."""
    return " | ".join(
        f"{c[k]['us']:.2f} | {c[k]['ratio']:.2f}x ({c[k]['lo']:.2f}-{c[k]['hi']:.2f})" for k in KINDS
    )


def render(results: dict[str, Any], rows: int, per_call: list[int]) -> str:
    lines = []
    for res in results.values():
        cpu, ping = res["cpu"], res["ping"]
        lines += [
            f"#### {res['server']} ({rows:,} rows of each kind per store and round; "
            f"load average {res['load'][0]} at start, "
            f"{res['load'][1]} at end)",
            "",
            "| store | server CPU per batch row (µs) | vs built-in (rounds) "
            "| per streaming row (µs) | vs built-in (rounds) "
            "| per streaming row updating a stored one (µs) | vs built-in (rounds) "
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
                f"| {name} | {cpu_cells(c)} | {p['p50']:.2f} / {p['p90']:.2f} / {p['max']:.2f} "
                f"(n={p['n']}) | {p['p90'] / ping['hx1']['p90']:.2f}x | {p['write_ms']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


METHOD = """\
## Server CPU per written row, and PING during a write (issue 9)

Generated by `{command}` (see its docstring). Server CPU is the server's main thread (`INFO cpu`
`used_cpu_user_main_thread + used_cpu_sys_main_thread`, where commands and scripts run; the
background threads that free memory are left out) before and after each `online_write_batch` of
the rows `materialize` / `push` hand to the store. A round starts on a server emptied with
`FLUSHALL SYNC` and writes, for every store, {rows:,} batch rows of new entities, then {rows:,}
streaming rows of the same entities (new fields), then the same streaming rows one second later
(updates), in writes of {chunk:,} rows with the stores taking turns write by write (A B B A ...,
so a burst of other jobs weighs on every store alike). One unmeasured round first (scripts
loaded, the allocator grown), then {rounds} rounds; "vs built-in" is the median over rounds of the
ratio to the built-in store's sample of the same round, with the lowest and highest round in
brackets; µs are medians over rounds. "plugin, 1 row per call" is the write path before rows
were batched (one `EVALSHA` per row); "`value_layout: packed`" is the plugin with one field per
view, in the same alternation. PING: a separate process sends PINGs back to back on its own
connection; the pings sent while a store wrote 2000 streaming rows (one `online_write_batch`, one
round trip) are that store's samples.

Machine: {machine}.
"""


CLUSTER_METHOD = """\
### 3-master cluster

Generated by `{command}`: server CPU as above ({rows:,} rows of each kind per store and round,
{rounds} rounds after a warm-up), summed over the masters of a 3-master cluster (no replicas):
per slot (`cluster_write_calls: slot`), per master (`cluster_write_calls: node`, the default) and
with a hash-tag key prefix (every key in one slot, i.e. one master: no sharding). Machine: {machine}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per run (after one warm-up)")
    parser.add_argument(
        "--chunk", type=int, default=1000, help="rows per write; the stores take turns write by write"
    )
    parser.add_argument("--runs", type=int, default=2, help="independent runs, each with fresh servers")
    parser.add_argument("--writes", type=int, default=4, help="2000-row writes per store for the PING phase")
    parser.add_argument("--per-call", default="100", help="write_rows_per_call values to compare")
    parser.add_argument("--server", choices=["redis", "valkey", "both"], default="both")
    parser.add_argument(
        "--layouts", default="fields,packed", help="value layouts of the plugin: fields, or fields,packed"
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--out", type=Path, help="put the result in this file's bench/write_cpu.py (or -cluster) section"
    )
    parser.add_argument("--cluster", action="store_true", help="3-master cluster, server CPU only")
    args = parser.parse_args()
    per_call = [int(x) for x in args.per_call.split(",")]
    kinds = ["redis", "valkey"] if args.server == "both" else [args.server]
    layouts = args.layouts.split(",")
    shown = [a for a in sys.argv[1:] if a not in ("--out", str(args.out), "--json", str(args.json))]
    command = " ".join(["python bench/write_cpu.py", *shown])
    info = machine_info()
    machine = (
        f"{info['CPU']}, {info['cores']} cores, {info['OS']}, Python {info['python']}, "
        f"Feast {info['feast']}, redis-py {info['redis-py']}, hiredis {info['hiredis']}, loopback TCP"
    )
    if args.cluster:
        section = "bench/write_cpu.py-cluster"
        parts = [CLUSTER_METHOD.format(command=command, rows=args.rows, rounds=args.rounds, machine=machine)]
    else:
        section = "bench/write_cpu.py"
        parts = [
            METHOD.format(
                command=command, rows=args.rows, rounds=args.rounds, chunk=args.chunk, machine=machine
            )
        ]
    raw: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        if args.cluster:
            results = {
                kind: run_cluster(kind, args.rows, args.rounds, args.chunk, per_call[-1]) for kind in kinds
            }
            text = "\n".join(render_cluster(res, args.rows, per_call[-1]) for res in results.values())
        else:
            results = {
                kind: run_kind(kind, args.rows, args.rounds, args.chunk, args.writes, per_call, layouts)
                for kind in kinds
            }
            text = render(results, args.rows, per_call)
        raw.append(results)
        parts.append(f"Run {run} ({started} UTC, fresh servers):\n\n{text}")
        print(parts[-1], flush=True)
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "runs": raw}, indent=1))
        if args.out:
            replace_section(args.out, section, "\n".join(parts))


if __name__ == "__main__":
    main()
