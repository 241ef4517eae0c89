"""A fleet whose rows interleave in time order, as the production collector writes them.

The other tests seed ship after ship (``seed_demo``: one INSERT, ship-major). Here the source is filled
slice by slice in time order, every slice holding every ship's rows next to each other, with realistic
non-consecutive ship ids, a different channel set per ship and one ship offline for a while. Backfill,
realtime (with live ticks, late rows and a channel that appears mid-run), subsets of the fleet and
realtime-first-then-backfill are run on it, and every data test ends with the oracle checking every cell
of every ship (:func:`tests.wide_check.compare`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from cutoff_store import CutoffStore
from data_migrator import BackfillOptions, migration_status, run_backfill
from narrow2wide.checks.validator import validate
from narrow2wide.common.errors import SchemaError
from narrow2wide.db.database import qi, qualified, raw_cursor
from narrow2wide.db.narrow_source import SourceTable, begin_snapshot_read
from narrow2wide.db.runtime import Runtime
from narrow2wide.demo.demo_data import DemoChannel, DemoSpec, demo_channels, insert_rows
from narrow2wide.engine.pivot import PivotPlan, channels_serve_the_read, read_window
from narrow2wide.ops.throttle import ThrottleSettings
from narrow2wide.store.chunk_ledger import ChunkLedger
from realtime_processor import RealtimeOptions, run_realtime
from schema_analyzer import analyze_source
from table_creator import create_tables
from tests.wide_check import compare

FLEET = ("IMO9301234", "IMO9876543", "IMO9512087", "IMO9700011", "IMO9123450")
MANY_SHIPS = FLEET + tuple(f"IMO96000{k:02d}" for k in range(10))  # ship i sends the first 16 - i channels
OFFLINE_SHIP = "IMO9700011"  # its link is down for half an hour in the middle of the history
CHANNELS = 16  # ship i sends the first CHANNELS - i of them: five different layouts
SLICE = timedelta(minutes=5)  # the collector's insert slices
HISTORY = DemoSpec(interval_seconds=15, late_channel_share=0.0, offline_hours=0.0)
LIVE = DemoSpec(interval_seconds=1, late_channel_share=0.0, offline_hours=0.0)
ARRIVED_NOW = "(now() AT TIME ZONE 'UTC')"  # server_created_time of live and late rows
NEW_CHANNEL = "/hs4sd_v1/me03/tc/exh_gas//in_c/temp"  # never seen before it appears mid-run
ONCE = RealtimeOptions(once=True, install_signal_handlers=False, settle_seconds=0)
SECOND = timedelta(seconds=1)
INSTANT = timedelta(milliseconds=1)  # a window holding one off-grid tick only
FIXED_END = datetime(2024, 10, 2)


# ----------------------------------------------------------------------------------------------
# the interleaved fleet


@dataclass(frozen=True)
class Fleet:
    """What :func:`make_fleet` made."""

    ships: tuple[str, ...]
    channels: tuple[DemoChannel, ...]  # every channel any ship sends (ship i: the first len - i)
    start: datetime
    end: datetime

    def sent_by(self, ship: str) -> tuple[DemoChannel, ...]:
        return self.channels[:len(self.channels) - self.ships.index(ship)]


def _db_now(conn: Connection) -> datetime:
    return conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()


def _drop_unsent(conn: Connection, source: SourceTable, fleet: Fleet) -> int:
    """Remove the rows of channels a ship does not have (insert_rows gives every ship every channel)."""
    removed = 0
    for ship in fleet.ships:
        unsent = [c.channel_id for c in fleet.channels if c not in fleet.sent_by(ship)]
        if unsent:
            removed += conn.execute(text(
                f"DELETE FROM {source.sql} WHERE ship_id = :s AND data_channel_id = ANY(CAST(:c AS text[]))"),
                {"s": ship, "c": unsent}).rowcount
    return removed


def make_fleet(runtime: Runtime, hours: float = 2.0, end: datetime | None = None, ships=FLEET) -> Fleet:
    """Create the source and fill it with ``hours`` of history in 5-minute slices in time order.

    Every slice is one ``insert_rows`` call for all ships at once (values differ per ship), so the heap
    holds the ships' rows side by side slice after slice, as the collector leaves them. ``end`` defaults
    to the database's now (rounded down to the 15 s tick). Then step 1 and step 2: analyse, create tables.
    """
    source = runtime.source
    with runtime.dbs.source.begin() as conn:
        source.create(conn)
        if end is None:
            end = conn.execute(text(
                "SELECT to_timestamp(floor(extract(epoch FROM now()) / 15) * 15) AT TIME ZONE 'UTC'")).scalar_one()
        start = end - timedelta(hours=hours)
        fleet = Fleet(tuple(ships), tuple(demo_channels(CHANNELS)), start, end)
        offline = (start + timedelta(minutes=40), start + timedelta(minutes=70))
        a = start
        while a < end:
            b = min(a + SLICE, end)
            sending = tuple(s for s in fleet.ships if not (s == OFFLINE_SHIP and offline[0] <= a < offline[1]))
            insert_rows(conn, source, sending, list(fleet.channels), a, b, HISTORY)
            a = b
        _drop_unsent(conn, source, fleet)
        conn.execute(text(f"ANALYZE {source.sql}"))
    analyze_source(runtime)
    create_tables(runtime)
    return fleet


def send_ticks(conn: Connection, source: SourceTable, fleet: Fleet, since: datetime,
               last_tick_channels: tuple[DemoChannel, ...] | None = None) -> datetime:
    """Live rows, one tick a second for every ship, from ``since`` up to the database's current second.

    The newest tick carries only ``last_tick_channels`` when given (the rest of it arrives later).
    Returns the newest tick's time.
    """
    newest = _db_now(conn).replace(microsecond=0)
    if since < newest:
        insert_rows(conn, source, fleet.ships, list(fleet.channels), since, newest, LIVE, ARRIVED_NOW)
    insert_rows(conn, source, fleet.ships, list(last_tick_channels or fleet.channels), newest, newest + SECOND,
                LIVE, ARRIVED_NOW)
    _drop_unsent(conn, source, fleet)
    return newest


def send_late(conn: Connection, source: SourceTable, fleet: Fleet, at: datetime,
              channels: tuple[DemoChannel, ...] | None = None, ships: tuple[str, ...] | None = None) -> int:
    """One tick at ``at`` (any age) for ``ships`` and ``channels``, arriving now."""
    n = insert_rows(conn, source, ships or fleet.ships, list(channels or fleet.channels), at, at + SECOND, LIVE,
                    ARRIVED_NOW)
    return n - _drop_unsent(conn, source, fleet)


class FleetWriter:
    """The collector in a thread: every ``every`` seconds the fleet's live ticks, and every third time a
    tick ``late_minutes`` old for every ship."""

    def __init__(self, engine: Engine, source: SourceTable, fleet: Fleet, since: datetime, every: float = 0.3,
                 late_minutes: float = 2.0):
        self.engine, self.source, self.fleet, self.since = engine, source, fleet, since
        self.every, self.late = every, timedelta(minutes=late_minutes)
        self.batches = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-writer", daemon=True)

    def start(self) -> FleetWriter:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error
        return self.batches

    def wait_for(self, batches: int, timeout: float = 30) -> None:
        """Wait until the writer has committed ``batches`` batches."""
        deadline = time.monotonic() + timeout
        while self.batches < batches:
            assert self.error is None and time.monotonic() < deadline, f"writer stuck at {self.batches}: {self.error}"
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self.engine.begin() as conn:
                    newest = send_ticks(conn, self.source, self.fleet, self.since)
                    if self.batches % 3 == 2:
                        send_late(conn, self.source, self.fleet, newest - self.late + timedelta(milliseconds=500))
                self.since = newest + SECOND
                self.batches += 1
                self._stop.wait(self.every)
        except BaseException as exc:  # noqa: BLE001 - re-raised by stop()
            self.error = exc


# ----------------------------------------------------------------------------------------------
# checks


def _opts(**kw) -> BackfillOptions:
    return BackfillOptions(progress=False, backoff_seconds=0.01, **kw)


def _with(runtime: Runtime, **changes) -> Runtime:
    return Runtime(settings=runtime.settings.with_overrides(**changes), dbs=runtime.dbs)


def source_rows(runtime: Runtime, ship: str, channel: str | None = None) -> int:
    with runtime.dbs.source.connect() as conn:
        return int(conn.execute(text(
            f"SELECT count(*) FROM {runtime.source.sql} WHERE ship_id = :s "
            "AND (CAST(:c AS text) IS NULL OR data_channel_id = :c)"), {"s": ship, "c": channel}).scalar_one())


def wide_rows(runtime: Runtime, ship: str) -> int:
    """Rows in all the ship's wide tables."""
    schema = runtime.settings.target_schema
    with runtime.dbs.target.connect() as conn:
        tables = conn.execute(text(f"SELECT table_name FROM {qualified(schema, 'migrator_tables')} "
                                   "WHERE ship_id = :s"), {"s": ship}).scalars().all()
        assert tables, f"{ship} has no wide tables"
        return sum(int(conn.execute(text(f"SELECT count(*) FROM {qualified(schema, t)}")).scalar_one())
                   for t in tables)


