"""Realtime processing (``--mode realtime``): keep each ship's wide tables current, cycle by cycle.

Each cycle, per ship, re-migrates ``[watermark - lookback, database now - settle)`` with the same
window migrator (pivot and idempotent merge) as the backfill, commits, and only then advances the
watermark in the cutoff store. A crash between commit and store means the window is read again,
which changes nothing. With ``cursor="server_created_time"`` the hours touched by rows inserted
since the last cycle are re-migrated too, however old their created_time.

One realtime process per ship: a session-level advisory lock per ship is held for the life of the
processor, and writes take the per-ship write lock that ``validate --repair`` also takes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from narrow2wide.common.errors import LockHeld, MigratorError, error_line
from narrow2wide.common.retry import DATABASE_ERRORS, RETRYABLE, backoff_delay
from narrow2wide.common.windows import cut_window
from narrow2wide.db.catalogue import database_now, newest_wide_times, resolve_ships
from narrow2wide.db.database import raw_cursor
from narrow2wide.db.lock_keys import realtime_key, take_write_locks
from narrow2wide.db.narrow_source import begin_snapshot_read
from narrow2wide.db.runtime import Runtime
from narrow2wide.engine.pivot import PivotPlan, read_fleet_window, ship_hashes
from narrow2wide.engine.tick_signatures import FleetScope, ShipTicks, fleet_scope, read_signatures
from narrow2wide.engine.window_migrator import (
    ShipPlanCache,
    WindowResult,
    WrittenRows,
    merge_fleet,
    migrate_window,
)
from narrow2wide.store.cutoff_store import CutoffStore

log = logging.getLogger("realtime_processor")  # the name the log file has always shown

CURSORS = ("created_time", "server_created_time")
FUTURE_TOLERANCE = timedelta(minutes=5)  # newer created_time than now + this is reported as ahead
HOUR = timedelta(hours=1)
# what a cycle (or a streaming step) survives: logged, the connections re-made, tried again later
# (ValueError: a value the pivot could not encode; the backfill counts it as a chunk failure too)


@dataclass(frozen=True)
class RealtimeOptions:
    """How the processor runs."""

    interval_minutes: float = 1.0
    once: bool = False
    run_for: float | None = None  # seconds; finish the current cycle and stop after this long
    max_cycles: int | None = None  # for the library and tests
    cursor: str = "created_time"
    settle_seconds: float = 2.0  # the newest seconds are left for the next cycle
    wait_for_lock: bool = False
    install_signal_handlers: bool = True  # unused, kept for callers: only the CLI handles signals (cli/stopping.py)


@dataclass(frozen=True)
class ShipCycle:
    """What one cycle did for one ship."""

    ship_id: str
    window_start: datetime | None = None
    window_end: datetime | None = None
    rows_read: int = 0
    cells_written: int = 0
    rejected: int = 0
    late_hours: int = 0  # hours re-migrated because the server_created_time cursor saw inserts there
    ahead_rows: int = 0  # rows with a created_time beyond database now + FUTURE_TOLERANCE
    watermark: datetime | None = None
    lag_seconds: float | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class CycleResult:
    """One cycle over every ship."""

    number: int
    database_time: datetime | None
    ships: tuple[ShipCycle, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when no ship failed."""
        return all(s.error is None for s in self.ships)

    @property
    def rows_read(self) -> int:
        """Narrow rows read by the cycle."""
        return sum(s.rows_read for s in self.ships)


@dataclass
class ProcessorMemory:
    """What a running realtime processor keeps from one cycle to the next: its ships' pivot plans and
    the rows its last cycle wrote (lookback rows found unchanged are not merged again)."""

    written: WrittenRows = field(default_factory=WrittenRows)
    plans: ShipPlanCache | None = None


@dataclass(frozen=True)
class RealtimeResult:
    """``--mode realtime``: what the processor did until it stopped."""

    cycles: int
    failed_cycles: int
    rows_read: int
    cells_written: int
    stopped_because: str
    last: CycleResult | None = None

    @property
    def ok(self) -> bool:
        """True when the last cycle succeeded."""
        return self.last is not None and self.last.ok


# ----------------------------------------------------------------------------------------------
# one realtime process per ship


