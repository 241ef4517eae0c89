"""The shared data model (ship schema, table parts, channels) and the pure layout rules for wide tables:
column types, column names, and splitting into parts.

No I/O here: the analyzer, the table creator and schema evolution all call these rules so
that a channel is named and placed the same way whoever meets it first.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from narrow2wide.common.errors import SchemaError

FORMAT_TYPES: dict[str, str] = {
    "Decimal": "double precision",
    "Integer": "bigint",
    "Boolean": "boolean",
    "String": "text",
}
KNOWN_FORMATS = frozenset(FORMAT_TYPES)
TIME_COLUMN = "created_time"
# names PostgreSQL keeps for its system columns: no user column may have one, quoted or not
SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})

MAX_COLUMNS = 1600  # MaxHeapAttributeNumber
MAX_ROW_BYTES = 8160  # MaxHeapTupleSize with 8 kB pages
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1
_TUPLE_HEADER = 23  # offsetof(HeapTupleHeaderData, t_bits)
# (alignment, bytes budgeted) per type. A text value larger than 24 bytes is moved out of line
# by the toaster (an 18-byte pointer stays); values up to 24 bytes stay inline, so 24 is the worst case.
_TYPE_STORAGE: dict[str, tuple[int, int]] = {
    "double precision": (8, 8),
    "bigint": (8, 8),
    "timestamp without time zone": (8, 8),
    "timestamp with time zone": (8, 8),
    "boolean": (1, 1),
    "text": (4, 24),
}
# column order inside a new part: 8-byte types first, then text, then boolean (least padding)
_TYPE_ORDER = {"double precision": 0, "bigint": 0, "text": 1, "boolean": 2}


@dataclass(frozen=True)
class TypeDecision:
    """The column type of a channel and what the analysis has to say about it."""

    pg_type: str
    conflict: str | None = None
    unknown_formats: tuple[str, ...] = ()


def resolve_type(formats: Iterable[str | None]) -> TypeDecision:
    """The narrowest type that holds every value of a channel seen with ``formats`` exactly.

    Integer+Decimal -> double precision; anything with String -> text; Boolean mixed with
    numbers -> text (a boolean is not a number). Unknown or NULL formats are reported, not guessed:
    a channel seen only with those gets a text column, and its rows are rejected at migration.
    """
    seen = set(formats)
    known = sorted(f for f in seen if f in KNOWN_FORMATS)
    unknown = tuple(sorted("NULL" if f is None else f for f in seen if f not in KNOWN_FORMATS))
    if not known:
        pg_type = "text"
    elif "String" in known or ("Boolean" in known and len(known) > 1):
        pg_type = "text"
    elif "Decimal" in known:
        pg_type = "double precision"
    else:
        pg_type = FORMAT_TYPES[known[0]]
    conflict = f"formats {'+'.join(known)} -> {pg_type}" if len(known) > 1 else None
    return TypeDecision(pg_type, conflict, unknown)


def short_hash(value: str, length: int = 8) -> str:
    """A stable hex digest of ``value`` (for name suffixes)."""
    return hashlib.sha1(value.encode("utf-8")).hexdigest()[:length]


def _truncate_bytes(name: str, max_bytes: int) -> str:
    encoded = name.encode("utf-8")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore")


def _with_hash(base: str, full: str, sep: str, length: int = 8) -> str:
    suffix = sep + short_hash(full, length)
    return _truncate_bytes(base, MAX_IDENTIFIER_BYTES - len(suffix.encode())) + suffix


def _snake(channel_id: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", channel_id.lower()).strip("_")
    if not name or name[0].isdigit():
        name = "c_" + name
    return name


def assign_columns(
    channel_ids: Iterable[str], style: str = "id", existing: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Map each channel id to a column name, keeping every name already in ``existing``.

    ``id`` style uses the channel id itself when it is 1 to 63 bytes; ``snake`` uses a lower-case
    identifier. A name that is too long or already taken gets a hash of the full id as suffix,
    so two ids never share a column. New ids are placed in sorted order: deterministic.
    """
    mapping = dict(existing or {})
    taken = {c for c in mapping.values()} | {TIME_COLUMN} | SYSTEM_COLUMNS
    for channel in sorted(set(channel_ids) - set(mapping)):
        base = channel if style == "id" else _snake(channel)
        sep = "~" if style == "id" else "_"
        if base and len(base.encode("utf-8")) <= MAX_IDENTIFIER_BYTES and base not in taken:
            name = base
        else:
            name = _with_hash(base, channel, sep)
            length = 8
            while name in taken:  # practically never: a hash prefix collision
                length += 4
                name = _with_hash(base, channel, sep, length)
        mapping[channel] = name
        taken.add(name)
    return mapping


def table_name_for(ship_id: str, part: int | None, taken: Iterable[str] = ()) -> str:
    """``tbl_data_timeseries_<ship id in lower case>[_<part>]``.

    A name past 63 bytes, or one already ``taken`` (two ship ids that differ only in case), gets
    a hash of the ship id before the part suffix, so every ship and part has its own table.
    """
    base = f"tbl_data_timeseries_{ship_id.lower()}"
    suffix = "" if part is None else f"_{part}"
    name = base + suffix
    if len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES and name not in set(taken):
        return name
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode())
    return _truncate_bytes(base, room - 9) + "_" + short_hash(ship_id) + suffix


