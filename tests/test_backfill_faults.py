"""The backfill under real faults: killed processes, competing workers, failing and cut statements.

Faults are injected with database features only (triggers, sequences, ``pg_sleep``,
``pg_terminate_backend``, ``statement_timeout``) or by SIGKILL of a real CLI process, and every data
test ends with the oracle (:func:`tests.wide_check.compare`) exact against the source.

Where a fault is placed matters: a trigger on the ledger row that ``mark_done`` updates fires inside
the chunk's transaction through SQLAlchemy, a trigger on a wide table fires in the merge statement
that ``wide_writer.merge_copy`` sends on the raw psycopg2 cursor. Both are real chunk failures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from data_migrator import BackfillOptions, prepare_backfill, run_backfill
from narrow2wide.db.database import qualified
from narrow2wide.store.chunk_ledger import ChunkLedger
from tests.cli_procs import clean_environ
from tests.wide_check import compare

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "main.py")
CUTOFF = "2024-10-02 00:00:00"
SHIP = "IMO9999993"


# ----------------------------------------------------------------------------------------------
# helpers


def migrate_args(*extra: str, chunk_hours: int = 2) -> list[str]:
    return ["--mode", "migration-only", "--cutoff-time", CUTOFF, "--chunk-hours", str(chunk_hours), *extra]


def wait_for(pred, what: str, timeout: float = 30, proc: subprocess.Popen | None = None):
    """Poll ``pred`` until it returns something true; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the CLI exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ensure_ledger(runtime) -> str:
    """Create the ledger table now (as the CLI would) so triggers can be put on it; returns its name."""
    with runtime.dbs.source.connect() as conn:
        time_type = runtime.source.time_type(conn)
    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.begin() as conn:
        ledger.ensure(conn, time_type)
    return ledger.table


def wide_tables(runtime, ship: str = SHIP) -> list[str]:
    with runtime.dbs.target.connect() as conn:
        names = conn.execute(text(
            f"SELECT table_name FROM {qualified(runtime.settings.target_schema, 'migrator_tables')} "
            "WHERE ship_id = :s ORDER BY 1"), {"s": ship}).scalars().all()
    return [qualified(runtime.settings.target_schema, n) for n in names]