class ShipLocks:
    """Session advisory locks, one per ship, held on one dedicated connection while the processor runs."""

    def __init__(self, engine: Engine, schema: str, ship_ids: list[str]):
        self.engine = engine
        self.schema = schema
        self.ship_ids = ship_ids
        self._conn: Connection | None = None

    def acquire(self, wait: bool = False) -> None:
        """Take every ship's lock; :class:`LockHeld` names the process that holds one (unless ``wait``)."""
        self.release()
        conn = self.engine.connect()
        conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            for ship in self.ship_ids:
                key = realtime_key(self.schema, ship)
                if conn.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"),
                                {"k": key}).scalar_one():
                    continue
                holder = self._holder(conn, key)
                if not wait:
                    raise LockHeld(f"ship {ship} is already being processed by another realtime process "
                                   f"({holder}); stop that one first, or pass --wait-lock")
                log.warning("ship %s is held by another realtime process (%s); waiting for it", ship, holder)
                conn.execute(text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"), {"k": key})
        except BaseException:
            conn.invalidate()  # a pooled connection would keep the locks taken so far
            conn.close()
            raise
        self._conn = conn

    def check(self) -> None:
        """Make sure the locks are still held; re-take them after a lost connection."""
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))
                return
        except DATABASE_ERRORS:
            log.warning("the connection holding the realtime locks was lost; taking them again")
            self.release()
        self.acquire(wait=False)

    def release(self) -> None:
        """Give the locks back, then the connection to the pool (a warm session: its merge stages and
        prepared merges serve the next cycle); one whose unlock fails is closed for real instead."""
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self._conn.close()
            except DATABASE_ERRORS:
                log.debug("unlocking failed; closing the lock connection", exc_info=True)
                try:
                    self._conn.invalidate()
                    self._conn.close()
                except DATABASE_ERRORS:
                    log.debug("closing the lock connection failed", exc_info=True)
            self._conn = None

    @staticmethod
    def _holder(conn: Connection, key: str) -> str:
        row = conn.execute(text(
            """SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local'), a.backend_start
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                 AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(:k, 0)"""),
            {"k": key}).first()
        if row is None:
            return "holder unknown"
        return f"backend pid {row[0]}, application {row[1]!r}, client {row[2]}, since {row[3]:%Y-%m-%d %H:%M:%S}"


# ----------------------------------------------------------------------------------------------
# one ship, one cycle


@dataclass(frozen=True)
class SourceClock:
    """The source's time types, read once per run."""

    time_type: str
    server_type: str | None  # type of server_created_time, None when the source has no such column


def write_window(rt: Runtime, cache: ShipPlanCache, ship_id: str, start: datetime, end: datetime,
                 time_type: str) -> WindowResult:
    """Migrate ``[start, end)`` of one ship in one transaction under the ship's write lock.

    A channel without a column gets one (the processor keeps running) and the window is read again.
    """
    def run(plan: PivotPlan) -> WindowResult:
        with rt.dbs.source.connect() as sconn:
            begin_snapshot_read(sconn)
            with rt.dbs.target.begin() as tconn:
                take_write_locks(tconn, rt.settings.target_schema, [ship_id])
                return migrate_window(rt, sconn, tconn, plan, start, end)

    return cache.with_new_channels(ship_id, time_type, run)


def _pieces(start: datetime, end: datetime, hours: int) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut into pieces of at most ``hours`` (a long outage is caught up piece by piece)."""
    return cut_window(start, end, [timedelta(hours=hours)])


@dataclass
class _ShipWork:
    """One ship's part of a cycle while it runs."""

    ship_id: str
    base: datetime  # the stored watermark, else the cutoff
    start: datetime
    rows: int = 0
    cells: int = 0
    rejected: int = 0
    late_hours: int = 0
    done: bool = False
    error: str | None = None

    def add(self, result: WindowResult) -> None:
        """Count a written window."""
        self.rows += result.rows_read
        self.cells += result.cells_written
        self.rejected += result.rejected


