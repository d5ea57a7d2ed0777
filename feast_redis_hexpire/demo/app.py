"""The demo's HTTP API and page (FastAPI; the OpenAPI description is at /openapi.json, /docs).

Bodies may be JSON or an HTML form (``application/x-www-form-urlencoded``). Bad input is a 4xx
JSON error ``{"error": ..., "field": ...}`` naming the field (``field`` null when the error is
not about one, e.g. an unknown endpoint); a Redis failure or a store that refuses to serve is a
503 JSON error. Unknown body fields and query parameters are refused on every endpoint.
Blocking Feast/Redis calls run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..exceptions import StoreUnavailableError
from .builder import MAX_COUNT, MAX_TTL
from .core import MAX_BATCH_READ, MAX_TICK_SECONDS, MAX_USER_ID, MAX_USERS_PER_TICK, Demo
from .errors import InputError, quote

__all__ = ["create_app", "check_query", "read_body", "MAX_BODY_BYTES"]

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
VENDOR = "/static/vendor"
MAX_BODY_BYTES = 16 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BulkLoadBody(_Body):
    count: int = Field(200, ge=1, le=MAX_COUNT, description="Users u0001..uN to (re)load.")
    ttl_seconds: int = Field(86400, ge=1, le=MAX_TTL, description="Key-level TTL of this load.")
    seed: int = Field(1, description="Random seed of the synthetic rows (same seed, same rows).")


class ToggleBody(_Body):
    running: bool | SkipJsonSchema[None] = Field(
        None, description="Set the state (true/false, not null); omitted: flip it."
    )


class SettingsBody(_Body):
    streaming_ttl_seconds: int | SkipJsonSchema[None] = Field(
        None, ge=1, le=MAX_TTL, description="Per-field TTL of the next streaming pushes."
    )
    users_per_tick: int | SkipJsonSchema[None] = Field(
        None, ge=1, le=MAX_USERS_PER_TICK, description="Users pushed per tick."
    )
    tick_seconds: float | SkipJsonSchema[None] = Field(
        None, ge=0.05, le=MAX_TICK_SECONDS, description="Seconds between ticks."
    )


class WatchBody(_Body):
    user_id: str | SkipJsonSchema[None] = Field(
        None, max_length=MAX_USER_ID, description="The user to watch; omitted: one with fresh streaming data."
    )


class ExpireBody(_Body):
    ttl_seconds: int = Field(20, ge=1, le=MAX_TTL, description="Streaming TTL of the last push.")


class ReadBody(_Body):
    user_id: str = Field(
        ..., max_length=MAX_USER_ID, description="A user of the loaded population, e.g. u0001."
    )
    features: list[str] | SkipJsonSchema[None] = Field(
        None, description="Feature names (or view:feature); default: the fraud_model subset."
    )


class BatchReadBody(_Body):
    count: int = Field(100, ge=1, le=MAX_BATCH_READ, description="Users to read (the first N).")
    features: list[str] | SkipJsonSchema[None] = Field(None, description="As for /read.")


class ResetBody(_Body):
    pass


class ErrorBody(BaseModel):
    error: str = Field(..., description="What was wrong, naming the field and the limit.")
    field: Optional[str] = Field(None, description="The request field (or body, key_prefix); null if none.")


class WorkerStatus(BaseModel):
    running: bool
    busy: bool
    users_per_tick: int
    interval_seconds: float
    watched: Optional[str]
    ticks: int
    writes: int
    failed_writes: int
    skipped_missing: int
    failed_ticks: int
    missed_deadlines: int
    last_error: Optional[str]
    last_tick_ms: float


class StateResponse(BaseModel):
    users: int = Field(..., description="Users of the population whose hash exists.")
    users_exact: bool
    fresh_users: int = Field(..., description="Users whose streaming fields are within their TTL.")
    fresh_users_exact: bool
    population: int
    watched: Optional[str] = Field(..., description="The user the page shows and the worker keeps fresh.")
    key_prefix: str
    batch_ttl_seconds: Optional[int]
    streaming_ttl_seconds: int
    store_stats: dict[str, int]
    counters: dict[str, int]
    last_read_ms: float
    last_read_kind: Optional[str]
    worker: WorkerStatus
    features: dict[str, list[str]]
    sample_users: list[str]


class BulkLoadResponse(BaseModel):
    count: int
    ttl_seconds: int
    seed: int
    population: int
    seconds: float


class SettingsResponse(BaseModel):
    streaming_ttl_seconds: int
    users_per_tick: int
    tick_seconds: float


class WatchResponse(BaseModel):
    user_id: str
    fresh: bool = Field(..., description="The user has streaming fields within their TTL now.")


class ExpireResponse(BaseModel):
    user_id: str
    streaming_ttl_seconds: int
    pushed_at: float = Field(..., description="Unix seconds of the last push.")
    expires_by: float = Field(..., description="Unix seconds by which its streaming fields are gone.")
    worker: WorkerStatus


class ReadFeature(BaseModel):
    name: str
    view: str
    layer: str = Field(..., description="batch (key-level TTL) or streaming (per-field TTL).")
    field: str = Field(..., description="The Redis hash field.")
    value: Any
    status: str
    field_ttl_ms: int = Field(..., description="HPTTL: -2 missing, -1 no field TTL, else ms left.")
    expires_with_key: bool = Field(..., description="No field TTL of its own; it goes with the key.")
    event_time: Optional[str] = Field(..., description="The view's event time of this value (ISO 8601).")
    age_ms: Optional[int]


class ReadResponse(BaseModel):
    user_id: str
    key: str
    latency_ms: float
    key_ttl_ms: int
    features: list[ReadFeature]


class FeatureSummary(BaseModel):
    name: str
    layer: str
    present: int
    missing: int


class BatchSummary(BaseModel):
    users: int
    complete_users: int
    per_feature: list[FeatureSummary]


class BatchUser(BaseModel):
    user_id: str
    present: int
    requested: int
    missing: list[str]


class BatchReadResponse(BaseModel):
    count: int
    features: list[str]
    total_ms: float
    per_user_ms: float
    summary: BatchSummary
    users: list[BatchUser]


class InspectField(BaseModel):
    view: str
    feature: str
    field: str
    value: Optional[str]
    ttl_ms: int
    ttl: str


class InspectResponse(BaseModel):
    key: str
    exists: bool
    key_ttl_ms: int
    encoding: Optional[str]
    fields: list[InspectField]
    other_fields: dict[str, str]
    user_id: str
    streaming_ttl_seconds: int
    batch_ttl_seconds: Optional[int]
    memory_bytes: Optional[int] = Field(..., description="MEMORY USAGE of the hash.")


class ResetResponse(BaseModel):
    deleted: int
    pattern: str
    worker_running: bool


class ViewFeature(BaseModel):
    name: str
    field: str = Field(..., description="The Redis hash field of this feature.")
    type: str


class ViewInfo(BaseModel):
    name: str
    mode: str = Field(..., description="batch or streaming")
    why: str = Field(..., description="The rule that decided the mode (tag, PushSource, default).")
    entities: list[str]
    key_ttl_seconds: Optional[int]
    field_ttl_seconds: Optional[int]
    feast_ttl_seconds: Optional[int]
    ts_field: str
    key_example: str
    features: list[ViewFeature]
    tags: dict[str, str]


class ViewsResponse(BaseModel):
    views: list[ViewInfo]


class MetricsResponse(BaseModel):
    """Columns of equal length, oldest point first (null: no value for that point)."""

    t: list[float]
    single_p50_ms: list[Optional[float]]
    single_p99_ms: list[Optional[float]]
    batch_p50_ms: list[Optional[float]]
    batch_p99_ms: list[Optional[float]]
    writes_per_second: list[Optional[float]]
    fresh_users: list[int]
    live_users: list[int]
    watched_memory_bytes: list[Optional[int]]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Unreadable body (bad JSON, not an object), or a refused key prefix",
        404: "Unknown user or endpoint",
        405: "Method not allowed",
        413: "Body over 16 KiB",
        415: "Body neither JSON nor a form",
        422: "A bad value, an unknown field or query parameter",
        503: "Redis unreachable or the store not serving",
    }.items()
}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


def _query_doc(name: str, description: str) -> dict[str, Any]:
    return {
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": True,
                "description": description,
                "schema": {"type": "string", "maxLength": MAX_USER_ID},
            }
        ]
    }


def check_query(request: Request, allowed: tuple[str, ...] = ()) -> dict[str, str]:
    """The query parameters; one the endpoint does not take is an error, not ignored."""
    for name in request.query_params:
        if name not in allowed:
            takes = f"parameters: {', '.join(allowed)}" if allowed else "this endpoint takes none"
            raise InputError(name[:64], f"is not a query parameter of this endpoint ({takes})")
    return dict(request.query_params)


async def read_body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request body as a dict, from JSON or a form; size-limited before it is parsed.

    A field the endpoint does not take is an error, not ignored: a misspelt ``count`` must not
    silently become the default."""
    body = await _parse_body(request)
    for name in body:
        if name not in allowed:
            takes = f"fields: {', '.join(allowed)}" if allowed else "this request takes no fields"
            raise InputError(str(name)[:64], f"is not a field of this request ({takes})")
    return body