def ledger_windows(runtime: Runtime, ship: str) -> list[tuple[datetime, datetime, str, int]]:
    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.connect() as conn:
        if not ledger.exists(conn):
            return []
        return [tuple(r) for r in conn.execute(text(
            f"SELECT window_start, window_end, status, rows_read FROM {ledger.table} WHERE ship_id = :s "
            "ORDER BY window_start"), {"s": ship}).all()]


def assert_tiles(windows, first: datetime, cutoff: datetime) -> None:
    """Done windows that cover [first hour, cutoff) edge to edge: no gap, no overlap."""
    assert windows, "no chunks"
    assert {w[2] for w in windows} == {"done"}, windows
    assert windows[0][0] == first.replace(minute=0, second=0, microsecond=0)
    assert windows[-1][1] == cutoff
    for (_, end, _, _), (start, _, _, _) in zip(windows, windows[1:], strict=False):
        assert end == start, windows


def assert_exact(runtime: Runtime, ships, start=None, end=None, rejected: dict[str, int] | None = None) -> None:
    """The oracle for each of ``ships``, with ``rejected[ship]`` bad rows the test put in (none by default)."""
    for ship in ships:
        diff = compare(runtime.dbs.source, runtime.settings, ship, start, end)
        assert diff.exact_with_rejects((rejected or {}).get(ship, 0)), (ship, diff)


