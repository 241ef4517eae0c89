"""A production-shaped narrow source for the fleet benchmark: many ships, interleaved, every value present.

:mod:`demo_data` writes each ship's history in one statement, so the heap holds one ship after the
other and the values are smooth and regular. A collector does not: it writes every ship's rows of
one tick next to each other, for all ships, tick after tick. This module generates that shape:

* the rows of all ships are inserted in time order, one ``INSERT ... SELECT`` per hour of
  ``created_time``, ordered by created_time, then ship, then channel (generated in the database
  with ``generate_series``, no sort: the row number is decoded into tick, ship and channel);
* the source has only the production indexes: the primary key (ship_id, data_channel_id,
  created_time) and an index on created_time, created after the first load, then
  ``VACUUM ANALYZE``;
* every ship has a row for every channel and tick, the value in the column its value_format
  names (the real channel ids and formats of :func:`demo_data.demo_channels`); doubles are a
  per-channel wave plus hash noise (many digits, some negative), integers are counters with
  jitter, booleans and strings are hash draws; a ship id is a valid 7-digit IMO number drawn
  from a seeded generator; ``server_created_time`` is created_time plus 1 to 9 seconds.

:func:`seed_fleet` fills a source from a :class:`FleetSpec`; :class:`FleetWriter` keeps inserting one
tick for every ship and channel at the production rate (every 15 s) for freshness measurements.
All times come from the database's clock.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from narrow2wide.db.narrow_source import SourceTable
from narrow2wide.demo.demo_data import demo_channels

log = logging.getLogger("fleet_data")  # the name the log file has always shown

SLICE_SECONDS = 3600  # seed_fleet inserts one hour of created_time (every ship) per statement
GOLDEN = (math.sqrt(5) - 1) / 2  # FleetWriter(spread_phases=True): tick n is shifted by frac(n * GOLDEN) periods
_FORMAT_CODES = {"Decimal": 0, "Integer": 1, "Boolean": 2, "String": 3}
_MODES = ["AUTO", "MANUAL", "STANDBY", "SEA PASSAGE", "MANOEUVRING", "IN PORT", "DRIFTING", "ANCHORED"]
_COUNTER_STEPS = [1, 10, 60, 900, 3600]  # seconds per count of an Integer channel


@dataclass(frozen=True)
class FleetSpec:
    """What to generate: ``ships`` x ``channels`` with ``hours`` of history at ``interval_seconds``.

    ``end`` defaults to the database's current time rounded down to the interval; ``seed`` picks the
    ship ids and the value patterns (the first n ships of a seed are the same for every fleet size).
    """

    ships: int
    channels: int
    hours: float
    interval_seconds: int = 15
    end: datetime | None = None
    seed: int = 1


@dataclass(frozen=True)
class FleetSeed:
    """What :func:`seed_fleet` made."""

    source: str
    ship_ids: tuple[str, ...]
    channel_ids: tuple[str, ...]
    rows: int
    start: datetime
    end: datetime
    seconds: float


@dataclass(frozen=True)
class FleetTick:
    """One tick a :class:`FleetWriter` inserted: its created_time, rows, and when it committed."""

    number: int
    created_time: datetime
    rows: int
    committed: float  # time.monotonic() right after the commit


def imo_number(six_digits: int) -> str:
    """``IMO`` plus the six digits and their check digit (weights 7..2, sum mod 10), as real IMO numbers are."""
    digits = [int(d) for d in f"{six_digits:06d}"]
    check = sum(d * w for d, w in zip(digits, range(7, 1, -1), strict=True)) % 10
    return f"IMO{six_digits:06d}{check}"


def fleet_ship_ids(count: int, seed: int = 1) -> tuple[str, ...]:
    """``count`` distinct, non-consecutive, valid IMO numbers drawn from a generator seeded by ``seed``.

    The sequence does not depend on ``count``: a fleet of 10 starts with the ships of a fleet of 1.
    """
    rng = random.Random(f"fleet-ships-{seed}")
    out: list[str] = []
    while len(out) < count:
        ship = imo_number(rng.randrange(900000, 980000))
        if ship not in out:
            out.append(ship)
    return tuple(out)


def _rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.blake2b("|".join((str(seed),) + parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@lru_cache(maxsize=64)
def _shape(ships: int, channels: int, seed: int) -> dict[str, Any]:
    """The query parameters of a fleet: ids, and per ship and per channel the constants of its values."""
    ship_ids = fleet_ship_ids(ships, seed)
    chans = demo_channels(channels)
    ship_rngs = [_rng(seed, "ship", s) for s in ship_ids]
    p: dict[str, Any] = {
        "ships": list(ship_ids),
        "skeys": [r.randrange(1, 2**31) for r in ship_rngs],
        "phase": [r.uniform(0, 2 * math.pi) for r in ship_rngs],
        "chs": [c.channel_id for c in chans],
        "fcodes": [_FORMAT_CODES.get(c.value_format, 0) for c in chans],
        "modes": _MODES,
    }
    for key in ("ckeys", "base", "amp", "period", "noise", "ibase", "istep", "ptrue", "skind"):
        p[key] = []
    for c in chans:
        r = _rng(seed, "channel", c.channel_id)
        amp = r.uniform(0.5, 60.0)
        p["ckeys"].append(r.randrange(1, 2**31))
        # a quarter of the channels swing around zero (rudder angles, currents, trims): negative values
        p["base"].append(r.uniform(-amp / 2, amp / 2) if r.random() < 0.25 else r.uniform(-50.0, 900.0))
        p["amp"].append(amp)
        p["period"].append(r.uniform(120.0, 7200.0))
        p["noise"].append(amp * r.uniform(0.001, 0.2))
        p["ibase"].append(r.randrange(0, 10**9))
        p["istep"].append(r.choice(_COUNTER_STEPS))
        p["ptrue"].append(r.randrange(3, 98))
        p["skind"].append(1 if c.channel_id.lower().endswith("/eta") else 0)
    return p


# The row number i of generate_series is decoded into (tick, ship, channel) in that nesting order, so the
# rows come out ordered by created_time, then ship, then channel without a sort; OFFSET 0 keeps each level
# from being flattened into the next (which would compute the hash once per use instead of once per row).
_INSERT = """INSERT INTO {src} (ship_id, data_channel_id, created_time, server_created_time,
        bool_v, str_v, long_v, double_v, value_format)
