"""The read path's own sockets (direct.py): used where they apply, never answering with another
entity's values through errors, timeouts, killed connections, threads and forks."""

from __future__ import annotations

import multiprocessing
import random
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import apply_repo, hexpire_store, user_key, wait_for, write_repo
from feast import FeatureStore
from feast.protos.feast.types.Value_pb2 import Value
from redis.exceptions import AuthenticationError, TimeoutError

from feast_redis_hexpire import clients
from feast_redis_hexpire.config import RedisHexpireOnlineStoreConfig
from feast_redis_hexpire.direct import direct_reads

FEATURE = "user_batch_features:tx_count_7d"
USERS = [f"u{i:04d}" for i in range(1, 41)]
OWN = {u: i for i, u in enumerate(USERS, 1)}


def seed(store: Any) -> None:
    """Every user's tx_count_7d is its own number (a wrong-entity answer cannot go unseen)."""
    view = store.get_feature_view("user_batch_features")
    now = datetime.now(UTC)
    rows = [(user_key(u), {"tx_count_7d": Value(int64_val=i)}, now, None) for u, i in OWN.items()]
    hexpire_store(store).online_write_batch(store.config, view, rows, None)


def read(store: Any, asked: list[str]) -> list[Any]:
    got = store.get_online_features(features=[FEATURE], entity_rows={"user_id": asked}).to_dict()
    assert got["user_id"] == asked
    return got["tx_count_7d"]


def own_sockets(admin: Any) -> list[dict]:
    """The server's clients that are the store's own read sockets: they never name a client
    library (redis-py sends CLIENT SETINFO lib-name on connect) and last ran HMGET."""
    return [c for c in admin.client_list() if not c.get("lib-name") and c.get("cmd") == "hmget"]


def cfg(connection_string: str, **kw: Any) -> RedisHexpireOnlineStoreConfig:
    return RedisHexpireOnlineStoreConfig(connection_string=connection_string, **kw)


def test_reads_use_the_stores_own_socket(make_repo, r):
    store = apply_repo(make_repo())
    seed(store)
    assert read(store, ["u0001", "nobody", "u0007", "u0001"]) == [1, None, 7, 1]
    assert own_sockets(r), "the read did not take the store's own socket"
    online = store.config.online_store
    assert direct_reads(online, clients.connection_settings(online)) is not None


@pytest.mark.parametrize(
    "extra",
    [",ssl=true", ",protocol=3", ",client_name=x", ",ssl_ca_certs=/nowhere", ",health_check_interval=5"],
)
def test_settings_redis_py_implements_keep_redis_pys_path(extra):
    online = cfg(f"127.0.0.1:6399{extra}")
    assert direct_reads(online, ("test", extra)) is None


def test_sentinel_and_cluster_options_keep_redis_pys_path():
    online = cfg("127.0.0.1:6399,127.0.0.1:6400", redis_type="redis_sentinel")
    assert direct_reads(online, ("test", "sentinel")) is None
    for extra in (",ssl=true", ",db=1", ",read_from_replicas=true"):
        online = cfg(f"127.0.0.1:6399,127.0.0.1:6400{extra}", redis_type="redis_cluster")
        assert direct_reads(online, ("test", "cluster", extra)) is None
    online = cfg("127.0.0.1:6399,127.0.0.1:6400,username=u,password=p", redis_type="redis_cluster")
    direct = direct_reads(online, ("test", "cluster"))
    assert direct is not None and direct.cluster


def test_interleaved_faults_never_answer_another_entity(make_repo, r):
    """Four threads read random entities while the server kills connections, pauses past the
    socket timeout (late replies), and some reads hit a WRONGTYPE key mid-batch: every answer
    given is the asked entities' own; failures raise; reads recover on new sockets."""
    store = apply_repo(make_repo(socket_timeout=0.2, retries=0))
    outcomes = interleaved_faults(store, r, [r], steps=36)
    assert {"answered", "ResponseError", "TimeoutError"} <= set(outcomes), outcomes


