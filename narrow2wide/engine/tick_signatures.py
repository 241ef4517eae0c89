"""Signatures of the source's (created_time, ship) groups: which ticks realtime's lookback need not read again.

A realtime cycle re-reads the last minutes (the lookback) to catch late rows; most of those ticks
hold exactly the rows the previous cycle read. One aggregate per (tick, ship), the row count and
the sum of the rows' ``xmin`` (the transaction that wrote each row version: an insert, an update
or a delete of one of the tick's rows changes it), tells the ticks that changed since; only those,
and the ticks after the previous window, are read and merged. The aggregate reads the rows' headers
(no value is converted) and returns one row per tick and ship, so it costs a fraction of the read
it spares. Any doubt (a ship not seen before, a window that does not overlap) reads the tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from narrow2wide.db.narrow_source import ship_read_settings
from narrow2wide.engine.pivot import binary_copy_rows, copy_binary, datetime_to_ts

SIGNATURE_DTYPE = np.dtype([
    ("nf", ">i2"),
    ("l_ts", ">i4"), ("ts", ">i8"),
    ("l_ship", ">i4"), ("ship", ">i8"),
    ("l_n", ">i4"), ("n", ">i8"),
    ("l_x", ">i4"), ("x", ">i8"),
])
MAX_AGAIN_SHARE = 0.25  # more changed ticks than this share of the lookback's: read the whole window


@dataclass(frozen=True)
class ShipTicks:
    """The signatures of one ship's ticks in ``[start, end)`` (microseconds), as one cycle read them."""

    start: int
    end: int
    ticks: dict[int, tuple[int, int]]  # tick -> (rows, sum of xmin)


@dataclass(frozen=True)
class FleetScope:
    """What a fleet read takes of its window: every tick from ``fresh_from`` on, and the earlier
    (tick, ship hash) pairs in ``again`` (changed since the previous cycle, or never read)."""

    fresh_from: datetime
    again: set[tuple[int, int]] = field(default_factory=set)


def read_signatures(cursor, source_sql: str, ship_ids: list[str], hashes: list[int], start: datetime,
                    end: datetime) -> dict[int, ShipTicks]:
    """Ship hash -> the signatures of its ticks in ``[start, end)``, one aggregate over the window.

    ``hashes`` are the ships' hashes (:func:`pivot.ship_hashes`), in the order of ``ship_ids``: a ship
    without rows in the window
    gets an empty entry (nothing to read again there). Run in the transaction (snapshot) of the
    read that follows, so that both see the same rows.
    """
    query = f"""SELECT s.created_time, hashtextextended(s.ship_id, 0), count(*)::int8, sum(s.xmin::text::int8)::int8
        FROM {source_sql} s WHERE s.created_time >= %(start)s AND s.created_time < %(end)s
          AND s.ship_id = ANY(%(ships)s::text[]) GROUP BY s.created_time, s.ship_id"""
    with ship_read_settings(cursor):  # a hash aggregate in work_mem, no parallel workers, no JIT
        data = copy_binary(cursor, query, {"start": start, "end": end, "ships": ship_ids})
    rows = binary_copy_rows(data, SIGNATURE_DTYPE)
    a, b = datetime_to_ts(start), datetime_to_ts(end)
    out = {h: ShipTicks(a, b, {}) for h in hashes}
    for ts, ship, n, x in zip(rows["ts"].tolist(), rows["ship"].tolist(), rows["n"].tolist(), rows["x"].tolist(),
                              strict=True):
        out[ship].ticks[ts] = (n, x)
    return out


def fleet_scope(before: dict[int, ShipTicks], now: dict[int, ShipTicks], ship_hashes: list[int],
                start: datetime, end: datetime) -> FleetScope | None:
    """The part of ``[start, end)`` to read given the previous cycle's signatures; None to read it all.

    A tick of the overlap with the previous windows is read again when its signature changed or was
    never taken; every tick from the earliest previous end on is read.
    """
    a = datetime_to_ts(start)
    if any(h not in before or before[h].start > a or before[h].end <= a for h in ship_hashes):
        return None
    fresh_us = min(before[h].end for h in ship_hashes)
    fresh_from = start + timedelta(microseconds=fresh_us - a)
    if fresh_from >= end:
        return None
    again: set[tuple[int, int]] = set()
    compared = 0
    for h in ship_hashes:
        old = before[h].ticks
        for ts, sig in now[h].ticks.items():
            if ts < fresh_us:
                compared += 1
                if old.get(ts) != sig:
                    again.add((ts, h))
    if compared and len(again) > MAX_AGAIN_SHARE * compared:
        return None
    return FleetScope(fresh_from, again)

