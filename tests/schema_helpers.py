"""Shared helpers of the schema-only and tables-only tests (test_schema_*.py).

Every assertion reads back what the database holds (pg_attribute, the metadata tables, rows
written into the wide tables), never only what the library returned.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import text

from narrow2wide.db.database import qi, qualified
from table_creator import COLUMNS_META, TABLES_META

ROOT = Path(__file__).resolve().parent.parent
ROUTING = ROOT / "data" / "channel_routing_example.csv"
T0 = datetime(2024, 10, 1, 0, 0)
TIME_TYPE = "timestamp without time zone"
VALUE_COLUMN = {"Decimal": "double_v", "Integer": "long_v", "Boolean": "bool_v", "String": "str_v"}


# ---------------------------------------------------------------- helpers


def seed_rows(runtime, rows: list[tuple]) -> None:
    """Create the source and INSERT (ship, channel, time, value_format, value) rows."""
    params = []
    for ship, channel, ts, fmt, value in rows:
        row = {"ship": ship, "ch": channel, "ts": ts, "fmt": fmt,
               "bool_v": None, "str_v": None, "long_v": None, "double_v": None}
        if fmt in VALUE_COLUMN:
            row[VALUE_COLUMN[fmt]] = value
        elif value is not None:
            row["double_v"] = value  # an unknown format still carries a value somewhere
        params.append(row)
    with runtime.dbs.source.begin() as conn:
        runtime.source.create(conn)
        if params:
            conn.execute(text(
                f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, bool_v, str_v, "
                "long_v, double_v, value_format) VALUES (:ship, :ch, :ts, :bool_v, :str_v, :long_v, :double_v, :fmt)"),
                params)


def seed_series(runtime, ship: str, count: int, fmt: str = "Decimal", prefix: str = "ch", ts: datetime = T0) -> None:
    """One row each for ``count`` channels ``<prefix>0001``... generated in the database."""
    col = VALUE_COLUMN[fmt]
    value = {"double_v": "g * 0.5", "long_v": "g", "bool_v": "g % 2 = 0", "str_v": "'s' || g"}[col]
    with runtime.dbs.source.begin() as conn:
        runtime.source.create(conn)
        conn.execute(text(
            f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, {col}, value_format) "
            f"SELECT :ship, :prefix || lpad(g::text, 5, '0'), :ts, {value}, :fmt FROM generate_series(1, :n) g"),
            {"ship": ship, "prefix": prefix, "ts": ts, "fmt": fmt, "n": count})


def tgt(runtime) -> str:
    return runtime.settings.target_schema


def meta_columns(conn, schema: str, ship: str | None = None) -> list[tuple]:
    """migrator_columns rows (every column), ordered."""
    where = "" if ship is None else "WHERE ship_id = :s"
    return [tuple(r) for r in conn.execute(text(
        f"SELECT ship_id, channel_id, table_name, part, column_name, data_type, ordinal, added_at "
        f"FROM {qualified(schema, COLUMNS_META)} {where} ORDER BY ship_id, part, ordinal"), {"s": ship}).all()]


def meta_tables(conn, schema: str, ship: str | None = None) -> list[tuple]:
    """migrator_tables rows: (table_name, ship_id, part, created_at), ordered by ship and part."""
    where = "" if ship is None else "WHERE ship_id = :s"
    return [tuple(r) for r in conn.execute(text(
        f"SELECT table_name, ship_id, part, created_at FROM {qualified(schema, TABLES_META)} {where} "
        "ORDER BY ship_id, part"), {"s": ship}).all()]


def table_columns(conn, schema: str, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's live columns in physical order, from pg_attribute."""
    return [tuple(r) for r in conn.execute(text(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped ORDER BY attnum"),
        {"t": qualified(schema, table)}).all()]


def table_oid(conn, schema: str, table: str) -> int | None:
    return conn.execute(text(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relname = :t"), {"s": schema, "t": table}).scalar()


def relations_in(conn, schema: str) -> set[str]:
    return set(conn.execute(text(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relkind = 'r'"), {"s": schema}).scalars())


def sample_value(pg_type: str, i: int, text_bytes: int = 24):
    """A distinct, non-null value of ``pg_type``; text values are exactly ``text_bytes`` bytes.

    24 bytes is the most a text value takes inline per the layout's budget; 20 bytes is the
    longest value the toaster never moves out of line.
    """
    return {
        "double precision": i + 0.25,
        "bigint": i * 1_000_003,
        "boolean": i % 2 == 0,
        "text": f"v{i:0{text_bytes - 1}d}",
    }[pg_type]


def fill_row(conn, schema: str, table: str, ts: datetime, columns: list[tuple[str, str]], seed: int = 0,
             text_bytes: int = 24) -> list:
    """INSERT one row with a non-null value in every one of ``columns``; return the values written."""
    values = [sample_value(t, seed + i, text_bytes) for i, (_, t) in enumerate(columns)]
    names = ", ".join([qi("created_time")] + [qi(n) for n, _ in columns])
    binds = ", ".join([":ts"] + [f":v{i}" for i in range(len(columns))])
    params = {"ts": ts, **{f"v{i}": v for i, v in enumerate(values)}}
    conn.execute(text(f"INSERT INTO {qualified(schema, table)} ({names}) VALUES ({binds})"), params)
    return values


def read_row(conn, schema: str, table: str, ts: datetime, names: list[str]) -> list:
    cols = ", ".join(qi(n) for n in names)
    row = conn.execute(text(f"SELECT {cols} FROM {qualified(schema, table)} WHERE created_time = :ts"),
                       {"ts": ts}).one()
    return list(row)


def assert_tables_match_metadata(conn, schema: str, ship: str) -> dict[str, list[tuple[str, str]]]:
    """Each recorded table has exactly created_time + the recorded columns, in ordinal order, with their types.

    Returns table -> [(column, type)] as recorded.
    """
    recorded: dict[str, list[tuple[str, str]]] = {}
    for _s, _ch, table, _p, column, dtype, _o, _a in meta_columns(conn, schema, ship):
        recorded.setdefault(table, []).append((column, dtype))
    owned = {r[0] for r in meta_tables(conn, schema, ship)}
    assert set(recorded) == owned
    for table, cols in recorded.items():
        assert table_columns(conn, schema, table) == [("created_time", TIME_TYPE), *cols]
    return recorded


def assert_full_rows_insert(conn, schema: str, recorded: dict[str, list[tuple[str, str]]], ts: datetime,
                            text_bytes: int = 24) -> None:
    for table, cols in recorded.items():
        written = fill_row(conn, schema, table, ts, cols, text_bytes=text_bytes)
        assert read_row(conn, schema, table, ts, [n for n, _ in cols]) == written