def ahead_rows(conn: Connection, rt: Runtime, ships: list[str], limit: datetime) -> dict[str, tuple[int, datetime]]:
    """Per ship, rows with a created_time at or beyond ``limit`` (and the newest): one query for the fleet."""
    return {r[0]: (int(r[1]), r[2]) for r in conn.execute(text(
        f"""SELECT ship_id, count(*), max(created_time) FROM {rt.source.sql}
            WHERE created_time >= :lim AND ship_id = ANY(CAST(:s AS text[])) GROUP BY 1"""),
        {"lim": limit, "s": ships}).all()}


def fleet_read_pays(rt: Runtime, ships: list[str]) -> bool:
    """True when one read of a window for all ``ships`` costs less than one read per ship.

    The fleet read takes the window's rows of every ship in the source: worth it when ``ships``
    are at least half of them (the usual case: realtime runs for the whole fleet).
    """
    if len(ships) < 2:
        return False
    with rt.dbs.source.connect() as conn:
        return 2 * len(ships) >= len(rt.source.ships(conn))


def write_fleet_window(rt: Runtime, cache: ShipPlanCache, work: list[_ShipWork], start: datetime, end: datetime,
                       time_type: str, written: WrittenRows | None = None) -> None:
    """Migrate ``[start, end)`` of every ship in ``work``: one source read, one target transaction.

    The ships' write locks are taken in one statement and every ship is merged by
    :func:`window_migrator.merge_fleet`: a cycle costs about its rows, not ships times a fixed
    number of round trips. A ship whose rows name a channel without a column, or every ship when
    the shared transaction fails, is written again on its own (:func:`write_window`), so one bad
    ship is reported alone and never holds the others back.
    """
    schema = rt.settings.target_schema
    alone: list[_ShipWork] = []
    try:
        with rt.dbs.source.connect() as sconn:
            begin_snapshot_read(sconn)
            with rt.dbs.target.begin() as tconn:
                plans = cache.get_many(tconn, [w.ship_id for w in work])
                order_by = rt.source.duplicate_order(sconn)
                cursor = raw_cursor(sconn)
                scope, ticks = lookback_scope(cursor, rt, plans, start, end, order_by, written)
                batches = read_fleet_window(cursor, rt.source.sql, plans, start, end, order_by,
                                            scope.fresh_from if scope else None, scope.again if scope else None)
                if batches is None:  # two ids share a hash: ship by ship
                    alone = list(work)
                else:
                    # a ship with rows of a channel that has no column yet is written alone, after its columns
                    known = [not (batches[w.ship_id].idx < 0).any() for w in work]
                    ready = [(w, p) for w, p, ok in zip(work, plans, known, strict=True) if ok]
                    alone = [w for w, ok in zip(work, known, strict=True) if not ok]
                    take_write_locks(tconn, schema, [w.ship_id for w, _ in ready])
                    results = merge_fleet(rt, sconn, tconn, [(p, batches.pop(w.ship_id)) for w, p in ready],
                                          start, end, written)
                    for (w, _), result in zip(ready, results, strict=True):
                        w.add(result)
                        w.done = True
                    if written is not None:  # only the ships merged here: the others are written alone
                        merged = {w.ship_id for w, _ in ready}
                        written.stage_ticks({h: t for ship, (h, t) in ticks.items() if ship in merged})
        if written is not None:
            written.commit()
    except RETRYABLE as exc:
        if written is not None:
            written.discard()
        log.warning("the fleet window %s .. %s failed (%s); writing its ships one by one", start, end,
                    error_line(exc))
        for w in work:
            w.rows = w.cells = w.rejected = 0
            w.done = False
        alone = list(work)
    for w in alone:
        try:
            w.add(write_window(rt, cache, w.ship_id, start, end, time_type))
            w.done = True
        except RETRYABLE as exc:
            _fail([w], exc)


