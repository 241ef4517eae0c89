"""schema-only: column types, the routing file, --sample-hours."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from schema_analyzer import analyze_source, load_schema
from table_creator import create_tables
from tests.schema_helpers import (
    ROUTING,
    T0,
    assert_full_rows_insert,
    assert_tables_match_metadata,
    meta_columns,
    seed_rows,
    table_columns,
    tgt,
)

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