def assert_untouched(runtime: Runtime, ships) -> None:
    """No wide row, no chunk and no cutoff or watermark for ``ships``."""
    store = CutoffStore(runtime.settings.cutoff_file)
    for ship in ships:
        assert wide_rows(runtime, ship) == 0, ship
        assert ledger_windows(runtime, ship) == [], ship
        assert store.get(ship) is None, (ship, store.get(ship))


def heap_runs(runtime: Runtime) -> int:
    """How many runs of one ship the source's heap holds, in physical order."""
    with runtime.dbs.source.connect() as conn:
        return int(conn.execute(text(
            f"""SELECT count(*) FROM (SELECT ship_id, lag(ship_id) OVER (ORDER BY ctid) AS before
                                      FROM {runtime.source.sql}) h
                WHERE ship_id IS DISTINCT FROM before""")).scalar_one())


# ----------------------------------------------------------------------------------------------
# a. backfill


def test_backfill_of_an_interleaved_fleet_is_exact_for_every_ship(runtime):
    fleet = make_fleet(runtime, hours=3, end=FIXED_END)
    assert heap_runs(runtime) >= 30 * len(FLEET)  # the rows really interleave: 36 slices, 5 ships each
    result = run_backfill(runtime, (), _opts(cutoff_time=str(FIXED_END), chunk_hours=1))
    assert not result.failed_chunks
    per_ship = {s: source_rows(runtime, s) for s in FLEET}
    assert result.rows_read == sum(per_ship.values())
    assert {s.ship_id: (s.chunks, s.done, s.rows_read, s.rejected) for s in result.ships} == {
        s: (3, 3, n, 0) for s, n in per_ship.items()}
    for ship in FLEET:
        windows = ledger_windows(runtime, ship)
        assert_tiles(windows, fleet.start, FIXED_END)
        assert sum(w[3] for w in windows) == per_ship[ship]
    assert_exact(runtime, FLEET)
    with runtime.dbs.target.connect() as conn:  # every ship got its own layout
        columns = dict(conn.execute(text(
            f"SELECT ship_id, count(*) FROM {qualified(runtime.settings.target_schema, 'migrator_columns')} "
            "GROUP BY 1")).all())
    assert columns == {s: CHANNELS - i for i, s in enumerate(FLEET)}
    # the offline ship has no wide row for the half hour its link was down, and 3 h of 15 s ticks less that
    assert wide_rows(runtime, OFFLINE_SHIP) == 3 * 240 - 120
    report = validate(runtime)
    assert report.ok, [s.message for s in report.ships]
    assert {s.ship_id: s.checked_buckets for s in report.ships} == {s: 3 for s in FLEET}
    status = migration_status(runtime)
    assert {s.ship_id: (s.status, s.percent, s.rows_read) for s in status.ships} == {
        s: ("completed", 100.0, n) for s, n in per_ship.items()}


