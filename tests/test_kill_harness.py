"""Kill harness: SIGKILL the real CLI at random moments while a writer keeps filling the source.

For each of ``migration-only``, ``realtime`` and ``concurrent``: a :class:`demo_data.LiveWriter`
thread inserts live rows (and, now and then, rows a few minutes late) the whole time; the CLI is
started, killed with SIGKILL after a random delay, and restarted, again and again. Every merge
into a wide table sleeps a random fraction of a second (a trigger), so that many kills land inside
a chunk's or a cycle's transaction rather than between them. At the end the writer is stopped, one
clean run catches up, and the wide tables must equal the pivot of the source cell by cell
(:func:`tests.wide_check.compare`): nothing lost, nothing duplicated, nothing changed. The ledger
and the cutoff store must be consistent and ``--mode validate`` must pass.

The delays come from a seeded RNG. The seed is random per run (set ``KILL_HARNESS_SEED`` to replay
one) and is named in every assertion message and in the summary. Quick run: ``QUICK_KILLS`` kills
per strategy; ``pytest --full``: ``FULL_KILLS``. The figures (kills landed, rows and cells checked)
are logged at WARNING (shown by ``pytest -rA``, and on stderr with ``pytest -s``), written to
``<tmp_path>/kill_summary.json`` and recorded as junit properties.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from cutoff_store import CutoffStore
from narrow2wide.db.database import qualified, server_now
from narrow2wide.db.runtime import Runtime
from narrow2wide.demo.demo_data import LiveWriter
from narrow2wide.store.chunk_ledger import ChunkLedger
from tests.cli_procs import Procs
from tests.figures import show_figures
from tests.wide_check import compare

log = logging.getLogger("kill_harness")

# ----------------------------------------------------------------------------------------------
# parameters

QUICK_KILLS = 3  # kills per strategy in the default run
FULL_KILLS = 20  # kills per strategy with --full
SHIPS = 2
CHANNELS = 8
QUICK_HISTORY_DAYS = 1.0  # history seeded before the writer starts (1 h chunks: 24 per ship; 3 lives of up
# to 3.5 s each must not drain it: at about 3 chunks a second, half a day did for some seeds)
FULL_HISTORY_DAYS = 3.0  # enough chunks that FULL_KILLS kills of migration-only land before it drains
KILL_DELAY_SECONDS = (0.4, 3.5)  # a life lasts a uniform random time in this range, then SIGKILL
MERGE_SLEEP_SECONDS = 0.25  # each merge into a wide table sleeps random() * this (widens the windows)
WRITER_EVERY_SECONDS = 0.3  # the live writer inserts the current second of every channel this often
WRITER_LATE_EVERY = 4  # ... and every this many ticks a row LATE_MINUTES old
LATE_MINUTES = 3.0  # well inside the realtime lookback (REALTIME_LOOKBACK_MINUTES, 10)
SETTLE_SECONDS = 2.1  # realtime leaves the newest 2 s to the next cycle
STRATEGIES = ("migration-only", "realtime", "concurrent")


# ----------------------------------------------------------------------------------------------
# helpers


@dataclass
class HarnessReport:
    """What one strategy's harness did, for the summary and the assertion messages."""

    strategy: str
    seed: int
    kills_wanted: int
    kills_landed: int = 0  # SIGKILL delivered to a running process
    exited_before_kill: list[int] = field(default_factory=list)  # exit codes of lives that ended by themselves
    refused_restarts: int = 0  # lives refused because the killed one's lock was not released yet
    delays: list[float] = field(default_factory=list)
    progress_at_kills: list[str] = field(default_factory=list)
    writer_rows: int = 0
    ships: dict[str, dict] = field(default_factory=dict)
    rows_checked: int = 0
    cells_checked: int = 0
    lost: int = 0
    duplicated_or_changed: int = 0
    seconds: float = 0.0

    def tag(self) -> str:
        """The line that lets a failure be replayed."""
        return f"[{self.strategy}, KILL_HARNESS_SEED={self.seed}]"


def harness_seed() -> int:
    """The RNG seed: ``KILL_HARNESS_SEED`` when set, else a fresh random one (always reported)."""
    given = os.environ.get("KILL_HARNESS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**31)


def slow_merges(runtime: Runtime, ships: tuple[str, ...], seconds: float) -> None:
    """Every merge statement into a wide table first sleeps ``random() * seconds`` (transaction open)."""
    tgt = runtime.settings.target_schema
    fn = qualified(tgt, "harness_slow_fn")
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"""CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(random() * {seconds}); RETURN NULL; END $$"""))
        for ship in ships:
            for table in wide_tables(runtime, ship):
                conn.execute(text(f"CREATE TRIGGER harness_slow BEFORE INSERT ON {table} FOR EACH STATEMENT "
                                  f"EXECUTE FUNCTION {fn}()"))


