"""``feast-hexpire``: run a local server, inspect an entity's hash.

feast-hexpire local-redis [--kind redis|valkey] [--port N]
feast-hexpire inspect user u0001 [--repo feature_repo] [--json]
feast-hexpire settings
feast-hexpire doctor [--repo feature_repo] [--json] [--sample N]
feast-hexpire demo [--port 8087] [--redis host:port] [--no-reset]
feast-hexpire build-features --count 500 --ttl-seconds 3600 [--seed 1] [--repo DIR] [--redis host:port]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _local_redis(args: argparse.Namespace) -> int:
    from .local_redis import LocalRedis

    server = LocalRedis(args.kind, port=args.port, data_dir=args.data_dir).start()
    print(f"{args.kind} listening on {server.connection_string}", flush=True)
    print(f"export REDIS_CONNECTION_STRING={server.connection_string}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        assert server.process is not None
        server.process.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from feast import FeatureStore

    from .inspect import inspect_entity

    report = inspect_entity(FeatureStore(repo_path=args.repo), args.entity, args.id)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0 if report.exists else 3


def _settings(args: argparse.Namespace) -> int:
    from .config import settings_table

    print(settings_table())
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

    return run(args)


def _build_features(args: argparse.Namespace) -> int:
    from .demo.builder import run_cli

    return run_cli(args)


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
    inspect.add_argument("--repo", default=os.environ.get("FEAST_REPO", "feature_repo"))
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_inspect)

    settings = commands.add_parser("settings", help="print the online_store settings as a markdown table")
    settings.set_defaults(run=_settings)

    doctor = commands.add_parser("doctor", help="check the repo's Redis server before users do")
    doctor.add_argument("--repo", default=os.environ.get("FEAST_REPO", "feature_repo"))
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
