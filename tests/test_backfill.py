"""The backfill engine, checked cell by cell against the pivot of the source."""

from __future__ import annotations

import csv
import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from cutoff_store import CutoffStore
from data_migrator import BackfillOptions, DataMigrator, migration_status, run_backfill
from narrow2wide.checks.validator import validate
from narrow2wide.common.errors import CutoffConflict
from narrow2wide.db.database import qi, qualified
from narrow2wide.engine.window_migrator import UnknownChannels, migrate_window
from narrow2wide.store.chunk_ledger import ChunkLedger
from tests.cli_procs import invoke_cli
from tests.wide_check import compare, wide_snapshot

END = datetime(2024, 10, 2)


def _opts(**kw) -> BackfillOptions:
    return BackfillOptions(progress=False, backoff_seconds=0.01, **kw)


def test_every_value_lands_in_its_cell_with_its_type(runtime, prepared):
    seed = prepared(ships=2, channels=12)
    result = run_backfill(runtime, (), _opts(cutoff_time=str(END), chunk_hours=1))
    assert result.rows_read == seed.rows
    assert not result.failed_chunks
    for ship in seed.ship_ids:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        assert diff.exact, diff
    with runtime.dbs.target.connect() as conn:
        types = set(conn.execute(text(
            f"""SELECT m.value_format, c.data_type FROM information_schema.columns c
                JOIN {qualified(runtime.settings.target_schema, 'migrator_columns')} mc
                  ON mc.table_name = c.table_name AND mc.column_name = c.column_name
                JOIN (SELECT DISTINCT data_channel_id, value_format FROM {runtime.source.sql}) m
                  ON m.data_channel_id = mc.channel_id
                WHERE c.table_schema = :s"""), {"s": runtime.settings.target_schema}).all())
    assert types == {("Decimal", "double precision"), ("Integer", "bigint"), ("Boolean", "boolean"),
                     ("String", "text")}  # every channel of a format has that type


def test_running_twice_changes_nothing(runtime, prepared):
    seed = prepared(ships=1, channels=8)
    run_backfill(runtime, (), _opts(cutoff_time=str(END), chunk_hours=2))
    before = wide_snapshot(runtime.dbs.target, runtime.settings, seed.ship_ids[0])
    # forget that the chunks were done: every window is written a second time
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"UPDATE {qualified(runtime.settings.target_schema, 'migrator_chunks')} "
                          "SET status = 'pending'"))
    again = run_backfill(runtime, (), _opts())
    assert again.rows_read == seed.rows
    assert wide_snapshot(runtime.dbs.target, runtime.settings, seed.ship_ids[0]) == before
    assert compare(runtime.dbs.source, runtime.settings, seed.ship_ids[0]).exact


def test_rerun_skips_done_chunks_and_only_cutoff_history_moves(runtime, prepared):
    seed = prepared(ships=1, channels=6)
    cutoff = END - timedelta(hours=2)
    first = run_backfill(runtime, (), _opts(cutoff_time=str(cutoff), chunk_hours=1))
    assert first.ships[0].done == first.ships[0].chunks == 4  # 18:00 .. 22:00 in 1 h chunks
    second = run_backfill(runtime, (), _opts())
    assert second.rows_read == 0  # everything was done
    ship = seed.ship_ids[0]
    assert compare(runtime.dbs.source, runtime.settings, ship, end=cutoff).exact
    with runtime.dbs.target.connect() as conn:
        table = qualified(runtime.settings.target_schema, "tbl_data_timeseries_" + ship.lower())
        newest = conn.execute(text(f"SELECT max(created_time) FROM {table}")).scalar_one()
    assert newest < cutoff


