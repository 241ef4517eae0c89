"""The tool's catalogue in the target database: which ships have wide tables, their newest times, the clock.

Read-only queries shared by the backfill, realtime, the strategies and status.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.common.errors import SchemaError
from narrow2wide.common.model import ChannelSchema, ShipSchema, TablePart
from narrow2wide.db.database import qualified, qualified_raw, server_now
from narrow2wide.db.runtime import Runtime

TABLES_META = "migrator_tables"
COLUMNS_META = "migrator_columns"


def database_now(conn: Connection, time_type: str, tz: str) -> datetime:
    """The database's current time, typed like the source's created_time (never this machine's clock)."""
    if "with time zone" in time_type:
        return conn.execute(text("SELECT now()")).scalar_one()
    return server_now(conn, tz)


def wide_ships(conn: Connection, schema: str) -> list[str]:
    """Ships that have wide tables (recorded by tables-only)."""
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": qualified_raw(schema, TABLES_META)}).scalar() is None:
        return []
    return list(conn.execute(text(f"SELECT DISTINCT ship_id FROM {qualified(schema, TABLES_META)} ORDER BY 1"))
                .scalars())


def resolve_ships(rt: Runtime, ship_ids: tuple[str, ...] = ()) -> list[str]:
    """The ships to work on: those asked for, else every ship with wide tables."""
    with rt.dbs.target.connect() as conn:
        have = wide_ships(conn, rt.settings.target_schema)
    wanted = list(ship_ids or rt.settings.ship_ids) or have
    if not wanted:
        raise SchemaError("no wide tables yet; run --mode schema-only and --mode tables-only first")
    missing = [s for s in wanted if s not in have]
    if missing:
        raise SchemaError(f"ship(s) {', '.join(missing)} have no wide tables; run --mode tables-only first")
    return wanted


def wide_row_count(conn: Connection, schema: str, tables: list[str]) -> int:
    """Distinct created_time over one ship's wide tables (one index-only scan each; the ship's own rows only)."""
    if not tables:
        return 0
    union = " UNION ".join(f"SELECT created_time FROM {qualified(schema, t)}" for t in tables)
    return int(conn.execute(text(f"SELECT count(*) FROM ({union}) u")).scalar_one())


def newest_wide_times(conn: Connection, schema: str, tables: dict[str, list[str]]) -> dict[str, datetime | None]:
    """The newest created_time of each ship's wide tables, in one statement (one index probe per table)."""
    branches = [(ship, t) for ship, ts in tables.items() for t in ts]
    if not branches:
        return {}
    union = " UNION ALL ".join(
        f"SELECT CAST(:s{i} AS text) AS ship, (SELECT max(created_time) FROM {qualified(schema, t)}) AS t"
        for i, (_, t) in enumerate(branches))
    rows = conn.execute(text(f"SELECT ship, max(t) FROM ({union}) u GROUP BY ship"),
                        {f"s{i}": ship for i, (ship, _) in enumerate(branches)}).all()
    return dict(rows)  # type: ignore[arg-type]


def newest_wide_time(conn: Connection, schema: str, tables: dict[str, int]) -> datetime | None:
    """The newest created_time in the given wide tables of one ship (``None`` when they are empty)."""
    return newest_wide_times(conn, schema, {"": list(tables)}).get("")


def load_ship_layout(conn: Connection, schema: str, ship_id: str) -> ShipSchema | None:
    """The layout recorded in the metadata tables, or None when the ship has no tables yet."""
    return load_ship_layouts(conn, schema, [ship_id]).get(ship_id)


def load_ship_layouts(conn: Connection, schema: str, ship_ids: list[str]) -> dict[str, ShipSchema]:
    """The recorded layouts of ``ship_ids`` (those that have tables), in one query for the fleet."""
    exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": qualified_raw(schema, COLUMNS_META)}).scalar()
    if exists is None:
        return {}
    rows = conn.execute(text(
        f"SELECT ship_id, channel_id, table_name, part, column_name, data_type FROM {qualified(schema, COLUMNS_META)} "
        "WHERE ship_id = ANY(CAST(:s AS text[])) ORDER BY ship_id, part, ordinal"), {"s": ship_ids}).all()
    by_ship: dict[str, list] = {}
    for row in rows:
        by_ship.setdefault(row[0], []).append(row[1:])
    out = {}
    for ship_id, ship_rows in by_ship.items():
        tables: dict[int, tuple[str, list[str]]] = {}
        chans = []
        for ch, table, part, column, dtype in ship_rows:
            tables.setdefault(part, (table, []))[1].append(ch)
            chans.append(ChannelSchema(channel_id=ch, column=column, pg_type=dtype, part=part))
        parts = tuple(TablePart(n, t, tuple(c)) for n, (t, c) in sorted(tables.items()))
        out[ship_id] = ShipSchema(ship_id, parts, tuple(chans))
    return out