def lookback_scope(cursor, rt: Runtime, plans: list[PivotPlan], start: datetime, end: datetime, order_by: str | None,
                   written: WrittenRows | None) -> tuple[FleetScope | None, dict[str, tuple[int, ShipTicks]]]:
    """What a running processor's fleet read of ``[start, end)`` takes, and this window's tick signatures.

    The previous cycle read the lookback already: only its ticks whose signature changed, and the
    ticks after it, are read (:mod:`tick_signatures`). None (read it all) for a processor's first
    cycle, a one-shot cycle (no ``written``) or a source without a unique key.
    """
    if written is None or order_by is not None:
        return None, {}
    ship_ids = [p.ship_id for p in plans]
    hashes = ship_hashes(cursor, plans).tolist()
    now = read_signatures(cursor, rt.source.sql, ship_ids, hashes, start, end)
    scope = fleet_scope(written.ticks(), now, hashes, start, end)
    if scope is not None:
        log.debug("fleet read from %s, %d earlier (tick, ship) pair(s) again", scope.fresh_from, len(scope.again))
    return scope, {ship: (h, now[h]) for ship, h in zip(ship_ids, hashes, strict=True)}


FLEET_READ_ROWS = 2_000_000  # narrow rows one fleet read holds at most (about 200 MB with its pivot)
NOMINAL_SAMPLE_SECONDS = 15  # the fleet's sampling interval, used only to size the fleet reads


def _by_size(rt: Runtime, cache: ShipPlanCache, work: list[_ShipWork], span: timedelta) -> list[list[_ShipWork]]:
    """``work`` cut into reads of at most about FLEET_READ_ROWS rows, so memory does not grow with the fleet."""
    with rt.dbs.target.connect() as tconn:
        plans = cache.get_many(tconn, [w.ship_id for w in work])
    ticks = max(span.total_seconds() / NOMINAL_SAMPLE_SECONDS, 1.0)
    out: list[list[_ShipWork]] = [[]]
    rows = 0.0
    for w, plan in zip(work, plans, strict=True):
        ship_rows = len(plan.channels) * ticks
        if out[-1] and rows + ship_rows > FLEET_READ_ROWS:
            out.append([])
            rows = 0.0
        out[-1].append(w)
        rows += ship_rows
    return out


def _write_pieces(rt: Runtime, cache: ShipPlanCache, store: CutoffStore, w: _ShipWork, end: datetime,
                  time_type: str) -> None:
    """One ship on its own, ``[w.start, end)`` in CHUNK_HOURS pieces, the watermark stored after each."""
    for a, b in _pieces(w.start, end, rt.settings.chunk_hours):
        w.add(write_window(rt, cache, w.ship_id, a, b, time_type))
        if b > w.base:
            store.set_watermark(w.ship_id, b)
    w.done = True


def _late_hours(rt: Runtime, cache: ShipPlanCache, clock: SourceClock, w: _ShipWork, c0: datetime,
                c1: datetime) -> None:
    """Re-migrate the hours below the window touched by rows inserted in ``[c0, c1)`` (server_created_time)."""
    with rt.dbs.source.connect() as sconn:
        hours = list(sconn.execute(text(
            f"""SELECT DISTINCT date_trunc('hour', created_time) FROM {rt.source.sql}
                WHERE ship_id = :s AND server_created_time >= :c0 AND server_created_time < :c1
                  AND created_time < :start ORDER BY 1"""),
            {"s": w.ship_id, "c0": c0, "c1": c1, "start": w.start}).scalars())
    for h in hours:
        w.add(write_window(rt, cache, w.ship_id, h, min(h + HOUR, w.start), clock.time_type))
    w.late_hours = len(hours)
    if hours:
        log.info("ship %s: %d late hour(s) re-migrated from the server_created_time cursor (%s .. %s)",
                 w.ship_id, len(hours), hours[0], hours[-1])


def _plan_cycle(rt: Runtime, store: CutoffStore, ships: list[str], now: datetime) -> list[_ShipWork]:
    """Each ship's window start: its watermark (else its cutoff, stored as ``now`` when missing) minus the lookback."""
    states = store.load()
    missing = [s for s in ships if not (states.get(s) and states[s].cutoff)]
    cutoffs = store.ensure_cutoffs(missing, now) if missing else {}
    lookback = timedelta(minutes=rt.settings.realtime_lookback_minutes)
    work = []
    for ship in ships:
        state = states.get(ship)
        base = (state.watermark if state and state.watermark else None) or \
            (state.cutoff if state and state.cutoff else cutoffs[ship])
        work.append(_ShipWork(ship, base, base - lookback))
    return work


