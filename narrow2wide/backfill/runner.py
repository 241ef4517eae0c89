"""Step 3 (``--mode migration-only``): the chunked backfill engine, and the Python API.

``from data_migrator import data_migrator`` gives a lazy facade for a Python shell: nothing is
read or connected until a method is called.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.engine import Connection
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from narrow2wide.backfill.progress import LedgerProgress
from narrow2wide.common.config import Settings
from narrow2wide.common.errors import ConfigError, DatabaseUnavailable, error_line
from narrow2wide.common.retry import DATABASE_ERRORS, RETRYABLE, backoff_delay, is_transient
from narrow2wide.db.catalogue import database_now, resolve_ships
from narrow2wide.db.narrow_source import READ_SETTINGS_SQL, begin_snapshot_read
from narrow2wide.db.runtime import Runtime, open_runtime
from narrow2wide.engine.copy_reader import CopyReaderProcess
from narrow2wide.engine.pivot import PivotPlan
from narrow2wide.engine.window_migrator import ShipPlanCache, UnknownChannels, WindowResult, migrate_window
from narrow2wide.ops.throttle import BackfillGate, ThrottleSettings, check_throttle
from narrow2wide.store.chunk_ledger import DONE, FAILED, PENDING, RUNNING, Chunk, ChunkLedger
from narrow2wide.store.cutoff_store import CutoffStore
from narrow2wide.store.hold_log import HoldLog
from narrow2wide.store.pause_flags import PauseFlags

log = logging.getLogger("data_migrator")  # the name the log file has always shown
READER_PROCESSES = 2  # source blocks read at once by a backfill worker, each by a helper process


@dataclass(frozen=True)
class BackfillOptions:
    """How a backfill runs."""

    cutoff_time: str | None = None
    force: bool = False
    chunk_hours: int | None = None
    workers: int = 1
    retry_failed: bool = False
    max_attempts: int = 3
    backoff_seconds: float = 1.0
    progress: bool = True
    throttle: ThrottleSettings = ThrottleSettings()


@dataclass(frozen=True)
class ShipBackfill:
    """Backfill figures of one ship."""

    ship_id: str
    cutoff: datetime
    chunks: int
    done: int
    failed: int
    pending: int
    rows_read: int
    cells_written: int
    rejected: int


@dataclass(frozen=True)
class BackfillResult:
    """What ``migration-only`` did."""

    ships: tuple[ShipBackfill, ...]
    failed_chunks: tuple[tuple[str, datetime, datetime, str], ...]
    seconds: float
    rows_read: int
    rows_per_second: float
    retry_command: str | None = None
    held_seconds: dict[str, float] = field(default_factory=dict)  # paused / throttled / rate_capped


@dataclass
class WorkerStats:
    """What one worker loop did."""

    chunks_done: int = 0
    chunks_failed: int = 0
    attempts_failed: int = 0
    rows_read: int = 0
    errors: list[str] = field(default_factory=list)
    held_seconds: dict[str, float] = field(default_factory=dict)


def parse_cutoff(value: str, time_type: str, tz: str) -> datetime:
    """Parse ``--cutoff-time``: naive for timestamp sources, in SOURCE_TIMEZONE for timestamptz ones."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ConfigError(f"--cutoff-time {value!r} is not a time like '2024-10-02 17:00:00'") from exc
    if "with time zone" in time_type:
        if parsed.tzinfo:
            return parsed
        zone = ZoneInfo(tz)
        early, late = parsed.replace(tzinfo=zone, fold=0), parsed.replace(tzinfo=zone, fold=1)
        if early.utcoffset() != late.utcoffset():
            # a repeated hour (clocks going back) or a skipped one (clocks going forward)
            raise ConfigError(f"--cutoff-time {value!r} is ambiguous or does not exist in {tz} (a daylight-saving "
                              f"change); give the offset, e.g. '{parsed:%Y-%m-%d %H:%M:%S}{early:%z}' or "
                              f"'{parsed:%Y-%m-%d %H:%M:%S}{late:%z}'")
        return early
    if parsed.tzinfo is not None:
        return parsed.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
    return parsed


