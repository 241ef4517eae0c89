"""Hostile and odd input: every case has a defined outcome, never a crash and never a silent loss.

A case ends in one of three ways, and each test says which:

* migrated exactly: :func:`tests.wide_check.compare` finds every cell of the source in the wide tables;
* rejected: the row is in the reject file with its reason and counted in the backfill result and in status;
* refused: a :class:`errors.MigratorError` (the CLI prints one line and exits 1 or 2, no traceback).

Sources are built here by hand (a few channels, a few hours), so every odd value is placed on purpose.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from config import Settings
from cutoff_store import CutoffStore
from data_migrator import BackfillOptions, BackfillResult, migration_status, parse_cutoff, run_backfill
from narrow2wide.checks.validator import validate
from narrow2wide.common.errors import ConfigError, SourceError
from narrow2wide.db.database import Databases, qi, qualified, server_now
from narrow2wide.db.narrow_source import REQUIRED_COLUMNS
from narrow2wide.db.runtime import Runtime
from narrow2wide.engine import window_migrator
from realtime_processor import RealtimeOptions, run_realtime
from schema_analyzer import analyze_source
from table_creator import COLUMNS_META, TABLES_META, create_tables
from tests.wide_check import CellDiff, compare, wide_snapshot

T0 = datetime(2024, 10, 1, 18, 0)
END = datetime(2024, 10, 2)
VALUE_COLUMNS = ("double_v", "long_v", "bool_v", "str_v")
FORMAT_COLUMN = {"Decimal": "double_v", "Integer": "long_v", "Boolean": "bool_v", "String": "str_v"}
REASON_UNKNOWN = "unknown or NULL value_format"
REASON_NULL = "the value column named by value_format is NULL"
REASON_BIGINT = "does not fit the bigint column"
REASON_DUPLICATE = "duplicate row"


# ---------------------------------------------------------------- helpers


def create_source(rt: Runtime, *, time_type: str = "timestamp", primary_key: bool = True,
                  omit: Iterable[str] = (), extra_first: str = "", extra_last: str = "") -> None:
    """Create the narrow table by hand: optional primary key, columns left out, extra columns around."""
    omit = set(omit)
    cols = [("ship_id", "text NOT NULL"), ("data_channel_id", "text NOT NULL"),
            ("created_time", f"{time_type} NOT NULL"), ("server_created_time", time_type),
            ("bool_v", "boolean"), ("str_v", "text"), ("long_v", "bigint"), ("double_v", "double precision"),
            ("value_format", "varchar(50)")]
    ddl = [extra_first] if extra_first else []
    ddl += [f"{name} {ty}" for name, ty in cols if name not in omit]
    if extra_last:
        ddl.append(extra_last)
    if primary_key:
        ddl.append("PRIMARY KEY (ship_id, data_channel_id, created_time)")
    with rt.dbs.source.begin() as conn:
        conn.execute(text(f"CREATE TABLE {rt.source.sql} ({', '.join(ddl)})"))


def row(ship: str, channel: str, ts: datetime, fmt: str | None, value: object = None, **others: object) -> dict:
    """One narrow row: ``value`` goes to the column ``fmt`` names; ``others`` set value columns directly."""
    r: dict[str, object] = {"ship_id": ship, "data_channel_id": channel, "created_time": ts, "value_format": fmt,
                            "server_created_time": ts, **{c: None for c in VALUE_COLUMNS}}
    if fmt in FORMAT_COLUMN and value is not None:
        r[FORMAT_COLUMN[fmt]] = value
    r.update(others)
    return r


def series(ship: str, channel: str, fmt: str, start: datetime = T0, count: int = 12,
           step: timedelta = timedelta(minutes=15)) -> list[dict]:
    """``count`` well-formed rows of one channel, one every ``step``."""
    value = {"Decimal": lambda i: i * 1.25, "Integer": lambda i: i * 1000, "Boolean": lambda i: i % 2 == 0,
             "String": lambda i: f"s{i}"}[fmt]
    return [row(ship, channel, start + i * step, fmt, value(i)) for i in range(count)]


def insert(rt: Runtime, rows: list[dict]) -> None:
    """INSERT the rows into the source (only the columns the source has)."""
    with rt.dbs.source.begin() as conn:
        present = set(conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = :s AND table_name = :t"),
            {"s": rt.source.schema, "t": rt.source.name}).scalars())
        for r in rows:
            cols = [c for c in r if c in present]
            conn.execute(text(f"INSERT INTO {rt.source.sql} ({', '.join(cols)}) "
                              f"VALUES ({', '.join(':' + c for c in cols)})"), {c: r[c] for c in cols})


def opts(cutoff: object = END, chunk_hours: int = 1, **kw: object) -> BackfillOptions:
    """Backfill options for a quiet, fast test run."""
    return BackfillOptions(progress=False, backoff_seconds=0.01, cutoff_time=str(cutoff), chunk_hours=chunk_hours,
                           **kw)  # type: ignore[arg-type]


def migrate(rt: Runtime, cutoff: object = END, chunk_hours: int = 1) -> BackfillResult:
    """schema-only, tables-only and migration-only through the library."""
    analyze_source(rt)
    create_tables(rt)
    return run_backfill(rt, (), opts(cutoff, chunk_hours))


def assert_exact(rt: Runtime, ship: str, end: datetime | None = None, settings: Settings | None = None,
                 rejected: int = 0) -> CellDiff:
    """The oracle finds every expected cell of ``ship`` (and nothing else) in the wide tables, and exactly
    ``rejected`` source rows (the test's own bad rows) without a cell."""
    diff = compare(rt.dbs.source, settings or rt.settings, ship, end=end)
    assert diff.exact_with_rejects(rejected), (ship, diff)
    return diff


def reject_rows(settings: Settings) -> list[dict[str, str]]:
    """Every row of every reject file."""
    out = []
    for path in sorted(Path(settings.reject_dir).rglob("*.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            out.extend(csv.DictReader(fh))
    return out


def wide_column(rt: Runtime, ship: str, channel: str) -> dict[datetime, object]:
    """created_time -> the channel's cell, read straight from its wide table."""
    schema = rt.settings.target_schema
    with rt.dbs.target.connect() as conn:
        table, column = conn.execute(text(
            f"SELECT table_name, column_name FROM {qualified(schema, COLUMNS_META)} "
            "WHERE ship_id = :s AND channel_id = :c"), {"s": ship, "c": channel}).one()
        rows = conn.execute(text(f"SELECT created_time, {qi(column)} FROM {qualified(schema, table)} "
                                 f"WHERE {qi(column)} IS NOT NULL ORDER BY 1")).all()
    return {r[0]: r[1] for r in rows}


def wide_times(rt: Runtime, ship: str) -> list[datetime]:
    """Every created_time in the ship's wide tables."""
    schema = rt.settings.target_schema
    with rt.dbs.target.connect() as conn:
        tables = conn.execute(text(f"SELECT table_name FROM {qualified(schema, TABLES_META)} WHERE ship_id = :s"),
                              {"s": ship}).scalars().all()
        union = " UNION ".join(f"SELECT created_time FROM {qualified(schema, t)}" for t in tables)
        return list(conn.execute(text(f"SELECT created_time FROM ({union}) u ORDER BY 1")).scalars())


def assert_one_line_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    """The CLI refused with ``expected_code`` and one 'error:' line naming ``needles``, no traceback."""
    assert code == expected_code, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err


# ---------------------------------------------------------------- values in the wrong place


def test_wrong_value_column_and_null_or_unknown_formats_are_rejected_and_counted(runtime):
    """A value outside the column its value_format names, a NULL, unknown or mis-cased value_format, and a row
    with every value NULL are rejected with their reason, counted in the result and in status; the rest of the
    ship (and a channel seen only with an unknown format, which gets a text column) migrates exactly."""
    ship = "IMO9000001"
    create_source(runtime)
    odd = T0 + timedelta(minutes=7)
    s = timedelta(seconds=1)
    bad = [
        (row(ship, "dec", odd, "Decimal", long_v=5), REASON_NULL),  # value in long_v, format says double_v
        (row(ship, "dec", odd + s, None, double_v=1.0), REASON_UNKNOWN),
        (row(ship, "dec", odd + 2 * s, "Foo", double_v=2.0), REASON_UNKNOWN),
        (row(ship, "dec", odd + 3 * s, "decimal", double_v=3.0), REASON_UNKNOWN),
        (row(ship, "dec", odd + 4 * s, "Decimal"), REASON_NULL),  # every value column NULL
        (row(ship, "int", odd, "Integer", double_v=4.0), REASON_NULL),
        (row(ship, "flag", odd, "Boolean", long_v=1), REASON_NULL),
        (row(ship, "txt", odd, "String", double_v=3.5), REASON_NULL),
        (row(ship, "txt", odd + s, "Foo", str_v="x"), REASON_UNKNOWN),
        (row(ship, "txt", odd + 2 * s, None), REASON_UNKNOWN),
    ]
    foo_only = [(row(ship, "foo_only", T0 + i * timedelta(minutes=20), "Foo", double_v=float(i)), REASON_UNKNOWN)
                for i in range(3)]
    good = (series(ship, "dec", "Decimal") + series(ship, "int", "Integer") + series(ship, "flag", "Boolean")
            + series(ship, "txt", "String"))
    insert(runtime, good + [r for r, _ in bad + foo_only])

    with runtime.dbs.source.connect() as conn:
        assert runtime.source.has_unique_key(conn)
    result = migrate(runtime)
    analysis_unknown = " ".join(analyze_source(runtime).ships[0].unknown_formats)
    assert "foo_only: Foo" in analysis_unknown and "dec:" in analysis_unknown

    expected_rejects = len(bad) + len(foo_only)
    assert not result.failed_chunks
    assert result.ships[0].rows_read == len(good) + expected_rejects
    assert result.ships[0].rejected == expected_rejects
    assert migration_status(runtime).ships[0].rejected == expected_rejects
    assert_exact(runtime, ship, rejected=expected_rejects)
    assert wide_column(runtime, ship, "foo_only") == {}  # its column exists, nothing silently converted

    got = {(r["data_channel_id"], r["created_time"]): r for r in reject_rows(runtime.settings)}
    assert len(got) == expected_rejects == len(reject_rows(runtime.settings))
    for r, reason in bad + foo_only:
        line = got[(r["data_channel_id"], str(r["created_time"]))]
        assert line["reason"] == reason, line
        assert line["value_format"] == (r["value_format"] or "")
        assert line["ship_id"] == ship


# ---------------------------------------------------------------- numbers at the edges


DOUBLES = [math.nan, math.inf, -math.inf, 1e308, -1e308, 1.7976931348623157e308, 5e-324, -5e-324,
           2.2250738585072014e-308, -0.0, 0.1, 1 / 3]
BIGINTS = [-9223372036854775808, 9223372036854775807, 0, -1, 2**53 + 1, -(2**53) - 1]


def test_nan_infinity_and_extreme_numbers_are_migrated_bit_for_bit(runtime):
    """NaN, +/-Infinity, the largest, smallest and subnormal doubles, -0.0 and the bigint extremes land exactly
    in double precision, bigint and text columns; a Decimal that cannot be a bigint (NaN, infinite, 1e19, a
    fraction) arriving for a bigint column is rejected with its reason, never wrapped or truncated."""
    ship = "IMO9000002"
    create_source(runtime)
    sec = timedelta(seconds=1)
    rows = [row(ship, "dbl", T0 + i * sec, "Decimal", v) for i, v in enumerate(DOUBLES)]
    rows += [row(ship, "big", T0 + i * sec, "Integer", v) for i, v in enumerate(BIGINTS)]
    # String + Decimal + Integer: a text column, the numbers rendered by the server
    rows += [row(ship, "mixed", T0 + i * sec, "Decimal", v) for i, v in enumerate(DOUBLES)]
    rows += [row(ship, "mixed", T0 + timedelta(minutes=1) + i * sec, "Integer", v) for i, v in enumerate(BIGINTS)]
    rows += [row(ship, "mixed", T0 + timedelta(minutes=2), "String", "text")]
    insert(runtime, rows)
    with runtime.dbs.source.begin() as conn:  # a bound -0.0 arrives as the numeric literal -0.0, which is 0
        conn.execute(text(f"UPDATE {runtime.source.sql} SET double_v = CAST('-0' AS float8) "
                          "WHERE double_v = 0 AND value_format = 'Decimal'"))
    analyze_source(runtime)
    create_tables(runtime)
    # after the analysis gave "big" a bigint column, Decimal values arrive for it
    decimals_for_bigint = [math.nan, math.inf, -math.inf, 1e19, -1e19, 2.5, 4.0, -8.5e18]
    late = [row(ship, "big", T0 + timedelta(minutes=5) + i * sec, "Decimal", v)
            for i, v in enumerate(decimals_for_bigint)]
    insert(runtime, late)
    result = run_backfill(runtime, (), opts())

    assert not result.failed_chunks
    assert result.ships[0].rejected == 6  # all but 4.0 and -8.5e18
    assert_exact(runtime, ship, rejected=6)
    dbl = list(wide_column(runtime, ship, "dbl").values())
    assert len(dbl) == len(DOUBLES)
    for got, want in zip(dbl, DOUBLES, strict=True):
        assert (math.isnan(got) and math.isnan(want)) or (got == want and math.copysign(1, got) ==
                                                           math.copysign(1, want)), (got, want)
    big = wide_column(runtime, ship, "big")
    assert list(big.values()) == BIGINTS + [4, -8_500_000_000_000_000_000]
    rejected = reject_rows(runtime.settings)
    assert len(rejected) == 6 and all(REASON_BIGINT in r["reason"] for r in rejected)
    mixed = set(wide_column(runtime, ship, "mixed").values())
    assert {"NaN", "Infinity", "-Infinity", "1e+308", "5e-324", "-0", "-9223372036854775808",
            "9223372036854775807", "text"} <= mixed


# ---------------------------------------------------------------- strings that look like COPY syntax


HOSTILE_STRINGS = [
    "tab\there", "new\nline", "carriage\rreturn", "crlf\r\n", "back\\slash", "\\N", "\\.", "\\.\n", "\\\\N",
    "\\t\\n\\r", "N", "NULL", "", " ", "'single'", '"double"', "a,b;c|d", "%s %(x)s :y", "\x01\x02\x1b\x7f",
    "\u00e6\u00f8\u00e5 \u6e29\u5ea6 \U00010348 \u200b", "\\x00", "end\\",
    ("0123456789\t\n\r\\N\\.\u00e9" * 65536)[: 1 << 20],  # about 1 MB, every escape look-alike repeated
]


def test_strings_with_copy_escapes_and_a_megabyte_are_migrated_byte_for_byte(runtime):
    """Tabs, newlines, carriage returns, backslashes, \\N, \\., control characters, unicode, the empty string and
    a 1 MB string come out of the wide table exactly as they went in; a rejected row's string is written to the
    reject file (CSV-quoted, cut to 200 characters) without confusing it."""
    ship = "IMO9000003"
    create_source(runtime)
    sec = timedelta(seconds=1)
    rows = [row(ship, "s", T0 + i * sec, "String", v) for i, v in enumerate(HOSTILE_STRINGS)]
    rows.append(row(ship, "other", T0, "Decimal", 1.5))
    rows.append(row(ship, "s", T0 + timedelta(minutes=30), None, str_v="\\N\t\r\n\\."))  # rejected
    insert(runtime, rows)
    result = migrate(runtime)

    assert not result.failed_chunks
    assert result.ships[0].rejected == 1
    assert_exact(runtime, ship, rejected=1)
    got = list(wide_column(runtime, ship, "s").values())
    assert got == HOSTILE_STRINGS
    (rejected,) = reject_rows(runtime.settings)
    assert rejected["str_v"] == "\\N\t\r\n\\." and rejected["reason"] == REASON_UNKNOWN


# ---------------------------------------------------------------- identifiers from the data


ODD_CHANNELS = [
    "it's", 'say "hi"', "a;b", "x; DROP TABLE canary; --", "-- comment", "with space", " padded ",
    "\u00fcn\u00efc\u00f8d\u00e9/\u6e29\u5ea6", "c" * 200, "\u00e9" * 100, "", "created_time", "%(ship)s", ":name",
    "back\\slash", "tab\there", "new\nline", "IT'S",
]


def test_odd_channel_ids_get_their_own_columns_and_migrate_exactly(runtime):
    """Channel ids with quotes, semicolons, '--', spaces, unicode, 200 bytes, the empty string, 'created_time',
    bind-parameter look-alikes and control characters each get a distinct column (hashed when too long or
    taken) and migrate exactly; nothing in them is executed."""
    ship = "IMO9000004"
    create_source(runtime)
    with runtime.dbs.target.begin() as conn:
        conn.execute(text(f"CREATE TABLE {qualified(runtime.settings.target_schema, 'canary')} (x int)"))
    formats = ("Decimal", "Integer", "Boolean", "String")
    rows = []
    for i, ch in enumerate(ODD_CHANNELS):
        rows += series(ship, ch, formats[i % 4], count=8)
    insert(runtime, rows)
    result = migrate(runtime)

    assert not result.failed_chunks and result.ships[0].rejected == 0
    assert_exact(runtime, ship)
    with runtime.dbs.target.connect() as conn:
        mapped = dict(conn.execute(text(
            f"SELECT channel_id, column_name FROM {qualified(runtime.settings.target_schema, COLUMNS_META)} "
            "WHERE ship_id = :s"), {"s": ship}).all())
        assert conn.execute(text("SELECT to_regclass(:t)"),
                            {"t": qualified(runtime.settings.target_schema, "canary")}).scalar() is not None
    assert sorted(mapped) == sorted(ODD_CHANNELS)
    assert len(set(mapped.values())) == len(ODD_CHANNELS)
    assert all(0 < len(c.encode()) <= 63 for c in mapped.values())
    assert mapped["created_time"] != "created_time"
    for ch in ODD_CHANNELS:
        assert len(wide_column(runtime, ship, ch)) == 8, ch


ODD_SHIPS = [
    "IMO 'quoted'", 'ship "dq"', "fleet/ship\\7", "\u00dcn\u00efc\u00f8d\u00e9-\u8239", "S" * 120, "imo9000005",
    "IMO9000005", "x; DROP TABLE canary; --", "%(s)s:x", "-",
]


def test_odd_ship_ids_become_distinct_working_tables_and_migrate_exactly(runtime):
    """Ship ids with quotes, spaces, slashes, backslashes, unicode, 120 characters, case-only differences and
    SQL or bind-parameter look-alikes each get their own wide table(s), cutoff and reject folder, and migrate
    exactly; status and validate handle every one of them."""
    create_source(runtime)
    rows = []
    for i, ship in enumerate(ODD_SHIPS):
        rows += series(ship, "speed", "Decimal", count=6) + series(ship, "mode", "String", count=6)
        rows.append(row(ship, "speed", T0 + timedelta(minutes=1), "Foo", double_v=float(i)))  # one reject each
    insert(runtime, rows)
    result = migrate(runtime, chunk_hours=24)

    assert not result.failed_chunks
    assert {s.ship_id: s.rejected for s in result.ships} == {s: 1 for s in ODD_SHIPS}
    for ship in ODD_SHIPS:
        assert_exact(runtime, ship, rejected=1)
    with runtime.dbs.target.connect() as conn:
        tables = conn.execute(text(f"SELECT ship_id, table_name FROM "
                                   f"{qualified(runtime.settings.target_schema, TABLES_META)}")).all()
    assert sorted(t[0] for t in tables) == sorted(ODD_SHIPS)
    assert len({t[1] for t in tables}) == len(ODD_SHIPS)
    assert all(len(t[1].encode()) <= 63 for t in tables)
    store = CutoffStore(runtime.settings.cutoff_file)
    assert all(store.get(s).cutoff == END for s in ODD_SHIPS)
    folders = {p.parent for p in Path(runtime.settings.reject_dir).rglob("*.csv")}
    assert len(folders) == len(ODD_SHIPS)
    assert {r["ship_id"] for r in reject_rows(runtime.settings)} == set(ODD_SHIPS)
    status = migration_status(runtime)
    assert {s.ship_id: (s.status, s.rejected) for s in status.ships} == {s: ("completed", 1) for s in ODD_SHIPS}
    report = validate(runtime)
    assert report.ok, [s.message for s in report.ships if not s.ok]


def test_cli_handles_an_odd_ship_id_end_to_end(runtime, procs):
    """The CLI takes an odd ship id (quote, space, slash, unicode) through --ship-id for every step and exits 0;
    the ship migrates exactly and the other ship is left alone."""
    odd, other = "IMO 'x'/\u00e6 7", "IMO9000006"
    create_source(runtime)
    insert(runtime, series(odd, "a", "Decimal") + series(odd, "b", "Integer") + series(other, "a", "Decimal"))
    for args in (("--mode", "schema-only"), ("--mode", "tables-only"),
                 ("--mode", "migration-only", "--cutoff-time", str(END), "--ship-id", odd),
                 ("--mode", "status", "--ship-id", odd), ("--mode", "validate", "--ship-id", odd)):
        code, out, err = procs.run(*args)
        assert code == 0 and "Traceback" not in err, (args, out, err)
    assert odd in out
    assert_exact(runtime, odd)
    assert wide_times(runtime, other) == []


# ---------------------------------------------------------------- time


def test_microseconds_survive_and_chunk_edges_and_the_cutoff_are_exact_to_the_microsecond(runtime):
    """created_time keeps its microseconds; rows 1 us apart are separate wide rows; a row on a chunk boundary is
    migrated once; with a cutoff of 20:00:00.5 every row before it migrates and none at or after it."""
    ship = "IMO9000007"
    create_source(runtime)
    us = timedelta(microseconds=1)
    h19, h20 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    cutoff = h20 + timedelta(microseconds=500_000)
    times = [T0 + us, T0 + 2 * us, h19 - us, h19, h19 + us, h20 - us, cutoff - us, cutoff, cutoff + us]
    insert(runtime, [row(ship, "a", t, "Decimal", float(i)) for i, t in enumerate(times)]
           + [row(ship, "b", t, "Integer", i) for i, t in enumerate(times[::2])])
    result = migrate(runtime, cutoff=cutoff.isoformat(sep=" "), chunk_hours=1)

    before = [t for t in times if t < cutoff]
    assert not result.failed_chunks
    assert result.ships[0].rows_read == len(before) + len([t for t in times[::2] if t < cutoff])
    assert wide_times(runtime, ship) == before
    assert_exact(runtime, ship, end=cutoff)
    assert list(wide_column(runtime, ship, "a")) == before


@pytest.mark.parametrize("local", ["2024-10-27 02:30:00", "2024-03-31 02:30:00"])
def test_a_cutoff_in_a_repeated_or_skipped_local_hour_is_refused_with_the_offsets(local: str) -> None:
    """Refused (exit 2): the repeated hour at the end of summer time, and the skipped one at its start,
    name two different instants or none; the message gives the offsets to choose from."""
    with pytest.raises(ConfigError, match=r"ambiguous or does not exist in Europe/Oslo.*\+0[12]00"):
        parse_cutoff(local, "timestamp with time zone", "Europe/Oslo")
    exact = parse_cutoff(local + "+01:00", "timestamp with time zone", "Europe/Oslo")
    assert exact.utcoffset() == timedelta(hours=1)
    assert parse_cutoff("2024-10-27 04:30:00", "timestamp with time zone", "Europe/Oslo").utcoffset() == \
        timedelta(hours=1)


def test_timestamptz_source_across_a_dst_change_migrates_exactly_below_the_cutoff(runtime, settings, pg_url):
    """A timestamptz source read by a session in Europe/Oslo across the end of summer time (02:00-03:00 local
    happens twice): every row before the cutoff (given in local time, SOURCE_TIMEZONE=Europe/Oslo) migrates
    exactly, including both 02:xx local hours, none after it; a rejected row is found for the reject file."""
    oslo = ZoneInfo("Europe/Oslo")
    engine: Engine = create_engine(pg_url, connect_args={"options": "-c TimeZone=Europe/Oslo"})
    try:
        rt = Runtime(settings=settings.with_overrides(source_timezone="Europe/Oslo"),
                     dbs=Databases(source=engine, target=engine))
        ship = "IMO9000008"
        create_source(rt, time_type="timestamptz")
        start = datetime(2024, 10, 26, 23, 0, tzinfo=timezone.utc)  # 01:00 CEST; 01:00 UTC is 03:00 -> 02:00
        times = [start + i * timedelta(minutes=10) for i in range(30)]  # to 03:50 UTC
        rows = [row(ship, "a", t, "Decimal", float(i)) for i, t in enumerate(times)]
        rows += [row(ship, "b", t, "String", t.astimezone(oslo).isoformat()) for t in times]
        rows.append(row(ship, "a", start + timedelta(minutes=95), None, double_v=9.0))  # 02:35 CEST, rejected
        insert(rt, rows)
        local_cutoff = "2024-10-27 03:30:00"  # after the change: CET, 02:30 UTC
        cutoff = datetime(2024, 10, 27, 2, 30, tzinfo=timezone.utc)
        result = migrate(rt, cutoff=local_cutoff, chunk_hours=1)

        assert not result.failed_chunks
        assert result.ships[0].cutoff == cutoff
        assert result.ships[0].rejected == 1
        before = [t for t in times if t < cutoff]
        got = wide_times(rt, ship)
        assert got == before
        local_hours = [t.astimezone(oslo).strftime("%H %Z") for t in got]
        assert "02 CEST" in local_hours and "02 CET" in local_hours
        assert_exact(rt, ship, end=cutoff, rejected=1)
        (rejected,) = reject_rows(rt.settings)
        assert rejected["reason"] == REASON_UNKNOWN
    finally:
        engine.dispose()


def test_rows_far_in_the_future_are_reported_ahead_and_never_migrated_early(runtime):
    """Rows in the year 2200: the backfill migrates only below its cutoff; realtime counts them as 'ahead', does
    not move its watermark past the database's time and does not migrate them; everything up to now is exact."""
    ship = "IMO9000009"
    create_source(runtime)
    with runtime.dbs.source.connect() as conn:
        now = server_now(conn, "UTC").replace(microsecond=0)
    recent = [row(ship, ch, now - timedelta(minutes=40) + i * timedelta(seconds=30), "Decimal", float(i))
              for ch in ("a", "b") for i in range(78)]  # up to a minute ago
    future = [row(ship, ch, datetime(2200, 1, 1, h), "Decimal", 1.0) for ch in ("a", "b") for h in (0, 1)]
    insert(runtime, recent + future)
    cutoff = now - timedelta(minutes=20)
    result = migrate(runtime, cutoff=cutoff, chunk_hours=24)

    assert not result.failed_chunks
    assert result.ships[0].rows_read == sum(1 for r in recent if r["created_time"] < cutoff)
    assert max(wide_times(runtime, ship)) < cutoff
    assert_exact(runtime, ship, end=cutoff)

    rt = runtime
    cycle = run_realtime(rt, (), RealtimeOptions(once=True, settle_seconds=0, install_signal_handlers=False))
    ship_cycle = cycle.last.ships[0]
    assert cycle.ok and ship_cycle.ahead_rows == len(future)
    assert ship_cycle.watermark is not None and ship_cycle.watermark < now + timedelta(minutes=5)
    assert max(wide_times(rt, ship)).year < 2100
    assert_exact(rt, ship, end=ship_cycle.watermark)
    assert compare(rt.dbs.source, rt.settings, ship).missing == len(future)  # still only in the source


def test_realtime_cli_reports_rows_ahead_on_stderr(runtime, procs):
    """`--mode realtime --once` with rows in the year 2200: exit 0, a warning naming the rows ahead, no
    traceback; the rows are not in the wide table."""
    ship = "IMO9000010"
    create_source(runtime)
    with runtime.dbs.source.connect() as conn:
        now = server_now(conn, "UTC").replace(microsecond=0)
    insert(runtime, series(ship, "a", "Decimal", start=now - timedelta(minutes=5), count=8,
                           step=timedelta(seconds=30)) + [row(ship, "a", datetime(2200, 6, 1), "Decimal", 2.0)])
    analyze_source(runtime)
    create_tables(runtime)
    code, out, err = procs.run("--mode", "realtime", "--once")
    assert code == 0 and "Traceback" not in err, err
    assert "ahead" in err and "2200" in err
    assert max(wide_times(runtime, ship)).year < 2100
    assert_exact(runtime, ship, end=datetime(2100, 1, 1))  # every row before the one ahead is there


# ---------------------------------------------------------------- duplicates without a primary key


def _dedup_settings(rt: Runtime, losers: list[dict]) -> Settings:
    """A copy of the source without ``losers`` (one physical row each), as settings for the oracle."""
    copy = rt.settings.source_table + "_expected"
    with rt.dbs.source.begin() as conn:
        conn.execute(text(f"CREATE TABLE {qualified(rt.settings.source_schema, copy)} AS "
                          f"SELECT * FROM {rt.source.sql}"))
        for r in losers:
            conn.execute(text(
                f"""DELETE FROM {qualified(rt.settings.source_schema, copy)} WHERE ctid = (
                    SELECT ctid FROM {qualified(rt.settings.source_schema, copy)}
                    WHERE ship_id = :s AND data_channel_id = :c AND created_time = :t
                      AND value_format IS NOT DISTINCT FROM :f AND double_v IS NOT DISTINCT FROM :d
                      AND str_v IS NOT DISTINCT FROM :sv LIMIT 1)"""),
                {"s": r["ship_id"], "c": r["data_channel_id"], "t": r["created_time"], "f": r["value_format"],
                 "d": r["double_v"], "sv": r["str_v"]})
    return rt.settings.with_overrides(source_table=copy)


def test_an_invalid_unique_index_is_not_taken_for_a_key_and_duplicates_are_still_rejected(runtime):
    """A CREATE UNIQUE INDEX CONCURRENTLY that failed on the duplicates leaves an invalid index behind: it rules
    nothing out, so the source still counts as one without a key; one row per cell is written, the other is
    rejected and counted."""
    ship = "IMO9000023"
    create_source(runtime, primary_key=False)
    t1 = T0 + timedelta(minutes=5)
    old, new = row(ship, "a", t1, "Decimal", 1.0), row(ship, "a", t1, "Decimal", 2.0)
    new["server_created_time"] = t1 + timedelta(seconds=30)
    insert(runtime, series(ship, "a", "Decimal") + [old, new])
    with runtime.dbs.source.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        with pytest.raises(Exception, match="could not create unique index"):
            conn.execute(text(f"CREATE UNIQUE INDEX CONCURRENTLY half_built ON {runtime.source.sql} "
                              "(ship_id, data_channel_id, created_time)"))
        assert conn.execute(text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = CAST(:i AS regclass)"),
                            {"i": f"{runtime.source.schema}.half_built"}).scalar() is True
        assert not runtime.source.has_unique_key(conn)
    result = migrate(runtime)
    assert not result.failed_chunks and result.ships[0].rejected == 1
    assert wide_column(runtime, ship, "a")[t1] == 2.0
    assert_exact(runtime, ship, settings=_dedup_settings(runtime, [old]))


def test_duplicate_rows_without_a_primary_key_keep_the_newest_and_reject_the_rest(runtime, caplog):
    """A source without a primary key holding the same (ship, channel, created_time) more than once: schema-only
    warns; one row per cell is written, the newest by server_created_time (a re-sent correction wins over the
    stale value), whatever the physical order of the source; every other copy is rejected as a duplicate,
    counted, and listed once in the reject file (the kept row is not listed)."""
    ship = "IMO9000011"
    create_source(runtime, primary_key=False)
    t1, t2, t3 = T0 + timedelta(minutes=5), T0 + timedelta(minutes=6), T0 + timedelta(minutes=7)
    sct = timedelta(seconds=30)
    rows = series(ship, "a", "Decimal") + series(ship, "s", "String")
    old_a, new_a = row(ship, "a", t1, "Decimal", 1.0), row(ship, "a", t1, "Decimal", 2.0)
    new_a["server_created_time"] = t1 + sct  # re-sent 30 s later with a corrected value
    same_a = [row(ship, "a", t2, "Decimal", 7.0) for _ in range(3)]  # three identical copies
    old_s, new_s = row(ship, "s", t3, "String", "old"), row(ship, "s", t3, "String", "new")
    new_s["server_created_time"] = t3 + sct
    insert(runtime, rows + [old_a, new_a] + same_a + [old_s, new_s])  # in the order they arrived
    losers = [old_a, same_a[0], same_a[1], old_s]
    with runtime.dbs.source.connect() as conn:
        assert not runtime.source.has_unique_key(conn)

    with caplog.at_level("WARNING", logger="schema_analyzer"):
        result = migrate(runtime)
    assert any("no primary key" in r.getMessage() for r in caplog.records if r.name == "schema_analyzer")
    assert not result.failed_chunks
    assert result.ships[0].rejected == len(losers)
    assert migration_status(runtime).ships[0].rejected == len(losers)
    assert wide_column(runtime, ship, "a")[t1] == 2.0 and wide_column(runtime, ship, "a")[t2] == 7.0
    assert wide_column(runtime, ship, "s")[t3] == "new"

    # the same source in another physical order gives the same wide table
    before = wide_snapshot(runtime.dbs.target, runtime.settings, ship)
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"UPDATE {runtime.source.sql} SET double_v = double_v, str_v = str_v "
                          "WHERE server_created_time > created_time"))  # the winners move to the heap's end
        conn.execute(text(f"UPDATE {qualified(runtime.settings.target_schema, 'migrator_chunks')} "
                          "SET status = 'pending'"))
    again = run_backfill(runtime, (), opts())
    assert again.ships[0].rejected == len(losers)
    assert wide_snapshot(runtime.dbs.target, runtime.settings, ship) == before

    rejected = reject_rows(runtime.settings)
    assert all(REASON_DUPLICATE in r["reason"] for r in rejected)
    assert sorted((r["data_channel_id"], r["double_v"] or r["str_v"]) for r in rejected) == \
        [("a", "1.0"), ("a", "7.0"), ("a", "7.0"), ("s", "old")]
    assert_exact(runtime, ship, settings=_dedup_settings(runtime, losers))


def test_duplicate_rows_do_not_make_validate_fail_forever(runtime):
    """After a backfill of a source with duplicate rows, validate passes: the rejected copies are not counted as
    cells the wide table lacks (otherwise --repair could never make it pass)."""
    ship = "IMO9000012"
    create_source(runtime, primary_key=False)
    dup = row(ship, "a", T0 + timedelta(minutes=5), "Decimal", 3.0)
    insert(runtime, series(ship, "a", "Decimal") + [dup, dict(dup)])
    result = migrate(runtime)
    assert result.ships[0].rejected == 1
    report = validate(runtime)
    assert report.ok, report.ships[0].message


# ---------------------------------------------------------------- the shape of the source table


@pytest.mark.parametrize("missing", REQUIRED_COLUMNS)
def test_a_source_without_a_required_column_is_refused_by_name(runtime, missing):
    """A source table that lacks a required column is refused by schema-only with a SourceError naming the
    column; nothing is written."""
    create_source(runtime, primary_key=False, omit=[missing])
    with pytest.raises(SourceError, match=f"lacks column\\(s\\) {missing}$"):
        analyze_source(runtime)
    assert not runtime.settings.schema_file.exists()


def test_cli_refuses_a_source_without_str_v_or_value_format_with_one_line(runtime, procs):
    """schema-only on a source without str_v, and migration-only after value_format was dropped from a source
    that had it: exit 1 and one 'error:' line naming the column, no traceback."""
    create_source(runtime, omit=["str_v"])
    insert(runtime, series("IMO9000013", "a", "Decimal"))
    code, _, err = procs.run("--mode", "schema-only")
    assert_one_line_error(code, err, 1, "lacks column(s) str_v", runtime.settings.source_table)

    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"ALTER TABLE {runtime.source.sql} ADD COLUMN str_v text"))
    analyze_source(runtime)
    create_tables(runtime)
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"ALTER TABLE {runtime.source.sql} DROP COLUMN value_format"))
    code, _, err = procs.run("--mode", "migration-only", "--cutoff-time", str(END))
    assert_one_line_error(code, err, 1, "lacks column(s) value_format")


