"""cProfile of the plugin's hot paths: a batch write, get_online_features for 1 and 100 entities,
the store's own read of 100 entities and the direct streaming writer.

    python bench/profile_paths.py [--users 20000] [--top 25] [--store plugin|builtin]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from feast import utils
from feast.protos.feast.types.Value_pb2 import Value

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BATCH_READ, entity_batches, flush, load_both  # noqa: E402
from workload import (  # noqa: E402
    BUILTIN_STORE,
    PLUGIN_STORE,
    STREAM_VIEW,
    batch_proto_rows,
    feature_refs,
    make_bench,
    now_utc,
    push_frames,
)

from feast_redis_hexpire.local_redis import LocalRedis  # noqa: E402
from feast_redis_hexpire.writer import StreamWriter  # noqa: E402


def profile(title: str, fn: Callable[[], object], repeat: int, top: int) -> None:
    fn()  # warm
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeat):
        fn()
    prof.disable()
    total = sum(row[2] for row in pstats.Stats(prof).stats.values())  # type: ignore[attr-defined]
    print(f"\n===== {title}: {repeat} call(s), {total / repeat * 1000:.3f} ms per call under cProfile =====")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(top)
        body = out.getvalue()
        print(body[body.index("ncalls") :].rstrip() if "ncalls" in body else body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--store", choices=("plugin", "builtin"), default="plugin")
    parser.add_argument("--server", choices=("redis", "valkey"), default="redis")
    args = parser.parse_args()
    with LocalRedis(args.server) as server, tempfile.TemporaryDirectory(prefix="hexpire-prof-") as tmp:
        r = server.client()
        event_time = now_utc() - timedelta(hours=1)
        conn, root, users = server.connection_string, Path(tmp), args.users
        benches = [
            make_bench("plugin", root, "hx", conn, PLUGIN_STORE, users, event_time),
            make_bench("builtin", root, "builtin", conn, BUILTIN_STORE, users, event_time),
        ]
        b = benches[0] if args.store == "plugin" else benches[1]
        rows = batch_proto_rows(b)

        def write() -> None:
            flush(r)
            b.write(b.batch_view, rows)

        profile(f"{b.label} online_write_batch {args.users} batch rows", write, 1, args.top)
        load_both(r, benches, args.users)
        refs = feature_refs()
        one = entity_batches(args.users, 1, 1, seed=1)[0]
        hundred = entity_batches(args.users, 100, 1, seed=2)[0]
        gof = b.store.get_online_features
        profile(f"{b.label} get_online_features 1 entity", lambda: gof(refs, one), 500, args.top)
        profile(f"{b.label} get_online_features 100 entities", lambda: gof(refs, hundred), 100, args.top)
        eks = [
            utils._get_entity_key_protos([{"user_id": Value(string_val=e["user_id"])}])[0] for e in hundred
        ]
        read = b.online.online_read
        profile(
            f"{b.label} online_read 100 entities, batch view",
            lambda: read(b.config, b.batch_view, eks, list(BATCH_READ)),
            300,
            args.top,
        )
        if b.label == "plugin":  # the direct streaming writer, 1 row per call
            writer = StreamWriter(b.store, STREAM_VIEW)
            later = now_utc() + timedelta(hours=3)
            frames = push_frames(args.users, 1, 501, later, seed=3)
            rows = iter([f.to_dict("records")[0] for f in frames])
            profile("plugin StreamWriter.write, 1 row", lambda: writer.write(next(rows)), 500, args.top)
        r.close()


if __name__ == "__main__":
    main()
