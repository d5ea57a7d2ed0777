"""The read path's own connections, to one server or to each primary of a cluster: HMGETs
written on plain sockets and their replies parsed with hiredis's public ``hiredis.Reader``.

For a one-entity read, redis-py's per-call layers (pool checkout and release, health checks,
its parser wrapper) cost as much as the round trip. Here a connection is a socket, a Reader and
nothing else, and a read is one ``sendall`` per server and as many ``recv`` calls as the replies
need.

Where this applies: ``redis_type: redis`` (one server) or ``redis_type: redis_cluster`` with no
connection setting beyond ``password``, ``username`` and ``db`` (a cluster: db 0 only). TLS,
RESP3 and every other redis-py option, and Sentinel, keep redis-py's path. A connection is used
by one read at a time (a read takes it off its server's idle list and puts it back only after
every reply was read), so two reads never share one.

On a cluster, each key's primary is the one redis-py's slot map names
(``RedisCluster.get_node_from_key``, its public API; the map stays redis-py's). A read's HMGETs
are grouped per primary and written to every primary before any reply is read. A reply saying
the map moved (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), or a slot the map does not cover, makes the
read return None: redis-py's cluster pipeline reads again, follows the redirection and updates
the map, which the next read uses.

A connection is reused only when it is in step: every reply of the read was read, each is an
HMGET's array of exactly the fields asked (or an error reply), and nothing is left over. Any
other outcome (a timeout, a reset, a protocol error, an unexpected reply, an interrupt) closes
it, and the read returns None: the caller reads again through redis-py, whose retry policy
(``retries``) and errors then apply. An error reply leaves the connection in step (it is kept);
the read returns False and redis-py reads again, to raise the error as redis-py names it. On a
cluster, the other primaries' replies of a read are still read when one fails, so their
connections stay in step. A replayed read is safe: reads change nothing.

After a fork the child drops the parent's connections without touching them (the parent still
uses its sockets) and opens its own.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from .config import RedisHexpireOnlineStoreConfig, RedisType, parse_connection_string

__all__ = ["DirectReads", "direct_reads", "pack_hmgets"]

# Connection settings this path implements itself; any other key=value pair keeps redis-py's.
_OWN_PARAMS = frozenset({"password", "username", "db"})
_RECV = 65536
_HMGETs = Sequence[tuple[bytes, Sequence[str]]]  # (key, fields) per HMGET
_MAX_IDLE = 32  # per server
# Error replies that say a cluster's slot map moved (reads.py's redirect exceptions, as replies):
# redis-py's cluster pipeline follows them and updates the map.
_CLUSTER_REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


_PACKED: dict[int, tuple[Sequence[str], bytes, bytes]] = {}  # id(field list) -> (list, head, tail)


def _packed_fields(fields: Sequence[str]) -> tuple[bytes, bytes]:
    """The array header and the packed fields of an HMGET with ``fields``, cached while that
    list object lives (a route's field list serves every read of its plan)."""
    known = _PACKED.get(id(fields))
    if known is not None and known[0] is fields:
        return known[1], known[2]
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
    tail = b"".join([_bulk(f.encode()) for f in fields])
    if len(_PACKED) > 256:
        _PACKED.clear()
    _PACKED[id(fields)] = (fields, head, tail)  # holds the list: its id is not reused meanwhile
    return head, tail


def pack_hmgets(commands: _HMGETs) -> bytes:
    """The HMGETs in the protocol's request form (an array of bulk strings), what
    ``hiredis.pack_command`` gives; the fields part is packed once per field list."""
    if len(commands) == 1:  # a one-entity read
        key, these = commands[0]
        head, tail = _packed_fields(these)
        return b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail)
    out = []
    fields: Any = None
    head = tail = b""
    for key, these in commands:
        if these is not fields:
            fields = these
            head, tail = _packed_fields(these)
        out.append(head + b"$%d\r\n%s\r\n" % (len(key), key) + tail)
    return b"".join(out)