def resolve_cutoff(store: CutoffStore, ship_id: str, given: datetime | None, force: bool, now: datetime) -> datetime:
    """The ship's cutoff: ``given`` (stored; a conflicting one needs force), the stored one, or ``now``."""
    if given is not None:
        return store.set_cutoff(ship_id, given, force=force).cutoff  # type: ignore[return-value]
    return store.ensure_cutoff(ship_id, now)[0]


def prepare_backfill(rt: Runtime, ships: list[str], opts: BackfillOptions) -> dict[str, datetime]:
    """Fix each ship's cutoff and record its chunks in the ledger; returns ship -> cutoff.

    A throttle query that fails or is not read-only stops the run here, before anything is written.
    """
    check_throttle(rt, opts.throttle)
    store = CutoffStore(rt.settings.cutoff_file)
    store.check_writable()  # a damaged store or a full STATE_DIR stops the run before it changes anything
    ledger = ChunkLedger(rt.settings.target_schema)
    hours = opts.chunk_hours or rt.settings.chunk_hours
    with rt.dbs.source.connect() as sconn:
        time_type = rt.source.time_type(sconn)
        now = database_now(sconn, time_type, rt.settings.source_timezone)  # one cutoff for the whole fleet
    given = parse_cutoff(opts.cutoff_time, time_type, rt.settings.source_timezone) if opts.cutoff_time else None
    cutoffs = {}
    for ship in ships:
        cutoff = resolve_cutoff(store, ship, given, opts.force, now)
        cutoffs[ship] = cutoff
        with rt.dbs.source.connect() as sconn:
            first = rt.source.first_time(sconn, ship, rt.source.channels(sconn, ship))
        with rt.dbs.target.begin() as tconn:
            ledger.ensure(tconn, time_type)
            added = ledger.plan(tconn, ship, first, cutoff, hours) if first is not None and first < cutoff else 0
        log.info("ship %s: history %s .. %s, %d new chunk(s) of %d h", ship, first, cutoff, added, hours)
    return cutoffs


def retry_failed_chunks(rt: Runtime, ships: list[str]) -> list[int]:
    """Put the failed chunks of ``ships`` back to pending; returns their ids (the only ones to run)."""
    with rt.dbs.target.begin() as tconn:
        ids = ChunkLedger(rt.settings.target_schema).reset_failed(tconn, ships)
    log.info("retrying %d failed chunk(s)", len(ids))
    return ids


def process_chunk(rt: Runtime, conn: Connection, ledger: ChunkLedger, cache: ShipPlanCache, chunk: Chunk,
                  time_type: str, readers: Sequence[CopyReaderProcess] = (),
                  after_block: Callable[[int, bool], bool] | None = None) -> int:
    """Migrate one claimed chunk; its data and its ledger row commit together. Returns rows read.

    A channel without a column in the chunk's window gets one, and the chunk is read again. When
    ``after_block`` (the gate) ends the window early, the part written is marked done and the rest
    becomes a new pending chunk, in the same transaction.
    """
    def run(plan: PivotPlan) -> WindowResult:
        with rt.dbs.source.connect() as sconn:
            begin_snapshot_read(sconn)
            with conn.begin():
                result = migrate_window(rt, sconn, conn, plan, chunk.start, chunk.end, direct=True,
                                        readers=readers, after_block=after_block)
                figures = (result.rows_read, result.cells_written, result.wide_rows, result.rejected, result.tables)
                if result.end < chunk.end:
                    ledger.mark_part_done(conn, chunk, result.end, *figures)
                    log.info("chunk %s %s..%s held at %s; the rest is pending", chunk.ship_id, chunk.start,
                             chunk.end, result.end)
                else:
                    ledger.mark_done(conn, chunk, *figures)
        return result

    result = cache.with_new_channels(chunk.ship_id, time_type, run)
    log.debug("chunk %s %s..%s: %d rows in %.2f s (read %.2f, pivot %.2f, write %.2f)", chunk.ship_id,
              chunk.start, chunk.end, result.rows_read,
              result.read_seconds + result.pivot_seconds + result.write_seconds,
              result.read_seconds, result.pivot_seconds, result.write_seconds)
    return result.rows_read