def install_fault(runtime, where: str, body: str, name: str = "fault", done_filter: str = "") -> None:
    """A trigger running the PL/pgSQL ``body`` on each chunk write.

    ``where='ledger'``: BEFORE UPDATE of a ledger row becoming done (``mark_done``, inside the chunk's
    transaction, sent through SQLAlchemy), restricted further by ``done_filter``.
    ``where='wide'``: BEFORE INSERT ... FOR EACH STATEMENT on the ship's first wide table (the merge,
    sent on the raw psycopg2 cursor).
    ``body`` may use the sequence ``<target>.<name>_seq``.
    """
    tgt = runtime.settings.target_schema
    fn, seq = qualified(tgt, f"{name}_fn"), qualified(tgt, f"{name}_seq")
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {seq}"))
        conn.execute(text(f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN {body.replace('SEQ', f"'{tgt}.{name}_seq'")} RETURN NEW; END $$"""))
        if where == "ledger":
            conn.execute(text(f"""CREATE TRIGGER {name} BEFORE UPDATE ON {qualified(tgt, 'migrator_chunks')}
                FOR EACH ROW WHEN (NEW.status = 'done' {done_filter}) EXECUTE FUNCTION {fn}()"""))
        else:
            conn.execute(text(f"CREATE TRIGGER {name} BEFORE INSERT ON {wide_tables(runtime)[0]} "
                              f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"))


def slow_down_writes(runtime, seconds: float, ships: tuple[str, ...] = (SHIP,)) -> None:
    """Every merge into a wide table sleeps ``seconds`` first (the chunk transaction stays open)."""
    tgt = runtime.settings.target_schema
    fn = qualified(tgt, "slow_fn")
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"""CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"""))
        for ship in ships:
            for table in wide_tables(runtime, ship):
                conn.execute(text(f"CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH STATEMENT "
                                  f"EXECUTE FUNCTION {fn}()"))


def ledger_rows(runtime) -> list:
    with runtime.dbs.target.connect() as conn:
        return conn.execute(text(
            f"""SELECT id, ship_id, window_start, window_end, status, attempts, last_error, worker, finished_at,
                       rows_read
                FROM {qualified(runtime.settings.target_schema, 'migrator_chunks')} ORDER BY ship_id, window_start""")
        ).all()


def sequence_value(runtime, name: str = "fault") -> int:
    with runtime.dbs.target.connect() as conn:
        seq = qualified(runtime.settings.target_schema, f"{name}_seq")
        return int(conn.execute(text(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq}"))
                   .scalar_one())


def source_rows(runtime, ship: str = SHIP, start=None, end=None) -> int:
    with runtime.dbs.source.connect() as conn:
        return int(conn.execute(text(
            f"SELECT count(*) FROM {runtime.source.sql} WHERE ship_id = :s "
            "AND created_time >= coalesce(CAST(:a AS timestamp), '-infinity') "
            "AND created_time < coalesce(CAST(:b AS timestamp), 'infinity')"),
            {"s": ship, "a": start, "b": end}).scalar_one())


def sleeping_worker(runtime) -> int | None:
    """The pid of a CLI backend of this test that sits in pg_sleep (inside a chunk's transaction)."""
    with runtime.dbs.target.connect() as conn:
        return conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'narrow-to-wide' "
            "AND wait_event = 'PgSleep' AND strpos(query, :s) > 0 LIMIT 1"),
            {"s": runtime.settings.target_schema}).scalar()


def assert_exact(runtime, ships=(SHIP,)) -> None:
    for ship in ships:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        assert diff.exact, (ship, diff)
        assert diff.expected > 0


def where_params():
    return ["ledger", "wide"]


# ----------------------------------------------------------------------------------------------
# 1. SIGKILL in the middle of a chunk


def test_sigkill_mid_chunk_then_rerun_is_exact(runtime, prepared, procs):
    seed = prepared(ships=1, channels=12, days=1)  # 12 chunks of 2 h
    slow_down_writes(runtime, 0.25)
    proc = procs.start(*migrate_args())

    def mid_chunk():
        statuses = Counter(r.status for r in ledger_rows(runtime)) if _ledger_exists(runtime) else Counter()
        return statuses["done"] >= 1 and statuses["running"] >= 1 and sleeping_worker(runtime)

    wait_for(mid_chunk, "one chunk done and the next one inside its merge", proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL

    rows = ledger_rows(runtime)
    running = [r for r in rows if r.status == "running"]
    done = [r for r in rows if r.status == "done"]
    assert len(running) == 1, rows  # the killed worker's claim is still there
    assert done and len(done) < len(rows)
    # the orphaned backend rolls back and lets go of the chunk once it notices its client is gone
    ledger = ChunkLedger(runtime.settings.target_schema)

    def released():
        with runtime.dbs.target.connect() as conn:
            return ledger.held_running(conn, [SHIP]) == 0

    wait_for(released, "the killed worker's chunk lock to be released", timeout=15)
    # nothing of the killed chunk reached the wide table; every chunk marked done is complete
    cut = running[0]
    half = compare(runtime.dbs.source, runtime.settings, SHIP, cut.window_start, cut.window_end)
    assert half.actual == 0 and half.expected > 0, half
    for r in done:
        assert compare(runtime.dbs.source, runtime.settings, SHIP, r.window_start, r.window_end).exact

    code, out, err = procs.run(*migrate_args())
    assert code == 0, out + err
    rows = ledger_rows(runtime)
    assert {r.status for r in rows} == {"done"}
    assert f"{len(rows)}/{len(rows)} done" in out
    assert {r.id: r.finished_at for r in rows if r.id in {d.id for d in done}} == {d.id: d.finished_at for d in done}
    assert sum(r.rows_read for r in rows) == seed.rows  # each narrow row read by exactly one done chunk
    assert_exact(runtime)


def test_a_rerun_right_after_a_kill_does_not_exit_0_with_the_killed_chunk_unfinished(runtime, prepared, procs):
    prepared(ships=1, channels=12, days=1)
    # the second chunk's merge is long (as a big chunk's merge is): the kill lands inside it
    install_fault(runtime, "wide", "IF nextval(SEQ) = 2 THEN PERFORM pg_sleep(15); END IF;")
    proc = procs.start(*migrate_args())
    wait_for(lambda: sleeping_worker(runtime), "the worker to sit inside its second chunk's merge", proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    assert [r.status for r in ledger_rows(runtime)].count("running") == 1

    code, out, err = procs.run(*migrate_args())  # at once, as an operator would
    statuses = [r.status for r in ledger_rows(runtime)]
    assert code != 0 or set(statuses) == {"done"}, (code, statuses, out)
    assert_exact(runtime)


def _ledger_exists(runtime) -> bool:
    with runtime.dbs.target.connect() as conn:
        return ChunkLedger(runtime.settings.target_schema).exists(conn)


# ----------------------------------------------------------------------------------------------
# 2. several workers on one ledger


def install_audit(runtime) -> str:
    """Record every claim (-> running) and every done write of a chunk, with the worker, in an audit table.

    Not only the first pending -> done transition: a second worker writing the same chunk again
    (done -> done) must show up too, or the audit could never see a chunk done twice.
    """
    tgt = runtime.settings.target_schema
    audit, fn = qualified(tgt, "chunk_audit"), qualified(tgt, "chunk_audit_fn")
    ledger = ensure_ledger(runtime)
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"CREATE TABLE {audit} (chunk_id bigint, old_status text, status text, worker text)"))
        conn.execute(text(f"""CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO {audit} VALUES (NEW.id, OLD.status, NEW.status, NEW.worker); RETURN NULL; END $$"""))
        conn.execute(text(f"""CREATE TRIGGER audit AFTER UPDATE ON {ledger} FOR EACH ROW
            WHEN (NEW.status IN ('running', 'done')) EXECUTE FUNCTION {fn}()"""))
    return audit


@pytest.mark.parametrize("how", ["three_processes", "workers_3"])
def test_workers_share_one_backfill_without_a_chunk_done_twice(runtime, prepared, procs, how):
    seed = prepared(ships=2, channels=8, days=0.5)  # 2 ships x 12 chunks of 1 h
    audit = install_audit(runtime)
    slow_down_writes(runtime, 0.1, seed.ship_ids)  # long enough for every worker to get chunks
    if how == "three_processes":
        started = [procs.start(*migrate_args(chunk_hours=1)) for _ in range(3)]
    else:
        started = [procs.start(*migrate_args("--workers", "3", chunk_hours=1))]
    for proc in started:
        code, out, err = procs.finish(proc)
        assert code == 0, out + err

    rows = ledger_rows(runtime)
    assert len(rows) == 24 and {r.status for r in rows} == {"done"}
    with runtime.dbs.target.connect() as conn:
        events = conn.execute(text(f"SELECT chunk_id, old_status, status, worker FROM {audit}")).all()
    done = Counter(e.chunk_id for e in events if e.status == "done")
    claims = Counter(e.chunk_id for e in events if e.status == "running")
    assert done == Counter({r.id: 1 for r in rows}), "a chunk was written twice or never"
    assert claims == Counter({r.id: 1 for r in rows}), "a chunk was claimed twice or never"
    workers = {e.worker for e in events}
    assert len(workers) > 1, workers
    assert sum(r.rows_read for r in rows) == seed.rows
    assert_exact(runtime, seed.ship_ids)


def _children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.add(int(status.parent.name))
    return out


def test_worker_processes_stop_when_their_parent_is_killed_and_a_rerun_is_exact(runtime, prepared, procs):
    """SIGKILL of a ``--workers 2`` backfill leaves no orphans: each worker ends after its chunk."""
    seed = prepared(ships=2, channels=8, days=0.5)
    slow_down_writes(runtime, 0.3, seed.ship_ids)
    parent = procs.start(*migrate_args("--workers", "2", chunk_hours=1))
    workers = _children_at_work(parent, runtime, "the workers never got going")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _wait_gone(workers, "worker")
    rows = ledger_rows(runtime)
    # orphaned workers would have gone on to drain the ledger; stopped ones leave most chunks pending
    assert {r.status for r in rows} != {"done"}, "the workers went on after their parent died"
    code, out, err = procs.run(*migrate_args(chunk_hours=1), timeout=120)
    assert code == 0, out + err
    assert_exact(runtime, seed.ship_ids)


def test_a_killed_reader_process_fails_its_chunk_once_and_a_killed_backfill_leaves_no_reader(
        runtime, prepared, procs):
    """The helper processes that read the source: one SIGKILLed mid-run is replaced (a read it was doing
    costs its chunk one attempt, retried) and the result is exact; SIGKILL of the backfill ends its readers."""
    seed = prepared(ships=1, channels=12, days=0.5)
    slow_down_writes(runtime, 0.2, seed.ship_ids)
    proc = procs.start(*migrate_args(chunk_hours=1))
    readers = _children_at_work(proc, runtime, "the backfill never got going")
    os.kill(min(readers), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (now := _children(proc.pid)) == readers or len(now) < 2:  # a new reader replaces the killed one
        assert time.monotonic() < deadline and proc.poll() is None, f"no reader replaced {min(readers)}"
        time.sleep(0.05)
    code, out, err = procs.finish(proc, timeout=120)
    assert code == 0, out + err
    rows = ledger_rows(runtime)
    assert {r.status for r in rows} == {"done"} and sum(r.attempts for r in rows) <= 1
    assert_exact(runtime, seed.ship_ids)

    with runtime.dbs.target.begin() as conn:  # once more, killing the backfill itself this time
        conn.execute(text(f"UPDATE {qualified(runtime.settings.target_schema, 'migrator_chunks')} "
                          "SET status = 'pending'"))
    proc = procs.start(*migrate_args(chunk_hours=1))
    readers = _children_at_work(proc, None, "the readers never started")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_gone(readers, "reader")


def _children_at_work(proc: subprocess.Popen, runtime, what: str) -> set[int]:
    """The (at least two) child processes of ``proc`` once they exist and, given ``runtime``, a chunk is done."""
    deadline = time.monotonic() + 60
    while len(found := _children(proc.pid)) < 2 or (runtime is not None and not any_chunk_done(runtime)):
        assert time.monotonic() < deadline and proc.poll() is None, what
        time.sleep(0.05)
    return found


def _wait_gone(pids: set[int], what: str) -> None:
    """Wait until every process in ``pids`` has exited (30 s at most) after its parent was killed."""
    deadline = time.monotonic() + 30
    while alive := {p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)}:
        assert time.monotonic() < deadline, f"{what}(s) {alive} still running 30 s after their parent died"
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State"))
    except (OSError, StopIteration):
        return "Z"


def any_chunk_done(runtime) -> bool:
    """True once the ledger exists and has a done chunk."""
    if not _ledger_exists(runtime):
        return False
    return any(r.status == "done" for r in ledger_rows(runtime))


# ----------------------------------------------------------------------------------------------
# 3. a chunk that fails twice, then succeeds


@pytest.mark.parametrize("where", where_params())
def test_a_chunk_failing_twice_is_retried_and_ends_done(runtime, prepared, where):
    prepared(ships=1, channels=12)  # 18:00 .. 24:00: 3 chunks of 2 h
    ensure_ledger(runtime)
    install_fault(runtime, where, "IF nextval(SEQ) <= 2 THEN RAISE EXCEPTION 'injected fault'; END IF;")
    result = run_backfill(runtime, (), BackfillOptions(progress=False, backoff_seconds=0.01, cutoff_time=CUTOFF,
                                                       chunk_hours=2, max_attempts=3))
    assert not result.failed_chunks
    rows = ledger_rows(runtime)
    assert [(r.status, r.attempts, r.last_error) for r in rows] == [("done", 0, None)] * 2 + [("done", 2, None)]
    if where == "ledger":  # 2 failed marks of the newest chunk, then one per chunk
        assert sequence_value(runtime) == 5
    # (on the wide table each chunk writes once per read block, so there the attempts above say it)
    assert result.rows_read == sum(r.rows_read for r in rows) == source_rows(runtime)
    assert_exact(runtime)


# ----------------------------------------------------------------------------------------------
# 4. a chunk that always fails


def test_a_chunk_that_always_fails_is_marked_failed_and_retry_failed_runs_only_it(runtime, prepared, procs):
    prepared(ships=1, channels=12)  # 18:00 .. 24:00: 6 chunks of 1 h
    ensure_ledger(runtime)
    install_fault(runtime, "ledger", "RAISE EXCEPTION 'injected fault %', nextval(SEQ);",
                  done_filter="AND NEW.window_start = '2024-10-01 19:00:00'")
    code, out, err = procs.run(*migrate_args(chunk_hours=1))
    assert code == 1, out + err
    assert "FAILED IMO9999993 2024-10-01 19:00:00 .. 2024-10-01 20:00:00: RaiseException: injected fault 3" in out
    assert "Retry the failed chunks with: python main.py --mode migration-only --retry-failed --ship-id IMO9999993" \
        in out
    assert "attempt 3 of 3" in err and "Traceback" not in err
    assert sequence_value(runtime) == 3  # exactly max_attempts attempts

    rows = ledger_rows(runtime)
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == 1 and failed[0].window_start == datetime(2024, 10, 1, 19)
    assert failed[0].attempts == 3 and "injected fault 3" in failed[0].last_error
    others = [r for r in rows if r.status != "failed"]
    assert {r.status for r in others} == {"done"} and len(others) == 5  # the run went on (18:00 came after)
    f = failed[0]
    hole = compare(runtime.dbs.source, runtime.settings, SHIP, f.window_start, f.window_end)
    assert hole.actual == 0 and hole.expected > 0
    assert compare(runtime.dbs.source, runtime.settings, SHIP, end=f.window_start).exact
    assert compare(runtime.dbs.source, runtime.settings, SHIP, start=f.window_end).exact

    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"DROP TRIGGER fault ON {qualified(runtime.settings.target_schema, 'migrator_chunks')}"))
    retry = out.split("Retry the failed chunks with: ", 1)[1].splitlines()[0].split()
    assert retry[:2] == ["python", "main.py"]
    code, out, err = procs.run(*retry[2:])
    assert code == 0, out + err
    assert f"Backfill: {source_rows(runtime, SHIP, f.window_start, f.window_end):,} narrow rows" in out
    after = {r.id: r for r in ledger_rows(runtime)}
    assert all(after[r.id] == r for r in others), "--retry-failed touched a chunk that had not failed"
    assert (after[f.id].status, after[f.id].last_error) == ("done", None)
    assert_exact(runtime)


