"""Throttling and pausing of the backfill, checked between blocks and before each chunk.

Three brakes, one gate: a cap on narrow rows per second over all workers of a run (the workers'
reservations share one schedule), a throttle query run on the source in a read-only transaction
(``--throttle-query``, or the built-in ``--max-source-active``), and the pause flags of the target
(``--mode pause``). A rate cap waits in place, between blocks, when its turn comes within a second; a longer
wait, a throttle or a pause ends the chunk at the next block boundary (what was written commits
with its ledger row) and the worker holds outside any transaction, so that a held backfill keeps
no snapshot open on the live source.
Realtime is never throttled: freshness comes first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.common.errors import ConfigError, error_line, one_line
from narrow2wide.common.retry import DATABASE_ERRORS
from narrow2wide.db.database import APP_NAME
from narrow2wide.db.runtime import Runtime
from narrow2wide.store.chunk_ledger import worker_name
from narrow2wide.store.hold_log import PAUSED, RATE_CAPPED, REASONS, THROTTLED, HoldLog
from narrow2wide.store.pause_flags import PauseFlags, paused_since

if TYPE_CHECKING:  # the shared counter's type; the module itself loads ctypes
    import multiprocessing.sharedctypes

log = logging.getLogger("throttle")

QUERY_TIMEOUT_MS = 5000  # a throttle query slower than this fails (and holds the backfill)
RECORD_EVERY = 5.0  # seconds between writes of a lasting hold to the hold log
WAIT_IN_TRANSACTION = 1.0  # a rate-cap turn further off than this ends the chunk and waits outside it

ACTIVE_SESSIONS_SQL = f"""SELECT count(*) > CAST(:n AS integer) FROM pg_stat_activity
    WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
    AND coalesce(application_name, '') NOT LIKE '{APP_NAME}%'"""
CAN_SEE_SESSIONS_SQL = """SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
    FROM pg_roles WHERE rolname = current_user"""


@dataclass(frozen=True)
class ThrottleSettings:
    """How hard a backfill may press on the source (every field off by default)."""

    max_rows_per_second: float | None = None
    throttle_query: str | None = None
    max_source_active: int | None = None
    check_seconds: float = 2.0  # how often the throttle query (or the session count) runs
    pause_check_seconds: float = 1.0  # how often the pause flags are read


def _wrapped(query: str) -> str:
    """The throttle query as one SELECT whose answer is: does any row's first column say true?

    As a sub-select in FROM it can only be a query (no data-modifying statement, no second
    statement); the transaction it runs in is read-only as well.
    """
    body = query.strip().rstrip(";").strip()
    if not body:
        raise ConfigError("--throttle-query is empty; give a SELECT that returns true while the backfill should hold")
    if ";" in body:
        raise ConfigError("--throttle-query must be one statement (no ';' inside it)")
    # the newline ends a trailing -- comment of the operator's query before the wrapper's parenthesis
    return f"SELECT coalesce(bool_or(q.hold), false) FROM ({body}\n) AS q(hold)"


def run_throttle_query(conn: Connection, query: str, params: dict | None = None) -> bool:
    """Run ``query`` (already wrapped) in a read-only transaction of its own; True while it says hold.

    Without ``params`` the query goes to the driver as it is (no bind-parameter parsing of the
    operator's text); the connection is dropped afterwards, so that nothing the query left in its
    session (an advisory lock, a setting) reaches the pooled connections the backfill reads on.
    """
    try:
        with conn.begin() as tx:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}")
            if params is None:
                # no_parameters: a % in the operator's SQL (LIKE 'etl%', x % 2) is not a placeholder
                held = bool(conn.execution_options(no_parameters=True).exec_driver_sql(query).scalar())
            else:
                held = bool(conn.execute(text(query), params).scalar())
            tx.rollback()
    finally:
        if params is None:
            conn.invalidate()
    return held


def check_throttle(rt: Runtime, settings: ThrottleSettings) -> None:
    """Refuse a throttle query that fails, is not read-only or does not answer a boolean (exit 2).

    Run once before anything starts, on the source, in a read-only transaction that rolls back.
    """
    if settings.max_source_active is not None:
        with rt.dbs.source.connect() as conn:
            if not conn.execute(text(CAN_SEE_SESSIONS_SQL)).scalar():
                raise ConfigError("--max-source-active needs a role that sees every session's state: "
                                  "GRANT pg_read_all_stats TO the tool's role on the source (or use --throttle-query)")
    if settings.throttle_query is None:
        return
    query = _wrapped(settings.throttle_query)
    try:
        with rt.dbs.source.connect() as conn:
            run_throttle_query(conn, query)
    except DATABASE_ERRORS as exc:
        code = getattr(getattr(exc, "orig", None), "pgcode", None)
        why = ("it is not read-only" if code == "25006"
               else "its first column must be a boolean" if code == "42883" and "bool_or" in str(exc)
               else "it failed")
        raise ConfigError(f"--throttle-query refused: {why} ({one_line(exc)}); give one read-only SELECT whose "
                          "first column is true while the backfill should hold") from exc


class RateCap:
    """At most ``rows_per_second`` narrow rows per second over every worker sharing ``slot``.

    Each block reserves the next ``rows / rate`` seconds of one shared schedule (a
    ``multiprocessing.Value`` for worker processes; a local one otherwise) and waits for its turn.
    The schedule is on ``time.monotonic``, one clock for every process of a host.
    """

    def __init__(self, rows_per_second: float, slot: multiprocessing.sharedctypes.Synchronized | None = None):
        if rows_per_second <= 0:
            raise ConfigError("--max-rows-per-second must be more than 0")
        self.rate = float(rows_per_second)
        self._slot = slot
        self._local = 0.0
        self._lock = threading.Lock()

    def reserve(self, rows: int, began: float) -> float:
        """Reserve the time of ``rows`` rows whose work began at ``began``; returns when the turn ends."""
        lock = self._slot.get_lock() if self._slot is not None else self._lock
        with lock:
            current = self._slot.value if self._slot is not None else self._local
            turn = max(current, began) + rows / self.rate
            if self._slot is not None:
                self._slot.value = turn
            else:
                self._local = turn
        return turn


@dataclass
class _Hold:
    """The hold in progress: its reason, when it began and when it was last written."""

    reason: str
    began: float
    recorded: float
    logged_at: float = field(default=0.0)


class BackfillGate:
    """What a backfill worker asks between blocks and before each chunk: go on, wait, or hold.

    ``stop`` ends any wait. Held seconds per reason add up in :attr:`seconds` and in the hold log
    of the target (``run_id``), where ``status`` and the run's metrics read them.
    """

    def __init__(self, rt: Runtime, settings: ThrottleSettings, run_id: str, stop: threading.Event | None = None,
                 rate_slot: multiprocessing.sharedctypes.Synchronized | None = None):
        self.rt = rt
        self.settings = settings
        self.run_id = run_id
        self.stop = stop or threading.Event()
        self.cap = RateCap(settings.max_rows_per_second, rate_slot) if settings.max_rows_per_second else None
        self.seconds: dict[str, float] = dict.fromkeys(REASONS, 0.0)
        self._query = _wrapped(settings.throttle_query) if settings.throttle_query else None
        self._flags: tuple[float, dict] = (-1e18, {})
        self._throttled: tuple[float, bool] = (-1e18, False)
        self._turn = 0.0  # the end of this worker's last reservation
        self._began = time.monotonic()  # when the work now being done began
        self._hold: _Hold | None = None
        self._unrecorded = dict.fromkeys(REASONS, 0.0)
        self._recorded_at = time.monotonic()
        self._log = HoldLog(rt.settings.target_schema)
        self._worker = worker_name()

    # -- what holds ------------------------------------------------------------------------------

    def paused_flags(self) -> dict:
        """The pause flags (read at most every ``pause_check_seconds``)."""
        at, flags = self._flags
        if time.monotonic() - at >= self.settings.pause_check_seconds:
            try:
                with self.rt.dbs.target.connect() as conn:
                    flags = PauseFlags(self.rt.settings.target_schema).active(conn)
            except DATABASE_ERRORS as exc:  # the flags as last read; the chunk's own work will meet the outage
                log.warning("could not read the pause flags (%s); going by the last ones read", error_line(exc))
            self._flags = (time.monotonic(), flags)
        return flags

    def throttled(self) -> bool:
        """True while the throttle query (or the session count) says hold; checked every ``check_seconds``.

        A check that fails holds too (and says so): a source too busy to answer is no place to read from.
        """
        if self._query is None and self.settings.max_source_active is None:
            return False
        at, held = self._throttled
        if time.monotonic() - at < self.settings.check_seconds:
            return held
        try:
            held = False
            if self.settings.max_source_active is not None:
                with self.rt.dbs.source.connect() as conn:
                    held = run_throttle_query(conn, ACTIVE_SESSIONS_SQL, {"n": self.settings.max_source_active})
            if not held and self._query is not None:
                with self.rt.dbs.source.connect() as conn:  # dropped after the query (see run_throttle_query)
                    held = run_throttle_query(conn, self._query)
        except DATABASE_ERRORS as exc:
            log.warning("the throttle check failed (%s); holding the backfill until it answers", error_line(exc))
            held = True
        self._throttled = (time.monotonic(), held)
        return held

    def reason(self, ship_ids: list[str]) -> tuple[str | None, list[str]]:
        """Why to hold now (None to go on), and the ships of ``ship_ids`` not paused."""
        flags = self.paused_flags()
        active = [s for s in ship_ids if paused_since(flags, s) is None]
        if not active:
            return PAUSED, []
        return (THROTTLED if self.throttled() else None), active

    # -- between blocks --------------------------------------------------------------------------

    def for_ship(self, ship_id: str) -> Callable[[int, bool], bool]:
        """The callback a window's block loop calls after each block: ``(rows, last) -> end the window here``."""
        def after_block(rows: int, last: bool) -> bool:
            self.take_turn(rows)
            if last:
                return False
            if self._turn - time.monotonic() > WAIT_IN_TRANSACTION:
                return True  # a long turn: end the chunk here, wait outside its transaction
            self._wait_turn()
            return self.reason([ship_id])[0] is not None
        return after_block

    def take_turn(self, rows: int) -> None:
        """Reserve ``rows`` under the rate cap (the wait comes after: in place, or before the next chunk)."""
        if self.cap is not None and rows:
            self._turn = self.cap.reserve(rows, self._began)
        self._began = time.monotonic()
        self._maybe_record()

    def _wait_turn(self) -> None:
        began = time.monotonic()
        if self._turn > began:
            self.stop.wait(self._turn - began)
            self._add(RATE_CAPPED, time.monotonic() - began)
        self._began = time.monotonic()

    # -- between chunks --------------------------------------------------------------------------

    def hold(self, ship_ids: list[str]) -> list[str]:
        """Wait while every ship of ``ship_ids`` is paused or the source is throttled; the ships to work on.

        Returns an empty list only when ``stop`` was set. Waits for the rate cap's turn first.
        """
        self._wait_turn()
        while not self.stop.is_set():
            why, active = self.reason(ship_ids)
            if why is None:
                self._end_hold()
                self._began = time.monotonic()
                return active
            self._holding(why)
            self.stop.wait(min(self.settings.pause_check_seconds, self.settings.check_seconds, 0.5))
        self._end_hold()
        return []

    def _holding(self, reason: str) -> None:
        now = time.monotonic()
        if self._hold is not None and self._hold.reason != reason:
            self._end_hold()
        if self._hold is None:
            self._hold = _Hold(reason, now, now)
            log.info("backfill held: %s", "paused (--mode resume continues it)" if reason == PAUSED
                     else "the source is busy (throttle)")
            self._record(reason, 0.0, holding=True)
        elif now - self._hold.recorded >= RECORD_EVERY:
            self._add(reason, now - self._hold.recorded)
            self._hold.recorded = now
            self._record(reason, self._take(reason), holding=True)

    def _end_hold(self) -> None:
        if self._hold is None:
            return
        hold, self._hold = self._hold, None
        now = time.monotonic()
        self._add(hold.reason, now - hold.recorded)
        log.info("backfill goes on after %.1f s %s", now - hold.began, hold.reason)
        self._record(hold.reason, self._take(hold.reason), holding=False)

    # -- accounting ------------------------------------------------------------------------------

    def _add(self, reason: str, seconds: float) -> None:
        self.seconds[reason] += seconds
        self._unrecorded[reason] += seconds

    def _take(self, reason: str) -> float:
        seconds, self._unrecorded[reason] = self._unrecorded[reason], 0.0
        return seconds

    def _maybe_record(self) -> None:
        if self._unrecorded[RATE_CAPPED] and time.monotonic() - self._recorded_at >= RECORD_EVERY:
            self._record(RATE_CAPPED, self._take(RATE_CAPPED), holding=False)

    def _record(self, reason: str, seconds: float, holding: bool) -> None:
        self._recorded_at = time.monotonic()
        try:
            with self.rt.dbs.target.begin() as conn:  # the table is made before the workers start
                self._log.record(conn, self.run_id, self._worker, reason, seconds, holding)
        except DATABASE_ERRORS as exc:  # the figures are kept in memory and written with the next record
            self._unrecorded[reason] += seconds
            log.warning("could not record the backfill's hold (%s)", error_line(exc))

    def close(self) -> None:
        """End a hold in progress and write what is not written yet."""
        self._end_hold()
        if self._unrecorded[RATE_CAPPED]:
            self._record(RATE_CAPPED, self._take(RATE_CAPPED), holding=False)
