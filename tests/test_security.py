"""Security: ACL user and password, the documented least-privilege ACL, TLS, password redaction.

Everything runs against real servers on loopback (Redis 8.2 and Valkey 9.1); TLS goes through a
real stunnel4 endpoint with certificates made by ``openssl`` for the test.
"""

from __future__ import annotations

import os
import random
import subprocess
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ROOT, apply_repo, assert_expiry, feast_objects, write_data, write_repo, write_window
from feast import FeatureStore
from tls import Stunnel, make_certs

from feast_redis_hexpire.config import RedisHexpireOnlineStoreConfig, redact
from feast_redis_hexpire.exceptions import HexpireError, StoreUnavailableError
from feast_redis_hexpire.inspect import inspect_entity
from feast_redis_hexpire.local_redis import free_port
from feast_redis_hexpire.synth import streaming_frame

SECRET = "s3cr3t-Pa55w0rd"
ACL_DOC = ROOT / "docs" / "ACL.md"


def documented_acl(user: str, password: str) -> list[str]:
    """The ``ACL SETUSER`` line of docs/ACL.md, for ``user`` with ``password``."""
    line = next(x for x in ACL_DOC.read_text().splitlines() if x.startswith("ACL SETUSER "))
    tokens = line.split()
    assert tokens[2] == "feast" and ">CHANGE-ME" in tokens
    tokens[2] = user
    return [f">{password}" if t == ">CHANGE-ME" else t for t in tokens]


@pytest.fixture
def acl_user(r: Any) -> Any:
    """A fresh user with exactly the documented ACL; yields its name."""
    name = f"feast-{uuid.uuid4().hex[:8]}"
    r.execute_command(*documented_acl(name, SECRET))
    r.execute_command("ACL", "LOG", "RESET")
    yield name
    r.execute_command("ACL", "DELUSER", name)


def denials(admin: Any, user: str) -> list[str]:
    return [f"{e['reason']} {e['object']}" for e in admin.acl_log() if e.get("username") == user]


def full_flow(repo: Path, admin: Any) -> FeatureStore:
    """apply, materialize, push, read, inspect, delete a view, teardown; checks each step."""
    store = apply_repo(repo)
    store.materialize_incremental(end_date=datetime.now(UTC))
    with write_window() as pushed:
        store.push("user_events_push", streaming_frame(["u0001"], random.Random(7)))
    result = store.get_online_features(
        features=["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"],
        entity_rows=[{"user_id": "u0001"}],
    ).to_dict()
    assert result["risk_segment"][0] == admin.hget("fs:user:u0001", "risk_segment").decode()
    assert result["tx_count_5m"][0] == int(admin.hget("fs:user:u0001", "tx_count_5m"))
    assert_expiry(admin.hpexpiretime("fs:user:u0001", "tx_count_5m"), pushed, 300, "tx_count_5m")
    assert inspect_entity(store, "user", "u0001").exists
    # The streaming view is deleted on the next apply: its fields leave every hash.
    # (registry objects, as `feast apply` passes them: their join keys are resolved)
    gone = {"user_streaming_features", "fraud_model"}
    store.apply(
        [o for o in feast_objects(repo) if o.name not in gone],
        objects_to_delete=[
            store.get_feature_view("user_streaming_features"),
            store.get_feature_service("fraud_model"),
        ],
        partial=False,
    )
    assert admin.hget("fs:user:u0001", "tx_count_5m") is None
    assert admin.hget("fs:user:u0001", "risk_segment") is not None
    store.teardown()
    assert admin.keys("fs:*") == []
    return store


def test_least_privilege_acl_runs_everything(tmp_path, r, server, acl_user, caplog):
    caplog.set_level("DEBUG")
    r.set("other:app", "kept")  # outside the ACL's key pattern and the project
    conn = f"{server.connection_string},username={acl_user},password={SECRET}"
    repo = write_repo(tmp_path / "repo", conn)
    write_data(repo)
    store = full_flow(repo, r)
    assert denials(r, acl_user) == []  # nothing was refused, not even silently
    assert r.get("other:app") == b"kept"
    assert SECRET not in caplog.text
    assert SECRET not in repr(store.config.online_store) + str(store.config.online_store)


def test_user_without_the_acl_gets_a_clear_error(tmp_path, r, server, acl_user):
    # A user that may log in but run nothing: apply names the address, the command, the doc.
    bare = f"bare-{uuid.uuid4().hex[:8]}"
    r.execute_command("ACL", "SETUSER", bare, "on", f">{SECRET}", "~*", "-@all")
    try:
        repo = write_repo(tmp_path / "bare", f"{server.connection_string},username={bare},password={SECRET}")
        write_data(repo)
        with pytest.raises(StoreUnavailableError) as err:
            apply_repo(repo)
        text = str(err.value)
        assert server.connection_string in text and "'info'" in text and "docs/ACL.md" in text
        assert SECRET not in text
    finally:
        r.execute_command("ACL", "DELUSER", bare)

    # The documented ACL minus EVALSHA: apply works, materialize names the view and the command.
    r.execute_command("ACL", "SETUSER", acl_user, "-evalsha")
    conn = f"{server.connection_string},username={acl_user},password={SECRET}"
    repo = write_repo(tmp_path / "noeval", conn)
    write_data(repo)
    store = apply_repo(repo)
    with pytest.raises(HexpireError) as err:
        store.materialize_incremental(end_date=datetime.now(UTC))
    text = str(err.value)
    assert "user_batch_features" in text and server.connection_string in text and "evalsha" in text
    assert "are not confirmed written" in text and "fs:user:" in text  # the rows, named by key
    assert r.keys("fs:*") == []  # nothing was written

    # The right commands but another key pattern: the write is refused, nothing written.
    r.execute_command("ACL", "SETUSER", acl_user, "+evalsha", "resetkeys", "~other:*")
    with pytest.raises(HexpireError, match="No permissions to access a key"):
        store.materialize_incremental(end_date=datetime.now(UTC))
    assert r.keys("fs:*") == []


