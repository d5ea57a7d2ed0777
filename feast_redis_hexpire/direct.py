"""The read path's own connections to a single server: HMGETs written on a plain socket and their
replies parsed with hiredis's public ``hiredis.Reader``.

For a one-entity read, redis-py's per-call layers (pool checkout and release, health checks,
its parser wrapper) cost as much as the round trip. Here a connection is a socket, a Reader and
nothing else, and a read is one ``sendall`` and as many ``recv`` calls as the replies need.

Where this applies: ``redis_type: redis`` (one server) with no connection setting beyond
``password``, ``username`` and ``db`` (TLS, RESP3 and every other redis-py option, Sentinel and
Cluster keep redis-py's path). A connection is used by one read at a time (a read takes it off
the idle list and puts it back only after every reply was read), so two reads never share one.

A connection is reused only when it is in step: every reply of the read was read, each is an
HMGET's array of exactly the fields asked (or an error reply), and nothing is left over. Any
other outcome (a timeout, a reset, a protocol error, an unexpected reply, an interrupt) closes
it, and the read returns None: the caller reads again through redis-py, whose retry policy
(``retries``) and errors then apply. An error reply leaves the connection in step (it is kept);
the read returns False and redis-py reads again, to raise the error as redis-py names it. A
replayed read is safe: reads change nothing.

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
from redis.exceptions import ResponseError

from .config import RedisHexpireOnlineStoreConfig, RedisType, parse_connection_string

__all__ = ["DirectReads", "direct_reads", "pack_hmgets"]

# Connection settings this path implements itself; any other key=value pair keeps redis-py's.
_OWN_PARAMS = frozenset({"password", "username", "db"})
_RECV = 65536
_MAX_IDLE = 32


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


def pack_hmgets(commands: Sequence[tuple[bytes, Sequence[str]]]) -> bytes:
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


class DirectReads:
    """Idle connections to one server, for :meth:`hmget`."""

    def __init__(
        self,
        host: str,
        port: int,
        handshake: list[tuple[Any, ...]],
        timeout: float | None,
        connect: float | None,
    ) -> None:
        self._address = (host, port)
        self._handshake = [hiredis.pack_command(command) for command in handshake]
        self._timeout = timeout
        self._connect_timeout = connect
        self._idle: list[_Connection] = []
        self.refused = False  # the server refused the handshake: redis-py's path says why

    def _open(self) -> _Connection | None:
        sock = socket.create_connection(self._address, timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self._timeout)
            conn = _Connection(sock)
            if self._handshake:
                sock.sendall(b"".join(self._handshake))
                if any(isinstance(reply, ResponseError) for reply in conn.replies(len(self._handshake))):
                    self.refused = True
                    conn.close()
                    return None
            return conn
        except BaseException:
            sock.close()
            raise

    def hmget(self, commands: Sequence[tuple[bytes, Sequence[str]]]) -> list[Any] | None | bool:
        """The replies of one HMGET per (key, fields); None when the connection failed or the
        handshake was refused, False when a reply was an error (the caller reads through
        redis-py either way). Every reply is read before returning, so a connection put back is
        in step."""
        if self.refused:
            return None
        try:
            conn: _Connection | None = self._idle.pop()
        except IndexError:
            try:
                conn = self._open()
            except (OSError, hiredis.ProtocolError):
                return None
        if conn is None:
            return None
        ok = clean = False
        try:
            packed = pack_hmgets(commands)
            conn.sock.sendall(packed)
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
            if ok and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
            else:  # anything else, an interrupt included: this connection is out of step
                conn.close()
        if not ok:
            return None
        # An error reply (WRONGTYPE, NOPERM, LOADING ...): False, redis-py reads again and raises
        # it as the exception class redis-py gives it.
        return replies if clean else False

    def close(self) -> None:
        """Close every idle connection (those in use close when their read fails or is done)."""
        while self._idle:
            self._idle.pop().close()


_lock = threading.Lock()
_pid = os.getpid()
_readers: dict[tuple, DirectReads | None] = {}


def _build(cfg: RedisHexpireOnlineStoreConfig) -> DirectReads | None:
    if cfg.redis_type != RedisType.redis:
        return None
    nodes, params = parse_connection_string(cfg.connection_string)
    if len(nodes) != 1 or set(params) - _OWN_PARAMS:
        return None
    handshake: list[tuple[Any, ...]] = []
    if params.get("password") is not None:
        user = params.get("username")
        handshake.append(
            ("AUTH", str(user), str(params["password"])) if user else ("AUTH", str(params["password"]))
        )
    db = params.get("db", 0)
    if db not in (0, "0", None):
        handshake.append(("SELECT", str(db)))
    host, port = nodes[0]
    return DirectReads(host, port, handshake, cfg.socket_timeout, cfg.socket_connect_timeout)


def direct_reads(cfg: RedisHexpireOnlineStoreConfig, settings: tuple) -> DirectReads | None:
    """This process's :class:`DirectReads` for the connection ``settings`` (clients.py's key),
    or None where the connection needs redis-py (cluster, sentinel, TLS, other options)."""
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
