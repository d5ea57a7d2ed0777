"""feast-redis-hexpire: a Feast online store with one Redis hash per entity and two TTL layers."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArrowMaterializationEngine",
    "ArrowMaterializationEngineConfig",
    "RedisHexpireOnlineStore",
    "RedisHexpireOnlineStoreConfig",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use (this is how Feast looks them up), so `feast-hexpire --help` and the
    # CLI's argument errors don't pay for importing Feast.
    if name == "RedisHexpireOnlineStore":
        from .online_store import RedisHexpireOnlineStore

        return RedisHexpireOnlineStore
    if name == "RedisHexpireOnlineStoreConfig":
        from .config import RedisHexpireOnlineStoreConfig

        return RedisHexpireOnlineStoreConfig
    if name in ("ArrowMaterializationEngine", "ArrowMaterializationEngineConfig"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