def test_cutoff_conflict_needs_force(runtime, prepared):
    prepared(ships=1, channels=4)
    run_backfill(runtime, (), _opts(cutoff_time="2024-10-01 22:00:00"))
    with pytest.raises(CutoffConflict, match="--force"):
        run_backfill(runtime, (), _opts(cutoff_time="2024-10-01 23:00:00"))
    run_backfill(runtime, (), _opts(cutoff_time="2024-10-01 23:00:00", force=True))
    state = CutoffStore(runtime.settings.cutoff_file).get("IMO9999993")
    assert state.cutoff == datetime(2024, 10, 1, 23)
    # the forced later cutoff brought its extra hour: every cell before it, none after
    assert compare(runtime.dbs.source, runtime.settings, "IMO9999993", end=datetime(2024, 10, 1, 23)).exact
    assert compare(runtime.dbs.source, runtime.settings, "IMO9999993", start=datetime(2024, 10, 1, 23)).actual == 0


def test_a_correction_in_the_source_reaches_the_wide_table(runtime, prepared):
    seed = prepared(ships=1, channels=6)
    run_backfill(runtime, (), _opts(cutoff_time=str(END)))
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"UPDATE {runtime.source.sql} SET double_v = double_v + 1000 "
                          "WHERE value_format = 'Decimal' AND created_time < '2024-10-01 19:00'"))
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"UPDATE {qualified(runtime.settings.target_schema, 'migrator_chunks')} "
                          "SET status = 'pending'"))
    run_backfill(runtime, (), _opts())
    assert compare(runtime.dbs.source, runtime.settings, seed.ship_ids[0]).exact


def test_a_value_that_cannot_fit_is_rejected_counted_and_logged(runtime, prepared):
    seed = prepared(ships=1, channels=10)
    ship = seed.ship_ids[0]
    with runtime.dbs.source.begin() as conn:
        int_channel = conn.execute(text(
            f"SELECT data_channel_id FROM {runtime.source.sql} WHERE value_format = 'Integer' LIMIT 1")).scalar_one()
        bool_channel = conn.execute(text(
            f"SELECT data_channel_id FROM {runtime.source.sql} WHERE value_format = 'Boolean' LIMIT 1")).scalar_one()
        # a fraction in a bigint column, a number in a boolean column, an unknown format, all values NULL
        conn.execute(text(f"""UPDATE {runtime.source.sql} SET value_format = 'Decimal', long_v = NULL, double_v = 1.5
                              WHERE data_channel_id = :c AND created_time = '2024-10-01 19:00:00'"""),
                     {"c": int_channel})
        conn.execute(text(f"""UPDATE {runtime.source.sql} SET value_format = 'Integer', bool_v = NULL, long_v = 7
                              WHERE data_channel_id = :c AND created_time = '2024-10-01 19:00:15'"""),
                     {"c": bool_channel})
        conn.execute(text(f"""UPDATE {runtime.source.sql} SET value_format = 'Float'
                              WHERE data_channel_id = :c AND created_time = '2024-10-01 19:00:30'"""),
                     {"c": int_channel})
        conn.execute(text(f"""UPDATE {runtime.source.sql} SET long_v = NULL
                              WHERE data_channel_id = :c AND created_time = '2024-10-01 19:00:45'"""),
                     {"c": int_channel})
    result = run_backfill(runtime, (), _opts(cutoff_time=str(END)))
    assert result.ships[0].rejected == 4
    assert not result.failed_chunks
    assert compare(runtime.dbs.source, runtime.settings, ship).exact_with_rejects(4)  # everything else landed
    status = migration_status(runtime).ships[0]
    assert status.rejected == 4
    files = list(runtime.settings.reject_dir.rglob("*.csv"))
    rows = [r for f in files for r in csv.DictReader(open(f, encoding="utf-8"))]
    assert sorted(r["created_time"][-8:] for r in rows) == ["19:00:00", "19:00:15", "19:00:30", "19:00:45"]
    reasons = {r["created_time"][-8:]: r["reason"] for r in rows}
    assert "bigint" in reasons["19:00:00"]
    assert "boolean" in reasons["19:00:15"]
    assert "unknown" in reasons["19:00:30"]
    assert "NULL" in reasons["19:00:45"]