SELECT (CAST(:ships AS text[]))[v.si], (CAST(:chs AS text[]))[v.ci], v.ts, {server},
    CASE WHEN v.f = 2 THEN v.u % 100 < (CAST(:ptrue AS int[]))[v.ci] END,
    CASE WHEN v.f = 3 THEN CASE WHEN (CAST(:skind AS int[]))[v.ci] = 1
        THEN to_char(v.ts + (1 + v.u % 240) * interval '1 hour', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        ELSE (CAST(:modes AS text[]))[1 + (v.u % 8)] END END,
    CASE WHEN v.f = 1 THEN (CAST(:ibase AS bigint[]))[v.ci] + v.sk % 100000 + v.ep / (CAST(:istep AS bigint[]))[v.ci]
        + v.u % 3 END,
    CASE WHEN v.f = 0 THEN (CAST(:base AS float8[]))[v.ci]
        + (CAST(:amp AS float8[]))[v.ci] * sin(v.ep / (CAST(:period AS float8[]))[v.ci]
                                               + (CAST(:phase AS float8[]))[v.si])
        + (CAST(:noise AS float8[]))[v.ci] * ((v.u % 2000001) - 1000000) / 1000000.0 END,
    CASE v.f WHEN 0 THEN 'Decimal' WHEN 1 THEN 'Integer' WHEN 2 THEN 'Boolean' ELSE 'String' END
FROM (
    SELECT k.*, (CAST(:fcodes AS int[]))[k.ci] AS f,
           hashint8extended((k.sk << 32) # (CAST(:ckeys AS bigint[]))[k.ci] # k.ep, :seed) & 9223372036854775807 AS u
    FROM (
        SELECT n.i % :nch + 1 AS ci, (n.i / :nch) % :nship + 1 AS si,
               (CAST(:skeys AS bigint[]))[(n.i / :nch) % :nship + 1] AS sk,
               CAST(:start AS timestamp) + (n.i / :per_tick) * :iv * interval '1 second' AS ts,
               CAST(:ep0 AS bigint) + (n.i / :per_tick) * :iv AS ep
        FROM (SELECT generate_series(CAST(0 AS bigint), CAST(:n AS bigint) - 1) AS i) n OFFSET 0
    ) k OFFSET 0
) v
ON CONFLICT DO NOTHING"""


def insert_fleet_rows(conn: Connection, source: SourceTable, spec: FleetSpec, start: datetime, end: datetime,
                      server_time: datetime | None = None) -> int:
    """Insert every ship x channel of ``spec`` for each tick ``start + k * interval`` before ``end``.

    Rows come in created_time, ship, channel order. ``server_created_time`` is created_time plus 1 to
    9 seconds, or ``server_time`` when given (a live insert). Returns the rows inserted (an existing
    cell is left alone: ``ON CONFLICT DO NOTHING``).
    """
    iv = spec.interval_seconds
    ticks = math.ceil((end - start).total_seconds() / iv)
    if ticks <= 0:
        return 0
    p = _shape(spec.ships, spec.channels, spec.seed)
    per_tick = len(p["ships"]) * len(p["chs"])
    server = ("CAST(:server_time AS timestamp)" if server_time is not None
              else "v.ts + (1000 + v.u % 8000) * interval '1 millisecond'")
    params = {**p, "nch": len(p["chs"]), "nship": len(p["ships"]), "per_tick": per_tick, "iv": iv,
              "start": start, "ep0": int((start - datetime(1970, 1, 1)).total_seconds()), "n": ticks * per_tick,
              "seed": spec.seed, "server_time": server_time}
    result = conn.execute(text(_INSERT.format(src=source.sql, server=server)), params)
    return int(result.rowcount)


def database_grid_now(conn: Connection, interval_seconds: int, timezone: str = "UTC") -> datetime:
    """The database's current time in ``timezone`` (naive), rounded down to a multiple of the interval."""
    return conn.execute(text(
        "SELECT to_timestamp(floor(extract(epoch FROM now()) / :iv) * :iv) AT TIME ZONE :tz"),
        {"iv": interval_seconds, "tz": timezone}).scalar_one()


def vacuum_analyze(engine: Engine, source: SourceTable) -> None:
    """``VACUUM (ANALYZE)`` the source (outside a transaction: VACUUM needs autocommit)."""
    raw = engine.raw_connection()
    try:
        raw.dbapi_connection.autocommit = True  # type: ignore[union-attr]
        with raw.cursor() as cur:
            cur.execute(f"VACUUM (ANALYZE) {source.sql}")
    finally:
        raw.dbapi_connection.autocommit = False  # type: ignore[union-attr]
        raw.close()


def seed_fleet(engine: Engine, source: SourceTable, spec: FleetSpec, timezone: str = "UTC") -> FleetSeed:
    """Create ``source`` with the production indexes and fill it with ``spec``'s fleet, hour by hour.

    A new table is loaded without indexes, then given the primary key and the created_time index;
    an existing one keeps its indexes and gains only missing cells (re-seeding the same spec, with
    the same ``end``, adds nothing). Each hour commits on its own. Ends with ``VACUUM ANALYZE``.
    """
    if spec.ships < 1 or spec.channels < 1 or spec.hours <= 0 or spec.interval_seconds < 1:
        raise ValueError(f"a fleet needs ships, channels, hours and an interval: {spec}")
    started = time.monotonic()
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": source.sql}).scalar() is not None
        source.create(conn, with_indexes=exists)
        end = spec.end or database_grid_now(conn, spec.interval_seconds, timezone)
    start = end - timedelta(hours=spec.hours)
    step = timedelta(seconds=max(1, round(SLICE_SECONDS / spec.interval_seconds)) * spec.interval_seconds)
    rows = 0
    a = start
    while a < end:
        b = min(a + step, end)
        with engine.begin() as conn:
            rows += insert_fleet_rows(conn, source, spec, a, b)
        a = b
    if not exists:
        with engine.begin() as conn:
            source.create_indexes(conn)
    vacuum_analyze(engine, source)
    seed = FleetSeed(source=source.label, ship_ids=fleet_ship_ids(spec.ships, spec.seed),
                     channel_ids=tuple(c.channel_id for c in demo_channels(spec.channels)), rows=rows,
                     start=start, end=end, seconds=time.monotonic() - started)
    log.info("seeded %s rows (%d ship(s) x %d channel(s), %s .. %s) into %s in %.1f s", f"{rows:,}",
             spec.ships, spec.channels, start, end, source.label, seed.seconds)
    return seed


class FleetWriter:
    """Insert live ticks from a background thread, as the collector does.

    Every ``every_seconds`` (on a fixed schedule), one row for every ship and channel of ``spec``
    with created_time = the database's current time truncated to the second and
    server_created_time = the database's current time, in one transaction. Each committed tick is
    kept in :attr:`ticks` and handed to ``on_tick``.

    ``spread_phases``: tick n is due at ``(n + frac(n * 0.618...)) * every_seconds`` instead of
    ``n * every_seconds`` (still one tick per period on average). A consumer that runs at the same
    period (realtime every 15 s) then meets the ticks at evenly spread phases instead of always at
    the one phase the start happened to fix, which is what a freshness distribution needs.
    """

    def __init__(self, engine: Engine, source: SourceTable, spec: FleetSpec, every_seconds: float = 15.0,
                 timezone: str = "UTC", on_tick: Callable[[FleetTick], None] | None = None,
                 spread_phases: bool = False) -> None:
        self.engine = engine
        self.source = source
        self.spec = spec
        self.every = every_seconds
        self.spread_phases = spread_phases
        self.timezone = timezone
        self.on_tick = on_tick
        self.rows = 0
        self.ticks: list[FleetTick] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-writer", daemon=True)

    def start(self) -> FleetWriter:
        """Start inserting (the first tick at once)."""
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop, wait for the last insert to commit, and return the rows inserted; re-raises a failure."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        return self.rows

    def tick(self, number: int) -> FleetTick:
        """Insert one tick now; returns it once committed."""
        with self.engine.begin() as conn:
            now = conn.execute(text("SELECT now() AT TIME ZONE :tz"), {"tz": self.timezone}).scalar_one()
            created = now.replace(microsecond=0)
            rows = insert_fleet_rows(conn, self.source, self.spec, created, created + timedelta(seconds=1),
                                     server_time=now)
        return FleetTick(number, created, rows, time.monotonic())

    def _due(self, n: int) -> float:
        """Seconds after the start at which tick ``n + 1`` is due."""
        shift = (n * GOLDEN) % 1.0 if self.spread_phases else 0.0
        return (n + shift) * self.every

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                tick = self.tick(n)
                self.rows += tick.rows
                self.ticks.append(tick)
                if self.on_tick is not None:
                    self.on_tick(tick)
                log.debug("fleet writer: tick %d at %s, %d rows", n, tick.created_time, tick.rows)
                self._stop.wait(max(started + self._due(n) - time.monotonic(), 0.0))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by stop()
            log.error("fleet writer failed: %s", exc)
            self.error = exc
