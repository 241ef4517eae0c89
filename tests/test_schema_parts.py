"""schema-only and tables-only: parts and row size, awkward channel and ship ids."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from data_migrator import BackfillOptions, run_backfill
from narrow2wide.db.database import qi, qualified
from schema_analyzer import analyze_source
from table_creator import COLUMNS_META, TABLES_META, create_tables
from tests.schema_helpers import (
    T0,
    assert_full_rows_insert,
    assert_tables_match_metadata,
    meta_columns,
    meta_tables,
    read_row,
    relations_in,
    seed_rows,
    seed_series,
    table_columns,
    tgt,
)
from tests.wide_check import compare

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


@pytest.mark.parametrize("style", ["id", "snake"])
def test_channels_named_like_system_columns_get_columns_of_their_own(runtime, style):
    """xmin, ctid and the other system column names cannot be user columns, quoted or not: such channels get a
    hashed name (XMIN in id style is another identifier and keeps its name), and every cell migrates."""
    ship = "IMO9100006"
    ids = ["xmin", "ctid", "tableoid", "cmax", "XMIN", "plain"]
    seed_rows(runtime, [(ship, c, T0 + timedelta(minutes=i), "Decimal", float(i)) for i, c in enumerate(ids)])
    analyze_source(runtime, column_style=style)
    create_tables(runtime)
    schema = tgt(runtime)
    with runtime.dbs.target.begin() as conn:
        names = {r[1]: r[4] for r in meta_columns(conn, schema, ship)}
        assert sorted(names) == sorted(ids)
        assert not set(names.values()) & {"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"}
        if style == "id":
            assert (names["XMIN"], names["plain"]) == ("XMIN", "plain")
        assert_tables_match_metadata(conn, schema, ship)
    result = run_backfill(runtime, (), BackfillOptions(cutoff_time=str(T0 + timedelta(hours=1)), progress=False))
    assert not result.failed_chunks and result.rows_read == len(ids)
    diff = compare(runtime.dbs.source, runtime.settings, ship)
    assert diff.exact and diff.expected == len(ids), diff


def test_a_new_ships_part_is_not_named_like_a_table_another_ship_already_has(runtime):
    """Ship ABC_2 has table tbl_data_timeseries_abc_2; ship ABC, analysed later with two parts, must not name its
    second part the same (it would be refused as a table this tool did not create): both ships get their tables."""
    seed_series(runtime, "ABC_2", 3)
    analyze_source(runtime)
    create_tables(runtime)
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(
            f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, double_v, value_format) "
            "SELECT 'ABC', 'ch' || lpad(g::text, 5, '0'), :ts, g * 0.5, 'Decimal' FROM generate_series(1, 2000) g"),
            {"ts": T0})
    analyze_source(runtime)  # every ship, ABC first
    create_tables(runtime)
    with runtime.dbs.target.begin() as conn:
        mine = [t[0] for t in meta_tables(conn, tgt(runtime), "ABC")]
        assert len(mine) >= 2 and "tbl_data_timeseries_abc_2" not in mine
        assert [t[0] for t in meta_tables(conn, tgt(runtime), "ABC_2")] == ["tbl_data_timeseries_abc_2"]
        assert_tables_match_metadata(conn, tgt(runtime), "ABC")