def test_sparse_rows_and_texts_of_every_length_land_exactly(runtime, prepared):
    """Holes, texts from empty to 700 characters (multi-byte), and a block of second-level rows: exact.

    This covers every way the writer encodes a block: all cells present, NULL cells, text cells
    narrow enough for the dense layout and too wide for it, and more rows than one encode block.
    """
    seed = prepared(ships=1, channels=12, offline_hours=0)
    ship = seed.ship_ids[0]
    src = runtime.source.sql
    with runtime.dbs.source.begin() as conn:
        # about a quarter of the rows gone, so wide rows have NULL cells in every column type
        conn.execute(text(f"DELETE FROM {src} WHERE abs(hashtext(data_channel_id || created_time::text)) % 4 = 0"))
        # texts of 0..99 characters, and of up to 700 (wider than the dense layout) in one hour only
        conn.execute(text(f"""UPDATE {src} SET str_v = repeat(CASE WHEN extract(minute FROM created_time)::int % 2 = 0
                                   THEN 'e' ELSE 'é' END,
                                   abs(hashtext(created_time::text)) % CASE WHEN extract(hour FROM created_time) = 20
                                                                          THEN 701 ELSE 100 END)
                              WHERE value_format = 'String'"""))
        # one Decimal channel sampled every second for 40 minutes: 2,400 wide rows in one read block
        channel = conn.execute(text(f"SELECT min(data_channel_id) FROM {src} WHERE value_format = 'Decimal'")).scalar()
        conn.execute(text(f"""INSERT INTO {src} (ship_id, data_channel_id, created_time, double_v, value_format)
                              SELECT :s, :c, t, extract(epoch FROM t) / 7, 'Decimal'
                              FROM generate_series(TIMESTAMP '2024-10-01 21:00:01', '2024-10-01 21:40:00', '1 s') t
                              WHERE extract(second FROM t)::int % 15 <> 0"""), {"s": ship, "c": channel})
        longest = conn.execute(text(f"SELECT max(octet_length(str_v)) FROM {src}")).scalar()
    assert longest > 512
    result = run_backfill(runtime, (), _opts(cutoff_time=str(END)))
    assert not result.failed_chunks and result.rows_read > 0
    diff = compare(runtime.dbs.source, runtime.settings, ship)
    assert diff.exact, diff
    assert diff.expected == diff.actual > 0


def test_rows_committed_into_an_empty_range_during_the_direct_copy_are_merged(runtime, prepared):
    """A chunk finds its range empty and copies straight in; rows another session commits there meanwhile
    make the COPY fail on the key, and the chunk merges instead: no failed chunk, the result exact."""
    seed = prepared(ships=1, channels=6, offline_hours=0)
    ship = seed.ship_ids[0]
    schema = runtime.settings.target_schema
    with runtime.dbs.target.connect() as conn:
        table, column, channel = conn.execute(text(
            f"""SELECT mc.table_name, mc.column_name, mc.channel_id FROM {qualified(schema, 'migrator_columns')} mc
                JOIN (SELECT DISTINCT data_channel_id FROM {runtime.source.sql} WHERE value_format = 'Decimal') d
                  ON d.data_channel_id = mc.channel_id ORDER BY 1, 2 LIMIT 1""")).one()
    other = runtime.dbs.target.connect()
    other.execute(text(f"INSERT INTO {qualified(schema, table)} (created_time, {qi(column)}) "
                       "VALUES ('2024-10-01 21:00:00', -1)"))  # not committed yet: the chunk's check misses it
    other_pid = other.execute(text("SELECT pg_backend_pid()")).scalar()
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        result=run_backfill(runtime, (), _opts(cutoff_time=str(END), chunk_hours=24))))
    worker.start()
    deadline = time.monotonic() + 30
    with runtime.dbs.target.connect() as watch:
        while not watch.execute(text(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND :p = ANY("
                "pg_blocking_pids(pid)))"), {"p": other_pid}).scalar():
            assert time.monotonic() < deadline and worker.is_alive(), "the chunk never waited on the row"
            time.sleep(0.05)
            watch.rollback()
    other.commit()
    other.close()
    worker.join(60)
    result = outcome["result"]
    assert not result.failed_chunks and result.rows_read == seed.rows
    diff = compare(runtime.dbs.source, runtime.settings, ship)
    assert diff.exact, diff
    with runtime.dbs.target.connect() as conn:
        cell = conn.execute(text(f"SELECT {qi(column)} FROM {qualified(schema, table)} "
                                 "WHERE created_time = '2024-10-01 21:00:00'")).scalar()
        source = conn.execute(text(f"SELECT double_v FROM {runtime.source.sql} WHERE ship_id = :s AND "
                                   "data_channel_id = :c AND created_time = '2024-10-01 21:00:00'"),
                              {"s": ship, "c": channel}).scalar()
    assert cell == source != -1
    with runtime.dbs.target.connect() as conn:  # merged in the same attempt, not failed and retried
        assert conn.execute(text(f"SELECT max(attempts) FROM {qualified(schema, 'migrator_chunks')}")).scalar() == 0


def test_a_new_channel_during_backfill_gets_a_column(runtime, prepared):
    seed = prepared(ships=1, channels=5)
    ship = seed.ship_ids[0]
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"""INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, double_v,
                                  value_format)
                              SELECT :s, '/hs4sd_v1/new//sensor/x/temp', t, 42.5, 'Decimal'
                              FROM generate_series(TIMESTAMP '2024-10-01 20:00', '2024-10-01 20:59:45', '15 s') t"""),
                     {"s": ship})
    result = run_backfill(runtime, (), _opts(cutoff_time=str(END)))
    assert not result.failed_chunks
    diff = compare(runtime.dbs.source, runtime.settings, ship)
    assert diff.exact and diff.unmapped_rows == 0