def test_backfill_of_a_subset_leaves_the_other_ships_alone_until_their_turn(runtime):
    make_fleet(runtime, hours=3, end=FIXED_END)
    subset = ("IMO9876543", OFFLINE_SHIP)
    others = tuple(s for s in FLEET if s not in subset)
    result = run_backfill(runtime, subset, _opts(cutoff_time=str(FIXED_END), chunk_hours=1))
    assert not result.failed_chunks
    assert tuple(s.ship_id for s in result.ships) == subset
    assert result.rows_read == sum(source_rows(runtime, s) for s in subset)
    assert_exact(runtime, subset)
    assert_untouched(runtime, others)
    report = validate(runtime)  # the whole fleet: the subset checked, the others have nothing claimed yet
    assert report.ok, [s.message for s in report.ships]
    checked = {s.ship_id: s.checked_buckets for s in report.ships}
    assert checked == {s: 3 if s in subset else 0 for s in FLEET}
    status = {s.ship_id: s.status for s in migration_status(runtime).ships}
    assert status == {s: "completed" if s in subset else "not_started" for s in FLEET}

    # the rest of the fleet later: the subset's chunks are skipped, every ship ends exact
    rest = run_backfill(runtime, (), _opts(cutoff_time=str(FIXED_END), chunk_hours=1))
    assert not rest.failed_chunks
    assert rest.rows_read == sum(source_rows(runtime, s) for s in others)
    assert_exact(runtime, FLEET)
    assert validate(runtime).ok


def _hostile_rows(runtime: Runtime, ship: str, plan: PivotPlan, at: datetime) -> int:
    """Rows off the 15 s grid that take every turn of a window read; returns how many the pivot rejects.

    A String value in a numeric channel and a NULL format there (rejects), a Decimal row in a text
    channel (a text cell) and a NULL format there (a reject, read by the text read).
    """
    numeric = plan.numeric_channels[0]
    textual = plan.channels[plan.text_indexes[0]]
    rows = [(numeric, 1, "String", None, "not a number"), (numeric, 2, None, 2.5, None),
            (textual, 3, "Decimal", 1.5, None), (textual, 4, None, None, "orphan")]
    with runtime.dbs.source.begin() as conn:
        for channel, second, fmt, double, string in rows:
            conn.execute(text(f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, "
                              "value_format, double_v, str_v) VALUES (:s, :c, :t, :f, :d, :v)"),
                         {"s": ship, "c": channel, "t": at + timedelta(seconds=second), "f": fmt, "d": double,
                          "v": string})
        conn.execute(text(f"ANALYZE {runtime.source.sql}"))
    return 3


def _read_both_ways(runtime: Runtime, plan: PivotPlan, start: datetime, end: datetime) -> tuple[bool, list, list]:
    """In one snapshot: whether the planner serves the window by the channel list, and the window's rows
    read with the list and without it (numeric and text rows, sorted)."""
    with runtime.dbs.source.connect() as conn:
        begin_snapshot_read(conn)
        cursor = raw_cursor(conn)
        by_channel = channels_serve_the_read(cursor, runtime.source.sql, plan, start, end)
        reads = []
        for with_list in (True, False):
            b = read_window(cursor, runtime.source.sql, plan, start, end, by_channel=with_list)
            reads.append((sorted(zip(b.ts.tolist(), b.idx.tolist(), b.fmt.tolist(), b.nulls.tolist(), b.d.tolist(),
                                     b.l.tolist(), b.b.tolist(), strict=True)),
                          sorted(zip(b.text_ts.tolist(), b.text_idx.tolist(), b.text_fmt.tolist(), b.text_values,
                                     strict=True))))
        conn.rollback()
    return by_channel, reads[0], reads[1]


def test_in_a_fleet_a_ship_is_read_through_its_channel_list_and_without_it_the_rows_are_the_same(runtime, ship_plan):
    fleet = make_fleet(runtime, hours=2, end=FIXED_END, ships=MANY_SHIPS)
    ship = fleet.ships[0]
    plan = ship_plan(ship)
    _hostile_rows(runtime, ship, plan, fleet.start + timedelta(minutes=30))
    by_channel, with_list, without = _read_both_ways(runtime, plan, fleet.start, fleet.start + timedelta(hours=1))
    assert by_channel  # the primary key, one range per channel: this ship's rows only
    assert without == with_list and len(with_list[0]) > 0 and len(with_list[1]) > 0