def sync_fleet(rt: Runtime, cache: ShipPlanCache, store: CutoffStore, clock: SourceClock, ships: list[str],
               opts: RealtimeOptions, fleet_read: bool, written: WrittenRows | None = None
               ) -> tuple[datetime, list[ShipCycle]]:
    """One realtime cycle over ``ships``; a watermark moves only after its ship's data is committed.

    Ships whose windows start together (the usual case: the previous cycle ended them all at the
    same time) share one source read and one target transaction when ``fleet_read``; a ship behind
    by more than CHUNK_HOURS (an outage) catches up on its own, piece by piece. Returns the
    database time the cycle ran at and one :class:`ShipCycle` per ship.
    """
    started = time.monotonic()
    tz = rt.settings.source_timezone
    with rt.dbs.source.connect() as sconn:
        now = database_now(sconn, clock.time_type, tz)
        ahead = ahead_rows(sconn, rt, ships, now + FUTURE_TOLERANCE)
        server_now = database_now(sconn, clock.server_type, tz) if clock.server_type else None
    for ship, (n, newest) in ahead.items():
        log.warning("ship %s: %d row(s) with created_time up to %s are more than %s ahead of the database's "
                    "time %s; they are not migrated until their time comes (check SOURCE_TIMEZONE and the "
                    "ship's clock)", ship, n, newest, FUTURE_TOLERANCE, now)
    end = now - timedelta(seconds=opts.settle_seconds)
    work = _plan_cycle(rt, store, ships, now)
    groups: dict[datetime, list[_ShipWork]] = {}
    for w in work:
        if fleet_read and timedelta(0) < end - w.start <= timedelta(hours=rt.settings.chunk_hours):
            groups.setdefault(w.start, []).append(w)
    for start, members in groups.items():
        for batch in _by_size(rt, cache, members, end - start):
            try:
                write_fleet_window(rt, cache, batch, start, end, clock.time_type, written)
            except RETRYABLE as exc:
                _fail(batch, exc)
    for w in work:
        if not w.done and w.error is None:
            try:
                _write_pieces(rt, cache, store, w, end, clock.time_type)
            except RETRYABLE as exc:
                _fail([w], exc)
    store.advance("watermark", {w.ship_id: end for w in work if w.done and w.error is None and end > w.base})
    if opts.cursor == "server_created_time" and server_now is not None:
        _run_insert_cursor(rt, cache, store, clock, [w for w in work if w.done], server_now, opts)
    return now, _ship_cycles(rt, cache, store, work, now, end, ahead, started)


def _run_insert_cursor(rt: Runtime, cache: ShipPlanCache, store: CutoffStore, clock: SourceClock,
                       work: list[_ShipWork], server_now: datetime, opts: RealtimeOptions) -> None:
    """The server_created_time cursor: late hours of each ship, then the cursors advanced in one write."""
    states = store.load()
    c1 = server_now - timedelta(seconds=opts.settle_seconds)
    for w in work:
        state = states.get(w.ship_id)
        c0 = (state.insert_cursor if state and state.insert_cursor
              else server_now - timedelta(minutes=rt.settings.realtime_lookback_minutes))
        try:
            _late_hours(rt, cache, clock, w, c0, c1)
        except RETRYABLE as exc:
            _fail([w], exc)
    store.advance("insert_cursor", {w.ship_id: c1 for w in work if w.error is None})


def _fail(work: list[_ShipWork], exc: BaseException) -> None:
    line = error_line(exc)
    for w in work:
        w.error = line
        w.done = False  # its transaction, if any, did not commit
    log.warning("realtime cycle failed for %s: %s", ", ".join(w.ship_id for w in work[:5])
                + (" ..." if len(work) > 5 else ""), line)
    log.debug("cycle failure", exc_info=True)