def test_validate_finds_a_deleted_cell_and_a_changed_value_and_repair_fixes_them(runtime, prepared):
    seed = prepared(ships=1, channels=6)
    ship = seed.ship_ids[0]
    run_backfill(runtime, (), _opts(cutoff_time=str(END)))
    assert validate(runtime).ok
    schema = runtime.settings.target_schema
    with runtime.dbs.target.begin() as conn:
        table, col = conn.execute(text(
            f"""SELECT table_name, column_name FROM {qualified(schema, 'migrator_columns')}
                WHERE data_type = 'double precision' LIMIT 1""")).one()
        conn.execute(text(f"UPDATE {qualified(schema, table)} SET {qi(col)} = NULL "
                          "WHERE created_time = '2024-10-01 19:30:00'"))
        conn.execute(text(f"UPDATE {qualified(schema, table)} SET {qi(col)} = {qi(col)} + 0.001 "
                          "WHERE created_time = '2024-10-01 22:45:00'"))  # (21:00-22:00 is offline)
    report = validate(runtime)
    assert not report.ok
    assert [d.bucket for d in report.ships[0].mismatches] == [datetime(2024, 10, 1, 19), datetime(2024, 10, 1, 22)]
    assert report.ships[0].mismatches[0].narrow_rows == report.ships[0].mismatches[0].wide_cells + 1
    assert report.ships[0].mismatches[1].narrow_rows == report.ships[0].mismatches[1].wide_cells
    assert not report.ships[0].mismatches[1].values_match
    repaired = validate(runtime, repair=True)
    assert repaired.ok, repaired.ships[0].message
    assert compare(runtime.dbs.source, runtime.settings, ship).exact


def test_validate_reports_unfinished_hours_as_in_progress(runtime, prepared):
    prepared(ships=1, channels=4)
    run_backfill(runtime, (), _opts(cutoff_time="2024-10-01 21:30:00"))
    ship = validate(runtime).ships[0]
    assert ship.ok
    assert ship.checked_buckets == 3 and ship.in_progress_buckets == 1  # 18, 19, 20 checked; 21 half-done
    cutoff = datetime(2024, 10, 1, 21, 30)
    assert compare(runtime.dbs.source, runtime.settings, ship.ship_id, end=cutoff).exact
    assert compare(runtime.dbs.source, runtime.settings, ship.ship_id, start=cutoff).actual == 0