def test_a_ship_alone_is_read_without_its_channel_list_with_the_same_rows_and_exact_cells(runtime, ship_plan):
    fleet = make_fleet(runtime, hours=2, end=FIXED_END, ships=FLEET[:1])
    ship = fleet.ships[0]
    plan = ship_plan(ship)
    rejects = _hostile_rows(runtime, ship, plan, fleet.start + timedelta(minutes=30))
    by_channel, with_list, without = _read_both_ways(runtime, plan, fleet.start, fleet.start + timedelta(hours=1))
    assert not by_channel  # by created_time: the list would only filter every row
    assert without == with_list and len(with_list[0]) > 0 and len(with_list[1]) > 0
    result = run_backfill(runtime, (), _opts(cutoff_time=str(FIXED_END), chunk_hours=1))
    assert not result.failed_chunks
    assert result.rows_read == source_rows(runtime, ship)
    assert [s.rejected for s in result.ships] == [rejects]
    assert_exact(runtime, [ship], rejected={ship: rejects})


def test_a_read_without_the_channel_list_fails_on_a_channel_the_plan_lacks_rather_than_lose_its_rows(
        runtime, ship_plan):
    fleet = make_fleet(runtime, hours=1, end=FIXED_END, ships=FLEET[:1])
    ship = fleet.ships[0]
    plan = ship_plan(ship)
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, double_v, "
                          "value_format) VALUES (:s, :c, :t, 1.5, 'Decimal')"), {"s": ship, "c": NEW_CHANNEL,
                                                                                  "t": fleet.start})
    with runtime.dbs.source.connect() as conn:
        begin_snapshot_read(conn)
        with pytest.raises(SchemaError, match="1 row"):
            read_window(raw_cursor(conn), runtime.source.sql, plan, fleet.start, fleet.end, by_channel=False)


# ----------------------------------------------------------------------------------------------
# b. realtime over the fleet: live ticks, late rows, a new channel


@pytest.mark.slow
def test_realtime_cycles_over_the_fleet_with_late_rows_and_a_new_channel_are_exact(runtime):
    fleet = make_fleet(runtime, hours=2)  # up to the database's now
    src = runtime.source
    new_ships = ("IMO9876543", "IMO9123450")
    backfill = run_backfill(runtime, (), _opts(cutoff_time=str(fleet.end), chunk_hours=1))
    assert not backfill.failed_chunks

    first = run_realtime(runtime, (), ONCE)
    assert first.ok and [s.ship_id for s in first.last.ships] == sorted(FLEET)
    cycles = [first.last]
    since = fleet.end
    half = fleet.channels[:8]
    partial_tick = late_tick = None
    for step in range(1, 5):
        time.sleep(1.1)  # new ticks to send
        prev_end = min(s.window_end for s in cycles[-1].ships)
        with runtime.dbs.source.begin() as conn:
            newest = send_ticks(conn, src, fleet, since, last_tick_channels=half if step == 1 else None)
            if step == 1:
                partial_tick = newest  # only half its channels so far
            if step == 2:
                # the rest of step 1's newest tick (already migrated, half of it), and a whole tick three
                # minutes before the previous cycle's end: both inside the 10-minute lookback
                send_late(conn, src, fleet, partial_tick, channels=fleet.channels[8:])
                late_tick = (prev_end - timedelta(minutes=3)).replace(microsecond=0) + timedelta(milliseconds=500)
                assert send_late(conn, src, fleet, late_tick) == sum(len(fleet.sent_by(s)) for s in FLEET)
            if step == 3:
                # a channel never seen before, on two ships: the live ticks and one row two minutes late
                new = (DemoChannel(NEW_CHANNEL, "Decimal"),)
                insert_rows(conn, src, new_ships, list(new), since, newest + SECOND, LIVE, ARRIVED_NOW)
                assert send_late(conn, src, fleet, prev_end - timedelta(minutes=2), new, new_ships) == 2
        since = newest + SECOND
        if step == 2:  # the late rows are missing until the next cycle
            for ship in FLEET:
                gap = compare(runtime.dbs.source, runtime.settings, ship, late_tick, late_tick + INSTANT)
                assert gap.expected > 0 and gap.actual == 0, (ship, gap)
                half_done = compare(runtime.dbs.source, runtime.settings, ship, partial_tick, partial_tick + SECOND)
                assert 0 < half_done.actual < half_done.expected, (ship, half_done)
        result = run_realtime(runtime, (), ONCE)
        assert result.ok, [s.error for s in result.last.ships]
        cycle = result.last
        for ship, before in zip(cycle.ships, cycles[-1].ships, strict=True):
            assert ship.ship_id == before.ship_id
            assert ship.rows_read > 0 and ship.rejected == 0 and ship.ahead_rows == 0, ship
            assert ship.window_start == before.window_end - timedelta(minutes=10)  # the lookback
            assert ship.watermark == ship.window_end > before.watermark
            assert ship.window_end > newest
        cycles.append(cycle)

    assert_exact(runtime, FLEET)
    schema = runtime.settings.target_schema
    with runtime.dbs.target.connect() as conn:
        placed = conn.execute(text(
            f"""SELECT m.ship_id, m.table_name, m.column_name, c.data_type
                FROM {qualified(schema, 'migrator_columns')} m
                JOIN information_schema.columns c ON c.table_schema = :sc AND c.table_name = m.table_name
                                                 AND c.column_name = m.column_name
                WHERE m.channel_id = :c ORDER BY 1"""), {"c": NEW_CHANNEL, "sc": schema}).all()
        assert [p.ship_id for p in placed] == sorted(new_ships)  # a column for those two ships only
        assert {p.data_type for p in placed} == {"double precision"}
        for p in placed:  # every row of the new channel landed, the late one too
            cells = conn.execute(text(f"SELECT count({qi(p.column_name)}) FROM {qualified(schema, p.table_name)}"
                                      )).scalar_one()
            assert cells == source_rows(runtime, p.ship_id, NEW_CHANNEL) >= 2
    report = validate(runtime)
    assert report.ok, [s.message for s in report.ships]
    store = CutoffStore(runtime.settings.cutoff_file)
    for ship in FLEET:
        state = store.get(ship)
        assert state.cutoff == fleet.end and state.watermark > newest


