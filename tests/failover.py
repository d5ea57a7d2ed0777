"""A master killed during a loop of pushes and reads: shared by the cluster and sentinel tests.

Every push writes one new entity (``w00000``, ``w00001``, ...) with ``tx_count_5m`` = its number,
so afterwards each acknowledged write can be checked on its own: present with its value, or lost.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from feast import FeatureStore

from feast_redis_hexpire.local_redis import LocalRedis
from feast_redis_hexpire.topology import kill

# No time windows here (they flake on a loaded machine): async replication streams a master's
# writes to its replica in order, so what a SIGKILLed master loses is always a *suffix* of the
# writes it acknowledged (`lost_not_a_suffix`), however far behind the replica was; and once the
# client has written to the new master, every later call must work (`errors_after_recovery`).
READ_USERS = [f"u{n:04d}" for n in range(1, 13)]


@dataclass
class Op:
    kind: str  # "write" | "read"
    n: int
    at: float  # monotonic time the call returned
    error: str | None = None
    started: float = 0.0  # monotonic time the call was made

    def overlaps(self, start: float, end: float) -> bool:
        """The call was in flight at some moment of [start, end]."""
        return self.started <= end and self.at >= start


@dataclass
class FailoverReport:
    ops: list[Op] = field(default_factory=list)
    killed_at: float = 0.0
    promoted_at: float = 0.0
    lost: list[tuple[int, float]] = field(default_factory=list)  # (write n, seconds acked before kill)
    unacked_present: int = 0
    on_victim: Callable[[int], bool] = lambda n: True  # write n went to the killed master

    def recovered_at(self) -> float:
        """When the first write to the killed master's keys was acknowledged by its replacement."""
        after = [o.at for o in self.writes(True) if o.at > self.promoted_at and self.on_victim(o.n)]
        assert after, "no write to the killed master's keys was acknowledged after the promotion"
        return min(after)

    def errors_after_recovery(self) -> list[Op]:
        """Calls that failed after the client had recovered (the same FeatureStore, no restart)."""
        return self.errors_after(self.recovered_at())

    def lost_not_a_suffix(self) -> list[int]:
        """Writes to the killed master that survived although an earlier one was lost: async
        replication can only lose the newest writes, so any such write is a bug."""
        lost = {n for n, _ in self.lost}
        if not lost:
            return []
        first_lost = min(lost)
        before_kill = [o.n for o in self.writes(True) if self.on_victim(o.n) and o.at < self.killed_at]
        return [n for n in before_kill if n > first_lost and n not in lost]

    def writes(self, ok: bool | None = None) -> list[Op]:
        return [o for o in self.ops if o.kind == "write" and (ok is None or (o.error is None) == ok)]

    def errors_after(self, t: float) -> list[Op]:
        return [o for o in self.ops if o.error and o.at > t]

    def summary(self, label: str) -> str:
        acked, failed = self.writes(True), self.writes(False)
        reads = [o for o in self.ops if o.kind == "read"]
        lost = ", ".join(f"w{n:05d} ({ago * 1000:.0f} ms before the kill)" for n, ago in self.lost)
        first_ok = min((o.at for o in acked if o.at > self.killed_at), default=float("nan"))
        last_error = max((o.at for o in self.ops if o.error), default=self.killed_at)
        return (
            f"[{label}] writes: {len(acked)} acknowledged, {len(failed)} failed "
            f"({self.unacked_present} of those were applied anyway); reads: {len(reads)}, "
            f"{sum(1 for o in reads if o.error)} failed; new master after "
            f"{self.promoted_at - self.killed_at:.2f} s, first acknowledged write after the kill "
            f"at +{first_ok - self.killed_at:.2f} s, last failed call at "
            f"+{last_error - self.killed_at:.2f} s; acknowledged writes lost: {len(self.lost)}"
            + (f" [{lost}] (async replication: acked by the old master, not yet on its replica)"
               if self.lost else "")
            + (f"; first write error: {failed[0].error[:300]}" if failed else "")
        )  # fmt: skip


