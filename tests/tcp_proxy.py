"""A small TCP proxy for fault tests: cut the tool's database connections on demand.

The proxy listens on ``127.0.0.1:<free port>`` and forwards every connection to the PostgreSQL
server of a test URL (TCP ``host:port``, or the unix socket of the embedded pgserver). A test points
the tool at :meth:`TcpProxy.url` and then:

* :meth:`TcpProxy.drop_all` closes every connection open right now (both sides: the client sees
  "server closed the connection unexpectedly", the backend gets EOF and rolls back);
* :meth:`TcpProxy.cut_runs` cuts the next connection(s) whose one-directional run of bytes grows past
  a size. Queries are small request/response exchanges, so a long run in one direction is a COPY:
  ``"down"`` (server to client) cuts a ``COPY ... TO STDOUT`` read, ``"up"`` a ``COPY ... FROM STDIN``;
* :meth:`TcpProxy.refuse` makes it accept and close new connections at once (a database outage),
  optionally dropping the open ones too.

Threads and the standard library only; every figure (accepted, cut, refused) is counted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

Upstream = tuple[str, int] | str  # (host, port), or the path of a unix socket

DIRECTIONS = ("up", "down")


def upstream_of(url: str) -> Upstream:
    """Where the PostgreSQL server of a SQLAlchemy/libpq ``url`` listens.

    A host that is a folder (``?host=/tmp/x`` as pgserver gives it, or a socket folder as host) means
    the unix socket ``<folder>/.s.PGSQL.<port>``.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    query_host = parsed.query.get("host")
    if isinstance(query_host, tuple):
        query_host = query_host[0]
    host = query_host or parsed.host or "localhost"
    query_port = parsed.query.get("port")
    if isinstance(query_port, tuple):
        query_port = query_port[0]
    port = int(parsed.port or query_port or 5432)
    if host.startswith("/"):
        return os.path.join(host, f".s.PGSQL.{port}")
    return (host, port)


@dataclass
class _RunRule:
    """Cut a connection once a one-directional run reaches ``min_bytes``; ``times`` cuts, then stop."""

    min_bytes: int
    times: int


class _Pair:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, server: socket.socket, number: int):
        self.proxy = proxy
        self.client = client
        self.server = server
        self.number = number
        self.closed = False
        self.lock = threading.Lock()
        self.run_direction: str | None = None
        self.run_bytes = 0
        self.bytes = {"up": 0, "down": 0}

    def start(self) -> None:
        for direction, src, dst in (("up", self.client, self.server), ("down", self.server, self.client)):
            threading.Thread(target=self._pump, args=(direction, src, dst), daemon=True,
                             name=f"proxy-{self.number}-{direction}").start()

    def _pump(self, direction: str, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._account(direction, len(data)):
                    log.info("proxy: cut connection %d inside a %s run of %d bytes", self.number, direction,
                             self.run_bytes)
                    self.proxy._count_cut()
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def _account(self, direction: str, size: int) -> bool:
        """Count ``size`` bytes; true when a rule says this connection is cut now (before forwarding)."""
        with self.lock:
            if self.closed:
                return False
            self.bytes[direction] += size
            if self.run_direction != direction:
                self.run_direction, self.run_bytes = direction, 0
            self.run_bytes += size
            return self.proxy._take_cut(direction, self.run_bytes)

    def close(self) -> bool:
        """Close both sides (idempotent); true when this call closed them."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
        self.proxy._forget(self)
        return True


class TcpProxy:
    """A forwarding proxy to one PostgreSQL server that can cut connections (see the module docstring)."""

    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.accepted = 0
        self.cut = 0  # connections cut by drop_all or a run rule
        self.refused = 0
        self._refusing = False
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._rules: dict[str, _RunRule] = {}
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        """A started proxy in front of the server of ``url``."""
        return cls(upstream_of(url)).start()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> TcpProxy:
        """Listen on 127.0.0.1 at a free port and start accepting."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept")
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        for pair in self._snapshot():
            pair.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        assert self._listener is not None, "start() the proxy first"
        return int(self._listener.getsockname()[1])

    def url(self, pg_url: str) -> str:
        """``pg_url`` pointed at the proxy (host 127.0.0.1, the proxy's port; a socket folder is dropped)."""
        from sqlalchemy.engine import make_url

        parsed = make_url(pg_url)
        query = {k: v for k, v in parsed.query.items() if k not in ("host", "port")}
        return parsed.set(host="127.0.0.1", port=self.port, query=query).render_as_string(hide_password=False)

    # ------------------------------------------------------------------ faults

    def drop_all(self) -> int:
        """Close every connection open now; returns how many were closed."""
        closed = sum(1 for pair in self._snapshot() if pair.close())
        with self._lock:
            self.cut += closed
        log.info("proxy: dropped %d connection(s)", closed)
        return closed

    def cut_runs(self, direction: str, min_bytes: int, times: int = 1) -> None:
        """Cut the next ``times`` connections whose run of bytes in ``direction`` reaches ``min_bytes``."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        with self._lock:
            self._rules[direction] = _RunRule(min_bytes, times)

    def cuts_left(self, direction: str) -> int:
        """How many cuts a :meth:`cut_runs` rule still has to make."""
        with self._lock:
            rule = self._rules.get(direction)
            return rule.times if rule else 0

    def refuse(self, on: bool = True, drop: bool = True) -> None:
        """Start (``on``) or end an outage: new connections are closed at once; ``drop`` cuts the open ones."""
        with self._lock:
            self._refusing = on
        if on and drop:
            self.drop_all()

    def open_connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._snapshot())

    # ------------------------------------------------------------------ internals

    def _snapshot(self) -> list[_Pair]:
        with self._lock:
            return list(self._pairs)

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)

    def _count_cut(self) -> None:
        with self._lock:
            self.cut += 1

    def _take_cut(self, direction: str, run_bytes: int) -> bool:
        with self._lock:
            rule = self._rules.get(direction)
            if rule is None or rule.times <= 0 or run_bytes < rule.min_bytes:
                return False
            rule.times -= 1
            return True

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.upstream)
            return sock
        sock = socket.create_connection(self.upstream, timeout=10)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            with self._lock:
                refusing = self._refusing
                if refusing:
                    self.refused += 1
            if refusing:
                client.close()
                continue
            try:
                server = self._connect_upstream()
            except OSError as exc:
                log.warning("proxy: cannot reach the upstream %s: %s", self.upstream, exc)
                client.close()
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted += 1
                pair = _Pair(self, client, server, self.accepted)
                self._pairs.add(pair)
            pair.start()
