"""The pivot core, shared by backfill and realtime: narrow rows in, wide rows out, O(rows).

1. :func:`read_window` streams ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` of one ship and
   window into memory. The server packs the rows of each created_time into one byte string per
   value format of fixed-width records (the channel as its 64-bit hash, mapped to its index in
   the layout, and the value's binary image), so a COPY row is a tick, not a value, and the
   records are decoded with ``numpy.frombuffer``: no Python object per value. Ticks holding a
   reject are read again row by row; channels with a text column come from a second,
   index-driven query (they are few).
2. :func:`pivot` checks each value against its column type (misfits become rejects, never
   silent losses) and scatters the values into one typed matrix per column type.
3. :func:`encode_copy` renders a part's rows as ``COPY ... FROM STDIN (FORMAT binary)`` bytes,
   again with vectorised numpy scatters, for :mod:`wide_writer` to load and merge.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from narrow2wide.common.errors import SchemaError
from narrow2wide.common.fits import BIGINT_END, BIGINT_MIN
from narrow2wide.common.model import ShipSchema
from narrow2wide.db.narrow_source import ship_read_settings

log = logging.getLogger("pivot")  # the name the log file has always shown

KIND_DOUBLE, KIND_BIGINT, KIND_BOOL, KIND_TEXT = 0, 1, 2, 3
KIND_OF_TYPE = {"double precision": KIND_DOUBLE, "bigint": KIND_BIGINT, "boolean": KIND_BOOL, "text": KIND_TEXT}
FMT_UNKNOWN, FMT_DECIMAL, FMT_INTEGER, FMT_BOOLEAN, FMT_STRING = 0, 1, 2, 3, 4
FORMAT_NAMES = {FMT_UNKNOWN: "unknown", FMT_DECIMAL: "Decimal", FMT_INTEGER: "Integer", FMT_BOOLEAN: "Boolean",
                FMT_STRING: "String"}

# reject reasons
REASONS = {
    1: "unknown or NULL value_format",
    2: "the value column named by value_format is NULL",
    3: "String value for a non-text column",
    4: "Boolean value for a numeric column",
    5: "numeric value for a boolean column",
    6: "Decimal value does not fit the bigint column (fraction, NaN, infinite or out of range)",
    7: "duplicate row for the same channel and time (another row was kept)",
}

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_PG_EPOCH = datetime(2000, 1, 1)
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)

# the fixed-width row of the numeric query: nfields, then (length, value) per field; ``code`` packs
# the format (bits 0-2), the NULL flags of double_v/long_v/bool_v (bits 3-5) and bool_v (bit 6)
ROW_DTYPE = np.dtype([
    ("nf", ">i2"),
    ("l_ts", ">i4"), ("ts", ">i8"),
    ("l_idx", ">i4"), ("idx", ">i4"),
    ("l_code", ">i4"), ("code", ">i2"),
    ("l_d", ">i4"), ("d", ">f8"),
    ("l_l", ">i4"), ("l", ">i8"),
])
# the same row with the channel sent as its 64-bit hash instead of its index
HASH_ROW_DTYPE = np.dtype([
    ("nf", ">i2"),
    ("l_ts", ">i4"), ("ts", ">i8"),
    ("l_hash", ">i4"), ("hash", ">i8"),
    ("l_code", ">i4"), ("code", ">i2"),
    ("l_d", ">i4"), ("d", ">f8"),
    ("l_l", ">i4"), ("l", ">i8"),
])
# the fleet read (every ship of a realtime cycle in one COPY): the ship's hash before the channel's
FLEET_ROW_DTYPE = np.dtype([
    ("nf", ">i2"),
    ("l_ts", ">i4"), ("ts", ">i8"),
    ("l_ship", ">i4"), ("ship", ">i8"),
    ("l_hash", ">i4"), ("hash", ">i8"),
    ("l_code", ">i4"), ("code", ">i2"),
    ("l_d", ">i4"), ("d", ">f8"),
    ("l_l", ">i4"), ("l", ">i8"),
])
_NULL_D, _NULL_L, _NULL_B = 1, 2, 4

_FMT_SQL = ("CASE s.value_format WHEN 'Decimal' THEN 1 WHEN 'Integer' THEN 2 WHEN 'Boolean' THEN 3 "
            "WHEN 'String' THEN 4 ELSE 0 END")
_CODE_SQL = (f"(({_FMT_SQL}) + 8 * (s.double_v IS NULL)::int + 16 * (s.long_v IS NULL)::int "
             "+ 32 * (s.bool_v IS NULL)::int + 64 * coalesce(s.bool_v, false)::int)::int2")
_HASH_ROW_SQL = (f"s.created_time, hashtextextended(s.data_channel_id, 0), {_CODE_SQL}, "
                 "coalesce(s.double_v, 0), coalesce(s.long_v, 0)")
_FLEET_ROW_SQL = ("s.created_time, hashtextextended(s.ship_id, 0), hashtextextended(s.data_channel_id, 0), "
                  f"{_CODE_SQL}, coalesce(s.double_v, 0), coalesce(s.long_v, 0)")
# The window read packs the rows of one created_time (and ship) by format: per format one byte
# string of fixed-width records (channel hash, value), in the order of :data:`TICK_FORMATS`. A
# String row carries no value here (text channels are read on their own; elsewhere it is a
# reject). A row whose format is none of these, or whose value column is NULL, is in no record;
# its tick is read again row by row (``count(*)`` tells).
TICK_FORMATS = (
    (FMT_DECIMAL, "Decimal", " || float8send(s.double_v)", np.dtype([("hash", ">i8"), ("v", ">f8")])),
    (FMT_INTEGER, "Integer", " || int8send(s.long_v)", np.dtype([("hash", ">i8"), ("v", ">i8")])),
    (FMT_BOOLEAN, "Boolean", " || boolsend(s.bool_v)", np.dtype([("hash", ">i8"), ("v", "u1")])),
    (FMT_STRING, "String", "", np.dtype([("hash", ">i8")])),
)


def _tick_sql(with_ship: bool) -> str:
    """The select list of a tick read: created_time, [ship hash,] row count, one record string per format."""
    ship = "hashtextextended(s.ship_id, 0), " if with_ship else ""
    return f"s.created_time, {ship}count(*)::int4, " + ", ".join(
        f"string_agg(int8send(hashtextextended(s.data_channel_id, 0)){image}, '') "
        f"FILTER (WHERE s.value_format = '{name}')" for _, name, image, _ in TICK_FORMATS)


def _tick_query(from_where: str, with_ship: bool = False) -> str:
    """The tick read of ``from_where`` (``FROM ... WHERE ...`` of alias ``s``): one row per created_time [and ship]."""
    return f"SELECT {_tick_sql(with_ship)} {from_where} GROUP BY s.created_time" + (", s.ship_id" if with_ship else "")


@dataclass(frozen=True)
class PartColumns:
    """The columns of one wide table, grouped by type, in the order the pivot fills them."""

    table: str
    columns: dict[int, tuple[str, ...]]  # kind -> column names


@dataclass
class PivotPlan:
    """Channel index -> (part, type, position): built once per layout, used for every window."""

    ship_id: str
    channels: tuple[str, ...]
    kind: np.ndarray  # int8 per channel index
    part: np.ndarray  # int16 per channel index
    pos: np.ndarray  # int32: position inside its (part, kind) group
    parts: tuple[PartColumns, ...]
    # the source server's channel hashes, sorted, with their channel indexes; None if two collide
    hash_lookup: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    hashes_known: bool = field(default=False, repr=False, compare=False)
    ship_hash: int | None = field(default=None, repr=False, compare=False)  # the server's hash of ship_id

    @classmethod
    def from_layout(cls, layout: ShipSchema) -> PivotPlan:
        """Build the plan of a ship's recorded layout."""
        chans = layout.channel_map()
        order: list[str] = []
        kinds, parts_idx, pos = [], [], []
        parts = []
        for p_i, part in enumerate(layout.parts):
            groups: dict[int, list[str]] = {}
            for ch in part.channels:
                k = KIND_OF_TYPE[chans[ch].pg_type]
                groups.setdefault(k, [])
                order.append(ch)
                kinds.append(k)
                parts_idx.append(p_i)
                pos.append(len(groups[k]))
                groups[k].append(chans[ch].column)
            parts.append(PartColumns(part.table, {k: tuple(v) for k, v in groups.items()}))
        return cls(
            ship_id=layout.ship_id,
            channels=tuple(order),
            kind=np.array(kinds, dtype=np.int8),
            part=np.array(parts_idx, dtype=np.int16),
            pos=np.array(pos, dtype=np.int32),
            parts=tuple(parts),
        )

    @property
    def text_indexes(self) -> list[int]:
        """Indexes of the channels whose column is text."""
        return [int(i) for i in np.flatnonzero(self.kind == KIND_TEXT)]

    @property
    def numeric_channels(self) -> list[str]:
        """Ids of the channels whose column is not text (they come from the fixed-width numeric read)."""
        return [self.channels[int(i)] for i in np.flatnonzero(self.kind != KIND_TEXT)]


