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
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg2
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from cutoff_store import CutoffStore
from data_migrator import database_now, newest_wide_time, resolve_ships
from errors import LockHeld, MigratorError
from pivot import PivotPlan
from runtime import Runtime
from stopping import stop_on_signals
from window_migrator import ShipPlanCache, UnknownChannels, WindowResult, migrate_window

log = logging.getLogger(__name__)

CURSORS = ("created_time", "server_created_time")
FUTURE_TOLERANCE = timedelta(minutes=5)  # newer created_time than now + this is reported as ahead
HOUR = timedelta(hours=1)
# what a cycle (or a streaming step) survives: logged, the connections re-made, tried again later
# (ValueError: a value the pivot could not encode; the backfill counts it as a chunk failure too)
RETRYABLE = (MigratorError, DBAPIError, SQLAlchemyError, psycopg2.Error, OSError, ValueError)


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
    install_signal_handlers: bool = True


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


def _lock_key(schema: str, ship_id: str) -> str:
    return f"migrator-realtime:{schema}:{ship_id}"


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
                key = _lock_key(self.schema, ship)
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
        except (SQLAlchemyError, psycopg2.Error):
            log.warning("the connection holding the realtime locks was lost; taking them again")
            self.release()
        self.acquire(wait=False)

    def release(self) -> None:
        """Give the locks back: the connection is closed for real, not returned to the pool with them."""
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except (SQLAlchemyError, psycopg2.Error):
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
    for attempt in (1, 2):
        try:
            with rt.dbs.source.connect() as sconn:
                sconn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
                with rt.dbs.target.begin() as tconn:
                    plan: PivotPlan = cache.get(tconn, ship_id)
                    tconn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                                  {"k": f"migrator-write:{rt.settings.target_schema}:{ship_id}"})
                    return migrate_window(rt, sconn, tconn, plan, start, end)
        except UnknownChannels as exc:
            if attempt == 2:
                raise
            log.info("ship %s: %d new channel(s) (%s); adding columns", ship_id, len(exc.channels),
                     ", ".join(exc.channels[:5]))
            cache.ensure_channels(ship_id, time_type)
    raise AssertionError("unreachable")


def _pieces(start: datetime, end: datetime, hours: int) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut into pieces of at most ``hours`` (a long outage is caught up piece by piece)."""
    step = timedelta(hours=hours)
    out = []
    while start < end:
        out.append((start, min(start + step, end)))
        start = out[-1][1]
    return out


def sync_ship(rt: Runtime, cache: ShipPlanCache, store: CutoffStore, clock: SourceClock, ship_id: str,
              opts: RealtimeOptions) -> ShipCycle:
    """One realtime cycle for one ship; the watermark moves only after its data is committed."""
    started = time.monotonic()
    tz = rt.settings.source_timezone
    src = rt.source.sql
    with rt.dbs.source.connect() as sconn:
        now = database_now(sconn, clock.time_type, tz)
        limit = now + FUTURE_TOLERANCE
        ahead, ahead_max = sconn.execute(text(
            f"SELECT count(*), max(created_time) FROM {src} WHERE created_time >= :lim AND ship_id = :s"),
            {"lim": limit, "s": ship_id}).one()
        server_now = database_now(sconn, clock.server_type, tz) if clock.server_type else None
    if ahead:
        log.warning("ship %s: %d row(s) with created_time up to %s are more than %s ahead of the database's "
                    "time %s; they are not migrated until their time comes (check SOURCE_TIMEZONE and the "
                    "ship's clock)", ship_id, ahead, ahead_max, FUTURE_TOLERANCE, now)
    state = store.get(ship_id)
    cutoff = state.cutoff if state and state.cutoff else store.ensure_cutoff(ship_id, now)[0]
    base = state.watermark if state and state.watermark else cutoff
    start = base - timedelta(minutes=rt.settings.realtime_lookback_minutes)
    end = now - timedelta(seconds=opts.settle_seconds)
    rows = cells = rejected = 0
    for a, b in _pieces(start, end, rt.settings.chunk_hours):
        result = write_window(rt, cache, ship_id, a, b, clock.time_type)
        rows += result.rows_read
        cells += result.cells_written
        rejected += result.rejected
        if b > base:
            store.set_watermark(ship_id, b)

    late_hours = 0
    if opts.cursor == "server_created_time" and server_now is not None:
        c0 = (state.insert_cursor if state and state.insert_cursor
              else server_now - timedelta(minutes=rt.settings.realtime_lookback_minutes))
        c1 = server_now - timedelta(seconds=opts.settle_seconds)
        with rt.dbs.source.connect() as sconn:
            hours = list(sconn.execute(text(
                f"""SELECT DISTINCT date_trunc('hour', created_time) FROM {src}
                    WHERE ship_id = :s AND server_created_time >= :c0 AND server_created_time < :c1
                      AND created_time < :start ORDER BY 1"""),
                {"s": ship_id, "c0": c0, "c1": c1, "start": start}).scalars())
        for h in hours:
            result = write_window(rt, cache, ship_id, h, min(h + HOUR, start), clock.time_type)
            rows += result.rows_read
            cells += result.cells_written
            rejected += result.rejected
        late_hours = len(hours)
        if hours:
            log.info("ship %s: %d late hour(s) re-migrated from the server_created_time cursor (%s .. %s)",
                     ship_id, len(hours), hours[0], hours[-1])
        store.set_insert_cursor(ship_id, c1)

    with rt.dbs.target.connect() as tconn:
        plan = cache.get(tconn, ship_id)
        newest = newest_wide_time(tconn, rt.settings.target_schema, {p.table: 0 for p in plan.parts})
    lag = (now - newest).total_seconds() if newest is not None else None
    stored = store.get(ship_id)
    return ShipCycle(ship_id, start, end, rows, cells, rejected, late_hours, int(ahead),
                     stored.watermark if stored else None,
                     round(lag, 3) if lag is not None else None, round(time.monotonic() - started, 3))


def error_line(exc: BaseException) -> str:
    """``exc`` as ``Type: first line`` (the driver's error for a database error), for logs and results."""
    orig = getattr(exc, "orig", None)
    first = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig if orig is not None else exc).__name__}: {first[0] if first else ''}"


