"""The demo's HTTP API and page (FastAPI; the OpenAPI description is at /openapi.json, /docs).

Bodies may be JSON or an HTML form (``application/x-www-form-urlencoded``). Bad input is a 4xx
JSON error ``{"error": ..., "field": ...}`` naming the field; a Redis failure is a 503 JSON
error. Blocking Feast/Redis calls run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from ..exceptions import StoreUnavailableError
from .builder import MAX_COUNT, MAX_TTL
from .core import MAX_BATCH_READ, Demo
from .errors import InputError

__all__ = ["create_app", "MAX_BODY_BYTES"]

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024


class BulkLoadBody(BaseModel):
    count: int = Field(200, ge=1, le=MAX_COUNT, description="Users u0001..uN to (re)load.")
    ttl_seconds: int = Field(86400, ge=1, le=MAX_TTL, description="Key-level TTL of this load.")
    seed: int = Field(1, description="Random seed of the synthetic rows (same seed, same rows).")


class ToggleBody(BaseModel):
    running: Optional[bool] = Field(None, description="Set the state; omitted: flip it.")


class ReadBody(BaseModel):
    user_id: str = Field(..., description="A user of the loaded population, e.g. u0001.")
    features: Optional[list[str]] = Field(
        None, description="Feature names (or view:feature); default: the fraud_model subset."
    )


class BatchReadBody(BaseModel):
    count: int = Field(100, ge=1, le=MAX_BATCH_READ, description="Users to read (the first N).")
    features: Optional[list[str]] = Field(None, description="As for /read.")


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


async def read_body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request body as a dict, from JSON or a form; size-limited before it is parsed.

    A field the endpoint does not take is an error, not ignored: a misspelt ``count`` must not
    silently become the default."""
    body = await _parse_body(request)
    for name in body:
        if name not in allowed:
            raise InputError(str(name)[:64], f"is not a field of this request (fields: {', '.join(allowed)})")
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
    raise InputError("body", f"content type {kind!r} is not JSON or a form", 415)


def _error(status: int, message: str, field: Optional[str] = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def create_app(demo: Demo) -> FastAPI:
    app = FastAPI(
        title="feast-redis-hexpire demo",
        description="Bulk-load, stream, read and inspect users of a Feast store on Redis hashes with "
        "a key-level TTL (batch) and per-field TTLs (streaming).",
        version="1",
    )
    app.state.demo = demo

    @app.exception_handler(InputError)
    async def _input_error(_: Request, e: InputError) -> JSONResponse:
        return _error(e.status, str(e), e.field)

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

    @app.get("/state", summary="User count, TTLs, counters and worker status (no SCAN)")
    async def state() -> dict[str, Any]:
        return await run_in_threadpool(demo.state)

    @app.post(
        "/bulk-load",
        summary="Write N synthetic users offline and materialize them",
        openapi_extra=_body_doc(BulkLoadBody),
    )
    async def bulk_load(request: Request) -> dict[str, Any]:
        body = await read_body(request, ("count", "ttl_seconds", "seed"))
        return await run_in_threadpool(
            demo.bulk_load, body.get("count", 200), body.get("ttl_seconds", 86400), body.get("seed", 1)
        )

    @app.post(
        "/worker/toggle", summary="Pause or resume the streaming worker", openapi_extra=_body_doc(ToggleBody)
    )
    async def toggle(request: Request) -> dict[str, Any]:
        body = await read_body(request, ("running",))
        return await run_in_threadpool(demo.toggle_worker, body.get("running"))

    @app.post(
        "/read",
        summary="get_online_features for one user, with per-field TTLs",
        openapi_extra=_body_doc(ReadBody),
    )
    async def read(request: Request) -> dict[str, Any]:
        body = await read_body(request, ("user_id", "features"))
        return await run_in_threadpool(demo.read, body.get("user_id"), body.get("features"))

    @app.post(
        "/batch-read", summary="get_online_features for N users", openapi_extra=_body_doc(BatchReadBody)
    )
    async def batch_read(request: Request) -> dict[str, Any]:
        body = await read_body(request, ("count", "features"))
        return await run_in_threadpool(demo.batch_read, body.get("count", 100), body.get("features"))

    @app.get("/inspect", summary="One user's hash: every field, value, field TTL, key TTL, encoding")
    async def inspect(user_id: Optional[str] = None) -> dict[str, Any]:
        return await run_in_threadpool(demo.inspect, user_id)

    @app.post("/reset", summary="Delete the demo's keys (escaped SCAN), pausing the worker first")
    async def reset() -> dict[str, Any]:
        return await run_in_threadpool(demo.reset)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
