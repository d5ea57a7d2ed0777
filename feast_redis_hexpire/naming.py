"""Which hash field holds each feature of a view: the ``field_names`` setting.

``auto`` (the default): a feature's field is its bare name (``risk_segment``) unless another view
of the same entity owns that name; then it is ``<view>:<feature>``. Ownership is first come and
is recorded only for *contested* names (declared by two or more views of one entity segment), in
one small hash per key prefix, ``<key_prefix>_fields`` (``fs:_fields``): hash field
``<segment>:<feature>`` -> owning view. ``feast apply`` records it with HSETNX, so an owner never
changes once recorded; views already in the registry claim first (their data, possibly written by
an earlier plugin version, has bare names), then the new views, batch before streaming, by name.
A record stays while any view other than its owner declares the name, so removing the owner never
renames the survivors (they keep their ``<view>:<feature>`` fields: stable beats pretty); it is
deleted when no such view is left, and teardown deletes the records of its views (an empty hash
is removed by Redis). A name nobody contests has no record and stays bare, so a repo without
shared names (the sample repo) has no ``_fields`` key at all.

Lookups are read-only (one HMGET per view) and cached per process; the cache is dropped when this
process applies (``forget``). ``feature`` keeps bare names and refuses shared ones at apply;
``view_feature`` always writes ``<view>:<feature>``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feast import RepoConfig
from redis.exceptions import ResponseError

from .config import RedisHexpireOnlineStoreConfig
from .connection import IO_ERRORS, address, make_client
from .constants import FIELD_OWNERS_KEY
from .exceptions import StoreUnavailableError
from .scripts import RELEASE_FIELDS, run_pipelined

__all__ = [
    "ViewNames",
    "apply_claims",
    "claim_name",
    "feature_fields",
    "forget",
    "generation",
    "owners_key",
    "release",
    "release_views",
]


@dataclass(frozen=True)
class ViewNames:
    """What naming needs of one view: its (versioned) name, entity segment and stored features."""

    name: str
    segment: str
    features: tuple[str, ...]
    streaming: bool = False


_lock = threading.Lock()
_cache: dict[tuple[str, str, str, tuple[str, ...]], list[str]] = {}
_generation = 0


def owners_key(prefix: str) -> str:
    """``<key_prefix>_fields``: no colon after the prefix, so no entity key or SCAN pattern
    ``<prefix><segment>:*`` can match it."""
    return f"{prefix}{FIELD_OWNERS_KEY}"


def claim_name(segment: str, feature: str) -> str:
    return f"{segment}:{feature}"


def generation() -> int:
    """Changes whenever cached lookups are dropped (cached layouts compare it)."""
    return _generation


def forget() -> None:
    """Drop this process's cached lookups (after an apply or teardown in this process)."""
    global _generation
    with _lock:
        _cache.clear()
        _generation += 1


def _prefixed(view: str, feature: str) -> str:
    return f"{view}:{feature}"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _unavailable(cfg: RedisHexpireOnlineStoreConfig, key: str, err: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(f"cannot read the field owners {key!r} from Redis at {address(cfg)}: {err}")


def feature_fields(config: RepoConfig, client: Any, view: ViewNames) -> list[str]:
    """The hash field of each of ``view.features``, in order. ``client`` may be None: a
    short-lived client is opened for the one lookup (cached per process afterwards)."""
    cfg: RedisHexpireOnlineStoreConfig = config.online_store
    if cfg.field_names == "feature":
        return list(view.features)
    if cfg.field_names == "view_feature":
        return [_prefixed(view.name, f) for f in view.features]
    prefix = cfg.prefix_for(config.project)
    cache_key = (prefix, view.segment, view.name, view.features)
    cached = _cache.get(cache_key)
    if cached is not None:
        return cached
    if not view.features:
        return []
    key = owners_key(prefix)
    names = [claim_name(view.segment, f) for f in view.features]
    try:
        if client is None:
            own = make_client(cfg)
            try:
                owners = own.hmget(key, names)
            finally:
                own.close()
        else:
            owners = client.hmget(key, names)
    except (ResponseError, *IO_ERRORS) as e:
        raise _unavailable(cfg, key, e) from e
    fields = [
        f if owner is None or _text(owner) == view.name else _prefixed(view.name, f)
        for f, owner in zip(view.features, owners)
    ]
    with _lock:
        _cache[cache_key] = fields
    return fields


def apply_claims(
    config: RepoConfig, client: Any, registered: Sequence[ViewNames], new: Sequence[ViewNames]
) -> dict[str, int]:
    """Record the owner of every contested name among the views that remain after an apply
    (``registered``: already in the registry; ``new``: the rest), and delete the records no
    remaining view other than the owner needs. Returns ``{"claimed": n, "released": n}``."""
    cfg: RedisHexpireOnlineStoreConfig = config.online_store
    forget()
    if cfg.field_names != "auto":
        return {"claimed": 0, "released": 0}
    key = owners_key(cfg.prefix_for(config.project))
    order = [
        *sorted(registered, key=lambda v: (v.streaming, v.name)),
        *sorted(new, key=lambda v: (v.streaming, v.name)),
    ]
    users: dict[str, list[str]] = {}  # claim name -> views declaring it, in claim order
    for view in order:
        for feature in view.features:
            names = users.setdefault(claim_name(view.segment, feature), [])
            if view.name not in names:
                names.append(view.name)
    try:
        records = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
        unneeded: dict[str, list[str]] = {}  # owner -> its records no other remaining view declares
        for name, owner in records.items():
            if not [v for v in users.get(name, []) if v != owner]:
                unneeded.setdefault(owner, []).append(name)
        released = sum(release(config, client, owner, names) for owner, names in sorted(unneeded.items()))
        claimed = 0
        contested = [(n, views[0]) for n, views in users.items() if len(views) > 1 and n not in records]
        if contested:
            with client.pipeline(transaction=False) as pipe:
                for name, first in contested:
                    pipe.hsetnx(key, name, first)
                claimed = sum(pipe.execute())
    except (ResponseError, *IO_ERRORS) as e:
        raise _unavailable(cfg, key, e) from e
    forget()
    return {"claimed": claimed, "released": released}


def release(config: RepoConfig, client: Any, owner: str, names: Sequence[str]) -> int:
    """Delete the records ``names`` that ``owner`` holds (never another view's); returns how many."""
    if not names:
        return 0
    key = owners_key(config.online_store.prefix_for(config.project))
    return int(run_pipelined(client, RELEASE_FIELDS, [([key.encode()], [owner, *names])])[0])


def release_views(config: RepoConfig, client: Any, views: Sequence[ViewNames]) -> int:
    """Teardown: delete every record the ``views`` own."""
    if config.online_store.field_names != "auto":
        return 0
    released = sum(
        release(config, client, v.name, [claim_name(v.segment, f) for f in v.features]) for v in views
    )
    forget()
    return released
