"""Step 1 (``--mode schema-only``): analyse the narrow source and write the schema file.

Ships and channels are found by index skip-scans; first and last times by index probes;
value formats and row counts by one aggregate per ship (the whole ship, or only its newest
``sample_hours`` when asked). The result keeps every column name and part already decided
(by an earlier schema file or the tables' metadata), so re-running never renames anything.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

from narrow2wide.common.durable import write_durably
from narrow2wide.common.errors import SchemaError, SchemaFileMissing, SourceError, StateError
from narrow2wide.common.model import (
    SCHEMA_VERSION,
    ChannelSchema,
    PlannedPart,
    SchemaAnalysis,
    ShipSchema,
    TablePart,
    assign_columns,
    name_parts,
    place_channels,
    resolve_type,
)
from narrow2wide.db.catalogue import load_ship_layout
from narrow2wide.db.database import raw_cursor
from narrow2wide.db.narrow_source import ship_read_settings
from narrow2wide.db.runtime import Runtime

log = logging.getLogger("schema_analyzer")  # the name the log file has always shown

def read_routing_file(path: Path) -> dict[str, int]:
    """Read a ``part,channel_id`` CSV (a header line is skipped) into channel -> part."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise StateError(f"cannot read routing file {path}: {exc.strerror}") from exc
    routing: dict[str, int] = {}
    for n, row in enumerate(rows, 1):
        if not row or (n == 1 and not row[0].strip().isdigit()):
            continue
        if len(row) < 2 or not row[0].strip().isdigit() or int(row[0]) < 1:
            raise StateError(f"routing file {path} line {n}: expected 'part,channel_id' with part >= 1")
        routing[",".join(row[1:])] = int(row[0])
    return routing


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(sep=" ")


def _read_ship(rt: Runtime, ship_id: str, sample_hours: float | None) -> tuple[list[str], dict, dict]:
    """The ship's channels, each channel's first and last (time, format), and format counts (of a sample)."""
    src = rt.source
    with rt.dbs.source.connect() as conn:
        channels = src.channels(conn, ship_id)
        if not channels:
            raise SourceError(f"ship {ship_id!r} has no rows in {src.label}; check the ship id")
        bounds = src.channel_bounds(conn, ship_id, channels)
        since = None
        if sample_hours is not None:
            newest = max(b[2] for b in bounds.values())
            since = newest - timedelta(hours=sample_hours)
        with ship_read_settings(raw_cursor(conn)):  # by primary key, this ship's rows only
            counts = src.format_counts(conn, ship_id, since, channels)
    return channels, bounds, counts


def analyze_ship(
    rt: Runtime,
    ship_id: str,
    sample_hours: float | None = None,
    column_style: str = "id",
    routing: dict[str, int] | None = None,
    previous: ShipSchema | None = None,
    time_type: str = "timestamp without time zone",
    taken_tables: set[str] | None = None,
) -> ShipSchema:
    """Analyse one ship and lay out its wide tables, keeping ``previous`` decisions."""
    channels, bounds, counts = _read_ship(rt, ship_id, sample_hours)
    prev_map = previous.channel_map() if previous else {}
    infos: dict[str, dict] = {}
    conflicts, unknown, drift = [], [], []
    for ch in channels:
        first_t, first_f, last_t, last_f = bounds[ch]
        fmts = dict(counts.get(ch, {}))
        for f in (first_f, last_f):  # the probes see formats outside a sample window too
            fmts.setdefault(f, 0)
        decision = resolve_type(fmts)
        pg_type = decision.pg_type
        if ch in prev_map and prev_map[ch].pg_type != pg_type:
            drift.append(f"{ch}: column is {prev_map[ch].pg_type}, source now suggests {pg_type} "
                         "(kept; values that do not fit are rejected)")
            pg_type = prev_map[ch].pg_type
        if decision.conflict:
            conflicts.append(f"{ch}: {decision.conflict}")
        if decision.unknown_formats:
            unknown.append(f"{ch}: {', '.join(decision.unknown_formats)}")
        infos[ch] = {
            "pg_type": pg_type,
            "formats": {("NULL" if k is None else k): v for k, v in sorted(fmts.items(), key=lambda kv: str(kv[0]))},
            "first_time": _iso(first_t),
            "last_time": _iso(last_t),
            "row_count": sum(fmts.values()) if sample_hours is None else None,
        }

    # keep old channels that vanished from the source (their columns hold data)
    for ch, old in prev_map.items():
        if ch not in infos:
            infos[ch] = {"pg_type": old.pg_type, "formats": {}, "first_time": old.first_time,
                         "last_time": old.last_time, "row_count": 0}

    columns = assign_columns(infos, column_style, {c: s.column for c, s in prev_map.items()})
    old_parts = [PlannedPart(p.number, p.channels) for p in previous.parts] if previous else []
    new = {ch: infos[ch]["pg_type"] for ch in sorted(infos) if ch not in prev_map}
    try:
        planned = place_channels(old_parts, new, routing, time_type, {c: i["pg_type"] for c, i in infos.items()})
    except ValueError as exc:
        raise SchemaError(f"ship {ship_id}: {exc}; move channels to another part in the routing file") from exc
    old_names = {p.number: p.table for p in previous.parts} if previous else {}
    parts = name_parts(ship_id, planned, old_names, taken_tables or set())
    part_of = {ch: p.number for p in parts for ch in p.channels}
    chans = tuple(
        ChannelSchema(channel_id=ch, column=columns[ch], part=part_of[ch], **infos[ch]) for ch in sorted(infos)
    )
    return ShipSchema(ship_id, parts, chans, tuple(conflicts), tuple(unknown), tuple(drift))


