"""schema-only and tables-only: errors, and the CLI end to end."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from narrow2wide.common import errors
from narrow2wide.db.database import qualified
from schema_analyzer import analyze_source, load_schema
from table_creator import create_tables
from tests.cli_procs import invoke_cli
from tests.schema_helpers import (
    T0,
    assert_full_rows_insert,
    assert_tables_match_metadata,
    relations_in,
    seed_rows,
    table_columns,
    table_oid,
    tgt,
)

# ---------------------------------------------------------------- 10: errors


def test_tables_only_without_schema_file(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_rows(runtime, [("IMO9100016", "a", T0, "Decimal", 1.0)])
    with pytest.raises(errors.SchemaFileMissing, match="schema-only"):
        create_tables(runtime)
    out = invoke_cli(cli_env, "--mode", "tables-only")
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
    out = invoke_cli(cli_env, "--mode", "schema-only")
    assert out.exit_code == 1 and "does not exist" in out.output
    assert not runtime.settings.schema_file.exists()


def test_schema_only_for_a_ship_without_rows(runtime, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_rows(runtime, [("IMO9100017", "a", T0, "Decimal", 1.0)])
    with pytest.raises(errors.SourceError, match="IMO0000000"):
        analyze_source(runtime, ("IMO0000000",))
    assert not runtime.settings.schema_file.exists()
    out = invoke_cli(cli_env, "--mode", "schema-only", "--ship-id", "IMO0000000")
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
        out = invoke_cli(cli_env, *args)
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
    out = invoke_cli(cli_env, "--mode", "schema-only", "--column-style", "snake", "--sample-hours", "2")
    assert out.exit_code == 0, out.output
    assert ship in out.output and "column style snake" in out.output
    out = invoke_cli(cli_env, "--mode", "tables-only")
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
