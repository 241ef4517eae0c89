"""The realtime processor against a live writer, late backlogs, kills and a second processor.

Every data test ends with the oracle (:func:`tests.wide_check.compare`) against the source.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from cutoff_store import CutoffStore
from data_migrator import BackfillOptions, run_backfill
from narrow2wide.checks.validator import validate
from narrow2wide.db.database import qualified, server_now
from narrow2wide.db.runtime import Runtime
from narrow2wide.demo.demo_data import LiveWriter
from realtime_processor import RealtimeOptions, ShipLocks, run_realtime
from tests.wide_check import compare

ONCE = RealtimeOptions(once=True, settle_seconds=0, install_signal_handlers=False)


def _db_now(runtime):
    with runtime.dbs.source.connect() as conn:
        return server_now(conn, "UTC")


def _with(runtime, **changes) -> Runtime:
    return Runtime(settings=runtime.settings.with_overrides(**changes), dbs=runtime.dbs)


def _backfill_and_compare(runtime, ships):
    result = run_backfill(runtime, (), BackfillOptions(progress=False, backoff_seconds=0.01))
    assert not result.failed_chunks
    for ship in ships:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        assert diff.exact, (ship, diff)
        assert diff.expected > 0


def test_realtime_first_with_a_live_writer_then_backfill_is_exact(runtime, prepared):
    seed = prepared(ships=2, channels=8, days=0.1, end=None)
    stop, three_cycles = threading.Event(), threading.Event()
    cycles: list[object] = []
    done: dict[str, object] = {}

    def on_cycle(cycle: object) -> None:
        cycles.append(cycle)
        if len(cycles) >= 3:
            three_cycles.set()

    worker = threading.Thread(target=lambda: done.setdefault("r", run_realtime(
        runtime, (), RealtimeOptions(interval_minutes=0.01, install_signal_handlers=False), stop,
        on_cycle=on_cycle)))
    writer = LiveWriter(runtime.dbs.source, runtime.source, seed.ship_ids, 8, every_seconds=0.3,
                        late_every=3, late_minutes=4).start()
    worker.start()
    assert three_cycles.wait(120), "fewer than three realtime cycles in 120 s"
    inserted = writer.stop()
    stop.set()
    worker.join(60)
    looping = done["r"]
    assert inserted > 0
    assert looping.cycles >= 3 and looping.failed_cycles == 0 and looping.stopped_because == "signal"
    assert looping.rows_read > 0

    final = run_realtime(runtime, (), ONCE)
    assert final.ok and final.cycles == 1
    # realtime started first and fixed each ship's cutoff; the backfill goes exactly up to it
    store = CutoffStore(runtime.settings.cutoff_file)
    for ship in seed.ship_ids:
        state = store.get(ship)
        assert seed.start < state.cutoff <= state.watermark
    _backfill_and_compare(runtime, seed.ship_ids)


@pytest.mark.parametrize("cursor,lookback,lands", [
    ("created_time", 75, True),           # the lookback reaches an hour back
    ("server_created_time", 10, True),    # the insert-time cursor finds the backlog whatever its age
    ("created_time", 10, False),          # too short a lookback: only validate --repair finds it
])
def test_a_backlog_an_hour_old_lands(runtime, prepared, cursor, lookback, lands):
    seed = prepared(ships=1, channels=6, days=0.2, end=None)
    ship = seed.ship_ids[0]
    rt = _with(runtime, realtime_lookback_minutes=lookback)
    src = rt.source.sql
    now = _db_now(rt)
    CutoffStore(rt.settings.cutoff_file).set_cutoff(ship, (now - timedelta(hours=3)).replace(microsecond=0))
    run_backfill(rt, (), BackfillOptions(progress=False))
    # the ship's link was down 70..60 minutes ago: those rows have not reached the source yet
    gap = (now - timedelta(minutes=70), now - timedelta(minutes=60))
    with rt.dbs.source.begin() as conn:
        conn.execute(text(f"CREATE TABLE {qualified(rt.settings.source_schema, 'held')} AS SELECT * FROM {src} "
                          "WHERE created_time >= :a AND created_time < :b"), {"a": gap[0], "b": gap[1]})
        held = conn.execute(text(f"DELETE FROM {src} WHERE created_time >= :a AND created_time < :b"),
                            {"a": gap[0], "b": gap[1]}).rowcount
    assert held > 0
    opts = RealtimeOptions(once=True, cursor=cursor, settle_seconds=0, install_signal_handlers=False)
    first = run_realtime(rt, (), opts)
    assert first.ok and first.last.ships[0].watermark > gap[1]

    with rt.dbs.source.begin() as conn:  # the backlog arrives now, an hour old
        conn.execute(text(f"INSERT INTO {src} SELECT ship_id, data_channel_id, created_time, now() AT TIME ZONE "
                          f"'UTC', bool_v, str_v, long_v, double_v, value_format "
                          f"FROM {qualified(rt.settings.source_schema, 'held')}"))
    assert not compare(rt.dbs.source, rt.settings, ship).exact

    second = run_realtime(rt, (), opts)
    assert second.ok
    assert compare(rt.dbs.source, rt.settings, ship).exact is lands
    if cursor == "server_created_time":
        assert second.last.ships[0].late_hours >= 1
    if not lands:
        report = validate(rt, (ship,), repair=True)
        assert report.ok and report.ships[0].repaired
        assert compare(rt.dbs.source, rt.settings, ship).exact


def test_new_channel_gets_a_column_and_future_rows_are_reported(runtime, prepared):
    seed = prepared(ships=1, channels=5, days=0.05, end=None)
    ship = seed.ship_ids[0]
    run_realtime(runtime, (), ONCE)
    new_channel = 'new "sensor"; DROP TABLE x; --'
    now = _db_now(runtime)
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, "
                          "server_created_time, double_v, value_format) VALUES "
                          "(:s, :c, :t, :t, 1.5, 'Decimal'), (:s, :c, :f, :f, 2.5, 'Decimal')"),
                     {"s": ship, "c": new_channel, "t": now - timedelta(seconds=30), "f": now + timedelta(hours=3)})
    result = run_realtime(runtime, (), ONCE)
    cycle = result.last.ships[0]
    assert result.ok
    assert cycle.ahead_rows == 1  # the row three hours ahead is reported ...
    assert cycle.watermark < now + timedelta(minutes=1)  # ... and never moves the watermark past now
    assert not run_backfill(runtime, (), BackfillOptions(progress=False)).failed_chunks
    diff = compare(runtime.dbs.source, runtime.settings, ship, end=now + timedelta(minutes=1))
    assert diff.exact, diff
    with runtime.dbs.target.connect() as conn:
        assert conn.execute(text(
            f"SELECT count(*) FROM {qualified(runtime.settings.target_schema, 'migrator_columns')} "
            "WHERE ship_id = :s AND channel_id = :c"), {"s": ship, "c": new_channel}).scalar_one() == 1


def test_once_exit_codes_and_quiet_success(runtime, prepared, procs):
    seed = prepared(ships=1, channels=4, days=0.05, end=None)
    code, out, err = procs.run("--mode", "realtime", "--once")
    assert (code, out) == (0, ""), err
    code, out, _ = procs.run("--mode", "realtime", "--once", "-v")
    assert code == 0 and "Realtime: 1 cycle(s), 0 failed" in out
    code, _, err = procs.run("--mode", "realtime", "--interval", "0")
    assert code == 2 and "--interval" in err
    schema = runtime.settings.target_schema
    table = f"tbl_data_timeseries_{seed.ship_ids[0].lower()}"
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"ALTER TABLE {qualified(schema, table)} RENAME TO broken"))
    code, out, err = procs.run("--mode", "realtime", "--once")
    assert code == 1
    assert f"FAILED {seed.ship_ids[0]}" in out and "realtime cycle failed" in err


def test_a_second_processor_for_the_same_ship_is_refused(runtime, prepared, procs):
    seed = prepared(ships=1, channels=4, days=0.05, end=None)
    locks = ShipLocks(runtime.dbs.target, runtime.settings.target_schema, list(seed.ship_ids))
    locks.acquire()
    try:
        code, out, err = procs.run("--mode", "realtime", "--once")
        assert code == 1
        assert f"ship {seed.ship_ids[0]} is already being processed by another realtime process" in err
        assert "backend pid" in err and err.count("\n") == 1
        waiting = procs.start("--mode", "realtime", "--once", "--wait-lock")
        time.sleep(1.5)
        assert waiting.poll() is None  # it waits for the lock ...
    finally:
        locks.release()
    assert procs.finish(waiting)[0] == 0  # ... and runs once it is free


def test_killing_the_processor_at_random_points_loses_nothing(runtime, prepared, procs):
    seed = prepared(ships=2, channels=6, days=0.05, end=None)
    writer = LiveWriter(runtime.dbs.source, runtime.source, seed.ship_ids, 6, every_seconds=0.2,
                        late_every=4, late_minutes=3).start()
    rng = random.Random(20261128)
    try:
        for _ in range(4):
            proc = procs.start("--mode", "realtime", "--interval", "0.01")
            time.sleep(rng.uniform(0.8, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        graceful = procs.start("--mode", "realtime", "--interval", "0.01")
        time.sleep(2)
        graceful.send_signal(signal.SIGTERM)
        code, _, err = procs.finish(graceful)
        assert code == 0, err
        assert "finishing the current step" in err
    finally:
        inserted = writer.stop()
    assert inserted > 0
    time.sleep(2.1)  # the CLI leaves the newest 2 s (the settle delay) to the next cycle
    code, _, err = procs.run("--mode", "realtime", "--once")
    assert code == 0, err
    _backfill_and_compare(runtime, seed.ship_ids)


def test_re_reading_the_lookback_writes_no_new_row_versions(runtime, prepared):
    seed = prepared(ships=1, channels=5, days=0.05, end=None, offline_hours=0)
    ship = seed.ship_ids[0]
    table = qualified(runtime.settings.target_schema, f"tbl_data_timeseries_{ship.lower()}")
    run_realtime(runtime, (), ONCE)
    versions = "SELECT created_time, xmin::text FROM {t} ORDER BY 1"
    with runtime.dbs.target.connect() as conn:
        before = conn.execute(text(versions.format(t=table))).all()
    again = run_realtime(runtime, (), ONCE)
    assert again.ok and again.rows_read > 0  # the lookback was read again ...
    with runtime.dbs.target.connect() as conn:
        after = dict(conn.execute(text(versions.format(t=table))).all())
    assert before and all(after[t] == x for t, x in before)  # ... and no row got a new version
