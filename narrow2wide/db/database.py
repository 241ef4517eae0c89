"""Connections: engines for the source and target databases, and the embedded server.

Engines are created only by :func:`open_databases` (called from the CLI or on first use
of the Python API), never at import time.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from narrow2wide.common.config import Settings, psycopg2_url, redact_url
from narrow2wide.common.errors import DatabaseUnavailable, one_line

log = logging.getLogger("database")  # the name the log file has always shown


@dataclass(frozen=True)
class Databases:
    """The engines the tool works with; ``source`` and ``target`` may be the same engine."""

    source: Engine
    target: Engine
    embedded: bool = False

    @property
    def same_database(self) -> bool:
        """True when source and target are one database (one engine)."""
        return self.source is self.target

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.source.dispose()
        if not self.same_database:
            self.target.dispose()


def start_embedded(pgdata: Path) -> str:
    """Start (or join) the embedded PostgreSQL in ``pgdata`` and return its URL.

    The server stops when the last process using it exits.
    """
    pgdata = Path(pgdata).resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR when run as root
            warnings.simplefilter("ignore")
            import pgserver  # imported here: importing it touches the file system
    except ImportError as exc:
        raise DatabaseUnavailable(
            "no database configured and the embedded PostgreSQL (pgserver) is not installed; "
            "set DATABASE_URL or run: pip install -r requirements.txt"
        ) from exc
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # noqa: BLE001 - pgserver raises plain exceptions
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}; "
            "check the folder is writable or set DATABASE_URL"
        ) from exc
    uri = server.get_uri()
    log.info("no DATABASE_URL set: using the embedded PostgreSQL in %s", pgdata)
    return psycopg2_url(uri)


APP_NAME = "narrow-to-wide"  # every session of the tool has an application_name that starts with this


def make_engine(url: str, application_name: str = APP_NAME) -> Engine:
    """An engine for ``url`` (on psycopg2, whatever driver it names) with sane defaults for long COPY-heavy work."""
    return create_engine(
        psycopg2_url(url),
        pool_pre_ping=True,
        pool_use_lifo=True,  # the same few sessions serve every cycle: their merge stages and plans stay warm
        pool_size=3,  # realtime's working set: the lock session, a source read and a target write
        max_overflow=8,  # strategies run realtime, a backfill worker and progress in one process
        connect_args={"application_name": application_name, "connect_timeout": 10},
    )


def check_connection(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailable` with a useful message when ``engine`` cannot connect."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        first = one_line(exc)
        raise DatabaseUnavailable(
            f"cannot connect to {redact_url(engine.url.render_as_string(hide_password=False))}: {first}; "
            "check DATABASE_URL and that the server is running"
        ) from exc


def open_databases(settings: Settings, application_name: str = APP_NAME) -> Databases:
    """Create the engines for ``settings``, starting the embedded server when none is configured."""
    embedded = settings.uses_embedded
    source_url = start_embedded(settings.embedded_pgdata) if embedded else settings.database_url
    assert source_url is not None
    source = make_engine(source_url, application_name)
    target = source
    try:
        check_connection(source)
        if settings.target_database_url and settings.target_database_url != source_url:
            target = make_engine(settings.target_database_url, application_name)
            check_connection(target)
    except BaseException:  # no pooled connection outlives a failed start (the API may be called again)
        source.dispose()
        if target is not source:
            target.dispose()
        raise
    return Databases(source=source, target=target, embedded=embedded)


def server_now(conn: Connection, timezone: str = "UTC"):
    """The database server's current time as a naive timestamp in ``timezone``."""
    return conn.execute(text("SELECT (now() AT TIME ZONE :tz)"), {"tz": timezone}).scalar_one()


def raw_cursor(conn: Connection):
    """A psycopg2 cursor on the same connection and transaction as ``conn`` (for COPY)."""
    return conn.connection.dbapi_connection.cursor()


_PREPARER = None


def quote_ident(name: str) -> str:
    """``name`` quoted as an SQL identifier by SQLAlchemy's PostgreSQL rules, for driver-level SQL.

    Use it only in statements sent straight to the driver without parameters (COPY, DDL on a raw
    cursor); inside ``text()`` use :func:`qi`.
    """
    global _PREPARER
    if _PREPARER is None:
        from sqlalchemy.dialects import postgresql

        # the named paramstyle keeps '%' as it is (the pyformat dialects double it)
        _PREPARER = postgresql.dialect(paramstyle="named").identifier_preparer
    return _PREPARER.quote_identifier(name)


def qi(name: str) -> str:
    """``name`` quoted as an SQL identifier for ``sqlalchemy.text()``.

    Always quoted; a ':' is escaped so that ``text()`` does not read it as a bind parameter
    (SQLAlchemy restores it, and doubles any '%' for the driver itself).
    """
    return quote_ident(name).replace(":", "\\:")


def qualified(schema: str, table: str) -> str:
    """``"schema"."table"``, both quoted, for ``text()``."""
    return f"{qi(schema)}.{qi(table)}"


def qualified_raw(schema: str, table: str) -> str:
    """``"schema"."table"``, both quoted, for driver-level SQL without parameters."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"
