"""``feast-hexpire``: run a local server, inspect an entity's hash.

feast-hexpire local-redis [--kind redis|valkey] [--port N]
feast-hexpire inspect user u0001 [--repo DIR] [--json]
feast-hexpire layout [--repo DIR] [--json]
feast-hexpire settings
feast-hexpire init-sample DIR
feast-hexpire doctor [--repo DIR] [--json] [--sample N]
feast-hexpire demo [--port 8087] [--redis host:port] [--no-reset]
feast-hexpire build-features --count 500 --ttl-seconds 3600 [--seed 1] [--repo DIR] [--redis host:port]
feast-hexpire migrate --from host:port[,password=...] [--from-cluster] [--repo .] [--to host:port] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _local_redis(args: argparse.Namespace) -> int:
    from .local_redis import LocalRedis, exit_on_signals

    with exit_on_signals():  # Ctrl-C, SIGTERM, SIGHUP: stop the server, remove its temp dir
        server = LocalRedis(args.kind, port=args.port, data_dir=args.data_dir)
        try:
            server.start()
            print(f"{args.kind} listening on {server.connection_string}", flush=True)
            print(f"export REDIS_CONNECTION_STRING={server.connection_string}", flush=True)
            assert server.process is not None
            code = server.process.wait()
            print(f"{args.kind}-server exited on its own with code {code}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            server.stop()


def _inspect(args: argparse.Namespace) -> int:
    from feast import FeatureStore

    from .inspect import inspect_entity

    report = inspect_entity(FeatureStore(repo_path=args.repo), args.entity, args.id)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0 if report.exists else 3


def _layout(args: argparse.Namespace) -> int:
    from feast import FeatureStore

    from .describe import describe_views, owners_note

    store = FeatureStore(repo_path=args.repo)
    views = describe_views(store)
    if args.json:
        print(json.dumps([v.as_dict() for v in views], indent=2))
    else:
        print("\n\n".join([*(v.render() for v in views), owners_note(store)]))
    return 0


def _settings(args: argparse.Namespace) -> int:
    from .config import settings_table

    print(settings_table())
    return 0


def _init_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo.sample import init_sample

    path = init_sample(Path(args.dir))
    print(f"wrote the sample repo to {path}; next: cd {args.dir} && python generate_data.py", flush=True)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from feast import FeatureStore

    from .doctor import diagnose, exit_code, render
    from .exceptions import HexpireError

    try:
        findings = diagnose(FeatureStore(repo_path=args.repo), sample=args.sample)
    except HexpireError as e:  # unreachable, or no hash-field expiration: one line
        if args.json:
            print(json.dumps({"ok": False, "error": str(e), "checks": []}))
        else:
            print(f"ERROR    server       {e}")
        return 2
    if args.json:
        checks = [f.as_dict() for f in findings]
        print(json.dumps({"ok": exit_code(findings) == 0, "checks": checks}, indent=2))
    else:
        print(render(findings))
    return exit_code(findings)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _demo(args: argparse.Namespace) -> int:
    from .demo.server import run
    from .local_redis import exit_on_signals

    with exit_on_signals():  # SIGTERM and SIGHUP stop the demo (and its local Redis) like Ctrl-C
        try:
            return run(args)
        except KeyboardInterrupt:  # before the demo's own cleanup was in place: nothing to stop
            return 0


def _build_features(args: argparse.Namespace) -> int:
    from .demo.builder import run_cli

    return run_cli(args)


def _migrate(args: argparse.Namespace) -> int:
    from .config import RedisType
    from .migrate import migrate

    source_type = RedisType.redis
    if args.from_cluster:
        source_type = RedisType.redis_cluster
    elif args.from_sentinel:
        source_type = RedisType.redis_sentinel
    report = migrate(
        args.repo,
        os.path.expandvars(args.source),  # `--from '${OLD_REDIS}'` keeps a password out of `ps`
        source_type=source_type,
        sentinel_master=args.from_sentinel or "mymaster",
        destination=os.path.expandvars(args.to) if args.to else None,
        project=args.project,
        batch_size=args.batch_size,
        verify=args.verify,
        progress=not args.no_progress,
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render(verified=args.verify > 0))
    return 0 if report.verification.ok else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="feast-hexpire", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    local = commands.add_parser("local-redis", help="run Redis 8.2 or Valkey 9.1 on loopback until Ctrl-C")
    local.add_argument("--kind", choices=["redis", "valkey"], default="redis")
    local.add_argument("--port", type=int, default=None, help="default: a free port")
    local.add_argument("--data-dir", default=None, help="default: a temporary directory")
    local.set_defaults(run=_local_redis)

    inspect = commands.add_parser("inspect", help="show one entity's hash with key and field TTLs")
    inspect.add_argument("entity", help="entity name, e.g. user")
    inspect.add_argument("id", help="entity id, e.g. u0001")
    inspect.add_argument("--repo", default=os.environ.get("FEAST_REPO", "."))
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_inspect)

    views = commands.add_parser("layout", help="per view: mode, key pattern, TTLs and each feature's field")
    views.add_argument("--repo", default=os.environ.get("FEAST_REPO", "."))
    views.add_argument("--json", action="store_true", help="print JSON instead of text")
    views.set_defaults(run=_layout)

    settings = commands.add_parser("settings", help="print the online_store settings as a markdown table")
    settings.set_defaults(run=_settings)

    sample = commands.add_parser("init-sample", help="copy the sample Feast repo (project fs) to DIR")
    sample.add_argument("dir", help="target directory (created; must not hold the sample's files)")
    sample.set_defaults(run=_init_sample)

    doctor = commands.add_parser("doctor", help="check the repo's Redis server before users do")
    doctor.add_argument("--repo", default=os.environ.get("FEAST_REPO", "."))
    doctor.add_argument("--json", action="store_true", help="print JSON for automation")
    doctor.add_argument(
        "--sample", type=_positive_int, default=20, help="keys sampled per entity (default 20)"
    )
    doctor.set_defaults(run=_doctor)

    from .demo.server import add_arguments

    demo = commands.add_parser("demo", help="the interactive demo: local Redis, worker, web page")
    add_arguments(demo)
    demo.set_defaults(run=_demo)

    build = commands.add_parser("build-features", help="bulk-load synthetic users via feast materialize")
    build.add_argument("--count", default="500", help="users u0001..uN (default 500)")
    build.add_argument("--ttl-seconds", default="86400", help="key-level TTL (default 86400)")
    build.add_argument("--seed", default="1", help="random seed (default 1)")
    build.add_argument(
        "--repo", default=None, help="a Feast repo with the sample views (default: the demo's)"
    )
    build.add_argument(
        "--redis", default=None, metavar="CONNECTION", help="connection string host:port[,...]"
    )
    build.set_defaults(run=_build_features)

    move = commands.add_parser(
        "migrate", help="copy a project's online data from Feast's built-in type: redis store into this one"
    )
    move.add_argument(
        "--from", dest="source", required=True, metavar="CONNECTION",
        help="the built-in store's connection_string (host:port[,password=...]); ${VAR} is expanded",
    )  # fmt: skip
    where = move.add_mutually_exclusive_group()
    where.add_argument("--from-cluster", action="store_true", help="the source is a Redis Cluster")
    where.add_argument(
        "--from-sentinel", metavar="MASTER", default=None, help="the source is behind sentinels"
    )
    move.add_argument("--repo", default=os.environ.get("FEAST_REPO", "."), help="the Feast repo (default: .)")
    move.add_argument(
        "--to", default=None, metavar="CONNECTION", help="default: the repo's connection_string"
    )
    move.add_argument("--project", default=None, help="default: the repo's project")
    move.add_argument("--batch-size", type=int, default=500, help="keys per SCAN batch and pipeline")
    move.add_argument(
        "--verify", type=int, default=100, metavar="N", help="entities compared per entity kind"
    )
    move.add_argument("--json", action="store_true", help="print the report as JSON")
    move.add_argument("--no-progress", action="store_true", help="no progress bar")
    move.set_defaults(run=_migrate)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Exception as e:  # one line, no traceback: the message names what was wrong
        print(f"feast-hexpire {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