def test_a_source_without_server_created_time_writes_its_rejects_in_several_lookups(runtime, monkeypatch):
    """server_created_time is optional: a source without it migrates exactly and its rejected rows reach the
    reject file (that column empty), every one of them, also when they take several lookups of the source."""
    monkeypatch.setattr(window_migrator, "REJECT_KEYS_PER_QUERY", 2)
    ship = "IMO9000022"
    create_source(runtime, omit=["server_created_time"])
    odd = T0 + timedelta(minutes=7)
    bad = [row(ship, "dec", odd + timedelta(seconds=i), "Decimal", long_v=i) for i in range(5)]
    good = series(ship, "dec", "Decimal") + series(ship, "txt", "String")
    insert(runtime, good + bad)
    result = migrate(runtime)
    assert not result.failed_chunks
    assert result.ships[0].rejected == len(bad)
    assert_exact(runtime, ship, rejected=len(bad))
    got = reject_rows(runtime.settings)
    assert sorted(r["created_time"] for r in got) == sorted(str(r["created_time"]) for r in bad)
    assert {r["reason"] for r in got} == {REASON_NULL} and {r["server_created_time"] for r in got} == {""}


def test_extra_columns_in_any_order_are_ignored_and_the_data_migrates_exactly(runtime):
    """A source with extra columns before and after the known ones (an id key, a 'value' column, a unit, a
    json payload) migrates exactly: only the known columns are read."""
    ship = "IMO9000014"
    create_source(runtime, primary_key=False, extra_first="id bigserial PRIMARY KEY, value double precision",
                  extra_last="unit text DEFAULT 'm/s', payload jsonb DEFAULT '{\"double_v\": 99}', quality smallint")
    rows = (series(ship, "a", "Decimal") + series(ship, "b", "Integer") + series(ship, "c", "Boolean")
            + series(ship, "d", "String"))
    insert(runtime, rows)
    with runtime.dbs.source.begin() as conn:
        conn.execute(text(f"UPDATE {runtime.source.sql} SET value = -1, quality = 3"))
        assert not runtime.source.has_unique_key(conn)  # the id key does not make a cell unique
        conn.execute(text(f"CREATE UNIQUE INDEX ON {runtime.source.sql} (ship_id, data_channel_id, created_time)"))
        assert runtime.source.has_unique_key(conn)
    result = migrate(runtime)
    assert not result.failed_chunks and result.ships[0].rejected == 0
    assert result.ships[0].rows_read == len(rows)
    diff = assert_exact(runtime, ship)
    assert diff.expected == len(rows)
    with runtime.dbs.target.connect() as conn:
        channels = set(conn.execute(text(
            f"SELECT channel_id FROM {qualified(runtime.settings.target_schema, COLUMNS_META)}")).scalars())
    assert channels == {"a", "b", "c", "d"}