def test_retry_failed_leaves_chunks_that_did_not_fail_alone(runtime, prepared):
    prepared(ships=1, channels=8)
    opts = BackfillOptions(progress=False, backoff_seconds=0.01, cutoff_time=CUTOFF, chunk_hours=1, max_attempts=2)
    prepare_backfill(runtime, [SHIP], opts)
    ids = {r.window_start.hour: r.id for r in ledger_rows(runtime)}
    install_fault(runtime, "ledger", "RAISE EXCEPTION 'injected fault';",
                  done_filter="AND NEW.window_start = '2024-10-01 19:00:00'")
    ledger = ChunkLedger(runtime.settings.target_schema)
    first = run_backfill(runtime, (), opts)
    # the 22:00 chunk is one that no worker has reached yet: it must stay pending under --retry-failed
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"UPDATE {ledger.table} SET status = 'pending' WHERE id = :i"), {"i": ids[22]})
    assert [f[1].hour for f in first.failed_chunks] == [19]
    status = {r.window_start.hour: r.status for r in ledger_rows(runtime)}
    assert status == {18: "done", 19: "failed", 20: "done", 21: "done", 22: "pending", 23: "done"}
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"DROP TRIGGER fault ON {ledger.table}"))

    retry = run_backfill(runtime, (), BackfillOptions(progress=False, backoff_seconds=0.01, retry_failed=True))
    status = {r.window_start.hour: r.status for r in ledger_rows(runtime)}
    assert (status[19], status[22]) == ("done", "pending")
    assert retry.rows_read == source_rows(runtime, SHIP, datetime(2024, 10, 1, 19), datetime(2024, 10, 1, 20))
    run_backfill(runtime, (), BackfillOptions(progress=False))
    assert_exact(runtime)


