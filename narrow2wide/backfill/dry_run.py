"""``--dry-run``: what a backfill would do, per ship, and how long it would take; writes nothing.

The plan comes from the same rules the run uses (the stored or given cutoff, the ledger's chunks,
:func:`chunk_ledger.new_windows` for the chunks a run would add). The estimate of rows and time
comes from a short measured sample: a few minutes of each ship's history to do, read and pivoted
exactly as the backfill does (nothing is written). No ledger row, table, cutoff or state file is
made: every read is a read, and the cutoff store is only peeked at.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from narrow2wide.backfill.runner import BackfillOptions, parse_cutoff
from narrow2wide.db.catalogue import database_now, resolve_ships
from narrow2wide.db.database import raw_cursor
from narrow2wide.db.narrow_source import begin_snapshot_read, ship_read_settings
from narrow2wide.db.runtime import Runtime
from narrow2wide.engine.pivot import pivot, read_window
from narrow2wide.engine.window_migrator import ShipPlanCache
from narrow2wide.ops.throttle import check_throttle
from narrow2wide.store.chunk_ledger import DONE, FAILED, PENDING, RUNNING, ChunkLedger, new_windows
from narrow2wide.store.cutoff_store import CutoffStore, cutoff_conflicts

log = logging.getLogger("dry_run")

SAMPLE = timedelta(minutes=10)  # each sample window
SAMPLES = 3  # sample windows per ship: in its oldest, middle and newest window to do


@dataclass(frozen=True)
class ShipPlan:
    """What the backfill would do for one ship."""

    ship_id: str
    cutoff: datetime | None
    cutoff_from: str  # "stored", "given" or "database now" (what a run would store)
    first_time: datetime | None
    chunks_done: int
    chunks_to_do: int  # pending and running chunks of the ledger plus the chunks a run would add
    chunks_new: int
    chunks_failed: int  # run again only with --retry-failed
    hours_to_do: float
    sample_rows: int
    estimated_rows: int
    note: str | None = None


@dataclass(frozen=True)
class BackfillPlan:
    """``--dry-run``: the plan of every ship, and the estimate of rows and time."""

    mode: str
    database_time: datetime
    chunk_hours: int
    workers: int
    ships: tuple[ShipPlan, ...]
    estimated_rows: int
    sample_rows_per_second: float
    eta_seconds: float | None
    realtime_from_cutoff: bool  # concurrent and hybrid also start realtime at the cutoff
    writes: str = "nothing (dry run)"


def _cutoff(store: dict, ship: str, given: datetime | None, now: datetime,
            force: bool) -> tuple[datetime, str, str | None]:
    """The cutoff a run would use, where it comes from, and a note when the run would refuse it."""
    stored = store[ship].cutoff if ship in store else None
    if given is None:
        return (stored, "stored", None) if stored is not None else (now, "database now", None)
    if cutoff_conflicts(stored, given, force):
        return stored, "stored", f"--cutoff-time {given} differs from the stored {stored}: the run stops (--force)"
    return given, "given", None


def _samples(windows: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Up to :data:`SAMPLES` windows of :data:`SAMPLE`, ending in the middle of the oldest, middle and newest window."""
    if not windows:
        return []
    picks = sorted({0, len(windows) // 2, len(windows) - 1})[:SAMPLES]
    out = []
    for i in picks:
        a, b = windows[i]
        mid = a + (b - a) / 2
        out.append((max(a, mid - SAMPLE / 2), min(b, mid + SAMPLE / 2)))
    return out


def _sample(rt: Runtime, sconn: Connection, cache: ShipPlanCache, tconn: Connection, ship: str,
            windows: list[tuple[datetime, datetime]]) -> tuple[int, float, float]:
    """(rows, span seconds, read and pivot seconds) of the ship's sample windows."""
    plan = cache.get(tconn, ship)
    rows, span, spent = 0, 0.0, 0.0
    cursor = raw_cursor(sconn)
    order_by = rt.source.duplicate_order(sconn)
    with ship_read_settings(cursor):
        for a, b in _samples(windows):
            t0 = time.monotonic()
            batch = read_window(cursor, rt.source.sql, plan, a, b, order_by)
            rows += pivot(plan, batch).rows_read
            spent += time.monotonic() - t0
            span += (b - a).total_seconds()
    return rows, span, spent


def plan_ship(rt: Runtime, sconn: Connection, tconn: Connection, cache: ShipPlanCache, ship: str,
              cutoff: tuple[datetime, str, str | None], hours: int, has_ledger: bool) -> tuple[ShipPlan, float]:
    """The plan of one ship, and the seconds its sample took to read and pivot."""
    ledger = ChunkLedger(rt.settings.target_schema)
    first = rt.source.first_time(sconn, ship, rt.source.channels(sconn, ship))
    counts = ledger.counts(tconn, [ship]).get(ship, {}) if has_ledger else {}
    lo, hi = ledger.span(tconn, ship) if has_ledger else (None, None)
    planned = ledger.open_windows(tconn, ship) if has_ledger else []
    added = new_windows(lo, hi, first, cutoff[0], hours) if first is not None and first < cutoff[0] else []
    todo = sorted(planned + added)
    hours_to_do = sum((b - a).total_seconds() for a, b in todo) / 3600
    rows, span, spent = _sample(rt, sconn, cache, tconn, ship, todo)
    estimate = round(rows / span * hours_to_do * 3600) if span else 0
    plan = ShipPlan(ship, cutoff[0], cutoff[1], first, counts.get(DONE, 0),
                    counts.get(PENDING, 0) + counts.get(RUNNING, 0) + len(added), len(added),
                    counts.get(FAILED, 0), round(hours_to_do, 2), rows, estimate, cutoff[2])
    return plan, spent


def plan_backfill(rt: Runtime, ship_ids: tuple[str, ...] = (), opts: BackfillOptions | None = None,
                  mode: str = "migration-only") -> BackfillPlan:
    """``--dry-run`` of ``mode`` (migration-only, concurrent, hybrid): the plan and its estimate; writes nothing."""
    opts = opts or BackfillOptions()
    check_throttle(rt, opts.throttle)  # a bad throttle query is refused in a dry run too
    ships = resolve_ships(rt, ship_ids)
    hours = opts.chunk_hours or rt.settings.chunk_hours
    store = CutoffStore(rt.settings.cutoff_file).peek()
    cache = ShipPlanCache(rt)
    plans, rows, spent = [], 0, 0.0
    with rt.dbs.source.connect() as sconn, rt.dbs.target.connect() as tconn:
        time_type = rt.source.time_type(sconn)
        now = database_now(sconn, time_type, rt.settings.source_timezone)
        sconn.rollback()
        given = parse_cutoff(opts.cutoff_time, time_type, rt.settings.source_timezone) if opts.cutoff_time else None
        has_ledger = ChunkLedger(rt.settings.target_schema).exists(tconn)
        for ship in ships:
            with sconn.begin():
                begin_snapshot_read(sconn)
                plan, seconds = plan_ship(rt, sconn, tconn, cache, ship, _cutoff(store, ship, given, now, opts.force),
                                          hours, has_ledger)
            plans.append(plan)
            rows += plan.sample_rows
            spent += seconds
    rate = rows / spent if spent > 0 else 0.0
    total = sum(p.estimated_rows for p in plans)
    speed = rate * opts.workers
    if opts.throttle.max_rows_per_second:
        speed = min(speed, opts.throttle.max_rows_per_second)
    eta = total / speed if speed > 0 else (0.0 if total == 0 else None)
    log.info("dry run: %d ship(s), about %s rows to move, sample %s rows/s", len(plans), f"{total:,}", f"{rate:,.0f}")
    return BackfillPlan(mode, now, hours, opts.workers, tuple(plans), total, round(rate, 1),
                        round(eta, 1) if eta is not None else None, mode != "migration-only")