# ----------------------------------------------------------------------------------------------
# c. realtime for part of the fleet


@pytest.mark.slow
def test_realtime_for_two_ships_of_the_fleet_writes_only_theirs(runtime):
    fleet = make_fleet(runtime, hours=2)
    subset = ("IMO9301234", OFFLINE_SHIP)
    others = tuple(s for s in FLEET if s not in subset)
    rt = _with(runtime, chunk_hours=1)  # the history is caught up in one-hour pieces
    store = CutoffStore(rt.settings.cutoff_file)
    for ship in subset:  # realtime alone carries these two from the start of their history
        store.set_cutoff(ship, fleet.start)
    first = run_realtime(rt, subset, ONCE)
    assert first.ok and [s.ship_id for s in first.last.ships] == list(subset)
    since = fleet.end
    for _ in range(2):
        time.sleep(1.1)
        with rt.dbs.source.begin() as conn:  # the whole fleet keeps sending
            newest = send_ticks(conn, rt.source, fleet, since)
            late = send_late(conn, rt.source, fleet, newest - timedelta(minutes=4) + timedelta(milliseconds=500))
            assert late > 0
        since = newest + SECOND
        again = run_realtime(rt, subset, ONCE)
        assert again.ok and [s.ship_id for s in again.last.ships] == list(subset)
        assert all(s.rows_read > 0 and s.window_end > newest for s in again.last.ships)
    assert_exact(rt, subset)
    assert_untouched(rt, others)
    report = validate(rt)
    assert report.ok, [s.message for s in report.ships]
    assert {s.ship_id for s in report.ships if s.checked_buckets} == set(subset)


# ----------------------------------------------------------------------------------------------
# d. realtime first, then the backfill up to the cutoff it stored, with the collector writing