def test_a_failure_recorded_late_does_not_undo_a_chunk_another_worker_took_over(runtime, prepared):
    """A worker that lost its connection (and with it the chunk's lock) records its failure only while the
    chunk is still its claim: a chunk another worker has claimed or finished meanwhile keeps that worker's
    status; a chunk still held goes back to pending with the attempt counted."""
    prepared(ships=1, channels=4)
    prepare_backfill(runtime, [SHIP], BackfillOptions(progress=False, cutoff_time=CUTOFF, chunk_hours=2))
    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.connect() as conn, runtime.dbs.target.connect() as conn2:
        taken, kept = ledger.claim(conn, [SHIP]), ledger.claim(conn2, [SHIP])  # a lock each: two chunks
        assert taken is not None and kept is not None and taken.id != kept.id
        with runtime.dbs.target.begin() as other:  # another worker has finished the first chunk
            other.execute(text(f"UPDATE {ledger.table} SET status = 'done', worker = 'otherhost:1' WHERE id = :i"),
                          {"i": taken.id})
        assert ledger.mark_error(conn, taken, "lost the connection", failed=True) is False
        assert ledger.mark_error(conn2, kept, "lost the connection", failed=False) is True
        ledger.release(conn, taken.id)
        ledger.release(conn2, kept.id)
    rows = {r.id: r for r in ledger_rows(runtime)}
    assert (rows[taken.id].status, rows[taken.id].worker, rows[taken.id].last_error) == ("done", "otherhost:1", None)
    assert (rows[kept.id].status, rows[kept.id].attempts, rows[kept.id].last_error) == (
        "pending", 1, "lost the connection")


