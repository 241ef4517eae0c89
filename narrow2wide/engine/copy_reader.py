"""The backfill's source reads, run by helper processes that share the worker's snapshot.

Reading is the slowest stage of the backfill: the server's scan, and psycopg2 handing every COPY
row to Python under the GIL. A worker reads two blocks at once, each in a helper process of its
own (two threads of one process would take turns at the GIL row by row), while it pivots and
writes the block before; both server cores and this process stay busy.

A helper imports the snapshot that the worker's source transaction exports
(``pg_export_snapshot()``, ``SET TRANSACTION SNAPSHOT``), so it sees exactly the rows that
REPEATABLE READ transaction sees. It exits when its pipe closes, also when the worker is killed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2

from narrow2wide.common.errors import RetryableError, one_line

if TYPE_CHECKING:  # the helper process runs this module: it imports only what it needs to read
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("copy_reader")  # the name the log file has always shown


_OK, _RETRIED, _FAILED = b"K", b"R", b"E"
_MODULE = "narrow2wide.engine.copy_reader"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds the narrow2wide package


class SourceReadError(RetryableError):
    """The helper process could not read a block (the database error it got, in one line)."""


class CopyReaderProcess:
    """A helper process with its own source connection, serving ``COPY ... TO STDOUT`` requests.

    It is this module run by the same Python with ``-m`` (a subprocess, not multiprocessing: that would import
    the caller's ``__main__`` again), talking over its stdin and stdout. The connection settings,
    password included, go through the pipe, never the command line.
    """

    def __init__(self, engine: Engine, application_name: str = "narrow-to-wide reader", settings_sql: str = ""):
        url = engine.url
        params: dict[str, object] = url.translate_connect_args(username="user", database="dbname")
        params.update({k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()})
        params.setdefault("connect_timeout", 10)
        params["application_name"] = application_name
        self._params = params
        self.settings_sql = settings_sql  # run in each read's transaction before the COPY (planner settings)
        self._process: subprocess.Popen | None = None

    def export_snapshot(self, conn: Connection) -> str:
        """Export the snapshot of ``conn``'s open transaction (valid until that transaction ends)."""
        from sqlalchemy import text

        return str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())

    def copy_out(self, snapshot: str, copy_sql: str) -> memoryview:
        """The bytes of ``copy_sql`` (a complete ``COPY ... TO STDOUT``) run in ``snapshot``."""
        proc = self._ensure_started()
        try:
            _send(proc.stdin, {"snapshot": snapshot, "sql": copy_sql, "settings": self.settings_sql})
            status, payload = _receive_reply(proc.stdout)
        except (EOFError, OSError) as exc:
            self.close()
            raise SourceReadError(f"the source reader process stopped ({exc or type(exc).__name__}); "
                                  "the chunk is retried") from exc
        if status == _RETRIED:  # the helper lost its connection once and read again on a new one
            (size,) = struct.unpack(">I", payload[:4])
            log.warning("source reader: %s; read again on a new connection", payload[4:4 + size].decode("utf-8",
                                                                                                     "replace"))
            return memoryview(payload)[4 + size:]
        if status == _OK:
            return memoryview(payload)
        raise SourceReadError(f"reading the source failed: {payload.decode('utf-8', 'replace')}")

    def close(self) -> None:
        """Stop the helper process (it finishes a read in progress first)."""
        self.request_exit()
        proc, self._process = self._process, None
        if proc is None:
            return
        try:
            _wait_for_exit(proc, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def process(self) -> subprocess.Popen | None:
        """The helper process while this reader has one (None before :meth:`start` and after :meth:`close`)."""
        return self._process

    def request_exit(self) -> None:
        """Tell the helper to exit once its read in progress is done (EOF on its stdin); :meth:`close` waits."""
        if self._process is not None and self._process.stdin is not None and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass

    def __enter__(self) -> CopyReaderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the helper now (it connects at its first read), so that its start-up overlaps other work."""
        self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self.close()
            # run as a module of the package, from the folder that holds the package: it imports the
            # same code whatever the caller's working directory (and whether or not it is installed)
            self._process = subprocess.Popen([sys.executable, "-m", _MODULE],
                                             cwd=_PACKAGE_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            _send(self._process.stdin, self._params)
        return self._process


def _wait_for_exit(proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``proc`` has exited (``subprocess.TimeoutExpired`` after ``timeout`` seconds) and reap it.

    Blocks on a process file descriptor where the system has them (Linux): ``Popen.wait(timeout)``
    polls with sleeps that grow to 50 ms, and a helper's exit took 24 ms of sleeps to notice.
    """
    if proc.returncode is None and hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:  # already reaped, or no pidfd support in this kernel
            pidfd = None
        if pidfd is not None:
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)  # readable once the process has exited
                if not poller.poll(timeout * 1000):
                    raise subprocess.TimeoutExpired(proc.args, timeout)
            finally:
                os.close(pidfd)
    proc.wait(timeout)


def _send(stream, message: dict) -> None:
    data = json.dumps(message).encode("utf-8")
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _receive(stream) -> dict | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return json.loads(stream.read(size).decode("utf-8"))


def _receive_reply(stream) -> tuple[bytes, bytes]:
    head = stream.read(9)
    if len(head) < 9:
        raise EOFError("no reply")
    status, size = head[:1], struct.unpack(">Q", head[1:])[0]
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("a cut reply")
    return status, payload


def _connect(params: dict) -> psycopg2.extensions.connection:
    """The helper's source connection: every read in a REPEATABLE READ, read-only transaction."""
    conn = psycopg2.connect(**params)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


def _serve() -> None:
    """The helper's loop: one COPY per request, each in a new transaction on the caller's snapshot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the parent, which stops gracefully
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    params = _receive(requests)
    conn = None
    if params is not None:
        try:  # connect now, while the worker prepares its first read; a failure is met again at that read
            conn = _connect(params)
        except psycopg2.Error:
            conn = None
    while params is not None:
        request = _receive(requests)
        if request is None:
            break  # the parent closed the pipe or is gone
        lost: str | None = None
        for attempt in (1, 2):
            try:
                if conn is None or conn.closed:
                    conn = _connect(params)
                buf = io.BytesIO()
                with conn.cursor() as cur:
                    cur.execute("SET TRANSACTION SNAPSHOT %s", (request["snapshot"],))
                    cur.execute(request.get("settings") or "SELECT")
                    cur.copy_expert(request["sql"], buf)
                conn.rollback()
                if lost is None:
                    status, payload = _OK, buf.getbuffer()
                else:
                    note = lost.encode()
                    status, payload = _RETRIED, memoryview(struct.pack(">I", len(note)) + note + buf.getvalue())
                break
            except psycopg2.Error as exc:
                first = one_line(exc)
                broken = conn is None or conn.closed != 0
                if conn is not None:
                    conn.close()
                conn = None
                if broken and attempt == 1:  # a dropped connection (often an idle one): once more, anew
                    lost = f"{type(exc).__name__}: {first}"
                    continue
                status, payload = _FAILED, memoryview(f"{type(exc).__name__}: {first}".encode())
                break
        try:
            replies.write(status + struct.pack(">Q", len(payload)))
            replies.write(payload)
            replies.flush()
        except OSError:
            break
        del payload
    if conn is not None:
        conn.close()


if __name__ == "__main__":
    _serve()