class _Connection:
    """A socket and its reply parser."""

    __slots__ = ("reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = hiredis.Reader(replyError=ResponseError)

    def replies(self, count: int) -> list[Any]:
        """``count`` replies; raises OSError / hiredis.ProtocolError when the connection fails."""
        reader, sock = self.reader, self.sock
        out: list[Any] = []
        while len(out) < count:
            reply = reader.gets()
            if reply is False:
                data = sock.recv(_RECV)
                if not data:
                    raise ConnectionResetError("the server closed the connection")
                reader.feed(data)
                continue
            out.append(reply)
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Server:
    """Idle connections to one server (on a cluster: one primary)."""

    __slots__ = ("address", "connect_timeout", "handshake", "idle", "refused", "timeout")

    def __init__(
        self, address: tuple[str, int], handshake: list[bytes], timeout: float | None, connect: float | None
    ) -> None:
        self.address = address
        self.handshake = handshake
        self.timeout = timeout
        self.connect_timeout = connect
        self.idle: list[_Connection] = []
        self.refused = False  # the server refused the handshake: redis-py's path says why

    def _open(self) -> _Connection | None:
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            conn = _Connection(sock)
            if self.handshake:
                sock.sendall(b"".join(self.handshake))
                if any(isinstance(reply, ResponseError) for reply in conn.replies(len(self.handshake))):
                    self.refused = True
                    conn.close()
                    return None
            return conn
        except BaseException:
            sock.close()
            raise

    def send(self, commands: _HMGETs) -> _Connection | None:
        """A connection (taken off the idle list, or new) with the HMGETs written to it; None when
        none could be opened, the handshake was refused or the write failed (it is closed)."""
        if self.refused:
            return None
        packed = pack_hmgets(commands)
        try:
            conn: _Connection | None = self.idle.pop()
        except IndexError:
            try:
                conn = self._open()
            except (OSError, hiredis.ProtocolError):
                return None
        if conn is None:
            return None
        sent = False
        try:
            conn.sock.sendall(packed)
            sent = True
        except OSError:
            pass
        finally:
            if not sent:  # an interrupt too: part of the request may be on the wire
                conn.close()
        return conn if sent else None

    def finish(self, conn: _Connection, commands: _HMGETs) -> list[Any] | None | bool:
        """The replies of the HMGETs :meth:`send` wrote on ``conn``. Every reply is read before
        ``conn`` goes back on the idle list, in step; any other outcome closes it. None when
        the connection failed or a reply says the cluster's slot map moved, False when a reply
        was another error."""
        ok = clean = False
        try:
            replies = conn.replies(len(commands))
            # In step: an array of the fields asked for each HMGET (or an error reply), nothing more.
            clean = True
            for reply, (_, fields) in zip(replies, commands):
                if type(reply) is not list or len(reply) != len(fields):
                    clean = False
                    break
            ok = conn.reader.gets() is False and (
                clean or all(type(reply) is list or isinstance(reply, ResponseError) for reply in replies)
            )
        except (OSError, hiredis.ProtocolError):
            return None
        finally:
            if ok and len(self.idle) < _MAX_IDLE:
                self.idle.append(conn)
            else:  # anything else, an interrupt included: this connection is out of step
                conn.close()
        if not ok:
            return None
        if clean:
            return replies
        # MOVED, ASK, TRYAGAIN, CLUSTERDOWN: None, redis-py's cluster pipeline follows it and
        # updates the slot map. Any other (WRONGTYPE, NOPERM, LOADING ...): False, redis-py reads
        # again and raises it as the exception class redis-py gives it.
        errors = [str(reply) for reply in replies if isinstance(reply, ResponseError)]
        return None if any(e.startswith(_CLUSTER_REDIRECTS) for e in errors) else False

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class DirectReads:
    """The own connections of one set of connection settings: to the server, or to each primary
    of a cluster (opened on first use), for :meth:`hmget`."""

    def __init__(
        self,
        address: tuple[str, int] | None,
        handshake: list[tuple[Any, ...]],
        timeout: float | None,
        connect: float | None,
    ) -> None:
        """``address``: the server's; None for a cluster (each read asks the cluster client's
        slot map where its keys live)."""
        self._handshake = [hiredis.pack_command(command) for command in handshake]
        self._timeout = timeout
        self._connect_timeout = connect
        self._server = None if address is None else self._new(address)
        self._primaries: dict[str, _Server] = {}  # a cluster's, by host:port
        self.cluster = address is None

    def _new(self, address: tuple[str, int]) -> _Server:
        return _Server(address, self._handshake, self._timeout, self._connect_timeout)

    @property
    def refused(self) -> bool:
        """Whether a server refused the handshake (a wrong password): redis-py's path says why."""
        servers = [self._server] if self._server is not None else list(self._primaries.values())
        return any(server.refused for server in servers)

    def _primary(self, cluster: RedisCluster, key: bytes) -> _Server | None:
        """The primary serving ``key``'s slot in the cluster client's map; None where the map
        covers no node for it."""
        try:
            node = cluster.get_node_from_key(key)
        except RedisClusterException:  # the slot is not covered (the map is being refreshed)
            return None
        if node is None:
            return None
        server = self._primaries.get(node.name)
        if server is None:  # setdefault: two threads adding one node keep one
            server = self._primaries.setdefault(node.name, self._new((node.host, int(node.port))))
        return server

    def hmget(self, commands: _HMGETs, cluster: RedisCluster | None = None) -> list[Any] | None | bool:
        """The replies of one HMGET per (key, fields); None when a connection failed, the
        handshake was refused or (``cluster``: the client whose slot map routes the keys) a key's
        slot has no known node or moved; False when a reply was an error. The caller reads
        through redis-py in both cases. Every reply is read before returning, so a connection
        put back is in step."""
        if not self.cluster:
            server = self._server
        elif cluster is None:
            return False
        elif len(commands) == 1:  # a one-entity read
            server = self._primary(cluster, commands[0][0])
        else:
            return self._hmget_primaries(cluster, commands)
        if server is None:
            return None
        conn = server.send(commands)
        return None if conn is None else server.finish(conn, commands)

    def _hmget_primaries(self, cluster: RedisCluster, commands: _HMGETs) -> list[Any] | None | bool:
        """:meth:`hmget` on a cluster: the HMGETs grouped by primary, written to every primary
        before any reply is read (one round trip, not one per primary in turn)."""
        groups: dict[_Server, list[int]] = {}
        for n, (key, _) in enumerate(commands):
            server = self._primary(cluster, key)
            if server is None:
                return None
            groups.setdefault(server, []).append(n)
        sent: list[tuple[_Server, _Connection, _HMGETs, list[int]]] = []
        replies: list[Any] = [None] * len(commands)
        answer: list[Any] | None | bool = replies
        try:
            for server, nos in groups.items():
                mine = [commands[n] for n in nos]
                conn = server.send(mine)
                if conn is None:
                    return None
                sent.append((server, conn, mine, nos))
            while sent:
                server, conn, asked, nos = sent.pop()
                got = server.finish(conn, asked)  # puts conn back or closes it
                if type(got) is not list:
                    if answer is not None:  # None (a failure, a redirect) outranks False
                        answer = got
                    continue  # still read the other primaries' replies: their connections stay in step
                for n, reply in zip(nos, got):
                    replies[n] = reply
        finally:
            for _, conn, _, _ in sent:  # written to, replies unread: out of step
                conn.close()
        return answer

    def close(self) -> None:
        """Close every idle connection (those in use close when their read fails or is done)."""
        for server in [self._server, *self._primaries.values()]:
            if server is not None:
                server.close()


_lock = threading.Lock()
_pid = os.getpid()
_readers: dict[tuple, DirectReads | None] = {}


def _build(cfg: RedisHexpireOnlineStoreConfig) -> DirectReads | None:
    nodes, params = parse_connection_string(cfg.connection_string)
    if set(params) - _OWN_PARAMS:
        return None
    db = params.get("db", 0)
    select = db not in (0, "0", None)
    if cfg.redis_type == RedisType.redis_cluster:
        if select:  # redis-py's path refuses it, naming the setting
            return None
    elif cfg.redis_type != RedisType.redis or len(nodes) != 1:
        return None
    handshake: list[tuple[Any, ...]] = []
    if params.get("password") is not None:
        user = params.get("username")
        handshake.append(
            ("AUTH", str(user), str(params["password"])) if user else ("AUTH", str(params["password"]))
        )
    if select:
        handshake.append(("SELECT", str(db)))
    address = None if cfg.redis_type == RedisType.redis_cluster else nodes[0]
    return DirectReads(address, handshake, cfg.socket_timeout, cfg.socket_connect_timeout)


def direct_reads(cfg: RedisHexpireOnlineStoreConfig, settings: tuple) -> DirectReads | None:
    """This process's :class:`DirectReads` for the connection ``settings`` (clients.py's key),
    or None where the connection needs redis-py (sentinel, TLS, other options)."""
    global _pid
    try:
        return _readers[settings] if os.getpid() == _pid else _forked(cfg, settings)
    except KeyError:
        pass
    with _lock:
        if settings not in _readers:
            _readers[settings] = _build(cfg)
        return _readers[settings]


def _forked(cfg: RedisHexpireOnlineStoreConfig, settings: tuple) -> DirectReads | None:
    """In a forked child: forget the parent's connections (without closing them) and start over."""
    global _pid
    with _lock:
        if os.getpid() != _pid:
            _readers.clear()
            _pid = os.getpid()
    return direct_reads(cfg, settings)
