"""Shared by the examples: a Redis to talk to and a copy of the sample repo ready to use.

Uses ``$REDIS_CONNECTION_STRING`` when set; otherwise starts a local Redis 8.2 for the run. Each
example works in its own fresh copy of the sample repo (``REPO``, under the system temp
directory, named after the example), so its data and registry never touch a repo of yours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from feast_redis_hexpire.demo.sample import init_sample
from feast_redis_hexpire.local_redis import LocalRedis


def example_repo(name: str) -> Path:
    """A fresh copy of the sample repo for one example, with its own data dir
    (`feast-hexpire init-sample DIR` makes the same copy)."""
    path = Path(tempfile.gettempdir()) / f"feast-hexpire-example-{name}"
    shutil.rmtree(path, ignore_errors=True)
    return init_sample(path)


REPO = example_repo(Path(sys.argv[0]).stem or "example")


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    configured = os.environ.get("REDIS_CONNECTION_STRING")
    if configured:
        print(f"Using Redis at {configured.split(',')[0]}")
        yield configured
        return
    with LocalRedis("redis") as server:
        print(f"Started a local Redis 8.2 at {server.connection_string} (stopped at exit)")
        os.environ["REDIS_CONNECTION_STRING"] = server.connection_string
        try:
            yield server.connection_string
        finally:
            del os.environ["REDIS_CONNECTION_STRING"]


def feast(*args: str) -> None:
    """Run the real feast CLI in the sample repo, as a user would."""
    print(f"$ feast {' '.join(args)}")
    subprocess.run([sys.executable, "-m", "feast.cli.cli", *args], cwd=REPO, check=True)


def generate_data(count: int, seed: int = 1) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "generate_data.py"), "--count", str(count), "--seed", str(seed)],
        check=True,
    )
