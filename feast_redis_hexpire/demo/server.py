"""``feast-hexpire demo``: the whole demo in one command.

Order matters: the HTTP port is bound first, so a port conflict fails before any data is
touched; then the local Redis starts (unless ``--redis`` is given), the demo's Feast repo is
written and applied, the demo's keys are reset and reseeded (unless ``--no-reset``), and the
worker and the server run until Ctrl-C, which stops worker, server and local Redis in turn.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["PortInUse", "ServerThread", "add_arguments", "bind", "run"]


class PortInUse(OSError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; PortInUse with a clear message if it is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"http://{host}:{port} is already in use (another demo?); nothing was changed. "
                f"Pick another port with --port."
            ) from None
        raise
    sock.listen(128)
    return sock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8087, help="HTTP port (default 8087)")
    p.add_argument(
        "--redis",
        default=None,
        metavar="CONNECTION",
        help="Redis connection string (host:port[,password=...]); default: start a local Redis",
    )
    p.add_argument("--kind", choices=["redis", "valkey"], default="redis", help="local server kind")
    p.add_argument("--key-prefix", default="{project}:", help="key prefix (default '{project}:' -> fs:user:)")
    p.add_argument(
        "--value-layout",
        choices=["fields", "packed"],
        default="fields",
        help="value_layout of the demo's store (default fields: one hash field per feature)",
    )
    p.add_argument("--users", type=int, default=200, help="users bulk-loaded at startup (default 200)")
    p.add_argument("--batch-ttl-seconds", type=int, default=86400, help="key TTL of the startup load")
    p.add_argument("--streaming-ttl-seconds", type=int, default=300, help="per-field TTL of pushes")
    p.add_argument("--users-per-tick", type=int, default=5)
    p.add_argument("--tick-seconds", type=float, default=1.0)
    p.add_argument("--no-reset", action="store_true", help="keep existing data; no reset, no reseed")
    p.add_argument("--paused", action="store_true", help="start with the streaming worker paused")
    p.add_argument("--work-dir", default=None, help="the demo's Feast repo (default: a temp dir per port)")


def _check(args: argparse.Namespace) -> None:
    from .builder import check_count, check_ttl
    from .core import check_prefix

    check_count(args.users, "--users")
    check_ttl(args.batch_ttl_seconds, "--batch-ttl-seconds")
    check_ttl(args.streaming_ttl_seconds, "--streaming-ttl-seconds")
    check_count(args.users_per_tick, "--users-per-tick", 10_000)
    if not 0 < args.tick_seconds <= 3600:
        raise ValueError(f"--tick-seconds must be in (0, 3600], got {args.tick_seconds}")
    check_prefix(args.key_prefix.replace("{project}", "fs"))


def run(args: argparse.Namespace) -> int:
    from ..local_redis import LocalRedis, require_local_extra, server_binary

    require_local_extra("feast-hexpire demo", "fastapi", "starlette", "uvicorn")
    if args.redis is None:
        server_binary(args.kind)  # the [local] extra's server, before anything else happens
    import uvicorn

    from . import repo as demo_repo
    from .app import create_app
    from .core import Demo

    _check(args)
    sock = bind(args.host, args.port)  # before anything touches data
    local: Optional[LocalRedis] = None
    demo: Optional[Demo] = None
    try:
        if args.redis is None:
            local = LocalRedis(args.kind).start()
            print(f"Started a local {args.kind} server at {local.connection_string}", flush=True)
        connection = args.redis or local.connection_string  # type: ignore[union-attr]
        work = Path(args.work_dir or Path(tempfile.gettempdir()) / f"feast-hexpire-demo-{args.port}")
        repo = demo_repo.write_demo_repo(
            work,
            connection,
            key_prefix=args.key_prefix,
            key_ttl_seconds=args.batch_ttl_seconds,
            stream_field_ttl_seconds=args.streaming_ttl_seconds,
            value_layout=args.value_layout,
        )
        demo = Demo.create(repo, users_per_tick=args.users_per_tick, interval=args.tick_seconds)
        if not args.no_reset:
            print(f"Dropping the demo's users under '{demo.prefix}user:*' (pass --no-reset to keep them).")
            demo.reset()
            loaded = demo.bulk_load(args.users, args.batch_ttl_seconds)
            print(f"Materialized {loaded['count']} user(s) in {loaded['seconds']}s.", flush=True)
        if args.paused:
            demo.worker.pause()
        demo.start()
        url = f"http://{args.host}:{args.port}"
        print(f"Feast repo: {repo}", flush=True)
        print(
            f"Redis at {connection.split(',')[0]}, key prefix '{demo.prefix}' (batch TTL "
            f"{demo.batch_ttl_seconds}s, streaming TTL {demo.streaming_ttl_seconds}s); "
            f"{len(demo.population)} user(s) known; worker {'paused' if args.paused else 'running'}.",
            flush=True,
        )
        print(f"Demo listening on {url}  (Ctrl-C stops it)", flush=True)
        config = uvicorn.Config(create_app(demo), log_level="warning", lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if demo is not None:
            demo.stop()
        sock.close()
        if local is not None:
            local.stop()
        print("Demo stopped.", file=sys.stderr, flush=True)
    return 0


class ServerThread:
    """The app served by uvicorn on an already bound socket in a background thread (for tests
    and notebooks): ``with ServerThread(app) as url: ...``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
