"""The demo's live series: read latency percentiles, writes per second, fresh users, key memory.

Every read the demo serves records its latency here. A sampler thread (``Sampler.start``) adds
one point per interval, computed from the reads of the last ``WINDOW_SECONDS`` seconds and from
the store's own counters; the page draws the points. The sampler also makes a few probe reads
(``get_online_features`` of the watched user, and a small batch) so that the latency charts move
while nobody clicks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Metrics", "Sampler", "percentile", "SERIES"]

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 10.0  # the percentiles of a point cover the reads of this many seconds
MAX_POINTS = 600  # ten minutes at one point per second
SERIES = (
    "t",  # unix seconds of the point
    "single_p50_ms",
    "single_p99_ms",
    "batch_p50_ms",
    "batch_p99_ms",
    "writes_per_second",
    "fresh_users",
    "live_users",
    "watched_memory_bytes",
)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Metrics:
    """Read latencies and the point history, shared by the request threads and the sampler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: deque[tuple[float, str, float]] = deque()  # (monotonic, kind, ms)
        self._points: deque[dict[str, Any]] = deque(maxlen=MAX_POINTS)
        self._written: tuple[float, int] | None = None  # (monotonic, rows written) of the last point

    def record(self, kind: str, ms: float) -> None:
        """One read's latency; ``kind`` is "single" or "batch"."""
        now = time.monotonic()
        with self._lock:
            self._reads.append((now, kind, ms))
            while self._reads and self._reads[0][0] < now - WINDOW_SECONDS:
                self._reads.popleft()

    def latencies(self, kind: str) -> list[float]:
        cutoff = time.monotonic() - WINDOW_SECONDS
        with self._lock:
            return [ms for t, k, ms in self._reads if k == kind and t >= cutoff]

    def add_point(self, written: int, fresh: int, live: int, memory: int | None) -> dict[str, Any]:
        """A point from the store's counters now and the reads of the window."""
        now = time.monotonic()
        single, batch = self.latencies("single"), self.latencies("batch")
        with self._lock:
            rate = None
            if self._written is not None and now > self._written[0]:
                rate = round(max(0, written - self._written[1]) / (now - self._written[0]), 2)
            self._written = (now, written)
            point = {
                "t": round(time.time(), 3),
                "single_p50_ms": _round(percentile(single, 0.5)),
                "single_p99_ms": _round(percentile(single, 0.99)),
                "batch_p50_ms": _round(percentile(batch, 0.5)),
                "batch_p99_ms": _round(percentile(batch, 0.99)),
                "writes_per_second": rate,
                "fresh_users": fresh,
                "live_users": live,
                "watched_memory_bytes": memory,
            }
            self._points.append(point)
            return point

    def series(self) -> dict[str, list[Any]]:
        """The history as columns (one list per series, oldest first), as charts take it."""
        with self._lock:
            points = list(self._points)
        return {name: [p[name] for p in points] for name in SERIES}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Sampler:
    """A daemon thread that calls ``sample()`` every ``interval`` seconds until stopped."""

    def __init__(self, sample: Callable[[], Any], interval: float = 1.0) -> None:
        self.sample = sample
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, name="demo-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - a failed sample is a gap in the chart, not a crash
                logger.warning("demo sample failed: %s", e)
