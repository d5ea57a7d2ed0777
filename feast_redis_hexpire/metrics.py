"""Prometheus metrics of the store (extra ``metrics``: ``pip install feast-redis-hexpire[metrics]``).

Without ``prometheus_client`` every function here does nothing. With it, the store counts::

    feast_hexpire_rows_total{view, mode, outcome}      outcome: written, skipped_not_newer,
                                                         dropped_expired, failed
    feast_hexpire_script_errors_total{view, error}     error: field_ttl, no_permission, refused
    feast_hexpire_reads_total{view, status}            entity rows read: present, not_found,
                                                         outside_max_age
    feast_hexpire_write_batch_seconds{mode}            round trip of one write batch
    feast_hexpire_read_seconds                         round trip of one read (all views)
    feast_hexpire_connection_errors_total{op}          reads and write batches that failed on the
                                                         connection after the retries (op: write, read)
    feast_hexpire_connection_failures_total            failed attempts on a connection; redis-py
                                                         retries each while `retries` allows, so
                                                         retries = failures - errors

Labels hold view names and fixed words only: never entity ids, keys or connection strings.

Reads are recorded in two steps, so a read does not pay prometheus_client's per-value cost (in
its multiprocess mode, which Feast switches on in every process, each value written is a locked
write into a memory-mapped file): a read appends its round trip and its entity rows by status
to an in-process tally, and a daemon thread writes the tally at most ``METRICS_FLUSH_SECONDS``
(0.5 s) after the first read in it: the counts summed (one write per view and status instead of
one per read), the round trips observed one by one (prometheus_client has no public way to add
many observations at once), off the reads' path. So a scrape of Feast's endpoint sees every
read within about half a second (plus the time the thread waits for the GIL and takes to
write); a scrape of this process's own registry (``metrics_port``, ``REGISTRY.collect()``)
writes the tally first and sees every read at once; the tally is written at process exit too;
a forked child starts with an empty tally (its parent writes its own). Writes and errors are
recorded when they happen.

``prometheus_client`` is imported on the first recorded value, not at import: under ``feast
serve --metrics`` Feast switches prometheus_client to its multiprocess mode (an environment
variable read when prometheus_client is first imported), and the store's metrics then appear on
Feast's metrics endpoint next to Feast's own. A materialization job without a feature server
sets ``metrics_port`` and gets prometheus_client's own HTTP endpoint (:func:`serve`).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
import time
from typing import Any

from .constants import METRICS_FLUSH_SECONDS

__all__ = [
    "available",
    "connection_error",
    "flush_reads",
    "read_seconds",
    "reads",
    "connection_failure",
    "rows",
    "script_error",
    "serve",
    "write_batch_seconds",
]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_served: set[int] = set()
_children: dict[tuple[str, tuple[str, ...]], Any] = {}  # (metric, label values) -> child
_AVAILABLE = importlib.util.find_spec("prometheus_client") is not None

# Round trips of a batch or a read: from a loopback HMGET (~0.1 ms) to a slow cross-zone batch.
_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def available() -> bool:
    """True when prometheus_client is installed (metrics are recorded)."""
    return _AVAILABLE


def _get() -> dict[str, Any] | None:
    global _metrics
    if _metrics is not None or not _AVAILABLE:
        return _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import REGISTRY, Counter, Histogram

            REGISTRY.register(_FlushOnCollect())  # first: a scrape of this registry flushes, then reads
            _metrics = {
                "rows": Counter(
                    "feast_hexpire_rows", "Rows of online writes by outcome.", ["view", "mode", "outcome"]
                ),
                "script_errors": Counter(
                    "feast_hexpire_script_errors",
                    "Write batches the server refused (HPEXPIRE failures, ACL, other error replies).",
                    ["view", "error"],
                ),
                "reads": Counter(
                    "feast_hexpire_reads", "Entity rows read, by view and status.", ["view", "status"]
                ),
                "write_seconds": Histogram(
                    "feast_hexpire_write_batch_seconds",
                    "Round trip of one write batch.",
                    ["mode"],
                    buckets=_BUCKETS,
                ),
                "read_seconds": Histogram(
                    "feast_hexpire_read_seconds", "Round trip of one online read.", buckets=_BUCKETS
                ),
                "connection_errors": Counter(
                    "feast_hexpire_connection_errors",
                    "Reads and write batches that failed on the connection (after retries).",
                    ["op"],
                ),
                "connection_failures": Counter(
                    "feast_hexpire_connection_failures",
                    "Failed attempts on a connection (redis-py retries each while `retries` allows).",
                ),
            }
    return _metrics


def _child(metric: str, *labels: str) -> Any:
    """The labelled child of a metric, cached: ``labels()`` costs more than the increment."""
    child = _children.get((metric, labels))
    if child is None:
        m = _get()
        assert m is not None
        child = _children[(metric, labels)] = m[metric].labels(*labels)
    return child


def rows(view: str, mode: str, outcome: str, count: int) -> None:
    if _AVAILABLE and count:
        _child("rows", view, mode, outcome).inc(count)


def script_error(view: str, error: str) -> None:
    if _AVAILABLE:
        _child("script_errors", view, error).inc()


def reads(view: str, present: int, not_found: int, outside_max_age: int) -> None:
    """Entity rows of one view of a read, by status: tallied (:func:`flush_reads` writes them)."""
    if _AVAILABLE:
        _tally_reads.append((view, present, not_found, outside_max_age))
        if not _flusher.armed:  # after the append: a flush that began before it re-arms
            _flusher.arm()


def write_batch_seconds(mode: str, seconds: float) -> None:
    if _AVAILABLE:
        _child("write_seconds", mode).observe(seconds)


def read_seconds(seconds: float) -> None:
    """The round trip of one read: tallied (:func:`flush_reads` observes it)."""
    if _AVAILABLE:
        _tally_seconds.append(seconds)
        if not _flusher.armed:
            _flusher.arm()


# ---- the reads' tally, written by a daemon thread within METRICS_FLUSH_SECONDS ----

# Appended by reads without a lock (a list's append is atomic); a flush takes the first n entries
# and deletes exactly those, so an entry appended meanwhile waits for the next flush.
_tally_reads: list[tuple[str, int, int, int]] = []  # (view, present, not_found, outside_max_age)
_tally_seconds: list[float] = []  # round trips not yet observed
_flush_lock = threading.Lock()
_OBSERVES_PER_TURN = 64  # observations between two yields of the GIL (~0.2 ms): reads go on


def flush_reads() -> None:
    """Write the tally of reads to prometheus_client: the counts summed (one write per view and
    status), each round trip observed. Called by the flusher thread, a scrape of this process's
    registry and at exit; one flush at a time (a scrape waits for the thread's flush to end, so
    it sees every read before it); never raises."""
    with _flush_lock:
        _flusher.armed = False  # before taking the entries: a read appending after this re-arms
        reads, seconds = _take(_tally_reads), _take(_tally_seconds)
        if reads or seconds:
            _write(reads, seconds)


def _write(reads: list[tuple[str, int, int, int]], seconds: list[float]) -> None:
    counts: dict[tuple[str, str], int] = {}
    for view, present, not_found, outside_max_age in reads:
        for status, count in (
            ("present", present),
            ("not_found", not_found),
            ("outside_max_age", outside_max_age),
        ):
            if count:
                counts[(view, status)] = counts.get((view, status), 0) + count
    try:  # metrics never fail a read
        for (view, status), count in counts.items():
            _child("reads", view, status).inc(count)
        m = _get()
        assert m is not None
        histogram = m["read_seconds"]
        for n, value in enumerate(seconds, 1):
            histogram.observe(value)
            if n % _OBSERVES_PER_TURN == 0:
                time.sleep(0)  # let the threads serving reads run
    except Exception:  # noqa: BLE001
        logger.exception("could not write the reads' metrics")


def _take(entries: list) -> list:
    n = len(entries)
    taken = entries[:n]
    del entries[:n]
    return taken


class _Flusher:
    """A daemon thread that writes the tally ``METRICS_FLUSH_SECONDS`` after a read armed it;
    started by the first read in each process."""

    def __init__(self) -> None:
        self.armed = False  # a flush is due: the thread is sleeping towards it
        self._wake = threading.Event()
        self._pid = 0
        self._lock = threading.Lock()

    def arm(self) -> None:
        self.armed = True
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    try:
                        threading.Thread(target=self._run, name="feast-hexpire-metrics", daemon=True).start()
                    except RuntimeError:  # no new threads (interpreter shutdown): the exit flush writes
                        return
                    self._pid = os.getpid()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(METRICS_FLUSH_SECONDS)
            flush_reads()

    def forked(self) -> None:
        """In a forked child: the parent's tally is the parent's to write; no thread runs yet."""
        global _flush_lock
        del _tally_reads[:], _tally_seconds[:]
        _flush_lock = threading.Lock()
        self.armed = False
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pid = 0


class _FlushOnCollect:
    """Registered first in prometheus_client's registry: a scrape of this process's registry
    writes the tally before the metrics are read."""

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        flush_reads()
        return []


_flusher = _Flusher()
atexit.register(flush_reads)
os.register_at_fork(after_in_child=_flusher.forked)


def connection_error(op: str) -> None:
    if _AVAILABLE:
        _child("connection_errors", op).inc()


def connection_failure() -> None:
    m = _get()
    if m is not None:
        m["connection_failures"].inc()


def serve(port: int) -> bool:
    """Serve prometheus_client's default registry on ``port`` (once per port and process), for
    a job that runs without ``feast serve``. False (and a warning) when prometheus_client is
    missing or the port is taken."""
    if not _AVAILABLE:
        logger.warning(
            "metrics_port %d: prometheus_client is missing (extra: feast-redis-hexpire[metrics])", port
        )
        return False
    with _lock:
        if port in _served:
            return True
        from prometheus_client import start_http_server

        try:
            start_http_server(port)
        except OSError as e:
            logger.warning("metrics_port %d: cannot serve metrics: %s", port, e)
            return False
        _served.add(port)
    _get()
    return True