async def _parse_body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InputError("body", f"is {declared} bytes; the limit is {MAX_BODY_BYTES}", 413)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise InputError("body", f"is over the limit of {MAX_BODY_BYTES} bytes", 413)
    if not raw.strip():
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # `curl -d '{...}'` labels JSON as a form; a body that starts with "{" is never a form.
    if kind in ("", "application/json") or raw.lstrip().startswith(b"{"):
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError("body", f"is not valid JSON: {e}", 400) from None
        if not isinstance(body, dict):
            raise InputError("body", "must be a JSON object", 400)
        return body
    if kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise InputError("body", "is not UTF-8 form data", 400) from None
        # A repeated key (features=a&features=b) is a list; a single one is a value.
        return {k: (v if k == "features" else v[-1]) for k, v in form.items()}
    raise InputError("body", f"content type {quote(kind)} is not JSON or a form", 415)


def _error(
    status: int, message: str, field: Optional[str] = None, headers: Optional[Mapping[str, str]] = None
) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def create_app(demo: Demo) -> FastAPI:
    app = FastAPI(
        title="feast-redis-hexpire demo",
        description="Bulk-load, stream, read and inspect users of a Feast store on Redis hashes with "
        "a key-level TTL (batch) and per-field TTLs (streaming). Every error is "
        '`{"error": "...", "field": "..." | null}`; unknown body fields and query parameters are refused.',
        version="1",
        docs_url=None,  # served below from the package's own Swagger UI files (works offline)
        redoc_url=None,
    )
    app.state.demo = demo

    @app.exception_handler(InputError)
    async def _input_error(_: Request, e: InputError) -> JSONResponse:
        return _error(e.status, str(e), e.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if e.status_code == 404:
            message = f"no such endpoint or file: {where} (the API is described at /docs)"
        elif e.status_code == 405:
            allow = (e.headers or {}).get("Allow") or (e.headers or {}).get("allow") or ""
            message = f"{where} is not allowed" + (f"; use {allow}" if allow else "")
        else:
            message = f"{where}: {e.detail}"
        return _error(e.status_code, message, None, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(422, f"{field}: {first.get('msg', 'invalid')}", field)

    @app.exception_handler(RedisError)
    async def _redis_error(_: Request, e: RedisError) -> JSONResponse:
        return _error(503, f"Redis error: {type(e).__name__}: {e}")

    @app.exception_handler(StoreUnavailableError)
    async def _store_error(_: Request, e: StoreUnavailableError) -> JSONResponse:
        return _error(503, f"Redis error: {e}")

    @app.exception_handler(TimeoutError)
    async def _timeout(_: Request, e: TimeoutError) -> JSONResponse:
        return _error(503, str(e))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        logger.exception("demo request failed")
        return _error(500, f"{type(e).__name__}: {e}")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
        )

    @app.get(
        "/state",
        summary="User counts (alive, fresh streaming), TTLs, counters, worker status (no SCAN)",
        response_model=StateResponse,
        responses=ERRORS,
    )
    async def state(request: Request) -> dict[str, Any]:
        check_query(request)
        return await run_in_threadpool(demo.state)

    @app.get(
        "/views",
        summary="The repo's views as the store sees them: layer and why, TTLs, each feature's hash field",
        response_model=ViewsResponse,
        responses=ERRORS,
    )
    async def views(request: Request) -> dict[str, Any]:
        check_query(request)
        return {"views": await run_in_threadpool(demo.views)}

    @app.get(
        "/metrics",
        summary="The charts' series: read latency p50/p99, writes per second, fresh users, key memory",
        response_model=MetricsResponse,
        responses=ERRORS,
    )
    async def metrics(request: Request) -> dict[str, Any]:
        check_query(request)
        return demo.metrics.series()

    @app.post(
        "/bulk-load",
        summary="Write N synthetic users offline and materialize them",
        openapi_extra=_body_doc(BulkLoadBody),
        response_model=BulkLoadResponse,
        responses=ERRORS,
    )
    async def bulk_load(request: Request) -> dict[str, Any]:
        check_query(request)
        body = await read_body(request, ("count", "ttl_seconds", "seed"))
        return await run_in_threadpool(
            demo.bulk_load, body.get("count", 200), body.get("ttl_seconds", 86400), body.get("seed", 1)
        )

    @app.post(
        "/worker/toggle",
        summary="Pause or resume the streaming worker",
        openapi_extra=_body_doc(ToggleBody),
        response_model=WorkerStatus,
        responses=ERRORS,
    )
    async def toggle(request: Request) -> dict[str, Any]:
        check_query(request)
        body = await read_body(request, ("running",))
        if "running" in body and body["running"] is None:
            raise InputError("running", "must be true or false, got null (omit it to flip the state)")
        return await run_in_threadpool(demo.toggle_worker, body.get("running"))

    @app.post(
        "/worker/settings",
        summary="Streaming TTL of the next pushes and the worker's rate",
        openapi_extra=_body_doc(SettingsBody),
        response_model=SettingsResponse,
        responses=ERRORS,
    )
    async def settings(request: Request) -> dict[str, Any]:
        check_query(request)
        names = ("streaming_ttl_seconds", "users_per_tick", "tick_seconds")
        body = await read_body(request, names)
        _refuse_nulls(body)
        return await run_in_threadpool(demo.settings, *(body.get(n) for n in names))

    @app.post(
        "/watch",
        summary="Watch a user (without user_id: one with fresh streaming data); the worker keeps it fresh",
        openapi_extra=_body_doc(WatchBody),
        response_model=WatchResponse,
        responses=ERRORS,
    )
    async def watch(request: Request) -> dict[str, Any]:
        check_query(request)
        body = await read_body(request, ("user_id",))
        _refuse_nulls(body)
        return await run_in_threadpool(demo.watch, body.get("user_id"))

    @app.post(
        "/scenario/expire",
        summary="Pause and watch it expire: one push with a short streaming TTL, then pause the worker",
        openapi_extra=_body_doc(ExpireBody),
        response_model=ExpireResponse,
        responses=ERRORS,
    )
    async def scenario_expire(request: Request) -> dict[str, Any]:
        check_query(request)
        body = await read_body(request, ("ttl_seconds",))
        _refuse_nulls(body)
        return await run_in_threadpool(demo.watch_expire, body.get("ttl_seconds", 20))

    @app.post(
        "/read",
        summary="get_online_features for one user, with per-field TTLs, event times and ages",
        openapi_extra=_body_doc(ReadBody),
        response_model=ReadResponse,
        responses=ERRORS,
    )
    async def read(request: Request) -> dict[str, Any]:
        check_query(request)
        body = await read_body(request, ("user_id", "features"))
        return await run_in_threadpool(demo.read, body.get("user_id"), body.get("features"))

    @app.post(
        "/batch-read",
        summary="get_online_features for N users: a summary and the per-user details",
        openapi_extra=_body_doc(BatchReadBody),
        response_model=BatchReadResponse,
        responses=ERRORS,
    )
    async def batch_read(request: Request) -> dict[str, Any]:
        check_query(request)
        body = await read_body(request, ("count", "features"))
        return await run_in_threadpool(demo.batch_read, body.get("count", 100), body.get("features"))

    @app.get(
        "/inspect",
        summary="One user's hash: every field, value, field TTL, key TTL, encoding, memory",
        openapi_extra=_query_doc("user_id", "A user of the loaded population, e.g. u0001."),
        response_model=InspectResponse,
        responses=ERRORS,
    )
    async def inspect(request: Request) -> dict[str, Any]:
        query = check_query(request, ("user_id",))
        return await run_in_threadpool(demo.inspect, query.get("user_id"))

    @app.post(
        "/reset",
        summary="Delete the demo's keys (escaped SCAN), pausing the worker first",
        openapi_extra=_body_doc(ResetBody),
        response_model=ResetResponse,
        responses=ERRORS,
    )
    async def reset(request: Request) -> dict[str, Any]:
        check_query(request)
        await read_body(request, ())
        return await run_in_threadpool(demo.reset)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _refuse_nulls(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if value is None:
            raise InputError(name, "must not be null (omit it to keep the current value)")
