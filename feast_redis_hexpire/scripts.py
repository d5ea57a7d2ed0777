"""Server-side Lua scripts, each atomic; a call's keys share one hash slot, so it is cluster-safe,
except a write script's cross-slot variant (:attr:`Script.across_slots`), whose calls run on one
cluster node with their keys in ARGV (:func:`run_by_node`).

Scripts are sent with EVALSHA inside ordinary pipelines (one round trip per batch); a server that
has not seen a script yet answers NOSCRIPT, and :func:`run_pipelined` loads it and re-sends only
the commands that failed, so a row never runs twice.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import PipelineCommand
from redis.cluster import ClusterPipeline
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError

from .connection import IO_ERRORS, read_replies, send_commands
from .constants import MAX_FIELD_EXPIRE_AT_MS, PACKED_TS_WIDTH, TS_FIELD_PREFIX

__all__ = [
    "ACL_CHECK",
    "DELETE_VIEW_FIELDS",
    "FIELD_TTL_ERROR",
    "RELEASE_FIELDS",
    "UNLINK_IF_OURS",
    "WRITE_PACKED",
    "WRITE_ROWS",
    "Call",
    "CROSS_SLOT_SHEBANG",
    "NOT_LOCAL_ERRORS",
    "NodeAck",
    "NodeBatch",
    "PerSlot",
    "Script",
    "run_batches",
    "run_acked",
    "run_acked_async",
    "run_acked_batch",
    "run_acked_batch_async",
    "run_by_node",
    "run_by_node_async",
    "run_pipelined",
]


# The shebang of a script that may touch keys of several slots of the node it runs on; only keys
# not declared in KEYS (declared keys of two slots are refused with CROSSSLOT), and a key of a
# slot another node serves fails inside the script (NOT_LOCAL_ERRORS).
CROSS_SLOT_SHEBANG = "#!lua flags=allow-cross-slot-keys\n"


@dataclass(frozen=True)
class Script:
    name: str
    lua: str
    # Its calls pass numkeys 0 and the keys at the end of ARGV, followed by their number
    # (_call_args); its Lua reads them with row_keys().
    cross_slot: bool = False
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.lua.encode()).hexdigest())

    @functools.cached_property
    def across_slots(self) -> Script:
        """The same script flagged ``allow-cross-slot-keys``, called with its keys in ARGV: one
        call may write rows of every slot of one cluster node (write scripts only). Built once."""
        return Script(f"{self.name}_cross_slot", CROSS_SLOT_SHEBANG + self.lua, cross_slot=True)


# Lua helper shared by the scripts: HDEL ``list[first..]`` from ``key`` in slices, because Lua's
# unpack() fails with "too many results to unpack" beyond about 8,000 values. ``call`` is
# redis.call or redis.pcall. Returns the number of fields removed.
_HDEL_SLICED = """
local function hdel_sliced(call, key, list, first)
  local removed = 0
  for i = first, #list, 1000 do
    local n = call('HDEL', key, unpack(list, i, math.min(i + 999, #list)))
    if type(n) == 'number' then removed = removed + n end
  end
  return removed
end
"""

# Lua helpers of the write scripts, placed after their ARGV locals: now() (the server's clock
# in ms, read once per call), pin_key(key) (the batch key TTL: PEXPIRE, or PERSIST for
# key_ttl < 0), failed(reply) (a pcall reply that is an error), row_keys() (the rows' keys: KEYS,
# or for a call with numkeys 0, the cross-slot variant, the last ARGV n and the n ARGV before it)
# and each_row(keys, i, span, write) (runs every row, each failing alone).
_WRITE_HELPERS = """
local function row_keys()
  if #KEYS > 0 then return KEYS end
  local n = tonumber(ARGV[#ARGV])
  local keys, before = {}, #ARGV - n - 1
  for r = 1, n do keys[r] = ARGV[before + r] end
  return keys
end
local now_ms
local function now()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end
local function pin_key(key)
  if key_ttl > 0 then
    redis.call('PEXPIRE', key, key_ttl)
  elseif key_ttl < 0 then
    redis.call('PERSIST', key)
  end
end
local function failed(reply)
  return type(reply) == 'table' and reply.err
end
-- The results of write(keys[r], i) for every row r in keys order, its ARGV from i (the first
-- row's at ``i``, the next one's at span(i)): 1, 0, -1, or the row's error as a string (a row's
-- Lua or Redis error ends that row only). One pcall covers the rows up to the first error, not
-- one pcall per row.
local function each_row(keys, i, span, write)
  local results, r, nexti = {}, 1, i
  local function run()
    while r <= #keys do
      nexti = span(i)
      results[r] = write(keys[r], i)
      r, i = r + 1, nexti
    end
  end
  while r <= #keys do
    local ok, err = pcall(run)
    if not ok then
      if nexti == i then error(err) end  -- span(i) failed: the ARGV layout is wrong, not the row
      results[r] = type(err) == 'table' and err.err or tostring(err)
      r, i = r + 1, nexti
    end
  end
  return results
end
"""

# Error code of a streaming row whose field TTLs could not be set (the row is not left behind).
FIELD_TTL_ERROR = "FIELDTTL"

# Write rows of one feature view, one entity hash per row, in one script call.
# KEYS[r]   the entity hash of row r (in a cluster, every key of one call is in one slot; the
#           cross-slot variant takes no KEYS: the keys follow the rows in ARGV, see row_keys())
# ARGV[1]   the view's timestamp field, "_ts:<view>"
# ARGV[2]   batch view: key TTL in ms to re-pin, or "-1" to remove the key TTL (PERSIST);
#           "0" for a streaming view (the key TTL is left alone)
# ARGV[3]   field TTL in ms counted from now (streaming view), "0" for a batch view
# ARGV[4]   "1" to skip the event-time check (skip_dedup)
# ARGV[5]   "1" when the server has HSETEX (Redis >= 8.0, Valkey >= 9.0)
# ARGV[6]   the number of the view's features (a row with that many fields is complete)
# then per row r, in KEYS order: its event time (integer microseconds since the epoch), its
# absolute field expiry in unix ms when TTLs count from the event time (else "0"), the number n
# of its fields, and n field, value pairs (n distinct fields).
# Returns one result per row: 1 written, 0 not newer than the stored row (nothing written, key
# TTL re-pinned), -1 already expired by its event time (nothing written), or the row's error as
# a string. The rows run under pcall: a bad row (say, a key of another type) fails alone and
# the other rows are written.
#
# No streaming field is ever left without its TTL, on any error path:
# - with HSETEX, a field is written together with its TTL in one command, which either does both
#   or nothing (an unknown command, an ACL refusal, an invalid expire time write nothing);
# - without it (Redis 7.4), everything that can refuse a field TTL is tried before the HSET: the
#   expiry is checked against MAX_FIELD_EXPIRE_AT_MS, and HPEXPIREAT is probed on the field
#   "_ts:" (the bare TS_FIELD_PREFIX), which no feature or view can have (a no-op answering -2);
# - the commands after the first write run under pcall; if one still fails or does not answer 1
#   for every field, the row is rolled back by deleting the fields it wrote and the view's "_ts"
#   field, and its error is returned. Deleting is the rollback: the values the row overwrote are
#   gone with it (restoring them would cost a read of every field and its TTL on every write), and
#   a missing field reads NOT_FOUND, while a streaming field without TTL would be served forever.
# The view's "_ts" field expires at the later of the row's expiry and its stored expiry, so it
# never expires before a field of an earlier row of the view that is still there (a row may be
# older, with skip_dedup and ttl_from: event, or have a shorter TTL after a setting changed): a
# value is never read without its event time. A complete row (a field for each of the view's
# features) skips reading the stored expiry: it gives every feature field of the view its own
# expiry, so "_ts" expires with them (only fields of features no longer in the view, which no
# read asks for, may outlive it). Long rows go in slices: Lua's unpack() is limited.
WRITE_ROWS = Script(
    "write_rows",
    _HDEL_SLICED
    + Template(
        """
local ts_field, key_ttl, field_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local skip_check, hsetex, features = ARGV[4] == '1', ARGV[5] == '1', tonumber(ARGV[6])
local SLICE, MAX_AT = 2000, $max_at
local from_now, from_now_at
"""
        + _WRITE_HELPERS
        + """-- One row: ARGV[i] event time, ARGV[i + 1] expiry by event time, fields ARGV[first..last].
local function write(key, i, first, last)
  local expire_at = tonumber(ARGV[i + 1])
  local stored
  if not skip_check then
    stored = redis.call('HGET', key, ts_field)
    if stored and not tonumber(stored) then
      return 'field ' .. ts_field .. ' of ' .. key .. ' is not an event time; nothing of the row was written'
    end
    if stored and tonumber(stored) >= tonumber(ARGV[i]) then
      pin_key(key)
      return 0
    end
  end
  local short = last - first < SLICE
  if field_ttl == 0 and expire_at == 0 then
    if short then
      redis.call('HSET', key, ts_field, ARGV[i], unpack(ARGV, first, last))
    else
      redis.call('HSET', key, ts_field, ARGV[i])
      for j = first, last, SLICE do
        redis.call('HSET', key, unpack(ARGV, j, math.min(j + SLICE - 1, last)))
      end
    end
    pin_key(key)
    return 1
  end
  local at
  if expire_at == 0 then  -- TTL counted from now: the same expiry for every row of the call
    if not from_now then
      from_now = now() + field_ttl
      from_now_at = string.format('%.0f', from_now)
    end
    expire_at, at = from_now, from_now_at
  elseif expire_at <= now() then
    return -1
  else
    at = string.format('%.0f', expire_at)
  end
  if expire_at > MAX_AT then
    return '$code field expiry ' .. at .. ' ms is after ' .. MAX_AT ..
      ' ms, the latest Redis accepts; nothing of the row was written to ' .. key
  end
  if not hsetex then
    local probe = redis.pcall('HPEXPIREAT', key, at, 'FIELDS', 1, '$probe')
    if failed(probe) then
      return '$code HPEXPIREAT failed: ' .. probe.err .. '; nothing of the row was written to ' .. key
    end
  end
  local ts_at = at
  -- The stored "_ts" expiry matters only when there is a stored "_ts" (the event-time check
  -- above read it; a row of a new entity skips this read) and the row lacks some of the view's
  -- features: a complete row gives every feature field the expiry "at", so none outlives "_ts".
  if (skip_check or stored) and (last - first + 1) / 2 < features then
    local stored_at = redis.pcall('HPEXPIRETIME', key, 'FIELDS', 1, ts_field)
    if failed(stored_at) then
      return '$code HPEXPIRETIME failed: ' .. stored_at.err .. '; nothing of the row was written to ' .. key
    end
    if type(stored_at) == 'table' and tonumber(stored_at[1]) and tonumber(stored_at[1]) > expire_at then
      ts_at = string.format('%.0f', tonumber(stored_at[1]))
    end
  end
  if hsetex and short and ts_at == at then
    local reply = redis.pcall('HSETEX', key, 'PXAT', at, 'FIELDS', (last - first + 1) / 2 + 1,
      ts_field, ARGV[i], unpack(ARGV, first, last))
    if failed(reply) then
      return '$code HSETEX failed: ' .. reply.err .. '; nothing of the row was written to ' .. key
    end
    return 1
  end
  local fields = {ts_field}
  for j = first, last, 2 do fields[#fields + 1] = ARGV[j] end
  local function undo(reason)
    hdel_sliced(redis.pcall, key, fields, 1)
    return '$code ' .. reason .. '; the row was removed from ' .. key .. ', not left without a TTL'
  end
  if hsetex then
    local reply = redis.pcall('HSETEX', key, 'PXAT', ts_at, 'FIELDS', 1, ts_field, ARGV[i])
    if failed(reply) then
      return '$code HSETEX failed: ' .. reply.err .. '; nothing of the row was written to ' .. key
    end
    for j = first, last, SLICE do
      local upto = math.min(j + SLICE - 1, last)
      reply = redis.pcall('HSETEX', key, 'PXAT', at, 'FIELDS', (upto - j + 1) / 2, unpack(ARGV, j, upto))
      if failed(reply) then return undo('HSETEX failed: ' .. reply.err) end
    end
    return 1
  end
  if short then
    redis.call('HSET', key, ts_field, ARGV[i], unpack(ARGV, first, last))
  else
    redis.call('HSET', key, ts_field, ARGV[i])
    for j = first, last, SLICE do
      local reply = redis.pcall('HSET', key, unpack(ARGV, j, math.min(j + SLICE - 1, last)))
      if failed(reply) then return undo('HSET failed: ' .. reply.err) end
    end
  end
  local function expire(when, from, upto)
    local codes = redis.pcall('HPEXPIREAT', key, when, 'FIELDS', upto - from + 1, unpack(fields, from, upto))
    if type(codes) ~= 'table' then return 'HPEXPIREAT answered ' .. tostring(codes) end
    if codes.err then return 'HPEXPIREAT failed: ' .. codes.err end
    for j = 1, upto - from + 1 do
      if codes[j] ~= 1 then
        return 'HPEXPIREAT returned ' .. tostring(codes[j]) .. ' for field ' .. fields[from + j - 1] ..
          ' instead of 1'
      end
    end
    return nil
  end
  local problem = expire(ts_at, 1, 1)
  for j = 2, #fields, SLICE / 2 do
    if problem then break end
    problem = expire(at, j, math.min(j + SLICE / 2 - 1, #fields))
  end
  if problem then return undo(problem) end
  return 1
end
return each_row(row_keys(), 7, function(i) return i + 3 + 2 * tonumber(ARGV[i + 2]) end, function(key, i)
  return write(key, i, i + 3, i + 2 + 2 * tonumber(ARGV[i + 2]))
end)
"""
    ).substitute(max_at=MAX_FIELD_EXPIRE_AT_MS, code=FIELD_TTL_ERROR, probe=TS_FIELD_PREFIX),
)

# value_layout: packed. Write rows of one feature view, each as ONE hash field (named by the view)
# whose value packs the event time and every feature value (framing in codec.py), in one call.
# KEYS[r]   the entity hash of row r (in a cluster, every key of one call is in one slot; the
#           cross-slot variant takes no KEYS: the keys follow the rows in ARGV, see row_keys())
# ARGV[1]   the view's field
# ARGV[2]   batch view: key TTL in ms to re-pin, or "-1" to remove the key TTL (PERSIST);
#           "0" for a streaming view (the key TTL is left alone)
# ARGV[3]   field TTL in ms counted from now (streaming view), "0" for a batch view
# ARGV[4]   "1" to skip the event-time check (skip_dedup)
# ARGV[5]   "1" when the server has HSETEX (Redis >= 8.0, Valkey >= 9.0)
# ARGV[6]   the head of the view's packed values (format byte and feature-list fingerprint)
# then per row r, in KEYS order: its absolute field expiry in unix ms when TTLs count from the
# event time (else "0"), "1" when the row lacks some of the view's features (else "0"), and its
# packed value. The event time is read from the value: PACKED_TS_WIDTH bytes after the head,
# offset big-endian, compared byte by byte (exact; Lua's string < follows the server's locale).
# Returns one result per row, as WRITE_ROWS: 1 written, 0 not newer than the stored row (nothing
# written, key TTL re-pinned), -1 already expired by its event time, or the row's error as a
# string. Each row runs under pcall.
#
# A row lacking some features is merged with the stored value of the same feature list: the
# features it lacks keep their stored values (as separate fields would), and they get this
# row's field TTL (the field is one). Only such rows parse the stored value.
#
# No streaming field is ever left without its TTL (the guarantees of WRITE_ROWS, for one field):
# with HSETEX the field and its TTL are set by one command; without it HPEXPIREAT is probed on the
# field "_ts:" (no view has it) before the HSET, and if the HPEXPIREAT after the HSET still fails
# the field is deleted and the row's error returned.
WRITE_PACKED = Script(
    "write_packed",
    Template(
        """
local fld, key_ttl, field_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local skip_check, hsetex, head = ARGV[4] == '1', ARGV[5] == '1', ARGV[6]
local MAX_AT, TS_FROM, TS_TO = $max_at, #head + 1, #head + $ts_width
"""
        + _WRITE_HELPERS
        + """-- The entries of a packed value: its stored bytes per feature, false when missing.
local function entries(v)
  local out, pos, last = {}, TS_TO + 1, #v
  while pos <= last do
    local n, mul, b = 0, 1, 0
    repeat
      b = string.byte(v, pos)
      pos = pos + 1
      n = n + (b % 128) * mul
      mul = mul * 128
    until b < 128
    if n == 0 then
      out[#out + 1] = false
    else
      out[#out + 1] = string.sub(v, pos, pos + n - 2)
      pos = pos + n - 1
    end
  end
  return out
end
local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end
local function merge(new, stored)
  local a, b = entries(new), entries(stored)
  local parts = {string.sub(new, 1, TS_TO)}
  for j = 1, #a do
    local e = a[j] or b[j]
    if e then parts[#parts + 1] = varint(#e + 1) .. e else parts[#parts + 1] = '\\0' end
  end
  return table.concat(parts)
end
-- Whether packed value a's event time is at or after b's.
local function not_older(a, b)
  for j = TS_FROM, TS_TO do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x > y end
  end
  return true
end
local function write(key, expire_at, partial, value)
  local stored = false
  if partial or not skip_check then
    stored = redis.call('HGET', key, fld)
  end
  if stored and string.sub(stored, 1, 1) ~= string.sub(head, 1, 1) then
    return 'field ' .. fld .. ' of ' .. key .. ' is not a value of value_layout: packed (format ' ..
      string.byte(head, 1) .. '); nothing of the row was written'
  end
  if stored and not skip_check and not_older(stored, value) then
    pin_key(key)
    return 0
  end
  if partial and stored and string.sub(stored, 1, #head) == head then
    value = merge(value, stored)
  end
  if field_ttl == 0 and expire_at == 0 then
    redis.call('HSET', key, fld, value)
    pin_key(key)
    return 1
  end
  if expire_at == 0 then
    expire_at = now() + field_ttl
  elseif expire_at <= now() then
    return -1
  end
  local at = string.format('%.0f', expire_at)
  if expire_at > MAX_AT then
    return '$code field expiry ' .. at .. ' ms is after ' .. MAX_AT ..
      ' ms, the latest Redis accepts; nothing of the row was written to ' .. key
  end
  if hsetex then
    local reply = redis.pcall('HSETEX', key, 'PXAT', at, 'FIELDS', 1, fld, value)
    if failed(reply) then
      return '$code HSETEX failed: ' .. reply.err .. '; nothing of the row was written to ' .. key
    end
    return 1
  end
  local probe = redis.pcall('HPEXPIREAT', key, at, 'FIELDS', 1, '$probe')
  if failed(probe) then
    return '$code HPEXPIREAT failed: ' .. probe.err .. '; nothing of the row was written to ' .. key
  end
  redis.call('HSET', key, fld, value)
  local codes = redis.pcall('HPEXPIREAT', key, at, 'FIELDS', 1, fld)
  local problem = nil
  if type(codes) ~= 'table' then
    problem = 'HPEXPIREAT answered ' .. tostring(codes)
  elseif codes.err then
    problem = 'HPEXPIREAT failed: ' .. codes.err
  elseif codes[1] ~= 1 then
    problem = 'HPEXPIREAT returned ' .. tostring(codes[1]) .. ' for field ' .. fld .. ' instead of 1'
  end
  if problem then
    redis.pcall('HDEL', key, fld)
    return '$code ' .. problem .. '; the row was removed from ' .. key .. ', not left without a TTL'
  end
  return 1
end
return each_row(row_keys(), 7, function(i) return i + 3 end, function(key, i)
  return write(key, tonumber(ARGV[i]), ARGV[i + 1] == '1', ARGV[i + 2])
end)
"""
    ).substitute(
        max_at=MAX_FIELD_EXPIRE_AT_MS, code=FIELD_TTL_ERROR, probe=TS_FIELD_PREFIX, ts_width=PACKED_TS_WIDTH
    ),
)

# Remove a deleted view's fields from one hash, only if the hash holds that view's timestamp.
# KEYS[1]   the entity hash
# ARGV[1]   the view's timestamp field; ARGV[2..] its feature fields
# Returns the number of fields removed; a key of another type under the pattern is left alone.
DELETE_VIEW_FIELDS = Script(
    "delete_view_fields",
    _HDEL_SLICED
    + """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return hdel_sliced(redis.call, KEYS[1], ARGV, 1)
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
    _HDEL_SLICED
    + """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local n, ours, found = tonumber(ARGV[1]), {}, false
for i = 2, n + 1 do
  ours[ARGV[i]] = true
  if not found and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then found = true end
end
if not found then return 0 end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 4) == '_ts:' and not ours[field] then
    hdel_sliced(redis.call, KEYS[1], ARGV, 2)
    return 0
  end
end
return redis.call('UNLINK', KEYS[1])
""",
)

# Delete the field-owner records a view holds, never another view's (naming.py).
# KEYS[1]   the owner hash, "<key_prefix>_fields"
# ARGV[1]   the view name
# ARGV[2..] record names, "<entity segment>:<feature>"
# Returns the number of records deleted (Redis removes the hash when it is empty).
RELEASE_FIELDS = Script(
    "release_fields",
    """
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return n
""",
)


# `feast-hexpire doctor`: may the calling user run these commands? Runs none of them
# (redis.acl_check_cmd checks the command and its keys against the caller's ACL).
# KEYS[1]   a key under the store's prefix (only routes the call; never read or written)
# ARGV      commands, each as n followed by its n words (command name first)
# Returns one integer per command: 1 allowed, 0 refused, -1 unknown to the server.
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


Call = tuple[Sequence[bytes], Sequence[Any]]  # (keys, argv); in a cluster, the keys share a slot


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
    for call in calls:
        pipe.execute_command(*_call_args(script, call), **_target(pipe, call[0][0]))


def _call_args(script: Script, call: Call) -> tuple[Any, ...]:
    """The EVALSHA of one call: its keys in KEYS, or (the cross-slot variant) numkeys 0 and the
    keys at the end of ARGV followed by their number."""
    keys, argv = call
    if script.cross_slot:
        return ("EVALSHA", script.sha, 0, *argv, *keys, len(keys))
    return ("EVALSHA", script.sha, len(keys), *keys, *argv)


def _missing(results: list[Any]) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]


def _raise_first(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise result


def run_pipelined(client: Any, script: Script, calls: Sequence[Call]) -> list[Any]:
    """Run ``script`` once per call in one pipeline; returns one reply per call."""
    return _reload_missing(client, script, calls, _pipelined(client, script, calls))


def _pipelined(client: Any, script: Script, calls: Sequence[Call]) -> list[Any]:
    """One reply per call, an error reply as its exception (a connection error raises)."""
    with client.pipeline(transaction=False) as pipe:
        _queue(pipe, script, calls)
        return pipe.execute(raise_on_error=False)


def _reload_missing(
    client: Any, script: Script, calls: Sequence[Call], results: list[Any], raise_first: bool = True
) -> list[Any]:
    """Load the script where the server answered NOSCRIPT, re-send only those calls, and raise
    the first other error (unless ``raise_first`` is false: then it is that call's reply)."""
    missing = _missing(results)
    if missing:
        client.script_load(script.lua)
        with client.pipeline(transaction=False) as pipe:
            _queue(pipe, script, [calls[i] for i in missing])
            for i, result in zip(missing, pipe.execute(raise_on_error=False)):
                results[i] = result
    if raise_first:
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
    return [_call_args(script, call) for call in calls]


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


# One node's part of an acknowledged batch: (the node "host:port", or None for a single server /
# a sentinel's master; the indices of the batch's calls sent to it; the WAIT / WAITAOF replies,
# or the error that failed the node's calls, in which case none of them is confirmed).
NodeAck = tuple[str | None, list[int], list[Any] | Exception]
# Errors that fail one node's part of a batch on a cluster (the other nodes' parts stand):
# MOVED / ASK / CLUSTERDOWN replies, a slot no node serves, the node's connection.
_NODE_ERRORS = (ResponseError, RedisClusterException, *IO_ERRORS)


def run_acked_batch(
    client: Any, script: Script, calls: Sequence[Call], ack: Sequence[Any]
) -> tuple[list[Any], list[NodeAck]]:
    """One write batch followed by ``ack`` on the connection of each node it went to: the
    replies (None for calls of a node that failed) and one :data:`NodeAck` per node.

    On a single server it is :func:`run_acked` (an error raises). On a cluster the calls are
    grouped by the master that owns their slot (``get_node_from_key``) and each group is sent,
    with its own WAIT / WAITAOF, through that node's client (``get_redis_connection``): a WAIT
    only covers writes made on its own connection. A node whose group fails is reported in its
    NodeAck; the cluster client's slot map is then refreshed by one routed command, so the next
    batch goes to the node that serves the slot now."""
    if not isinstance(client, redis.RedisCluster):
        results, acks = run_acked(client, script, calls, ack)
        return results, [(None, list(range(len(calls))), acks)]
    replies: list[Any] = [None] * len(calls)
    nodes: list[NodeAck] = []
    for name, node, rows in _node_groups(client, calls):
        try:
            if isinstance(node, Exception):
                raise node
            server = client.get_redis_connection(node)
            results, acks = run_acked(server, script, [calls[i] for i in rows], ack)
        except _NODE_ERRORS as e:
            nodes.append((name, rows, e))
            try:  # redis-py follows MOVED / reconnects and updates its slot map on this command
                client.exists(calls[rows[0]][0][0])
            except _NODE_ERRORS:
                pass
            continue
        for i, result in zip(rows, results):
            replies[i] = result
        nodes.append((name, rows, acks))
    return replies, nodes


async def run_acked_batch_async(
    client: Any, script: Script, calls: Sequence[Call], ack: Sequence[Any]
) -> tuple[list[Any], list[NodeAck]]:
    """:func:`run_acked_batch` for a redis.asyncio client; on a cluster each node's group and its
    ack go through the node's ``execute_pipeline`` (one connection, in order)."""
    if not isinstance(client, aredis.RedisCluster):
        results, acks = await run_acked_async(client, script, calls, ack)
        return results, [(None, list(range(len(calls))), acks)]
    await client.initialize()  # a new asyncio cluster client reads its slot map on first use
    replies: list[Any] = [None] * len(calls)
    nodes: list[NodeAck] = []
    for name, node, rows in _node_groups(client, calls):
        try:
            if isinstance(node, Exception):
                raise node
            results, acks = await _on_node_async(node, script, [calls[i] for i in rows], ack)
            _raise_first(results + acks)
        except _NODE_ERRORS as e:
            nodes.append((name, rows, e))
            try:
                await client.exists(calls[rows[0]][0][0])
            except _NODE_ERRORS:
                pass
            continue
        for i, result in zip(rows, results):
            replies[i] = result
        nodes.append((name, rows, acks))
    return replies, nodes


def _node_groups(client: Any, calls: Sequence[Call]) -> list[tuple[str, Any, list[int]]]:
    """(node "host:port", node or the error of its lookup, indices of its calls) per master the
    calls' slots belong to, from the client's slot map."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, (keys, _) in enumerate(calls):
        try:
            node: Any = client.get_node_from_key(keys[0])
            name = f"{node.host}:{node.port}"
        except RedisClusterException as e:  # no node serves the slot right now
            node, name = e, f"slot {client.keyslot(keys[0])} (no node)"
        groups.setdefault(name, (node, []))[1].append(i)
    return [(name, node, rows) for name, (node, rows) in groups.items()]


async def _on_node_async(
    node: Any, script: Script, calls: Sequence[Call], ack: Sequence[Any] | None
) -> tuple[list[Any], list[Any]]:
    """The calls, then ``ack`` if any, in one pipeline on an asyncio cluster node's connection
    (NOSCRIPT: loaded there, and only those calls re-sent): one reply per call (an error reply
    as its exception) and the ack replies."""

    async def send(part: Sequence[Call]) -> tuple[list[Any], list[Any]]:
        commands = [PipelineCommand(i, *command) for i, command in enumerate(_evalshas(script, part))]
        if ack is not None:
            commands.append(PipelineCommand(len(part), *ack))
        await node.execute_pipeline(commands)
        results = [c.result for c in commands]
        return results[: len(part)], results[len(part) :]

    results, acks = await send(calls)
    missing = _missing(results)
    if missing:
        await node.execute_command("SCRIPT", "LOAD", script.lua)
        again, more = await send([calls[i] for i in missing])
        acks += more
        for i, result in zip(missing, again):
            results[i] = result
    return results, acks


# Row errors of a cross-slot call that mean the node does not serve the row's key (its slot
# moved or is migrating, the node is no longer its master, or the cluster is down there): the
# server refuses the row's first command on its key, so nothing of the row was written.
NOT_LOCAL_ERRORS = ("non local key", "cluster is down")
# Rows of a batch -> their calls through the per-slot path, with the rows of each call.
PerSlot = Callable[[list[int]], tuple[list[Call], list[list[int]]]]
# run_by_node's answer: the rows of each call, one reply per call, one NodeAck per node.
NodeBatch = tuple[list[list[int]], list[Any], list[NodeAck]]


def _not_local(result: Any) -> bool:
    text = result.decode(errors="replace") if isinstance(result, bytes) else result
    return isinstance(text, str) and any(e in text for e in NOT_LOCAL_ERRORS)


def _settled(
    rows_of_calls: list[list[int]], replies: list[Any], nodes: list[NodeAck]
) -> tuple[NodeBatch, list[int]]:
    """The rows, row results and NodeAcks the cross-slot calls settled, and the rows to send
    again per slot: those of a call or node that failed as a whole (not confirmed written;
    sending a written row again is safe, the script skips rows not newer than the stored one)
    and those the node did not serve."""
    kept_rows: list[list[int]] = []
    kept: list[Any] = []
    again: list[int] = []
    for rows, reply in zip(rows_of_calls, replies):
        if reply is None or isinstance(reply, Exception):
            again += rows
            kept_rows.append([])
            kept.append([])
            continue
        kept_rows.append([])
        kept.append([])
        for row, result in zip(rows, reply):
            if _not_local(result):
                again.append(row)
            else:
                kept_rows[-1].append(row)
                kept[-1].append(result)
    standing = [node for node in nodes if not isinstance(node[2], Exception)]  # the rest go again
    return (kept_rows, kept, standing), sorted(again)


def _on_masters(client: Any, script: Script, calls: Sequence[Call]) -> list[Any]:
    """Each master's calls (``_node_groups``) in one pipeline on a connection of its client
    (``get_redis_connection``), every master's sent before any reply is read, so the masters work
    at the same time: one reply per call (an error reply as its exception; NOSCRIPT: loaded on
    that master and only those calls re-sent), None for the calls of a master that failed (its
    lookup, connection or a reply lost: it is disconnected, out of step)."""
    replies: list[Any] = [None] * len(calls)
    sent: list[tuple[Any, Any, list[int]]] = []  # (master's client, connection, calls)
    try:
        for _, node, idx in _node_groups(client, calls):
            if isinstance(node, Exception):
                continue
            try:
                server = client.get_redis_connection(node)
                conn = server.connection_pool.get_connection()
            except _NODE_ERRORS:
                continue
            sent.append((server, conn, idx))
            if not send_commands(conn, _evalshas(script, [calls[i] for i in idx])):
                _drop(server.connection_pool, conn)
                sent[-1] = (server, None, idx)
        for n, (server, conn, idx) in enumerate(sent):
            results = read_replies(conn, len(idx)) if conn is not None else None
            sent[n] = (server, None, idx)
            if results is None:
                _drop(server.connection_pool, conn)
                continue
            server.connection_pool.release(conn)
            part = [calls[i] for i in idx]
            try:
                results = _reload_missing(server, script, part, results, raise_first=False)
            except _NODE_ERRORS:
                continue
            for i, result in zip(idx, results):
                replies[i] = result
    finally:
        for server, conn, _ in sent:  # replies not read (an exception above): out of step
            if conn is not None:
                _drop(server.connection_pool, conn)
    return replies


def _joined(
    first: NodeBatch, again: list[list[int]], more: list[Any], more_nodes: list[NodeAck]
) -> NodeBatch:
    """The settled part of the cross-slot pass, then the per-slot pass (its NodeAcks' call
    indices shifted past the first pass's calls)."""
    rows, replies, nodes = first
    shifted = [(name, [i + len(rows) for i in calls], acks) for name, calls, acks in more_nodes]
    return rows + again, replies + more, nodes + shifted


def run_by_node(
    client: Any,
    script: Script,
    calls: Sequence[Call],
    rows_of_calls: list[list[int]],
    per_slot: PerSlot,
    ack: Sequence[Any] | None,
) -> NodeBatch:
    """On a cluster, a batch whose ``calls`` each hold rows of one master's slots (grouped by
    ``get_node_from_key``): each master's calls run ``script.across_slots`` in one pipeline on
    that master's connection (``get_redis_connection``), followed by ``ack`` if given (as
    :func:`run_acked_batch`). The rows the master did not serve, and those of calls or masters
    that failed as a whole (a connection error, a refused call), are then encoded by ``per_slot``
    and sent through the per-slot path (:func:`run_pipelined`, or :func:`run_acked_batch` with
    ``ack``), which redis-py routes and which follows MOVED / ASK; its errors raise or are
    reported as there. Returns the rows of each call (the cross-slot calls' settled rows, then
    the per-slot calls'), their replies, and one NodeAck per node of each pass."""
    cross = script.across_slots
    replies: list[Any]
    nodes: list[NodeAck] = []
    if ack is not None:
        replies, nodes = run_acked_batch(client, cross, calls, ack)
    else:
        replies = _on_masters(client, cross, calls)
    first, again = _settled(rows_of_calls, replies, nodes)
    if not again:
        return first
    again_calls, again_rows = per_slot(again)
    if ack is None:
        return _joined(first, again_rows, run_pipelined(client, script, again_calls), [])
    return _joined(first, again_rows, *run_acked_batch(client, script, again_calls, ack))


async def run_by_node_async(
    client: Any,
    script: Script,
    calls: Sequence[Call],
    rows_of_calls: list[list[int]],
    per_slot: PerSlot,
    ack: Sequence[Any] | None,
) -> NodeBatch:
    """:func:`run_by_node` for a redis.asyncio cluster client (each master's calls through its
    node's ``execute_pipeline``)."""
    cross = script.across_slots
    replies: list[Any]
    nodes: list[NodeAck] = []
    if ack is not None:
        replies, nodes = await run_acked_batch_async(client, cross, calls, ack)
    else:
        replies = [None] * len(calls)
        groups = [
            (node, idx) for _, node, idx in _node_groups(client, calls) if not isinstance(node, Exception)
        ]
        answers = await asyncio.gather(
            *(_on_node_async(node, cross, [calls[i] for i in idx], None) for node, idx in groups),
            return_exceptions=True,
        )
        for (_, idx), answer in zip(groups, answers):
            if isinstance(answer, _NODE_ERRORS):
                continue  # every row of the node goes through the per-slot path
            if isinstance(answer, BaseException):
                raise answer
            for i, result in zip(idx, answer[0]):
                replies[i] = result
    first, again = _settled(rows_of_calls, replies, nodes)
    if not again:
        return first
    again_calls, again_rows = per_slot(again)
    if ack is None:
        return _joined(first, again_rows, await run_pipelined_async(client, script, again_calls), [])
    return _joined(first, again_rows, *await run_acked_batch_async(client, script, again_calls, ack))