# ----------------------------------------------------------------------------------------------
# 5. the connection is cut inside a chunk


@pytest.mark.parametrize("where", ["ledger", "wide"])
def test_a_connection_cut_inside_a_chunk_is_retried(runtime, prepared, procs, where):
    prepared(ships=1, channels=12)
    ensure_ledger(runtime)
    install_fault(runtime, where, "IF nextval(SEQ) = 1 THEN PERFORM pg_sleep(30); END IF;")
    proc = procs.start(*migrate_args())
    pid = wait_for(lambda: sleeping_worker(runtime), "the worker to sit inside its first chunk", proc=proc)
    with runtime.dbs.target.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar() is True
    code, out, err = procs.finish(proc)
    assert code == 0, out + err
    # (the recorded error is the cut's OperationalError, or for the raw-cursor merge the InterfaceError of
    # the rollback that follows it on the dead connection)
    assert "failed (attempt 1 of 3): " in err and "Traceback" not in err
    rows = ledger_rows(runtime)
    assert {r.status for r in rows} == {"done"}
    assert [r.attempts for r in rows] == [0, 0, 1]  # the newest chunk (claimed first) was cut once
    assert rows[-1].last_error is None
    assert_exact(runtime)


# ----------------------------------------------------------------------------------------------
# 6. statement_timeout