def wide_tables(runtime: Runtime, ship: str) -> list[str]:
    """The qualified names of one ship's wide tables."""
    with runtime.dbs.target.connect() as conn:
        names = conn.execute(text(
            f"SELECT table_name FROM {qualified(runtime.settings.target_schema, 'migrator_tables')} "
            "WHERE ship_id = :s ORDER BY 1"), {"s": ship}).scalars().all()
    return [qualified(runtime.settings.target_schema, n) for n in names]


def ledger_counts(runtime: Runtime) -> dict[str, int]:
    """Chunks per status over every ship (empty before the ledger exists)."""
    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.connect() as conn:
        if not ledger.exists(conn):
            return {}
        rows = conn.execute(text(f"SELECT status, count(*) FROM {ledger.table} GROUP BY 1")).all()
    return {status: int(n) for status, n in rows}


def progress_note(runtime: Runtime, ships: tuple[str, ...]) -> str:
    """Where the work stood at a kill: chunks done / total and the oldest realtime watermark."""
    counts = ledger_counts(runtime)
    store = CutoffStore(runtime.settings.cutoff_file)
    marks = [s.watermark for s in (store.get(ship) for ship in ships) if s is not None and s.watermark]
    mark = min(marks).strftime("%H:%M:%S") if len(marks) == len(ships) else "-"
    return f"chunks {counts.get('done', 0)}/{sum(counts.values())}, watermark {mark}"


def db_now(runtime: Runtime) -> datetime:
    """The database's current time (UTC, naive like the source's created_time)."""
    with runtime.dbs.source.connect() as conn:
        return server_now(conn, "UTC")


def cli_args(strategy: str, rng: random.Random) -> list[str]:
    """The command line of one life of ``strategy`` (the realtime cursor is drawn at random)."""
    cursor = rng.choice(("created_time", "server_created_time"))
    if strategy == "migration-only":
        return ["--mode", "migration-only", "--chunk-hours", "1"]
    if strategy == "realtime":
        return ["--mode", "realtime", "--interval", "0.01", "--wait-lock", "--cursor", cursor]
    return ["--mode", "concurrent", "--interval", "0.01", "--chunk-hours", "1", "--cursor", cursor]


def backfill_drained(runtime: Runtime) -> bool:
    """True when the ledger exists and every chunk is done."""
    counts = ledger_counts(runtime)
    return bool(counts) and counts.get("done", 0) == sum(counts.values())


def kill_loop(runtime: Runtime, procs: Procs, report: HarnessReport, rng: random.Random,
              ships: tuple[str, ...]) -> None:
    """Start ``report.strategy``, SIGKILL it after a random delay, restart; until the kills have landed."""
    lives = 0
    while report.kills_landed < report.kills_wanted:
        lives += 1
        assert lives <= report.kills_wanted * 4 + 10, f"{report.tag()} too many lives without landing the kills: " \
                                                      f"{report}"
        delay = rng.uniform(*KILL_DELAY_SECONDS)
        proc = procs.start(*cli_args(report.strategy, rng))
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            report.kills_landed += 1
            report.delays.append(round(delay, 3))
            report.progress_at_kills.append(progress_note(runtime, ships))
            continue
        # the life ended before its kill
        _, out, err = procs.finish(proc)
        report.exited_before_kill.append(proc.returncode)
        if proc.returncode != 0 and "already being processed by another realtime process" in err:
            report.refused_restarts += 1  # the killed processor's backend still held the ship's lock
            continue
        assert proc.returncode == 0, f"{report.tag()} a life failed on its own (exit {proc.returncode})\n{out}\n{err}"
        assert report.strategy == "migration-only", \
            f"{report.tag()} the long-lived {report.strategy} exited 0 by itself\n{out}\n{err}"
        assert not backfill_drained(runtime), \
            f"{report.tag()} the backfill finished after {report.kills_landed} kill(s); seed more history"