def analyze_source(
    rt: Runtime,
    ship_ids: tuple[str, ...] = (),
    sample_hours: float | None = None,
    column_style: str = "id",
    routing_file: Path | None = None,
) -> SchemaAnalysis:
    """``--mode schema-only``: analyse the ships and write the schema file under STATE_DIR."""
    started = time.monotonic()
    src = rt.source
    with rt.dbs.source.connect() as conn:
        time_type = src.time_type(conn)
        ships = list(ship_ids) or src.ships(conn)
        unique_key = src.has_unique_key(conn)
    if not ships:
        raise SourceError(f"source table {src.label} has no rows; nothing to analyse")
    if not unique_key:
        log.warning("source table %s has no primary key or unique index on (ship_id, data_channel_id, "
                    "created_time): a cell found in more than one row is written once and the other rows are "
                    "rejected as duplicates (see the reject files)", src.label)
    routing = read_routing_file(routing_file) if routing_file else None
    previous = load_schema(rt.settings.schema_file, missing_ok=True)
    prev_ships = {s.ship_id: s for s in previous.ships} if previous else {}
    # the tables' metadata wins over an older file
    with rt.dbs.target.connect() as tconn:
        for ship in ships:
            recorded = load_ship_layout(tconn, rt.settings.target_schema, ship)
            if recorded is not None:
                prev_ships[ship] = recorded
    if previous and previous.column_style != column_style:
        log.warning("keeping the column style %r of the existing schema file (asked: %r)",
                    previous.column_style, column_style)
        column_style = previous.column_style
    results = []
    # every recorded name is taken, also those of ships analysed again (they keep theirs)
    taken = {p.table for s in prev_ships.values() for p in s.parts}
    for ship in ships:
        results.append(analyze_ship(rt, ship, sample_hours, column_style, routing, prev_ships.get(ship), time_type,
                                    taken))
        taken |= {p.table for p in results[-1].parts}
        log.info("analysed ship %s: %d channels in %d part(s)", ship, len(results[-1].channels),
                 len(results[-1].parts))
    # ships analysed before and not asked for now stay in the file
    results.extend(s for sid, s in prev_ships.items() if sid not in ships)
    analysis = SchemaAnalysis(
        version=SCHEMA_VERSION,
        source_table=src.label,
        target_schema=rt.settings.target_schema,
        time_type=time_type,
        column_style=column_style,
        sample_hours=sample_hours,
        ships=tuple(sorted(results, key=lambda s: s.ship_id)),
        seconds=round(time.monotonic() - started, 3),
        schema_file=str(rt.settings.schema_file),
    )
    save_schema(analysis, rt.settings.schema_file)
    return analysis


def save_schema(analysis: SchemaAnalysis, path: Path) -> None:
    """Write the schema file atomically and durably (:func:`write_durably`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(asdict(analysis), indent=2, ensure_ascii=False, sort_keys=False)
    try:
        write_durably(path, (data + "\n").encode("utf-8"))
    except OSError as exc:
        raise StateError(f"cannot write the schema file {path}: {exc.strerror}") from exc


def load_schema(path: Path, missing_ok: bool = False) -> SchemaAnalysis | None:
    """Read the schema file; :class:`SchemaFileMissing` when absent (unless ``missing_ok``)."""
    if not path.exists():
        if missing_ok:
            return None
        raise SchemaFileMissing(f"no schema file at {path}; run --mode schema-only first")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != SCHEMA_VERSION:
            raise StateError(f"schema file {path} has version {raw.get('version')!r}, expected {SCHEMA_VERSION}")
        ships = tuple(
            ShipSchema(
                ship_id=s["ship_id"],
                parts=tuple(TablePart(p["number"], p["table"], tuple(p["channels"])) for p in s["parts"]),
                channels=tuple(ChannelSchema(**c) for c in s["channels"]),
                conflicts=tuple(s.get("conflicts", ())),
                unknown_formats=tuple(s.get("unknown_formats", ())),
                type_drift=tuple(s.get("type_drift", ())),
            )
            for s in raw["ships"]
        )
        return SchemaAnalysis(**{**raw, "ships": ships})
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"schema file {path} is unreadable ({exc}); re-run --mode schema-only") from exc
