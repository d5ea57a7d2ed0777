"""redis-py clients (sync and asyncio; single server, cluster, sentinel) built from the config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import hiredis
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from . import metrics
from .config import RedisHexpireOnlineStoreConfig, RedisType, parse_connection_string
from .exceptions import ConfigError, ServerUnsupportedError, StoreUnavailableError

__all__ = [
    "address",
    "has_hsetex",
    "make_async_client",
    "make_client",
    "primaries",
    "require_hfe",
    "server_version",
]

SyncClient = Union[redis.Redis, redis.RedisCluster]
AsyncClient = Union[aredis.Redis, aredis.RedisCluster]

# connection_string keys that configure the sentinels themselves, not the master.
_SENTINEL_PARAMS = {"sentinel_password": "password", "sentinel_username": "username"}


def _kwargs(cfg: RedisHexpireOnlineStoreConfig, retry_cls: Any) -> tuple[list, dict, dict]:
    nodes, params = parse_connection_string(cfg.connection_string)
    sentinel_kwargs = {
        target: str(params.pop(name)) for name, target in _SENTINEL_PARAMS.items() if name in params
    }
    for name in ("password", "username"):
        if name in params:
            params[name] = str(params[name])
    params.setdefault("socket_timeout", cfg.socket_timeout)
    params.setdefault("socket_connect_timeout", cfg.socket_connect_timeout)
    params["retry"] = retry_cls(ExponentialBackoff(cap=1.0, base=0.05), cfg.retries)
    params["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
    return nodes, params, sentinel_kwargs


def _cluster_params(params: dict) -> None:
    """Adapt the shared connection kwargs to RedisCluster: it takes ``retry`` for the whole
    cluster (refreshing the slot map between attempts), no ``retry_on_error``, and has only
    database 0."""
    db = params.pop("db", 0)
    if db not in (0, "0"):
        raise ConfigError(
            f"connection_string: db={db} is not possible with redis_type: redis_cluster "
            f"(a Redis Cluster has only database 0); remove db= or use a key_prefix instead"
        )
    params.pop("retry_on_error", None)


def _fail_fast_on_auth(fail: Any) -> Any:
    """redis-py retries AuthenticationError (a ConnectionError); a wrong password is not
    transient, so it fails at once: redis-py's failure handler runs (it disconnects), then the
    error is raised instead of retried. Wrapping ``fail`` works with every redis-py release's
    ``call_with_retry`` signature (7.2 added ``is_retryable`` and ``with_failure_count``)."""

    def handle(error: Exception, *args: Any) -> Any:
        result = fail(error, *args)
        if isinstance(error, AuthenticationError):
            raise error
        return result

    return handle


def _fail_fast_on_auth_async(fail: Any) -> Any:
    async def handle(error: Exception, *args: Any) -> Any:
        result = await fail(error, *args)
        if isinstance(error, AuthenticationError):
            raise error
        return result

    return handle


def _counted(fail: Any) -> Any:
    """redis-py's ``fail`` callback, counting each failed attempt (metrics.py)."""

    def counted(*args: Any) -> Any:
        metrics.connection_failure()
        return fail(*args)

    return counted


class _Retry(SyncRetry):
    def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        return super().call_with_retry(do, _fail_fast_on_auth(_counted(fail)), *args, **kwargs)


class _AsyncRetry(AsyncRetry):
    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        return await super().call_with_retry(do, _fail_fast_on_auth_async(_counted(fail)), *args, **kwargs)


def make_client(cfg: RedisHexpireOnlineStoreConfig) -> SyncClient:
    nodes, params, sentinel_kwargs = _kwargs(cfg, _Retry)
    if cfg.redis_type == RedisType.redis_cluster:
        _cluster_params(params)
        return redis.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            **params,
        )
    if cfg.redis_type == RedisType.redis_sentinel:
        sentinel = redis.Sentinel(
            nodes,
            sentinel_kwargs={**sentinel_kwargs, "socket_timeout": cfg.socket_timeout},
            **params,
        )
        return sentinel.master_for(cfg.sentinel_master)
    host, port = nodes[0]
    return redis.Redis(host=host, port=port, **params)