@pytest.mark.slow
def test_realtime_first_then_backfill_to_its_cutoff_with_a_writer_is_exact(runtime):
    fleet = make_fleet(runtime, hours=2)
    with runtime.dbs.source.connect() as conn:
        before = _db_now(conn)
    first = run_realtime(runtime, (), ONCE)
    with runtime.dbs.source.connect() as conn:
        after = _db_now(conn)
    assert first.ok
    store = CutoffStore(runtime.settings.cutoff_file)
    cutoffs = {s: store.get(s).cutoff for s in FLEET}
    assert all(before <= c <= after for c in cutoffs.values()), (before, cutoffs, after)  # the database's now
    assert all(fleet.end <= c for c in cutoffs.values())

    with runtime.dbs.source.begin() as conn:  # the ticks since the history, and a tick before the cutoff
        newest = send_ticks(conn, runtime.source, fleet, fleet.end)
        send_late(conn, runtime.source, fleet, min(cutoffs.values()).replace(microsecond=0)
                  - timedelta(minutes=2) + timedelta(milliseconds=250))
    writer = FleetWriter(runtime.dbs.source, runtime.source, fleet, newest + SECOND).start()
    try:
        writer.wait_for(1)
        before_backfill = writer.batches
        # no cutoff given: the stored ones. Capped at 10,000 rows/s (the history is 33,000 rows), so the
        # backfill lasts several of the writer's batches however fast the machine: the test is about writes
        # that land while it runs
        capped = ThrottleSettings(max_rows_per_second=10_000)
        backfill = run_backfill(runtime, (), _opts(chunk_hours=1, throttle=capped))
        during = writer.batches - before_backfill
        writer.wait_for(writer.batches + 3)  # and after it, one of them with a late tick
    finally:
        writer.stop()
    assert during >= 1, "the writer wrote nothing while the backfill ran"
    assert not backfill.failed_chunks
    for ship in FLEET:
        assert_tiles(ledger_windows(runtime, ship), fleet.start, cutoffs[ship])
        assert store.get(ship).cutoff == cutoffs[ship]
    final = run_realtime(runtime, (), ONCE)
    assert final.ok, [s.error for s in final.last.ships]
    assert_exact(runtime, FLEET)
    report = validate(runtime)
    assert report.ok, [s.message for s in report.ships]
    status = {s.ship_id: s.status for s in migration_status(runtime).ships}
    assert status == {s: "completed" for s in FLEET}


@pytest.mark.slow
def test_a_long_running_processor_skips_unchanged_rows_and_still_catches_every_change(runtime):
    """Between cycles of one processor: new ticks, a late tick, a corrected value, a -0.0 for a 0.0 and a new
    channel (in a new tick and late in an old one), all inside the lookback. Ticks the previous cycle read
    unchanged are not read or merged again; every change is."""
    fleet = make_fleet(runtime, hours=0.5)
    src = runtime.source
    run_backfill(runtime, (), _opts(cutoff_time=str(fleet.end), chunk_hours=1))
    state = {"since": fleet.end, "step": 0}
    cycles = []
    decimal = next(c.channel_id for c in fleet.channels if c.value_format == "Decimal")

    def between_cycles(cycle) -> None:
        cycles.append(cycle)
        state["step"] += 1
        if state["step"] == 6:
            return  # the processor stops after this cycle
        time.sleep(1.1)
        with runtime.dbs.source.begin() as conn:
            newest = send_ticks(conn, src, fleet, state["since"])
            prev_end = min(s.window_end for s in cycle.ships)
            if state["step"] == 2:
                send_late(conn, src, fleet, (prev_end - timedelta(minutes=4)).replace(microsecond=0)
                          + timedelta(milliseconds=250))
                conn.execute(text(f"UPDATE {src.sql} SET double_v = double_v + 0.5 WHERE data_channel_id = :c "
                                  "AND created_time = (SELECT max(created_time) FROM {src} WHERE created_time < :e)"
                                  .replace("{src}", src.sql)), {"c": decimal, "e": prev_end})
            if state["step"] == 3:
                conn.execute(text(f"UPDATE {src.sql} SET double_v = 0.0 WHERE data_channel_id = :c "
                                  "AND ship_id = :s AND created_time = :t"),
                             {"c": decimal, "s": FLEET[0], "t": newest})
            if state["step"] == 4:
                conn.execute(text(f"UPDATE {src.sql} SET double_v = '-0'::float8 WHERE data_channel_id = :c "
                                  "AND ship_id = :s AND double_v = 0.0"), {"c": decimal, "s": FLEET[0]})
            if state["step"] == 5:  # a channel never seen, in the newest tick and (late) in an earlier one
                added = conn.execute(text(
                    f"""INSERT INTO {src.sql} (ship_id, data_channel_id, created_time, server_created_time, double_v,
                            value_format)
                        SELECT ship_id, 'NEW/Probe/Channel', created_time, now(), double_v + 1, 'Decimal'
                        FROM {src.sql} WHERE ship_id = :s AND data_channel_id = :c
                        AND (created_time = :t OR created_time = (SELECT max(created_time) FROM {src.sql}
                             WHERE ship_id = :s AND data_channel_id = :c AND created_time < :late))"""),
                    {"s": FLEET[1], "c": decimal, "t": newest, "late": prev_end - timedelta(minutes=3)}).rowcount
                assert added == 2
        state["since"] = newest + SECOND

    opts = RealtimeOptions(max_cycles=6, interval_minutes=0.01, install_signal_handlers=False, settle_seconds=0)
    result = run_realtime(runtime, (), opts, on_cycle=between_cycles)
    assert result.ok and result.cycles == 6, [s.error for s in result.last.ships]
    # the first cycle reads and merges its whole window; later ones read (and merge) only the ticks that
    # are new or changed since the previous cycle (tick signatures), not the lookback they re-cover
    steady = cycles[1:]
    assert all(c.rows_read > 0 for c in steady)
    with runtime.dbs.source.connect() as conn:
        in_windows = sum(conn.execute(text(
            f"SELECT count(*) FROM {src.sql} WHERE ship_id = :s AND created_time >= :a AND created_time < :b"),
            {"s": s.ship_id, "a": s.window_start, "b": s.window_end}).scalar_one() for c in steady for s in c.ships)
    assert sum(c.rows_read for c in steady) < in_windows / 3
    assert sum(sum(s.cells_written for s in c.ships) for c in steady) <= sum(c.rows_read for c in steady)
    for ship in FLEET:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        assert diff.exact and diff.actual > 0, (ship, diff)
    with runtime.dbs.target.connect() as conn:
        column = conn.execute(text(
            f"SELECT table_name, column_name FROM {qualified(runtime.settings.target_schema, 'migrator_columns')} "
            "WHERE ship_id = :s AND channel_id = :c"), {"s": FLEET[0], "c": decimal}).one()
        signs = conn.execute(text(
            f"SELECT count(*) FROM {qualified(runtime.settings.target_schema, column[0])} "
            f"WHERE {qi(column[1])} = 0 AND text({qi(column[1])}) = '-0'")).scalar_one()
    assert signs == 1  # the -0.0 replaced the 0.0 (compared bit for bit, not by value)


