"""Step 2 (``--mode tables-only``): create the wide tables and record the channel mapping.

The metadata tables in the target schema are the record every later step reads:

* ``migrator_tables``: every table this tool created (only these are ever dropped);
* ``migrator_columns``: channel id -> (table, column, type) per ship.

Schema evolution (new channels) only ever adds columns (``ALTER TABLE ADD COLUMN`` does not
rewrite the table) or new parts; a column is never dropped, renamed or retyped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ProgrammingError

from narrow2wide.common.errors import SchemaError, one_line
from narrow2wide.common.model import (
    TIME_COLUMN,
    ChannelSchema,
    PlannedPart,
    SchemaAnalysis,
    ShipSchema,
    assign_columns,
    name_parts,
    place_channels,
    resolve_type,
)
from narrow2wide.db.catalogue import COLUMNS_META, TABLES_META, load_ship_layout
from narrow2wide.db.database import qi, qualified, qualified_raw
from narrow2wide.db.lock_keys import ddl_key
from narrow2wide.db.runtime import Runtime
from narrow2wide.schema.analyzer import load_schema

log = logging.getLogger("table_creator")  # the name the log file has always shown

@dataclass(frozen=True)
class ShipTablesResult:
    """What ``tables-only`` did for one ship."""

    ship_id: str
    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    columns_added: int = 0
    unchanged: tuple[str, ...] = ()


@dataclass(frozen=True)
class TablesResult:
    """What ``tables-only`` did."""

    target_schema: str
    ships: tuple[ShipTablesResult, ...] = field(default_factory=tuple)


def ensure_metadata(conn: Connection, schema: str) -> None:
    """Create the target schema and the metadata tables when missing."""
    try:
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists
        if conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first() is None:
            conn.execute(text(f"CREATE SCHEMA {qi(schema)}"))
        conn.execute(text(f"""CREATE TABLE IF NOT EXISTS {qualified(schema, TABLES_META)} (
            table_name text PRIMARY KEY,
            ship_id text NOT NULL,
            part integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (ship_id, part))"""))
        conn.execute(text(f"""CREATE TABLE IF NOT EXISTS {qualified(schema, COLUMNS_META)} (
            ship_id text NOT NULL,
            channel_id text NOT NULL,
            table_name text NOT NULL,
            part integer NOT NULL,
            column_name text NOT NULL,
            data_type text NOT NULL,
            ordinal integer NOT NULL,
            added_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (ship_id, channel_id),
            UNIQUE (table_name, column_name))"""))
    except ProgrammingError as exc:
        raise SchemaError(
            f"cannot create tables in schema {schema!r}: {one_line(exc)}; "
            f"create the schema and GRANT USAGE, CREATE ON SCHEMA {schema} to the tool's role, or GRANT CREATE "
            "ON DATABASE so that it can create the schema itself (see README)"
        ) from exc


def lock_ship_ddl(conn: Connection, schema: str, ship_id: str) -> None:
    """Serialise schema changes of one ship across processes (held until the transaction ends)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": ddl_key(schema, ship_id)})


def _table_exists(conn: Connection, schema: str, table: str) -> bool:
    return conn.execute(text("SELECT to_regclass(:t)"), {"t": qualified_raw(schema, table)}).scalar() is not None


def _owned_tables(conn: Connection, schema: str, ship_id: str) -> dict[str, int]:
    rows = conn.execute(text(f"SELECT table_name, part FROM {qualified(schema, TABLES_META)} WHERE ship_id = :s"),
                        {"s": ship_id}).all()
    return {r[0]: r[1] for r in rows}


def _existing_columns(conn: Connection, schema: str, table: str) -> set[str]:
    return set(conn.execute(text(
        "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped"),
        {"t": qualified_raw(schema, table)}).scalars())


def apply_ship_layout(conn: Connection, schema: str, ship: ShipSchema, time_type: str) -> ShipTablesResult:
    """Make the database match ``ship``: create missing parts, add missing columns, record the mapping.

    Idempotent; call inside a transaction that holds :func:`lock_ship_ddl`.
    """
    owned = _owned_tables(conn, schema, ship.ship_id)
    by_channel = ship.channel_map()
    created, unchanged, added = [], [], 0
    for part in ship.parts:
        cols = [(by_channel[c].column, by_channel[c].pg_type) for c in part.channels]
        if not _table_exists(conn, schema, part.table):
            ddl = ",\n".join([f"{qi(TIME_COLUMN)} {time_type} PRIMARY KEY"] + [f"{qi(n)} {t}" for n, t in cols])
            conn.execute(text(f"CREATE TABLE {qualified(schema, part.table)} (\n{ddl}\n)"))
            conn.execute(text(f"INSERT INTO {qualified(schema, TABLES_META)} (table_name, ship_id, part) "
                              "VALUES (:t, :s, :p)"), {"t": part.table, "s": ship.ship_id, "p": part.number})
            created.append(part.table)
        else:
            if part.table not in owned:
                raise SchemaError(
                    f"table {schema}.{part.table} exists but was not created by this tool; "
                    "rename or drop it yourself, or choose another TARGET_SCHEMA"
                )
            present = _existing_columns(conn, schema, part.table)
            missing = [(n, t) for n, t in cols if n not in present]
            for name, pg_type in missing:
                conn.execute(text(f"ALTER TABLE {qualified(schema, part.table)} ADD COLUMN {qi(name)} {pg_type}"))
            added += len(missing)
            if not missing:
                unchanged.append(part.table)
        for ordinal, channel in enumerate(part.channels):
            c = by_channel[channel]
            conn.execute(text(
                f"""INSERT INTO {qualified(schema, COLUMNS_META)}
                    (ship_id, channel_id, table_name, part, column_name, data_type, ordinal)
                VALUES (:s, :c, :t, :p, :col, :ty, :o)
                ON CONFLICT (ship_id, channel_id) DO NOTHING"""),
                {"s": ship.ship_id, "c": channel, "t": part.table, "p": part.number, "col": c.column,
                 "ty": c.pg_type, "o": ordinal})
    return ShipTablesResult(ship.ship_id, tuple(created), (), added, tuple(unchanged))