def check_ledger_and_cutoffs(runtime: Runtime, ships: tuple[str, ...], report: HarnessReport) -> None:
    """Every chunk done, windows tiling [first hour, cutoff) exactly, each settled chunk's rows read once;
    each ship's cutoff set and its watermark between the cutoff and the database's now."""
    tag = report.tag()
    now = db_now(runtime)
    store = CutoffStore(runtime.settings.cutoff_file)
    ledger = ChunkLedger(runtime.settings.target_schema)
    src = runtime.source.sql
    with runtime.dbs.target.connect() as conn:
        chunks = conn.execute(text(
            f"SELECT ship_id, window_start, window_end, status, rows_read FROM {ledger.table} "
            "ORDER BY ship_id, window_start")).all()
    for ship in ships:
        state = store.get(ship)
        assert state is not None and state.cutoff is not None, f"{tag} {ship}: no cutoff stored"
        assert state.watermark is not None, f"{tag} {ship}: no realtime watermark"
        assert state.cutoff <= state.watermark <= now, f"{tag} {ship}: cutoff {state.cutoff}, watermark " \
                                                       f"{state.watermark}, now {now}"
        mine = [c for c in chunks if c.ship_id == ship]
        assert mine and {c.status for c in mine} == {"done"}, f"{tag} {ship}: ledger {mine}"
        with runtime.dbs.source.connect() as conn:
            first = conn.execute(text(f"SELECT min(created_time) FROM {src} WHERE ship_id = :s"),
                                 {"s": ship}).scalar_one()
            counts = dict(conn.execute(text(
                f"""SELECT w.a, count(s.ship_id)
                    FROM unnest(CAST(:a AS timestamp[]), CAST(:b AS timestamp[])) AS w(a, b)
                    LEFT JOIN {src} s ON s.ship_id = :s AND s.created_time >= w.a AND s.created_time < w.b
                    GROUP BY w.a"""),
                {"s": ship, "a": [c.window_start for c in mine], "b": [c.window_end for c in mine]}).all())
        assert mine[0].window_start <= first, f"{tag} {ship}: history from {first}, ledger from {mine[0]}"
        assert mine[-1].window_end == state.cutoff, f"{tag} {ship}: ledger ends {mine[-1].window_end}, " \
                                                    f"cutoff {state.cutoff}"
        gaps = [(a.window_end, b.window_start) for a, b in zip(mine, mine[1:], strict=False)
                if a.window_end != b.window_start]
        assert not gaps, f"{tag} {ship}: ledger windows overlap or leave gaps: {gaps}"
        # late rows (LATE_MINUTES old) may reach a chunk near the cutoff after it was done (realtime's
        # lookback covers them); every earlier chunk must have read each of its rows exactly once
        settled = state.cutoff - timedelta(minutes=LATE_MINUTES + 2)
        wrong = [(c.window_start, c.rows_read, counts[c.window_start]) for c in mine
                 if c.window_end <= settled and c.rows_read != counts[c.window_start]]
        assert not wrong, f"{tag} {ship}: chunks whose rows_read is not the source's row count: {wrong}"
        report.ships.setdefault(ship, {}).update(
            chunks=len(mine), cutoff=str(state.cutoff), watermark=str(state.watermark))


def check_cells(runtime: Runtime, ships: tuple[str, ...], report: HarnessReport) -> None:
    """The oracle, ship by ship: the wide tables equal the pivot of the source cell by cell."""
    tag = report.tag()
    src = runtime.source.sql
    for ship in ships:
        for table in wide_tables(runtime, ship):
            with runtime.dbs.target.connect() as conn:
                keyed = conn.execute(text(
                    """SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
                       AND a.attnum = ANY(i.indkey) WHERE i.indrelid = CAST(:t AS regclass)
                       AND (i.indisprimary OR i.indisunique) AND i.indnatts = 1 AND a.attname = 'created_time'"""),
                    {"t": table}).scalar_one()
            assert keyed == 1, f"{tag} {table} has no unique key on created_time: a row could be duplicated"
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        with runtime.dbs.source.connect() as conn:
            rows = int(conn.execute(text(f"SELECT count(*) FROM {src} WHERE ship_id = :s"),
                                    {"s": ship}).scalar_one())
            state = CutoffStore(runtime.settings.cutoff_file).get(ship)
            live = int(conn.execute(text(f"SELECT count(*) FROM {src} WHERE ship_id = :s AND created_time >= :c"),
                                    {"s": ship, "c": state.cutoff}).scalar_one())
        report.rows_checked += rows
        report.cells_checked += diff.expected
        report.lost += diff.missing
        report.duplicated_or_changed += diff.extra
        report.ships.setdefault(ship, {}).update(narrow_rows=rows, rows_after_cutoff=live, cells=diff.expected,
                                                 missing=diff.missing, extra=diff.extra,
                                                 unmapped=diff.unmapped_rows)
        assert diff.expected > 0 and live > 0, f"{tag} {ship}: nothing to check ({diff}, {live} live rows)"
        assert diff.exact, f"{tag} {ship}: the wide tables differ from the source: {diff}; {report}"


