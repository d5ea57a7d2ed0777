"""Benchmark: this plugin vs Feast's built-in redis online store vs raw redis-py, one server.

    python bench/run.py                  # 100k users, two full repetitions -> BENCHMARKS.md
    python bench/run.py --quick          # 10k users, fewer iterations (smoke run)
    python bench/run.py --quick --phases gof --gof-sizes 1 --gof1 3000 --out gof1.md   # 1-entity reads only
    python bench/run.py --server valkey
    python bench/run.py --cluster --phases gof --out cluster.md   # 3-master cluster, reads only
    python bench/run.py --phases direct --users 2000 --repeat 1 --out direct.md   # writer vs push, ~30 s

Every repetition starts its own server (LocalRedis) and two copies of the sample repo under
different projects: ``hx`` (this plugin) and ``builtin`` (``type: redis``), both with
``key_ttl_seconds`` set. Write and memory phases FLUSHALL the bench's own server before each
store; latency phases hold both stores' data at once (disjoint keys) and interleave their calls.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import utils
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesResponse
from redis.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Result, kept_sections, machine_info, render, server_info  # noqa: E402
from timing import interleaved, percentile, server_cpu, timed, timed_cpu  # noqa: E402
from workload import (  # noqa: E402
    BATCH_VIEW,
    BUILTIN_STORE,
    KEY_TTL_SECONDS,
    PLUGIN_STORE,
    PUSH_SOURCE,
    Bench,
    batch_proto_rows,
    feature_refs,
    make_bench,
    now_utc,
    push_frames,
    stream_rows_of,
    streaming_proto_rows,
)

from feast_redis_hexpire import codec  # noqa: E402
from feast_redis_hexpire.local_redis import LocalRedis  # noqa: E402
from feast_redis_hexpire.synth import streaming_frame, user_id  # noqa: E402
from feast_redis_hexpire.topology import LocalCluster  # noqa: E402
from feast_redis_hexpire.writer import StreamWriter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BATCH_READ = ["risk_segment", "tx_count_7d", "avg_amount_30d"]
STREAM_READ = ["tx_count_5m", "failed_logins_15m"]

FULL = {
    "users": 100_000,
    "gof1": 3000,
    "gof100": 600,
    "push1": 2000,
    "push100": 200,
    "read": 1000,
    "direct": 1000,
}
QUICK = {"users": 10_000, "gof1": 300, "gof100": 60, "push1": 200, "push100": 20, "read": 100, "direct": 200}
PHASES = ("write", "push", "direct", "gof", "read")
MATERIALIZE_ROUNDS = 5  # rounds of materialize per store (not with --quick)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def flush(r: Any) -> int:
    if isinstance(r, RedisCluster):  # every master; memory is not read in cluster runs
        r.flushall(asynchronous=False, target_nodes=RedisCluster.PRIMARIES)
        return 0
    r.flushall(asynchronous=False)
    gc.collect()
    time.sleep(0.2)
    return used_memory(r)


# ---- writes and memory ----


def write_phase(
    r: Any, benches: list[Bench], users: int, rounds: int, res: Result, materialize_rounds: int
) -> None:
    """materialize end to end, then online_write_batch alone with the same rows, per store;
    memory per entity from a flushed server."""
    start, end = now_utc() - timedelta(days=1), now_utc()
    rows = {b.label: batch_proto_rows(b) for b in benches}
    stream = {b.label: streaming_proto_rows(b, users, now_utc()) for b in benches}
    for b in benches:  # warm Feast's offline read path (imports, caches) before timing it
        flush(r)
        b.store.materialize(start, end, [BATCH_VIEW])
    # materialize swings most with other processes (Feast's part is most of it): more rounds of
    # it than of the rest, the stores alternating, the best of each store kept
    for rnd in range(materialize_rounds):
        for b in benches if rnd % 2 == 0 else benches[::-1]:
            flush(r)
            t = timed(lambda b=b: b.store.materialize(start, end, [BATCH_VIEW]))
            assert r.dbsize() == users, f"{b.label}: materialize wrote {r.dbsize()} keys, not {users}"
            res.add("materialize", b.label, users / t)
    for rnd in range(rounds):
        order = benches if rnd % 2 == 0 else benches[::-1]
        for b in order:
            res.add("convert", b.label, users / timed(lambda b=b: batch_proto_rows(b)))

            base = flush(r)
            srv = server_cpu(r)
            t, cpu = timed_cpu(lambda b=b: b.write(b.batch_view, rows[b.label]))
            res.add("write_batch_srv", b.label, (server_cpu(r) - srv) / users * 1e6)
            assert r.dbsize() == users
            res.add("write_batch", b.label, users / t)
            res.add("write_batch_cpu", b.label, cpu / users * 1e6)
            log(f"round {rnd + 1} {b.label}: online_write_batch {users / t:,.0f} rows/s")
            res.add("mem_batch", b.label, (used_memory(r) - base) / users)
            res.add("mem_key", b.label, key_usage(r, b.label))
            t = timed(lambda b=b: b.write(b.stream_view, stream[b.label]))
            res.add("write_stream", b.label, users / t)
            res.add("mem_both", b.label, (used_memory(r) - base) / users)
        raw_write(r, benches[0], rows[benches[0].label], users, res)


def raw_write(r: Any, plugin: Bench, rows: list, users: int, res: Result) -> None:
    """HSET + EXPIRE per entity, pipelined 2000 rows per round trip, values pre-encoded in the
    plugin's text form (so this is the cost of the commands alone)."""
    view = plugin.batch_view
    kinds = {f.name: codec.expected_kind(f.dtype.to_value_type()) for f in view.features}
    mappings = []
    for entity_key, values, ts, _ in rows:
        mapping: dict[str, Any] = {f"_ts:{view.name}": codec.encode_ts(ts)}
        mapping.update({name: codec.encode_value(v, kinds[name]) for name, v in values.items()})
        mappings.append((f"raw:user:{entity_key.entity_values[0].string_val}", mapping))
    base = flush(r)

    def write() -> None:
        for start in range(0, len(mappings), 2000):
            with r.pipeline(transaction=False) as pipe:
                for key, mapping in mappings[start : start + 2000]:
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, KEY_TTL_SECONDS)
                pipe.execute()

    srv = server_cpu(r)
    t, cpu = timed_cpu(write)
    res.add("write_batch_srv", "raw", (server_cpu(r) - srv) / users * 1e6)
    res.add("write_batch", "raw", users / t)
    res.add("write_batch_cpu", "raw", cpu / users * 1e6)
    res.add("mem_batch", "raw", (used_memory(r) - base) / users)
    res.add("mem_key", "raw", key_usage(r, "raw"))