@pytest.mark.slow
def test_rejected_rows_in_a_fleet_cycle_are_counted_and_the_rest_of_their_tick_is_exact(runtime):
    """The fleet read packs each ship's tick by format; a tick holding a row that fits no record (a NULL
    value, an unknown format) is read again row by row, and a String row in a numeric column is a reject
    of its own: every such row is counted, and every other cell of the same tick lands exactly."""
    fleet = make_fleet(runtime, hours=1)
    assert not run_backfill(runtime, (), _opts(cutoff_time=str(fleet.end), chunk_hours=1)).failed_chunks
    assert run_realtime(runtime, (), ONCE).ok
    decimal, other_decimal, integer = fleet.channels[3].channel_id, fleet.channels[4].channel_id, fleet.channels[0]
    with runtime.dbs.source.begin() as conn:
        at = (_db_now(conn) - timedelta(minutes=2)).replace(microsecond=250_000)  # inside the lookback, off-grid
        rows = [  # (ship, channel, value_format, double_v, str_v)
            (FLEET[0], decimal, "Decimal", None, None),  # the column its format names is NULL
            (FLEET[1], decimal, "Float", 1.5, None),  # no such format
            (FLEET[2], decimal, "String", None, "1.5"),  # a string for a double column
        ] + [(ship, other_decimal, "Decimal", 7.25 + i, None) for i, ship in enumerate(FLEET)]
        for ship, channel, fmt, double_v, str_v in rows:
            conn.execute(text(
                f"INSERT INTO {runtime.source.sql} (ship_id, data_channel_id, created_time, server_created_time, "
                "value_format, double_v, str_v) VALUES (:s, :c, :t, :t, :f, :d, :x)"),
                {"s": ship, "c": channel, "t": at, "f": fmt, "d": double_v, "x": str_v})
        send_late(conn, runtime.source, fleet, at + SECOND, channels=(integer,))  # a tick of clean rows beside it

    result = run_realtime(runtime, (), ONCE)
    assert result.ok, [s.error for s in result.last.ships]
    bad = {FLEET[0]: 1, FLEET[1]: 1, FLEET[2]: 1}  # the rows above that fit no cell
    assert {s.ship_id: s.rejected for s in result.last.ships} == {ship: bad.get(ship, 0) for ship in FLEET}
    assert_exact(runtime, FLEET, rejected=bad)
    for ship in FLEET:  # the tick's good cell of every ship, the ones beside a reject too
        cell = compare(runtime.dbs.source, runtime.settings, ship, at, at + INSTANT)
        assert cell.exact_with_rejects(bad.get(ship, 0)) and cell.actual == cell.expected >= 1, (ship, cell)
