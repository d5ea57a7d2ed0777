"""The process-wide client registry: store instances with the same connection settings share one
client (one connection pool), so a compute engine that builds a store per batch does not open a
connection per batch.

- Sync clients: one per connection settings, per process. After a fork the child drops the
  parent's clients (without touching their sockets, which the parent still uses) and builds its
  own.
- asyncio clients: one per (event loop, connection settings). Each is closed inside its own loop
  before that loop ends: a keeper task waits for the loop's shutdown (``asyncio.run`` and
  uvicorn cancel every task before closing the loop) and then awaits ``aclose()``, so
  ``asyncio.run()`` after ``asyncio.run()`` leaves no connection behind. A loop closed without
  cancelling its tasks (a hand-driven ``loop.close()``) cannot be awaited any more; its clients
  are dropped on the next call and their sockets close when they are collected.

Every registry update holds one lock, so threads (each with its own loop, or sharing one sync
client) may call in at any time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from . import metrics
from .config import RedisHexpireOnlineStoreConfig
from .connection import AsyncClient, SyncClient, make_async_client, make_client

__all__ = ["async_client", "close_loop_clients", "connection_settings", "sync_client"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pid = os.getpid()
_sync: dict[tuple, SyncClient] = {}
# (event loop, settings) -> (client, the keeper task that closes it when the loop shuts down)
_async: dict[tuple[Any, tuple], tuple[AsyncClient, asyncio.Task]] = {}


def connection_settings(cfg: RedisHexpireOnlineStoreConfig) -> tuple:
    """The settings a client is built from: stores that agree on them share the client."""
    return (
        cfg.connection_string,
        cfg.redis_type,
        cfg.sentinel_master,
        cfg.socket_timeout,
        cfg.socket_connect_timeout,
        cfg.retries,
    )


def _after_fork() -> None:
    """In a forked child, forget the parent's clients (call with the lock held). redis-py does
    not shut down a socket from a process other than the one that opened it, so dropping them
    leaves the parent's connections intact."""
    global _pid
    if os.getpid() != _pid:
        _sync.clear()
        _async.clear()
        _pid = os.getpid()


def sync_client(cfg: RedisHexpireOnlineStoreConfig) -> SyncClient:
    """The process's client for these connection settings (built on first use)."""
    settings = connection_settings(cfg)
    with _lock:
        _after_fork()
        client = _sync.get(settings)
        if client is None:
            if cfg.client == "glide":
                logger.warning("online_store client: glide is ignored; this store uses redis-py")
            client = _sync[settings] = make_client(cfg)
            if cfg.metrics_port:
                metrics.serve(cfg.metrics_port)
        return client


async def _close_with_loop(key: tuple[Any, tuple], client: AsyncClient) -> None:
    """Wait until the loop shuts down (this task is cancelled), then close ``client`` in it."""
    try:
        await asyncio.Event().wait()
    finally:
        with _lock:
            owned = key in _async and _async[key][0] is client
            if owned:
                del _async[key]
        if owned:
            await client.aclose()


def async_client(cfg: RedisHexpireOnlineStoreConfig) -> AsyncClient:
    """The client of the running event loop for these settings (a new loop gets a new client)."""
    loop = asyncio.get_running_loop()
    key = (loop, connection_settings(cfg))
    with _lock:
        _after_fork()
        for stale in [k for k in _async if k[0].is_closed()]:
            del _async[stale]  # its loop ended without cancelling the keeper: nothing to await
        entry = _async.get(key)
        if entry is None:
            client = make_async_client(cfg)
            if cfg.metrics_port:
                metrics.serve(cfg.metrics_port)
            entry = _async[key] = (client, loop.create_task(_close_with_loop(key, client)))
        return entry[0]


async def close_loop_clients() -> None:
    """Close every client of the running loop now (``OnlineStore.close``, the server's shutdown)."""
    loop = asyncio.get_running_loop()
    with _lock:
        mine = [_async.pop(k) for k in [k for k in _async if k[0] is loop]]
    for client, keeper in mine:
        keeper.cancel()
        await client.aclose()