def row_bytes(column_types: Iterable[str], time_type: str = "timestamp without time zone") -> int:
    """Bytes of a fully populated heap tuple with ``created_time`` plus ``column_types`` in order."""
    types = [time_type, *column_types]
    header = _align(_TUPLE_HEADER + math.ceil(len(types) / 8), 8)
    offset = 0
    for t in types:
        align, width = _TYPE_STORAGE[t]
        offset = _align(offset, align) + width
    return header + offset


def fits(column_types: list[str], time_type: str = "timestamp without time zone") -> bool:
    """True when a table of these columns (plus created_time) is within PostgreSQL's limits."""
    return len(column_types) + 1 <= MAX_COLUMNS and row_bytes(column_types, time_type) <= MAX_ROW_BYTES


def _align(offset: int, align: int) -> int:
    return (offset + align - 1) // align * align


@dataclass(frozen=True)
class PlannedPart:
    """One wide table of a ship: its part number and channel ids in column order."""

    number: int
    channels: tuple[str, ...]


def place_channels(
    parts: list[PlannedPart],
    new_channels: Mapping[str, str],
    routing: Mapping[str, int] | None = None,
    time_type: str = "timestamp without time zone",
    types: Mapping[str, str] | None = None,
) -> list[PlannedPart]:
    """Add ``new_channels`` (id -> type) to ``parts`` without moving any existing column.

    Routed channels go to their part (created when missing); the rest fill the last part
    while it fits, then new parts. Existing columns keep their place (no rewrite).
    ``types`` gives the types of channels already placed.
    """
    all_types = dict(types or {})
    all_types.update(new_channels)
    by_number = {p.number: list(p.channels) for p in parts}
    routing = routing or {}

    def order(chs: Iterable[str]) -> list[str]:
        return sorted(chs, key=lambda c: (_TYPE_ORDER.get(all_types[c], 3), c))

    routed: dict[int, list[str]] = {}
    free: list[str] = []
    for channel in new_channels:
        if channel in routing:
            routed.setdefault(routing[channel], []).append(channel)
        else:
            free.append(channel)
    for number, chs in sorted(routed.items()):
        cols = by_number.setdefault(number, [])
        cols.extend(order(chs))
        if not fits([all_types[c] for c in cols], time_type):
            raise ValueError(
                f"routing part {number} holds {len(cols)} columns, more than one PostgreSQL row can take"
            )
    for channel in order(free):
        last = max(by_number) if by_number else None
        if last is not None and fits([all_types[c] for c in by_number[last]] + [all_types[channel]], time_type):
            by_number[last].append(channel)
        else:
            by_number[(last or 0) + 1] = [channel]
    return [PlannedPart(n, tuple(chs)) for n, chs in sorted(by_number.items())]


SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ChannelSchema:
    """One channel of one ship: where its values go and what the source showed."""

    channel_id: str
    column: str
    pg_type: str
    part: int
    formats: dict[str, int] = field(default_factory=dict)
    first_time: str | None = None
    last_time: str | None = None
    row_count: int | None = None


@dataclass(frozen=True)
class TablePart:
    """One wide table of a ship."""

    number: int
    table: str
    channels: tuple[str, ...]


@dataclass(frozen=True)
class ShipSchema:
    """The wide layout of one ship."""

    ship_id: str
    parts: tuple[TablePart, ...]
    channels: tuple[ChannelSchema, ...]
    conflicts: tuple[str, ...] = ()
    unknown_formats: tuple[str, ...] = ()
    type_drift: tuple[str, ...] = ()

    def channel_map(self) -> dict[str, ChannelSchema]:
        """Channel id -> its schema."""
        return {c.channel_id: c for c in self.channels}


@dataclass(frozen=True)
class SchemaAnalysis:
    """The result of ``schema-only``, as written to the schema file."""

    version: int
    source_table: str
    target_schema: str
    time_type: str
    column_style: str
    sample_hours: float | None
    ships: tuple[ShipSchema, ...]
    seconds: float = 0.0
    schema_file: str = ""

    def ship(self, ship_id: str) -> ShipSchema:
        """The layout of ``ship_id``; :class:`SchemaError` when it is not in the analysis."""
        for s in self.ships:
            if s.ship_id == ship_id:
                return s
        raise SchemaError(f"ship {ship_id!r} is not in the schema file; run --mode schema-only --ship-id {ship_id}")


def name_parts(ship_id: str, planned: list[PlannedPart], old_names: dict[int, str],
               taken: set[str]) -> tuple[TablePart, ...]:
    """Table names for planned parts: recorded names stay; a lone first part has no suffix."""
    single = len(planned) == 1 and not old_names
    return tuple(
        TablePart(p.number, old_names.get(p.number) or table_name_for(ship_id, None if single else p.number, taken),
                  p.channels)
        for p in planned
    )
