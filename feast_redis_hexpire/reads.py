"""The read path's pieces: which HMGET fields each view needs, the hash keys of a request's
entity rows, sending the HMGETs, decoding replies and the freshness check."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from feast import RepoConfig, utils
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from . import codec, layout, response, wire
from .connection import read_replies, send_commands
from .exceptions import BadValueError
from .views import ViewLayout

logger = logging.getLogger(__name__)


def _decode(view: ViewLayout, feature: str, key: bytes, raw: bytes) -> ValueProto:
    try:
        return view.decoders[feature](raw)
    except (ValueError, TypeError) as e:  # also protobuf's DecodeError, a ValueError
        raise BadValueError(
            f"feature view {view.name!r}, feature {feature!r} of key {key.decode(errors='replace')}: "
            f"stored value {raw[:40]!r} does not decode as the declared type ({e}); if the feature's "
            f"type changed, materialize the view again"
        ) from e


@dataclass
class ViewRead:
    """One view's part of a read: its fields, and where each entity's values sit in the replies."""

    table: Any
    view: ViewLayout
    names: list[str]  # requested features the view has, in request order
    fields: list[str]  # hash fields: the view's _ts field, then one per name
    replies: list[int]  # per key: its reply (set by plan_reads)
    positions: list[list[int]]  # per key: where fields sit in that reply


def plan_reads(
    config: RepoConfig,
    requests: Sequence[tuple[Any, Sequence[bytes], list[str] | None]],
    memo: dict | None = None,
) -> tuple[list[tuple[bytes, list[str]]], list[ViewRead]]:
    """HMGET commands (one per distinct key) for several (view, keys, features) requests,
    and where each view's values sit in their replies. ``memo`` (a read plan's) keeps the field
    lists between calls, keyed by the views' layouts, so a changed layout is planned anew."""
    reads = []
    layouts = []
    members: dict[bytes, list[int]] = {}  # key -> the requests reading it
    for request_no, (table, keys, requested) in enumerate(requests):
        view = ViewLayout.of(config, table)
        layouts.append(view)
        vkey = ("view", request_no, id(view))
        known = memo.get(vkey) if memo is not None else None
        if known is None or known[0] is not view:
            names = [f for f in (requested or view.fields) if f in view.fields]
            fields = [] if view.packed else [view.fields[f][0] for f in names]  # packed: ts_field holds all
            known = (view, names, [view.ts_field] + fields)
            if memo is not None:
                if len(memo) > 256:  # layouts keep changing (settings changed at run time)
                    memo.clear()
                memo[vkey] = known
        reads.append(ViewRead(table, view, known[1], known[2], [], []))
        for key in keys:
            members.setdefault(key, []).append(request_no)
    # Keys read by the same requests share one field list: work per combination, not per key.
    combos: dict[tuple[int, ...], tuple[list[str], dict[int, list[int]]]] = {}
    commands: list[tuple[bytes, list[str]]] = []
    where: dict[bytes, tuple[int, dict[int, list[int]]]] = {}
    for key, request_nos in members.items():
        nos = tuple(request_nos)
        combo = combos.get(nos)
        if combo is None:
            ckey = ("combo", nos, tuple(id(layouts[n]) for n in nos))
            cached = memo.get(ckey) if memo is not None else None
            if cached is not None and all(a is layouts[n] for a, n in zip(cached[0], nos)):
                combo = cached[1]
            else:
                combo = combine_fields([reads[n].fields for n in request_nos], request_nos)
                if memo is not None:
                    memo[ckey] = (tuple(layouts[n] for n in nos), combo)
            combos[nos] = combo
        where[key] = (len(commands), combo[1])
        commands.append((key, combo[0]))
    for request_no, (read, (_, keys, _)) in enumerate(zip(reads, requests)):
        read.replies = [where[key][0] for key in keys]
        read.positions = [where[key][1][request_no] for key in keys]
    return commands, reads


def combine_fields(
    field_lists: list[list[str]], request_nos: list[int]
) -> tuple[list[str], dict[int, list[int]]]:
    """One HMGET field list covering several views' fields, and each view's positions in it."""
    index: dict[str, int] = {}
    positions = {
        n: [index.setdefault(f, len(index)) for f in fields] for n, fields in zip(request_nos, field_lists)
    }
    return list(index), positions