def cut_then_kill(
    master: LocalRedis,
    replica: LocalRedis,
    on_master: Callable[[int], bool] = lambda n: True,
    writes: int = 5,
) -> tuple[Callable[[FailoverReport], float], dict]:
    """A kill that loses data on purpose, as a network partition would: the replica is frozen
    (SIGSTOP) and its link dropped (CLIENT KILL TYPE replica), the master keeps taking writes that
    only it has until ``writes`` writes to its keys (``on_master``) returned after the cut (a
    condition, not a time: a slow machine makes fewer writes per second), then is SIGKILLed and
    the replica thawed. (A plain SIGKILL on loopback loses nothing: what the master acknowledged
    is already in the kernel's socket buffers to the replica.) Returns the kill callable and its
    timestamps."""
    times: dict[str, float] = {}

    def run(report: FailoverReport) -> float:
        replica.process.send_signal(signal.SIGSTOP)
        times["cut"] = time.monotonic()
        with master.client(socket_timeout=2) as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        deadline = time.monotonic() + 60
        while (
            sum(1 for o in list(report.ops) if o.kind == "write" and o.at > times["cut"] and on_master(o.n))
            < writes
        ):
            if time.monotonic() > deadline:
                replica.process.send_signal(signal.SIGCONT)
                raise TimeoutError(f"fewer than {writes} writes in 60 s after the cut")
            time.sleep(0.01)
        kill(master)
        times["killed"] = time.monotonic()
        replica.process.send_signal(signal.SIGCONT)
        return times["killed"]

    return run, times


def rejoin(old: LocalRedis, new_master: LocalRedis, timeout: float = 60.0) -> None:
    """Restart the killed ``old`` master and wait until it is an online replica of
    ``new_master`` (a cluster node rejoins from its nodes.conf; the sentinels turn an old master
    into a replica): with ``ack_replicas: 1`` the new master acknowledges writes only then."""
    old.start()
    deadline = time.monotonic() + timeout
    with new_master.client(socket_timeout=2) as client:
        while True:
            info = client.info("replication")
            slaves = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if any(int(s.get("port", 0)) == old.port and s.get("state") == "online" for s in slaves):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"127.0.0.1:{old.port} did not rejoin as a replica of :{new_master.port}")
            time.sleep(0.05)


def ack_timeline(report: FailoverReport, times: dict) -> str:
    """When the replica was promoted and the killed master was back as its replica."""
    unacked = [o for o in report.writes(False) if "acknowledged by only" in (o.error or "")]
    return (
        f"  promoted +{times['promoted'] - report.killed_at:.2f} s after the kill, old master back as "
        f"its replica +{times['rejoined'] - report.killed_at:.2f} s; {len(unacked)} of "
        f"{len(report.writes(False))} failed writes were 'acknowledged by only 0 of 1' (the rest: "
        f"connection errors during the failover)"
    )


def check_acked(report: FailoverReport, times: dict) -> None:
    """With ``ack_replicas: 1``: no acknowledged write lost, and every write that was not
    acknowledged failed with an error naming its entity's key."""
    assert report.lost == [], f"acknowledged writes lost with ack_replicas on: {report.lost}"
    unnamed = [o for o in report.writes(False) if f"fs:user:w{o.n:05d}" not in (o.error or "")]
    assert not unnamed, f"failed writes whose error does not name the row: {unnamed[:3]}"
    # The cut-off master kept taking writes, but acknowledged none of them.
    in_window = [o for o in report.writes() if times["cut"] < o.started and o.at < times["killed"]]
    assert in_window and all(o.error and "acknowledged by only 0 of 1" in o.error for o in in_window
                             if report.on_victim(o.n)), in_window[:3]  # fmt: skip


def _frame(n: int) -> pd.DataFrame:
    now = datetime.now(UTC)
    return pd.DataFrame(
        [{
            "user_id": f"w{n:05d}", "last_login_ts": n, "last_device_id": f"d{n}", "tx_count_5m": n,
            "failed_logins_15m": 0, "session_country": "US", "event_timestamp": pd.Timestamp(now),
        }]
    )  # fmt: skip


_FEATURES = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"]


def _check(result: dict) -> None:
    if any(v is None for v in result["risk_segment"]):
        raise AssertionError(f"materialized users read back as missing: {result['risk_segment']}")