def _ship_cycles(rt: Runtime, cache: ShipPlanCache, store: CutoffStore, work: list[_ShipWork], now: datetime,
                 end: datetime, ahead: dict[str, tuple[int, datetime]], started: float) -> list[ShipCycle]:
    """The cycle's result per ship, with its lag (database now minus the newest wide row)."""
    seconds = round(time.monotonic() - started, 3)
    with rt.dbs.target.connect() as tconn:
        tables = {w.ship_id: [p.table for p in cache.get(tconn, w.ship_id).parts] for w in work}
        newest = newest_wide_times(tconn, rt.settings.target_schema, tables)
    states = store.load()
    out = []
    for w in work:
        if w.error is not None:
            out.append(ShipCycle(w.ship_id, error=w.error, seconds=seconds))
            continue
        t = newest.get(w.ship_id)
        lag = round((now - t).total_seconds(), 3) if t is not None else None
        state = states.get(w.ship_id)
        out.append(ShipCycle(w.ship_id, w.start, end, w.rows, w.cells, w.rejected, w.late_hours,
                             ahead.get(w.ship_id, (0, None))[0], state.watermark if state else None, lag, seconds))
    return out


def run_cycle(rt: Runtime, cache: ShipPlanCache, store: CutoffStore, clock: SourceClock, ships: list[str],
              opts: RealtimeOptions, number: int, fleet_read: bool = True,
              written: WrittenRows | None = None) -> CycleResult:
    """One cycle over ``ships``; a failing ship is reported in its :class:`ShipCycle` and the others go on.

    ``written`` (kept by the processor from cycle to cycle) spares re-merging lookback rows unchanged
    since the previous cycle.
    """
    started = time.monotonic()
    db_time = None
    try:
        db_time, results = sync_fleet(rt, cache, store, clock, ships, opts, fleet_read, written)
    except RETRYABLE as exc:  # the cycle's own statements failed (the database is away, the store is damaged)
        log.warning("realtime cycle failed: %s", error_line(exc))
        log.debug("cycle failure", exc_info=True)
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            rt.dbs.target.dispose()
            rt.dbs.source.dispose()
        results = [ShipCycle(ship, error=error_line(exc), seconds=round(time.monotonic() - started, 3))
                   for ship in ships]
    if any(r.error for r in results):
        rt.dbs.target.dispose()  # a connection may be broken: the next cycle starts on new ones
        rt.dbs.source.dispose()
    for res in results:
        log.debug("ship %s: window %s .. %s, %d rows read, %d cells written, lag %s s", res.ship_id,
                  res.window_start, res.window_end, res.rows_read, res.cells_written, res.lag_seconds)
    cycle = CycleResult(number, db_time, tuple(results), round(time.monotonic() - started, 3))
    lags = [s.lag_seconds for s in results if s.lag_seconds is not None]
    log.info("realtime cycle %d: %d ship(s), %s rows read, %s cells written, max lag %s, %.2f s%s", number,
             len(ships), f"{cycle.rows_read:,}", f"{sum(s.cells_written for s in results):,}",
             f"{max(lags):.1f} s" if lags else "-", cycle.seconds,
             "" if cycle.ok else f", {sum(1 for s in results if s.error)} ship(s) failed")
    return cycle


# ----------------------------------------------------------------------------------------------
# the loop


def source_clock(rt: Runtime) -> SourceClock:
    """Read the source's time types once."""
    with rt.dbs.source.connect() as conn:
        cols = rt.source.columns(conn)
    return SourceClock(cols["created_time"], cols.get("server_created_time"))