def publish(report: HarnessReport, tmp_path, record_property, request: pytest.FixtureRequest) -> None:
    """Log the summary at WARNING (stderr too under ``-s``), write it to a file, record it for junit."""
    summary = (f"kill harness {report.tag()}: {report.kills_landed} kill(s) survived "
               f"(wanted {report.kills_wanted}; {len(report.exited_before_kill)} life/lives ended by themselves, "
               f"{report.refused_restarts} refused restart(s)); writer {report.writer_rows:,} rows; checked "
               f"{report.rows_checked:,} narrow rows = {report.cells_checked:,} cells: lost {report.lost}, "
               f"duplicated/changed {report.duplicated_or_changed}; {report.seconds:.1f} s")
    path = tmp_path / "kill_summary.json"
    path.write_text(json.dumps(asdict(report), indent=2, default=str))
    kills = "; ".join(f"{d} s: {p}" for d, p in zip(report.delays, report.progress_at_kills, strict=True))
    show_figures(request, log, f"{summary}\n  kills (delay: progress at the kill): {kills}\n"
                               f"  ships: {report.ships}\n  details: {path}")
    for key in ("seed", "kills_landed", "rows_checked", "cells_checked", "lost", "duplicated_or_changed"):
        record_property(key, getattr(report, key))


# ----------------------------------------------------------------------------------------------
# the harness


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sigkill_at_random_moments_under_a_live_writer_loses_nothing(
        strategy, runtime, prepared, procs, full_run, tmp_path, record_property, request):
    started = time.monotonic()
    seed = harness_seed()
    rng = random.Random(seed)
    report = HarnessReport(strategy, seed, FULL_KILLS if full_run else QUICK_KILLS)
    days = FULL_HISTORY_DAYS if full_run else QUICK_HISTORY_DAYS
    history = prepared(ships=SHIPS, channels=CHANNELS, days=days, end=None, offline_hours=1.0)
    ships = history.ship_ids
    slow_merges(runtime, ships, MERGE_SLEEP_SECONDS)
    writer = LiveWriter(runtime.dbs.source, runtime.source, ships, CHANNELS, every_seconds=WRITER_EVERY_SECONDS,
                        late_every=WRITER_LATE_EVERY, late_minutes=LATE_MINUTES).start()
    writer_stopped = False
    try:
        kill_loop(runtime, procs, report, rng, ships)

        # one clean run of the strategy to finish what the kills left
        if strategy == "migration-only":
            code, out, err = procs.run(*cli_args(strategy, rng), timeout=600)
            assert code == 0, f"{report.tag()} the final backfill failed\n{out}\n{err}"
        elif strategy == "concurrent":
            proc = procs.start(*cli_args(strategy, rng))
            deadline = time.monotonic() + 600
            while not backfill_drained(runtime):
                assert proc.poll() is None, f"{report.tag()} concurrent exited: {procs.output(proc)}"
                assert time.monotonic() < deadline, f"{report.tag()} the backfill did not finish"
                time.sleep(0.2)
            time.sleep(1.0)  # at least one more realtime cycle with the writer running
            proc.send_signal(signal.SIGTERM)
            code, out, err = procs.finish(proc, timeout=120)
            assert code == 0, f"{report.tag()} concurrent did not stop cleanly on SIGTERM\n{out}\n{err}"
        report.writer_rows = writer.stop()
        writer_stopped = True
    finally:
        if not writer_stopped:
            writer.stop()
    assert report.writer_rows > 0

    time.sleep(SETTLE_SECONDS)
    code, out, err = procs.run("--mode", "realtime", "--once", "--wait-lock", timeout=300)
    assert code == 0, f"{report.tag()} the final realtime cycle failed\n{out}\n{err}"
    if strategy == "realtime":  # realtime fixed the cutoff at its first start; the history comes last
        code, out, err = procs.run("--mode", "migration-only", "--chunk-hours", "1", timeout=600)
        assert code == 0, f"{report.tag()} the backfill after realtime failed\n{out}\n{err}"

    check_ledger_and_cutoffs(runtime, ships, report)
    check_cells(runtime, ships, report)
    code, out, err = procs.run("--mode", "validate", timeout=300)
    assert code == 0 and "Validation passed" in out, f"{report.tag()} validate failed ({code})\n{out}\n{err}"
    report.seconds = time.monotonic() - started
    publish(report, tmp_path, record_property, request)
