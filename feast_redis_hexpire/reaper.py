"""A watchdog process that stops our servers and removes their data dirs when their parent dies.

Why a watchdog and not ``prctl(PR_SET_PDEATHSIG)``: the parent-death signal fires when the
*thread* that forked the server exits, not the process (a server started from a worker thread
would be killed when that thread ends); it needs a ``preexec_fn``, which is unsafe in a process
with threads (the demo has several); it can only signal the server, so nobody would remove the
data directory after a SIGKILL; and a parent that dies between fork and prctl is missed. The
watchdog has none of these problems and costs one small process per parent process, whichever
number of servers that parent starts.

How: the first :func:`watch` starts ``python -I reaper.py`` in its own session with the read end
of a pipe as its stdin; the parent keeps the write end and sends one JSON line per server
(pid) or directory to watch, and one per server it stopped itself. When the parent exits in any
way (return, exception, SIGTERM, SIGHUP, SIGKILL, OOM kill) the kernel closes the write end; the
watchdog reads EOF, sends SIGTERM to every server still watched (SIGKILL after a grace period) and
removes every directory still watched. This file is run as a script: standard library only, no
package imports.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Optional

__all__ = ["forget", "watch", "watchdog_pid"]

GRACE_SECONDS = 5.0

_lock = threading.Lock()
_pipe: Optional[IO[bytes]] = None
_process: Optional[subprocess.Popen] = None
_tokens = 0


def _send(message: dict[str, Any]) -> None:
    assert _pipe is not None
    _pipe.write(json.dumps(message).encode() + b"\n")
    _pipe.flush()


def _start() -> None:
    global _pipe, _process
    read_end, write_end = os.pipe()  # both non-inheritable: later children do not hold them
    try:
        _process = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__)],
            stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(read_end)
    _pipe = os.fdopen(write_end, "wb")


def _forget_after_fork() -> None:
    # A forked child (multiprocessing) must not keep the parent's pipe open: its own servers get a
    # watchdog of their own on their first watch().
    global _pipe, _process
    if _pipe is not None:
        try:
            _pipe.close()
        except OSError:
            pass
    _pipe, _process = None, None


os.register_at_fork(after_in_child=_forget_after_fork)


def watch(pid: Optional[int] = None, path: Optional[str] = None) -> str:
    """Have the watchdog stop ``pid`` and/or remove ``path`` if this process dies first; returns
    the token to pass to :func:`forget` once this process has cleaned up itself."""
    global _tokens
    with _lock:
        if _pipe is None or (_process is not None and _process.poll() is not None):
            _start()
        _tokens += 1
        token = f"{os.getpid()}-{_tokens}"
        _send({"op": "watch", "token": token, "pid": pid, "path": path})
        return token


def forget(token: Optional[str]) -> None:
    """The parent stopped the server / removed the directory itself."""
    if token is None:
        return
    with _lock:
        if _pipe is not None:
            try:
                _send({"op": "forget", "token": token})
            except (OSError, ValueError):  # the watchdog is gone; nothing left to tell it
                pass


def watchdog_pid() -> Optional[int]:
    """The watchdog of this process, if it has started one."""
    return _process.pid if _process is not None else None


# ---- the watchdog process itself ----


def _open_pidfd(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)  # immune to pid reuse once opened
    except (ProcessLookupError, AttributeError, OSError):
        return None


def _signal(pid: int, pidfd: Optional[int], sig: int) -> None:
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, OSError):
        pass


def _exited(pid: int, pidfd: Optional[int]) -> bool:
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], 0)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watched: dict[str, tuple[Optional[int], Optional[int], Optional[str]]] = {}
    for line in sys.stdin.buffer:  # returns at EOF: the parent has exited
        message = json.loads(line)
        if message["op"] == "watch":
            pid = message["pid"]
            watched[message["token"]] = (pid, _open_pidfd(pid) if pid else None, message["path"])
        else:
            pid, pidfd, _ = watched.pop(message["token"], (None, None, None))
            if pidfd is not None:
                os.close(pidfd)
    servers = [(pid, pidfd) for pid, pidfd, _ in watched.values() if pid]
    for pid, pidfd in servers:
        _signal(pid, pidfd, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while servers and time.monotonic() < deadline:
        servers = [(pid, pidfd) for pid, pidfd in servers if not _exited(pid, pidfd)]
        time.sleep(0.05)
    for pid, pidfd in servers:
        _signal(pid, pidfd, signal.SIGKILL)
    for pid, pidfd in servers:  # a killed server may still write to its dir until it is gone
        end = time.monotonic() + GRACE_SECONDS
        while not _exited(pid, pidfd) and time.monotonic() < end:
            time.sleep(0.05)
    for _, _, path in watched.values():
        if path:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    _main()