def work_chunks(rt: Runtime, ships: list[str], max_attempts: int = 3, backoff_seconds: float = 1.0,
                stop: threading.Event | None = None, only_ids: list[int] | None = None,
                gate: BackfillGate | None = None) -> WorkerStats:
    """The worker loop: claim, migrate, mark, until every chunk is finished (or ``stop`` is set).

    ``gate`` (the run's throttle; pause flags only when not given) is asked before each claim and
    after each block: it holds the worker while its ships are paused or the source is busy.

    A failing chunk is retried with exponential backoff up to ``max_attempts`` times, then marked
    failed with its error; the loop goes on with the other chunks. When the only unfinished chunks
    are held by other sessions (a live worker, or the backend of a killed one that has not noticed
    yet) the loop waits for them rather than exit with work undone: it takes a chunk over the
    moment its holder's lock goes, and returns once the ledger is drained.
    """
    # helper processes that read the source's blocks, two at a time; started first, so that their
    # start-up and connection overlap this worker's own
    readers = [CopyReaderProcess(rt.dbs.source, settings_sql=READ_SETTINGS_SQL) for _ in range(READER_PROCESSES)]
    try:
        for reader in readers:
            reader.start()
        with rt.dbs.source.connect() as sconn:
            time_type = rt.source.time_type(sconn)
        if gate is None:
            gate = BackfillGate(rt, ThrottleSettings(), uuid.uuid4().hex, stop)
            with rt.dbs.target.begin() as tconn:
                HoldLog(rt.settings.target_schema).ensure(tconn)
        try:
            stats = _claim_loop(rt, ships, time_type, readers, gate, max_attempts, backoff_seconds, stop, only_ids)
        finally:
            gate.close()
    finally:
        for reader in readers:  # all of them at once: each helper's exit takes tens of milliseconds
            reader.request_exit()
        for reader in readers:
            reader.close()
    stats.held_seconds = dict(gate.seconds)
    return stats


def _claim_loop(rt: Runtime, ships: list[str], time_type: str, readers: Sequence[CopyReaderProcess],
                gate: BackfillGate, max_attempts: int, backoff_seconds: float, stop: threading.Event | None,
                only_ids: list[int] | None) -> WorkerStats:
    """:func:`work_chunks`' loop, on a target connection of its own (replaced when it breaks)."""
    ledger = ChunkLedger(rt.settings.target_schema)
    cache = ShipPlanCache(rt)
    stats = WorkerStats()
    waited = 0.0
    conn = rt.dbs.target.connect()
    try:
        while not (stop and stop.is_set()):
            try:
                chunk, waiting = _next_chunk(ledger, gate, conn, ships, only_ids)
            except DATABASE_ERRORS as exc:
                if not is_transient(exc):  # the ledger is gone or wrong: retrying cannot help
                    raise
                log.warning("reading the ledger failed: %s", error_line(exc))
                conn = _fresh_connection(rt, conn, stop)
                continue
            if chunk is None:
                if not waiting or _wait_for_held(waiting, waited, stop):
                    break
                waited += min(0.2 + waited / 10, 2.0)
                continue
            waited = 0.0
            try:
                stats.rows_read += process_chunk(rt, conn, ledger, cache, chunk, time_type, readers,
                                                 gate.for_ship(chunk.ship_id))
                stats.chunks_done += 1
            except RETRYABLE as exc:
                conn = _chunk_failed(rt, conn, ledger, cache, chunk, exc, stats, max_attempts, backoff_seconds, stop)
            finally:
                if not conn.invalidated and not conn.closed:
                    try:
                        ledger.release(conn, chunk.id)
                    except DATABASE_ERRORS:
                        conn = _fresh_connection(rt, conn, stop)
    finally:
        conn.close()
    return stats


