"""Writing pivoted rows: binary COPY straight into an empty range, else through a stage and a merge.

When the target has no row in the block's time range (the backfill's usual case) the rows are
copied straight into the table. Otherwise they are copied into a temporary stage and merged. The
merge takes the new value of every cell the batch has and keeps every other cell
(``COALESCE(EXCLUDED.c, w.c)``): running the same window twice gives the same table, a NULL
never overwrites a value, and a corrected source value replaces the old one.
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache

import psycopg2
import psycopg2.errors
from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.common.model import TIME_COLUMN, short_hash
from narrow2wide.db.database import qi, qualified, qualified_raw, quote_ident, raw_cursor

log = logging.getLogger("wide_writer")  # the name the log file has always shown


@lru_cache(maxsize=256)
def merge_sql(schema: str, table: str, stage: str, columns: tuple[str, ...]) -> str:
    """The ``INSERT ... ON CONFLICT DO UPDATE`` that merges ``stage`` into ``schema.table``."""
    q = quote_ident
    cols = ", ".join(q(c) for c in columns)
    data = [c for c in columns if c != TIME_COLUMN]
    updates = ", ".join(f"{q(c)} = COALESCE(EXCLUDED.{q(c)}, w.{q(c)})" for c in data)
    # a row whose cells would not change is left alone: re-reading a window (the realtime lookback,
    # a rerun) then writes no new row versions, so no dead tuples and no WAL for unchanged data.
    # Compared by binary image, not by value: -0.0 replaces 0.0 (they are equal as numbers).
    changed = (f"record_image_ne(ROW({', '.join(f'w.{q(c)}' for c in data)}), "
               f"ROW({', '.join(f'COALESCE(EXCLUDED.{q(c)}, w.{q(c)})' for c in data)}))")
    conflict = f"DO UPDATE SET {updates} WHERE {changed}" if data else "DO NOTHING"
    return (f"INSERT INTO {qualified_raw(schema, table)} AS w ({cols}) SELECT {cols} FROM {q(stage)} "
            f"ON CONFLICT ({q(TIME_COLUMN)}) {conflict}")


def write_copy(conn: Connection, schema: str, table: str, columns: list[str], payload: bytes, start, end) -> int:
    """Write ``payload`` (binary COPY of ``columns``, times in ``[start, end)``); returns rows written.

    An empty range takes a direct COPY: the result is the one the merge would give, at about half
    the server's work. Should another session commit rows into the range between the check and
    the COPY (realtime's lookback reaching below the cutoff), the COPY hits the primary key, is
    rolled back to its savepoint and the rows are merged instead.
    """
    cur = raw_cursor(conn)
    t = quote_ident(TIME_COLUMN)
    cur.execute(f"SELECT EXISTS (SELECT FROM {qualified_raw(schema, table).replace('%', '%%')} "
                f"WHERE {t} >= %s AND {t} < %s)",
                (start, end))
    if cur.fetchone()[0]:
        return merge_copy(conn, schema, table, columns, payload)
    cols = ", ".join(quote_ident(c) for c in columns)
    cur.execute("SAVEPOINT direct_copy")
    try:
        cur.copy_expert(f"COPY {qualified_raw(schema, table)} ({cols}) FROM STDIN (FORMAT binary)",
                        io.BytesIO(payload))
    except psycopg2.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT direct_copy")
        log.info("%s.%s: rows arrived in %s..%s during the write; merging instead", schema, table, start, end)
        return merge_copy(conn, schema, table, columns, payload)
    written = cur.rowcount
    cur.execute("RELEASE SAVEPOINT direct_copy")
    return written


def merge_copy(conn: Connection, schema: str, table: str, columns: list[str], payload: bytes) -> int:
    """Load ``payload`` (binary COPY of ``columns``) and merge it into the table (see :func:`merge_many`)."""
    return merge_many(conn, schema, [(table, columns, payload)])


def merge_many(conn: Connection, schema: str, items: list[tuple[str, list[str], bytes]]) -> int:
    """Merge each ``(table, columns, payload)`` (one per table) into its wide table; returns rows merged.

    Runs inside ``conn``'s transaction, in 2 + len(items) round trips however many tables: the
    stages made in one statement, one COPY each, then every merge in one statement. A stage is a
    temporary table the session keeps (one per table and column set), so a realtime cycle over a
    fleet pays no catalogue writes per ship (creating and dropping a stage of 100 columns cost
    2.3 ms). It is emptied after its merge (for another merge in the same transaction) and again,
    in place, at every commit (``ON COMMIT DELETE ROWS``). Not ``TRUNCATE``: that gives the stage a
    new file, and every prepared merge that reads it would be planned again.
    """
    if not items:
        return 0
    q = quote_ident
    cur = raw_cursor(conn)
    stages = ["stage_" + short_hash(f"{schema}.{table}:" + "\x1f".join(columns), 16) for table, columns, _ in items]
    if len(set(stages)) != len(stages):
        raise ValueError("merge_many takes one payload per table")
    cur.execute("SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname = ANY(%s)",
                (stages,))
    have = {r[0] for r in cur.fetchall()}  # a session's stages outlive its transactions: made once
    missing = [(st, table) for st, (table, _, _) in zip(stages, items, strict=True) if st not in have]
    if missing:
        cur.execute("; ".join(f"CREATE TEMP TABLE IF NOT EXISTS {q(st)} (LIKE {qualified_raw(schema, table)}) "
                              "ON COMMIT DELETE ROWS" for st, table in missing))
    for st, (_, columns, payload) in zip(stages, items, strict=True):
        cols = ", ".join(q(c) for c in columns)
        cur.copy_expert(f"COPY {q(st)} ({cols}) FROM STDIN (FORMAT binary)", io.BytesIO(payload))
    merges = [_prepared(conn, cur, merge_sql(schema, table, st, tuple(columns)))
              for st, (table, columns, _) in zip(stages, items, strict=True)]
    if len(merges) == 1:
        cur.execute(merges[0])
        merged = cur.rowcount
    else:
        cur.execute("; ".join(merges))
        merged = -1  # a multi-statement string reports only its last statement
    cur.execute("; ".join(f"DELETE FROM pg_temp.{q(st)}" for st in stages))
    return merged


def _prepared(conn: Connection, cur, statement: str) -> str:
    """``EXECUTE`` of ``statement`` prepared once per session (the connection's info dict remembers).

    A merge of 1,000 columns takes tens of milliseconds to parse and plan, more than it takes to
    run on a realtime cycle's few rows; prepared, a fleet's merges are planned once per session.
    Prepared statements outlive a rolled-back transaction, and PostgreSQL re-plans one whose
    tables changed (a new column, a stage made anew).
    """
    name = "merge_" + short_hash(statement, 16)
    prepared: set[str] = conn.info.setdefault("migrator_prepared", set())
    if name not in prepared:
        cur.execute(f"PREPARE {name} AS {statement}")
        prepared.add(name)
    return f"EXECUTE {name}"


def delete_window(conn: Connection, schema: str, table: str, start, end) -> int:
    """Delete the wide rows with ``start <= created_time < end`` (used by ``validate --repair``)."""
    result = conn.execute(text(f"DELETE FROM {qualified(schema, table)} WHERE {qi(TIME_COLUMN)} >= :a "
                               f"AND {qi(TIME_COLUMN)} < :b"), {"a": start, "b": end})
    return int(result.rowcount)
