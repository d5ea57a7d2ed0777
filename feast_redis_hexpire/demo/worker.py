"""The streaming worker: at a fixed rate, push fresh streaming features for random known users.

The demo's stand-in for Flink or Kafka Streams. Each tick picks ``users_per_tick`` users at
random from the population (the users of the last bulk loads, as the offline source lists them;
never a SCAN of the keyspace), generates the seed's five streaming features and writes them with
``FeatureStore.push()`` on the push source, one user per push so every write is counted exactly.

A user whose hash has lost its batch timestamp field (expired or reset) is skipped: pushing to it
would create a streaming-only hash. The check is one pipelined HEXISTS per tick, just before the
pushes; a key that expires in the microseconds between check and push gets a streaming-only hash
whose fields all carry their TTL, so it disappears on its own and is never picked again (the
check fails for it from then on).

The watched user (the one the page shows, ``watched``) is one of every tick's users while it is
in the population, so the page's user always has fresh streaming data while the worker runs.

Ticks run on absolute deadlines ``start + k * interval``, so the period does not drift by the
tick's own duration; a tick that overruns skips the deadlines it missed (counted) instead of
bursting to catch up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from feast import FeatureStore

from ..synth import streaming_frame
from ..views import ViewLayout
from . import repo as demo_repo

__all__ = ["StreamingWorker", "WorkerCounters", "next_tick"]

logger = logging.getLogger(__name__)


@dataclass
class WorkerCounters:
    ticks: int = 0  # ticks completed (a tick with failed writes still completes)
    writes: int = 0  # rows pushed successfully
    failed_writes: int = 0  # pushes that raised
    skipped_missing: int = 0  # users picked whose batch hash was gone
    failed_ticks: int = 0  # ticks that raised before or during the pushes
    missed_deadlines: int = 0  # deadlines skipped because a tick overran
    last_error: str | None = None
    last_tick_ms: float = 0.0


def next_tick(start: float, interval: float, k: int, now: float) -> tuple[int, int]:
    """After tick ``k`` (due at ``start + k * interval``) ends at ``now``: the next tick's number
    and how many deadlines were missed. Deadlines stay on the grid whatever a tick costs."""
    due = int((now - start) // interval) + 1  # first deadline strictly after now
    nxt = max(k + 1, due)
    return nxt, nxt - k - 1


class StreamingWorker:
    def __init__(
        self,
        store: FeatureStore,
        population: Callable[[], Sequence[str]],
        users_per_tick: int = 5,
        interval: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if users_per_tick < 1:
            raise ValueError(f"users_per_tick must be >= 1, got {users_per_tick}")
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.store = store
        self.population = population
        self.users_per_tick = users_per_tick
        self.interval = interval
        self.rng = random.Random(seed)
        self.counters = WorkerCounters()
        self._cond = threading.Condition()
        self._paused = False
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._reschedule = False
        self.watched: str | None = None  # always one of a tick's users while it is known
        self._keys = demo_repo.key_builder(store)

    # ---- control ----

    @property
    def running(self) -> bool:
        return not self._paused

    @property
    def busy(self) -> bool:
        return self._busy

    def start(self) -> StreamingWorker:
        self._thread = threading.Thread(target=self._loop, name="streaming-worker", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """No tick starts after this returns; a tick already running finishes (see wait_for_idle)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def set_rate(self, users_per_tick: int, interval: float) -> None:
        """Change the rate; the schedule restarts from now on the new interval."""
        if users_per_tick < 1:
            raise ValueError(f"users_per_tick must be >= 1, got {users_per_tick}")
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        with self._cond:
            self.users_per_tick, self.interval = users_per_tick, interval
            self._reschedule = True
            self._cond.notify_all()

    def wait_for_idle(self, timeout: float | None = None) -> bool:
        """Wait until no tick is running; False if one still runs after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "running": not self._paused,
                "busy": self._busy,
                "users_per_tick": self.users_per_tick,
                "interval_seconds": self.interval,
                "watched": self.watched,
                **self.counters.__dict__,
            }

    # ---- the loop ----

    def _loop(self) -> None:
        start = time.monotonic()
        k = 1
        while True:
            deadline = start + k * self.interval
            with self._cond:
                # Wake at the absolute deadline (or on stop or a new rate); pausing leaves the
                # schedule alone.
                self._cond.wait_for(
                    lambda: self._stopping or self._reschedule, max(0.0, deadline - time.monotonic())
                )
                if self._stopping:
                    return
                if self._reschedule:
                    self._reschedule = False
                    start, k = time.monotonic(), 1
                    continue
                run = not self._paused
                self._busy = run
            if run:
                try:
                    self.tick()
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
            k, missed = next_tick(start, self.interval, k, time.monotonic())
            if missed:
                with self._cond:
                    self.counters.missed_deadlines += missed

    def _alive(self, users: Sequence[str]) -> list[bool]:
        """Which users still have their batch hash (one pipelined HEXISTS round trip)."""
        client = self.store._get_provider().online_store.client(self.store.config)  # type: ignore[attr-defined]
        view = self.store.get_feature_view(demo_repo.BATCH_VIEW, allow_registry_cache=True)
        ts = ViewLayout.of(self.store.config, view).ts_field  # value_layout: packed: the view's field
        with client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hexists(self._keys.key(demo_repo.user_entity_key(user)), ts)
            return [bool(x) for x in pipe.execute()]

    def pick(self, population: list[str]) -> list[str]:
        """``users_per_tick`` distinct users at random, the watched user first when it is known."""
        watched = self.watched if self.watched in population else None
        others = [u for u in population if u != watched] if watched else population
        n = min(self.users_per_tick - (1 if watched else 0), len(others))
        return ([watched] if watched else []) + self.rng.sample(others, n)

    def tick(self) -> None:
        """One tick: pick users, skip those whose hash is gone, push one row per user."""
        started = time.perf_counter()
        try:
            chosen = self.pick(list(self.population()))
            alive = self._alive(chosen) if chosen else []
        except Exception as e:  # noqa: BLE001 - counted and shown, the worker keeps its schedule
            with self._cond:
                self.counters.failed_ticks += 1
                self.counters.last_error = f"{type(e).__name__}: {e}"
            logger.warning("streaming tick failed before pushing: %s", e)
            return
        writes = failed = 0
        error = None
        for user, ok in zip(chosen, alive):
            if not ok:
                continue
            try:
                self.store.push(demo_repo.PUSH_SOURCE, streaming_frame([user], self.rng))
                writes += 1
            except Exception as e:  # noqa: BLE001 - one failed push must not hide the others
                failed += 1
                error = f"{type(e).__name__}: {e}"
        with self._cond:
            c = self.counters
            c.ticks += 1
            c.writes += writes
            c.failed_writes += failed
            c.skipped_missing += len(chosen) - sum(alive)
            c.last_tick_ms = round((time.perf_counter() - started) * 1000, 2)
            if error:
                c.last_error = error
