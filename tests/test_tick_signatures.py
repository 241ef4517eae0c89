"""Which ticks a running processor's fleet read takes again (no database: the comparison itself)."""

from __future__ import annotations

from datetime import datetime, timedelta

from narrow2wide.engine.pivot import datetime_to_ts
from narrow2wide.engine.tick_signatures import ShipTicks, fleet_scope

T0 = datetime(2024, 10, 2, 12, 0)
TICK = timedelta(seconds=15)


def ticks(start: datetime, end: datetime, sigs: dict[int, tuple[int, int]]) -> ShipTicks:
    return ShipTicks(datetime_to_ts(start), datetime_to_ts(end), sigs)


def us(t: datetime) -> int:
    return datetime_to_ts(t)


def test_only_changed_ticks_of_the_overlap_and_every_tick_after_it_are_read():
    old = {us(T0 + k * TICK): (100, 5000 + k) for k in range(8)}
    before = {1: ticks(T0, T0 + 8 * TICK, old), 2: ticks(T0, T0 + 8 * TICK, dict(old))}
    now_1 = {**old, us(T0 + 3 * TICK): (101, 9999)}  # a late row in tick 3 of ship 1
    now_2 = {**old, us(T0 + 5 * TICK): (100, 7777)}  # an updated value in tick 5 of ship 2
    start, end = T0 + 2 * TICK, T0 + 12 * TICK
    now = {1: ticks(start, end, now_1), 2: ticks(start, end, now_2)}
    scope = fleet_scope(before, now, [1, 2], start, end)
    assert scope is not None
    assert scope.fresh_from == T0 + 8 * TICK
    assert scope.again == {(us(T0 + 3 * TICK), 1), (us(T0 + 5 * TICK), 2)}


def test_anything_not_seen_before_reads_the_whole_window():
    start, end = T0 + 2 * TICK, T0 + 12 * TICK
    before = {1: ticks(T0, T0 + 8 * TICK, {})}
    now = {1: ticks(start, end, {}), 2: ticks(start, end, {})}
    assert fleet_scope(before, now, [1, 2], start, end) is None  # ship 2 is new to the processor
    assert fleet_scope(before, now, [1], T0 - TICK, end) is None  # the window starts before the known one
    assert fleet_scope({1: ticks(T0, start, {})}, now, [1], start, end) is None  # no overlap at all


def test_many_changes_read_the_whole_window():
    old = {us(T0 + k * TICK): (100, k) for k in range(8)}
    before = {1: ticks(T0, T0 + 8 * TICK, old)}
    changed = {t: (n + 1, x) for t, (n, x) in old.items()}
    now = {1: ticks(T0, T0 + 10 * TICK, changed)}
    assert fleet_scope(before, now, [1], T0, T0 + 10 * TICK) is None