# Replies that mean the cluster's slot map moved: the read goes again through redis-py's cluster
# pipeline, which follows the redirection and refreshes the map.
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


def hmget_direct(client: redis.Redis, commands: list[tuple[bytes, list[str]]]) -> list | None:
    """The HMGETs written in one send on one pooled connection and their replies read back: a
    third of a redis-py pipeline's client work. None after an I/O error (the caller retries
    through the pipeline; reads are safe to repeat); an error reply is raised after every
    reply was read, so the connection stays in step."""
    return _hmget_on([(client, list(range(len(commands))))], commands)


def hmget_cluster_direct(client: RedisCluster, commands: list[tuple[bytes, list[str]]]) -> list | None:
    """:func:`hmget_direct` on a cluster: the HMGETs grouped by the primary that serves each
    key's slot, sent to every primary before any reply is read (one round trip, not one per
    primary in turn). None after an I/O error or a redirection (the caller reads through the
    cluster pipeline)."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    for n, (key, _) in enumerate(commands):
        node = client.get_node_from_key(key)
        if node is None:
            return None
        groups.setdefault(node.name, (node, []))[1].append(n)
    return _hmget_on([(client.get_redis_connection(node), nos) for node, nos in groups.values()], commands)


def _hmget_on(
    targets: list[tuple[redis.Redis, list[int]]], commands: list[tuple[bytes, list[str]]]
) -> list | None:
    """Send each target server its commands (by number), then read every reply. A connection is
    returned to its pool only once all its replies were read; otherwise it is disconnected."""
    taken: list[tuple[Any, Any, list[int]]] = []
    replies: list[Any] = [None] * len(commands)
    done = False
    try:
        for client, nos in targets:
            pool = client.connection_pool
            conn = pool.get_connection()
            taken.append((pool, conn, nos))
            if not send_commands(conn, [("HMGET", commands[n][0], *commands[n][1]) for n in nos]):
                return None
        for _, conn, nos in taken:
            got = read_replies(conn, len(nos))
            if got is None:
                return None
            for n, reply in zip(nos, got):
                replies[n] = reply
        done = True
    finally:
        for pool, conn, _ in taken:
            if not done:  # replies may still be on the wire: this connection is out of step
                conn.disconnect()
            pool.release(conn)
    errors = [reply for reply in replies if isinstance(reply, ResponseError)]
    if any(isinstance(e, _REDIRECTS) for e in errors):
        return None
    if errors:  # e.g. WRONGTYPE: the key holds no hash
        raise errors[0]
    return replies


def entity_keys(
    config: RepoConfig, table: Any, join_key_values: dict, entity_map: dict, shared: dict
) -> tuple[list[bytes], list[list[int]] | None, int]:
    """The distinct hash keys of the request's entity rows for ``table``, the response rows
    each one fills (None: key i is row i), and the number of response rows: what Feast's
    ``_get_unique_entities`` gives, as keys. Keys are built straight from the join-key values;
    an aliased projection (join_key_map) or missing columns go through Feast's helper."""
    view = ViewLayout.of(config, table)
    join_keys = tuple(entity_map[name] for name in table.entities)
    columns: list[list[ValueProto]] = [join_key_values.get(jk) or [] for jk in join_keys]
    if table.projection.join_key_map or not all(columns):
        entities, groups, total = utils._get_unique_entities(table, join_key_values, entity_map)
        return view.keys.keys(utils._get_entity_key_protos(entities)), list(groups), total
    builder = view.keys
    signature = (builder.prefix, tuple(builder.entity_names), join_keys)
    if signature not in shared:  # views of one entity share their keys
        rows: dict[bytes, list[int]] = {}
        head = builder.head  # one entity, one join key: the key is this plus the escaped id
        if head is not None and len(columns) == 1:
            for row_no, value in enumerate(columns[0]):
                rows.setdefault((head + layout.id_text(value)).encode(), []).append(row_no)
        else:
            for row_no, values in enumerate(zip(*columns)):
                key = builder.key(EntityKeyProto(join_keys=join_keys, entity_values=values))
                rows.setdefault(key, []).append(row_no)
        output_len = min(len(c) for c in columns)
        fanout = None if len(rows) == output_len else list(rows.values())  # no repeated entity
        shared[signature] = (list(rows), fanout, output_len)
    return shared[signature]


