"""The strategies against a live writer (late rows, a new channel midway), stopped and restarted at random.

Every data test ends with the oracle (:func:`tests.wide_check.compare`) and ``validate`` passing.
"""

from __future__ import annotations

import json
import random
import signal
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from data_migrator import BackfillOptions, prepare_backfill, run_backfill
from narrow2wide.checks.validator import validate
from narrow2wide.cli import modes
from narrow2wide.common.errors import ConfigError
from narrow2wide.db.database import qualified, server_now
from narrow2wide.demo.demo_data import LiveWriter
from strategies import REGISTRY, StrategyOptions, get_strategy
from tests.wide_check import compare

NEW_CHANNEL = "added/while 'running'"


def _finish(runtime, name: str, ships) -> None:
    """Run the strategy until history is done and the head caught up, then check every cell."""
    result = get_strategy(name).run(runtime, (), StrategyOptions(
        interval_minutes=0.01, chunk_hours=1, settle_seconds=0, progress=False, backoff_seconds=0.01,
        install_signal_handlers=False, stop_when_caught_up=True))
    assert result.ok and result.stopped_because == "caught-up", result
    if name != "streaming":
        assert result.backfill_complete
    for ship in ships:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        assert diff.exact, (ship, diff)
    report = validate(runtime, ())
    assert report.ok, report


def _add_channel(runtime, ship: str) -> None:
    """Rows of a channel that has no column yet: one live, one late."""
    with runtime.dbs.source.begin() as conn:
        now = server_now(conn, "UTC")
        conn.execute(text(f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, "
                          "server_created_time, long_v, value_format) VALUES (:s, :c, :t, :n, 7, 'Integer'), "
                          "(:s, :c, :late, :n, 8, 'Integer')"),
                     {"s": ship, "c": NEW_CHANNEL, "t": now - timedelta(seconds=1), "n": now,
                      "late": now - timedelta(minutes=3, seconds=0.5)})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_strategy_with_a_live_writer_stopped_and_restarted_is_exact(runtime, prepared, procs, name):
    seed = prepared(ships=2, channels=6, days=0.2, end=None)
    writer = LiveWriter(runtime.dbs.source, runtime.source, seed.ship_ids, 6, every_seconds=0.25,
                        late_every=4, late_minutes=2).start()
    rng = random.Random(f"strategy-{name}")  # the same stop points on every run
    args = ["--mode", name, "--interval", "0.01", "--chunk-hours", "1"]
    try:
        for round_ in range(3):
            proc = procs.start(*args)
            time.sleep(rng.uniform(1.0, 3.0))
            if round_ == 1:
                _add_channel(runtime, seed.ship_ids[0])
            proc.send_signal(signal.SIGKILL if round_ % 2 == 0 else signal.SIGINT)
            code, _, err = procs.finish(proc)
            # 130: the interrupt came before the strategy installed its handlers (a slow start on a busy machine)
            assert code in (-signal.SIGKILL, 0, 130), err
        code, out, err = procs.run(*args, "--run-for", "2")
        assert code == 0, err
        assert "stopped: run-for" in out
    finally:
        assert writer.stop() > 0
    _finish(runtime, name, seed.ship_ids)
    with runtime.dbs.target.connect() as conn:
        assert conn.execute(text(
            f"SELECT count(*) FROM {qualified(runtime.settings.target_schema, 'migrator_columns')} "
            "WHERE channel_id = :c"), {"c": NEW_CHANNEL}).scalar_one() == 1


def test_hybrid_splits_a_failing_chunk_down_to_the_bad_hour(runtime, prepared):
    seed = prepared(ships=1, channels=6, days=0.25, end=None)
    with runtime.dbs.source.connect() as conn:
        bad = (server_now(conn, "UTC") - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    tgt = runtime.settings.target_schema
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"""CREATE FUNCTION {qualified(tgt, 'bad_hour')}() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'injected: bad hour'; END $$"""))
    opts = StrategyOptions(interval_minutes=0.01, chunk_hours=4, settle_seconds=0, progress=True, max_attempts=2,
                           backoff_seconds=0.01, install_signal_handlers=False, stop_when_caught_up=True)
    prepare_backfill(runtime, list(seed.ship_ids), BackfillOptions(chunk_hours=4))
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(
            f"""CREATE TRIGGER bad_hour BEFORE UPDATE ON {qualified(tgt, 'migrator_chunks')} FOR EACH ROW
                WHEN (NEW.status = 'done' AND NEW.window_start <= CAST(:h AS timestamp)
                      AND NEW.window_end > CAST(:h AS timestamp))
                EXECUTE FUNCTION {qualified(tgt, 'bad_hour')}()"""), {"h": bad})  # psycopg2 binds client-side
    result = get_strategy("hybrid").run(runtime, (), opts)
    failed = [(f[1], f[2]) for f in result.backfill.failed_chunks]
    assert failed == [(bad, bad + timedelta(hours=1))]  # only the bad hour is left failed
    assert not result.ok
    progress = json.loads((runtime.settings.state_dir / "progress.json").read_text())
    assert [s["ship_id"] for s in progress["ships"]] == list(seed.ship_ids)
    assert progress["ships"][0]["chunks_failed"] == 1
    # everything but the bad hour is exact; after the fault is gone a retry finishes it
    ship = seed.ship_ids[0]
    assert compare(runtime.dbs.source, runtime.settings, ship, end=bad).exact
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"DROP TRIGGER bad_hour ON {qualified(tgt, 'migrator_chunks')}"))
    assert not run_backfill(runtime, (), BackfillOptions(retry_failed=True, progress=False)).failed_chunks
    assert compare(runtime.dbs.source, runtime.settings, ship).exact