@dataclass
class NarrowBatch:
    """The decoded rows of one window: parallel typed arrays, plus the few text rows."""

    ts: np.ndarray  # int64 microseconds since 2000-01-01
    idx: np.ndarray  # int32 channel index, -1 for a channel the layout does not know
    fmt: np.ndarray  # int8 format code
    d: np.ndarray
    l: np.ndarray  # noqa: E741 - the source column is long_v
    b: np.ndarray
    nulls: np.ndarray
    text_ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    text_idx: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    text_fmt: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    text_values: list[bytes | None] = field(default_factory=list)
    bytes_read: int = 0
    may_repeat: bool = True  # False when a unique key rules out two rows of one cell (no duplicate check)

    @property
    def rows(self) -> int:
        """Narrow rows read."""
        return int(self.ts.size + self.text_ts.size)


def binary_copy_rows(data: memoryview, row_dtype: np.dtype) -> np.ndarray:
    """The rows of a binary COPY stream of fixed-width rows, as a structured array over ``data`` (no copy)."""
    size = len(data)
    if size == 0:
        return np.empty(0, dtype=row_dtype)
    start = _stream_start(data)
    n, rest = divmod(size - start - len(_TRAILER), row_dtype.itemsize)
    if rest or bytes(data[size - len(_TRAILER):]) != _TRAILER:
        raise ValueError(f"binary COPY stream of {size} bytes is not whole rows of {row_dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=row_dtype, count=n, offset=start)


def _decode_rows(data: memoryview, row_dtype: np.dtype, *keys: str) -> tuple[dict[str, np.ndarray], int]:
    """Decode a binary COPY of fixed-width numeric rows (``keys``: channel, ship fields); returns (fields, bytes)."""
    size = len(data)
    if size == 0:
        return _empty_fields(*keys), 0
    rows = binary_copy_rows(data, row_dtype)
    code = rows["code"]
    out = {
        "ts": rows["ts"].astype(np.int64),
        **{key: rows[key].astype(_FIELD_TYPES[key]) for key in keys},
        "fmt": (code & 7).astype(np.int8),
        "nulls": ((code >> 3) & 7).astype(np.int8),
        "b": ((code >> 6) & 1).astype(bool),
        "d": rows["d"].astype(np.float64),
        "l": rows["l"].astype(np.int64),
    }
    del rows, code
    return out, size


_FIELD_TYPES = {"ts": np.int64, "idx": np.int32, "hash": np.int64, "ship": np.int64, "fmt": np.int8,
                "d": np.float64, "l": np.int64, "b": bool, "nulls": np.int8}


def ts_to_datetime(us: int, aware: bool) -> datetime:
    """A binary COPY timestamp (microseconds since 2000-01-01) as a datetime (UTC when ``aware``)."""
    value = _PG_EPOCH + timedelta(microseconds=int(us))
    return value.replace(tzinfo=timezone.utc) if aware else value


def datetime_to_ts(value: datetime) -> int:
    """``value`` as a binary COPY timestamp (microseconds since 2000-01-01; UTC for an aware one)."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    delta = value - _PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def copy_binary(cursor, query: str, params: dict) -> memoryview:
    """The binary ``COPY (query) TO STDOUT`` of ``query`` with ``params``, run on ``cursor`` into memory."""
    return _local_copy_out(cursor)(_copy_sql(cursor, query, params))


def _stream_start(data: memoryview) -> int:
    """Where the first row of a binary COPY stream starts (after its header)."""
    head = bytes(data[:19])
    if len(head) < 19 or head[:11] != _SIGNATURE:
        raise ValueError("not a PostgreSQL binary COPY stream")
    return 19 + struct.unpack(">i", head[15:19])[0]


def _decode_ticks(data: memoryview, with_ship: bool = False
                  ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]], int]:
    """Decode the rows of a tick read (:func:`_tick_sql`); returns (fields, ticks to read again, bytes).

    One COPY row per created_time (and ship), its narrow rows packed by the server in fixed-width
    records: a Python step per tick (thousands a window), none per value. A tick whose records
    are fewer than its rows (an unknown format, a NULL value) is left out and returned, as
    (created_time, ship hash or 0), for a row read.
    """
    try:
        return _parse_ticks(data, with_ship)
    except struct.error as exc:
        raise ValueError(f"a cut binary COPY stream of {len(data)} bytes: {exc}") from exc


def _parse_ticks(data: memoryview, with_ship: bool) -> tuple[dict[str, np.ndarray], list[tuple[int, int]], int]:
    size = len(data)
    if size == 0:
        return _empty_fields("hash", *(["ship"] if with_ship else [])), [], 0
    pos = _stream_start(data)
    head = struct.Struct(">hiqiqii" if with_ship else ">hiqii")  # nf, len, time, [len, ship,] len, count
    length_of = struct.Struct(">i").unpack_from
    field_count = struct.Struct(">h").unpack_from
    widths = [dtype.itemsize for _, _, _, dtype in TICK_FORMATS]
    fields_per_row = 2 + with_ship + len(TICK_FORMATS)
    ticks: list[tuple[int, int]] = []
    packed: list[list[memoryview]] = [[] for _ in TICK_FORMATS]
    counts: list[list[int]] = [[] for _ in TICK_FORMATS]
    again: list[tuple[int, int]] = []
    empty = memoryview(b"")
    while field_count(data, pos)[0] != -1:  # a row's field count, or the trailer
        values = head.unpack_from(data, pos)
        if values[0] != fields_per_row or values[1] != 8 or values[-2] != 4:
            raise ValueError(f"unexpected tick row in the binary COPY stream at byte {pos}")
        pos += head.size
        chunks, found = [], 0
        for width in widths:
            (length,) = length_of(data, pos)
            pos += 4
            if length <= 0:
                chunks.append((empty, 0))
                continue
            if length % width:
                raise ValueError(f"a tick record list of {length} bytes at byte {pos}")
            chunks.append((data[pos:pos + length], length // width))
            found += length // width
            pos += length
        tick = (values[2], values[4] if with_ship else 0)
        if found != values[-1]:
            again.append(tick)
            continue
        ticks.append(tick)
        for k, (chunk, n) in enumerate(chunks):
            packed[k].append(chunk)
            counts[k].append(n)
    if pos + len(_TRAILER) != size:
        raise ValueError(f"binary COPY stream of {size} bytes ends at byte {pos + len(_TRAILER)}")
    return _tick_fields(ticks, counts, packed, with_ship), again, size


def _tick_fields(ticks: list[tuple[int, int]], counts: list[list[int]], packed: list[list[memoryview]],
                 with_ship: bool) -> dict[str, np.ndarray]:
    """The batch fields of the tick records, per format (the other value columns zero); ``ship`` only
    for a fleet read."""
    times = np.array([t for t, _ in ticks], dtype=np.int64)
    ships = np.array([sh for _, sh in ticks], dtype=np.int64) if with_ship else None
    order = np.argsort(times, kind="stable")  # ticks come in the server's hash order; sorted, the pivot need not sort
    groups = []
    for k, (fmt, _, _, dtype) in enumerate(TICK_FORMATS):
        n_of = np.array(counts[k], dtype=np.int64)[order]
        recs = np.frombuffer(b"".join([packed[k][i] for i in order.tolist()]), dtype=dtype)
        n = recs.size
        values = recs["v"] if "v" in dtype.names else None
        groups.append({
            "ts": np.repeat(times[order], n_of),
            "hash": recs["hash"].astype(np.int64),
            "fmt": np.full(n, fmt, dtype=np.int8),
            "nulls": np.zeros(n, dtype=np.int8),
            "b": values.astype(bool) if fmt == FMT_BOOLEAN else np.zeros(n, dtype=bool),
            "d": values.astype(np.float64) if fmt == FMT_DECIMAL else np.zeros(n, dtype=np.float64),
            "l": values.astype(np.int64) if fmt == FMT_INTEGER else np.zeros(n, dtype=np.int64),
        })
        if ships is not None:
            groups[-1]["ship"] = np.repeat(ships[order], n_of)
    return {key: np.concatenate([g[key] for g in groups]) for key in groups[0]}


def _empty_fields(*keys: str) -> dict[str, np.ndarray]:
    return {k: np.empty(0, dtype=_FIELD_TYPES[k]) for k in ("ts", *keys, "fmt", "d", "l", "b", "nulls")}


def _copy_sql(cur, query: str, params: dict) -> str:
    return "COPY (" + cur.mogrify(query, params).decode() + ") TO STDOUT (FORMAT binary)"


def _copy_out(cursor, query: str, params: dict, row_dtype: np.dtype, keys: tuple[str, ...],
              copy_out: Callable[[str], memoryview] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Run the COPY (``copy_out``, else on ``cursor`` into memory) and decode it."""
    run = copy_out or _local_copy_out(cursor)
    return _decode_rows(run(_copy_sql(cursor, query, params)), row_dtype, *keys)


def hash_lookup(cursor, plan: PivotPlan) -> tuple[np.ndarray, np.ndarray] | None:
    """The source server's ``hashtextextended`` of each channel id of ``plan``, sorted, with their indexes.

    None when two channels share a hash. Asked once per plan (a plan lives as long as its layout).
    """
    if not plan.hashes_known:
        cursor.execute("SELECT hashtextextended(c, 0) FROM unnest(%s::text[]) WITH ORDINALITY AS u(c, n) "
                       "ORDER BY n", (list(plan.channels),))
        hashes = np.array([r[0] for r in cursor.fetchall()], dtype=np.int64)
        order = np.argsort(hashes, kind="stable")
        plan.hash_lookup = (hashes[order], order.astype(np.int32)) if distinct_count(hashes) == hashes.size else None
        plan.hashes_known = True
    return plan.hash_lookup


def distinct_count(values: np.ndarray) -> int:
    """How many distinct values ``values`` holds.

    Not ``np.unique(values).size``: a plain ``np.unique`` asks whether its input is a masked array,
    which imports ``numpy.ma`` at its first call (15 ms of a process's start, before its first read).
    """
    if values.size == 0:
        return 0
    ordered = np.sort(values, axis=None)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def _map_hashes(row_hash: np.ndarray, lookup: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Channel index of each row hash, -1 for a hash no channel of the plan has."""
    sorted_h, order = lookup
    if sorted_h.size == 0:
        return np.full(row_hash.size, -1, dtype=np.int32)
    pos = np.minimum(np.searchsorted(sorted_h, row_hash), sorted_h.size - 1)
    return np.where(sorted_h[pos] == row_hash, order[pos], -1).astype(np.int32)


def read_window(cursor, source_sql: str, plan: PivotPlan, start: datetime, end: datetime,
                order_by: str | None = None, copy_out: Callable[[str], memoryview] | None = None,
                by_channel: bool = True) -> NarrowBatch:
    """COPY the rows of ``plan``'s channels of ``plan.ship_id`` with ``start <= created_time < end`` out of the source.

    ``cursor`` is a psycopg2 cursor on the source; ``source_sql`` the quoted table name.
    Values are bound by the driver; identifiers were quoted by the caller. ``copy_out``, when
    given, runs the big numeric COPY elsewhere (:mod:`copy_reader`) and returns its bytes.

    The channel list is part of the condition, so the primary key (ship, channel, time) serves the
    read with one index range per channel: only this ship's rows of this window are touched,
    whatever else the table holds (other ships, years of history). Rows of channels the plan does
    not know are not read here; the caller probes for them (:func:`window_migrator.unknown_channels_in`).

    The server packs the rows of each created_time into one byte string per value format, of
    fixed-width records (``string_agg`` of ``int8send(hash) || float8send(double_v)`` and the like,
    :func:`_tick_sql`), so the COPY carries one row per tick, not per value: a day of 1,000
    channels is 5,760 COPY rows, 16 bytes a value, instead of 5.76 million rows of 61, decoded with
    one ``frombuffer`` per format (psycopg2 hands every COPY row to Python: per value, that was the
    client's largest cost). A tick holding a row in no record (an unknown format, a NULL value) is
    read again row by row, so its rejects are found and counted. A source without a unique key is
    read row by row, in its duplicate order. The channel is its 64-bit ``hashtextextended``,
    mapped to the channel index by a sorted-array search; when two of the plan's channels share a
    hash (never seen; 2^-64 per pair) the read falls back to joining every row against the
    channel list.

    ``by_channel=False`` (when :func:`channels_serve_the_read` says the planner does not use the
    list) leaves the channel list out of the query and drops the text channels' rows here; only
    for a caller that has made sure, in the read's snapshot, that the window holds no channel the
    plan lacks (:func:`window_migrator.unknown_channels_in`).
    """
    params = {"ship": plan.ship_id, "start": start, "end": end, "chs": plan.numeric_channels}
    order_sql = f" ORDER BY {order_by}" if order_by else ""  # only for sources without a unique key
    lookup = hash_lookup(cursor, plan)
    by_channel = by_channel or lookup is None  # the join fallback matches rows to channels by the list
    where = _window_where(by_channel)
    if not params["chs"]:
        fields, size = _empty_fields("idx"), 0
    elif copy_out is None:  # here, on this connection: the planner settings around the read
        with ship_read_settings(cursor):
            return read_window(cursor, source_sql, plan, start, end, order_by, _local_copy_out(cursor), by_channel)
    elif lookup is not None and order_by is None:
        fields, size = _read_ticks(cursor, f"FROM {source_sql} s {where}", params, lookup, copy_out)
    elif lookup is not None:  # a source without a unique key: the rows themselves, in the duplicate order
        numeric = f"SELECT {_HASH_ROW_SQL} FROM {source_sql} s {where}" + order_sql
        fields, size = _copy_out(cursor, numeric, params, HASH_ROW_DTYPE, ("hash",), copy_out)
        fields["idx"] = _map_hashes(fields.pop("hash"), lookup)
    else:
        numeric = f"""SELECT s.created_time, m.i, {_CODE_SQL}, coalesce(s.double_v, 0), coalesce(s.long_v, 0)
            FROM {source_sql} s
            JOIN unnest(%(all)s::text[], %(idx)s::int4[]) AS m(ch, i) ON m.ch = s.data_channel_id
            {where}""" + order_sql
        join = dict(params, all=list(plan.channels), idx=list(range(len(plan.channels))))
        fields, size = _copy_out(cursor, numeric, join, ROW_DTYPE, ("idx",), copy_out)
    if not by_channel:
        fields = _numeric_rows(plan, fields)
    batch = NarrowBatch(**fields, bytes_read=size, may_repeat=order_by is not None)
    if plan.text_indexes:
        text_rows = _read_text_rows(cursor, source_sql, [plan], start, end, order_by, copy_out)
        _attach_text(batch, text_rows, np.arange(text_rows[0].size))
    return batch


def _window_where(by_channel: bool) -> str:
    """The condition of one ship's window read, with or without its channel list."""
    channels = " AND s.data_channel_id = ANY(%(chs)s::text[])" if by_channel else ""
    return f"WHERE s.ship_id = %(ship)s{channels} AND s.created_time >= %(start)s AND s.created_time < %(end)s"


def channels_serve_the_read(cursor, source_sql: str, plan: PivotPlan, start: datetime, end: datetime) -> bool:
    """Whether the planner reads ``plan.ship_id``'s rows of ``[start, end)`` through its channel list.

    The list is in :func:`read_window`'s condition for the primary key: in a fleet table it lets
    the read touch this ship's rows only, one index range per channel. When the planner takes the
    created_time index or a sequential scan instead (the ship is alone in its table, or most of
    it), the list is only a filter: a hash probe of every row's channel text, about an eighth of
    the read's server time. Then :func:`read_window` is better off without it (``by_channel``).
    One ``EXPLAIN`` under the read's planner settings; a window whose blocks are all alike needs one.
    """
    if not plan.numeric_channels or hash_lookup(cursor, plan) is None:
        return True
    query = "EXPLAIN (FORMAT JSON) " + _tick_query(f"FROM {source_sql} s {_window_where(True)}")
    with ship_read_settings(cursor):
        cursor.execute(query, {"ship": plan.ship_id, "start": start, "end": end, "chs": plan.numeric_channels})
        (doc,) = cursor.fetchone()
    return any("data_channel_id" in cond for cond in _index_conditions(json.loads(doc) if isinstance(doc, str)
                                                                        else doc))


def _index_conditions(node: object) -> list[str]:
    """Every ``Index Cond`` of an ``EXPLAIN (FORMAT JSON)`` plan."""
    if isinstance(node, list):
        return [c for item in node for c in _index_conditions(item)]
    if not isinstance(node, dict):
        return []
    found = [node["Index Cond"]] if "Index Cond" in node else []
    return found + _index_conditions(node.get("Plan", [])) + _index_conditions(node.get("Plans", []))


def _numeric_rows(plan: PivotPlan, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``fields`` (a read without the channel list) without the rows of text channels: those come from
    their own read. A row of a channel the plan lacks cannot be there (the caller checked the read's
    snapshot); should one be, the read fails rather than lose it."""
    idx = fields["idx"]
    strays = int(np.count_nonzero(idx < 0))
    if strays:
        raise SchemaError(f"ship {plan.ship_id}: the window read found {strays} row(s) of channels without a "
                          "column; run the step again (it adds their columns first)")
    text_at = np.flatnonzero(plan.kind[idx] == KIND_TEXT)
    if text_at.size == 0:
        return fields
    if text_at.size == idx.size - text_at[0]:  # all at the end (String records come last): no copy
        return {key: values[:text_at[0]] for key, values in fields.items()}
    keep = np.ones(idx.size, dtype=bool)
    keep[text_at] = False
    return {key: values[keep] for key, values in fields.items()}


def _read_ticks(cursor, from_where: str, params: dict, lookup: tuple[np.ndarray, np.ndarray],
                copy_out: Callable[[str], memoryview] | None) -> tuple[dict[str, np.ndarray], int]:
    """The rows of ``from_where`` packed by tick (:func:`_tick_sql`); ticks with a row in no record
    (unknown format, NULL value: rejects, rare) are read again row by row."""
    run = copy_out or _local_copy_out(cursor)
    query = _tick_query(from_where)
    fields, again, size = _decode_ticks(run(_copy_sql(cursor, query, params)))
    if again:
        log.debug("%d tick(s) with a row in no record (a reject): read again row by row", len(again))
        aware = params["start"].tzinfo is not None
        rows = f"SELECT {_HASH_ROW_SQL} {from_where} AND s.created_time = ANY(%(again)s)"
        more, more_size = _copy_out(cursor, rows, dict(params, again=[ts_to_datetime(t, aware) for t, _ in again]),
                                    HASH_ROW_DTYPE, ("hash",), copy_out)
        fields = {key: np.concatenate([fields[key], more[key]]) for key in fields}
        size += more_size
    fields["idx"] = _map_hashes(fields.pop("hash"), lookup)
    return fields, size


def _local_copy_out(cursor) -> Callable[[str], memoryview]:
    """A ``copy_out`` that runs the COPY on ``cursor`` itself, into memory (``BytesIO.write`` is C: no
    Python frame per row)."""
    def run(copy_sql: str) -> memoryview:
        buf = io.BytesIO()
        cursor.copy_expert(copy_sql, buf)
        return buf.getbuffer()
    return run


def ship_hashes(cursor, plans: list[PivotPlan]) -> np.ndarray:
    """The source server's ``hashtextextended`` of each plan's ship id (how the fleet reads name a row's
    ship); asked once per plan, for the plans that do not know theirs yet, in one query."""
    unknown = [p for p in plans if p.ship_hash is None]
    if unknown:
        cursor.execute("SELECT hashtextextended(c, 0) FROM unnest(%s::text[]) WITH ORDINALITY AS u(c, n) "
                       "ORDER BY n", ([p.ship_id for p in unknown],))
        for plan, (h,) in zip(unknown, cursor.fetchall(), strict=True):
            plan.ship_hash = int(h)
    return np.array([p.ship_hash for p in plans], dtype=np.int64)


def read_fleet_window(cursor, source_sql: str, plans: list[PivotPlan], start: datetime, end: datetime,
                      order_by: str | None = None, fresh_from: datetime | None = None,
                      again: set[tuple[int, int]] | None = None) -> dict[str, NarrowBatch] | None:
    """Every row of the ships of ``plans`` with ``start <= created_time < end``, in one COPY, split per ship.

    For realtime: a cycle's window is minutes long and covers every ship, so one read by the
    ``created_time`` index serves the whole fleet and touches each heap page once, instead of one
    read (and one round of statements) per ship. Rows of ships outside ``plans`` are filtered by the
    server; when ``plans`` is a small part of the fleet, per-ship reads (:func:`read_window`) cost less.
    Rows of a channel a plan does not know keep index -1 (the caller adds columns and reads again).
    None when two ship ids, or two channels of one ship, share a hash (then read ship by ship).

    ``fresh_from`` (realtime's lookback, :mod:`tick_signatures`): only the ticks from then on are
    read, and of the earlier ones the (tick, ship hash) pairs in ``again``; not for a source without
    a unique key.
    """
    ship_ids = [p.ship_id for p in plans]
    ship_hash = ship_hashes(cursor, plans)
    lookups = [hash_lookup(cursor, p) for p in plans]
    if distinct_count(ship_hash) != ship_hash.size or any(lk is None for lk in lookups):
        return None
    params = {"ships": ship_ids, "start": fresh_from or start, "end": end}
    from_where = f"""FROM {source_sql} s
        WHERE s.created_time >= %(start)s AND s.created_time < %(end)s AND s.ship_id = ANY(%(ships)s::text[])"""
    if order_by is None:
        with ship_read_settings(cursor):  # a hash aggregate in work_mem, no parallel workers, no JIT
            fields, size = _read_fleet_ticks(cursor, from_where, params)
            if again:
                fields, size = _with_pairs(cursor, source_sql, fields, size, again, dict(zip(
                    ship_hash.tolist(), ship_ids, strict=True)), start)
    else:  # a source without a unique key: the rows themselves, in the duplicate order
        fields, size = _copy_out(cursor, f"SELECT {_FLEET_ROW_SQL} {from_where} ORDER BY {order_by}", params,
                                 FLEET_ROW_DTYPE, ("ship", "hash"))
    ship_order = np.argsort(ship_hash)
    pos = ship_order[np.searchsorted(ship_hash[ship_order], fields.pop("ship"))]
    rows_of = np.argsort(pos, kind="stable")  # stable: a ship's rows keep the read order (duplicates)
    bounds = np.searchsorted(pos[rows_of], np.arange(len(plans) + 1))
    # with a scope: the text rows from fresh_from on (and, when a pair is read again, the window's, filtered)
    text_rows = _read_text_rows(cursor, source_sql, plans, start if fresh_from is None or again else fresh_from,
                                end, order_by)
    if fresh_from is not None and again:
        text_rows = _text_rows_in(text_rows, datetime_to_ts(fresh_from), again, ship_hash)
    text_of = np.argsort(text_rows[1], kind="stable")
    text_bounds = np.searchsorted(text_rows[1][text_of], np.arange(len(plans) + 1))
    batches: dict[str, NarrowBatch] = {}
    for k, plan in enumerate(plans):
        take = rows_of[bounds[k]:bounds[k + 1]]
        ship_fields = {name: values[take] for name, values in fields.items()}
        idx = _map_hashes(ship_fields.pop("hash"), lookups[k])  # type: ignore[arg-type]
        numeric = (idx < 0) | (plan.kind[np.maximum(idx, 0)] != KIND_TEXT)  # text channels: from their own read
        batch = NarrowBatch(**{name: v[numeric] for name, v in ship_fields.items()}, idx=idx[numeric],
                            bytes_read=size * take.size // max(pos.size, 1), may_repeat=order_by is not None)
        _attach_text(batch, text_rows, text_of[text_bounds[k]:text_bounds[k + 1]])
        batches[plan.ship_id] = batch
    return batches


def _with_pairs(cursor, source_sql: str, fields: dict[str, np.ndarray], size: int, again: set[tuple[int, int]],
                ship_of: dict[int, str], start: datetime) -> tuple[dict[str, np.ndarray], int]:
    """``fields`` with the rows of the (tick, ship hash) pairs ``again`` added (read by their ticks, filtered)."""
    aware = start.tzinfo is not None
    params = {"start": start, "times": sorted({ts_to_datetime(t, aware) for t, _ in again}),
              "aships": sorted({ship_of[h] for _, h in again})}
    from_where = f"""FROM {source_sql} s
        WHERE s.created_time = ANY(%(times)s) AND s.ship_id = ANY(%(aships)s::text[])"""
    more, more_size = _read_fleet_ticks(cursor, from_where, params)
    mine = np.fromiter(((t, sh) in again for t, sh in zip(more["ts"].tolist(), more["ship"].tolist(), strict=True)),
                       dtype=bool, count=more["ts"].size)
    return {key: np.concatenate([fields[key], more[key][mine]]) for key in fields}, size + more_size


def _text_rows_in(text_rows: tuple, fresh_us: int, again: set[tuple[int, int]], ship_hash: np.ndarray) -> tuple:
    """The text rows of ticks from ``fresh_us`` on, or of a (tick, ship hash) pair in ``again``."""
    ts, plan_pos, idx, fmt, vals, size = text_rows
    keep = ts >= fresh_us
    if again:
        hashes = ship_hash[plan_pos].tolist()
        keep |= np.fromiter(((t, h) in again for t, h in zip(ts.tolist(), hashes, strict=True)), dtype=bool,
                            count=ts.size)
    return ts[keep], plan_pos[keep], idx[keep], fmt[keep], [vals[i] for i in np.flatnonzero(keep).tolist()], size


def _read_fleet_ticks(cursor, from_where: str, params: dict) -> tuple[dict[str, np.ndarray], int]:
    """The rows of ``from_where`` packed by tick and ship; the (tick, ship) pairs with a row in no
    record (unknown format, NULL value: rejects, rare) are read again row by row."""
    query = _tick_query(from_where, with_ship=True)
    fields, again, size = _decode_ticks(copy_binary(cursor, query, params), with_ship=True)
    if again:
        log.debug("%d (tick, ship) pair(s) with a row in no record (a reject): read again row by row", len(again))
        aware = params["start"].tzinfo is not None
        times = sorted({t for t, _ in again})
        rows = f"SELECT {_FLEET_ROW_SQL} {from_where} AND s.created_time = ANY(%(again)s)"
        more, more_size = _copy_out(cursor, rows, dict(params, again=[ts_to_datetime(t, aware) for t in times]),
                                    FLEET_ROW_DTYPE, ("ship", "hash"))
        wanted = set(again)  # the other ships' rows of those ticks are in the records already
        mine = np.fromiter(((t, sh) in wanted for t, sh in zip(more["ts"].tolist(), more["ship"].tolist(),
                                                                 strict=True)), dtype=bool, count=more["ts"].size)
        fields = {key: np.concatenate([fields[key], more[key][mine]]) for key in fields}
        size += more_size
    return fields, size


def _read_text_rows(cursor, source_sql: str, plans: list[PivotPlan], start: datetime, end: datetime,
                    order_by: str | None = None, copy_out: Callable[[str], memoryview] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[bytes | None], int]:
    """Rows of text-column channels of ``plans``, their value rendered as text by the server.

    One primary-key range per (ship, text channel); returns (times, plan positions, channel indexes,
    formats, values, bytes read).
    """
    pairs = [(p_i, plan.ship_id, plan.channels[i], i) for p_i, plan in enumerate(plans) for i in plan.text_indexes]
    rows = f"""SELECT s.created_time, m.p, m.i, ({_FMT_SQL})::int2,
            CASE s.value_format WHEN 'String' THEN s.str_v WHEN 'Decimal' THEN s.double_v::text
                 WHEN 'Integer' THEN s.long_v::text WHEN 'Boolean' THEN s.bool_v::text END"""
    pairs_sql = "unnest(%(tships)s::text[], %(tchs)s::text[], %(tpos)s::int4[], %(tidx)s::int4[]) AS m(ship, ch, p, i)"
    if len(plans) == 1:
        # one ship (a long window): one primary-key range per text channel; OFFSET 0 keeps the planner
        # from turning it into a hash join over every ship's rows of the window
        query = f"""SELECT x.* FROM {pairs_sql} CROSS JOIN LATERAL ({rows}
            FROM {source_sql} s WHERE s.ship_id = m.ship AND s.data_channel_id = m.ch
              AND s.created_time >= %(start)s AND s.created_time < %(end)s
              {f"ORDER BY {order_by}" if order_by else ""} OFFSET 0) x"""
    else:  # the fleet read of a short window: whatever plan, it reads that window once
        query = f"""{rows} FROM {pairs_sql} JOIN {source_sql} s ON s.ship_id = m.ship AND s.data_channel_id = m.ch
            WHERE s.created_time >= %(start)s AND s.created_time < %(end)s
            {f"ORDER BY m.p, {order_by}" if order_by else ""}"""
    params = {"start": start, "end": end, "tships": [x[1] for x in pairs], "tchs": [x[2] for x in pairs],
              "tpos": [x[0] for x in pairs], "tidx": [x[3] for x in pairs]}
    data = bytes((copy_out or _local_copy_out(cursor))(_copy_sql(cursor, query, params))) if pairs else b""
    ts, plan_pos, idx, fmt, vals = _parse_text_rows(data)
    return (np.array(ts, dtype=np.int64), np.array(plan_pos, dtype=np.int32), np.array(idx, dtype=np.int32),
            np.array(fmt, dtype=np.int8), vals, len(data))


def _parse_text_rows(data: bytes) -> tuple[list[int], list[int], list[int], list[int], list[bytes | None]]:
    """The rows of the text read's binary COPY (few: a loop per row is fine here)."""
    ts: list[int] = []
    plan_pos: list[int] = []
    idx: list[int] = []
    fmt: list[int] = []
    vals: list[bytes | None] = []
    if not data:
        return ts, plan_pos, idx, fmt, vals
    pos = 19 + struct.unpack(">i", data[15:19])[0]
    unpack_row = struct.Struct(">hi q i i i i i h i").unpack_from
    while True:
        (nf,) = struct.unpack_from(">h", data, pos)
        if nf == -1:
            break
        _, _, t, _, p, _, i, _, f, ln = unpack_row(data, pos)
        pos += 40
        if ln < 0:
            vals.append(None)
        else:
            vals.append(bytes(data[pos:pos + ln]))
            pos += ln
        ts.append(t)
        plan_pos.append(p)
        idx.append(i)
        fmt.append(f)
    return ts, plan_pos, idx, fmt, vals


def _attach_text(batch: NarrowBatch, text_rows: tuple, mine: np.ndarray) -> None:
    """Give ``batch`` the text rows at positions ``mine`` (ascending: the read order is kept)."""
    ts, _, idx, fmt, vals, size = text_rows
    batch.text_ts = ts[mine]
    batch.text_idx = idx[mine]
    batch.text_fmt = fmt[mine]
    batch.text_values = [vals[i] for i in mine.tolist()]
    batch.bytes_read += size * mine.size // max(ts.size, 1)


@dataclass
class PartRows:
    """The pivoted rows of one wide table: typed matrices with validity masks."""

    table: str
    ts: np.ndarray  # int64, one per wide row, ascending
    matrices: dict[int, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]  # kind -> (values, valid, columns)
    text: dict[str, dict[int, bytes]] = field(default_factory=dict)  # column -> {row: utf-8 value}

    @property
    def cells(self) -> int:
        """Non-NULL cells."""
        return int(sum(v.sum() for _, v, _ in self.matrices.values()) + sum(len(c) for c in self.text.values()))


@dataclass
class Rejects:
    """Rows that could not be written, with their reason codes (rare; plain lists)."""

    ts: list[int] = field(default_factory=list)
    channel: list[str] = field(default_factory=list)
    reason: list[int] = field(default_factory=list)

    def add(self, ts: np.ndarray, idx: np.ndarray, reason: np.ndarray, channels: tuple[str, ...]) -> None:
        """Record rejected rows."""
        self.ts.extend(int(t) for t in ts)
        self.channel.extend(channels[int(i)] for i in idx)
        self.reason.extend(int(r) for r in reason)

    def extend(self, other: Rejects) -> None:
        """Add the rejects of another block."""
        self.ts.extend(other.ts)
        self.channel.extend(other.channel)
        self.reason.extend(other.reason)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class PivotResult:
    """What :func:`pivot` made of a batch."""

    parts: list[PartRows]
    rejects: Rejects
    unknown_rows: int
    rows_read: int

    @property
    def wide_rows(self) -> int:
        """Distinct timestamps written, over all parts."""
        if not self.parts:
            return 0
        return distinct_count(np.concatenate([p.ts for p in self.parts]))


@dataclass
class _KnownRows:
    """The numeric rows of a batch whose channel the plan knows (views when every row is known)."""

    ts: np.ndarray
    idx: np.ndarray
    fmt: np.ndarray
    nulls: np.ndarray
    d: np.ndarray
    l: np.ndarray  # noqa: E741 - the source column is long_v
    b: np.ndarray

    @classmethod
    def of(cls, batch: NarrowBatch) -> tuple[_KnownRows, int]:
        """The known rows of ``batch`` and the count of the others."""
        known = batch.idx >= 0
        if known.all():
            return cls(batch.ts, batch.idx, batch.fmt, batch.nulls, batch.d, batch.l, batch.b), 0
        return (cls(batch.ts[known], batch.idx[known], batch.fmt[known], batch.nulls[known], batch.d[known],
                    batch.l[known], batch.b[known]), int((~known).sum()))


def _reasons(plan: PivotPlan, rows: _KnownRows) -> tuple[np.ndarray, np.ndarray]:
    """Per known numeric row: the reject reason (0 = fine) and the kind of its column."""
    fmt = rows.fmt
    kind = plan.kind[rows.idx]
    reason = np.zeros(fmt.size, dtype=np.int8)
    if rows.nulls.any():
        nulls = rows.nulls
        null_for_fmt = np.select(
            [fmt == FMT_DECIMAL, fmt == FMT_INTEGER, fmt == FMT_BOOLEAN],
            [(nulls & _NULL_D) != 0, (nulls & _NULL_L) != 0, (nulls & _NULL_B) != 0],
            False,
        )
        reason[null_for_fmt] = 2
    reason[fmt == FMT_UNKNOWN] = 1
    reason[fmt == FMT_STRING] = 3
    ok = reason == 0
    is_bool = fmt == FMT_BOOLEAN
    reason[ok & is_bool & (kind != KIND_BOOL)] = 4
    reason[ok & ~is_bool & (kind == KIND_BOOL)] = 5
    to_int = ok & (fmt == FMT_DECIMAL) & (kind == KIND_BIGINT)
    if to_int.any():
        d = rows.d[to_int]
        with np.errstate(invalid="ignore"):
            fits = np.isfinite(d) & (np.floor(d) == d) & (d >= BIGINT_MIN) & (d < BIGINT_END)  # common/fits.py
        bad = np.flatnonzero(to_int)[~fits]
        reason[bad] = 6
    return reason, kind


def _reject_duplicates(t: np.ndarray, idx: np.ndarray, good: np.ndarray, reason: np.ndarray, n_channels: int) -> None:
    """Mark all but the last row of a repeated (time, channel) as reason 7 (sources without a key)."""
    key = t[good].astype(np.int64) * max(n_channels, 1) + idx[good]
    if key.size == 0:
        return
    counts = np.bincount(key) if key.max() < 50_000_000 else None
    if counts is not None and counts.max() <= 1:
        return  # the common case: no duplicates, no sort needed
    _, last_rev = np.unique(key[::-1], return_index=True)  # keep the LAST row of a key in read order
    dup = np.ones(key.size, dtype=bool)
    dup[key.size - 1 - last_rev] = False
    where = np.flatnonzero(good)[dup]
    reason[where] = 7
    good[where] = False


def _sorted_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)``, in O(rows) for the rows of a read.

    A read returns a window's rows in runs of one created_time (a tick's records, the heap's
    time order), so the runs are found in one pass, and only their first values are sorted.
    """
    if values.size == 0:
        return values.copy(), np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    uniq, run_code = np.unique(values[starts], return_inverse=True)
    return uniq, np.repeat(run_code.reshape(-1), np.diff(np.append(starts, values.size)))


_MATRIX_DTYPE = {KIND_DOUBLE: np.float64, KIND_BIGINT: np.int64, KIND_BOOL: bool}
_NO_GROUP = np.iinfo(np.int16).max


def _kind_values(kind: int, rows: _KnownRows, sel: np.ndarray) -> np.ndarray:
    """The cell values of the rows ``sel``, bound for columns of ``kind`` (already checked to fit)."""
    if kind == KIND_BOOL:
        return rows.b[sel]
    fmt = rows.fmt[sel]
    if kind == KIND_DOUBLE:
        ints = fmt == FMT_INTEGER
        return np.where(ints, rows.l[sel].astype(np.float64), rows.d[sel]) if ints.any() else rows.d[sel]
    decs = fmt == FMT_DECIMAL
    return np.where(decs, rows.d[sel].astype(np.int64, copy=False), rows.l[sel]) if decs.any() else rows.l[sel]


def _groups(plan: PivotPlan, rows: _KnownRows, kind: np.ndarray, good: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """The good rows of each (part, column type), as row positions in read order (one stable sort)."""
    key = plan.part[rows.idx].astype(np.int16) * 4 + kind
    key[~good] = _NO_GROUP
    order = np.argsort(key, kind="stable")  # a radix sort of small ints: O(rows)
    bounds = np.concatenate(([0], np.cumsum(np.bincount(key[good], minlength=len(plan.parts) * 4))))
    return {(g // 4, g % 4): order[bounds[g]:bounds[g + 1]] for g in range(len(plan.parts) * 4)
            if bounds[g + 1] > bounds[g]}


def _numeric_matrices(plan: PivotPlan, rows: _KnownRows, groups: dict[tuple[int, int], np.ndarray],
                      t_num: np.ndarray, n_ticks: int, p_i: int, rows_used: np.ndarray
                      ) -> dict[int, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    """The (values, valid, columns) matrix of each fixed-width column type of part ``p_i``."""
    matrices = {}
    for k, cols in plan.parts[p_i].columns.items():
        if k == KIND_TEXT:
            continue
        sel = groups.get((p_i, k), np.empty(0, dtype=np.int64))
        t = t_num[sel]
        flat = t * len(cols) + plan.pos[rows.idx[sel]]  # one flat scatter, not a 2-D fancy index
        m = np.zeros((n_ticks, len(cols)), dtype=_MATRIX_DTYPE[k])
        valid = np.zeros((n_ticks, len(cols)), dtype=bool)
        m.reshape(-1)[flat] = _kind_values(k, rows, sel)
        valid.reshape(-1)[flat] = True
        rows_used[t] = True
        matrices[k] = (m, valid, cols)
    return matrices


def _text_cells(plan: PivotPlan, batch: NarrowBatch, text_reason: np.ndarray, t_txt: np.ndarray, p_i: int,
                rows_used: np.ndarray, rejects: Rejects) -> dict[str, dict[int, bytes]]:
    """The text cells of part ``p_i``: column -> {row: value}; a later row of a cell wins."""
    cols = plan.parts[p_i].columns.get(KIND_TEXT)
    text: dict[str, dict[int, bytes]] = {}
    if cols is None:
        return text
    known = np.flatnonzero(batch.text_idx >= 0)  # t_txt holds the tick of each of these rows
    ci = batch.text_idx[known]
    mine = (text_reason[known] == 0) & (plan.part[ci] == p_i)
    names = [cols[p] for p in plan.pos[ci[mine]].tolist()]
    for j, name, row in zip(known[mine].tolist(), names, t_txt[mine].tolist(), strict=True):
        prev = text.setdefault(name, {})
        if row in prev:  # the earlier row of the same cell is the duplicate
            rejects.add(batch.text_ts[j:j + 1], batch.text_idx[j:j + 1], np.array([7]), plan.channels)
        prev[row] = batch.text_values[j]  # type: ignore[assignment]
        rows_used[row] = True
    return text


def _used_rows(table: str, uniq: np.ndarray, matrices: dict, text: dict, rows_used: np.ndarray) -> PartRows | None:
    """A part's rows without the ticks it has no cell in (None when it has none)."""
    if rows_used.all():
        return PartRows(table, uniq, matrices, text)
    keep = np.flatnonzero(rows_used)
    if keep.size == 0:
        return None
    remap = np.full(uniq.size, -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    matrices = {k: (m[keep], v[keep], cols) for k, (m, v, cols) in matrices.items()}
    text = {c: {int(remap[r]): v for r, v in vals.items()} for c, vals in text.items()}
    return PartRows(table, uniq[keep], matrices, text)


def pivot(plan: PivotPlan, batch: NarrowBatch) -> PivotResult:
    """Scatter ``batch`` into one typed matrix per (part, column type); collect rejects."""
    rejects = Rejects()
    rows, unknown_rows = _KnownRows.of(batch)
    reason, kind = _reasons(plan, rows)
    text_known = batch.text_idx >= 0
    text_vals_ok = np.array([v is not None for v in batch.text_values], dtype=bool)
    text_reason = np.where(batch.text_fmt == FMT_UNKNOWN, 1, np.where(~text_vals_ok, 2, 0)).astype(np.int8)

    uniq, codes = _sorted_codes(np.concatenate([rows.ts, batch.text_ts[text_known]]))
    t_num, t_txt = codes[:rows.ts.size], codes[rows.ts.size:]
    good = reason == 0
    if batch.may_repeat:
        _reject_duplicates(t_num, rows.idx, good, reason, len(plan.channels))
    bad = reason != 0
    if bad.any():
        rejects.add(rows.ts[bad], rows.idx[bad], reason[bad], plan.channels)
    if (text_reason != 0).any():
        sel = text_reason != 0
        rejects.add(batch.text_ts[sel], batch.text_idx[sel], text_reason[sel], plan.channels)

    groups = _groups(plan, rows, kind, good)
    parts: list[PartRows] = []
    for p_i, pc in enumerate(plan.parts):
        rows_used = np.zeros(uniq.size, dtype=bool)
        matrices = _numeric_matrices(plan, rows, groups, t_num, uniq.size, p_i, rows_used)
        text = _text_cells(plan, batch, text_reason, t_txt, p_i, rows_used, rejects)
        part = _used_rows(pc.table, uniq, matrices, text, rows_used)
        if part is not None:
            parts.append(part)
    return PivotResult(parts, rejects, unknown_rows, batch.rows)


def _same_cells(rows: np.ndarray, at: np.ndarray, part: PartRows, before: PartRows) -> np.ndarray:
    """Per row in ``rows`` of ``part``: True when ``before`` row ``at`` holds exactly the same cells.

    Values are compared bit for bit (NaN equals NaN, -0.0 differs from 0.0), NULLs by their masks.
    """
    same = np.ones(rows.size, dtype=bool)
    for kind, (m, v, cols) in part.matrices.items():
        bm, bv, bcols = before.matrices[kind]
        if bcols != cols:
            return np.zeros(rows.size, dtype=bool)
        new_v, old_v = v[rows], bv[at]
        new_m, old_m = m[rows], bm[at]
        if kind != KIND_BOOL:
            new_m, old_m = new_m.view(np.int64), old_m.view(np.int64)
        same &= (new_v == old_v).all(axis=1) & ((new_m == old_m) | ~new_v).all(axis=1)
    for col in set(part.text) | set(before.text):
        new_t, old_t = part.text.get(col, {}), before.text.get(col, {})
        for k, (r, a) in enumerate(zip(rows, at, strict=True)):
            if same[k] and new_t.get(int(r)) != old_t.get(int(a)):
                same[k] = False
    return same


def drop_unchanged(part: PartRows, before: PartRows | None) -> PartRows | None:
    """``part`` without the rows that ``before`` (the same table's previous pivot) already held cell for cell.

    For realtime: each cycle re-reads its lookback for late rows, and most of those rows were
    written by the previous cycle exactly as they are; merging them again is most of a cycle's
    work for nothing. None when no row is left.
    """
    if before is None or set(before.matrices) != set(part.matrices) or part.ts.size == 0 or before.ts.size == 0:
        return part
    pos = np.minimum(np.searchsorted(before.ts, part.ts), before.ts.size - 1)
    rows = np.flatnonzero(before.ts[pos] == part.ts)
    if rows.size == 0:
        return part
    keep = np.ones(part.ts.size, dtype=bool)
    keep[rows[_same_cells(rows, pos[rows], part, before)]] = False
    if keep.all():
        return part
    if not keep.any():
        return None
    remap = np.cumsum(keep) - 1
    return PartRows(part.table, part.ts[keep],
                    {k: (m[keep], v[keep], cols) for k, (m, v, cols) in part.matrices.items()},
                    {c: {int(remap[r]): val for r, val in vals.items() if keep[r]} for c, vals in part.text.items()})


_BE = {KIND_DOUBLE: ">f8", KIND_BIGINT: ">i8", KIND_BOOL: "u1"}


_DENSE_TEXT_MAX = 512  # widest text cell (bytes) laid out densely; a block with a wider one takes the general path


def _byte_positions(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The buffer position of every byte of values of ``lens`` bytes each, the i-th laid out from ``starts[i]``:
    where the values' bytes, joined in the same order, go in one scatter."""
    inner = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + inner


def _encode_dense(fields: list[tuple[np.ndarray, np.ndarray, int]], texts: list[dict[int, bytes]],
                  r0: int, r1: int, extra_fields: int = 0) -> bytes:
    """Binary COPY rows r0..r1: a dense layout, then one boolean compress.

    Every row is first laid out at full width (each fixed cell its length word and its w value
    bytes; each text column as wide as its longest value in the block) with strided writes and
    one scatter per text column; the bytes that NULL cells and shorter texts do not use are then
    dropped with one boolean compress. No Python loop per cell.
    """
    nb = r1 - r0
    nf = sum(f[1].shape[1] for f in fields) + len(texts) + extra_fields  # extra: text cells the caller adds
    text_lens = [np.fromiter((len(v) for v in col.values()), dtype=np.int64, count=len(col)) for col in texts]
    text_width = [4 + (int(ln.max()) if ln.size else 0) for ln in text_lens]
    width = 2 + sum(f[1].shape[1] * (4 + f[2]) for f in fields) + sum(text_width)
    dense = np.zeros((nb, width), dtype=np.uint8)
    dense[:, 0] = (nf >> 8) & 0xFF
    dense[:, 1] = nf & 0xFF
    keep: np.ndarray | None = None
    off = 2
    for data, valid, w in fields:
        k = data.shape[1]
        span = k * (4 + w)
        cells = dense[:, off:off + span].reshape(nb, k, 4 + w)  # a view: each row's span is contiguous
        v = valid[r0:r1]
        full = bool(v.all())
        if full:  # every cell has a value: one length word for all
            cells[:, :, :4] = np.frombuffer(struct.pack(">i", w), dtype=np.uint8)
        else:
            cells[:, :, :4] = np.ascontiguousarray(np.where(v, w, -1), dtype=">i4").view(np.uint8).reshape(nb, k, 4)
        cells[:, :, 4:] = data[r0:r1]
        if not full:
            if keep is None:
                keep = np.ones((nb, width), dtype=bool)
            keep[:, off:off + span].reshape(nb, k, 4 + w)[:, :, 4:] = v[:, :, None]
        off += span
    if texts:
        if keep is None:
            keep = np.ones((nb, width), dtype=bool)
        flat, keep_flat = dense.reshape(-1), keep.reshape(-1)
        for col, lens, span in zip(texts, text_lens, text_width, strict=True):
            keep[:, off + 4:off + span] = False
            row_len = np.full(nb, -1, dtype=np.int64)
            if col:
                rows = np.fromiter(col.keys(), dtype=np.int64, count=len(col)) - r0
                row_len[rows] = lens
                where = _byte_positions(rows * width + off + 4, lens)
                flat[where] = np.frombuffer(b"".join(col.values()), dtype=np.uint8)
                keep_flat[where] = True
            dense[:, off:off + 4] = row_len.astype(">i4").view(np.uint8).reshape(nb, 4)
            off += span
    return dense.tobytes() if keep is None else dense[keep].tobytes()


def _encode_full(fields: list[tuple[np.ndarray, np.ndarray, int]], texts: list[dict[int, bytes]],
                 r0: int, r1: int) -> bytes:
    """Binary COPY rows r0..r1 whose fixed-width cells all have a value (a production ship's rows).

    The fixed-width part of every row is laid out densely (no NULL to squeeze out), the text cells
    of every row (length word and value, in column order) into one buffer by one scatter per text
    column; then each row is joined from its two slices: a Python step per row, none per cell.
    """
    nb = r1 - r0
    dense = memoryview(_encode_dense(fields, [], r0, r1, extra_fields=len(texts)))
    width = len(dense) // nb
    rows_of = [np.fromiter(col.keys(), dtype=np.int64, count=len(col)) - r0 for col in texts]
    lens = np.full((nb, len(texts)), -1, dtype=np.int64)  # a missing cell is a NULL: length -1, no bytes
    for j, (col, rows) in enumerate(zip(texts, rows_of, strict=True)):
        lens[rows, j] = np.fromiter((len(v) for v in col.values()), dtype=np.int64, count=len(col))
    cell = 4 + np.maximum(lens, 0)
    row_start = np.concatenate(([0], np.cumsum(cell.sum(axis=1))))
    cell_start = row_start[:-1, None] + np.cumsum(cell, axis=1) - cell
    cells = np.empty(int(row_start[-1]), dtype=np.uint8)
    cells[cell_start[:, :, None] + np.arange(4)] = lens.astype(">i4").view(np.uint8).reshape(nb, len(texts), 4)
    for j, (col, rows) in enumerate(zip(texts, rows_of, strict=True)):
        if col:
            where = _byte_positions(cell_start[rows, j] + 4, lens[rows, j])
            cells[where] = np.frombuffer(b"".join(col.values()), dtype=np.uint8)
    text_view = memoryview(cells.tobytes())
    bounds = row_start.tolist()
    pieces: list[memoryview] = []
    for r in range(nb):
        pieces.append(dense[r * width:(r + 1) * width])
        pieces.append(text_view[bounds[r]:bounds[r + 1]])
    return b"".join(pieces)


def _encode_block(fields: list[tuple[np.ndarray, np.ndarray, int]], texts: list[dict[int, bytes]],
                  r0: int, r1: int) -> bytes:
    """Binary COPY rows r0..r1 of ``fields`` and ``texts`` (per column, this block's {row: value})."""
    if texts and all(bool(v[r0:r1].all()) for _, v, _ in fields):
        return _encode_full(fields, texts, r0, r1)
    if all(len(v) <= _DENSE_TEXT_MAX for col in texts for v in col.values()):
        return _encode_dense(fields, texts, r0, r1)
    nb = r1 - r0
    nf = sum(f[1].shape[1] for f in fields) + len(texts)
    valid_parts = [v[r0:r1] for _, v, _ in fields]
    len_parts = [np.where(v[r0:r1], w, 0) for _, v, w in fields]
    for col in texts:
        tv = np.zeros((nb, 1), dtype=bool)
        tl = np.zeros((nb, 1), dtype=np.int64)
        if col:
            rows = np.fromiter(col.keys(), dtype=np.int64, count=len(col)) - r0
            tv[rows, 0] = True
            tl[rows, 0] = np.fromiter((len(v) for v in col.values()), dtype=np.int64, count=len(col))
        valid_parts.append(tv)
        len_parts.append(tl)
    V = np.concatenate(valid_parts, axis=1)
    L = np.concatenate(len_parts, axis=1).astype(np.int64)
    W = 4 + L
    row_len = 2 + W.sum(axis=1)
    row_off = np.concatenate([[0], np.cumsum(row_len)[:-1]])
    buf = np.empty(int(row_len.sum()), dtype=np.uint8)
    buf[row_off] = (nf >> 8) & 0xFF
    buf[row_off + 1] = nf & 0xFF
    cell_off = row_off[:, None] + 2 + np.cumsum(W, axis=1) - W
    lengths = np.ascontiguousarray(np.where(V, L, -1), dtype=">i4").view(np.uint8).reshape(nb, nf, 4)
    buf[cell_off[:, :, None] + np.arange(4)] = lengths
    col = 0
    for data, valid, w in fields:
        k = data.shape[1]
        v = valid[r0:r1]
        pos = cell_off[:, col:col + k][v] + 4
        buf[pos[:, None] + np.arange(w)] = data[r0:r1][v]
        col += k
    for t_i, colvals in enumerate(texts):
        for r, val in colvals.items():
            p = int(cell_off[r - r0, col + t_i]) + 4
            buf[p:p + len(val)] = np.frombuffer(val, np.uint8)
    return buf.tobytes()


def encode_copy(part: PartRows, time_column: str, block_rows: int = 1024) -> tuple[list[str], bytes]:
    """The columns and ``COPY FROM STDIN (FORMAT binary)`` payload of ``part``.

    Only columns with at least one value are sent; memory is bounded by ``block_rows``.
    """
    n = part.ts.size
    ts = part.ts.astype(">i8").view(np.uint8).reshape(n, 1, 8)
    fields: list[tuple[np.ndarray, np.ndarray, int]] = [(ts, np.ones((n, 1), dtype=bool), 8)]
    columns = [time_column]
    for kind, (m, v, cols) in sorted(part.matrices.items()):
        present = np.flatnonzero(v.any(axis=0))
        if present.size == 0:
            continue
        if present.size < len(cols):  # else no column copy: one byte-swapping pass
            m, v = m[:, present], v[:, present]
        data = np.ascontiguousarray(m, dtype=_BE[kind])
        w = data.dtype.itemsize
        fields.append((data.view(np.uint8).reshape(n, present.size, w), v, w))
        columns.extend(cols[i] for i in present)
    # each text column's values grouped by block once, so a block touches only its own values
    text_blocks: list[dict[int, dict[int, bytes]]] = []
    for col, vals in sorted(part.text.items()):
        if vals:
            columns.append(col)
            by_block: dict[int, dict[int, bytes]] = {}
            for r, v in vals.items():
                by_block.setdefault(r // block_rows, {})[r] = v
            text_blocks.append(by_block)
    blocks = [_HEADER]
    for b_i, r0 in enumerate(range(0, n, block_rows)):
        texts = [tb.get(b_i, {}) for tb in text_blocks]
        blocks.append(_encode_block(fields, texts, r0, min(n, r0 + block_rows)))
    blocks.append(_TRAILER)
    return columns, b"".join(blocks)
