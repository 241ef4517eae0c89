"""The narrow source table: its DDL and the index-friendly discovery queries every step uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions
from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.common.errors import SourceError
from narrow2wide.db.database import qi, qualified

REQUIRED_COLUMNS = (
    "ship_id",
    "data_channel_id",
    "created_time",
    "bool_v",
    "str_v",
    "long_v",
    "double_v",
    "value_format",
)

# Planner settings for the reads of one ship's rows. In a fleet table whose rows interleave in time
# order the planner takes the created_time index for a ship's window (its pages are in time order,
# so it looks cheap) and filters out every other ship's rows: 40 ships, 40 times the work. With
# plain index scans off it takes the primary-key bitmap (one range per channel, this ship's pages
# only); a fleet-wide window read takes the created_time bitmap, each page once. JIT only costs
# here (up to 0.25 s per statement for simple expressions over millions of rows). Parallel workers
# only cost too: the tool already reads blocks side by side, and a Gather moves every row through a
# shared-memory queue once more (a ship-day's read: 3.1 s of server time with two workers, 2.1 s
# without). The window read groups a block's rows by created_time: in a hash table (about 16 bytes
# a value: 9.9 MB for 2 hours of 1,000 channels) that work_mem keeps in memory, not by sorting the
# rows first (the planner's guess of a window's distinct times comes from the whole table, and
# then it sorts: a third more server time). (Only around those reads: the skip-scans need plain
# index scans, and statements that must sort still do.)
READ_SETTINGS_SQL = ("SET LOCAL enable_indexscan = off; SET LOCAL jit = off; "
                     "SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL work_mem = '64MB'; "
                     "SET LOCAL enable_sort = off")
RESET_READ_SETTINGS_SQL = ("RESET enable_indexscan; RESET jit; RESET max_parallel_workers_per_gather; "
                           "RESET work_mem; RESET enable_sort")

# value_format -> the source column that holds the value
VALUE_COLUMN = {"Decimal": "double_v", "Integer": "long_v", "Boolean": "bool_v", "String": "str_v"}


def begin_snapshot_read(conn: Connection) -> None:
    """Start ``conn``'s transaction as a read of the source: one REPEATABLE READ snapshot, read-only."""
    conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))


@contextmanager
def ship_read_settings(cursor) -> Iterator[None]:
    """Within the block, ``cursor``'s transaction plans one ship's window reads by primary key (see
    :data:`READ_SETTINGS_SQL`); the settings are reset after it. ``cursor``: a psycopg2 cursor
    (:func:`database.raw_cursor` gives one on an SQLAlchemy connection)."""
    cursor.execute(READ_SETTINGS_SQL)
    try:
        yield
    finally:
        # after an error the transaction is aborted: a RESET would fail and hide the error, and the
        # SET LOCALs end with the transaction anyway
        conn = cursor.connection
        if not conn.closed and conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_INERROR:
            cursor.execute(RESET_READ_SETTINGS_SQL)


@dataclass(frozen=True)
class ChannelStats:
    """What the source says about one channel of one ship."""

    channel_id: str
    formats: tuple[str | None, ...]
    first_time: datetime
    last_time: datetime
    row_count: int | None


