"""Generated ship telemetry for the demo, the tests and the benchmark.

Channel ids are the real ones of one ship (``data/channel_routing_example.csv``); rows are
generated inside the database with ``generate_series`` so that millions of rows take seconds.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from narrow2wide.db.narrow_source import SourceTable

log = logging.getLogger("demo_data")  # the name the log file has always shown

ROUTING_EXAMPLE = Path(__file__).resolve().parents[2] / "data" / "channel_routing_example.csv"

_FORMAT_BY_LAST_SEGMENT = {
    "run": "Boolean",
    "use": "Boolean",
    "stat": "Boolean",
    "status": "Boolean",
    "hour": "Integer",
    "amount": "Integer",
    "cont": "Integer",
    "point": "Integer",
    "mode": "String",
    "eta": "String",
}


@dataclass(frozen=True)
class DemoSpec:
    """What to generate."""

    ships: int = 2
    channels: int = 100
    days: float = 1.0
    interval_seconds: int = 15
    offline_hours: float = 0.0  # the last ship is offline this long in the middle of its history
    late_channel_share: float = 0.05  # this share of channels starts half-way through the history
    first_ship_number: int = 9999993
    end: datetime | None = None  # default: the database's current time, rounded down to the interval


@dataclass(frozen=True)
class DemoChannel:
    """One generated channel."""

    channel_id: str
    value_format: str


@dataclass(frozen=True)
class SeedResult:
    """What :func:`seed_demo` made."""

    source: str
    ship_ids: tuple[str, ...]
    channels: int
    rows: int
    start: datetime
    end: datetime
    seconds: float


def value_format_for(channel_id: str) -> str:
    """The value_format a real channel of this name carries (by its last segment)."""
    return _FORMAT_BY_LAST_SEGMENT.get(channel_id.rsplit("/", 1)[-1], "Decimal")


def demo_channels(count: int, routing_file: Path = ROUTING_EXAMPLE) -> list[DemoChannel]:
    """``count`` channel ids shaped like the real ones, every value_format represented.

    The real ids come first in a stable shuffled order (so a small demo still has engines,
    auxiliaries and navigation); past 1,052 they are extended with numbered variants.
    """
    with open(routing_file, newline="", encoding="utf-8") as fh:
        real = [row[1] for row in csv.reader(fh) if len(row) >= 2]
    real.sort(key=lambda c: hashlib.sha1(c.encode()).hexdigest())
    by_format: dict[str, list[str]] = {}
    for c in real:
        by_format.setdefault(value_format_for(c), []).append(c)
    picked: list[str] = []
    for fmt in ("Integer", "Boolean", "String"):  # guarantee each rarer format early
        picked.extend(by_format.get(fmt, [])[:1])
    picked.extend(c for c in real if c not in picked)
    n = 0
    while len(picked) < count:
        base = real[n % len(real)]
        head, _, last = base.rpartition("/")
        picked.append(f"{head}{n // len(real) + 2:02d}/{last}")
        n += 1
    # a few upper-case ids, as the real fleet has
    out = []
    for i, c in enumerate(picked[:count]):
        if i % 37 == 5:
            parts = c.split("/")
            parts[2] = parts[2].upper()
            c = "/".join(parts)
        out.append(DemoChannel(c, value_format_for(c)))
    return out


def seed_demo(engine: Engine, source: SourceTable, spec: DemoSpec = DemoSpec()) -> SeedResult:
    """Create ``source`` as production has it and fill it with ``spec``'s fleet.

    Re-seeding the same window adds nothing (``ON CONFLICT DO NOTHING``).
    """
    started = time.monotonic()
    channels = demo_channels(spec.channels)
    ship_ids = tuple(f"IMO{spec.first_ship_number + i}" for i in range(spec.ships))
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": source.sql}).scalar() is not None
        source.create(conn, with_indexes=exists)
        end = spec.end or conn.execute(
            text(
                "SELECT to_timestamp(floor(extract(epoch FROM now()) / :iv) * :iv) AT TIME ZONE 'UTC'"
            ),
            {"iv": spec.interval_seconds},
        ).scalar_one()
        start = end - timedelta(days=spec.days)
        rows = insert_rows(conn, source, ship_ids, channels, start, end, spec)
        if not exists:
            source.create_indexes(conn)
        conn.execute(text(f"ANALYZE {source.sql}"))
    result = SeedResult(
        source=source.label,
        ship_ids=ship_ids,
        channels=len(channels),
        rows=rows,
        start=start,
        end=end,
        seconds=time.monotonic() - started,
    )
    log.info("seeded %s rows into %s in %.1f s", f"{rows:,}", source.label, result.seconds)
    return result


def insert_rows(
    conn: Connection,
    source: SourceTable,
    ship_ids: tuple[str, ...],
    channels: list[DemoChannel],
    start: datetime,
    end: datetime,
    spec: DemoSpec,
    server_time_sql: str = "t.ts + interval '2 seconds'",
    extra_params: dict | None = None,
) -> int:
    """Insert one row per ship, channel and interval in [start, end); returns the rows inserted."""
    span = (end - start).total_seconds()
    late = {c.channel_id for i, c in enumerate(channels) if i >= 3 and (i * 7919) % 100 < spec.late_channel_share * 100}
    offline_ship = ship_ids[-1] if spec.offline_hours > 0 and ship_ids else None
    offline_from = start + timedelta(seconds=span / 2)
    offline_to = offline_from + timedelta(hours=spec.offline_hours)
    result = conn.execute(
        text(
            f"""INSERT INTO {source.sql} (ship_id, data_channel_id, created_time, server_created_time,
                    bool_v, str_v, long_v, double_v, value_format)
            SELECT s.ship_id, c.ch, t.ts, {server_time_sql},
                CASE WHEN c.fmt = 'Boolean' THEN ((e.ep / 900 + c.k) % 2 = 0) END,
                CASE WHEN c.fmt = 'String' THEN (ARRAY['AUTO', 'MANUAL', 'STANDBY'])[1 + (e.ep / 3600 + c.k) % 3] END,
                CASE WHEN c.fmt = 'Integer' THEN (e.ep / 60 + c.k * 13) % 100000 END,
                CASE WHEN c.fmt = 'Decimal' THEN
                    round((50 + c.k % 40 + 10 * sin(e.ep / 600.0 + c.k) + s.n)::numeric, 3)::float8 END,
                c.fmt
            FROM unnest(CAST(:ships AS text[])) WITH ORDINALITY AS s(ship_id, n)
            CROSS JOIN unnest(CAST(:chs AS text[]), CAST(:fmts AS text[]), CAST(:late AS boolean[]))
                WITH ORDINALITY AS c(ch, fmt, late, k)
            CROSS JOIN generate_series(CAST(:start AS timestamp), CAST(:end AS timestamp) - make_interval(secs => :iv),
                                       make_interval(secs => :iv)) AS t(ts)
            CROSS JOIN LATERAL (SELECT CAST(extract(epoch FROM t.ts) AS bigint) AS ep) e
            WHERE (NOT c.late OR t.ts >= CAST(:half AS timestamp))
              AND (s.ship_id IS DISTINCT FROM :offline_ship
                   OR t.ts < CAST(:off_from AS timestamp) OR t.ts >= CAST(:off_to AS timestamp))
            ON CONFLICT DO NOTHING"""
        ),
        {
            "ships": list(ship_ids),
            "chs": [c.channel_id for c in channels],
            "fmts": [c.value_format for c in channels],
            "late": [c.channel_id in late for c in channels],
            "start": start,
            "end": end,
            "iv": spec.interval_seconds,
            "half": start + timedelta(seconds=span / 2),
            "offline_ship": offline_ship,
            "off_from": offline_from,
            "off_to": offline_to,
            **(extra_params or {}),
        },
    )
    return int(result.rowcount)


class LiveWriter:
    """Insert live rows from a background thread, as ships do: every ``every_seconds``, one row per
    ship and channel at the database's current second, and (every ``late_every`` ticks) a late row
    ``late_minutes`` old. For the demo and the tests; the times come from the database."""

    def __init__(self, engine: Engine, source: SourceTable, ship_ids: tuple[str, ...], channels: int,
                 every_seconds: float = 1.0, late_every: int = 0, late_minutes: float = 60.0,
                 timezone: str = "UTC"):
        self.engine = engine
        self.source = source
        self.ship_ids = ship_ids
        self.channels = demo_channels(channels)
        self.every = every_seconds
        self.late_every = late_every
        self.late_minutes = late_minutes
        self.timezone = timezone
        self.rows = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-writer", daemon=True)

    def start(self) -> LiveWriter:
        """Start inserting."""
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop, wait for the last insert to commit, and return the rows inserted; re-raises a failure."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.rows

    def tick(self, n: int) -> int:
        """One insert: the current second for every ship and channel, plus a late second now and then."""
        spec = DemoSpec(interval_seconds=1, late_channel_share=0.0, offline_hours=0.0)
        server = "CAST(:server_now AS timestamp)"
        with self.engine.begin() as conn:
            server_now = conn.execute(text("SELECT now() AT TIME ZONE :tz"), {"tz": self.timezone}).scalar_one()
            now = server_now.replace(microsecond=0)
            extra = {"server_now": server_now}
            rows = insert_rows(conn, self.source, self.ship_ids, self.channels, now, now + timedelta(seconds=1),
                               spec, server_time_sql=server, extra_params=extra)
            if self.late_every and n % self.late_every == 0:
                late = now - timedelta(minutes=self.late_minutes) + timedelta(milliseconds=500)
                rows += insert_rows(conn, self.source, self.ship_ids, self.channels, late,
                                    late + timedelta(seconds=1), spec, server_time_sql=server, extra_params=extra)
        return rows

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                self.rows += self.tick(n)
                self._stop.wait(self.every)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by stop()
            log.error("live writer failed: %s", exc)
            self.error = exc
