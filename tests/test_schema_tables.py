"""schema-only and tables-only against a real PostgreSQL: layouts, names, evolution, drops, errors.

Every assertion reads back what the database holds (pg_attribute, the metadata tables, rows
written into the wide tables), never only what the library returned.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from main import cli
from narrow2wide.common import errors
from narrow2wide.db.database import qi, qualified
from schema_analyzer import analyze_source, load_schema
from table_creator import COLUMNS_META, TABLES_META, add_channels, create_tables

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
        assert None not in written


def run_cli(cli_env, *args: str):
    return CliRunner().invoke(cli, list(args), env=cli_env)


# ---------------------------------------------------------------- 1, 2: parts and row size


def test_2000_double_channels_split_into_parts_that_take_full_rows(runtime):
    ship = "IMO9100001"
    seed_series(runtime, ship, 2000)
    analysis = analyze_source(runtime)
    create_tables(runtime)
    schema = tgt(runtime)
    with runtime.dbs.target.begin() as conn:
        tables = meta_tables(conn, schema, ship)
        assert [(t[0], t[2]) for t in tables] == [
            (f"tbl_data_timeseries_{ship.lower()}_{n}", n) for n in range(1, len(tables) + 1)]
        assert len(tables) >= 2
        recorded = assert_tables_match_metadata(conn, schema, ship)
        for table, _cols in recorded.items():
            assert len(table_columns(conn, schema, table)) <= 1600
        channels = [r[1] for r in meta_columns(conn, schema, ship)]
        assert sorted(channels) == [f"ch{i:05d}" for i in range(1, 2001)]
        assert all(t == "double precision" for cols in recorded.values() for _, t in cols)
        assert_full_rows_insert(conn, schema, recorded, T0)
    assert len(analysis.ship(ship).parts) == len(tables)


def test_1000_doubles_fit_one_unsuffixed_table(runtime):
    ship = "IMO9100002"
    seed_series(runtime, ship, 1000)
    analyze_source(runtime)
    create_tables(runtime)
    schema = tgt(runtime)
    with runtime.dbs.target.begin() as conn:
        assert [(t[0], t[2]) for t in meta_tables(conn, schema)] == [("tbl_data_timeseries_imo9100002", 1)]
        recorded = assert_tables_match_metadata(conn, schema, ship)
        assert len(recorded["tbl_data_timeseries_imo9100002"]) == 1000
        assert relations_in(conn, schema) == {"tbl_data_timeseries_imo9100002", TABLES_META, COLUMNS_META}
        assert_full_rows_insert(conn, schema, recorded, T0)


def test_text_channels_use_more_parts_and_full_rows_with_24_byte_text_insert(runtime):
    ship = "IMO9100003"
    seed_series(runtime, ship, 400, "Decimal", "d")
    seed_series(runtime, ship, 700, "String", "s")
    seed_series(runtime, ship, 300, "Boolean", "b")
    seed_series(runtime, ship, 50, "Integer", "i")
    analyze_source(runtime)
    create_tables(runtime)
    schema = tgt(runtime)
    with runtime.dbs.target.begin() as conn:
        recorded = assert_tables_match_metadata(conn, schema, ship)
        # 1,451 columns would fit the column limit in one table; the row size forces more parts
        assert len(recorded) >= 3
        types = {t for cols in recorded.values() for _, t in cols}
        assert types == {"double precision", "text", "boolean", "bigint"}
        assert sum(len(c) for c in recorded.values()) == 1450
        text_parts = [t for t, cols in recorded.items() if any(ty == "text" for _, ty in cols)]
        assert len(text_parts) >= 2
        assert_full_rows_insert(conn, schema, recorded, T0)
        assert_full_rows_insert(conn, schema, recorded, T0 + timedelta(seconds=1), text_bytes=20)
        for table, cols in recorded.items():
            texts = [n for n, t in cols if t == "text"]
            if texts:
                got = read_row(conn, schema, table, T0, texts)
                assert all(isinstance(v, str) and len(v.encode()) == 24 for v in got)
                got = read_row(conn, schema, table, T0 + timedelta(seconds=1), texts)
                assert all(isinstance(v, str) and len(v.encode()) == 20 for v in got)


# ---------------------------------------------------------------- 3: awkward channel ids


def awkward_ids(canary_schema: str) -> list[str]:
    return [
        "p" * 80,
        "p" * 63 + "A" * 17,
        "p" * 63 + "B" * 17,
        'quote"inside',
        "semi;colon",
        "with spaces  in it",
        "dash--dash",
        "엔진 온도",
        "엔진 압력",
        'x"; DROP TABLE foo; --',
        f'x"; DROP TABLE {qi(canary_schema)}.canary; --',
        "created_time",
        "Engine Temp",
        "engine-temp",
        "plain",
    ]


@pytest.mark.parametrize("style", ["id", "snake"])
def test_awkward_channel_ids_get_distinct_working_columns(runtime, style):
    ship = "IMO9100004"
    schema = tgt(runtime)
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"CREATE TABLE {qualified(schema, 'canary')} (x int)"))
        conn.execute(text(f"INSERT INTO {qualified(schema, 'canary')} VALUES (42)"))
    ids = awkward_ids(schema)
    assert len(set(ids)) == len(ids)
    assert len(ids[1].encode()) == 80 and ids[1][:63] == ids[2][:63]
    seed_rows(runtime, [(ship, c, T0 + timedelta(seconds=i), "Decimal", float(i)) for i, c in enumerate(ids)])

    analysis = analyze_source(runtime, column_style=style)
    create_tables(runtime)
    assert analysis.column_style == style

    with runtime.dbs.target.begin() as conn:
        rows = meta_columns(conn, schema, ship)
        assert sorted(r[1] for r in rows) == sorted(ids)
        names = [r[4] for r in rows]
        assert len(set(names)) == len(ids)
        assert "created_time" not in names
        assert all(len(n.encode()) <= 63 for n in names)
        if style == "id":
            short = [c for c in ids if len(c.encode()) <= 63 and c != "created_time"]
            assert {r[1]: r[4] for r in rows if r[1] in short} == {c: c for c in short}
        else:
            assert all(n == n.lower() for n in names)
        recorded = assert_tables_match_metadata(conn, schema, ship)
        (table,) = recorded
        # every column holds a value written by its recorded name
        assert_full_rows_insert(conn, schema, recorded, T0)
        by_channel = {r[1]: r[4] for r in rows}
        for i, channel in enumerate(ids):
            conn.execute(text(f"UPDATE {qualified(schema, table)} SET {qi(by_channel[channel])} = :v "
                              "WHERE created_time = :ts"), {"v": 1000.0 + i, "ts": T0})
        got = read_row(conn, schema, table, T0, [by_channel[c] for c in ids])
        assert got == [1000.0 + i for i in range(len(ids))]
        # the injection attempts were names, not statements
        assert conn.execute(text(f"SELECT x FROM {qualified(schema, 'canary')}")).scalar_one() == 42
        assert "foo" not in relations_in(conn, schema)


@pytest.mark.parametrize(
    "channel",
    [
        "load%pct",
        "flow :raw",
        "a::b %(x)s :y",
    ],
)
def test_percent_and_colon_in_channel_ids_id_style(runtime, channel):
    """Ids with '%' or ' :word' must get a column whose real name is the recorded one (id style)."""
    ship = "IMO9100005"
    schema = tgt(runtime)
    seed_rows(runtime, [(ship, channel, T0, "Decimal", 1.5), (ship, "other", T0, "Decimal", 2.5)])
    analyze_source(runtime, column_style="id")
    create_tables(runtime)
    with runtime.dbs.target.begin() as conn:
        rows = meta_columns(conn, schema, ship)
        recorded = {r[1]: r[4] for r in rows}
        assert recorded[channel] == channel
        (table,) = {r[2] for r in rows}
        live = [n for n, _ in table_columns(conn, schema, table)]
        assert sorted(live) == sorted(["created_time", *recorded.values()])
    # tables-only again must be a no-op, not a duplicate-column error
    again = create_tables(runtime)
    assert again.ships[0].columns_added == 0


def test_long_ship_id_with_two_parts(runtime):
    ship = "SHIP-" + "X" * 45
    seed_series(runtime, ship, 1001)
    analyze_source(runtime)
    create_tables(runtime)
    schema = tgt(runtime)
    with runtime.dbs.target.begin() as conn:
        tables = meta_tables(conn, schema, ship)
        assert len(tables) == 2
        assert_tables_match_metadata(conn, schema, ship)


def test_ship_ids_differing_only_in_case_get_their_own_tables(runtime):
    seed_rows(runtime, [("IMOAB1", "a", T0, "Decimal", 1.0), ("imoab1", "a", T0, "Decimal", 2.0)])
    analyze_source(runtime)
    create_tables(runtime)
    with runtime.dbs.target.begin() as conn:
        tables = meta_tables(conn, tgt(runtime))
        assert len({t[0] for t in tables}) == 2


# ---------------------------------------------------------------- 4: re-running changes nothing


def snapshot(runtime) -> dict:
    schema = tgt(runtime)
    with runtime.dbs.target.connect() as conn:
        tables = meta_tables(conn, schema)
        return {
            "columns": meta_columns(conn, schema),
            "tables": tables,
            "attributes": {t[0]: table_columns(conn, schema, t[0]) for t in tables},
            "oids": {t[0]: table_oid(conn, schema, t[0]) for t in tables},
            "relations": relations_in(conn, schema),
        }


def schema_file_mapping(runtime) -> dict:
    raw = json.loads(runtime.settings.schema_file.read_text(encoding="utf-8"))
    return {
        s["ship_id"]: {
            "parts": [(p["number"], p["table"], p["channels"]) for p in s["parts"]],
            "channels": [(c["channel_id"], c["column"], c["pg_type"], c["part"]) for c in s["channels"]],
        }
        for s in raw["ships"]
    }


def test_rerunning_schema_and_tables_changes_nothing(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    big, small = "IMO9100006", "IMO9100007"
    seed_series(runtime, big, 1100)
    seed_rows(runtime, [(big, "p" * 70, T0, "Decimal", 1.0), (big, "엔진 온도", T0, "Integer", 2),
                        (small, "flag", T0, "Boolean", True), (small, "mode", T0, "String", "AUTO"),
                        (small, "num", T0, "Integer", 5), (small, "num", T0 + timedelta(minutes=1), "Decimal", 5.5)])
    analyze_source(runtime)
    create_tables(runtime)
    before, mapping_before = snapshot(runtime), schema_file_mapping(runtime)
    assert len(before["tables"]) == 3  # two parts for the big ship, one for the small

    # newer rows, and a format the column was not made for: the column is kept as it is
    seed_rows(runtime, [(small, "num", T0 + timedelta(hours=1), "String", "n/a"),
                        (big, "ch00001", T0 + timedelta(hours=1), "Decimal", 9.0)])
    again = analyze_source(runtime)
    result = create_tables(runtime)
    assert all(s.created == () and s.columns_added == 0 for s in result.ships)
    assert snapshot(runtime) == before
    assert schema_file_mapping(runtime) == mapping_before
    assert any(d.startswith("num: column is double precision") for d in again.ship(small).type_drift)

    # and once more through the command line
    out = run_cli(cli_env, "--mode", "schema-only")
    assert out.exit_code == 0, out.output
    out = run_cli(cli_env, "--mode", "tables-only")
    assert out.exit_code == 0, out.output
    assert snapshot(runtime) == before
    assert schema_file_mapping(runtime) == mapping_before


# ---------------------------------------------------------------- 5: --drop-tables


def test_drop_tables_recreates_only_the_tools_tables(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = "IMO9100008", "IMO9100009"
    schema = tgt(runtime)
    seed_rows(runtime, [(a, "x", T0, "Decimal", 1.0), (a, "y", T0, "Integer", 2),
                        (b, "x", T0, "Decimal", 3.0)])
    analyze_source(runtime)
    create_tables(runtime)
    table_a, table_b = f"tbl_data_timeseries_{a.lower()}", f"tbl_data_timeseries_{b.lower()}"
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"CREATE TABLE {qualified(schema, 'keep_me')} (id int, note text)"))
        conn.execute(text(f"INSERT INTO {qualified(schema, 'keep_me')} VALUES (1, 'mine')"))
        conn.execute(text(f"CREATE TABLE {qualified(schema, 'tbl_data_timeseries_unrelated')} (id int)"))
        conn.execute(text(f"INSERT INTO {qualified(schema, 'tbl_data_timeseries_unrelated')} VALUES (7)"))
        for table in (table_a, table_b):
            conn.execute(text(f"INSERT INTO {qualified(schema, table)} (created_time, x) VALUES (:t, 1.5)"),
                         {"t": T0})
        cols_before = meta_columns(conn, schema)
        oid_a, oid_b = table_oid(conn, schema, table_a), table_oid(conn, schema, table_b)
        keep_oid = table_oid(conn, schema, "keep_me")

    result = create_tables(runtime, drop=True)
    assert {s.ship_id: (s.dropped, s.created) for s in result.ships} == {
        a: ((table_a,), (table_a,)), b: ((table_b,), (table_b,))}

    def unrelated_intact(conn):
        assert conn.execute(text(f"SELECT id, note FROM {qualified(schema, 'keep_me')}")).all() == [(1, "mine")]
        assert conn.execute(text(
            f"SELECT id FROM {qualified(schema, 'tbl_data_timeseries_unrelated')}")).all() == [(7,)]
        assert table_oid(conn, schema, "keep_me") == keep_oid

    with runtime.dbs.target.begin() as conn:
        unrelated_intact(conn)
        for table, old in ((table_a, oid_a), (table_b, oid_b)):
            assert conn.execute(text(f"SELECT count(*) FROM {qualified(schema, table)}")).scalar_one() == 0
            assert table_oid(conn, schema, table) != old
        after = meta_columns(conn, schema)
        assert [r[:7] for r in after] == [r[:7] for r in cols_before]  # same mapping, recorded anew
        assert_tables_match_metadata(conn, schema, a)
        for table in (table_a, table_b):
            conn.execute(text(f"INSERT INTO {qualified(schema, table)} (created_time, x) VALUES (:t, 2.5)"),
                         {"t": T0})
        oid_a, oid_b = table_oid(conn, schema, table_a), table_oid(conn, schema, table_b)

    # the command line, for ship A only: ship B's table and data stay
    out = run_cli(cli_env, "--mode", "tables-only", "--drop-tables", "--yes", "--ship-id", a)
    assert out.exit_code == 0, out.output
    with runtime.dbs.target.begin() as conn:
        unrelated_intact(conn)
        assert conn.execute(text(f"SELECT count(*) FROM {qualified(schema, table_a)}")).scalar_one() == 0
        assert table_oid(conn, schema, table_a) != oid_a
        assert conn.execute(text(f"SELECT created_time, x FROM {qualified(schema, table_b)}")).all() == [(T0, 2.5)]
        assert table_oid(conn, schema, table_b) == oid_b
        assert relations_in(conn, schema) == {table_a, table_b, "keep_me", "tbl_data_timeseries_unrelated",
                                              TABLES_META, COLUMNS_META}


# ---------------------------------------------------------------- 6: new channels later


def test_new_channel_gets_a_column_and_old_data_stays(runtime):
    ship = "IMO9100010"
    schema = tgt(runtime)
    table = f"tbl_data_timeseries_{ship.lower()}"
    seed_rows(runtime, [(ship, "a", T0, "Decimal", 1.0), (ship, "b", T0, "Integer", 2),
                        (ship, "c", T0, "String", "x")])
    analyze_source(runtime)
    create_tables(runtime)
    with runtime.dbs.target.begin() as conn:
        recorded = assert_tables_match_metadata(conn, schema, ship)
        written = fill_row(conn, schema, table, T0, recorded[table])
        meta_before = meta_columns(conn, schema, ship)
        cols_before = table_columns(conn, schema, table)
        oid, filenode = conn.execute(text("SELECT oid, relfilenode FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                                     {"t": qualified(schema, table)}).one()

    seed_rows(runtime, [(ship, "new/chan", T0 + timedelta(hours=1), "Boolean", True)])
    analyze_source(runtime)
    result = create_tables(runtime)
    assert result.ships[0].columns_added == 1 and result.ships[0].created == ()

    with runtime.dbs.target.begin() as conn:
        cols_after = table_columns(conn, schema, table)
        assert cols_after == cols_before + [("new/chan", "boolean")]
        assert meta_columns(conn, schema, ship)[:3] == meta_before
        new_row = meta_columns(conn, schema, ship)[3]
        assert new_row[1:7] == ("new/chan", table, 1, "new/chan", "boolean", 3)
        assert read_row(conn, schema, table, T0, [n for n, _ in recorded[table]]) == written
        assert read_row(conn, schema, table, T0, ["new/chan"]) == [None]
        # ADD COLUMN, not a rebuild: same relation, same file
        assert conn.execute(text("SELECT oid, relfilenode FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                            {"t": qualified(schema, table)}).one() == (oid, filenode)
        conn.execute(text(f"UPDATE {qualified(schema, table)} SET {qi('new/chan')} = true WHERE created_time = :t"),
                     {"t": T0})
        assert read_row(conn, schema, table, T0, ["new/chan"]) == [True]


def test_new_channel_past_a_full_table_opens_part_2(runtime):
    ship = "IMO9100011"
    schema = tgt(runtime)
    seed_series(runtime, ship, 1000)
    analyze_source(runtime)
    create_tables(runtime)
    first = f"tbl_data_timeseries_{ship.lower()}"
    with runtime.dbs.target.begin() as conn:
        recorded = assert_tables_match_metadata(conn, schema, ship)
        written = fill_row(conn, schema, first, T0, recorded[first])
    seed_rows(runtime, [(ship, "late", T0 + timedelta(hours=1), "Decimal", 4.0)])
    analyze_source(runtime)
    create_tables(runtime)
    with runtime.dbs.target.begin() as conn:
        assert [(t[0], t[2]) for t in meta_tables(conn, schema, ship)] == [(first, 1), (f"{first}_2", 2)]
        after = assert_tables_match_metadata(conn, schema, ship)
        assert after[first] == recorded[first]
        assert after[f"{first}_2"] == [("late", "double precision")]
        assert read_row(conn, schema, first, T0, [n for n, _ in recorded[first]]) == written
        assert_full_rows_insert(conn, schema, {f"{first}_2": after[f"{first}_2"]}, T0)


def test_add_channels_without_schema_only(runtime):
    ship = "IMO9100012"
    schema = tgt(runtime)
    table = f"tbl_data_timeseries_{ship.lower()}"
    seed_rows(runtime, [(ship, "a", T0, "Decimal", 1.0), (ship, "b", T0, "Boolean", False)])
    analyze_source(runtime)
    create_tables(runtime)
    with runtime.dbs.target.begin() as conn:
        recorded = assert_tables_match_metadata(conn, schema, ship)
        written = fill_row(conn, schema, table, T0, recorded[table])
        meta_before = meta_columns(conn, schema, ship)
    seed_rows(runtime, [(ship, "s new", T0 + timedelta(hours=1), "String", "on"),
                        (ship, "i new", T0 + timedelta(hours=1), "Integer", 9),
                        (ship, "i new", T0 + timedelta(hours=2), "Decimal", 9.5)])
    with runtime.dbs.target.begin() as conn:
        layout = add_channels(runtime, conn, ship, ["a", "s new", "i new"], TIME_TYPE)
    assert {c.channel_id: c.pg_type for c in layout.channels} == {
        "a": "double precision", "b": "boolean", "s new": "text", "i new": "double precision"}
    with runtime.dbs.target.begin() as conn:
        assert meta_columns(conn, schema, ship)[:2] == meta_before
        assert table_columns(conn, schema, table) == [
            ("created_time", TIME_TYPE), ("a", "double precision"), ("b", "boolean"),
            ("i new", "double precision"), ("s new", "text")]
        assert_tables_match_metadata(conn, schema, ship)
        assert read_row(conn, schema, table, T0, ["a", "b", "i new", "s new"]) == [*written, None, None]
        conn.execute(text(f"UPDATE {qualified(schema, table)} SET {qi('s new')} = 'on', {qi('i new')} = 9.5 "
                          "WHERE created_time = :t"), {"t": T0})
        assert read_row(conn, schema, table, T0, ["i new", "s new"]) == [9.5, "on"]
    # asking again is a no-op
    with runtime.dbs.target.begin() as conn:
        add_channels(runtime, conn, ship, ["s new"], TIME_TYPE)
        assert len(meta_columns(conn, schema, ship)) == 4
    # and a later schema-only + tables-only keeps what add_channels decided
    analyze_source(runtime)
    result = create_tables(runtime)
    assert result.ships[0].columns_added == 0
    with runtime.dbs.target.begin() as conn:
        assert len(table_columns(conn, schema, table)) == 5


# ---------------------------------------------------------------- 7: types


def test_column_types_conflicts_and_unknown_formats(runtime):
    ship = "IMO9100013"
    schema = tgt(runtime)
    t = [T0 + timedelta(minutes=i) for i in range(4)]
    seed_rows(runtime, [
        (ship, "int_dec", t[0], "Integer", 1), (ship, "int_dec", t[1], "Decimal", 1.5),
        (ship, "dec_str", t[0], "Decimal", 1.5), (ship, "dec_str", t[1], "String", "x"),
        (ship, "bool_str", t[0], "Boolean", True), (ship, "bool_str", t[1], "String", "y"),
        (ship, "int_str", t[0], "String", "z"), (ship, "int_str", t[1], "Integer", 3),
        (ship, "bool_only", t[0], "Boolean", True), (ship, "bool_only", t[1], "Boolean", False),
        (ship, "int_only", t[0], "Integer", 1), (ship, "int_only", t[1], "Integer", 2),
        (ship, "dec_only", t[0], "Decimal", 0.5),
        (ship, "str_only", t[0], "String", "a"),
        (ship, "float_only", t[0], "Float", 1.25),
        (ship, "null_fmt", t[0], None, 1.0),
        (ship, "dec_float", t[0], "Decimal", 1.0), (ship, "dec_float", t[1], "Float", 2.0),
    ])
    analysis = analyze_source(runtime)
    create_tables(runtime)
    s = analysis.ship(ship)
    assert sorted(s.conflicts) == sorted([
        "int_dec: formats Decimal+Integer -> double precision",
        "dec_str: formats Decimal+String -> text",
        "bool_str: formats Boolean+String -> text",
        "int_str: formats Integer+String -> text",
    ])
    assert sorted(s.unknown_formats) == ["dec_float: Float", "float_only: Float", "null_fmt: NULL"]
    assert s.channel_map()["int_dec"].formats == {"Decimal": 1, "Integer": 1}
    assert s.channel_map()["null_fmt"].formats == {"NULL": 1}
    expected = {
        "int_dec": "double precision", "dec_str": "text", "bool_str": "text", "int_str": "text",
        "bool_only": "boolean", "int_only": "bigint", "dec_only": "double precision", "str_only": "text",
        "float_only": "text", "null_fmt": "text", "dec_float": "double precision",
    }
    with runtime.dbs.target.begin() as conn:
        recorded = {r[1]: (r[4], r[5]) for r in meta_columns(conn, schema, ship)}
        assert recorded == {c: (c, ty) for c, ty in expected.items()}
        (table,) = {r[2] for r in meta_columns(conn, schema, ship)}
        live = dict(table_columns(conn, schema, table))
        assert {c: live[c] for c in expected} == expected
    # the schema file says the same
    saved = load_schema(runtime.settings.schema_file).ship(ship)
    assert {c.channel_id: c.pg_type for c in saved.channels} == expected
    assert saved.conflicts == s.conflicts and saved.unknown_formats == s.unknown_formats


# ---------------------------------------------------------------- 8: routing file


def test_routing_file_reproduces_three_parts(runtime):
    ship = "IMO9100014"
    schema = tgt(runtime)
    routed = [line.split(",", 1)[1] for line in ROUTING.read_text(encoding="utf-8").splitlines() if line]
    assert len(set(routed)) == 1052
    with runtime.dbs.source.begin() as conn:
        runtime.source.create(conn)
        conn.execute(text(
            f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, double_v, value_format) "
            "SELECT :ship, ch, :ts, 1.0, 'Decimal' FROM unnest(CAST(:chs AS text[])) ch"),
            {"ship": ship, "ts": T0, "chs": [*routed, "/not/in/the/file"]})
    analysis = analyze_source(runtime, routing_file=ROUTING)
    create_tables(runtime)
    parts = analysis.ship(ship).parts
    assert [(p.number, p.table) for p in parts] == [
        (n, f"tbl_data_timeseries_{ship.lower()}_{n}") for n in (1, 2, 3)]
    expected_part = {}
    for line in ROUTING.read_text(encoding="utf-8").splitlines():
        number, channel = line.split(",", 1)
        expected_part[channel] = int(number)
    with runtime.dbs.target.begin() as conn:
        rows = meta_columns(conn, schema, ship)
        assert {r[1]: r[3] for r in rows if r[1] in expected_part} == expected_part
        per_part: dict[int, int] = {}
        for r in rows:
            if r[1] in expected_part:
                per_part[r[3]] = per_part.get(r[3], 0) + 1
        assert per_part == {1: 347, 2: 655, 3: 50}
        extra = [r for r in rows if r[1] == "/not/in/the/file"]
        assert len(extra) == 1 and extra[0][4] == "/not/in/the/file"
        recorded = assert_tables_match_metadata(conn, schema, ship)
        assert sum(len(c) for c in recorded.values()) == 1053
        assert_full_rows_insert(conn, schema, recorded, T0)


# ---------------------------------------------------------------- 9: --sample-hours


def test_sample_hours_reads_only_the_newest_hour_but_finds_every_channel(runtime):
    ship = "IMO9100015"
    rows = []
    for m in range(0, 600, 10):  # 10 hours, one row per 10 minutes
        ts = T0 + timedelta(minutes=m)
        conflict = 0 < m < 60
        rows.append((ship, "mixed", ts, "String" if conflict else "Decimal", "bad" if conflict else m * 1.0))
        rows.append((ship, "steady", ts, "Integer", m))
    rows.append((ship, "early_only", T0 + timedelta(minutes=5), "Boolean", True))
    rows.append((ship, "early_only", T0 + timedelta(minutes=15), "Boolean", False))
    seed_rows(runtime, rows)

    full = analyze_source(runtime).ship(ship).channel_map()
    assert full["mixed"].pg_type == "text" and full["mixed"].row_count == 60
    assert full["mixed"].formats == {"Decimal": 55, "String": 5}
    runtime.settings.schema_file.unlink()

    analysis = analyze_source(runtime, sample_hours=1)
    assert analysis.sample_hours == 1
    s = analysis.ship(ship)
    chans = s.channel_map()
    assert sorted(chans) == ["early_only", "mixed", "steady"]
    assert all(c.row_count is None for c in s.channels)
    # newest row 09:50, window from 08:50: seven rows
    assert chans["mixed"].formats == {"Decimal": 7}
    assert chans["steady"].formats == {"Integer": 7}
    assert chans["mixed"].pg_type == "double precision" and s.conflicts == ()
    assert chans["early_only"].pg_type == "boolean"
    assert chans["early_only"].first_time == str(T0 + timedelta(minutes=5))
    assert chans["mixed"].last_time == str(T0 + timedelta(minutes=590))
    create_tables(runtime)
    with runtime.dbs.target.begin() as conn:
        recorded = {r[1]: r[5] for r in meta_columns(conn, tgt(runtime), ship)}
    assert recorded == {"early_only": "boolean", "mixed": "double precision", "steady": "bigint"}


# ---------------------------------------------------------------- 10: errors


def test_tables_only_without_schema_file(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_rows(runtime, [("IMO9100016", "a", T0, "Decimal", 1.0)])
    with pytest.raises(errors.SchemaFileMissing, match="schema-only"):
        create_tables(runtime)
    out = run_cli(cli_env, "--mode", "tables-only")
    assert out.exit_code == 1
    assert "schema-only" in out.output
    assert "Traceback" not in out.output
    with runtime.dbs.target.connect() as conn:
        assert relations_in(conn, tgt(runtime)) == set()


def test_schema_only_on_missing_source_table(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.SourceError, match=runtime.source.label):
        analyze_source(runtime)
    assert not runtime.settings.schema_file.exists()
    out = run_cli(cli_env, "--mode", "schema-only")
    assert out.exit_code == 1 and "does not exist" in out.output
    assert not runtime.settings.schema_file.exists()


def test_schema_only_for_a_ship_without_rows(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_rows(runtime, [("IMO9100017", "a", T0, "Decimal", 1.0)])
    with pytest.raises(errors.SourceError, match="IMO0000000"):
        analyze_source(runtime, ("IMO0000000",))
    assert not runtime.settings.schema_file.exists()
    out = run_cli(cli_env, "--mode", "schema-only", "--ship-id", "IMO0000000")
    assert out.exit_code == 1 and "IMO0000000" in out.output
    assert not runtime.settings.schema_file.exists()


def test_foreign_table_with_the_wide_name_is_refused_and_untouched(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ship = "IMO9100018"
    schema = tgt(runtime)
    table = f"tbl_data_timeseries_{ship.lower()}"
    seed_rows(runtime, [(ship, "a", T0, "Decimal", 1.0), (ship, "b", T0, "String", "x")])
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"CREATE TABLE {qualified(schema, table)} (id int PRIMARY KEY, payload text)"))
        conn.execute(text(f"INSERT INTO {qualified(schema, table)} VALUES (1, 'precious')"))
        oid = table_oid(conn, schema, table)
    analyze_source(runtime)
    with pytest.raises(errors.SchemaError, match="not created by this tool"):
        create_tables(runtime)
    for args in (("--mode", "tables-only"), ("--mode", "tables-only", "--drop-tables", "--yes")):
        out = run_cli(cli_env, *args)
        assert out.exit_code == 1, out.output
        assert "not created by this tool" in out.output
    with runtime.dbs.target.connect() as conn:
        assert table_oid(conn, schema, table) == oid
        assert table_columns(conn, schema, table) == [("id", "integer"), ("payload", "text")]
        assert conn.execute(text(f"SELECT id, payload FROM {qualified(schema, table)}")).all() == [(1, "precious")]
        assert relations_in(conn, schema) == {table}  # nothing half-made: the metadata rolled back too


# ---------------------------------------------------------------- the CLI end to end


def test_cli_schema_only_and_tables_only_snake_style(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ship = "IMO9100019"
    schema = tgt(runtime)
    seed_rows(runtime, [(ship, "/hs4sd_v1/ME01/Fuel//kgph/flow", T0, "Decimal", 1.0),
                        (ship, "/hs4sd_v1/me01/fuel//kgph/flow", T0, "Decimal", 2.0),
                        (ship, "/hs4sd_v1/me01////run", T0, "Boolean", True)])
    out = run_cli(cli_env, "--mode", "schema-only", "--column-style", "snake", "--sample-hours", "2")
    assert out.exit_code == 0, out.output
    assert ship in out.output and "column style snake" in out.output
    out = run_cli(cli_env, "--mode", "tables-only")
    assert out.exit_code == 0, out.output
    assert f"created tbl_data_timeseries_{ship.lower()}" in out.output
    saved = load_schema(runtime.settings.schema_file)
    assert saved.column_style == "snake" and saved.sample_hours == 2
    with runtime.dbs.target.begin() as conn:
        recorded = assert_tables_match_metadata(conn, schema, ship)
        names = [n for cols in recorded.values() for n, _ in cols]
        assert "hs4sd_v1_me01_fuel_kgph_flow" in names and "hs4sd_v1_me01_run" in names
        assert len(set(names)) == 3
        assert_full_rows_insert(conn, schema, recorded, T0)
