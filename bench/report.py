"""Collecting the numbers of a run and writing them as BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

THROUGHPUT = {"materialize", "convert", "write_batch", "write_stream", "push1", "push100", "direct1"}


class Result:
    """metric -> store label -> samples (one per round); throughput keeps the best round."""

    def __init__(self, run_no: int) -> None:
        self.run_no = run_no
        self.server = ""
        self.missed: dict[str, float] = {}  # metric -> ratio, filled by run_table
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, metric: str, label: str, value: float) -> None:
        self.values[metric][label].append(value)

    def get(self, metric: str, label: str) -> float | None:
        samples = self.values.get(metric, {}).get(label)
        if not samples:
            return None
        # Best round for rows/s: other processes on a shared machine only ever slow a round down.
        return max(samples) if metric in THROUGHPUT else statistics.median(samples)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    return {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "OS": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "feast": version("feast"),
        "redis-py": version("redis"),
        "hiredis": _maybe_version("hiredis"),
    }


def _maybe_version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "not installed"


def server_info(r: Any) -> str:
    info = r.info("server")
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"{info.get('server_name', 'redis')} {info['redis_version']}"


# (metric, plugin label, baseline label, description, unit, target kind, target ratio)
# kind ">=": plugin/baseline must be at least the ratio; "<=": at most.
ROWS = [
    ("materialize", "plugin", "builtin", "materialize {users} batch rows, end to end", "rows/s", ">=", 2.0),
    ("write_batch", "plugin", "builtin", "online_write_batch {users} batch rows", "rows/s", ">=", 1.5),
    ("write_batch_cpu", "plugin", "builtin", "client CPU of that write, per row", "us", "", 0),
    ("write_batch_srv", "plugin", "builtin", "server CPU of that write, per row", "us", "", 0),
    ("write_stream", "plugin", "builtin", "online_write_batch {users} streaming rows", "rows/s", ">=", 1.5),
    ("push1", "plugin", "builtin", "push, 1 row per call", "rows/s", ">=", 1.5),
    ("push100", "plugin", "builtin", "push, 100 rows per call", "rows/s", ">=", 1.5),
    (
        "push1_store",
        "plugin",
        "builtin",
        "store's part: online_write_batch, 1 row",
        "rows/s",
        "",
        0,
    ),
    ("push100_store", "plugin", "builtin", "same, 100 rows", "rows/s", "", 0),
    ("gof1_p50", "plugin", "builtin", "get_online_features, 1 entity, p50", "ms", "<=", 0.45),
    ("gof1_p99", "plugin", "builtin", "get_online_features, 1 entity, p99", "ms", "", 0),
    ("gof1_cpu", "plugin", "builtin", "get_online_features, 1 entity, client CPU/call", "ms", "", 0),
    ("gof100_p50", "plugin", "builtin", "get_online_features, 100 entities, p50", "ms", "<=", 0.2),
    ("gof100_p99", "plugin", "builtin", "get_online_features, 100 entities, p99", "ms", "", 0),
    (
        "gof100_cpu",
        "plugin",
        "builtin",
        "get_online_features, 100 entities, client CPU/call",
        "ms",
        "",
        0,
    ),
    ("mem_batch", "plugin", "builtin", "memory per entity, 6 batch features", "bytes", "<=", 1.1),
    ("mem_key", "plugin", "builtin", "MEMORY USAGE of one key (median of 200), batch only", "bytes", "", 0),
    ("mem_both", "plugin", "builtin", "memory per entity, + 5 streaming features", "bytes", "", 0),
]

# The plugin against other baselines than the built-in store, measured in the same run:
# (metric, plugin label, baseline label, baseline, description, unit, target kind, target ratio)
BASELINES = [
    ("gof1_p50", "plugin", "raw", "raw redis-py: one HMGET, same key and 7 fields",
     "get_online_features, 1 entity, p50", "ms", "<=", 1.5),
    ("gof100_p50", "plugin", "raw", "raw redis-py: pipeline of 100 HMGETs, same keys and fields",
     "get_online_features, 100 entities, p50", "ms", "<=", 1.5),
    ("gof1_cpu", "plugin", "raw", "raw redis-py, as above", "same, 1 entity, client CPU/call", "ms", "", 0),
    ("gof100_cpu", "plugin", "raw", "raw redis-py, as above", "same, 100 entities, client CPU/call",
     "ms", "", 0),
    ("gof1_p50", "plugin", "generic", "the previous path: Feast's get_online_features + the store's "
     "per-view hook", "get_online_features, 1 entity, p50", "ms", "", 0),
    ("gof100_p50", "plugin", "generic", "the previous path, as above",
     "get_online_features, 100 entities, p50", "ms", "", 0),
    ("direct1", "plugin", "push", "FeatureStore.push of 1 row into the same view and store",
     "StreamWriter.write, 1 row per call", "calls/s", ">=", 20),
    ("direct1_cpu", "plugin", "push", "FeatureStore.push, as above", "same, client CPU/call", "ms", "", 0),
]  # fmt: skip

# Reads against raw redis-py: (plugin call, raw call, description, target ratio)
READS = [
    ("plugin_per_fv", "raw_hmget100_both",
     "_read_features_per_fv, 100 entities, 2 views, 5 features (vs 100 pipelined HMGETs, 7 fields)", 1.5),
    ("plugin_online_read", "raw_hmget100_batch",
     "online_read, 100 entities, batch view, 3 features (vs 100 pipelined HMGETs, 4 fields)", 1.5),
]  # fmt: skip


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "us":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _verdict(ratio: float | None, kind: str, target: float) -> tuple[str, str]:
    if not kind or ratio is None:
        return "-", ""
    ok = ratio >= target if kind == ">=" else ratio <= target
    return f"{kind} {target}x", "yes" if ok else "**no**"


def run_table(res: Result, users: int) -> list[str]:
    lines = [
        f"### Run {res.run_no} ({res.server})",
        "",
        "| measure | unit | plugin | built-in | raw redis-py | plugin / built-in | target | met |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for metric, mine, base, desc, unit, kind, target in ROWS:
        p, b, raw = res.get(metric, mine), res.get(metric, base), res.get(metric, "raw")
        if p is None and b is None and raw is None:
            continue  # a phase this run skipped (--phases)
        ratio = p / b if p is not None and b else None
        tgt, met = _verdict(ratio, kind, target)
        if met == "**no**":
            res.missed[metric] = ratio  # type: ignore[assignment]
        ratio_txt = f"{ratio:.2f}x" if ratio is not None else "-"
        desc = desc.format(users=f"{users:,}")
        cells = [desc, unit, _fmt(p, unit), _fmt(b, unit), _fmt(raw, unit), ratio_txt, tgt, met]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| measure | unit | plugin | baseline | baseline value | plugin / baseline | target | met |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for metric, mine, base, base_desc, desc, unit, kind, target in BASELINES:
        p, b = res.get(metric, mine), res.get(metric, base)
        if p is None and b is None:
            continue
        ratio = p / b if p is not None and b else None
        tgt, met = _verdict(ratio, kind, target)
        if met == "**no**":
            res.missed[f"{metric}/{base}"] = ratio  # type: ignore[assignment]
        ratio_txt = f"{ratio:.2f}x" if ratio is not None else "-"
        cells = [desc, unit, _fmt(p, unit), base_desc, _fmt(b, unit), ratio_txt, tgt, met]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| read (p50, ms) | plugin | built-in | raw redis-py | plugin / raw | target | met "
        "| client CPU per call, ms: plugin / built-in / raw (plugin / raw) |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for mine, raw_name, desc, target in READS:
        p, raw = res.get("read_p50", mine), res.get("read_p50", raw_name)
        b = res.get("read_p50", "builtin_per_fv") if mine == "plugin_per_fv" else None
        ratio = p / raw if p is not None and raw else None
        tgt, met = _verdict(ratio, "<=", target)
        if met == "**no**":
            res.missed[mine] = ratio  # type: ignore[assignment]
        ratio_txt = f"{ratio:.2f}x" if ratio is not None else "-"
        pc, rc = res.get("read_cpu", mine), res.get("read_cpu", raw_name)
        bc = res.get("read_cpu", "builtin_per_fv") if mine == "plugin_per_fv" else None
        cpu_txt = f"{_fmt(pc, 'ms')} / {_fmt(bc, 'ms')} / {_fmt(rc, 'ms')}"
        if pc and rc:
            cpu_txt += f" ({pc / rc:.2f}x)"
        cells = [desc, _fmt(p, "ms"), _fmt(b, "ms"), _fmt(raw, "ms"), ratio_txt, tgt, met, cpu_txt]
        lines.append("| " + " | ".join(cells) + " |")
    one = res.get("read_p50", "raw_hmget1")
    lines += ["", f"Raw single HMGET of one entity (7 fields): p50 {_fmt(one, 'ms')} ms."]
    conv = res.get("convert", "plugin")
    if conv:
        lines.append(
            f"Feast's own offline read + arrow-to-proto conversion of the batch rows (same for both stores): "
            f"{conv:,.0f} rows/s."
        )
    return lines


def render(
    runs: list[Result], info: dict[str, str], params: dict[str, int], command: str, server: str
) -> str:
    users = params["users"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` (regenerated by every run; do not edit by hand).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        f"| load average at end | {' '.join(f'{x:.2f}' for x in os.getloadavg())} |",
        f'| server | {runs[0].server} (LocalRedis("{server}"), loopback TCP) |',
        "",
        "## What is measured",
        "",
        f"- Stores: this plugin (project `hx`, `{_store_line()}`) and Feast's built-in redis store "
        "(project `builtin`, `type: redis`, `key_ttl_seconds: 86400`, default dedup on), both on the same "
        "server, both reading and writing the sample repo's views. Raw redis-py is the floor: "
        "HSET+EXPIRE pipelines of 2000 rows with pre-encoded values for writes, HMGET for reads.",
        f"- Writes: `FeatureStore.materialize` of {users:,} users into `user_batch_features` end to end "
        "(includes Feast reading the parquet file and converting rows, the same work for both stores), and "
        "`online_write_batch` alone with the very rows materialize hands to the store (Feast's "
        "`_convert_arrow_to_proto`), timed from a flushed server; best of "
        f"{params['rounds']} round(s) (materialize: {params.get('materialize_rounds', params['rounds'])}), "
        "stores alternating. The write target is judged on every write row; "
        "`online_write_batch` is the one that isolates the store.",
        f"- Push: `FeatureStore.push` into `user_streaming_features`, {params['push1']} calls of 1 row and "
        f"{params['push100']} calls of 100 rows, each call with a later event time, stores alternating "
        "in blocks of 20 calls (the first call of a block not counted).",
        f"- get_online_features: features `{', '.join(_short_refs())}` (3 batch + 2 streaming), "
        f"{params['gof1']} calls of 1 entity and {params['gof100']} calls of 100 random entities per "
        "store after a warmup, the stores' calls interleaved in blocks of 50 (order alternating; the "
        "first call of a block re-warms Feast's process-wide feature-ref cache, which a call through "
        "another registry clears, and is not counted), GC paused while sampling; both stores' "
        "answers are checked equal first.",
        "- Previous path and raw reads: in the same interleaved blocks, the plugin's previous read "
        "path (Feast's own `OnlineStore.get_online_features`, which calls the store's per-view hook) "
        "and raw redis-py, one HMGET or a pipeline of 100 HMGETs of the same keys and 7 fields.",
        f"- Direct writer: {params.get('direct', 0)} 1-row calls of `StreamWriter.write` and of "
        "`FeatureStore.push` into the same streaming view of the plugin's store, alternating in blocks "
        "of 20 calls (the first of a block not counted); event times follow the calls, so no row is "
        "skipped as not newer.",
        "- Store reads: each store's `_read_features_per_fv` (what get_online_features calls, including "
        "Feast's response filling) and the plugin's `online_read`, against raw pipelined HMGETs of the same "
        f"keys and fields; {params['read']} interleaved calls each.",
        "- Memory: `INFO memory used_memory` after the write minus after FLUSHALL, divided by "
        f"{users:,} entities.",
        "",
        "## Results",
        "",
    ]
    for res in runs:
        lines += run_table(res, users) + [""]
    lines += missed_notes(runs)
    return "\n".join(lines) + "\n"


# Why a target is missed, from profiling the paths (bench/profile_paths.py) on this machine.
WHY = {
    "materialize": "End to end, materialize includes Feast reading the parquet file and converting "
    "every row to protos (the 'conversion' line under each table): the same work for both stores, "
    "and most of the time of the faster one, so the ratio is pulled toward 1. `online_write_batch`, "
    "the store's part, is the row that isolates the store.",
    "write_batch": "Wall rows/s swing with the other processes on this machine; the CPU rows "
    "below it are steadier. The plugin spends less client CPU per row than the built-in store "
    "(one EVALSHA per row, no read-back pass; about half of it is redis-py's per-command "
    "packing and reply parsing), but more server CPU (the Lua script costs several times the "
    "built-in's HSET + EXPIRE), and each pipelined chunk is sent, run and answered in turn, so "
    "client and server time add up instead of overlapping.",
    "write_stream": "Streaming rows also run HPEXPIRE on every field inside the script, and the "
    "listpack with field TTLs is larger to rewrite.",
    "push1": "`FeatureStore.push` spends several milliseconds per call in Feast itself (registry "
    "lookups, DataFrame -> Arrow -> protos) before the store is called; the store's part, one row "
    'through `online_write_batch`, is the "store\'s part" row, tens of times faster. No store '
    "can make a 1-row push 1.5x faster.",
    "push100": "As for 1 row: Feast's DataFrame -> Arrow -> proto conversion per push is the same "
    'for both stores and dominates; compare the "store\'s part" rows.',
    "gof1_p50": "A 1-entity call is mostly fixed per-call Python work: Feast's FeatureStore and "
    "provider wrappers and OnlineResponse, and the store's own plan lookup, key, value encoding, "
    "metrics and the response bytes (two views, five features). The HMGET goes out on the store's "
    "own socket and the response is assembled as protobuf bytes and parsed once; what is left is "
    "Python per call, which a loaded machine stretches (client CPU row).",
    "gof100_p50": "100 HMGETs plus 100 keys and 500 values turned into protobuf bytes in Python; "
    "compare the client CPU row, which a loaded machine disturbs less than the wall time.",
    "gof1_p50/raw": "Raw redis-py's one HMGET is about 0.05 ms of client CPU and returns a list of "
    "bytes; get_online_features also runs Feast's FeatureStore and provider wrappers and "
    "OnlineResponse, the store's plan lookup, value encoding, metrics (Feast's and the store's) "
    "and builds the protobuf response. On a loaded 2-core machine a call that needs more CPU also "
    "waits longer for it, so the wall ratio is larger than the CPU ratio.",
    "gof100_p50/raw": "The same HMGETs plus building keys, encoding values and the protobuf "
    "response in Python (client CPU rows).",
    "direct1/push": "The writer's call is one row encoded straight into the stored bytes plus one "
    "round trip through the store's write path (script, metrics); on a loaded machine the round "
    "trip's wait for the CPU dominates it, while push's own work is CPU-bound.",
    "mem_batch": "Hash fields are the readable feature names (85 bytes of names for the six batch "
    "features, plus the 23-byte `_ts:user_batch_features`) where Feast's store uses 4-byte mmh3 "
    "hashes; the plugin's shorter keys (`hx:user:u012345` vs a 39-byte serialized entity key) and "
    "text values win back part of it. The listpack ends just above a jemalloc size class "
    "(MEMORY USAGE row); a few bytes less per hash would drop it a class.",
    "plugin_per_fv": "Raw pipelined HMGETs return bytes; the store's read also builds keys, encodes "
    "every value as protobuf bytes and merges them into Feast's response (the work of Feast's "
    "`_populate_response_from_feature_data`). That Python work, not Redis, is the difference "
    "(client CPU column).",
    "plugin_online_read": "Key building and decoding values into ValueProtos on top of the same "
    "HMGETs (client CPU column).",
}


def missed_notes(runs: list[Result]) -> list[str]:
    missed = sorted({m for res in runs for m in res.missed}, key=list(WHY).index)
    if not missed:
        return ["All targets met in every run."]
    lines = ["## Targets missed: by how much and why", ""]
    for metric in missed:
        ratios = ", ".join(
            f"run {res.run_no}: {res.missed[metric]:.2f}x"
            if metric in res.missed
            else f"run {res.run_no}: met"
            for res in runs
        )
        lines.append(f"- **{_label(metric)}** ({ratios}). {WHY[metric]}")
    return lines + [""]


def _label(metric: str) -> str:
    for row in ROWS:
        if row[0] == metric:
            return row[3].replace(" {users}", "")
    for name, _, base, _, desc, *_ in BASELINES:
        if f"{name}/{base}" == metric:
            return f"{desc}, vs {base}"
    for mine, _, desc, _ in READS:
        if mine == metric:
            return desc
    return metric


def _store_line() -> str:
    return "key_ttl_seconds: 86400, stream_field_ttl_seconds: 3600, other settings default"


def _short_refs() -> list[str]:
    return ["risk_segment", "tx_count_7d", "avg_amount_30d", "tx_count_5m", "failed_logins_15m"]


# BENCHMARKS.md: bench/run.py rewrites the file and keeps every section another bench script
# wrote between its markers, "<!-- bench/NAME.py: start -->" and "<!-- bench/NAME.py: end -->",
# and the summary ("<!-- bench/summary: start -->") above its own text.
_SECTION = re.compile(r"<!-- (bench/[\w.-]+): start -->.*?<!-- \1: end -->\n?", re.S)


# The hand-written summary of every bench's target rows: kept at the top of the file.
SUMMARY = "bench/summary"


def kept_sections(path: Path, summary: bool = False) -> str:
    """The marked sections of ``path`` (markers included), in file order, or "": the summary
    section alone with ``summary``, every other section without."""
    text = path.read_text() if path.exists() else ""
    found = (m for m in _SECTION.finditer(text) if (m.group(1) == SUMMARY) == summary)
    return "".join(m.group(0).rstrip("\n") + "\n\n" for m in found)


def replace_section(path: Path, script: str, body: str) -> None:
    """Put ``body`` between ``script``'s markers in ``path`` (e.g. script "bench/write_cpu.py"),
    replacing what was there, or append the section."""
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- {script}: start -->", f"<!-- {script}: end -->"
    new = f"{start}\n{body.rstrip()}\n{end}\n"
    if start in text and end in text:
        text = text[: text.index(start)] + new + text[text.index(end) + len(end) :].lstrip("\n")
    else:
        text = text.rstrip() + "\n\n" + new
    path.write_text(text)
