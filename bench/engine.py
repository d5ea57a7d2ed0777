"""Benchmark: FeatureStore.materialize rows/s, built-in store vs this plugin on Feast's default
engine vs this plugin with the Arrow materialization engine, side by side in one run.

    python bench/engine.py                       # 20,000 users, 2 runs, Redis 8.2 -> BENCHMARKS.md
    python bench/engine.py --users 50000 --server valkey --no-write

Each run starts its own server (LocalRedis) and three copies of the sample repo with the same
offline data (``--users`` batch rows of ``user_batch_features``), under different projects:
``builtin`` (Feast's built-in ``type: redis``), ``hx`` (this plugin, Feast's default engine) and
``hxa`` (this plugin, ``batch_engine: feast_redis_hexpire.engine.ArrowMaterializationEngine``).
Each store materializes once to warm up, then ``--rounds`` times from an emptied server (a
garbage collection before each), the stores' order alternating each round: rows/s end to end
(Feast's offline read included) of the best and the median round; the ratio to the built-in
store of each round (the stores of one round ran next to each other, so load that comes and goes
on a shared machine touches both), its median and range, which judges the target; and the
median CPU per row of this process (Feast, the store, redis-py) and of the server's main thread (INFO cpu),
steadier than wall time on a shared machine. The engine's hashes are checked equal to the
default engine's first. The load average is written down at the start and end of each run.
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

import yaml
from feast import FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine_info, replace_section, server_info  # noqa: E402
from timing import server_cpu  # noqa: E402
from workload import BATCH_VIEW, BUILTIN_STORE, PLUGIN_STORE, make_bench, now_utc  # noqa: E402

from feast_redis_hexpire.local_redis import LocalRedis  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENGINE = "feast_redis_hexpire.engine.ArrowMaterializationEngine"
STORES = {
    "builtin": "built-in `type: redis`, Feast's default engine",
    "hx": "plugin, Feast's default engine",
    "hxa": "plugin, `ArrowMaterializationEngine`",
}
TARGETS = {"hx": 2.0, "hxa": 5.0}  # rows/s vs built-in (issue 9)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stores(root: Path, conn: str, users: int) -> dict[str, FeatureStore]:
    event_time = now_utc() - timedelta(hours=1)
    made = {
        "builtin": make_bench("builtin", root, "builtin", conn, BUILTIN_STORE, users, event_time).store,
        "hx": make_bench("hx", root, "hx", conn, PLUGIN_STORE, users, event_time).store,
        "hxa": make_bench("hxa", root, "hxa", conn, PLUGIN_STORE, users, event_time).store,
    }
    yml = root / "hxa" / "feature_store.yaml"
    config = yaml.safe_load(yml.read_text())
    config["batch_engine"] = {"type": ENGINE}
    yml.write_text(yaml.safe_dump(config, sort_keys=False))
    made["hxa"] = FeatureStore(repo_path=str(yml.parent))
    return made


def materialize(r: Any, store: FeatureStore, users: int) -> tuple[float, float, float]:
    """(seconds, client CPU seconds, server CPU seconds) of one materialize into an emptied server."""
    r.flushall()
    gc.collect()  # no round pays for another's garbage
    start, end = now_utc() - timedelta(days=1), now_utc()
    srv = server_cpu(r)
    wall, cpu = time.perf_counter(), time.process_time()
    store.materialize(start, end, [BATCH_VIEW])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    srv = server_cpu(r) - srv
    assert r.dbsize() == users, f"{store.project}: {r.dbsize()} keys written, not {users}"
    return wall, cpu, srv


def same_hashes(r: Any, made: dict[str, FeatureStore], users: int) -> None:
    """The engine writes what the default engine writes (keys differ only by project)."""
    hashes = {}
    for label in ("hx", "hxa"):
        materialize(r, made[label], users)
        hashes[label] = {k.split(b":", 1)[1]: r.hgetall(k) for k in r.scan_iter(count=2000)}
    assert hashes["hx"] == hashes["hxa"], "the engine's hashes differ from the default engine's"


def one_run(kind: str, users: int, rounds: int) -> dict[str, Any]:
    load_start = load()
    with LocalRedis(kind) as server, tempfile.TemporaryDirectory() as tmp:
        r = server.client()
        made = stores(Path(tmp), server.connection_string, users)
        same_hashes(r, made, users)
        for store in made.values():  # warm Feast's offline read path
            materialize(r, store, users)
        samples: dict[str, list[tuple[float, float, float]]] = {label: [] for label in made}
        labels = list(made)
        for n in range(rounds):
            for label in labels if n % 2 == 0 else labels[::-1]:
                wall, cpu, srv = materialize(r, made[label], users)
                log(
                    f"round {n + 1} {label}: {users / wall:,.0f} rows/s, {cpu / users * 1e6:.1f} µs CPU/row, "
                    f"server {srv / users * 1e6:.1f}"
                )
                samples[label].append((wall, cpu, srv))
        server_name = server_info(r)
        r.close()
    return {"server": server_name, "samples": samples, "load": (load_start, load())}


def render(runs: list[dict[str, Any]], info: dict[str, str], users: int, rounds: int, command: str) -> str:
    lines = [
        "## FeatureStore.materialize: the Arrow materialization engine",
        "",
        f"Generated by `{command}`. `FeatureStore.materialize` of {users:,} users into "
        f"`{BATCH_VIEW}` (six features) end to end, Feast's offline read of the parquet file "
        f"included; {rounds} rounds per store (best and median), from an emptied server, the stores' order "
        "alternating; the engine's hashes checked equal to the default engine's first. Per round: "
        "the store's rows/s over the built-in store's in the same round; the target is judged on "
        "the median of these ratios (their range in brackets). Client CPU is this process's CPU "
        "time per row (Feast, the store and redis-py), server CPU the server's main thread (INFO cpu).",
        "",
        f"Machine: {info['CPU']}, {info['cores']} cores, {info['OS']}, python {info['python']}, "
        f"feast {info['feast']}, redis-py {info['redis-py']}, hiredis {info['hiredis']}; "
        f"{info['date (UTC)']} UTC.",
        "",
    ]
    for n, run in enumerate(runs, 1):
        start, end = run["load"]
        rates = {k: sorted(users / wall for wall, _, _ in v) for k, v in run["samples"].items()}
        cpus = {k: statistics.median(cpu / users * 1e6 for _, cpu, _ in v) for k, v in run["samples"].items()}
        srvs = {k: statistics.median(srv / users * 1e6 for _, _, srv in v) for k, v in run["samples"].items()}
        base = [wall for wall, _, _ in run["samples"]["builtin"]]
        paired = {  # each round's ratio to the built-in store's round
            k: sorted(b / wall for b, (wall, _, _) in zip(base, v)) for k, v in run["samples"].items()
        }
        best = {k: v[-1] for k, v in rates.items()}
        median = {k: statistics.median(v) for k, v in rates.items()}
        lines += [
            f"### Run {n} ({run['server']}; load average {start} at start, {end} at end)",
            "",
            "| store | rows/s, best | vs built-in | rows/s, median | vs built-in | per round vs built-in, "
            "median (range) | target | met | CPU per row, median (µs), client / server | built-in / this, "
            "client + server |",
            "|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for label, name in STORES.items():
            ratio = statistics.median(paired[label])
            target = TARGETS.get(label)
            met = "" if target is None else ("yes" if ratio >= target else "**no**")
            total = (cpus[label] + srvs[label]) / (cpus["builtin"] + srvs["builtin"])
            lines.append(
                f"| {name} | {best[label]:,.0f} | {best[label] / best['builtin']:.2f}x | "
                f"{median[label]:,.0f} | {median[label] / median['builtin']:.2f}x | {ratio:.2f}x "
                f"({paired[label][0]:.2f}-{paired[label][-1]:.2f}) | "
                f"{f'>= {target}x' if target else '-'} | {met} | {cpus[label]:.1f} / {srvs[label]:.1f} | "
                f"{1 / total:.2f}x |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=2, help="independent runs, each with its own server")
    parser.add_argument("--rounds", type=int, default=11, help="timed materializations per store and run")
    parser.add_argument("--server", choices=["redis", "valkey"], default="redis")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown report to update")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    shown = [a for a in sys.argv[1:] if a not in ("--out", str(args.out))]  # no local paths
    command = " ".join(["python bench/engine.py", *shown])
    info = machine_info()
    runs = []
    for n in range(args.runs):
        log(f"run {n + 1} of {args.runs} ({args.server}, {args.users:,} users), load average {load()}")
        runs.append(one_run(args.server, args.users, args.rounds))
        text = render(runs, info, args.users, args.rounds, command)
        if not args.no_write:
            replace_section(args.out, "bench/engine.py", text)
    print(text)


if __name__ == "__main__":
    main()