def interleaved_faults(store: Any, client: Any, servers: list[Any], steps: int) -> dict[str, int]:
    """The faults of the test above on ``servers`` (one server, or every cluster primary; each
    pause hits some of them) while four threads read; ``client`` writes the WRONGTYPE key.
    Asserts every answer given was the asked entities' own and that reads end up back on the
    store's own sockets. Returns how many reads ended how (answered, or the exception's name)."""
    seed(store)
    client.set("fs:user:broken", "not a hash")
    outcomes: dict[str, int] = {}
    wrong: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def reader(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            asked = rng.sample(USERS, rng.choice([1, 1, 3, 25]))
            if rng.random() < 0.15:
                asked.insert(rng.randrange(len(asked) + 1), "broken")
            try:
                got = read(store, asked)
                outcome = "answered"
                if "broken" in asked or got != [OWN[u] for u in asked]:
                    wrong.append(f"{asked} -> {got}")
            except Exception as e:  # noqa: BLE001 - which failure is fine; a wrong answer is not
                outcome = type(e).__name__
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        rng = random.Random(1)
        for step in range(steps):
            fault = step % 3
            if fault == 0:
                for server in servers:
                    server.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            elif fault == 1:
                pause = rng.choice([150, 400])
                for paused in rng.sample(servers, rng.randint(1, len(servers))):
                    paused.execute_command("CLIENT", "PAUSE", pause, "ALL")
            # a few reads answered after each fault, on whatever sockets it left
            done = outcomes.get("answered", 0) + 6
            wait_for("reads between faults", lambda n=done: outcomes.get("answered", 0) >= n, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert wrong == [], wrong[:5]
    assert read(store, USERS[:25]) == [OWN[u] for u in USERS[:25]]
    # Idle sockets killed while idle are found dead on their next use and dropped (that read
    # goes through redis-py); then reads are back on a new own socket.
    wait_for(
        "reads back on the store's own sockets",
        lambda: (
            read(store, USERS[:25]) == [OWN[u] for u in USERS[:25]]
            and all(own_sockets(server) for server in servers)
        ),
    )
    return outcomes


def test_password_acl_user_and_db(tmp_path, r, server):
    """AUTH with an ACL user and SELECT on the store's own socket; a wrong password is
    refused there and redis-py's path names the error, without the password."""
    user, secret = f"reader-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    r.execute_command("ACL", "SETUSER", user, "on", f">{secret}", "~*", "+@all")
    try:
        conn = f"{server.connection_string},username={user},password={secret},db=3"
        store = apply_repo(write_repo(tmp_path / "repo", conn))
        seed(store)
        assert read(store, ["u0002", "u0009"]) == [2, 9]
        mine = [c for c in own_sockets(r) if c["user"] == user]
        assert mine and {c["db"] for c in mine} == {"3"}
        assert r.keys("fs:*") == []  # db 0 untouched: the reads and writes went to db 3

        wrong = f"{server.connection_string},username={user},password=not-{secret},db=3"
        config = FeatureStore(repo_path=str(write_repo(tmp_path / "wrong", wrong))).config
        online = config.online_store
        direct = direct_reads(online, clients.connection_settings(online))
        assert direct is not None and direct.hmget([(b"fs:user:u0002", ["tx_count_7d"])]) is None
        assert direct.refused
        with pytest.raises(AuthenticationError) as err:
            hexpire_store(store)._hmget(config, [(b"fs:user:u0002", ["tx_count_7d"])])
        assert "not-" not in str(err.value) and secret not in str(err.value)
    finally:
        r.execute_command("ACL", "DELUSER", user)


def _child_reads(store: Any, out: Any) -> None:
    try:
        rng = random.Random(7)
        for _ in range(200):
            asked = rng.sample(USERS, rng.choice([1, 5]))
            if read(store, asked) != [OWN[u] for u in asked]:
                out.send("wrong")
                return
        out.send("ok")
    except Exception as e:  # noqa: BLE001
        out.send(f"error {type(e).__name__}: {e}")


def test_forked_child_reads_on_its_own_sockets(make_repo, r):
    store = apply_repo(make_repo())
    seed(store)
    assert read(store, ["u0003"]) == [3]  # the parent holds an idle socket now
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_reads, args=(store, send))
    child.start()
    rng = random.Random(8)
    for _ in range(200):  # the parent keeps reading meanwhile, on its own socket
        asked = rng.sample(USERS, rng.choice([1, 5]))
        assert read(store, asked) == [OWN[u] for u in asked]
    assert receive.poll(60), "the child did not answer"
    assert receive.recv() == "ok"
    child.join(30)
    assert child.exitcode == 0


def test_packed_hmgets_are_what_hiredis_packs():
    import hiredis

    from feast_redis_hexpire.direct import pack_hmgets

    shared = ["_ts:v", "a", "päß", ""]
    commands = [(b"fs:user:u1", shared), (b"fs:user:%00\xff", shared), (b"k", ["x"])]
    expected = b"".join(hiredis.pack_command((b"HMGET", key, *fields)) for key, fields in commands)
    assert pack_hmgets(commands) == expected
    for command in commands:  # a one-entity read takes its own way
        key, fields = command
        assert pack_hmgets([command]) == hiredis.pack_command((b"HMGET", key, *fields))


@pytest.mark.parametrize("retries", [0, 2])
def test_unresponsive_server_one_own_attempt_then_redis_pys_retries(make_repo, tmp_path, retries):
    """A read that times out on the own socket goes once through redis-py's pipeline, with its
    retries: one connection more than the same read through redis-py alone, no more."""
    from test_faults import Blackhole

    store = apply_repo(make_repo())
    accepted = []
    for own in (True, False):
        hole = Blackhole()
        try:
            repo = write_repo(
                tmp_path / f"hole{own}", f"127.0.0.1:{hole.port}", retries=retries, socket_timeout=0.2
            )
            config = FeatureStore(repo_path=str(repo)).config
            with pytest.raises(TimeoutError):
                if own:
                    hexpire_store(store)._hmget(config, [(b"fs:user:u0001", ["tx_count_7d"])])
                else:
                    with hexpire_store(store).client(config).pipeline(transaction=False) as pipe:
                        pipe.hmget(b"fs:user:u0001", ["tx_count_7d"])
                        pipe.execute()
            accepted.append(len(hole.accepted))
        finally:
            hole.close()
    assert accepted[0] == accepted[1] + 1, accepted
