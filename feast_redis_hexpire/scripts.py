"""Server-side Lua scripts: each touches exactly one key, so it is atomic and cluster-safe.

Scripts are sent with EVALSHA inside ordinary pipelines (one round trip per batch); a server that
has not seen a script yet answers NOSCRIPT, and :func:`run_pipelined` loads it and re-sends only
the commands that failed, so a row never runs twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import ClusterPipeline
from redis.exceptions import NoScriptError, RedisClusterException

from .connection import read_replies, send_commands

__all__ = ["DELETE_VIEW_FIELDS", "UNLINK_IF_OURS", "WRITE_ROW", "Script", "run_batches", "run_pipelined"]


@dataclass(frozen=True)
class Script:
    name: str
    lua: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.lua.encode()).hexdigest())


# Write one row of one feature view into its entity hash.
# KEYS[1]   the entity hash
# ARGV[1]   the view's timestamp field, "_ts:<view>"
# ARGV[2]   the row's event time, integer microseconds since the epoch
# ARGV[3]   key TTL in ms (batch view), "0" for none
# ARGV[4]   field TTL in ms (streaming view), "0" for a batch view
# ARGV[5]   absolute field expiry in unix ms when TTLs count from the event time, else "0"
# ARGV[6]   "1" to skip the event-time check (skip_dedup)
# ARGV[7..] field, value pairs of the row
# Returns 1 written, 0 not newer than the stored row (nothing written, key TTL re-pinned),
# -1 already expired by its event time (nothing written). The HSET and the HPEXPIRE run in one
# script, so no streaming field ever exists without its TTL. The key TTL is set by the latest
# batch write, as in the seed's BulkLoad. Long rows go in slices: Lua's unpack() is limited.
WRITE_ROW = Script(
    "write_row",
    """
local key, ts_field = KEYS[1], ARGV[1]
local key_ttl, field_ttl, expire_at = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local SLICE = 2000
if ARGV[6] ~= '1' then
  local stored = redis.call('HGET', key, ts_field)
  if stored and tonumber(stored) >= tonumber(ARGV[2]) then
    if key_ttl > 0 then redis.call('PEXPIRE', key, key_ttl) end
    return 0
  end
end
if expire_at > 0 then
  local now = redis.call('TIME')
  if expire_at <= tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
    return -1
  end
end
if #ARGV <= SLICE then
  redis.call('HSET', key, ts_field, ARGV[2], unpack(ARGV, 7))
else
  redis.call('HSET', key, ts_field, ARGV[2])
  for i = 7, #ARGV, SLICE do redis.call('HSET', key, unpack(ARGV, i, math.min(i + SLICE - 1, #ARGV))) end
