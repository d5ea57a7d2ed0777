"""``feast-hexpire doctor``: check the server behind a repo before its users find out.

Connects with the repo's online-store config and reports each check as ok / warning / error,
with the reason and the fix: the server and its commands, the eviction policy, persistence, the
listpack limits against the repo's widest hash, replication (and, with ack_replicas / ack_aof,
the replicas and AOF each master needs), cluster slot coverage, the ACL of the configured user,
each view's TTLs as the store applies them, and the memory per entity of a sample of the
project's keys::

    findings = diagnose(FeatureStore("feature_repo"))
    print(render(findings))

A server that cannot be reached, or has no hash-field expiration, raises a one-line
:class:`~feast_redis_hexpire.exceptions.HexpireError` instead: nothing else is worth checking.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis
from feast import FeatureStore
from redis.exceptions import NoPermissionError, RedisClusterException

from . import layout
from .config import RedisHexpireOnlineStoreConfig, RedisType, parse_connection_string
from .connection import IO_ERRORS, address, primaries, require_hfe, server_version
from .exceptions import StoreUnavailableError
from .online_store import hexpire_store
from .policy import policy_for
from .scripts import ACL_CHECK, run_pipelined
from .views import ViewLayout

__all__ = [
    "ACL_ACK",
    "ACL_ACK_AOF",
    "ACL_REQUIRED",
    "ACL_OPTIONAL",
    "Finding",
    "diagnose",
    "exit_code",
    "render",
]

OK, WARNING, ERROR = "ok", "warning", "error"

# Replication lag (seconds since a replica's last ack) above which a replica counts as behind.
MAX_REPLICA_LAG_S = 10

# The commands the plugin sends (docs/ACL.md), each with probe arguments; "{key}" is a key under
# the store's prefix that is never written. Checked with redis.acl_check_cmd (nothing runs).
ACL_REQUIRED: tuple[tuple[str, ...], ...] = (
    ("ping",),
    ("info", "server"),
    ("command", "info", "hpexpire"),
    ("evalsha", "0" * 40, "1", "{key}"),
    ("script", "load", "return 1"),
    ("hmget", "{key}", "f"),
    ("scan", "0"),
    ("hget", "{key}", "f"),
    ("hset", "{key}", "f", "v"),
    ("hdel", "{key}", "f"),
    ("hexists", "{key}", "f"),
    ("hsetnx", "{key}", "f", "v"),
    ("pexpire", "{key}", "1"),
    ("persist", "{key}"),
    ("hpexpire", "{key}", "1", "FIELDS", "1", "f"),
    ("hpexpireat", "{key}", "1", "FIELDS", "1", "f"),
    ("hpexpiretime", "{key}", "FIELDS", "1", "f"),
    ("hsetex", "{key}", "PXAT", "1", "FIELDS", "1", "f", "v"),
    ("time",),
    ("type", "{key}"),
    ("hkeys", "{key}"),
    ("unlink", "{key}"),
)
# Not needed to serve: `feast-hexpire inspect`, and redis-py's CLIENT SETINFO on connect.
ACL_OPTIONAL: tuple[tuple[str, ...], ...] = (
    ("client", "setinfo", "lib-name", "redis-py"),
    ("hgetall", "{key}"),
    ("pttl", "{key}"),
    ("hpttl", "{key}", "FIELDS", "1", "f"),
    ("object", "encoding", "{key}"),
)

# Required only with ack_replicas / ack_aof (docs/ACL.md): sent after each write batch.
ACL_ACK: tuple[tuple[str, ...], ...] = (("wait", "1", "0"),)
ACL_ACK_AOF: tuple[tuple[str, ...], ...] = (("waitaof", "1", "1", "0"),)


@dataclass
class Finding:
    check: str
    status: str  # ok, warning or error
    message: str  # what was found, and what it means
    fix: str = ""  # what to do about a warning or an error

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _command_name(command: Sequence[str]) -> str:
    """``hset``, or ``script|load`` for a command with subcommands (as ACL rules name them)."""
    return "|".join(command[:2]) if command[0] in ("command", "script", "client", "object") else command[0]


def _config_get(server: redis.Redis, pattern: str) -> dict[str, str] | None:
    """CONFIG GET, or None when the user may not run CONFIG (the plugin's ACL does not grant it)."""
    try:
        return {str(k): str(v) for k, v in server.config_get(pattern).items()}
    except NoPermissionError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Doctor:
    def __init__(self, store: FeatureStore, sample: int) -> None:
        self.store = store
        self.config = store.config
        self.cfg: RedisHexpireOnlineStoreConfig = store.config.online_store
        self.client = hexpire_store(store).client(self.config)
        self.sample = sample
        self.findings: list[Finding] = []
        self.servers: list[tuple[str, redis.Redis]] = []
        views = [*store.list_feature_views(), *store.list_stream_feature_views()]
        self.views = sorted(views, key=lambda v: v.name)
        self.prefix = self.cfg.prefix_for(self.config.project)
        self.segments: dict[str, list[Any]] = {}  # entity segment -> its views
        self.unreadable: set[str] = set()  # segments whose keys this user may not scan or read
        for view in self.views:
            segment = layout.entity_segment(list(view.entities or ()), list(view.join_keys or ()))
            self.segments.setdefault(segment, []).append(view)

    def add(self, check: str, status: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, message, fix))

    def each(self, findings: Iterable[tuple[str, str, str]], check: str) -> None:
        """One finding per server of a check; servers are named when there are several."""
        for where, (status, message, fix) in zip([w for w, _ in self.servers], findings):
            self.add(check, status, f"{where}: {message}" if len(self.servers) > 1 else message, fix)

    # ---- the checks ----

    def server(self) -> None:
        try:
            require_hfe(self.client, self.cfg)
            self.servers = primaries(self.client, self.cfg)
        except IO_ERRORS as e:
            raise StoreUnavailableError(f"cannot reach Redis at {address(self.cfg)}: {e}") from e
        for where, server in self.servers:
            name, version = server_version(server)
            reply = server.execute_command(b"COMMAND", b"INFO", b"HSETEX", b"WAITAOF")
            if isinstance(reply, dict):
                reply = list(reply.values())
            hsetex, waitaof = (bool(r) for r in reply)
            found = f"HEXPIRE yes, HSETEX {'yes' if hsetex else 'no'}, WAITAOF {'yes' if waitaof else 'no'}"
            message = f"{name} {version} at {where}: {found}"
            if not hsetex:
                message += " (streaming writes use HSET + HPEXPIRE in one script)"
            self.add("server", OK, message)
        if not self.views:
            self.add(
                "views", WARNING, f"no feature views registered in project {self.config.project!r}",
                "run `feast apply` in the repo first",
            )  # fmt: skip

    def eviction(self) -> None:
        def one(server: redis.Redis) -> tuple[str, str, str]:
            info = server.info("memory")
            policy, maxmemory = str(info.get("maxmemory_policy")), int(info.get("maxmemory", 0))
            limit = f"maxmemory {maxmemory} B" if maxmemory else "maxmemory 0 (no limit)"
            if policy == "noeviction":
                return (
                    OK,
                    f"maxmemory-policy noeviction, {limit}: nothing is evicted; a full server refuses "
                    "writes (errors, never silent loss)",
                    "",
                )
            if policy.startswith("allkeys-"):
                what = (
                    f"maxmemory-policy {policy}, {limit}: under memory pressure any entity hash can be "
                    "evicted before its TTL: batch and streaming values vanish early and reads "
                    "answer NOT_FOUND for entities that were written"
                )
            else:
                what = (
                    f"maxmemory-policy {policy}, {limit}: under memory pressure only keys with a key "
                    "TTL are evicted, i.e. entities with a batch view (their streaming fields go with "
                    "them); hashes of streaming-only entities are never evicted and a full server "
                    "refuses their writes"
                )
            if not maxmemory:
                return OK, what.replace("under memory pressure", "if a maxmemory is ever set,"), ""
            return WARNING, what, "CONFIG SET maxmemory-policy noeviction (and size maxmemory for the data)"

        self.each((one(s) for _, s in self.servers), "eviction")

    def persistence(self) -> None:
        def one(server: redis.Redis) -> tuple[str, str, str]:
            aof = bool(int(server.info("persistence").get("aof_enabled", 0)))
            save = _config_get(server, "save")
            if aof:
                return OK, "AOF on", ""
            if save is None:
                return (
                    WARNING,
                    "AOF off; the RDB schedule is unknown (the user may not run CONFIG GET)",
                    "check `CONFIG GET save` as an admin, or grant +config|get to the doctor's user",
                )
            if save.get("save", "").strip():
                return (
                    OK,
                    f"AOF off, RDB snapshots on (save {save['save']!r}): a restart loses the writes "
                    "since the last snapshot",
                    "",
                )
            return (
                WARNING,
                "AOF and RDB are both off: a restart empties the online store (every read NOT_FOUND "
                "until the next materialization; streaming values until the next pushes)",
                "CONFIG SET appendonly yes (or a `save` schedule), then CONFIG REWRITE",
            )

        self.each((one(s) for _, s in self.servers), "persistence")

    def _sample_keys(self, segment: str) -> list[bytes]:
        pattern = layout.scan_pattern(self.prefix, segment)
        try:
            return list(itertools.islice(self.client.scan_iter(match=pattern, count=1000), self.sample))
        except NoPermissionError:
            self.unreadable.add(segment)
            return []

    def listpack(self, samples: dict[str, list[bytes]]) -> None:
        longest_value = 0
        for segment, views in self.segments.items():
            keys = samples.get(segment) or []
            fields = [f for v in views for f in self._fields(v)]
            if keys:
                with self.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hmget(key, fields)
                    for reply in pipe.execute(raise_on_error=False):
                        if isinstance(reply, Exception):  # e.g. the user's key pattern excludes it
                            self.unreadable.add(segment)
                            continue
                        longest_value = max([longest_value, *(len(v) for v in reply if v is not None)])
        widest = max(
            ((seg, sum(len(self._fields(v)) for v in views)) for seg, views in self.segments.items()),
            key=lambda p: p[1],
            default=("", 0),
        )
        longest_name = max((len(f) for v in self.views for f in self._fields(v)), default=0)
        any_streaming = any(policy_for(v, self.cfg).streaming for v in self.views)

        def one(server: redis.Redis) -> tuple[str, str, str]:
            limits = _config_get(server, "hash-max-listpack-*")
            if limits is None:
                return (
                    WARNING,
                    "the listpack limits are unknown (the user may not run CONFIG GET)",
                    "check `CONFIG GET hash-max-listpack-*` as an admin",
                )
            entries, value = int(limits["hash-max-listpack-entries"]), int(limits["hash-max-listpack-value"])
            found = (
                f"widest hash {widest[1]} fields ('{widest[0]}': every feature of its views and their "
                f"_ts fields), longest field name {longest_name} B, longest sampled value "
                f"{longest_value} B; hash-max-listpack-entries {entries}, -value {value}"
            )
            over = []
            if widest[1] > entries:
                over.append(f"hashes with more than {entries} fields")
            if max(longest_name, longest_value) > value:
                over.append(f"fields or values longer than {value} B")
            valkey = server_version(server)[0] == "Valkey"
            note = (
                "; Valkey keeps every hash with field TTLs as a hashtable whatever these limits"
                if valkey and any_streaming
                else ""
            )
            if over:
                return (
                    WARNING,
                    f"{found}: {' and '.join(over)} are stored as hashtables, about twice the memory{note}",
                    f"CONFIG SET hash-max-listpack-entries {max(entries, widest[1])} / "
                    f"hash-max-listpack-value {max(value, longest_name, longest_value)} (or slim the views)",
                )
            return OK, f"{found}: every hash fits a listpack{note}", ""

        self.each((one(s) for _, s in self.servers), "listpack")

    def replication(self) -> None:
        def one(server: redis.Redis) -> tuple[str, str, str]:
            info = server.info("replication")
            role = info.get("role")
            if role != "master":
                link = info.get("master_link_status")
                return (
                    ERROR,
                    f"connected to a replica (master {info.get('master_host')}:{info.get('master_port')}, "
                    f"link {link}): writes fail with READONLY",
                    "point connection_string at the master, or use redis_type: redis_sentinel",
                )
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if not replicas:
                return (
                    OK,
                    "master with no replicas: losing this server loses the online data until the "
                    "next materialization",
                    "",
                )
            behind = [
                f"{r.get('ip')}:{r.get('port')} state {r.get('state')} lag {r.get('lag')} s"
                for r in replicas
                if r.get("state") != "online" or int(r.get("lag", 0)) > MAX_REPLICA_LAG_S
            ]
            names = ", ".join(f"{r.get('ip')}:{r.get('port')} lag {r.get('lag')} s" for r in replicas)
            if behind:
                return (
                    WARNING,
                    f"master with {len(replicas)} replica(s); behind or not online: {'; '.join(behind)}: "
                    "a failover now loses the writes they miss",
                    "check the replica's link and load (INFO replication on the replica)",
                )
            return OK, f"master with {len(replicas)} replica(s) online: {names}", ""

        self.each((one(s) for _, s in self.servers), "replication")

    def cluster(self) -> None:
        if self.cfg.redis_type != RedisType.redis_cluster:
            return
        try:
            info = self.client.cluster_info()
        except NoPermissionError as e:
            self.add("cluster", WARNING, f"cannot read CLUSTER INFO: {e}", "grant +cluster|info to check")
            return
        if info and all(isinstance(v, dict) for v in info.values()):  # one reply per node
            info = next(iter(info.values()))
        state, assigned = info.get("cluster_state"), int(info.get("cluster_slots_assigned", 0))
        failing = int(info.get("cluster_slots_fail", 0)) + int(info.get("cluster_slots_pfail", 0))
        message = f"cluster_state {state}, {assigned} of 16384 slots assigned, {failing} failing"
        if state != "ok" or assigned < 16384 or failing:
            self.add(
                "cluster", ERROR, f"{message}: writes and reads of keys in uncovered slots fail",
                "assign every slot and fix or fail over the failing masters (redis-cli --cluster check)",
            )  # fmt: skip
        else:
            self.add("cluster", OK, f"{message}, {len(self.servers)} primaries")

    def acl(self) -> None:
        segment = next(iter(self.segments), "doctor")
        key = f"{self.prefix}{segment}:doctor-probe"
        needed = [*ACL_REQUIRED, *self._ack_commands()]
        commands = [*needed, *ACL_OPTIONAL]
        argv: list[str] = []
        for command in commands:
            argv += [str(len(command)), *(key if a == "{key}" else a for a in command)]
        allowed: list[int] | None
        try:
            allowed = [int(x) for x in run_pipelined(self.client, ACL_CHECK, [([key.encode()], argv)])[0]]
        except NoPermissionError as e:
            allowed = self._dryrun(commands, key, e)
        if allowed is None:
            return
        denied = [_command_name(c) for c, ok in zip(commands, allowed) if ok != 1]
        required = {_command_name(c) for c in needed}
        missing = [c for c in denied if c in required]
        optional = [c for c in denied if c not in required]
        who = self._user()
        if missing:
            self.add(
                "acl", ERROR,
                f"user {who!r} may not run {', '.join(missing)} on {self.prefix}*: writes, reads, apply or "
                f"teardown fail",
                "grant the least-privilege ACL of docs/ACL.md (ACL SETUSER ... with your key prefix)",
            )  # fmt: skip
        elif optional:
            self.add(
                "acl", WARNING, f"user {who!r} may run every command the store needs on {self.prefix}*, "
                f"but not {', '.join(optional)} (feast-hexpire inspect; CLIENT SETINFO is logged in ACL LOG)",
                "grant them as in docs/ACL.md if you use inspect",
            )  # fmt: skip
        else:
            self.add("acl", OK, f"user {who!r} may run every command the plugin sends on {self.prefix}*")

    def _ack_commands(self) -> list[tuple[str, ...]]:
        """WAIT with ack_replicas, WAITAOF with ack_aof: required then, like the rest."""
        if self.cfg.ack_aof:
            return [*ACL_ACK_AOF]
        return [*ACL_ACK] if self.cfg.ack_replicas else []

    def acks(self) -> None:
        """With ack_replicas / ack_aof: each master (each one of a cluster) has that many replicas
        online, and its AOF on for ack_aof; else every write batch to it fails."""
        want = self.cfg.ack_replicas
        if not (want or self.cfg.ack_aof):
            return

        def one(server: redis.Redis) -> tuple[str, str, str]:
            info = server.info("replication")
            online = [
                f"{v.get('ip')}:{v.get('port')}"
                for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            ]
            if len(online) < want:
                return (
                    ERROR,
                    f"ack_replicas: {want}, but the master has {len(online)} replica(s) online: "
                    "every write batch to it fails as not acknowledged",
                    "add replicas (or bring them back online), or lower ack_replicas",
                )
            if self.cfg.ack_aof and not int(server.info("persistence").get("aof_enabled", 0)):
                return (
                    ERROR, "ack_aof: true, but the master runs without AOF: every write batch fails",
                    "CONFIG SET appendonly yes (and in redis.conf), or remove ack_aof",
                )  # fmt: skip
            aof = ", AOF on" if self.cfg.ack_aof else ""
            return OK, f"ack_replicas: {want}: {len(online)} replica(s) online{aof} ({', '.join(online)})", ""

        self.each((one(s) for _, s in self.servers), "acks")

    def _user(self) -> str:
        _, params = parse_connection_string(self.cfg.connection_string)
        return str(params.get("username", "default"))

    def _dryrun(self, commands: Sequence[Sequence[str]], key: str, refused: Exception) -> list[int] | None:
        """Without EVALSHA the check script cannot run: ask ACL DRYRUN, if the user may."""
        who = self._user()
        try:
            replies = [
                self.client.execute_command("ACL", "DRYRUN", who, *(key if a == "{key}" else a for a in c))
                for c in commands
            ]
        except NoPermissionError:
            self.add(
                "acl", ERROR, f"user {who!r} may not run the store's scripts on {self.prefix}* ({refused}); "
                f"the other commands could not be checked (the user may not run ACL DRYRUN either)",
                "grant the least-privilege ACL of docs/ACL.md",
            )  # fmt: skip
            return None
        return [1 if _text(r) == "OK" else 0 for r in replies]

    def _fields(self, view: Any) -> list[str]:
        lay = ViewLayout.of(self.config, view)
        return list(dict.fromkeys([lay.ts_field, *(f for f, _ in lay.fields.values())]))  # packed: one

    def view_ttls(self) -> None:
        for segment, views in self.segments.items():
            policies = {v.name: policy_for(v, self.cfg) for v in views}
            batch = {n: p.key_ttl_ms // 1000 for n, p in policies.items() if not p.streaming}
            for view in views:
                policy = policies[view.name]
                head = f"{view.name} ({policy.mode}, keys {self.prefix}{segment}:<id>)"
                if policy.streaming:
                    origin = "the write" if self.cfg.ttl_from == "write" else "the event time"
                    field_s = policy.field_ttl_ms // 1000
                    message = f"{head}: each written field and its _ts expire {field_s} s after {origin}"
                    shorter = {n: t for n, t in batch.items() if 0 < t < field_s}
                    if shorter:
                        self.add(
                            "view ttl", WARNING, f"{message}; but the key TTL of batch view(s) "
                            f"{', '.join(f'{n} ({t} s)' for n, t in shorter.items())} is shorter: the "
                            f"whole hash, these fields included, goes first",
                            "make the batch key TTL longer than the streaming field TTL",
                        )  # fmt: skip
                    else:
                        self.add("view ttl", OK, message)
                elif policy.key_ttl_ms > 0:  # NO_KEY_TTL (-1): key_ttl_seconds: null
                    message = f"{head}: key TTL {policy.key_ttl_ms // 1000} s, re-pinned on every write"
                    if len(set(batch.values())) > 1:
                        self.add(
                            "view ttl", WARNING, f"{message}; the batch views of this entity have different "
                            f"key TTLs ({batch}): the latest write sets the whole entity's",
                            "give the batch views of one entity the same key TTL",
                        )  # fmt: skip
                    else:
                        self.add("view ttl", OK, message)
                else:
                    self.add(
                        "view ttl", WARNING, f"{head}: no key TTL (key_ttl_seconds: null): if the batch "
                        "refresher stops, stale values are served forever",
                        "set key_ttl_seconds (or tag hexpire.key_ttl_seconds) to the refresh cycle",
                    )  # fmt: skip

    def memory(self, samples: dict[str, list[bytes]]) -> None:
        for segment, keys in samples.items():
            if segment in self.unreadable:
                self.add(
                    "memory", WARNING, f"'{segment}': cannot sample: this user may not scan or read its keys",
                    "see the acl check",
                )  # fmt: skip
                continue
            if not keys:
                self.add("memory", OK, f"'{segment}': no keys stored yet (materialize, then run doctor)")
                continue
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.memory_usage(key, samples=0)
                        pipe.object("encoding", key)
                    replies = pipe.execute(raise_on_error=False)
            except NoPermissionError as e:
                replies = [e]
            if any(isinstance(r, NoPermissionError) for r in replies):
                self.add(
                    "memory", WARNING, f"'{segment}': cannot measure (MEMORY USAGE refused for this user)",
                    "run doctor as a user with +memory|usage and +object|encoding",
                )  # fmt: skip
                continue
            sizes = [int(r) for r in replies[0::2] if isinstance(r, int)]
            encodings: dict[str, int] = {}
            for r in replies[1::2]:
                if isinstance(r, (bytes, str)):
                    encodings[_text(r)] = encodings.get(_text(r), 0) + 1
            if not sizes:
                continue
            self.add(
                "memory", OK, f"'{segment}': {sum(sizes) // len(sizes)} B per entity on average (min "
                f"{min(sizes)}, max {max(sizes)}) over {len(sizes)} sampled key(s); encodings "
                + ", ".join(f"{k} {n}" for k, n in sorted(encodings.items())),
            )  # fmt: skip


def diagnose(store: FeatureStore, sample: int = 20) -> list[Finding]:
    """Every check against the repo's server; raises HexpireError (one line) when the server is
    unreachable or has no hash-field expiration."""
    try:
        doctor = _Doctor(store, sample)
    except RedisClusterException as e:  # redis-py refuses a cluster whose slots are not all covered
        where = address(store.config.online_store)
        fix = "assign every slot to a master (redis-cli --cluster check / fix)"
        return [Finding("cluster", ERROR, f"{where}: {e}", fix)]
    except IO_ERRORS as e:
        raise StoreUnavailableError(f"cannot reach Redis at {address(store.config.online_store)}: {e}") from e
    doctor.server()
    doctor.eviction()
    doctor.persistence()
    samples = {segment: doctor._sample_keys(segment) for segment in doctor.segments}
    doctor.listpack(samples)
    doctor.replication()
    doctor.acks()
    doctor.cluster()
    doctor.acl()
    doctor.view_ttls()
    doctor.memory(samples)
    return doctor.findings


def exit_code(findings: Sequence[Finding]) -> int:
    """1 when any check is an error, else 0."""
    return 1 if any(f.status == ERROR for f in findings) else 0


def render(findings: Sequence[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.status.upper():<8} {f.check:<12} {f.message}")
        if f.fix:
            lines.append(f"{'':<8} {'':<12} fix: {f.fix}")
    return "\n".join(lines)