@pytest.mark.parametrize("where", where_params())
def test_a_statement_timeout_is_retried(runtime, prepared, procs, where):
    prepared(ships=1, channels=12)
    ensure_ledger(runtime)
    install_fault(runtime, where, "IF nextval(SEQ) <= 2 THEN PERFORM pg_sleep(0.5); END IF;")
    code, out, err = procs.run(*migrate_args(), PGOPTIONS="-c statement_timeout=200")
    assert code == 0, out + err
    assert "statement timeout" in err
    rows = ledger_rows(runtime)
    assert {r.status for r in rows} == {"done"}
    assert [r.attempts for r in rows] == [0, 0, 2] and rows[-1].last_error is None
    if where == "ledger":  # the wide table is written once per read block; the attempts above say it there
        assert sequence_value(runtime) == 5
    assert_exact(runtime)


# ----------------------------------------------------------------------------------------------
# 7. the Python API connects on first use only

IMPORT_PROBE = r"""
import json, os, sys, time
sys.dont_write_bytecode = True
events = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "os.mkdir", "subprocess.Popen", "os.system",
                 "os.rename", "os.replace", "os.remove"):
        events.append([event, repr(args)[:200]])
    elif event == "open" and (
            (isinstance(args[1], str) and any(c in args[1] for c in "wax+")) or (args[2] or 0) & WRITE):
        events.append([event, repr(args)[:200]])

sys.addaudithook(hook)
t0 = time.monotonic()
import data_migrator
from data_migrator import data_migrator as api
seconds = time.monotonic() - t0
during_import = list(events)
state_after_import = os.path.exists(os.environ["STATE_DIR"])
try:
    api.get_migration_statistics()
    error = None
except Exception as exc:
    from narrow2wide.common import errors
    error = [type(exc).__name__, isinstance(exc, errors.DatabaseUnavailable), str(exc)]
print(json.dumps({"seconds": seconds, "events": during_import, "state": state_after_import, "error": error}))
"""