def key_usage(r: Any, label: str) -> float:
    """Median MEMORY USAGE of 200 keys (the flushed server holds only this store's keys)."""
    keys = [r.randomkey() for _ in range(200)]
    return statistics.median(r.memory_usage(k, samples=0) for k in keys)


# ---- push ----


def push_phase(benches: list[Bench], users: int, n1: int, n100: int, res: Result, block: int = 20) -> None:
    """Pushes in blocks of ``block`` calls per store, stores alternating per block (see
    timing.interleaved for why not per call); the first push of a block is not counted."""
    t0 = now_utc()
    for size, count, seed in ((1, n1, 11), (100, n100, 12)):
        warm = push_frames(users, size, max(5, count // 20), t0 + timedelta(seconds=size), seed)
        frames = push_frames(users, size, count, t0 + timedelta(seconds=size + 60), seed + 1)
        for b in benches:
            for frame in warm:
                b.store.push(PUSH_SOURCE, frame)
        spent = {b.label: 0.0 for b in benches}
        pushed = {b.label: 0 for b in benches}
        for rnd, start in enumerate(range(0, count, block)):
            chunk = frames[start : start + block]
            for b in benches if rnd % 2 == 0 else benches[::-1]:
                b.store.push(PUSH_SOURCE, chunk[0])
                for frame in chunk[1:]:
                    spent[b.label] += timed(lambda b=b, frame=frame: b.store.push(PUSH_SOURCE, frame))
                    pushed[b.label] += size
        for b in benches:
            res.add(f"push{size}", b.label, pushed[b.label] / spent[b.label])
        log(f"push {size}: " + ", ".join(f"{k} {pushed[k] / v:,.0f} rows/s" for k, v in spent.items()))
        store_only(benches, size, frames, t0 + timedelta(seconds=size + 3600), res)


def store_only(
    benches: list[Bench], size: int, frames: list, later: Any, res: Result, block: int = 20
) -> None:
    """The stores' own share of a push: online_write_batch of the same rows, converted first
    (as push does), with later event times so nothing is skipped as not newer; stores
    alternating in blocks like the pushes."""
    rows = {
        b.label: [
            stream_rows_of(b, frame.assign(event_timestamp=later + timedelta(milliseconds=i)))
            for i, frame in enumerate(frames)
        ]
        for b in benches
    }
    spent = {b.label: 0.0 for b in benches}
    for rnd, start in enumerate(range(0, len(frames), block)):
        for b in benches if rnd % 2 == 0 else benches[::-1]:
            for batch in rows[b.label][start : start + block]:
                spent[b.label] += timed(lambda b=b, batch=batch: b.write(b.stream_view, batch))
    for b in benches:
        res.add(f"push{size}_store", b.label, size * len(frames) / spent[b.label])


# ---- reads ----


def load_both(r: Any, benches: list[Bench], users: int) -> None:
    flush(r)
    for b in benches:
        b.write(b.batch_view, batch_proto_rows(b))
        b.write(b.stream_view, streaming_proto_rows(b, users, now_utc() + timedelta(hours=1)))


def entity_batches(users: int, size: int, count: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    return [[{"user_id": user_id(rng.randint(1, users))} for _ in range(size)] for _ in range(count)]


def check_same_answers(benches: list[Bench], rows: list[dict]) -> None:
    """Both stores must return the same values, or the latency comparison means nothing."""
    refs = feature_refs()
    answers = [b.store.get_online_features(features=refs, entity_rows=rows).to_dict() for b in benches]
    if answers[0] != answers[1]:
        raise AssertionError(f"stores disagree: {answers[0]} vs {answers[1]}")
    if any(v is None for col in answers[0].values() for v in col):
        raise AssertionError(f"missing values in the read: {answers[0]}")


def gof_phase(
    r: Any,
    benches: list[Bench],
    users: int,
    iters: dict[str, int],
    res: Result,
    sizes: tuple[int, ...] = (1, 100),
) -> None:
    """get_online_features of both stores, the plugin's previous path (Feast's generic
    get_online_features calling the store's per-view hook) and raw redis-py HMGET(s) of the same
    keys and fields (one HMGET, or a pipeline of 100), interleaved in one run."""
    refs = feature_refs()
    plugin = benches[0]
    fields = [f"_ts:{BATCH_VIEW}", *BATCH_READ, f"_ts:{plugin.stream_view.name}", *STREAM_READ]
    for size, n in [(size, iters[f"gof{size}"]) for size in sizes]:
        batches = entity_batches(users, size, 500, seed=size)
        check_same_answers(benches, batches[0])
        calls: dict[str, Callable[[], object]] = {}
        for b in benches:
            cycle = itertools.cycle(batches)
            calls[b.label] = lambda b=b, cycle=cycle: b.store.get_online_features(
                features=refs, entity_rows=next(cycle)
            )
        generic_cycle = itertools.cycle(batches)
        calls["generic"] = _generic_call(plugin, refs, generic_cycle)
        key_batches = itertools.cycle(
            [
                [
                    plugin.online.key_for(plugin.config, plugin.batch_view, _key(row["user_id"]))
                    for row in rows
                ]
                for rows in batches
            ]
        )
        calls["raw"] = _raw_hmgets(r, key_batches, fields)
        samples, cpu = interleaved(calls, n, warmup=max(20, n // 10))
        for label, s in samples.items():
            res.add(f"gof{size}_cpu", label, cpu[label])
            res.add(f"gof{size}_p50", label, percentile(s, 50))
            res.add(f"gof{size}_p99", label, percentile(s, 99))
        log(f"gOF {size}: " + ", ".join(f"{k} p50 {percentile(v, 50):.3f} ms" for k, v in samples.items()))


def _generic_call(plugin: Bench, refs: list[str], rows: Any) -> Callable[[], object]:
    online, config, registry = plugin.online, plugin.config, plugin.store.registry
    return lambda: OnlineStore.get_online_features(online, config, refs, next(rows), registry, config.project)


def _raw_hmgets(r: Any, key_batches: Any, fields: list[str]) -> Callable[[], object]:
    """One HMGET (one key) or a redis-py pipeline of HMGETs: the floor of a read."""

    def call() -> object:
        keys = next(key_batches)
        if len(keys) == 1:
            return r.hmget(keys[0], fields)
        with r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, fields)
            return pipe.execute()

    return call


def _key(user: str) -> Any:
    return utils._get_entity_key_protos([{"user_id": _v(user)}])[0]


# ---- the direct streaming writer ----


def direct_writer_phase(benches: list[Bench], users: int, n: int, res: Result, block: int = 20) -> None:
    """1-row calls of StreamWriter.write against 1-row FeatureStore.push into the same view of
    the same store, alternating in blocks (the first call of a block not counted)."""
    plugin = benches[0]
    writer = StreamWriter(plugin.store, plugin.stream_view.name)
    rng = random.Random(21)
    start = now_utc() + timedelta(hours=2)
    calls = itertools.count()

    def next_frame() -> Any:  # event times follow the calls, so no write is skipped as not newer
        when = start + timedelta(milliseconds=next(calls))
        return streaming_frame([user_id(rng.randint(1, users))], rng, when)

    for _ in range(5):
        plugin.store.push(PUSH_SOURCE, next_frame())
    spent = {"plugin": 0.0, "push": 0.0}
    cpu = {"plugin": 0.0, "push": 0.0}
    done = {"plugin": 0, "push": 0}
    stats = plugin.online.stats
    written = stats["written"]
    gc.disable()  # as in timing.interleaved: a collection of push's garbage lands on whoever runs
    for rnd, first in enumerate(range(0, n, block)):
        # Each round's inputs are made before it runs (in call order, so event times increase):
        # building DataFrames between timed calls would charge the next call for the CPU used.
        order = ("plugin", "push") if rnd % 2 == 0 else ("push", "plugin")
        size = min(first + block, n) - first
        inputs = {label: [next_frame() for _ in range(size)] for label in order}
        rows = [f.to_dict("records")[0] for f in inputs["plugin"]]
        gc.collect()
        for label in order:
            for i in range(size):
                if label == "plugin":
                    t, c = timed_cpu(lambda row=rows[i]: writer.write(row))
                else:
                    t, c = timed_cpu(lambda frame=inputs["push"][i]: plugin.store.push(PUSH_SOURCE, frame))
                if i:
                    spent[label] += t
                    cpu[label] += c
                    done[label] += 1
    gc.enable()
    assert stats["written"] - written == 2 * n, "a direct write or a push was skipped"
    for label in spent:
        res.add("direct1", label, done[label] / spent[label])
        res.add("direct1_cpu", label, cpu[label] / done[label] * 1000)
    rates = {label: done[label] / spent[label] for label in spent}
    log(f"direct writer: {rates['plugin']:,.0f} calls/s, push {rates['push']:,.0f} calls/s")


def read_phase(r: Any, benches: list[Bench], users: int, n: int, res: Result) -> None:
    """The stores' read methods for 100 entities (both views, 5 features) vs raw HMGETs."""
    plugin = benches[0]
    ids = [e["user_id"] for e in entity_batches(users, 100, 1, seed=7)[0]]
    entity_rows = {"user_id": ids}
    calls: dict[str, Callable[[], object]] = {}
    for b in benches:
        registry = b.store.registry
        prep = utils._prepare_entities_to_read_from_online_store(
            registry=registry, project=b.config.project, features=feature_refs(),
            entity_values=entity_rows, full_feature_names=False, native_entity_values=True,
        )  # fmt: skip
        join_key_values, grouped_refs, name_map, *_, template = prep
        calls[f"{b.label}_per_fv"] = _per_fv_call(b, grouped_refs, join_key_values, name_map, template)
    eks = [utils._get_entity_key_protos([{"user_id": _v(i)}])[0] for i in ids]
    online, config = plugin.online, plugin.config
    calls["plugin_online_read"] = lambda: online.online_read(config, plugin.batch_view, eks, BATCH_READ)
    keys = [online.key_for(config, plugin.batch_view, ek) for ek in eks]
    all_fields = [f"_ts:{BATCH_VIEW}", *BATCH_READ, f"_ts:{plugin.stream_view.name}", *STREAM_READ]
    batch_fields = [f"_ts:{BATCH_VIEW}", *BATCH_READ]

    def raw_pipeline(fields: list[str]) -> Callable[[], object]:
        def call() -> object:
            with r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, fields)
                return pipe.execute()

        return call

    calls["raw_hmget100_both"] = raw_pipeline(all_fields)
    calls["raw_hmget100_batch"] = raw_pipeline(batch_fields)
    calls["raw_hmget1"] = lambda: r.hmget(keys[0], all_fields)
    assert all(v is not None for reply in raw_pipeline(all_fields)() for v in reply)  # type: ignore[union-attr]
    samples, cpu = interleaved(calls, n, warmup=max(20, n // 10))
    for label, s in samples.items():
        res.add("read_cpu", label, cpu[label])
        res.add("read_p50", label, percentile(s, 50))
        res.add("read_p99", label, percentile(s, 99))
    log("reads: " + ", ".join(f"{k} {percentile(v, 50):.3f} ms" for k, v in samples.items()))


def _v(text: str) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value

    return Value(string_val=text)


def _per_fv_call(b: Bench, grouped_refs: Any, jkv: Any, name_map: Any, template: Any) -> Callable[[], object]:
    online, config = b.online, b.config

    def call() -> object:
        response = GetOnlineFeaturesResponse()
        response.CopyFrom(template)
        # Fresh feature lists per call: Feast's built-in store appends its _ts field to them.
        refs = [(table, list(features)) for table, features in grouped_refs]
        online._read_features_per_fv(config, refs, jkv, name_map, response, False, False)
        return response

    return call


# ---- driver ----


def one_run(args: argparse.Namespace, params: dict[str, int], run_no: int) -> Result:
    users = params["users"]
    res = Result(run_no)
    server: Any
    if args.cluster:
        server = LocalCluster(args.server, masters=3, replicas_per_master=0)
    else:
        server = LocalRedis(args.server)
    with server, tempfile.TemporaryDirectory(prefix="hexpire-bench-") as tmp:
        extra: dict[str, str] = {}
        if args.cluster:
            first = server.masters[0]
            with first.client() as c:
                res.server = f"{server_info(c)}, 3-master cluster"
            r = RedisCluster(host="127.0.0.1", port=first.port)
            extra = {"redis_type": "redis_cluster"}
        else:
            r = server.client()
            res.server = server_info(r)
        event_time = now_utc() - timedelta(hours=1)
        conn, root = server.connection_string, Path(tmp)
        benches = [
            make_bench("plugin", root, "hx", conn, {**PLUGIN_STORE, **extra}, users, event_time),
            make_bench("builtin", root, "builtin", conn, {**BUILTIN_STORE, **extra}, users, event_time),
        ]
        log(f"run {run_no}: {users:,} users on {res.server}")
        phases = args.phases
        if "write" in phases:
            write_phase(r, benches, users, params["rounds"], res, params["materialize_rounds"])
        flush(r)
        if "push" in phases:
            push_phase(benches, users, params["push1"], params["push100"], res)
        if "direct" in phases:
            direct_writer_phase(benches, users, params["direct"], res)
        load_both(r, benches, users)
        if "gof" in phases:
            gof_phase(r, benches, users, params, res, args.gof_sizes)
        if "read" in phases:
            read_phase(r, benches, users, params["read"], res)
        r.close()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10k users, fewer iterations (smoke run)")
    parser.add_argument("--server", choices=("redis", "valkey"), default="redis")
    parser.add_argument("--users", type=int, help="entities to write (default 100k, 10k with --quick)")
    parser.add_argument("--repeat", type=int, help="independent full runs (default 2, 1 with --quick)")
    parser.add_argument(
        "--phases", type=lambda t: t.split(","), default=list(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--cluster", action="store_true", help="a 3-master cluster (no replicas); phases gof and read only"
    )
    parser.add_argument(
        "--gof-sizes", type=lambda t: tuple(int(n) for n in t.split(",")), default=(1, 100),
        help="entities per get_online_features call in phase gof: 1, 100 or 1,100 (default)",
    )  # fmt: skip
    parser.add_argument("--gof1", type=int, help="1-entity get_online_features calls per store (phase gof)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown report to write")
    args = parser.parse_args()
    if not set(args.gof_sizes) <= {1, 100}:
        parser.error("--gof-sizes takes 1, 100 or 1,100")
    if args.cluster and not set(args.phases) <= {"gof", "read"}:
        parser.error("--cluster runs the phases gof and read only: add --phases gof,read")
    params = dict(QUICK if args.quick else FULL)
    params["users"] = args.users or params["users"]
    params["gof1"] = args.gof1 or params["gof1"]
    params["rounds"] = 1 if args.quick else 2
    params["materialize_rounds"] = 1 if args.quick else MATERIALIZE_ROUNDS
    repeat = args.repeat or (1 if args.quick else 2)
    info = machine_info()
    shown = [a for a in sys.argv[1:] if a != "--out" and a != str(args.out)]  # no local paths
    command = "python bench/run.py " + " ".join(shown)
    runs = []
    for n in range(1, repeat + 1):
        runs.append(one_run(args, params, n))
        text = render(runs, info, params, command.strip(), args.server)
        # the summary stays under the title, the other bench scripts' sections after this run's text
        top, kept = kept_sections(args.out, summary=True), kept_sections(args.out)
        title, _, body = text.partition("\n")
        args.out.write_text(f"{title}\n\n{top}{body.lstrip()}".rstrip() + "\n\n" + kept)
    print(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
