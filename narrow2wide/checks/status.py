"""``--mode status``: per-ship progress from the ledger, the cutoff store and the wide tables (read-only)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from narrow2wide.common.model import ShipSchema
from narrow2wide.db.catalogue import database_now, load_ship_layouts, newest_wide_times, wide_row_count, wide_ships
from narrow2wide.db.runtime import Runtime
from narrow2wide.store.chunk_ledger import DONE, FAILED, PENDING, RUNNING, ChunkLedger
from narrow2wide.store.cutoff_store import CutoffStore, ShipState
from narrow2wide.store.hold_log import HoldLog
from narrow2wide.store.pause_flags import PauseFlags, paused_since


@dataclass(frozen=True)
class ShipStatus:
    """Everything status shows for one ship."""

    ship_id: str
    status: str
    tables: dict[str, int]
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    chunks_pending: int
    chunks_running: int
    percent: float
    rows_read: int
    cells_written: int
    record_count: int
    rejected: int
    cutoff: datetime | None
    watermark: datetime | None
    lag_seconds: float | None
    last_error: str | None
    paused_since: datetime | None = None


@dataclass(frozen=True)
class HoldNow:
    """Backfill workers held right now for one reason."""

    workers: int
    since: datetime


@dataclass(frozen=True)
class StatusReport:
    """``--mode status`` (``--json`` prints exactly these fields; the README lists them)."""

    target_schema: str
    ships: tuple[ShipStatus, ...]
    database_time: datetime | None = None
    paused: dict[str, datetime] = field(default_factory=dict)  # scope (a ship id, or "*": every ship) -> since
    held_seconds: dict[str, float] = field(default_factory=dict)  # reason -> seconds, over every run
    holding_now: dict[str, HoldNow] = field(default_factory=dict)  # reason -> workers held now


def ship_status(ship_id: str, layout: ShipSchema | None, counts: dict[str, int], state: ShipState | None,
                record_count: int, newest: datetime | None, now: datetime, last_error: str | None) -> ShipStatus:
    """The status of one ship from what :func:`migration_status` read for the whole fleet."""
    tables = {p.table: len(p.channels) for p in layout.parts} if layout else {}
    total = sum(counts.get(s, 0) for s in (PENDING, RUNNING, DONE, FAILED))
    watermark = state.watermark if state else None
    lag = None
    if watermark is not None and newest is not None:
        lag = max(0.0, (_as_comparable(now, newest) - newest).total_seconds())
    if total == 0:
        status = "not_started" if not record_count else "realtime_only"
    elif counts.get(FAILED, 0):
        status = "failed"
    elif counts.get(DONE, 0) == total:
        status = "completed"
    else:
        status = "in_progress"
    return ShipStatus(
        ship_id=ship_id, status=status, tables=tables, chunks_total=total, chunks_done=counts.get(DONE, 0),
        chunks_failed=counts.get(FAILED, 0), chunks_pending=counts.get(PENDING, 0),
        chunks_running=counts.get(RUNNING, 0),
        percent=round(100.0 * counts.get(DONE, 0) / total, 1) if total else 0.0,
        rows_read=counts.get("rows_read", 0), cells_written=counts.get("cells_written", 0), record_count=record_count,
        rejected=counts.get("rejected", 0), cutoff=state.cutoff if state else None, watermark=watermark,
        lag_seconds=lag, last_error=last_error if total else None)


def _as_comparable(now: datetime, other: datetime) -> datetime:
    if other.tzinfo is None and now.tzinfo is not None:
        return now.astimezone(timezone.utc).replace(tzinfo=None)
    return now


def migration_status(rt: Runtime, ship_ids: tuple[str, ...] = ()) -> StatusReport:
    """``--mode status``: per ship, tables, chunks, rows, cutoff, watermark, lag, rejects, last error.

    The metadata, the ledger and the cutoff store are read once for the fleet; what is read per
    ship (its wide row count, its newest time, its last error) touches only that ship's rows.
    """
    store = CutoffStore(rt.settings.cutoff_file)
    schema = rt.settings.target_schema
    with rt.dbs.source.connect() as sconn:
        time_type = rt.source.time_type(sconn)
        now = database_now(sconn, time_type, rt.settings.source_timezone)
    states = store.load()
    ledger = ChunkLedger(schema)
    with rt.dbs.target.connect() as conn:
        ships = list(ship_ids or rt.settings.ship_ids) or wide_ships(conn, schema)
        layouts = load_ship_layouts(conn, schema, ships)
        has_ledger = ledger.exists(conn)
        counts = ledger.counts(conn, ships) if has_ledger else {}
        tables = {s: [p.table for p in layouts[s].parts] if s in layouts else [] for s in ships}
        newest = newest_wide_times(conn, schema, {s: tables[s] for s in ships
                                                  if states.get(s) and states[s].watermark})
        report = []
        for ship in ships:
            error = ledger.last_error(conn, ship) if ship in counts else None
            report.append(ship_status(ship, layouts.get(ship), counts.get(ship, {}), states.get(ship),
                                      wide_row_count(conn, schema, tables[ship]), newest.get(ship), now, error))
        flags = PauseFlags(schema).active(conn)
        holds = HoldLog(schema)
        held, holding = holds.totals(conn), holds.holding_now(conn)
    report = [_with_pause(s, paused_since(flags, s.ship_id)) for s in report]
    return StatusReport(schema, tuple(report), now, flags, held,
                        {reason: HoldNow(n, since) for reason, (n, since) in holding.items()})


def _with_pause(ship: ShipStatus, since: datetime | None) -> ShipStatus:
    """``ship`` as paused since ``since`` (its status ``paused`` unless its backfill is complete)."""
    if since is None:
        return ship
    status = ship.status if ship.status == "completed" else "paused"
    return replace(ship, status=status, paused_since=since)