@dataclass(frozen=True)
class SourceTable:
    """The narrow table ``schema.name`` with its primary key (ship_id, data_channel_id, created_time)."""

    schema: str
    name: str

    @property
    def sql(self) -> str:
        """The quoted, schema-qualified name for SQL text."""
        return qualified(self.schema, self.name)

    @property
    def label(self) -> str:
        """The name as a person writes it."""
        return f"{self.schema}.{self.name}"

    def create(self, conn: Connection, with_indexes: bool = True) -> None:
        """Create the table exactly as the production system has it (no error if it exists)."""
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {qi(self.schema)}"))
        conn.execute(
            text(
                f"""CREATE TABLE IF NOT EXISTS {self.sql} (
                    ship_id text NOT NULL,
                    data_channel_id text NOT NULL,
                    created_time timestamp NOT NULL,
                    server_created_time timestamp,
                    bool_v boolean,
                    str_v text,
                    long_v bigint,
                    double_v double precision,
                    value_format varchar(50)
                )"""
            )
        )
        if with_indexes:
            self.create_indexes(conn)

    def create_indexes(self, conn: Connection) -> None:
        """Add the primary key and the created_time index when they are missing."""
        pk = conn.execute(
            text(
                "SELECT 1 FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND contype = 'p'"
            ),
            {"t": self.sql},
        ).first()
        if pk is None:
            conn.execute(
                text(
                    f"ALTER TABLE {self.sql} ADD CONSTRAINT {qi(self.name[:50] + '_pkey')} "
                    "PRIMARY KEY (ship_id, data_channel_id, created_time)"
                )
            )
        conn.execute(
            text(f"CREATE INDEX IF NOT EXISTS {qi(self.name[:40] + '_created_time_idx')} ON {self.sql} (created_time)")
        )

    def columns(self, conn: Connection) -> dict[str, str]:
        """Column name -> data type; raises :class:`SourceError` when the table is missing or incomplete."""
        rows = conn.execute(
            text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t"
            ),
            {"s": self.schema, "t": self.name},
        ).all()
        if not rows:
            raise SourceError(
                f"source table {self.label} does not exist or is not readable; "
                "check SOURCE_TABLE and the GRANTs (or run --mode demo to create a demo source)"
            )
        cols = {r[0]: r[1] for r in rows}
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise SourceError(f"source table {self.label} lacks column(s) {', '.join(missing)}")
        return cols

    def has_unique_key(self, conn: Connection) -> bool:
        """True when a primary key or unique index makes (ship_id, data_channel_id, created_time) unique.

        Any valid unique index whose columns are all among those three counts (a subset is unique
        too); without one the source may hold the same cell more than once. An invalid index (a
        failed ``CREATE UNIQUE INDEX CONCURRENTLY``, often failed on duplicates) does not count.
        """
        found = conn.execute(
            text(
                """SELECT 1 FROM pg_index i
                WHERE i.indrelid = CAST(:t AS regclass) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
                  AND i.indexprs IS NULL
                  AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) AS k(n)
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                                  WHERE a.attname NOT IN ('ship_id', 'data_channel_id', 'created_time'))
                LIMIT 1"""
            ),
            {"t": self.sql},
        ).first()
        return found is not None

    def duplicate_order(self, conn: Connection, newest_first: bool = False) -> str | None:
        """An ``ORDER BY`` list (alias ``s``) that makes the order of a cell's rows deterministic.

        None when a unique key rules out duplicates (no sort needed). Otherwise rows come ordered by
        cell (created_time, data_channel_id), then oldest insert first (``server_created_time``, when
        the source has it), then by content: the last row of a cell is its newest, whatever the
        physical order of the table. ``newest_first`` reverses the order within a cell (for
        ``DISTINCT ON (s.created_time, s.data_channel_id)``, which keeps the first row).
        """
        if self.has_unique_key(conn):
            return None
        tail = ["s.value_format", "s.double_v", "s.long_v", "s.bool_v", "s.str_v"]
        if self.has_server_created_time(conn):
            tail.insert(0, "s.server_created_time")
        way = " DESC NULLS LAST" if newest_first else " NULLS FIRST"
        return ", ".join(["s.created_time", "s.data_channel_id"] + [c + way for c in tail])

    def time_type(self, conn: Connection) -> str:
        """``timestamp without time zone`` or ``timestamp with time zone``."""
        return self.columns(conn)["created_time"]

    def has_server_created_time(self, conn: Connection) -> bool:
        """True when the source has a ``server_created_time`` column."""
        return "server_created_time" in self.columns(conn)

    def ships(self, conn: Connection) -> list[str]:
        """Every ship id, found by an index skip-scan (one index descent per ship)."""
        rows = conn.execute(
            text(
                f"""WITH RECURSIVE ships(ship_id) AS (
                    (SELECT ship_id FROM {self.sql} ORDER BY ship_id LIMIT 1)
                    UNION ALL
                    SELECT (SELECT s.ship_id FROM {self.sql} s WHERE s.ship_id > ships.ship_id
                            ORDER BY s.ship_id LIMIT 1)
                    FROM ships WHERE ships.ship_id IS NOT NULL
                ) SELECT ship_id FROM ships WHERE ship_id IS NOT NULL"""
            )
        ).scalars()
        return list(rows)

    def channels(self, conn: Connection, ship_id: str) -> list[str]:
        """Every channel id of ``ship_id``, by an index skip-scan on the primary key."""
        rows = conn.execute(
            text(
                f"""WITH RECURSIVE ch(c) AS (
                    (SELECT data_channel_id FROM {self.sql} WHERE ship_id = :ship
                     ORDER BY data_channel_id LIMIT 1)
                    UNION ALL
                    SELECT (SELECT s.data_channel_id FROM {self.sql} s
                            WHERE s.ship_id = :ship AND s.data_channel_id > ch.c
                            ORDER BY s.data_channel_id LIMIT 1)
                    FROM ch WHERE ch.c IS NOT NULL
                ) SELECT c FROM ch WHERE c IS NOT NULL"""
            ),
            {"ship": ship_id},
        ).scalars()
        return list(rows)

    def channels_with_rows(self, conn: Connection, ship_id: str, channels: list[str], start: datetime,
                           end: datetime) -> list[str]:
        """Those of ``channels`` with a row of ``ship_id`` in ``[start, end)``: one primary-key probe each."""
        if not channels:
            return []
        return list(conn.execute(
            text(
                f"""SELECT c.ch FROM unnest(CAST(:chs AS text[])) AS c(ch)
                WHERE EXISTS (SELECT FROM {self.sql} s WHERE s.ship_id = :ship AND s.data_channel_id = c.ch
                              AND s.created_time >= :a AND s.created_time < :b)
                ORDER BY 1"""
            ),
            {"ship": ship_id, "chs": channels, "a": start, "b": end},
        ).scalars())

    def channel_bounds(self, conn: Connection, ship_id: str, channels: list[str]) -> dict[str, tuple]:
        """Per channel: (first time, first format, last time, last format), by two index probes each."""
        rows = conn.execute(
            text(
                f"""SELECT c.ch, f.created_time, f.value_format, l.created_time, l.value_format
                FROM unnest(CAST(:chs AS text[])) AS c(ch)
                CROSS JOIN LATERAL (SELECT created_time, value_format FROM {self.sql}
                    WHERE ship_id = :ship AND data_channel_id = c.ch ORDER BY created_time LIMIT 1) f
                CROSS JOIN LATERAL (SELECT created_time, value_format FROM {self.sql}
                    WHERE ship_id = :ship AND data_channel_id = c.ch ORDER BY created_time DESC LIMIT 1) l"""
            ),
            {"ship": ship_id, "chs": channels},
        ).all()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def first_time(self, conn: Connection, ship_id: str, channels: list[str]) -> datetime | None:
        """The ship's earliest created_time (one index probe per channel)."""
        return self._edge_time(conn, ship_id, channels, newest=False)

    def last_time(self, conn: Connection, ship_id: str, channels: list[str]) -> datetime | None:
        """The ship's newest created_time (one index probe per channel)."""
        return self._edge_time(conn, ship_id, channels, newest=True)

    def _edge_time(self, conn: Connection, ship_id: str, channels: list[str], newest: bool) -> datetime | None:
        """The earliest (or newest) created_time over ``channels`` of ``ship_id``: one index probe each."""
        if not channels:
            return None
        edge, order = ("max", "DESC") if newest else ("min", "ASC")
        return conn.execute(
            text(
                f"""SELECT {edge}(f.created_time) FROM unnest(CAST(:chs AS text[])) AS c(ch)
                CROSS JOIN LATERAL (SELECT created_time FROM {self.sql}
                    WHERE ship_id = :ship AND data_channel_id = c.ch ORDER BY created_time {order} LIMIT 1) f"""
            ),
            {"ship": ship_id, "chs": channels},
        ).scalar_one()

    def format_counts(
        self, conn: Connection, ship_id: str, since: datetime | None = None, channels: list[str] | None = None
    ) -> dict[str, dict[str | None, int]]:
        """Per channel, rows per value_format: the whole ship, or only rows of ``channels`` at or after ``since``."""
        # the channel list makes the primary key serve the sampled window (one range per channel);
        # without it the planner may take the created_time index and read every ship's rows of it
        where = "ship_id = :ship" + (" AND data_channel_id = ANY(CAST(:chs AS text[]))" if channels else "") + (
            " AND created_time >= :since" if since is not None else "")
        rows = conn.execute(
            text(
                f"SELECT data_channel_id, value_format, count(*) FROM {self.sql} "
                f"WHERE {where} GROUP BY 1, 2"
            ),
            {"ship": ship_id, "since": since, "chs": channels},
        ).all()
        out: dict[str, dict[str | None, int]] = {}
        for channel, fmt, n in rows:
            out.setdefault(channel, {})[fmt] = int(n)
        return out

    def require_rows(self, conn: Connection, ship_id: str) -> None:
        """Raise :class:`SourceError` when ``ship_id`` has no rows."""
        found = conn.execute(
            text(f"SELECT 1 FROM {self.sql} WHERE ship_id = :ship LIMIT 1"), {"ship": ship_id}
        ).first()
        if found is None:
            raise SourceError(f"ship {ship_id!r} has no rows in {self.label}; check the ship id")