def _next_chunk(ledger: ChunkLedger, gate: BackfillGate, conn: Connection, ships: list[str],
                only_ids: list[int] | None) -> tuple[Chunk | None, int]:
    """The next chunk to work on, after the gate lets the worker go; else (None, chunks held by others).

    (None, 0): nothing is left, or ``stop`` was set while held.
    """
    left = ledger.unfinished_ships(conn, ships, only_ids)
    active = gate.hold(list(left)) if left else []  # waits while every ship left is paused, or throttled
    chunk = ledger.claim(conn, active, only_ids) if active else None
    return chunk, 0 if chunk is not None else sum(left[s] for s in active)


def _wait_for_held(held: int, waited: float, stop: threading.Event | None) -> bool:
    """Pause while ``held`` unfinished chunks are held by other sessions; True when ``stop`` was set."""
    if waited == 0.0:
        log.info("waiting for %d chunk(s) held by other sessions", held)
    pause = min(0.2 + waited / 10, 2.0)
    if stop is not None and stop.wait(pause):
        return True
    if stop is None:
        time.sleep(pause)
    return False


def _chunk_failed(rt: Runtime, conn: Connection, ledger: ChunkLedger, cache: ShipPlanCache, chunk: Chunk,
                  exc: BaseException, stats: WorkerStats, max_attempts: int, backoff_seconds: float,
                  stop: threading.Event | None) -> Connection:
    """Record a failed attempt of ``chunk`` (failed for good after ``max_attempts``), then back off.

    Returns the connection to go on with (a fresh one when the old one was lost).
    """
    if isinstance(exc, UnknownChannels):
        cache.get(conn, chunk.ship_id, refresh=True)
    error = error_line(exc)
    attempts = chunk.attempts + 1
    give_up = attempts >= max_attempts
    stats.attempts_failed += 1
    stats.errors.append(error)
    log.warning("chunk %s %s..%s failed (attempt %d of %d): %s", chunk.ship_id, chunk.start, chunk.end,
                attempts, max_attempts, error)
    conn = _fresh_connection(rt, conn, stop)
    try:
        if not ledger.mark_error(conn, chunk, error, failed=give_up):
            log.warning("chunk %s %s..%s is no longer this worker's (its commit went through before the "
                        "connection was lost, or another worker claimed it); the failure is not recorded",
                        chunk.ship_id, chunk.start, chunk.end)
            return conn
    except DATABASE_ERRORS as exc2:  # lost again: the chunk stays claimable
        log.warning("recording the failure failed: %s", error_line(exc2))
        conn = _fresh_connection(rt, conn, stop)
    if give_up:
        stats.chunks_failed += 1
    else:
        time.sleep(backoff_delay(attempts, backoff_seconds, 30.0))
    return conn


RECONNECT_LIMIT_SECONDS = 300.0  # how long a worker waits for a lost target database before it gives up


def _fresh_connection(rt: Runtime, conn: Connection, stop: threading.Event | None = None) -> Connection:
    """``conn`` if it still works (rolled back), else a new one, waiting out an outage with backoff."""
    try:
        conn.rollback()
        conn.execute(text("SELECT 1"))
        conn.commit()
        return conn
    except DATABASE_ERRORS:
        log.info("target connection lost; reconnecting")
        try:
            conn.invalidate()
            conn.close()
        except DATABASE_ERRORS as exc:
            log.debug("closing the lost connection: %s", exc)
    return _reconnect(rt, stop)


class _Stopped(Exception):
    """The stop event was set while waiting for the target database."""


