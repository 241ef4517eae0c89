"""Lost connections: the tool runs through a TCP proxy (:mod:`tests.tcp_proxy`) that cuts them.

Cuts land inside the source read (``COPY ... TO STDOUT``), inside the target write (``COPY ... FROM
STDIN``), at any moment of a run, and inside ``COMMIT`` (where the client cannot know whether the
commit happened); backends are also killed with ``pg_terminate_backend`` from another session, and the
proxy refuses connections for a while (an outage). The tool must retry with backoff, count and log
each failure, and end exact against the source (:func:`tests.wide_check.compare`).

The statement-timeout and killed-worker cases of the backfill are in ``test_backfill_faults.py``; the
helpers come from there.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import psycopg2
import pytest
from sqlalchemy import text

from cutoff_store import CutoffStore
from data_migrator import BackfillOptions, run_backfill
from narrow2wide.db.database import Databases, make_engine, qualified, raw_cursor
from narrow2wide.db.narrow_source import ship_read_settings
from narrow2wide.db.runtime import Runtime
from narrow2wide.demo.demo_data import LiveWriter
from tests.cli_procs import MAIN, clean_environ
from tests.tcp_proxy import TcpProxy
from tests.test_backfill_faults import (
    CUTOFF,
    assert_exact,
    ensure_ledger,
    ledger_rows,
    migrate_args,
    slow_down_writes,
    wait_for,
)
from tests.wide_check import compare

log = logging.getLogger(__name__)

DOWN_RUN = 16 * 1024  # a one-way run this long from the server is the source's COPY out
UP_RUN = 8 * 1024  # ... and from the client, the target's COPY in
FIGURES: dict[str, int] = {}  # what the faults did, for the summary at the end of the session


def _count(name: str, n: int) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + n
    log.info("fault figures: %s", FIGURES)


@pytest.fixture(scope="module", autouse=True)
def figures(request):
    """At the end of the module, write what the faults did on the terminal (cuts, kills, rows checked)."""
    FIGURES.clear()
    yield FIGURES
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    summary = ", ".join(f"{k}: {v:,}" for k, v in FIGURES.items()) or "none"
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nconnection faults: {summary}")
    log.info("connection faults: %s", summary)


@pytest.fixture
def proxy(pg_url):
    """A proxy in front of the test server."""
    p = TcpProxy.for_url(pg_url)
    yield p
    p.close()


@pytest.fixture
def proxied(runtime, proxy, pg_url):
    """The test's runtime with its own engine going through the proxy."""
    url = proxy.url(pg_url)
    eng = make_engine(url)
    rt = Runtime(settings=runtime.settings.with_overrides(database_url=url), dbs=Databases(source=eng, target=eng))
    yield rt
    eng.dispose()


def _ship_rows(runtime) -> int:
    with runtime.dbs.source.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {runtime.source.sql}")).scalar_one())


# ----------------------------------------------------------------------------------------------
# 1. the library backfill: COPY cut in both directions


def test_backfill_retries_copies_cut_in_both_directions(runtime, prepared, proxy, proxied, full_run, caplog):
    seed = prepared(ships=2, channels=24, days=0.5)  # 2 ships x 6 chunks of 2 h
    cuts = 8 if full_run else 3
    proxy.cut_runs("down", DOWN_RUN, cuts)
    proxy.cut_runs("up", UP_RUN, cuts)
    opts = BackfillOptions(progress=False, cutoff_time=CUTOFF, chunk_hours=2, max_attempts=2 * cuts + 1,
                           backoff_seconds=0.02)
    with caplog.at_level(logging.WARNING, logger="data_migrator"), caplog.at_level(logging.WARNING,
                                                                                 logger="copy_reader"):
        result = run_backfill(proxied, (), opts)
    assert (proxy.cuts_left("down"), proxy.cuts_left("up")) == (0, 0), "the COPY streams were never that long"
    assert proxy.cut == 2 * cuts
    assert not result.failed_chunks
    rows = ledger_rows(runtime)
    assert {r.status for r in rows} == {"done"} and len(rows) == 12
    # a cut write fails its chunk's attempt; a cut read is read again by the source reader on a new
    # connection (a second cut of that read fails the attempt): each is counted and logged with its error
    failures = [r.getMessage() for r in caplog.records if "failed (attempt" in r.getMessage()]
    rereads = [r.getMessage() for r in caplog.records if "read again on a new connection" in r.getMessage()]
    assert sum(r.attempts for r in rows) == len(failures)
    assert cuts <= len(failures) <= 2 * cuts, failures
    assert cuts <= len(failures) + len(rereads) <= 2 * cuts, (failures, rereads)
    assert all("Error" in f for f in failures + rereads)
    assert sum(r.rows_read for r in rows) == seed.rows == result.rows_read
    assert_exact(runtime, seed.ship_ids)
    _count("connections cut (COPY)", proxy.cut)
    _count("rows checked", seed.rows)