def native_entity_keys(
    config: RepoConfig, table: Any, native: dict[str, list], entity_map: dict, shared: dict
) -> tuple[list[bytes], list[list[int]] | None, int] | None:
    """:func:`entity_keys` from join-key values that are plain ``str`` / ``int`` objects (the
    same keys: ``layout.id_text`` of their ValueProtos), for a view of one entity without an
    aliased projection; None where :func:`entity_keys` must build them from ValueProtos."""
    if len(table.entities) != 1 or table.projection.join_key_map:
        return None
    builder = ViewLayout.of(config, table).keys
    join_key = entity_map[table.entities[0]]
    column = native.get(join_key)
    if builder.head is None or not column:
        return None
    signature = (builder.prefix, tuple(builder.entity_names), (join_key,))
    known = shared.get(signature)
    if known is None:
        head, escape = builder.head, layout.escape_id
        texts = [escape(v) if type(v) is str else str(v) for v in column]
        if len(texts) == 1:
            known = ([(head + texts[0]).encode()], None, 1)
        else:
            rows: dict[bytes, list[int]] = {}
            for row_no, text in enumerate(texts):
                rows.setdefault((head + text).encode(), []).append(row_no)
            fanout = None if len(rows) == len(texts) else list(rows.values())  # no repeated entity
            known = (list(rows), fanout, len(texts))
        shared[signature] = known
    return known


def decode_columns(
    read: ViewRead, commands: list, replies: list, share: bool = False
) -> tuple[list, list[list]]:
    """The raw _ts values and one decoded column per feature (None: missing), per entity.
    ``share``: entities with the same stored value get the same ValueProto object (decoded
    once; counts and categories repeat a lot), for callers that only copy the values."""
    mine = [replies[n] for n in read.replies]
    ts_raw = [reply[pos[0]] for reply, pos in zip(mine, read.positions)]
    raw_columns: list[list[bytes | None]] | None = None
    if read.view.packed:  # one field per view: split each value into the fields layout's replies
        ts_raw, raw_columns = _unpack(read, commands, ts_raw)
    columns = []
    for i, (name, decode) in enumerate(((n, read.view.decoders[n]) for n in read.names), start=1):
        if raw_columns is not None:
            raws = raw_columns[i - 1]
        else:
            raws = [reply[pos[i]] for reply, pos in zip(mine, read.positions)]
        try:
            if share:
                decoded = {raw: None if raw is None else decode(raw) for raw in dict.fromkeys(raws)}
                columns.append(list(map(decoded.__getitem__, raws)))
            else:
                columns.append([None if raw is None else decode(raw) for raw in raws])
        except (ValueError, TypeError):  # find the entity for a clear error
            for reply_no, raw in zip(read.replies, raws):
                if raw is not None:
                    _decode(read.view, name, commands[reply_no][0], raw)
            raise
    return ts_raw, columns


_ENCODERS: dict[int, tuple[ViewLayout, dict[str, Callable[[bytes], bytes]]]] = {}


def value_encoders(view: ViewLayout) -> dict[str, Callable[[bytes], bytes]]:
    """Per feature of ``view``: stored bytes -> a FeatureVector ``values`` entry (wire.py),
    built once per layout (a changed layout is a new object, and gets its own)."""
    known = _ENCODERS.get(id(view))
    if known is not None and known[0] is view:
        return known[1]
    encoders = {
        name: wire.value_encoder(view.decoders[name], kind, view.encoding)
        for name, (_, kind) in view.fields.items()
    }
    if len(_ENCODERS) > 256:  # layouts keep changing (settings changed at run time)
        _ENCODERS.clear()
    _ENCODERS[id(view)] = (view, encoders)  # holds the layout: its id is not reused meanwhile
    return encoders


