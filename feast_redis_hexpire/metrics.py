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

``prometheus_client`` is imported on the first recorded value, not at import: under ``feast
serve --metrics`` Feast switches prometheus_client to its multiprocess mode (an environment
variable read when prometheus_client is first imported), and the store's metrics then appear on
Feast's metrics endpoint next to Feast's own. A materialization job without a feature server
sets ``metrics_port`` and gets prometheus_client's own HTTP endpoint (:func:`serve`).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from typing import Any

__all__ = [
    "available",
    "connection_error",
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
            from prometheus_client import Counter, Histogram

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
    if not _AVAILABLE:
        return
    if present:
        _child("reads", view, "present").inc(present)
    if not_found:
        _child("reads", view, "not_found").inc(not_found)
    if outside_max_age:
        _child("reads", view, "outside_max_age").inc(outside_max_age)


def write_batch_seconds(mode: str, seconds: float) -> None:
    if _AVAILABLE:
        _child("write_seconds", mode).observe(seconds)


def read_seconds(seconds: float) -> None:
    m = _get()
    if m is not None:
        m["read_seconds"].observe(seconds)


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