# ----------------------------------------------------------------------------------------------
# 2. the library backfill: connections dropped at any moment


def test_backfill_survives_connections_dropped_at_any_moment(runtime, prepared, proxy, proxied, full_run):
    seed = prepared(ships=1, channels=12, days=0.5)  # 6 chunks of 2 h
    slow_down_writes(runtime, 0.1)  # every chunk takes a while: drops land in reads, writes, claims, commits
    drops = 12 if full_run else 5
    opts = BackfillOptions(progress=False, cutoff_time=CUTOFF, chunk_hours=2, max_attempts=drops + 2,
                           backoff_seconds=0.05)
    outcome: dict[str, object] = {}

    def backfill() -> None:
        try:
            outcome["result"] = run_backfill(proxied, (), opts)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=backfill)
    worker.start()
    dropped = 0
    for i in range(drops):
        time.sleep(0.35 + 0.1 * (i % 3))
        if not worker.is_alive():
            break
        dropped += proxy.drop_all()
    worker.join(120)
    assert not worker.is_alive()
    assert "error" not in outcome, f"the backfill gave up after a dropped connection: {outcome['error']!r}"
    assert dropped >= drops - 1, "the run ended before the faults"
    result = outcome["result"]
    assert not result.failed_chunks
    rows = ledger_rows(runtime)
    assert {r.status for r in rows} == {"done"}
    assert sum(r.attempts for r in rows) >= 1  # at least one drop landed inside a chunk and was retried
    assert_exact(runtime, seed.ship_ids)
    _count("connections cut (any moment)", dropped)
    _count("rows checked", seed.rows)


# ----------------------------------------------------------------------------------------------
# 3. the library backfill: the database is away for a while


def test_backfill_waits_out_a_short_outage(runtime, prepared, proxy, proxied, full_run):
    seed = prepared(ships=1, channels=12, days=0.5)  # 6 chunks of 2 h
    slow_down_writes(runtime, 0.1)
    outage = 6.0 if full_run else 2.5
    outcome: dict[str, object] = {}

    def backfill() -> None:
        try:  # the default retry policy: 3 attempts per chunk, backoff from 1 s
            outcome["result"] = run_backfill(proxied, (), BackfillOptions(progress=False, cutoff_time=CUTOFF,
                                                                            chunk_hours=2))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=backfill)
    worker.start()
    wait_for(lambda: any(r.status == "done" for r in ledger_rows(runtime)) if _has_ledger(runtime) else False,
             "the first chunk to be done")
    proxy.refuse(True)  # every open connection is cut and new ones are closed at once
    time.sleep(outage)
    proxy.refuse(False)
    worker.join(120)
    assert not worker.is_alive()
    assert "error" not in outcome, f"the backfill gave up during a {outage} s outage: {outcome['error']!r}"
    assert proxy.refused >= 1, "nothing tried to connect during the outage"
    result = outcome["result"]
    assert not result.failed_chunks, result.failed_chunks
    assert {r.status for r in ledger_rows(runtime)} == {"done"}
    assert_exact(runtime, seed.ship_ids)
    _count("connections refused (outage)", proxy.refused)
    _count("rows checked", seed.rows)


def _has_ledger(runtime) -> bool:
    with runtime.dbs.target.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:t)"),
                            {"t": qualified(runtime.settings.target_schema, "migrator_chunks")}).scalar() is not None


# ----------------------------------------------------------------------------------------------
# 4. the CLI backfill: connections cut inside COMMIT