class SyncCalls:
    """push / read through the sync client (FeatureStore.push, get_online_features)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def push(self, n: int) -> None:
        self.store.push("user_events_push", _frame(n))

    def read(self) -> None:
        rows = [{"user_id": u} for u in READ_USERS]
        _check(self.store.get_online_features(features=_FEATURES, entity_rows=rows).to_dict())

    def close(self) -> None:
        pass


class AsyncCalls(SyncCalls):
    """The same through the asyncio client (push_async, get_online_features_async, as `feast
    serve` does), all on one event loop so one client lives through the failover."""

    def __init__(self, store: FeatureStore) -> None:
        super().__init__(store)
        self.loop = asyncio.new_event_loop()

    def push(self, n: int) -> None:
        self.loop.run_until_complete(self.store.push_async("user_events_push", _frame(n)))

    def read(self) -> None:
        rows = [{"user_id": u} for u in READ_USERS]
        response = self.store.get_online_features_async(features=_FEATURES, entity_rows=rows)
        _check(self.loop.run_until_complete(response).to_dict())

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())  # the plugin's clients on this loop
        self.loop.close()


def run(
    store: FeatureStore,
    kill: Callable[[FailoverReport], Any],
    wait_new_master: Callable[[], Any],
    raw: Callable[[], Any],
    key_of: Callable[[int], bytes],
    before: int = 150,
    after: int = 100,
    timeout: float = 180.0,
    use_async: bool = False,
    on_victim: Callable[[int], bool] = lambda n: True,
) -> FailoverReport:
    """Push/read in a loop; a thread kills the master after ``before`` acknowledged writes and
    waits for its replacement; the loop goes on until ``after`` more writes are acknowledged past
    the replacement, at least one of them to the killed master's keys (``on_victim``). Then every
    acknowledged write is checked with ``raw()``."""
    report = FailoverReport(on_victim=on_victim)
    ready, replaced = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def killer() -> None:
        try:
            ready.wait()
            report.killed_at = time.monotonic()
            report.killed_at = kill(report) or report.killed_at
            wait_new_master()
            report.promoted_at = time.monotonic()
        except BaseException as e:  # surfaced by the loop
            failure.append(e)
        finally:
            replaced.set()

    calls = AsyncCalls(store) if use_async else SyncCalls(store)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    n = 0
    acked_after = 0
    recovered = False
    while acked_after < after and time.monotonic() < deadline and not failure:
        error = None
        began = time.monotonic()
        try:
            calls.push(n)
        except Exception as e:  # recorded: failed writes are part of the report
            error = f"{type(e).__name__}: {e}"
        now = time.monotonic()
        report.ops.append(Op("write", n, now, error, began))
        if error is None and len(report.writes(True)) >= before:
            ready.set()
        if error is None and replaced.is_set() and now > report.promoted_at:
            recovered = recovered or on_victim(n)
            if recovered:
                acked_after += 1
        if n % 5 == 0:
            try:
                calls.read()
                report.ops.append(Op("read", n, time.monotonic()))
            except Exception as e:
                report.ops.append(Op("read", n, time.monotonic(), f"{type(e).__name__}: {e}"))
        n += 1
    thread.join(timeout=30)
    calls.close()
    if failure:
        raise failure[0]
    assert acked_after >= after, f"only {acked_after} writes acknowledged after the new master"

    client = raw()
    for op in report.writes():
        value = client.hget(key_of(op.n), "tx_count_5m")
        present = value is not None and int(value) == op.n
        if op.error is None and not present:
            report.lost.append((op.n, report.killed_at - op.at))
        elif op.error is not None and present:
            report.unacked_present += 1
    client.close()
    return report


def ack_rows(users: list[str], segment: str) -> list[Any]:
    """online_write_batch rows of the sample repo's batch view: ``risk_segment`` = ``segment``."""
    from conftest import user_key
    from feast.protos.feast.types.Value_pb2 import Value

    now = datetime.now(UTC)
    return [(user_key(u), {"risk_segment": Value(string_val=segment)}, now, None) for u in users]


def acked(store: FeatureStore, view: Any, rows: list[Any]) -> bool:
    """Whether writing ``rows`` was acknowledged (ack_replicas), for waits with a deadline."""
    from feast_redis_hexpire.exceptions import StoreUnavailableError
    from feast_redis_hexpire.online_store import hexpire_store

    try:
        hexpire_store(store).online_write_batch(store.config, view, rows, None)
        return True
    except StoreUnavailableError:
        return False


# The partition experiment's cases (cluster and Sentinel): without acknowledgements on Redis, and
# with ack_replicas: 1 on Redis and Valkey.
PARTITIONED = pytest.mark.parametrize(
    "kind,ack",
    [("redis", False), ("redis", True), ("valkey", True)],
    ids=["redis", "redis-ack", "valkey-ack"],
)