def test_wrong_password_is_named_but_not_shown(tmp_path, r, server, acl_user, caplog):
    caplog.set_level("DEBUG")
    wrong = SECRET + "-wrong"
    repo = write_repo(tmp_path / "repo", f"{server.connection_string},username={acl_user},password={wrong}")
    write_data(repo)
    with pytest.raises(StoreUnavailableError) as err:
        apply_repo(repo)
    shown = "".join(traceback.format_exception(err.value)) + repr(err.value)  # with chained causes
    assert server.connection_string in str(err.value)
    assert "invalid username-password pair" in str(err.value)
    assert wrong not in shown and wrong not in caplog.text


def test_wrong_password_is_not_retried(tmp_path, r, server, acl_user):
    """A wrong password is not transient: one connection attempt, not retries + 1."""
    repo = write_repo(
        tmp_path / "repo", f"{server.connection_string},username={acl_user},password=nope", retries=3
    )
    write_data(repo)
    before = r.info("stats")["total_connections_received"]
    with pytest.raises(StoreUnavailableError):
        apply_repo(repo)
    assert r.info("stats")["total_connections_received"] - before == 1


def test_passwords_redacted_in_config_reprs_and_errors():
    conn = f"127.0.0.1:1,username=u,password={SECRET},sentinel_password={SECRET},ssl_password={SECRET}"
    cfg = RedisHexpireOnlineStoreConfig(connection_string=conn)
    for text in (repr(cfg), str(cfg), redact(conn)):
        assert SECRET not in text and "password=***" in text
    with pytest.raises(ValueError) as err:  # pydantic's error would echo the input value
        RedisHexpireOnlineStoreConfig(connection_string=f"127.0.0.1,password={SECRET}")
    assert SECRET not in str(err.value) and "not host:port" in str(err.value)


@pytest.mark.parametrize(
    "conn, expected",
    [
        ("127.0.0.1:{port},password={secret}", "cannot reach Redis at 127.0.0.1:{port}"),
        ("127.0.0.1,password={secret}", "is not host:port"),
    ],
    ids=["server-down", "bad-connection-string"],
)
def test_feast_cli_apply_failure_does_not_print_the_password(tmp_path, conn, expected):
    port = free_port()  # nothing listens there
    conn = conn.format(port=port, secret=SECRET)
    repo = write_repo(tmp_path / "repo", conn, retries=0, socket_connect_timeout=1)
    write_data(repo)
    env = {**os.environ, "FEAST_USAGE": "False", "REDIS_CONNECTION_STRING": conn}
    done = subprocess.run(["feast", "apply"], cwd=repo, capture_output=True, text=True, env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert expected.format(port=port) in output
    assert SECRET not in output


# ---- TLS: stunnel4 in front of the server, client certificate required ----

needs_stunnel = pytest.mark.needs("stunnel")  # fails (naming the package) when stunnel is missing


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls(certs: Any, server: Any, tmp_path: Path) -> Any:
    with Stunnel(certs, server.port, tmp_path) as endpoint:
        yield endpoint


def tls_conn(port: int, certs: Any, client_cert: bool = True) -> str:
    conn = f"127.0.0.1:{port},ssl=true,ssl_ca_certs={certs.ca}"
    if client_cert:
        conn += f",ssl_certfile={certs.client_cert},ssl_keyfile={certs.client_key}"
    return conn


@needs_stunnel
def test_tls_with_client_certificate_and_acl_user(tmp_path, r, tls, certs, acl_user):
    # The endpoint really is TLS: a plain-text client gets no Redis reply.
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(host="127.0.0.1", port=tls.port, socket_timeout=2, retry=None).ping()
    conn = tls_conn(tls.port, certs) + f",username={acl_user},password={SECRET}"
    repo = write_repo(tmp_path / "repo", conn)
    write_data(repo)
    full_flow(repo, r)
    assert denials(r, acl_user) == []


@needs_stunnel
def test_tls_without_client_certificate_is_refused(tmp_path, r, tls, certs):
    repo = write_repo(tmp_path / "repo", tls_conn(tls.port, certs, client_cert=False), retries=0)
    write_data(repo)
    with pytest.raises(StoreUnavailableError) as err:
        apply_repo(repo)
    assert f"127.0.0.1:{tls.port}" in str(err.value)
    assert r.keys("*") == []