def run_cycle(rt: Runtime, cache: ShipPlanCache, store: CutoffStore, clock: SourceClock, ships: list[str],
              opts: RealtimeOptions, number: int) -> CycleResult:
    """One cycle over ``ships``; a failing ship is reported in its :class:`ShipCycle` and the others go on."""
    started = time.monotonic()
    results = []
    db_time = None
    for ship in ships:
        try:
            res = sync_ship(rt, cache, store, clock, ship, opts)
            db_time = res.window_end
        except RETRYABLE as exc:
            log.warning("ship %s: realtime cycle failed: %s", ship, error_line(exc))
            log.debug("cycle failure", exc_info=True)
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                rt.dbs.target.dispose()
                rt.dbs.source.dispose()
            res = ShipCycle(ship, error=error_line(exc), seconds=round(time.monotonic() - started, 3))
        results.append(res)
        log.debug("ship %s: window %s .. %s, %d rows read, %d cells written, lag %s s, %.2f s", ship,
                  res.window_start, res.window_end, res.rows_read, res.cells_written, res.lag_seconds, res.seconds)
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
                 on_cycle: Callable[[CycleResult], None] | None = None) -> RealtimeResult:
    """``--mode realtime``: run cycles until ``--once``, ``--run-for``, ``max_cycles`` or a stop signal.

    ``on_cycle`` is called after every cycle (the strategies use it to see realtime catch up).

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
    cache = ShipPlanCache(rt)
    locks = ShipLocks(rt.dbs.target, rt.settings.target_schema, ships)
    locks.acquire(wait=opts.wait_for_lock)
    deadline = time.monotonic() + opts.run_for if opts.run_for is not None else None
    last: CycleResult | None = None
    cycles = failures = consecutive = rows = cells = 0
    reason = "once"
    try:
        with (stop_on_signals(stop) if opts.install_signal_handlers else nullcontext(stop)):
            while True:
                try:
                    locks.check()
                except (SQLAlchemyError, psycopg2.Error) as exc:  # the database is away: a failed cycle
                    failures += 1
                    consecutive += 1
                    wait = min(2.0 ** (consecutive - 1), 60.0)
                    log.warning("cannot take the realtime locks (%s); retrying in %.1f s (%d failed cycle(s) "
                                "in a row)", error_line(exc), wait, consecutive)
                    if opts.once:
                        raise
                    if stop.wait(wait):
                        reason = "signal"
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        reason = "run-for"
                        break
                    continue
                cycle = last = run_cycle(rt, cache, store, clock, ships, opts, cycles + 1)
                cycles += 1
                rows += cycle.rows_read
                cells += sum(s.cells_written for s in cycle.ships)
                if on_cycle is not None:
                    on_cycle(cycle)
                if not cycle.ok:
                    failures += 1
                    consecutive += 1
                else:
                    consecutive = 0
                if opts.once:
                    reason = "once"
                    break
                if opts.max_cycles is not None and cycles >= opts.max_cycles:
                    reason = "max-cycles"
                    break
                wait = opts.interval_minutes * 60 - cycle.seconds
                if consecutive:
                    wait = max(wait, min(2.0 ** (consecutive - 1), 60.0))
                    log.warning("retrying in %.1f s (%d failed cycle(s) in a row)", wait, consecutive)
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                if stop.wait(max(wait, 0.0)):
                    reason = "signal"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    reason = "run-for"
                    break
    finally:
        locks.release()
    return RealtimeResult(
        cycles=cycles, failed_cycles=failures, rows_read=rows, cells_written=cells, stopped_because=reason,
        last=last)