def _reconnect(rt: Runtime, stop: threading.Event | None) -> Connection:
    """A new target connection, waiting out an outage (0.5 s doubling to 10 s, for at most RECONNECT_LIMIT_SECONDS)."""
    def connect() -> Connection:
        fresh = rt.dbs.target.connect()
        fresh.execute(text("SELECT 1"))
        fresh.commit()
        return fresh

    def pause(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("target database unreachable (%s); retrying in %.1f s", error_line(exc) if exc else "?",
                    state.next_action.sleep if state.next_action else 0.0)

    retrying = Retrying(retry=retry_if_exception_type(DATABASE_ERRORS), wait=wait_exponential(multiplier=0.5, max=10.0),
                        stop=lambda state: state.idle_for >= RECONNECT_LIMIT_SECONDS, sleep=pause,
                        before_sleep=before_sleep, reraise=True)
    try:
        return retrying(connect)
    except _Stopped as stopped:
        raise DatabaseUnavailable("stopped while the target database was unreachable") from stopped.__context__
    except DATABASE_ERRORS as exc:
        waited = retrying.statistics.get("idle_for", RECONNECT_LIMIT_SECONDS)
        raise DatabaseUnavailable(f"the target database has been unreachable for {waited:.0f} s: "
                                  f"{error_line(exc)}; re-run when it is back (done chunks are kept)") from exc


@dataclass(frozen=True)
class RunGate:
    """What every worker of one run shares to build its :class:`BackfillGate`: the throttle and the run id."""

    throttle: ThrottleSettings = ThrottleSettings()
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def gate(self, rt: Runtime, stop: threading.Event | None, rate_slot=None) -> BackfillGate:
        """The gate of one worker (``rate_slot``: the rate cap's schedule shared by the run's processes)."""
        return BackfillGate(rt, self.throttle, self.run_id, stop, rate_slot)


def _worker_process(settings: Settings, ships: list[str], max_attempts: int, backoff: float, log_level: int,
                    only_ids: list[int] | None, parent_pid: int, run_gate: RunGate, rate_slot) -> None:
    logging.basicConfig(level=log_level, format="%(message)s")
    stop = threading.Event()

    def watch_parent() -> None:
        # a parent killed with SIGKILL cannot stop its workers: they notice and stop after their chunk
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                log.warning("the backfill process %d is gone; this worker stops after its chunk", parent_pid)
                stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    with open_runtime(settings, "narrow-to-wide-worker") as rt:
        work_chunks(rt, ships, max_attempts, backoff, stop=stop, only_ids=only_ids,
                    gate=run_gate.gate(rt, stop, rate_slot))


def console_level() -> int:
    """The level of this process's stderr diagnostics (the root logger itself passes everything to the log file)."""
    streams = [h.level for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    return min(streams) if streams else logging.getLogger().getEffectiveLevel()


def run_workers(rt: Runtime, ships: list[str], workers: int, max_attempts: int, backoff: float,
                only_ids: list[int] | None = None, stop: threading.Event | None = None,
                run_gate: RunGate | None = None) -> None:
    """Run ``workers`` worker processes (or the loop in this process when 1) until the ledger is drained.

    ``stop`` ends the run early: the in-process loop finishes its chunk; worker processes are
    terminated, and the chunk each was writing rolls back (it stays pending for the next run).
    ``run_gate`` throttles every worker (its rate cap is one schedule for all of them); each
    worker writes the time it was held to the hold log under the run's id.
    """
    run_gate = run_gate or RunGate()
    if workers <= 1:
        work_chunks(rt, ships, max_attempts, backoff, stop=stop, only_ids=only_ids, gate=run_gate.gate(rt, stop))
        return
    ctx = multiprocessing.get_context("spawn")
    level = console_level()
    slot = ctx.Value("d", 0.0)  # the rate cap's schedule, on time.monotonic (one clock for the host)
    args = (rt.settings, ships, max_attempts, backoff, level, only_ids, os.getpid(), run_gate, slot)
    procs = [ctx.Process(target=_worker_process, args=args, name=f"backfill-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            if stop is not None and stop.is_set():
                log.info("stopping %d worker process(es)", sum(p.is_alive() for p in procs))
                for p in procs:
                    p.terminate()
            for p in procs:
                p.join(0.5)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    crashed = [p.name for p in procs if p.exitcode not in (0, None)]
    if crashed and not (stop is not None and stop.is_set()):
        log.warning("worker process(es) exited abnormally: %s", ", ".join(crashed))


def summarize(rt: Runtime, ships: list[str], cutoffs: dict[str, datetime], seconds: float,
              rows_read: int, run_id: str | None = None) -> BackfillResult:
    """The ledger's figures for ``ships`` (and the hold log's for the run ``run_id``)."""
    ledger = ChunkLedger(rt.settings.target_schema)
    with rt.dbs.target.connect() as conn:
        counts = ledger.counts(conn, ships)
        failed = ledger.failed(conn, ships)
        held = HoldLog(rt.settings.target_schema).totals(conn, run_id) if run_id else {}
    out = []
    for ship in ships:
        c = counts.get(ship, {})
        out.append(ShipBackfill(
            ship_id=ship, cutoff=cutoffs[ship],
            chunks=sum(c.get(s, 0) for s in (PENDING, RUNNING, DONE, FAILED)),
            done=c.get(DONE, 0), failed=c.get(FAILED, 0), pending=c.get(PENDING, 0) + c.get(RUNNING, 0),
            rows_read=c.get("rows_read", 0), cells_written=c.get("cells_written", 0), rejected=c.get("rejected", 0)))
    retry = None
    if failed:
        retry = "python main.py --mode migration-only --retry-failed " + " ".join(
            f"--ship-id {shlex.quote(s)}" for s in sorted({f[0] for f in failed}))
    return BackfillResult(tuple(out), tuple(failed), round(seconds, 3), rows_read,
                          round(rows_read / seconds, 1) if seconds > 0 else 0.0, retry, held)


class ProgressReporter(Protocol):
    """Something that reports backfill progress while the workers run (``LedgerProgress``, ...)."""

    def start(self) -> object: ...

    def stop(self) -> None: ...


def drain_ledger(rt: Runtime, ships: list[str], cutoffs: dict[str, datetime], workers: int = 1,
                 max_attempts: int = 3, backoff_seconds: float = 1.0, only_ids: list[int] | None = None,
                 stop: threading.Event | None = None, reporter: ProgressReporter | None = None,
                 split_failing: bool = False, run_gate: RunGate | None = None) -> BackfillResult:
    """Run the workers until the ledger of ``ships`` is drained (or ``stop``); the ledger's figures.

    ``run_gate``: the run's throttle and id (the held seconds of the result are the run's).

    ``split_failing``: chunks still failed once the ledger is drained are split in halves (down
    to one hour, :meth:`ChunkLedger.split_failed`) and only the halves are run, until none splits.
    """
    ledger = ChunkLedger(rt.settings.target_schema)
    run_gate = run_gate or RunGate()
    with rt.dbs.target.begin() as conn:  # the workers' bookkeeping tables, made once before they start
        HoldLog(rt.settings.target_schema).ensure(conn)
        PauseFlags(rt.settings.target_schema).ensure(conn)
        run_started = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    started = time.monotonic()
    if reporter:
        reporter.start()
    try:
        while True:
            run_workers(rt, ships, workers, max_attempts, backoff_seconds, only_ids, stop=stop, run_gate=run_gate)
            if not split_failing or (stop is not None and stop.is_set()):
                break
            with rt.dbs.target.begin() as conn:
                only_ids = ledger.split_failed(conn, ships)
            if not only_ids:
                break
            log.warning("split failing chunk(s) into %d smaller window(s); running them", len(only_ids))
    finally:
        if reporter:
            reporter.stop()
    seconds = time.monotonic() - started
    with rt.dbs.target.connect() as conn:
        rows = ledger.rows_done_since(conn, ships, run_started)
    return summarize(rt, ships, cutoffs, seconds, rows, run_gate.run_id)


def run_backfill(rt: Runtime, ship_ids: tuple[str, ...] = (), opts: BackfillOptions = BackfillOptions(),
                 stop: threading.Event | None = None) -> BackfillResult:
    """``--mode migration-only``: backfill every chunk before each ship's cutoff (or until ``stop``)."""
    ships = resolve_ships(rt, ship_ids)
    cutoffs = prepare_backfill(rt, ships, opts)
    only_ids = retry_failed_chunks(rt, ships) if opts.retry_failed else None
    return drain_ledger(rt, ships, cutoffs, opts.workers, opts.max_attempts, opts.backoff_seconds, only_ids,
                        stop=stop, reporter=LedgerProgress(rt, ships) if opts.progress else None,
                        run_gate=RunGate(opts.throttle))


