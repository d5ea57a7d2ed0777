"""A byte-exact picture of a database, to show that an operation changed nothing it should not."""

from __future__ import annotations

from typing import Any


def snapshot(client: Any, exclude: set[bytes] = frozenset()) -> dict[bytes, tuple[bytes, int]]:
    """Every key (but ``exclude``) -> (DUMP, PEXPIRETIME).

    DUMP serializes the value with its per-field expirations; PEXPIRETIME is the key's absolute
    expiry, so the picture does not drift as TTLs count down.
    """
    keys = [k for k in client.scan_iter(count=1000) if k not in exclude]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.dump(key)
            pipe.execute_command("PEXPIRETIME", key)
        replies = pipe.execute()
    return {k: (replies[2 * i], replies[2 * i + 1]) for i, k in enumerate(keys)}


def seed_neighbours(client: Any, other_types_in_pattern: bool = True) -> None:
    """Keys an operation on project ``fs`` must never touch: other projects, other types, keys
    whose names look like ours or like glob patterns, with and without TTLs.

    ``other_types_in_pattern`` adds a string and a list whose names match ``fs:user:*``."""
    client.hset("fs2:user:u0001", mapping={"risk_segment": "high", "_ts:user_batch_features": "1"})
    client.hset("other:fs:user:u0001", mapping={"a": "1"})
    client.set("fs:user", "a string, not a hash")
    client.set("fs:user*", "glob-named string", ex=3600)
    client.hset("fs:user:[a]", mapping={"x": "y"})  # no _ts field: not ours
    client.hset("fs:merchant:m1", mapping={"risk_segment": "low"})
    client.hset("app:session", mapping={"token": "t", "n": "1"})
    client.hpexpire("app:session", 3_600_000, "token")
    if other_types_in_pattern:
        client.set("fs:user:*", "glob-named string", ex=3600)
        client.rpush("fs:user:list", "a", "b")