def _sleep_at_commit(runtime, seconds: float, times: int) -> None:
    """The first ``times`` commits of a chunk marked done sleep ``seconds`` inside COMMIT (a deferred trigger)."""
    tgt = runtime.settings.target_schema
    ledger = ensure_ledger(runtime)
    fn, seq = qualified(tgt, "commit_sleep_fn"), qualified(tgt, "commit_seq")
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"CREATE SEQUENCE {seq}"))
        conn.execute(text(f"""CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF nextval('{tgt}.commit_seq') <= {times} THEN PERFORM pg_sleep({seconds}); END IF;
            RETURN NULL; END $$"""))
        conn.execute(text(f"""CREATE CONSTRAINT TRIGGER commit_sleep AFTER UPDATE ON {ledger}
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'done') EXECUTE FUNCTION {fn}()"""))


def _committing_backend(runtime, but: int = 0) -> int | None:
    """The pid of a tool backend (other than ``but``) that sleeps inside COMMIT."""
    with runtime.dbs.target.connect() as conn:
        return conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'narrow-to-wide%' "
            "AND wait_event = 'PgSleep' AND query = 'COMMIT' AND pid <> :but LIMIT 1"), {"but": but}).scalar()


def test_backfill_cli_retries_commits_cut_by_the_proxy_and_by_pg_terminate_backend(
        runtime, prepared, proxy, procs, pg_url):
    seed = prepared(ships=1, channels=12, days=0.5)  # 6 chunks of 2 h
    # one round: one drop by the proxy, one pg_terminate_backend. Both hit the chunk sitting in COMMIT, which
    # the CLI tries at most 3 times, so more rounds would (rightly) leave it failed; --full does not add any
    rounds = 1
    _sleep_at_commit(runtime, 1.2, 2 * rounds)
    proc = procs.start(*migrate_args(), DATABASE_URL=proxy.url(pg_url))
    killed = dropped = 0
    for _ in range(rounds):
        # the client loses the connection while the server is inside COMMIT: the server still commits (it
        # only notices when it answers), data and ledger row together; the client cannot know, and finds the
        # chunk done when it goes to record the failure (nothing to redo, no attempt counted)
        orphan = wait_for(lambda: _committing_backend(runtime), "a chunk to sit inside COMMIT", proc=proc)
        dropped += proxy.drop_all()
        # the backend of the next commit is killed inside COMMIT: this commit never happens, the chunk is redone
        pid = wait_for(lambda o=orphan: _committing_backend(runtime, but=o), "the next commit to sit inside COMMIT",
                       proc=proc)
        with runtime.dbs.target.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar() is True
        killed += 1
    code, out, err = procs.finish(proc, timeout=90)
    assert code == 0, out + err
    assert "Traceback" not in err
    assert err.count("failed (attempt ") == 2 * rounds, err
    rows = ledger_rows(runtime)
    assert {r.status for r in rows} == {"done"} and len(rows) == 6
    assert sorted(r.attempts for r in rows) == [0] * (6 - rounds) + [1] * rounds  # only the killed commits redone
    assert all(r.last_error is None for r in rows)
    assert sum(r.rows_read for r in rows) == seed.rows
    assert "6/6 done, 0 failed" in out
    assert_exact(runtime, seed.ship_ids)
    _count("connections cut (COMMIT)", dropped)
    _count("backends terminated", killed)
    _count("rows checked", seed.rows)


# ----------------------------------------------------------------------------------------------
# 5. the realtime CLI: drops, killed backends and an outage while a writer inserts


def _store_states(settings) -> dict:
    try:
        return CutoffStore(settings.cutoff_file).load()
    except Exception:  # noqa: BLE001 - the file may not exist yet
        return {}


def _db_now(runtime):
    with runtime.dbs.source.connect() as conn:
        return conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()