def run_realtime(rt: Runtime, ship_ids: tuple[str, ...] = (), opts: RealtimeOptions = RealtimeOptions(),
                 stop: threading.Event | None = None,
                 on_cycle: Callable[[CycleResult], None] | None = None,
                 memory: ProcessorMemory | None = None) -> RealtimeResult:
    """``--mode realtime``: run cycles until ``--once``, ``--run-for``, ``max_cycles`` or a stop signal.

    ``on_cycle`` is called after every cycle (the strategies use it to see realtime catch up).
    ``memory`` is what the processor keeps from cycle to cycle (a new one when not given): a caller
    that runs one cycle at a time in one process may pass the same object each time.

    A failed cycle never ends the long-lived loop: it is logged and retried with backoff (the
    connections are re-made); with ``once`` the result reports it and the CLI exits non-zero.
    """
    if opts.cursor not in CURSORS:
        raise MigratorError(f"unknown realtime cursor {opts.cursor!r}; use one of {', '.join(CURSORS)}")
    ships = resolve_ships(rt, ship_ids)
    clock = source_clock(rt)
    if opts.cursor == "server_created_time" and clock.server_type is None:
        raise MigratorError(f"the source {rt.source.label} has no server_created_time column; "
                            "use the default created_time cursor")
    stop = stop or threading.Event()
    store = CutoffStore(rt.settings.cutoff_file)
    store.check_writable()  # before any wide row is written: a watermark that cannot be stored stops us now
    locks = ShipLocks(rt.dbs.target, rt.settings.target_schema, ships)
    locks.acquire(wait=opts.wait_for_lock)
    fleet_read = fleet_read_pays(rt, ships)
    memory = memory if memory is not None else ProcessorMemory()
    memory.plans = memory.plans or ShipPlanCache(rt)
    loop = _RealtimeLoop(rt, memory.plans, store, clock, ships, opts, stop, fleet_read, memory.written, on_cycle,
                         time.monotonic() + opts.run_for if opts.run_for is not None else None)
    try:
        loop.run(locks)
    finally:
        locks.release()
    return RealtimeResult(
        cycles=loop.cycles, failed_cycles=loop.failures, rows_read=loop.rows, cells_written=loop.cells,
        stopped_because=loop.reason, last=loop.last)


@dataclass
class _RealtimeLoop:
    """The cycles of one :func:`run_realtime` call and what they add up to."""

    rt: Runtime
    cache: ShipPlanCache
    store: CutoffStore
    clock: SourceClock
    ships: list[str]
    opts: RealtimeOptions
    stop: threading.Event
    fleet_read: bool
    written: WrittenRows
    on_cycle: Callable[[CycleResult], None] | None
    deadline: float | None
    last: CycleResult | None = None
    cycles: int = 0
    failures: int = 0
    consecutive: int = 0
    rows: int = 0
    cells: int = 0
    reason: str = "once"

    def _sleep(self, wait: float) -> str | None:
        """Wait ``wait`` seconds: the reason to stop (a signal, ``--run-for`` over), or None to go on."""
        if self.stop.wait(wait):
            return "signal"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "run-for"
        return None

    def _locks_lost(self, exc: BaseException) -> str | None:
        """The database is away while checking the locks: a failed cycle, retried after a backoff."""
        self.failures += 1
        self.consecutive += 1
        wait = backoff_delay(self.consecutive, 1.0, 60.0)
        log.warning("cannot take the realtime locks (%s); retrying in %.1f s (%d failed cycle(s) "
                    "in a row)", error_line(exc), wait, self.consecutive)
        if self.opts.once:
            raise exc
        return self._sleep(wait)

    def _count(self, cycle: CycleResult) -> None:
        self.last = cycle
        self.cycles += 1
        self.rows += cycle.rows_read
        self.cells += sum(s.cells_written for s in cycle.ships)
        if self.on_cycle is not None:
            self.on_cycle(cycle)
        if not cycle.ok:
            self.failures += 1
            self.consecutive += 1
        else:
            self.consecutive = 0

    def _next_wait(self, cycle: CycleResult) -> float:
        wait = self.opts.interval_minutes * 60 - cycle.seconds
        if self.consecutive:
            wait = max(wait, backoff_delay(self.consecutive, 1.0, 60.0))
            log.warning("retrying in %.1f s (%d failed cycle(s) in a row)", wait, self.consecutive)
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
        return max(wait, 0.0)

    def run(self, locks: ShipLocks) -> None:
        """Cycles until ``once``, ``max_cycles``, ``--run-for`` or a stop signal; :attr:`reason` says which."""
        opts = self.opts
        while True:
            try:
                locks.check()
            except DATABASE_ERRORS as exc:  # the database is away: a failed cycle
                reason = self._locks_lost(exc)
                if reason is not None:
                    self.reason = reason
                    return
                continue
            cycle = run_cycle(self.rt, self.cache, self.store, self.clock, self.ships, opts, self.cycles + 1,
                              self.fleet_read, self.written)
            self._count(cycle)
            if opts.once:
                self.reason = "once"
                return
            if opts.max_cycles is not None and self.cycles >= opts.max_cycles:
                self.reason = "max-cycles"
                return
            reason = self._sleep(self._next_wait(cycle))
            if reason is not None:
                self.reason = reason
                return

