"""The online-store configuration: every setting declared once, with its default and help.

The README's configuration table is checked against ``RedisHexpireOnlineStoreConfig.model_fields``
by a test, so a setting cannot be added without being documented.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Literal

from feast.repo_config import FeastConfigBaseModel
from pydantic import Field, StrictStr, ValidationError, field_validator, model_validator

from .constants import DEFAULT_FIELD_TTL_SECONDS, DEFAULT_KEY_TTL_SECONDS, MAX_TTL_SECONDS

__all__ = [
    "RedisHexpireOnlineStoreConfig",
    "RedisType",
    "check_ttl_seconds",
    "parse_connection_string",
    "redact",
]

STORE_TYPES = (
    "feast_redis_hexpire.RedisHexpireOnlineStore",
    "feast_redis_hexpire.online_store.RedisHexpireOnlineStore",
)


class RedisType(StrEnum):
    redis = "redis"
    redis_cluster = "redis_cluster"
    redis_sentinel = "redis_sentinel"


# Any `...password=` pair: password, sentinel_password, ssl_password.
_SECRET = re.compile(r"((?:^|,)\s*\w*password\s*=)[^,]*", re.IGNORECASE)
_UNSET_ENV = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def redact(text: str) -> str:
    """``text`` with every ``password=...`` value replaced, for logs, errors and reprs."""
    return _SECRET.sub(r"\1***", text)


def _scrub(value: Any) -> Any:
    """``value`` with passwords redacted, for the ``input_value`` of a validation error."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def parse_connection_string(connection_string: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``host:port[,host:port...][,key=value...]`` as Feast's redis store reads it.

    Values are JSON-decoded when they parse (``ssl=true`` -> True, ``db=1`` -> 1), so the same
    string that works with ``type: redis`` works here.
    """
    nodes: list[tuple[str, int]] = []
    params: dict[str, Any] = {}
    for part in connection_string.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            name, value = part.split("=", 1)
            try:
                params[name.strip()] = json.loads(value)
            except json.JSONDecodeError:
                params[name.strip()] = value
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(
                f"connection_string: {redact(part)!r} is not host:port "
                f"(expected host:port[,password=...][,ssl=true][,db=N])"
            )
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("connection_string: no host:port in it")
    return nodes, params


def _positive(name: str, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_ttl_seconds(name: str, value: int) -> int:
    """``value`` if it is a TTL both servers accept, else ValueError naming ``name``."""
    if value <= 0 or value > MAX_TTL_SECONDS:
        raise ValueError(
            f"{name} must be between 1 and {MAX_TTL_SECONDS} seconds (about 317 years: Redis 8.2 "
            f"refuses a field expiry after 2^46-1 ms since the epoch), got {value}"
        )
    return value


class RedisHexpireOnlineStoreConfig(FeastConfigBaseModel):
    """Online store config: Feast's ``type: redis`` settings plus the two TTL layers."""

    type: Literal[STORE_TYPES] = Field(  # type: ignore[valid-type]
        STORE_TYPES[0], description="Online store type selector."
    )
    connection_string: StrictStr = Field(
        "localhost:6379",
        description="`host:port[,host:port...],password=...,username=...,ssl=true,db=N`, as "
        "Feast's redis store; other `key=value` pairs go to redis-py (e.g. `ssl_ca_certs=`, "
        "`ssl_certfile=`, `ssl_keyfile=`). Several hosts are cluster seeds or sentinels.",
    )
    redis_type: RedisType = Field(
        RedisType.redis, description="`redis`, `redis_cluster` or `redis_sentinel`."
    )
    sentinel_master: StrictStr = Field(
        "mymaster", description="Master name the sentinels watch (`redis_sentinel` only)."
    )
    key_ttl_seconds: int | None = Field(
        DEFAULT_KEY_TTL_SECONDS,
        description="Key-level EXPIRE that every batch-view write re-pins (seed: one daily "
        "cycle), 1 to 10000000000. `null`: batch writes leave keys without a key TTL and remove "
        "one set earlier (PERSIST), also for rows skipped as not newer. View tag "
        "`hexpire.key_ttl_seconds` overrides it.",
    )
    stream_field_ttl_seconds: int = Field(
        DEFAULT_FIELD_TTL_SECONDS,
        description="Per-field TTL (HPEXPIRE) of every field a streaming-view write sets, 1 to "
        "10000000000. View tag `hexpire.field_ttl_seconds` overrides it.",
    )
    ttl_from: Literal["write", "event"] = Field(
        "write",
        description="Streaming field TTL counts from the `write` (seed) or from the row's "
        "`event` timestamp; with `event`, an already expired row is dropped and counted.",
    )
    key_prefix: StrictStr = Field(
        "{project}:",
        description="Text before `<entity>:<id>` in every key; `{project}` is replaced by the "
        "project name. Must not be empty.",
    )
    field_names: Literal["auto", "feature", "view_feature"] = Field(
        "auto",
        description="Hash field per feature: `auto` (`risk_segment`; when views of one entity "
        "share a feature name, the first view owns the bare name and the others write "
        "`<view>:<feature>`, recorded in `<key_prefix>_fields`; see Storage layout), `feature` "
        "(always the bare name; two views of one entity may not share a feature name) or "
        "`view_feature` (always `<view>:<feature>`).",
    )
    value_encoding: Literal["text", "proto"] = Field(
        "text",
        description="`text`: readable values decoded by the view's schema (see Storage "
        "layout); `proto`: serialized ValueProto bytes like Feast's redis store.",
    )
    value_layout: Literal["fields", "packed"] = Field(
        "fields",
        description="`fields`: one hash field per feature plus `_ts:<view>` (readable in "
        "redis-cli); `packed`: one field per view, named by the view, holding its event time and "
        "values (less memory; see Value layouts). Change it only through `feast apply`, which "
        "refuses while the views hold data in the other layout.",
    )
    freshness_check: Literal["off", "flag", "drop"] = Field(
        "off",
        description="Read-time check of a view's `ttl` against the stored event time: `flag` "
        "marks stale values OUTSIDE_MAX_AGE, `drop` reports them NOT_FOUND.",
    )
    write_batch_size: int = Field(
        2000, description="Rows per pipelined round trip on writes (bounds client memory)."
    )
    write_rows_per_call: int = Field(
        100,
        description="Rows per write-script call (in a cluster: see `cluster_write_calls`). More rows per "
        "call cost the server less CPU per row but block other clients longer per call; see "
        "BENCHMARKS.md for the measurement behind the default.",
    )
    cluster_write_calls: Literal["node", "slot"] = Field(
        "node",
        description="On a cluster, what one write-script call holds: `node`, up to "
        "`write_rows_per_call` rows of any slots of one master (a script flagged "
        "`allow-cross-slot-keys`, its keys in ARGV; rows whose slot moved meanwhile go again per "
        "slot); `slot`, rows of one hash slot only (random entities rarely share one: about one "
        "row per call). A `key_prefix` with a hash tag puts every key in one slot: per slot.",
    )
    socket_timeout: float | None = Field(
        5.0, description="Seconds to wait for a reply before the command fails."
    )
    socket_connect_timeout: float | None = Field(5.0, description="Seconds to wait for a TCP connection.")
    retries: int = Field(3, description="Retries with exponential backoff on connection errors and timeouts.")
    skip_dedup: bool = Field(
        False,
        description="Write rows without the event-time check (an older row may overwrite a "
        "newer one). Kept for compatibility with Feast's redis store.",
    )
    full_scan_for_deletion: bool | None = Field(
        True,
        description="On `feast apply`, remove the fields of deleted views from every hash "
        "(one SCAN of the view's entities); `false`/`null` leaves them.",
    )
    ack_replicas: int = Field(
        0,
        description="Opt-in durable writes: after each write batch, WAIT (same connection) until "
        "this many replicas have it; rows not acknowledged within `ack_timeout_seconds` are "
        "reported as failed. `0` is off. Single server, Sentinel and cluster (each shard's master).",
    )
    ack_timeout_seconds: float = Field(
        1.0,
        description="How long a write batch waits for `ack_replicas` / `ack_aof` (below `socket_timeout`).",
    )
    ack_aof: bool = Field(
        False,
        description="Wait with WAITAOF instead: each batch is in the master's AOF (`appendonly yes`) "
        "and in the AOF of `ack_replicas` replicas.",
    )
    metrics_port: int | None = Field(
        None,
        description="Serve the store's Prometheus metrics on this port (needs the extra "
        "`metrics`), started by the first client of the process; for a materialization job. "
        "Under `feast serve --metrics` they appear on Feast's endpoint without it.",
    )
    client: Literal["redis", "glide"] = Field(
        "redis",
        description="Accepted for compatibility with Feast's redis store; reads and writes "
        "always use redis-py (`glide` logs a warning).",
    )

    @field_validator("key_ttl_seconds", "stream_field_ttl_seconds")
    @classmethod
    def _ttl(cls, value: int | None, info: Any) -> int | None:
        return None if value is None else check_ttl_seconds(info.field_name, value)

    @field_validator("write_batch_size", "write_rows_per_call")
    @classmethod
    def _positive_int(cls, value: int, info: Any) -> int:
        _positive(info.field_name, value)
        return value

    @field_validator("socket_timeout", "socket_connect_timeout")
    @classmethod
    def _positive_float(cls, value: float | None, info: Any) -> float | None:
        _positive(info.field_name, value)
        return value

    @field_validator("ack_replicas")
    @classmethod
    def _acks(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"ack_replicas must be >= 0, got {value}")
        return value

    @field_validator("ack_timeout_seconds")
    @classmethod
    def _ack_timeout(cls, value: float) -> float:
        _positive("ack_timeout_seconds", value)
        return value

    @field_validator("metrics_port")
    @classmethod
    def _port(cls, value: int | None) -> int | None:
        if value is not None and not 0 < value < 65536:
            raise ValueError(f"metrics_port must be a TCP port (1..65535), got {value}")
        return value

    @field_validator("retries")
    @classmethod
    def _retries(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"retries must be >= 0, got {value}")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.replace("{project}", "x").strip():
            raise ValueError("key_prefix must not be empty or blank")
        return value

    @field_validator("connection_string")
    @classmethod
    def _connection(cls, value: str) -> str:
        unset = _UNSET_ENV.search(value)
        if unset:
            raise ValueError(
                f"connection_string refers to environment variable {unset.group(1)}, which is "
                f"not set (start a server with `feast-hexpire local-redis` and export it)"
            )
        parse_connection_string(value)
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _redact_errors(cls, values: Any, handler: Any) -> Any:
        # pydantic prints each error's input value, which for connection_string holds the
        # password; Feast's RepoConfig re-raises these errors on `feast apply`.
        try:
            return handler(values)
        except ValidationError as e:
            errors = [{**err, "input": _scrub(err.get("input"))} for err in e.errors()]
            raise ValidationError.from_exception_data(e.title, errors) from None  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _sentinel(self) -> RedisHexpireOnlineStoreConfig:
        if self.redis_type == RedisType.redis_sentinel and not self.sentinel_master:
            raise ValueError("sentinel_master must be set for redis_type: redis_sentinel")
        return self

    @model_validator(mode="after")
    def _ack(self) -> RedisHexpireOnlineStoreConfig:
        if not (self.ack_replicas or self.ack_aof):
            return self
        if self.socket_timeout is not None and self.ack_timeout_seconds >= self.socket_timeout:
            raise ValueError(
                f"ack_timeout_seconds ({self.ack_timeout_seconds}) must be below socket_timeout "
                f"({self.socket_timeout}): the wait happens inside one reply"
            )
        return self

    def ack_command(self) -> tuple[Any, ...] | None:
        """WAIT / WAITAOF sent after each write batch, or None when acknowledgements are off."""
        timeout_ms = max(1, int(self.ack_timeout_seconds * 1000))
        if self.ack_aof:
            return ("WAITAOF", 1, self.ack_replicas, timeout_ms)
        if self.ack_replicas:
            return ("WAIT", self.ack_replicas, timeout_ms)
        return None

    def prefix_for(self, project: str) -> str:
        return self.key_prefix.replace("{project}", project)

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            yield name, redact(value) if name == "connection_string" else value


def __getattr__(name: str) -> Any:
    # Feast loads the store class from the module that defines its config class.
    if name == "RedisHexpireOnlineStore":
        from .online_store import RedisHexpireOnlineStore

        return RedisHexpireOnlineStore
    raise AttributeError(name)


def settings_table() -> str:
    """The README's configuration table, made from the declarations above."""
    rows = ["| setting | default | what it does |", "|---|---|---|"]
    for name, spec in RedisHexpireOnlineStoreConfig.model_fields.items():
        default = getattr(spec.default, "value", spec.default)
        rows.append(f"| `{name}` | `{'null' if default is None else default}` | {spec.description} |")
    return "\n".join(rows)