def test_streaming_retries_failed_steps_and_ends_exact(runtime, prepared):
    """Database errors in the middle of streaming are logged, counted and retried; the cursor never skips."""
    seed = prepared(ships=2, channels=6, days=0.25, end=None)
    tgt = runtime.settings.target_schema
    with runtime.dbs.target.begin() as conn:
        # the first three writes into the wide tables fail (a sequence is not rolled back with them)
        conn.execute(text(f"CREATE SEQUENCE {qualified(tgt, 'fail_budget')}"))
        conn.execute(text(f"""CREATE FUNCTION {qualified(tgt, 'fail_write')}() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN IF nextval('{tgt}.fail_budget') <= 3 THEN RAISE EXCEPTION 'injected write failure';
            END IF; RETURN NULL; END $$"""))
        tables = conn.execute(text(f"SELECT DISTINCT table_name FROM {qualified(tgt, 'migrator_columns')}")).scalars()
        for table in tables:
            conn.execute(text(f"CREATE TRIGGER fail_write BEFORE INSERT ON {qualified(tgt, table)} "
                              f"FOR EACH STATEMENT EXECUTE FUNCTION {qualified(tgt, 'fail_write')}()"))
    result = get_strategy("streaming").run(runtime, (), StrategyOptions(
        interval_minutes=0.01, chunk_hours=1, settle_seconds=0, progress=False, backoff_seconds=0.01,
        install_signal_handlers=False, stop_when_caught_up=True))
    assert result.stream_failures == 3 and result.stopped_because == "caught-up", result
    for ship in seed.ship_ids:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        assert diff.exact, (ship, diff)
    assert validate(runtime, ()).ok


def test_registry_and_modes_agree_and_unknown_names_are_listed():
    assert sorted(modes.STRATEGY_MODES) == sorted(REGISTRY)
    assert all(name in modes.HANDLERS for name in REGISTRY)
    with pytest.raises(ConfigError, match="choose one of concurrent, hybrid, streaming"):
        get_strategy("sequential")


def test_the_demo_runs_the_whole_guide_and_validates(procs, engine, settings):
    code, out, err = procs.run("--mode", "demo", "--ships", "2", "--channels", "6", "--days", "0.05", timeout=180)
    assert code == 0, err
    assert "Validation passed." in out and "Demo finished in" in out
    for step in ("schema-only", "tables-only", "concurrent", "last realtime cycle"):
        assert step in out
    ships = ("IMO9999993", "IMO9999994")
    for ship in ships:  # the oracle agrees with the tool's own validation
        diff = compare(engine, settings, ship)
        assert diff.exact and diff.expected > 0, (ship, diff)


def test_streaming_that_ends_while_its_steps_keep_failing_is_not_ok(runtime, prepared):
    """A streaming run stopped (--run-for) while every step fails reports failure (the CLI exits 1), with the
    failures counted; the wide tables hold nothing half-written, and a run after the fault finishes exact."""
    seed = prepared(ships=1, channels=4, days=0.1, end=None)
    tgt = runtime.settings.target_schema
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"""CREATE FUNCTION {qualified(tgt, 'fail_write')}() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'injected write failure'; END $$"""))
        tables = list(conn.execute(text(f"SELECT DISTINCT table_name FROM {qualified(tgt, 'migrator_columns')}"))
                      .scalars())
        for table in tables:
            conn.execute(text(f"CREATE TRIGGER fail_write BEFORE INSERT ON {qualified(tgt, table)} "
                              f"FOR EACH STATEMENT EXECUTE FUNCTION {qualified(tgt, 'fail_write')}()"))
    opts = StrategyOptions(interval_minutes=0.01, chunk_hours=1, settle_seconds=0, progress=False,
                           backoff_seconds=0.01, install_signal_handlers=False, run_for=1.5)
    result = get_strategy("streaming").run(runtime, (), opts)
    assert result.stream_failures >= 1 and result.stream_failing and not result.ok, result
    with runtime.dbs.target.connect() as conn:
        assert all(conn.execute(text(f"SELECT count(*) FROM {qualified(tgt, t)}")).scalar() == 0 for t in tables)
    with runtime.dbs.target.begin() as conn:
        for table in tables:
            conn.execute(text(f"DROP TRIGGER fail_write ON {qualified(tgt, table)}"))
    _finish(runtime, "streaming", seed.ship_ids)
