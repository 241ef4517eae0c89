"""``--mode validate``: prove the wide tables hold exactly the source, per ship and hour bucket.

For every hour that the tool claims is migrated (inside a done backfill chunk, or below the
realtime watermark), the number of narrow rows of mapped channels whose value fits its column
must equal the number of non-NULL wide cells, and the sum of a hash of (channel, time, value as
text) must agree on both sides. Hours still in progress are reported as such. ``--repair``
re-migrates the differing hours (replacing their wide rows) and checks them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.common.fits import value_text_sql
from narrow2wide.db.catalogue import load_ship_layout, resolve_ships
from narrow2wide.db.database import qi, qualified, raw_cursor
from narrow2wide.db.lock_keys import take_write_locks
from narrow2wide.db.narrow_source import begin_snapshot_read, ship_read_settings
from narrow2wide.db.runtime import Runtime
from narrow2wide.engine.pivot import PivotPlan
from narrow2wide.engine.window_migrator import ShipPlanCache, migrate_window
from narrow2wide.store.chunk_ledger import ChunkLedger
from narrow2wide.store.cutoff_store import CutoffStore

log = logging.getLogger("validator")  # the name the log file has always shown
HOUR = timedelta(hours=1)

# the value of a narrow row as its wide column renders it; NULL when the row is rejected
_NARROW_VALUE = value_text_sql()  # from the one rule of what fits (common/fits.py)


@dataclass(frozen=True)
class BucketDiff:
    """One hour whose two sides differ."""

    bucket: datetime
    narrow_rows: int
    wide_cells: int
    values_match: bool


@dataclass(frozen=True)
class ShipValidation:
    """The verdict for one ship."""

    ship_id: str
    ok: bool
    message: str
    checked_buckets: int
    in_progress_buckets: int
    narrow_rows: int
    wide_cells: int
    unmapped_rows: int = 0
    mismatches: tuple[BucketDiff, ...] = ()
    repaired: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class ValidationReport:
    """``--mode validate``."""

    ships: tuple[ShipValidation, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when every checked bucket of every ship matches."""
        return all(s.ok for s in self.ships)


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def claimed_ranges(rt: Runtime, conn: Connection, ship_id: str) -> list[tuple[datetime, datetime]]:
    """The [start, end) ranges the tool claims are migrated: done chunks, then cutoff..watermark."""
    ledger = ChunkLedger(rt.settings.target_schema)
    ranges = ledger.done_windows(conn, ship_id) if ledger.exists(conn) else []
    state = CutoffStore(rt.settings.cutoff_file).get(ship_id)
    if state and state.cutoff and state.watermark and state.watermark > state.cutoff:
        ranges.append((state.cutoff, state.watermark))
    if state and state.stream_cursor:  # streaming: everything from the ship's first row up to its cursor
        with rt.dbs.source.connect() as sconn:
            first = rt.source.first_time(sconn, ship_id, rt.source.channels(sconn, ship_id))
        if first is not None and first < state.stream_cursor:
            ranges.append((first, state.stream_cursor))
    ranges.sort()
    merged: list[tuple[datetime, datetime]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _buckets(ranges: list[tuple[datetime, datetime]]) -> tuple[list[datetime], int]:
    """Whole hours inside the ranges, and the number of hours only partly covered."""
    full, partial = [], set()
    for a, b in ranges:
        h = _floor_hour(a)
        while h < b:
            if h >= a and h + HOUR <= b:
                full.append(h)
            else:
                partial.add(h)
            h += HOUR
    full_set = set(full)
    return sorted(full_set), len(partial - full_set)


def narrow_buckets(conn: Connection, rt: Runtime, plan: PivotPlan, types: list[str], lo, hi) -> dict:
    """Per hour: (rows, hash sum) of the narrow rows that belong in the wide tables.

    A source without a unique key may hold a cell twice: only the row the pivot keeps counts.
    """
    order = rt.source.duplicate_order(conn, newest_first=True)
    distinct = "DISTINCT ON (s.created_time, s.data_channel_id)" if order else ""
    order_by = f"ORDER BY {order}" if order else ""
    rows = conn.execute(text(
        f"""SELECT date_trunc('hour', k.created_time), count(*),
                   sum(hashtextextended(k.i::text || '|' || k.created_time::text || '|' || k.val, 0)::numeric)
            FROM (SELECT {distinct} s.created_time, m.i, v.val
                  FROM {rt.source.sql} s
                  JOIN unnest(CAST(:chs AS text[]), CAST(:idx AS int[]), CAST(:ty AS text[])) AS m(ch, i, ty)
                      ON m.ch = s.data_channel_id
                  CROSS JOIN LATERAL (SELECT {_NARROW_VALUE} AS val) v
                  WHERE s.ship_id = :ship AND s.data_channel_id = ANY(CAST(:chs AS text[]))
                    AND s.created_time >= :lo AND s.created_time < :hi
                    AND v.val IS NOT NULL {order_by}) k
            GROUP BY 1"""),
        {"chs": list(plan.channels), "idx": list(range(len(plan.channels))), "ty": types, "ship": plan.ship_id,
         "lo": lo, "hi": hi}).all()
    return {r[0]: (int(r[1]), r[2]) for r in rows}


def unmapped_rows(conn: Connection, rt: Runtime, plan: PivotPlan, lo, hi) -> int:
    """Narrow rows in [lo, hi) whose channel has no column.

    The ship's channels come from a skip-scan of the primary key; only those the plan lacks are
    counted, each by its own index range: never a scan of the ship's other rows or of other ships.
    """
    new = sorted(set(rt.source.channels(conn, plan.ship_id)) - set(plan.channels))
    if not new:
        return 0
    return int(conn.execute(text(
        f"""SELECT count(*) FROM {rt.source.sql} WHERE ship_id = :ship AND data_channel_id = ANY(CAST(:chs AS text[]))
            AND created_time >= :lo AND created_time < :hi"""),
        {"ship": plan.ship_id, "lo": lo, "hi": hi, "chs": new}).scalar_one())


def wide_buckets(conn: Connection, rt: Runtime, plan: PivotPlan, lo, hi) -> dict:
    """Per hour: (non-NULL cells, hash sum) over all parts of the ship."""
    schema = rt.settings.target_schema
    index_of = {c: i for i, c in enumerate(plan.channels)}
    layout = load_ship_layout(conn, schema, plan.ship_id)
    assert layout is not None
    column_of = {c.channel_id: c.column for c in layout.channels}
    out: dict = {}
    for part in layout.parts:
        values = ", ".join(f"({index_of[ch]}, w.{qi(column_of[ch])}::text)" for ch in part.channels)
        rows = conn.execute(text(
            f"""SELECT date_trunc('hour', w.created_time), count(*),
                       sum(hashtextextended(v.i::text || '|' || w.created_time::text || '|' || v.val, 0)::numeric)
                FROM {qualified(schema, part.table)} w CROSS JOIN LATERAL (VALUES {values}) AS v(i, val)
                WHERE w.created_time >= :lo AND w.created_time < :hi AND v.val IS NOT NULL GROUP BY 1"""),
            {"lo": lo, "hi": hi}).all()
        for b, n, h in rows:
            cells, hsum = out.get(b, (0, 0))
            out[b] = (cells + int(n), hsum + h)
    return out


def compare_ship(rt: Runtime, ship_id: str, only: list[datetime] | None = None) -> ShipValidation:
    """Compare one ship's claimed hours (or only the hours in ``only``)."""
    with rt.dbs.target.connect() as tconn:
        tconn.execute(text("SET TIME ZONE 'UTC'"))
        layout = load_ship_layout(tconn, rt.settings.target_schema, ship_id)
        if layout is None:
            return ShipValidation(ship_id, False, "no wide tables; run --mode tables-only", 0, 0, 0, 0)
        plan = PivotPlan.from_layout(layout)
        ranges = claimed_ranges(rt, tconn, ship_id)
        buckets, partial = _buckets(ranges)
        if only is not None:
            keep = set(only)
            buckets = [b for b in buckets if b in keep]
        if not buckets:
            return ShipValidation(ship_id, True, "nothing migrated yet: no hour to check", 0, partial, 0, 0)
        lo, hi = buckets[0], buckets[-1] + HOUR
        wide = wide_buckets(tconn, rt, plan, lo, hi)
    types = [c.pg_type for c in sorted(layout.channels, key=lambda c: plan.channels.index(c.channel_id))]
    with rt.dbs.source.connect() as sconn:
        sconn.execute(text("SET TIME ZONE 'UTC'"))
        unmapped = unmapped_rows(sconn, rt, plan, lo, hi)
        with ship_read_settings(raw_cursor(sconn)):  # the hourly sums by primary key
            narrow = narrow_buckets(sconn, rt, plan, types, lo, hi)
    diffs = []
    n_rows = n_cells = 0
    for b in buckets:
        nr, nh = narrow.get(b, (0, 0))
        wc, wh = wide.get(b, (0, 0))
        n_rows += nr
        n_cells += wc
        if nr != wc or nh != wh:
            diffs.append(BucketDiff(b, nr, wc, nh == wh))
    ok = not diffs and unmapped == 0
    if ok:
        message = (f"{len(buckets)} hour(s) match: {n_rows:,} narrow rows = {n_cells:,} wide cells"
                   + (f"; {partial} hour(s) still in progress" if partial else ""))
    else:
        parts = []
        if diffs:
            parts.append(f"{len(diffs)} of {len(buckets)} hour(s) differ, first at {diffs[0].bucket}")
        if unmapped:
            parts.append(f"{unmapped:,} narrow row(s) of channels without a column")
        message = "; ".join(parts) + "; run --mode validate --repair"
    return ShipValidation(ship_id, ok, message, len(buckets), partial, n_rows, n_cells, unmapped, tuple(diffs))


def repair_buckets(rt: Runtime, ship_id: str, buckets: list[datetime]) -> None:
    """Re-migrate whole hours, replacing their wide rows with the pivot of the source."""
    cache = ShipPlanCache(rt)
    with rt.dbs.source.connect() as sconn:
        time_type = rt.source.time_type(sconn)
    cache.ensure_channels(ship_id, time_type)  # every channel the source has gets its column first

    for hour in buckets:
        def repair(plan: PivotPlan, hour: datetime = hour) -> None:
            with rt.dbs.source.connect() as sconn, rt.dbs.target.begin() as tconn:
                begin_snapshot_read(sconn)  # the new-channel check and every read of the hour see one snapshot
                take_write_locks(tconn, rt.settings.target_schema, [ship_id])
                migrate_window(rt, sconn, tconn, plan, hour, hour + HOUR, replace=True)

        cache.with_new_channels(ship_id, time_type, repair)
        log.info("ship %s: repaired hour %s", ship_id, hour)


def validate(rt: Runtime, ship_ids: tuple[str, ...] = (), repair: bool = False) -> ValidationReport:
    """``--mode validate [--repair]``: compare every claimed hour of every ship with the source."""
    results = []
    for ship in resolve_ships(rt, ship_ids):
        res = compare_ship(rt, ship)
        if repair and not res.ok:
            bad = [d.bucket for d in res.mismatches]
            if res.unmapped_rows:
                bad = _buckets(claimed_ranges_for(rt, ship))[0]  # unmapped rows: re-migrate every hour
            repair_buckets(rt, ship, bad)
            after = compare_ship(rt, ship)
            res = ShipValidation(after.ship_id, after.ok, ("repaired; " if after.ok else "repair incomplete; ")
                                 + after.message, after.checked_buckets, after.in_progress_buckets,
                                 after.narrow_rows, after.wide_cells, after.unmapped_rows, after.mismatches,
                                 tuple(bad))
        results.append(res)
    return ValidationReport(tuple(results))


def claimed_ranges_for(rt: Runtime, ship_id: str) -> list[tuple[datetime, datetime]]:
    """:func:`claimed_ranges` with its own connection."""
    with rt.dbs.target.connect() as conn:
        return claimed_ranges(rt, conn, ship_id)