end
if key_ttl > 0 then redis.call('PEXPIRE', key, key_ttl) end
if field_ttl == 0 and expire_at == 0 then return 1 end
local fields = {ts_field}
for i = 7, #ARGV, 2 do fields[#fields + 1] = ARGV[i] end
local half = SLICE / 2
for i = 1, #fields, half do
  local last = math.min(i + half - 1, #fields)
  local codes
  if expire_at > 0 then
    codes = redis.call('HPEXPIREAT', key, expire_at, 'FIELDS', last - i + 1, unpack(fields, i, last))
  else
    codes = redis.call('HPEXPIRE', key, field_ttl, 'FIELDS', last - i + 1, unpack(fields, i, last))
  end
  for j = 1, #codes do
    if codes[j] ~= 1 then
      for k = 1, #fields, half do
        redis.call('HDEL', key, unpack(fields, k, math.min(k + half - 1, #fields)))
      end
      return redis.error_reply('HPEXPIRE returned ' .. tostring(codes[j]) .. ' for field ' ..
        fields[i + j - 1] .. ' of ' .. key .. ' instead of 1; the row was removed, not left without a TTL')
    end
  end
end
return 1
""",
)

# Remove a deleted view's fields from one hash, only if the hash holds that view's timestamp.
# KEYS[1]   the entity hash
# ARGV[1]   the view's timestamp field; ARGV[2..] its feature fields
# Returns the number of fields removed; a key of another type under the pattern is left alone.
DELETE_VIEW_FIELDS = Script(
    "delete_view_fields",
    """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return redis.call('HDEL', KEYS[1], unpack(ARGV))
end
return 0
""",
)

# Remove a key found by SCAN only if it is a hash holding one of this project's timestamp fields,
# so a key of another application that happens to match the pattern is never deleted. A hash that
# also holds another owner's "_ts:" field (a project sharing the key_prefix) keeps that owner's
# fields: only this project's fields are removed from it.
# KEYS[1]       candidate key
# ARGV[1]       n, the number of this project's timestamp fields
# ARGV[2..n+1]  those timestamp fields; ARGV[n+2..] the feature fields of the same views
# Returns 1 when the key was unlinked, 0 when it was left (or only this project's fields removed).
UNLINK_IF_OURS = Script(
    "unlink_if_ours",
    """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local n, ours, found = tonumber(ARGV[1]), {}, false
for i = 2, n + 1 do
  ours[ARGV[i]] = true
  if not found and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then found = true end
end
if not found then return 0 end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 4) == '_ts:' and not ours[field] then
    redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
    return 0
  end
end
return redis.call('UNLINK', KEYS[1])
""",
)


# `feast-hexpire doctor`: may the calling user run these commands? Runs none of them
# (redis.acl_check_cmd checks the command and its keys against the caller's ACL).
# KEYS[1]   a key under the store's prefix (only routes the call; never read or written)
# ARGV      commands, each as n followed by its n words (command name first)
# Returns one integer per command: 1 allowed, 0 refused, -1 unknown to the server.
__all__ += ["ACL_CHECK"]
ACL_CHECK = Script(
    "acl_check",
    """
local out, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(ARGV, i + 1, i + n))
  if not ok then out[#out + 1] = -1 elseif allowed then out[#out + 1] = 1 else out[#out + 1] = 0 end
  i = i + n + 1
end
return out
""",
)

Call = tuple[bytes, Sequence[Any]]  # (key, argv)


def _target(pipe: Any, key: bytes) -> dict[str, Any]:
    """For redis-py's sync ClusterPipeline: the node of ``key``'s slot, named explicitly.
    Without it the pipeline asks the server for the keys of every EVALSHA (COMMAND GETKEYS on
    the default node: one extra round trip per row) before routing it by its slot anyway."""
    if not isinstance(pipe, ClusterPipeline):
        return {}
    try:
        return {"target_nodes": pipe.get_node_from_key(key)}
    except RedisClusterException:  # slot not covered right now: redis-py routes and retries it
        return {}


def _queue(pipe: Any, script: Script, calls: Sequence[Call]) -> None:
    # execute_command, not pipe.evalsha(): redis-py's ClusterPipeline blocks the evalsha()
    # method (a script could touch keys of several slots), but routes a raw EVALSHA by its one
    # key's slot, so each shard gets its rows in one batch and the shards run in parallel.
    for key, argv in calls:
        pipe.execute_command("EVALSHA", script.sha, 1, key, *argv, **_target(pipe, key))


def _missing(results: list[Any]) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]


def _raise_first(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise result


def run_pipelined(client: Any, script: Script, calls: Sequence[Call]) -> list[Any]:
    """Run ``script`` once per call in one pipeline; returns one reply per call."""
    with client.pipeline(transaction=False) as pipe:
        _queue(pipe, script, calls)
        results = pipe.execute(raise_on_error=False)
    return _reload_missing(client, script, calls, results)


def _reload_missing(client: Any, script: Script, calls: Sequence[Call], results: list[Any]) -> list[Any]:
    """Load the script where the server answered NOSCRIPT, re-send only those calls, and raise
    the first other error."""
    missing = _missing(results)
    if missing:
        client.script_load(script.lua)
        with client.pipeline(transaction=False) as pipe:
            _queue(pipe, script, [calls[i] for i in missing])
            for i, result in zip(missing, pipe.execute(raise_on_error=False)):
                results[i] = result
    _raise_first(results)
    return results


def run_batches(client: Any, script: Script, batches: Iterable[Sequence[Call]]) -> Iterator[list[Any]]:
    """One reply list per batch, in order, each batch one round trip.

    On a single server (or a sentinel's master) batch k+1 is sent before batch k's replies are
    read, on one connection, so encoding the next batch overlaps the server's work on this one.
    A cluster client runs :func:`run_pipelined` per batch (per-node pipelines). After a
    connection error every batch whose replies were not read goes through :func:`run_pipelined`,
    which retries; re-sending a row is safe because the script skips rows not newer than the
    stored one.
    """
    if not isinstance(client, redis.Redis):
        for calls in batches:
            yield run_pipelined(client, script, calls)
        return
    pool = client.connection_pool
    conn: Any = pool.get_connection()  # connecting retries with the configured backoff
    unread: list[Sequence[Call]] = []  # sent, replies not read yet: at most two batches
    try:
        for calls in batches:
            unread.append(calls)
            if conn is not None and send_commands(conn, _evalshas(script, calls)):
                if len(unread) == 1:
                    continue
                replies = read_replies(conn, len(unread[0]))
                if replies is not None:
                    yield _reload_missing(client, script, unread.pop(0), replies)
                    continue
            _drop(pool, conn)
            conn = None
            while unread:
                yield run_pipelined(client, script, unread.pop(0))
        if unread and conn is not None:
            replies = read_replies(conn, len(unread[0]))
            if replies is not None:
                yield _reload_missing(client, script, unread.pop(0), replies)
        if unread:
            _drop(pool, conn)
            conn = None
        while unread:
            yield run_pipelined(client, script, unread.pop(0))
    finally:
        if conn is not None:
            if unread:  # replies still on the wire: this connection is out of step
                conn.disconnect()
            pool.release(conn)


def _evalshas(script: Script, calls: Sequence[Call]) -> list[tuple[Any, ...]]:
    return [("EVALSHA", script.sha, 1, key, *argv) for key, argv in calls]


def _drop(pool: Any, conn: Any) -> None:
    if conn is not None:
        conn.disconnect()
        pool.release(conn)
    return None


async def run_pipelined_async(client: Any, script: Script, calls: Sequence[Call]) -> list[Any]:
    """:func:`run_pipelined` for a redis.asyncio client."""
    async with client.pipeline(transaction=False) as pipe:
        _queue(pipe, script, calls)
        results = await pipe.execute(raise_on_error=False)
    missing = _missing(results)
    if missing:
        await client.script_load(script.lua)
        async with client.pipeline(transaction=False) as pipe:
            _queue(pipe, script, [calls[i] for i in missing])
            for i, result in zip(missing, await pipe.execute(raise_on_error=False)):
                results[i] = result
    _raise_first(results)
    return results


def run_acked(
    client: Any, script: Script, calls: Sequence[Call], ack: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """:func:`run_pipelined` followed, on the same connection, by ``ack`` (``WAIT n ms`` or
    ``WAITAOF local n ms``), which covers every write sent before it on that connection.
    Returns the replies and the ack replies (two when NOSCRIPT made a second round trip)."""
    with client.pipeline(transaction=False) as pipe:
        _queue(pipe, script, calls)
        pipe.execute_command(*ack)
        results = pipe.execute(raise_on_error=False)
    acks = [results.pop()]
    missing = _missing(results)
    if missing:
        client.script_load(script.lua)
        with client.pipeline(transaction=False) as pipe:
            _queue(pipe, script, [calls[i] for i in missing])
            pipe.execute_command(*ack)
            again = pipe.execute(raise_on_error=False)
        acks.append(again.pop())
        for i, result in zip(missing, again):
            results[i] = result
    _raise_first(results + acks)
    return results, acks


async def run_acked_async(
    client: Any, script: Script, calls: Sequence[Call], ack: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """:func:`run_acked` for a redis.asyncio client."""
    async with client.pipeline(transaction=False) as pipe:
        _queue(pipe, script, calls)
        pipe.execute_command(*ack)
        results = await pipe.execute(raise_on_error=False)
    acks = [results.pop()]
    missing = _missing(results)
    if missing:
        await client.script_load(script.lua)
        async with client.pipeline(transaction=False) as pipe:
            _queue(pipe, script, [calls[i] for i in missing])
            pipe.execute_command(*ack)
            again = await pipe.execute(raise_on_error=False)
        acks.append(again.pop())
        for i, result in zip(missing, again):
            results[i] = result
    _raise_first(results + acks)
    return results, acks


__all__ += ["run_acked", "run_acked_async"]