def test_import_does_no_io_and_the_api_fails_clearly_without_a_database(tmp_path):
    state = tmp_path / "fresh-state"
    env = clean_environ()
    env.update({"DATABASE_URL": "postgresql://bob:s3cretpw@127.0.0.1:1/nodb", "STATE_DIR": str(state),
                "PYTHONPATH": str(ROOT)})  # the project, importable from another working directory
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["events"] == []  # no connection, no file written, no folder made, no process started
    assert probe["state"] is False and not state.exists()
    name, unavailable, message = probe["error"]
    assert unavailable, probe["error"]
    assert "cannot connect" in message and "127.0.0.1" in message and "s3cretpw" not in message


# ----------------------------------------------------------------------------------------------
# 8. the database is down at start


@pytest.mark.parametrize("mode", ["migration-only", "status", "realtime", "concurrent"])
@pytest.mark.parametrize("down", ["refused", "no_database"])
def test_a_database_down_at_start_is_one_line_and_exit_1(tmp_path, pg_url, mode, down):
    if down == "refused":
        url = "postgresql://bob:s3cretpw@127.0.0.1:1/nodb"
    else:  # the server answers but the database does not exist
        url = make_url(pg_url).set(database="no_such_db_for_migrator", password="s3cretpw").render_as_string(
            hide_password=False)
    env = clean_environ()
    env.update({"DATABASE_URL": url, "STATE_DIR": str(tmp_path / "state")})
    args = ["--mode", mode] + {"migration-only": ["--cutoff-time", CUTOFF], "concurrent": ["--run-for", "5"]}.get(
        mode, [])
    out = subprocess.run([sys.executable, MAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: cannot connect to ") and "check DATABASE_URL" in lines[0]
    assert "Traceback" not in out.stderr and "s3cretpw" not in out.stderr
    if down == "no_database":
        assert "no_such_db_for_migrator" in lines[0]
