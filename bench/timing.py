"""Timing helpers: interleaved latency sampling, percentiles and the server's CPU time."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``samples``."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def interleaved(
    calls: dict[str, Callable[[], object]], iterations: int, warmup: int, block: int = 50
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Latency samples (ms) of every call and its mean client CPU time per call (ms; this
    process only, so much less disturbed by other processes than wall time), taken in blocks
    of ``block`` calls per store, the order of the stores alternating each round, so
    background noise on a shared machine lands on all of them alike.

    Blocks, not single calls: Feast keeps one process-wide cache of resolved feature refs that
    is cleared whenever a different registry asks, so alternating two FeatureStores call by call
    would rebuild it on every call (a cost no single-store server pays). The first call of each
    block re-warms it and is not counted."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, float] = {name: 0.0 for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample would be charged to whichever store ran
    try:
        for rnd in range(-(-iterations // block)):
            for name in names if rnd % 2 == 0 else names[::-1]:
                fn = calls[name]
                fn()
                cpu_start = time.process_time()
                for _ in range(min(block, iterations - rnd * block)):
                    start = time.perf_counter_ns()
                    fn()
                    samples[name].append((time.perf_counter_ns() - start) / 1e6)
                cpu[name] += time.process_time() - cpu_start
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples, {name: cpu[name] * 1000 / len(samples[name]) for name in names}


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    return timed_cpu(fn)[0]


def timed_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of one call."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def server_cpu(*clients: Any) -> float:
    """CPU seconds of the servers' main threads, where commands and scripts run: ``INFO cpu``
    ``used_cpu_user_main_thread + used_cpu_sys_main_thread`` (Redis >= 6.2, Valkey), which leaves
    out the background threads (lazy free, jemalloc's purging); the whole process where absent.
    Summed over ``clients`` (one per server: a cluster's masters)."""
    total = 0.0
    for c in clients:
        info = c.info("cpu")
        suffix = "_main_thread" if "used_cpu_user_main_thread" in info else ""
        total += float(info[f"used_cpu_user{suffix}"]) + float(info[f"used_cpu_sys{suffix}"])
    return total