def make_async_client(cfg: RedisHexpireOnlineStoreConfig) -> AsyncClient:
    nodes, params, sentinel_kwargs = _kwargs(cfg, _AsyncRetry)
    if cfg.redis_type == RedisType.redis_cluster:
        _cluster_params(params)
        return aredis.RedisCluster(
            startup_nodes=[aredis.cluster.ClusterNode(h, p) for h, p in nodes],
            **params,
        )
    if cfg.redis_type == RedisType.redis_sentinel:
        sentinel = aredis.Sentinel(
            nodes,
            sentinel_kwargs={**sentinel_kwargs, "socket_timeout": cfg.socket_timeout},
            **params,
        )
        return sentinel.master_for(cfg.sentinel_master)
    host, port = nodes[0]
    return aredis.Redis(host=host, port=port, **params)


def address(cfg: RedisHexpireOnlineStoreConfig) -> str:
    """The configured host:port list (never the password), for error messages."""
    nodes, _ = parse_connection_string(cfg.connection_string)
    text = ",".join(f"{h}:{p}" for h, p in nodes)
    return f"{cfg.redis_type.value} {text}" if cfg.redis_type != RedisType.redis else text


def server_version(client: SyncClient) -> tuple[str, str]:
    """(server name, version) of the server, e.g. ("Redis", "8.2.3") or ("Valkey", "9.1.2")."""
    info = client.info("server")
    if info and all(isinstance(v, dict) for v in info.values()):  # cluster: one dict per node
        info = next(iter(info.values()))
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        return "Valkey", str(info.get("valkey_version", info.get("redis_version")))
    return "Redis", str(info.get("redis_version"))


def primaries(client: SyncClient, cfg: RedisHexpireOnlineStoreConfig) -> list[tuple[str, redis.Redis]]:
    """(address for messages, client) of the server, or of every primary of a cluster: one old
    primary (say, midway through a rolling upgrade) would fail every write to its slots."""
    if isinstance(client, redis.RedisCluster):
        return [
            (f"{node.name} (primary of {address(cfg)})", client.get_redis_connection(node))
            for node in client.get_primaries()
        ]
    return [(address(cfg), client)]


def _knows(server: redis.Redis, command: bytes) -> bool:
    """Whether the server knows ``command`` (COMMAND INFO)."""
    # bytes command name: skips redis-py's COMMAND reply parser, which crashes on the [nil] an
    # old server returns for an unknown command
    reply = server.execute_command(b"COMMAND", b"INFO", command)
    if isinstance(reply, dict):  # RESP3 / cluster shape
        reply = list(reply.values())
    return bool(reply) and reply[0] is not None


def has_hsetex(client: SyncClient, cfg: RedisHexpireOnlineStoreConfig) -> bool:
    """Whether the server (every cluster primary) has HSETEX (Redis >= 8.0, Valkey >= 9.0; not
    Redis 7.4). False when it cannot tell (e.g. an ACL without COMMAND INFO): the write script
    then takes the HSET + HPEXPIREAT path, which every server with hash-field expiration has."""
    try:
        return all(_knows(server, b"HSETEX") for _, server in primaries(client, cfg))
    except (ResponseError, *IO_ERRORS):
        return False


def require_hfe(client: SyncClient, cfg: RedisHexpireOnlineStoreConfig) -> str:
    """Raise unless the server (every cluster primary) has hash-field expiration; returns
    "Redis 8.2.3" or the like."""
    found = []
    for where, server in primaries(client, cfg):
        try:
            name, version = server_version(server)
            known = _knows(server, b"HPEXPIRE")
        except NoPermissionError as e:  # an ACL user without the plugin's commands
            raise StoreUnavailableError(
                f"Redis at {where} refused a command the plugin needs: {e}; grant the user "
                f"the least-privilege ACL in docs/ACL.md"
            ) from e
        if not known:
            raise ServerUnsupportedError(
                f"{name} {version} at {where} has no HEXPIRE (hash-field expiration); "
                f"need Redis >= 7.4 or Valkey >= 9.0"
            )
        found.append(f"{name} {version}")
    return ", ".join(sorted(set(found)))


# Errors of the connection itself (as opposed to an error reply): worth a retry.
IO_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def send_commands(conn: Any, commands: Sequence[tuple[Any, ...]]) -> bool:
    """Write ``commands`` to the socket in one send, without waiting for replies; False if the
    connection failed. Used where a redis-py pipeline's per-command work would dominate."""
    try:
        packed = b"".join([hiredis.pack_command(command) for command in commands])
        conn.send_packed_command([packed], check_health=False)
        return True
    except IO_ERRORS:
        return False


def read_replies(conn: Any, count: int) -> list[Any] | None:
    """``count`` replies, an error reply as its exception (it was read: the connection stays in
    step); None if the connection failed."""
    replies: list[Any] = []
    try:
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except ResponseError as e:
                replies.append(e)
    except IO_ERRORS:
        return None
    return replies