def drop_ship_tables(conn: Connection, schema: str, ship_id: str) -> tuple[str, ...]:
    """Drop the tables this tool created for ``ship_id`` (and only those) and forget their mapping."""
    owned = _owned_tables(conn, schema, ship_id)
    for table in owned:
        conn.execute(text(f"DROP TABLE IF EXISTS {qualified(schema, table)}"))
    conn.execute(text(f"DELETE FROM {qualified(schema, TABLES_META)} WHERE ship_id = :s"), {"s": ship_id})
    conn.execute(text(f"DELETE FROM {qualified(schema, COLUMNS_META)} WHERE ship_id = :s"), {"s": ship_id})
    return tuple(sorted(owned))


def create_tables(
    rt: Runtime, ship_ids: tuple[str, ...] = (), drop: bool = False, analysis: SchemaAnalysis | None = None
) -> TablesResult:
    """``--mode tables-only``: create (or extend) each ship's wide tables from the schema file."""
    analysis = analysis or load_schema(rt.settings.schema_file)
    assert analysis is not None
    schema = rt.settings.target_schema
    wanted = set(ship_ids)
    results = []
    for ship in analysis.ships:
        if wanted and ship.ship_id not in wanted:
            continue
        with rt.dbs.target.begin() as conn:
            ensure_metadata(conn, schema)
            lock_ship_ddl(conn, schema, ship.ship_id)
            dropped = drop_ship_tables(conn, schema, ship.ship_id) if drop else ()
            res = apply_ship_layout(conn, schema, ship, analysis.time_type)
        if dropped:
            res = ShipTablesResult(res.ship_id, res.created, dropped, res.columns_added, res.unchanged)
        log.info("ship %s: %d table(s) created, %d column(s) added", ship.ship_id, len(res.created),
                 res.columns_added)
        results.append(res)
    missing = wanted - {s.ship_id for s in analysis.ships}
    if missing:
        raise SchemaError(f"ship(s) {', '.join(sorted(missing))} not in the schema file; "
                          "run --mode schema-only for them first")
    return TablesResult(schema, tuple(results))


def add_channels(rt: Runtime, conn: Connection, ship_id: str, channel_ids: list[str], time_type: str) -> ShipSchema:
    """Give new channels columns while migration runs (schema drift); returns the new layout.

    Runs in ``conn``'s transaction on the target under the ship's DDL lock; types come from the
    source's value formats of those channels.
    """
    schema = rt.settings.target_schema
    ensure_metadata(conn, schema)
    lock_ship_ddl(conn, schema, ship_id)
    layout = load_ship_layout(conn, schema, ship_id)
    known = layout.channel_map() if layout else {}
    new = sorted(set(channel_ids) - set(known))
    if not new:
        assert layout is not None
        return layout
    with rt.dbs.source.connect() as sconn:
        rows = sconn.execute(text(
            f"SELECT data_channel_id, value_format FROM {rt.source.sql} "
            "WHERE ship_id = :s AND data_channel_id = ANY(CAST(:c AS text[])) GROUP BY 1, 2"),
            {"s": ship_id, "c": new}).all()
    formats: dict[str, set] = {c: set() for c in new}
    for ch, fmt in rows:
        formats[ch].add(fmt)
    types = {ch: resolve_type(f).pg_type for ch, f in formats.items()}
    style = _column_style(rt)
    columns = assign_columns(new, style, {c: s.column for c, s in known.items()})
    old_parts = [PlannedPart(p.number, p.channels) for p in layout.parts] if layout else []
    planned = place_channels(old_parts, types, None, time_type, {c: s.pg_type for c, s in known.items()})
    old_names = {p.number: p.table for p in layout.parts} if layout else {}
    taken = set(conn.execute(text(f"SELECT table_name FROM {qualified(schema, TABLES_META)} WHERE ship_id <> :s"),
                             {"s": ship_id}).scalars())
    parts = name_parts(ship_id, planned, old_names, taken)
    part_of = {ch: p.number for p in parts for ch in p.channels}
    chans = list(known.values()) + [
        ChannelSchema(channel_id=c, column=columns[c], pg_type=types[c], part=part_of[c]) for c in new]
    ship = ShipSchema(ship_id, parts, tuple(chans))
    apply_ship_layout(conn, schema, ship, time_type)
    log.warning("ship %s: %d new channel(s) got columns: %s", ship_id, len(new), ", ".join(new[:5]) +
                (" ..." if len(new) > 5 else ""))
    return load_ship_layout(conn, schema, ship_id)  # type: ignore[return-value]


def _column_style(rt: Runtime) -> str:
    analysis = load_schema(rt.settings.schema_file, missing_ok=True)
    return analysis.column_style if analysis else "id"
