"""Every demo endpoint through real HTTP (uvicorn on a free port) and in process (ASGITransport),
on a real Redis 8.2 with real Feast underneath."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import Window, assert_expiry, now_ms, wait_for, write_window

from feast_redis_hexpire.demo import repo as demo_repo
from feast_redis_hexpire.demo.app import MAX_BODY_BYTES, create_app
from feast_redis_hexpire.demo.core import Demo
from feast_redis_hexpire.demo.server import ServerThread
from feast_redis_hexpire.local_redis import LocalRedis

STREAM_TS = "_ts:user_streaming_features"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def demo(redis_server, tmp_path_factory):
    repo = demo_repo.write_demo_repo(
        tmp_path_factory.mktemp("demo") / "repo", redis_server.connection_string, stream_field_ttl_seconds=60
    )
    demo = Demo.create(repo, users_per_tick=5, interval=0.2, worker_seed=1)
    demo.worker.pause()
    demo.worker.start()
    yield demo
    demo.worker.stop()


@pytest.fixture(scope="module")
def url(demo):
    with ServerThread(create_app(demo)) as base:
        yield base


@pytest.fixture
def http(url, demo, redis_server):
    """A client on a freshly loaded demo: 30 users, worker paused."""
    demo.worker.pause()
    demo.worker.wait_for_idle(10)
    redis_server.client().flushall()
    demo_repo.clear_offline_rows(demo.store)
    demo.worker.watched = None  # the load below watches its first user
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/bulk-load", json={"count": 30, "ttl_seconds": 600}).status_code == 200
        yield client


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def snapshot(r) -> dict:
    return {k: (r.type(k), r.hgetall(k) if r.type(k) == b"hash" else r.get(k)) for k in r.keys()}


def error(response, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    return body["error"]


# ---- GET /state ----


def test_state_reports_users_ttls_and_worker(http):
    s = http.get("/state").json()
    assert (s["users"], s["population"], s["users_exact"]) == (30, 30, True)
    assert s["batch_ttl_seconds"] == 600 and s["streaming_ttl_seconds"] == 60
    assert s["key_prefix"] == "fs:" and s["worker"]["running"] is False
    assert s["store_stats"]["written"] >= 30


def test_state_polls_never_scan(http, r):
    def scans() -> int:
        return int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))

    before = scans()
    for _ in range(5):
        assert http.get("/state").status_code == 200
    assert scans() == before


def test_state_count_follows_expiry_without_scan(http, r):
    r.delete("fs:user:u0003")  # gone, like an expired key
    assert http.get("/state").json()["users"] == 29


# ---- POST /bulk-load ----


def test_bulk_load_json_and_form(http, r):
    with write_window() as first:
        body = http.post("/bulk-load", json={"count": 40, "ttl_seconds": 300, "seed": 2}).json()
    assert body["count"] == 40 and body["population"] == 40
    assert r.dbsize() == 40
    assert_expiry([r.pexpiretime("fs:user:u0040")], first, 300, "u0040")
    u0040 = r.pexpiretime("fs:user:u0040")
    with write_window() as second:
        body = http.post("/bulk-load", content="count=5&ttl_seconds=100", headers=FORM).json()
    assert body["ttl_seconds"] == 100
    assert_expiry([r.pexpiretime("fs:user:u0005")], second, 100, "u0005")
    assert r.pexpiretime("fs:user:u0040") == u0040  # users not in this load keep their TTL
    assert http.get("/state").json()["population"] == 40


@pytest.mark.parametrize(
    "body, field",
    [
        ({"count": -1}, "count"),
        ({"count": 0}, "count"),
        ({"count": "abc"}, "count"),
        ({"count": 10**9}, "count"),
        ({"count": True}, "count"),
        ({"count": 5, "ttl_seconds": 0}, "ttl_seconds"),
        ({"count": 5, "ttl_seconds": -5}, "ttl_seconds"),
        ({"count": 5, "ttl_seconds": "1h"}, "ttl_seconds"),
        ({"count": 5, "seed": "x"}, "seed"),
        ({"cnt": 5}, "cnt"),
    ],
)
def test_bulk_load_bad_input_is_4xx_and_changes_nothing(http, r, body, field):
    before = snapshot(r)
    expiries = {k: r.pexpiretime(k) for k in r.keys()}
    error(http.post("/bulk-load", json=body), 422, field)
    assert snapshot(r) == before  # not clamped to 1, TTL 0 did not delete anything
    assert {k: r.pexpiretime(k) for k in r.keys()} == expiries  # absolute: exactly unchanged


def test_bulk_load_bad_form_input_and_bad_bodies(http, r):
    before = snapshot(r)
    error(http.post("/bulk-load", content="count=-1", headers=FORM), 422, "count")
    error(http.post("/bulk-load", content="count=5&ttl_seconds=0", headers=FORM), 422, "ttl_seconds")
    error(
        http.post("/bulk-load", content="{not json", headers={"Content-Type": "application/json"}),
        400,
        "body",
    )
    error(http.post("/bulk-load", json=[1, 2]), 400, "body")
    error(http.post("/bulk-load", content="x", headers={"Content-Type": "text/plain"}), 415, "body")
    big = '{"count": 5, "pad": "' + "x" * (MAX_BODY_BYTES + 10) + '"}'
    error(http.post("/bulk-load", content=big, headers={"Content-Type": "application/json"}), 413, "body")
    assert snapshot(r) == before


# ---- POST /worker/toggle ----


def test_worker_toggle_flips_and_sets(http, demo):
    assert http.post("/worker/toggle").json()["running"] is True
    assert http.post("/worker/toggle", json={"running": False}).json()["running"] is False
    assert http.post("/worker/toggle", content="running=true", headers=FORM).json()["running"] is True
    assert http.post("/worker/toggle", json={}).json()["running"] is False
    error(http.post("/worker/toggle", json={"running": "maybe"}), 422, "running")
    assert demo.worker.running is False


def test_running_worker_pushes_through_feast(http, r, demo):
    started = now_ms()
    http.post("/worker/toggle", json={"running": True})
    wait_for("ten worker writes", lambda: demo.worker.counters.writes >= 10, timeout=60)
    http.post("/worker/toggle", json={"running": False})
    demo.worker.wait_for_idle(10)
    w = http.get("/state").json()["worker"]
    touched = [k for k in r.keys() if r.hexists(k, STREAM_TS)]
    assert w["writes"] >= 10 and w["failed_writes"] == 0 and 0 < len(touched) <= w["writes"]
    # Written between the toggle and now, with the demo's 60 s streaming TTL.
    assert_expiry(r.hpexpiretime(touched[0], "tx_count_5m"), Window(started, now_ms() + 1), 60, touched[0])


# ---- POST /read ----


def test_read_reports_values_statuses_ttls_and_latency(http, r, demo):
    demo.store.push("user_events_push", _stream_row("u0002"))
    body = http.post(
        "/read",
        json={"user_id": "u0002", "features": ["risk_segment", "user_streaming_features:tx_count_5m"]},
    ).json()
    got = {f["name"]: f for f in body["features"]}
    assert got["risk_segment"]["value"] == r.hget("fs:user:u0002", "risk_segment").decode()
    assert got["risk_segment"]["status"] == "PRESENT" and got["risk_segment"]["field_ttl_ms"] == -1
    assert got["tx_count_5m"]["value"] == int(r.hget("fs:user:u0002", "tx_count_5m"))
    assert 0 < got["tx_count_5m"]["field_ttl_ms"] <= 60_000
    assert body["latency_ms"] > 0 and 500_000 < body["key_ttl_ms"] <= 600_000
    form = http.post("/read", content="user_id=u0003&features=tx_count_5m&features=country_iso", headers=FORM)
    got = {f["name"]: f for f in form.json()["features"]}
    assert got["tx_count_5m"]["status"] == "NOT_FOUND" and got["tx_count_5m"]["field_ttl_ms"] == -2
    assert got["country_iso"]["status"] == "PRESENT"


def test_read_bad_input(http):
    assert "unknown user" in error(http.post("/read", json={"user_id": "u9999"}), 404, "user_id")
    error(http.post("/read", json={}), 422, "user_id")
    error(http.post("/read", json={"user_id": "u0001*"}), 422, "user_id")
    assert "empty" in error(http.post("/read", json={"user_id": "u0001", "features": []}), 422, "features")
    error(http.post("/read", content="user_id=u0001&features=", headers=FORM), 422, "features")
    error(http.post("/read", json={"user_id": "u0001", "features": ["nope"]}), 422, "features")
    error(http.post("/read", json={"user_id": "u0001", "features": [1, 2]}), 422, "features")


# ---- POST /batch-read ----


def test_batch_read(http):
    body = http.post("/batch-read", json={"count": 10}).json()
    assert body["count"] == 10 and len(body["users"]) == 10 and body["total_ms"] > 0
    assert all(u["present"] == 3 and u["requested"] == 5 for u in body["users"])  # 3 batch, 2 streaming
    body = http.post("/batch-read", content="count=2&features=country_iso", headers=FORM).json()
    assert [u["present"] for u in body["users"]] == [1, 1]
    for bad in ({"count": 0}, {"count": "ten"}, {"count": 31}, {"count": 5000}):
        error(http.post("/batch-read", json=bad), 422, "count")
    error(http.post("/batch-read", json={"count": 2, "features": []}), 422, "features")


# ---- GET /inspect ----


def test_inspect(http, demo, r):
    demo.store.push("user_events_push", _stream_row("u0004"))
    body = http.get("/inspect", params={"user_id": "u0004"}).json()
    fields = {f["field"]: f for f in body["fields"]}
    assert (
        body["key"] == "fs:user:u0004"
        and body["exists"]
        and body["encoding"] == r.object("encoding", "fs:user:u0004").decode()
    )
    assert fields["risk_segment"]["ttl"] == "no TTL" and 0 < fields["tx_count_5m"]["ttl_ms"] <= 60_000
    assert 500_000 < body["key_ttl_ms"] <= 600_000
    body = http.get("/inspect", params={"user_id": "u0005"}).json()
    assert {f["field"]: f["ttl_ms"] for f in body["fields"]}["tx_count_5m"] == -2
    error(http.get("/inspect"), 422, "user_id")
    error(http.get("/inspect", params={"user_id": "u0100"}), 404, "user_id")


# ---- POST /reset ----


def test_reset_deletes_only_the_demo_keys(http, r, demo):
    others = {
        "fs:user-x:u0001": "other entity",
        "fsXuser:u0001": "glob would match",
        "other:user:u0001": "other project",
    }
    for key, value in others.items():
        r.set(key, value)
    r.hset("fs:user:u9999", mapping={"some": "hash of another tool"})  # under our prefix, not ours
    http.post("/worker/toggle", json={"running": True})
    body = http.post("/reset").json()
    assert body["deleted"] == 30 and body["worker_running"] is True
    assert sorted(k.decode() for k in r.keys()) == sorted([*others, "fs:user:u9999"])
    s = http.get("/state").json()
    assert s["users"] == 0 and s["population"] == 0 and s["worker"]["running"] is True
    http.post("/worker/toggle", json={"running": False})
    error(http.post("/read", json={"user_id": "u0001"}), 404, "user_id")


def test_reset_waits_for_an_in_flight_tick(http, r, demo):
    """Many pushes per tick: a reset issued mid-tick must leave no key behind."""
    http.post("/bulk-load", json={"count": 200, "ttl_seconds": 600})
    demo.worker.users_per_tick = 100
    try:
        http.post("/worker/toggle", json={"running": True})
        wait_for("the worker to be mid-tick", lambda: demo.worker.busy, timeout=60, interval=0.005)
        assert http.post("/reset").status_code == 200
        assert r.keys("fs:user:*") == []
    finally:
        http.post("/worker/toggle", json={"running": False})
        demo.worker.wait_for_idle(30)
        demo.worker.users_per_tick = 5
    assert r.keys("fs:user:*") == []  # and nothing was recreated afterwards


# ---- OpenAPI and the page ----


def test_openapi_describes_every_endpoint(http):
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    endpoints = ["get /state", "post /bulk-load", "post /worker/toggle", "post /read", "post /batch-read",
                 "get /inspect", "post /reset"]  # fmt: skip
    for method, path in (e.split() for e in endpoints):
        assert method in paths[path], path
    content = paths["/bulk-load"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
    assert "ttl_seconds" in content["application/json"]["schema"]["properties"]
    assert http.get("/docs").status_code == 200


def test_page_and_assets_are_served(http):
    page = http.get("/")
    assert page.status_code == 200 and "fresh-panel" in page.text
    assert http.get("/static/app.js").status_code == 200


# ---- in process through ASGITransport ----


def test_asgi_transport_in_process(demo, http):
    async def run() -> None:
        transport = httpx.ASGITransport(app=create_app(demo))
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            assert (await client.get("/state")).json()["users"] == 30
            read = await client.post("/read", json={"user_id": "u0001", "features": ["country_iso"]})
            assert read.json()["features"][0]["status"] == "PRESENT"
            bad = await client.post("/bulk-load", json={"count": "many"})
            assert bad.status_code == 422 and bad.json()["field"] == "count"

    asyncio.run(run())


# ---- prefixes and Redis failures (their own demos) ----


def test_glob_prefix_is_escaped_and_glob_only_prefix_refused(redis_server, r, tmp_path):
    r.flushall()
    glob_repo = demo_repo.write_demo_repo(
        tmp_path / "glob", redis_server.connection_string, key_prefix="fs:u?"
    )
    glob = Demo.create(glob_repo)
    glob.bulk_load(3, 600)
    assert r.exists("fs:u?user:u0001")
    # Another instance's hash that the unescaped pattern fs:u?user:* would match, with our fields.
    r.hset("fs:uXuser:u0001", mapping={"_ts:user_batch_features": "1", "risk_segment": "low"})
    r.set("unrelated", "1")
    result = glob.reset()
    assert result["deleted"] == 3 and result["pattern"] == "fs:u\\?user:*"
    assert sorted(r.keys()) == [b"fs:uXuser:u0001", b"unrelated"]

    star_repo = demo_repo.write_demo_repo(tmp_path / "star", redis_server.connection_string, key_prefix="*:")
    star = Demo.create(star_repo)

    async def reset() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(star))
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            return await client.post("/reset")

    error(asyncio.run(reset()), 400, "key_prefix")
    assert sorted(r.keys()) == [b"fs:uXuser:u0001", b"unrelated"]


def test_redis_down_is_a_5xx_json_error(tmp_path):
    with LocalRedis("redis") as own:
        repo = demo_repo.write_demo_repo(
            tmp_path / "repo", own.connection_string, retries=0, socket_timeout=1
        )
        demo = Demo.create(repo)
        demo.bulk_load(3, 600)
        app = create_app(demo)
        with ServerThread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/state").status_code == 200
            own.stop()
            for response in (
                client.get("/state"),
                client.post("/read", json={"user_id": "u0001"}),
                client.post("/bulk-load", json={"count": 2}),
                client.get("/inspect", params={"user_id": "u0001"}),
                client.post("/reset"),
            ):
                assert response.status_code == 503, response.text
                assert "Redis" in response.json()["error"] or "redis" in response.json()["error"]


# ---- one error shape, consistent validation (issue 10 item 8) ----


def test_unknown_endpoint_and_wrong_method_use_the_error_shape(http):
    for response, status in (
        (http.get("/nope"), 404),
        (http.post("/state"), 405),
        (http.get("/read"), 405),
        (http.get("/static/missing.js"), 404),
    ):
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error", "field"} and response.json()["field"] is None
    assert "GET /nope" in http.get("/nope").json()["error"]
    wrong = http.get("/read")
    assert "use POST" in wrong.json()["error"] and wrong.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        ("GET", "/state?verbose=1", {}),
        ("GET", "/views?verbose=1", {}),
        ("GET", "/metrics?verbose=1", {}),
        ("GET", "/inspect?user_id=u0001&verbose=1", {}),
        ("POST", "/read?verbose=1", {"json": {"user_id": "u0001"}}),
        ("POST", "/batch-read?verbose=1", {"json": {"count": 2}}),
        ("POST", "/bulk-load?verbose=1", {"json": {"count": 2}}),
        ("POST", "/worker/toggle?verbose=1", {"json": {}}),
        ("POST", "/worker/settings?verbose=1", {"json": {}}),
        ("POST", "/watch?verbose=1", {"json": {}}),
        ("POST", "/scenario/expire?verbose=1", {"json": {}}),
        ("POST", "/reset?verbose=1", {}),
    ],
)
def test_unknown_query_parameters_are_refused_everywhere(http, r, method, path, kwargs):
    before = snapshot(r)
    assert "verbose" in error(http.request(method, path, **kwargs), 422, "verbose")
    assert snapshot(r) == before


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/reset", {"force": True}, "force"),
        ("/read", {"user_id": "u0001", "extra": 1}, "extra"),
        ("/worker/settings", {"ttl": 5}, "ttl"),
        ("/watch", {"user": "u0001"}, "user"),
        ("/scenario/expire", {"seconds": 5}, "seconds"),
    ],
)
def test_unknown_body_fields_are_refused_everywhere(http, r, path, body, field):
    before = snapshot(r)
    assert "is not a field" in error(http.post(path, json=body), 422, field)
    assert snapshot(r) == before


def test_reset_takes_an_empty_body(http):
    assert http.post("/reset", json={}).json()["deleted"] == 30


def test_errors_quote_values_as_json_and_name_limits(http, demo):
    assert error(http.post("/bulk-load", json={"count": True}), 422, "count").endswith("got true")
    nan = http.post("/bulk-load", content='{"count": NaN}', headers={"Content-Type": "application/json"})
    assert error(nan, 422, "count").endswith("got NaN")
    assert 'got "abc"' in error(http.post("/bulk-load", json={"count": "abc"}), 422, "count")
    assert "got null" in error(http.post("/worker/toggle", json={"running": None}), 422, "running")
    assert 'got "maybe"' in error(http.post("/worker/toggle", json={"running": "maybe"}), 422, "running")
    long = error(http.post("/read", json={"user_id": "u" * 5000}), 422, "user_id")
    assert "5000 characters" in long and "limit is 64" in long
    bad = error(http.post("/read", json={"user_id": "u0001*"}), 422, "user_id")
    assert '"u0001*"' in bad and "'" not in bad
    assert '"u9999"' in error(http.post("/read", json={"user_id": "u9999"}), 404, "user_id")
    assert "'" not in error(http.post("/read", json={"user_id": 5}), 422, "user_id")


def test_running_null_is_refused_and_changes_nothing(http, demo):
    before = demo.worker.running
    error(http.post("/worker/toggle", json={"running": None}), 422, "running")
    assert demo.worker.running is before
    error(http.post("/worker/settings", json={"tick_seconds": None}), 422, "tick_seconds")


def test_openapi_is_typed(http):
    spec = http.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    for method, path, model in (
        ("get", "/state", "StateResponse"),
        ("get", "/views", "ViewsResponse"),
        ("get", "/metrics", "MetricsResponse"),
        ("post", "/read", "ReadResponse"),
        ("post", "/batch-read", "BatchReadResponse"),
        ("get", "/inspect", "InspectResponse"),
        ("post", "/reset", "ResetResponse"),
        ("post", "/bulk-load", "BulkLoadResponse"),
        ("post", "/worker/toggle", "WorkerStatus"),
        ("post", "/worker/settings", "SettingsResponse"),
        ("post", "/watch", "WatchResponse"),
        ("post", "/scenario/expire", "ExpireResponse"),
    ):
        op = paths[path][method]
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "field"}
    (param,) = paths["/inspect"]["get"]["parameters"]
    assert param["name"] == "user_id" and param["required"] is True and param["schema"]["maxLength"] == 64
    toggle = paths["/worker/toggle"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert toggle["properties"]["running"]["type"] == "boolean" and toggle["additionalProperties"] is False


def test_docs_page_needs_no_network(http):
    page = http.get("/docs")
    assert page.status_code == 200
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page.text
    assert "/static/vendor/swagger-ui/swagger-ui.css" in page.text
    assert "cdn." not in page.text and "https://" not in page.text.replace("https://swagger.io", "")
    for asset in ("swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css", "uplot/uPlot.iife.min.js"):
        assert http.get(f"/static/vendor/{asset}").status_code == 200, asset
    assert http.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not offered


# ---- /read validates view:feature (issue 8 item 12) ----


def test_read_validates_the_view_part_of_a_feature_reference(http, r):
    msg = error(http.post("/read", json={"user_id": "u0001", "features": ["wrongview:risk_segment"]}), 422,
                "features")  # fmt: skip
    assert '"wrongview"' in msg and "user_batch_features" in msg
    error(http.post("/read", json={"user_id": "u0001", "features": ["user_streaming_features:risk_segment"]}),
          422, "features")  # fmt: skip
    body = http.post("/read", json={"user_id": "u0001", "features": ["user_batch_features:risk_segment"]})
    assert body.json()["features"][0]["value"] == r.hget("fs:user:u0001", "risk_segment").decode()
    error(
        http.post("/batch-read", json={"count": 2, "features": ["wrongview:risk_segment"]}), 422, "features"
    )


# ---- reads keep serving while a bulk load materializes (issue 8 item 11) ----


def test_reads_keep_serving_while_a_bulk_load_materializes(http, demo):
    statuses = []
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(http.post, "/bulk-load", json={"count": 6000, "ttl_seconds": 600})
        deadline = time.monotonic() + 300
        while not load.done():
            assert time.monotonic() < deadline
            response = http.post("/read", json={"user_id": "u0001", "features": ["risk_segment"]})
            if not load.done():
                statuses.append(response.status_code)
        assert load.result().status_code == 200
    assert len(statuses) >= 5, "too few reads overlapped the load"
    assert set(statuses) == {200}, statuses


def test_a_view_in_materializing_state_keeps_serving(http, demo):
    """The registry setting: a store that sees the view MATERIALIZING still serves it."""
    from feast.feature_view import FeatureViewState

    registry = demo.store.registry
    view = registry.get_feature_view("user_batch_features", "fs", allow_cache=False)
    view.state = FeatureViewState.MATERIALIZING
    registry.apply_feature_view(view, "fs", commit=True)
    try:
        demo.reader.refresh_registry()
        assert demo.reader.get_feature_view("user_batch_features").state == FeatureViewState.MATERIALIZING
        assert http.post("/read", json={"user_id": "u0001"}).status_code == 200
    finally:
        view.state = FeatureViewState.AVAILABLE_ONLINE
        registry.apply_feature_view(view, "fs", commit=True)
        demo.reader.refresh_registry()


def test_a_view_that_cannot_serve_is_a_clear_503(http, demo):
    from feast.feature_view import FeatureViewState

    registry = demo.store.registry
    view = registry.get_feature_view("user_batch_features", "fs", allow_cache=False)
    view.state = FeatureViewState.CREATED
    registry.apply_feature_view(view, "fs", commit=True)
    try:
        demo.reader.refresh_registry()
        response = http.post("/read", json={"user_id": "u0001"})
        assert response.status_code == 503, response.text
        assert response.json()["field"] is None and "CREATED" in response.json()["error"]
        assert http.post("/batch-read", json={"count": 2}).status_code == 503
    finally:
        view.state = FeatureViewState.AVAILABLE_ONLINE
        registry.apply_feature_view(view, "fs", commit=True)
        demo.reader.refresh_registry()
    assert http.post("/read", json={"user_id": "u0001"}).status_code == 200


# ---- the page's story: watched user, settings, scenario, views, charts (issue 10) ----


def test_state_counts_users_with_fresh_streaming_data(http, demo):
    assert http.get("/state").json()["fresh_users"] == 0
    for user in ("u0002", "u0005"):
        demo.store.push("user_events_push", _stream_row(user))
    s = http.get("/state").json()
    assert s["fresh_users"] == 2 and s["fresh_users_exact"] is True and s["watched"] == "u0001"


def test_the_worker_keeps_the_watched_user_fresh(http, demo, r):
    assert http.post("/watch", json={"user_id": "u0007"}).json() == {"user_id": "u0007", "fresh": False}
    ticks = demo.worker.counters.ticks
    http.post("/worker/toggle", json={"running": True})
    try:
        deadline = time.monotonic() + 30
        while demo.worker.counters.ticks < ticks + 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        http.post("/worker/toggle", json={"running": False})
        demo.worker.wait_for_idle(10)
    assert r.hexists("fs:user:u0007", STREAM_TS)  # with 5 of 30 users per tick, not by luck
    assert http.get("/state").json()["watched"] == "u0007"


def test_watch_without_a_user_picks_one_with_fresh_streaming_data(http, demo):
    assert "no user has fresh streaming data" in error(http.post("/watch", json={}), 404, "user_id")
    demo.store.push("user_events_push", _stream_row("u0011"))
    assert http.post("/watch").json() == {"user_id": "u0011", "fresh": True}
    error(http.post("/watch", json={"user_id": "u0100"}), 404, "user_id")


def test_settings_change_the_streaming_ttl_of_new_pushes_and_the_rate(http, demo, r):
    original = demo.settings_view()
    try:
        body = http.post("/worker/settings", json={"streaming_ttl_seconds": 45, "users_per_tick": 2,
                                                   "tick_seconds": 0.5}).json()  # fmt: skip
        assert body == {"streaming_ttl_seconds": 45, "users_per_tick": 2, "tick_seconds": 0.5}
        assert http.get("/state").json()["worker"]["users_per_tick"] == 2
        pushed = time.time()
        demo.store.push("user_events_push", _stream_row("u0003"))
        done = time.time()
        (expiry,) = r.hpexpiretime("fs:user:u0003", "tx_count_5m")
        assert pushed * 1000 + 45_000 - 5 <= expiry <= done * 1000 + 45_000 + 5
        for bad, field in (
            ({"streaming_ttl_seconds": 0}, "streaming_ttl_seconds"),
            ({"users_per_tick": 0}, "users_per_tick"),
            ({"tick_seconds": 0}, "tick_seconds"),
            ({"tick_seconds": "NaN"}, "tick_seconds"),
            ({"tick_seconds": True}, "tick_seconds"),
        ):
            error(http.post("/worker/settings", json={"users_per_tick": 3, **bad}), 422, field)
        assert demo.worker.users_per_tick == 2  # a refused request changes nothing
    finally:
        http.post("/worker/settings", json=original)


def test_pause_and_watch_it_expire_scenario(http, demo, r):
    original = demo.settings_view()
    try:
        http.post("/worker/toggle", json={"running": True})
        before = time.time()
        body = http.post("/scenario/expire", json={"ttl_seconds": 2}).json()
        assert body["user_id"] == "u0001" and body["worker"]["running"] is False
        (expiry,) = r.hpexpiretime("fs:user:u0001", "tx_count_5m")
        assert before * 1000 + 2000 - 5 <= expiry <= body["expires_by"] * 1000 + 5
        deadline = time.monotonic() + 30
        while r.hexists("fs:user:u0001", STREAM_TS):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        got = {f["name"]: f for f in http.post("/read", json={"user_id": "u0001"}).json()["features"]}
        assert got["tx_count_5m"]["status"] == "NOT_FOUND" and got["risk_segment"]["status"] == "PRESENT"
        error(http.post("/scenario/expire", json={"ttl_seconds": 0}), 422, "ttl_seconds")
    finally:
        http.post("/worker/settings", json=original)


def test_read_gives_event_time_age_and_key_expiry_of_batch_fields(http, demo):
    demo.store.push("user_events_push", _stream_row("u0002"))
    body = http.post("/read", json={"user_id": "u0002", "features": ["risk_segment", "tx_count_5m",
                                                                     "tx_count_7d"]}).json()  # fmt: skip
    got = {f["name"]: f for f in body["features"]}
    batch, stream = got["risk_segment"], got["tx_count_5m"]
    assert batch["expires_with_key"] is True and batch["field_ttl_ms"] == -1 and batch["layer"] == "batch"
    assert stream["expires_with_key"] is False and stream["field"] == "tx_count_5m"
    for f in (batch, stream):
        assert f["event_time"].endswith("Z") and 0 <= f["age_ms"] < 3_600_000
    body = http.post("/read", json={"user_id": "u0003", "features": ["tx_count_5m"]}).json()
    assert body["features"][0]["event_time"] is None and body["features"][0]["age_ms"] is None


def test_batch_read_summary(http, demo):
    demo.store.push("user_events_push", _stream_row("u0002"))
    body = http.post("/batch-read", json={"count": 10}).json()
    per = {f["name"]: f for f in body["summary"]["per_feature"]}
    assert body["summary"]["users"] == 10 and body["summary"]["complete_users"] == 1
    assert per["risk_segment"] == {"name": "risk_segment", "layer": "batch", "present": 10, "missing": 0}
    assert per["tx_count_5m"]["present"] == 1 and per["tx_count_5m"]["missing"] == 9
    assert body["users"][1]["missing"] == []
    assert body["users"][0]["missing"] == ["tx_count_5m", "failed_logins_15m"]
    assert http.get("/state").json()["last_read_kind"] == "batch"


def test_views_panel_follows_the_store(http, demo):
    views = {v["name"]: v for v in http.get("/views").json()["views"]}
    batch, stream = views["user_batch_features"], views["user_streaming_features"]
    assert batch["mode"] == "batch" and "no stream source" in batch["why"]
    assert (
        stream["mode"] == "streaming"
        and "PushSource" in stream["why"]
        and "user_events_push" in stream["why"]
    )
    assert batch["key_ttl_seconds"] == 86400 and batch["field_ttl_seconds"] is None
    assert stream["field_ttl_seconds"] == 60 and stream["key_ttl_seconds"] is None
    assert stream["ts_field"] == STREAM_TS and batch["key_example"] == "fs:user:u0001"
    from feast_redis_hexpire.views import ViewLayout

    layout = ViewLayout.of(demo.store.config, demo.store.get_feature_view("user_batch_features"))
    assert {f["name"]: f["field"] for f in batch["features"]} == {k: v[0] for k, v in layout.fields.items()}


def test_metrics_series_grow_with_each_sample(http, demo, r):
    demo.store.push("user_events_push", _stream_row("u0001"))
    before = len(http.get("/metrics").json()["t"])
    demo.sample()
    demo.sample()
    m = http.get("/metrics").json()
    assert len(m["t"]) == before + 2 and len({len(v) for v in m.values()}) == 1
    assert m["single_p50_ms"][-1] > 0 and m["single_p99_ms"][-1] >= m["single_p50_ms"][-1]
    assert m["batch_p50_ms"][-1] > 0 and m["writes_per_second"][-1] is not None
    assert m["fresh_users"][-1] == 1 and m["live_users"][-1] == 30
    assert m["watched_memory_bytes"][-1] == r.memory_usage("fs:user:u0001")


def test_after_reset_state_says_so_and_nothing_polls_errors(http, demo):
    http.post("/reset")
    s = http.get("/state").json()
    assert (s["population"], s["users"], s["fresh_users"], s["watched"]) == (0, 0, 0, None)
    assert "bulk-load first" in error(http.post("/watch"), 404, "user_id")
    assert "bulk-load first" in error(http.post("/scenario/expire"), 404, "user_id")
    demo.sample()  # the sampler keeps going: zeros, no watched key
    m = http.get("/metrics").json()
    assert m["live_users"][-1] == 0 and m["watched_memory_bytes"][-1] is None


def _stream_row(user: str):
    import random

    from feast_redis_hexpire.synth import streaming_frame

    return streaming_frame([user], random.Random(3))