def test_cli_sequence_migration_status_validate(runtime, prepared, cli_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed = prepared(ships=2, channels=6)
    mig = invoke_cli(cli_env, "--mode", "migration-only", "--cutoff-time", str(END), "--chunk-hours", "3")
    assert mig.exit_code == 0, mig.output
    assert "2/2 done" in mig.output
    st = invoke_cli(cli_env, "--mode", "status")
    assert st.exit_code == 0 and "COMPLETED" in st.output and "100.0%" in st.output
    st_json = invoke_cli(cli_env, "--mode", "status", "--json")
    assert '"chunks_done": 2' in st_json.output
    val = invoke_cli(cli_env, "--mode", "validate")
    assert val.exit_code == 0 and "Validation passed" in val.output
    for ship in seed.ship_ids:
        assert compare(runtime.dbs.source, runtime.settings, ship).exact


def test_python_api(runtime, prepared):
    seed = prepared(ships=1, channels=4)
    api = DataMigrator(runtime.settings)
    try:
        api.migrate(cutoff_time=str(END))
        status = api.get_migration_status(seed.ship_ids[0])
        assert status["status"] == "completed"
        assert status["record_count"] == 5 * 240  # one wide row per 15 s over 6 hours, one of them offline
        stats = api.get_migration_statistics()
        assert stats["overall"]["ships"] == 1 and stats["overall"]["rows_read"] == seed.rows
        check = api.validate_migration(seed.ship_ids[0])
        assert check["status"] == "passed" and "match" in check["message"]
        assert compare(runtime.dbs.source, runtime.settings, seed.ship_ids[0]).exact
    finally:
        api.close()


def test_ledger_records_each_chunk_once(runtime, prepared):
    seed = prepared(ships=2, channels=4)
    run_backfill(runtime, (), _opts(cutoff_time=str(END), chunk_hours=2))
    with runtime.dbs.target.connect() as conn:
        rows = conn.execute(text(
            f"SELECT ship_id, window_start, window_end, status, rows_read FROM "
            f"{qualified(runtime.settings.target_schema, 'migrator_chunks')} ORDER BY 1, 2")).all()
        assert ChunkLedger(runtime.settings.target_schema).exists(conn)
    assert len(rows) == 6 and {r.status for r in rows} == {"done"}
    for ship in ("IMO9999993", "IMO9999994"):
        windows = [(r.window_start, r.window_end) for r in rows if r.ship_id == ship]
        assert windows == [(datetime(2024, 10, 1, h), datetime(2024, 10, 1, h + 2) if h < 22 else END)
                           for h in (18, 20, 22)]
    assert sum(r.rows_read for r in rows) == seed.rows
    assert all(compare(runtime.dbs.source, runtime.settings, ship).exact for ship in seed.ship_ids)


def test_the_join_read_for_colliding_channel_hashes_gives_the_same_cells(runtime, prepared, ship_plan):
    """Should two channel ids share a 64-bit hash, the read joins on the ids instead; the cells are the same."""
    seed = prepared(ships=1, channels=8, offline_hours=0)
    ship = seed.ship_ids[0]
    plan = ship_plan(ship)
    plan.hash_lookup, plan.hashes_known = None, True  # what hash_lookup leaves after a collision
    with runtime.dbs.source.connect() as sconn, runtime.dbs.target.connect() as tconn, tconn.begin():
        result = migrate_window(runtime, sconn, tconn, plan, seed.start, seed.end)
    assert result.rows_read == seed.rows
    diff = compare(runtime.dbs.source, runtime.settings, ship)
    assert diff.exact and diff.actual > 0, diff


def test_a_channel_unknown_to_the_plan_stops_the_window_and_is_named(runtime, prepared, ship_plan):
    """Rows of a channel that appeared after the plan was made are never written to a wrong column."""
    seed = prepared(ships=1, channels=6, offline_hours=0)
    ship = seed.ship_ids[0]
    plan = ship_plan(ship)
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, double_v, "
                          "value_format) VALUES (:s, 'late/arrival', '2024-10-01 20:00:00', 1.5, 'Decimal')"),
                     {"s": ship})
    with runtime.dbs.source.connect() as sconn, runtime.dbs.target.connect() as tconn, tconn.begin():
        with pytest.raises(UnknownChannels) as caught:
            migrate_window(runtime, sconn, tconn, plan, seed.start, seed.end)
    assert caught.value.channels == ["late/arrival"]
