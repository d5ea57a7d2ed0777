"""feast-redis-hexpire: a Feast online store with one Redis hash per entity and two TTL layers."""

from .config import RedisHexpireOnlineStoreConfig
from .online_store import RedisHexpireOnlineStore

__all__ = ["RedisHexpireOnlineStore", "RedisHexpireOnlineStoreConfig"]
__version__ = "0.1.0"
