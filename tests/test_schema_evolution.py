"""schema-only and tables-only: re-running changes nothing, --drop-tables, new channels later."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import text

from narrow2wide.db.database import qi, qualified
from schema_analyzer import analyze_source
from table_creator import COLUMNS_META, TABLES_META, add_channels, create_tables
from tests.cli_procs import invoke_cli
from tests.schema_helpers import (
    T0,
    TIME_TYPE,
    assert_full_rows_insert,
    assert_tables_match_metadata,
    fill_row,
    meta_columns,
    meta_tables,
    read_row,
    relations_in,
    seed_rows,
    seed_series,
    table_columns,
    table_oid,
    tgt,
)

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
    out = invoke_cli(cli_env, "--mode", "schema-only")
    assert out.exit_code == 0, out.output
    out = invoke_cli(cli_env, "--mode", "tables-only")
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
    out = invoke_cli(cli_env, "--mode", "tables-only", "--drop-tables", "--yes", "--ship-id", a)
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