def _terminate_realtime_backends(runtime) -> int:
    with runtime.dbs.target.connect() as conn:
        return len(conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND application_name = 'narrow-to-wide realtime'")).all())


def _wait_alive(procs, proc, pred, what: str, timeout: float = 45) -> None:
    """:func:`wait_for` that shows the CLI's stderr when it exited first."""
    try:
        wait_for(pred, what, timeout=timeout, proc=proc)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- stderr of the CLI ---\n{procs.output(proc)[1][-3000:]}") from None


def test_realtime_cli_keeps_going_through_drops_kills_and_an_outage(runtime, prepared, proxy, procs, pg_url,
                                                                     full_run):
    seed = prepared(ships=2, channels=8, days=0.05, end=None)
    settings = runtime.settings
    writer = LiveWriter(runtime.dbs.source, runtime.source, seed.ship_ids, 8, every_seconds=0.3, late_every=3,
                        late_minutes=4).start()
    proc = None
    try:
        proc = procs.start("--mode", "realtime", "--interval", "0.01", DATABASE_URL=proxy.url(pg_url))

        def caught_up_to(moment):
            states = _store_states(settings)
            return all(s in states and states[s].watermark is not None and states[s].watermark >= moment
                       for s in seed.ship_ids)

        wait_for(lambda: caught_up_to(_db_now(runtime) - timedelta(seconds=3)), "the first cycles", proc=proc)
        faults = ["drop", "terminate", "outage"] * (4 if full_run else 1)
        dropped = killed = 0
        for fault in faults:
            moment = _db_now(runtime)
            if fault == "drop":
                dropped += proxy.drop_all()
            elif fault == "terminate":
                killed += _terminate_realtime_backends(runtime)
            else:
                proxy.refuse(True)
                time.sleep(2.0)
                proxy.refuse(False)
            # the processor is still there and catches up after each fault
            _wait_alive(procs, proc, lambda m=moment: caught_up_to(m), f"realtime to catch up after the {fault}")
        inserted = writer.stop()
        end = _db_now(runtime)
        wait_for(lambda: caught_up_to(end), "realtime to catch up with the last rows", timeout=45, proc=proc)
        proc.send_signal(signal.SIGTERM)
        code, out, err = procs.finish(proc, timeout=60)
    finally:
        writer.stop() if writer._thread.is_alive() else None
    assert code == 0, out + err
    assert "Traceback" not in err
    assert "retrying in" in err  # failures are logged, with the backoff
    failed = int(out.split(" failed,", 1)[0].rsplit(" ", 1)[1])
    assert failed >= 1, out  # the outage failed at least one cycle, and the summary counts it
    assert inserted > 0 and dropped > 0 and killed > 0
    states = CutoffStore(settings.cutoff_file).load()
    checked = 0
    for ship in seed.ship_ids:
        diff = compare(runtime.dbs.source, settings, ship, start=states[ship].cutoff)
        assert diff.exact and diff.expected > 0, (ship, diff)
        checked += diff.expected
    _count("connections cut (realtime)", dropped)
    _count("backends terminated", killed)
    _count("connections refused (outage)", proxy.refused)
    _count("cells checked (realtime)", checked)


# ----------------------------------------------------------------------------------------------
# 6. the database is down at start, with --debug (without it: test_backfill_faults.py, every mode)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_database_down_at_start_with_debug_shows_the_traceback(tmp_path):
    env = clean_environ()
    env.update({"DATABASE_URL": f"postgresql://bob:s3cretpw@127.0.0.1:{_closed_port()}/nodb",
                "STATE_DIR": str(tmp_path / "state")})
    out = subprocess.run([sys.executable, MAIN, *migrate_args("--debug")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" in out.stderr and "DatabaseUnavailable" in out.stderr
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: cannot connect to ") and "s3cretpw" not in out.stderr


def test_an_error_under_the_read_settings_is_the_error_raised(engine):
    """A statement that fails inside ship_read_settings (a timeout, a cancel) raises its own error, not the
    RESET's 'current transaction is aborted' that would hide it."""
    with engine.connect() as conn:
        cur = raw_cursor(conn)
        with pytest.raises(psycopg2.errors.DivisionByZero):
            with ship_read_settings(cur):
                cur.execute("SELECT 1 / 0")
        cur.connection.rollback()
        with ship_read_settings(cur):  # on success the settings are reset as before
            cur.execute("SHOW enable_indexscan")
            assert cur.fetchone() == ("off",)
        cur.execute("SHOW enable_indexscan")
        assert cur.fetchone() == ("on",)