@dataclass
class RouteView:
    """One view of a :class:`Route`: where its fields sit in every entity's reply."""

    table: Any
    view: ViewLayout
    requested: list[str]
    names: list[str]  # requested features the view has, in request order
    ts_position: int
    positions: list[int]  # per name
    encoders: list[Callable[[bytes], bytes]]  # per name (value_encoders)
    slots: list[int | None]  # response.slots(requested, names)


@dataclass
class Route:
    """A read plan whose views all key their entity the same way (one entity, one join key, no
    aliased projection, as most are): one HMGET per distinct id with one field list, and fixed
    reply positions per view; what :func:`plan_reads` computes, done once per plan and layouts."""

    layouts: tuple[ViewLayout, ...]
    head: str  # every key is this plus the escaped id
    join_key: str
    fields: list[str]
    views: list[RouteView]

    def keys(self, column: list[Any]) -> tuple[list[bytes], list[list[int]] | None, int]:
        """:func:`native_entity_keys` for the route's join-key column of plain str / int values."""
        head, escape = self.head, layout.escape_id
        texts = [escape(v) if type(v) is str else str(v) for v in column]
        if len(texts) == 1:
            return [(head + texts[0]).encode()], None, 1
        rows: dict[bytes, list[int]] = {}
        for row_no, text in enumerate(texts):
            rows.setdefault((head + text).encode(), []).append(row_no)
        fanout = None if len(rows) == len(column) else list(rows.values())  # no repeated entity
        return list(rows), fanout, len(column)

    def row(self, part: RouteView, key: bytes, reply: list) -> list[bytes | None]:
        """One entity's ``values`` entries of one view of the route (None: missing)."""
        try:
            return [
                None if reply[pos] is None else encode(reply[pos])
                for pos, encode in zip(part.positions, part.encoders)
            ]
        except (ValueError, TypeError):  # the error naming the feature and the key
            return [column[0] for column in self.columns(part, [key], [reply])[1]]

    def columns(self, part: RouteView, keys: list[bytes], replies: list) -> tuple[list, list[list]]:
        """:func:`value_columns` of one view of the route."""
        ts = part.ts_position
        ts_raw = [reply[ts] for reply in replies]
        columns = [
            _encoded_column(part.view, name, encode, keys, [reply[pos] for reply in replies])
            for name, pos, encode in zip(part.names, part.positions, part.encoders)
        ]
        return ts_raw, columns


def route_for(config: RepoConfig, grouped_refs: list, entity_map: dict, memo: dict) -> Route | None:
    """The :class:`Route` of a plan's views under their current layouts (``memo``: the plan's),
    or None where the views key their entities differently (:func:`plan_reads` serves them)."""
    layouts = tuple(ViewLayout.of(config, table) for table, _ in grouped_refs)
    mkey = ("route", tuple(map(id, layouts)))
    known = memo.get(mkey)
    if known is not None and all(a is b for a, b in zip(known[0], layouts)):
        return known[1]
    route = _build_route(grouped_refs, entity_map, layouts)
    if len(memo) > 256:  # layouts keep changing (settings changed at run time)
        memo.clear()
    memo[mkey] = (layouts, route)
    return route


def _build_route(grouped_refs: list, entity_map: dict, layouts: tuple[ViewLayout, ...]) -> Route | None:
    heads: set[str] = set()
    join_keys: set[str] = set()
    for (table, _), view in zip(grouped_refs, layouts):
        join_key = entity_map.get(table.entities[0]) if len(table.entities) == 1 else None
        if join_key is None or table.projection.join_key_map or view.keys.head is None or view.packed:
            return None  # packed views: plan_reads and value_columns unpack them
        heads.add(view.keys.head)
        join_keys.add(join_key)
    if len(heads) != 1 or len(join_keys) != 1:
        return None
    field_lists, parts = [], []
    for (table, requested), view in zip(grouped_refs, layouts):
        names = [f for f in requested if f in view.fields]
        field_lists.append([view.ts_field] + [view.fields[f][0] for f in names])
        encoders = value_encoders(view)
        encode = [encoders[f] for f in names]
        parts.append(
            RouteView(table, view, requested, names, 0, [], encode, response.slots(requested, names))
        )
    fields, positions = combine_fields(field_lists, list(range(len(parts))))
    for n, part in enumerate(parts):
        part.ts_position, part.positions = positions[n][0], positions[n][1:]
    return Route(layouts, heads.pop(), join_keys.pop(), fields, parts)


def value_columns(read: ViewRead, commands: list, replies: list) -> tuple[list, list[list]]:
    """The raw _ts values and one column of FeatureVector ``values`` entries per feature (None:
    missing), per entity: :func:`decode_columns` as wire bytes. Entities with the same stored
    value share its entry (encoded once; counts and categories repeat a lot)."""
    mine = [replies[n] for n in read.replies]
    positions = read.positions
    ts_raw = [reply[pos[0]] for reply, pos in zip(mine, positions)]
    raw_columns: list[list[bytes | None]] | None = None
    if read.view.packed:  # one field per view: split each value into the fields layout's replies
        ts_raw, raw_columns = _unpack(read, commands, ts_raw)
    encoders = value_encoders(read.view)
    keys = [commands[reply_no][0] for reply_no in read.replies]
    columns = []
    for i, name in enumerate(read.names, start=1):
        if raw_columns is not None:
            raws = raw_columns[i - 1]
        else:
            raws = [reply[pos[i]] for reply, pos in zip(mine, positions)]
        columns.append(_encoded_column(read.view, name, encoders[name], keys, raws))
    return ts_raw, columns


def _encoded_column(
    view: ViewLayout, name: str, encode: Callable[[bytes], Any], keys: Sequence[bytes], raws: list
) -> list:
    """One feature's column of wire entries (None: missing) from its stored values, per entity
    (``keys[i]`` holds ``raws[i]``); entities with the same stored value share its entry. A
    value that does not decode raises the error naming the feature and the entity's key."""
    try:
        if len(raws) == 1:
            raw = raws[0]
            return [None if raw is None else encode(raw)]
        encoded = {raw: None if raw is None else encode(raw) for raw in dict.fromkeys(raws)}
        return list(map(encoded.__getitem__, raws))
    except (ValueError, TypeError):  # find the entity for a clear error
        for key, raw in zip(keys, raws):
            if raw is not None:
                _decode(view, name, key, raw)
        raise


_stale_warned: set[tuple[str, bytes]] = set()


def _unpack(read: ViewRead, commands: list, packed: list) -> tuple[list, list[list[bytes | None]]]:
    """value_layout: packed: the event-time digits and each requested feature's stored bytes per
    entity, from the view's packed values (codec.unpack_columns)."""
    view = read.view
    order = view.order or {}
    try:
        ts_raw, raw_columns, stale = codec.unpack_columns(
            packed, view.head, len(order), [order[n] for n in read.names]
        )
    except ValueError as e:
        key = commands[read.replies[e.args[1]]][0] if len(e.args) > 1 else b"?"
        raise BadValueError(
            f"feature view {view.name!r}, field {view.ts_field!r} of key {key.decode(errors='replace')}: "
            f"{e.args[0]}"
        ) from e
    if stale and (view.name, view.head) not in _stale_warned:
        _stale_warned.add((view.name, view.head))
        logger.warning(
            "feature view %s: %d stored value(s) were packed for another feature list or value "
            "encoding and read as not found; materialize the view again",
            view.name,
            len(stale),
        )
    return ts_raw, raw_columns


def freshness_statuses(config: RepoConfig, table: Any, ts_raw: list[bytes | None]) -> list | None:
    """freshness_check against ``table.ttl``: per entity PRESENT, OUTSIDE_MAX_AGE (flag) or None
    (drop); None for the whole view when nothing is checked."""
    mode = config.online_store.freshness_check
    max_age = getattr(table, "ttl", None) if mode != "off" else None
    if not max_age:
        return None
    oldest = codec.encode_ts(datetime.now(UTC)) - max_age // timedelta(microseconds=1)
    stale = None if mode == "drop" else FieldStatus.OUTSIDE_MAX_AGE
    return [FieldStatus.PRESENT if raw is None or int(raw) >= oldest else stale for raw in ts_raw]
