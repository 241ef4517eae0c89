"""The pivot core without a database: tick decoding, tick codes, the scatter and the COPY encoder.

Each is checked against a plain Python reference on random input (fixed seeds), so these run in
well under a second and pin the vectorised code down where the database tests cannot reach.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from narrow2wide.common.fits import FITS
from narrow2wide.engine.pivot import (
    FMT_BOOLEAN,
    FMT_DECIMAL,
    FMT_INTEGER,
    FMT_STRING,
    FMT_UNKNOWN,
    FORMAT_NAMES,
    KIND_BIGINT,
    KIND_BOOL,
    KIND_DOUBLE,
    KIND_OF_TYPE,
    KIND_TEXT,
    TICK_FORMATS,
    NarrowBatch,
    PartColumns,
    PivotPlan,
    _decode_ticks,
    _encode_dense,
    _encode_full,
    _sorted_codes,
    distinct_count,
    encode_copy,
    pivot,
)

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
IMAGE = {FMT_DECIMAL: lambda v: struct.pack(">d", v), FMT_INTEGER: lambda v: struct.pack(">q", v),
         FMT_BOOLEAN: lambda v: struct.pack(">?", v), FMT_STRING: lambda v: b""}


def tick_stream(ticks: list[tuple[int, int, list[tuple[int, int, object]]]], with_ship: bool = False) -> bytes:
    """A binary COPY of tick rows as the server sends them: (time, ship hash, [(fmt, hash, value)]).

    A record with fmt 0 stands for a row in no record (counted, not packed)."""
    out = [HEADER]
    for ts, ship, records in ticks:
        fields = [struct.pack(">iq", 8, ts)]
        if with_ship:
            fields.append(struct.pack(">iq", 8, ship))
        fields.append(struct.pack(">ii", 4, len(records)))
        for fmt, _, _, _ in TICK_FORMATS:
            packed = b"".join(struct.pack(">q", h) + IMAGE[fmt](v) for f, h, v in records if f == fmt)
            fields.append(struct.pack(">i", len(packed)) + packed if packed else struct.pack(">i", -1))
        out.append(struct.pack(">h", 2 + with_ship + len(TICK_FORMATS)))
        out.extend(fields)
    out.append(TRAILER)
    return b"".join(out)


def test_tick_rows_decode_to_the_rows_they_pack_and_a_tick_with_a_stray_row_is_returned():
    rng = np.random.default_rng(7)
    ticks, expected = [], []
    for t in rng.permutation(40).tolist():  # the server's hash order
        ts = 1_000_000 * t
        records = []
        for h in range(int(rng.integers(1, 6))):
            fmt = int(rng.choice([FMT_DECIMAL, FMT_INTEGER, FMT_BOOLEAN, FMT_STRING]))
            value = {FMT_DECIMAL: float(rng.normal()), FMT_INTEGER: int(rng.integers(-2**62, 2**62)),
                     FMT_BOOLEAN: bool(rng.integers(2)), FMT_STRING: None}[fmt]
            records.append((fmt, 1000 + h, value))
        if t == 13:
            records.append((FMT_UNKNOWN, 99, None))  # e.g. a NULL value: counted, in no record
        else:
            expected += [(ts, h, fmt, v) for fmt, h, v in records]
        ticks.append((ts, 0, records))
    fields, again, size = _decode_ticks(memoryview(tick_stream(ticks)))
    assert again == [(13_000_000, 0)]
    assert size == len(tick_stream(ticks))
    assert np.all(np.diff(fields["ts"][fields["fmt"] == FMT_DECIMAL]) >= 0)  # each format's ticks in time order
    got = []
    for ts, h, fmt, d, lv, b in zip(*(fields[k].tolist() for k in ("ts", "hash", "fmt", "d", "l", "b")), strict=True):
        got.append((ts, h, fmt, {FMT_DECIMAL: d, FMT_INTEGER: lv, FMT_BOOLEAN: b, FMT_STRING: None}[fmt]))
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert not fields["nulls"].any()


def test_fleet_tick_rows_carry_their_ship_and_an_empty_stream_decodes_to_nothing():
    ticks = [(5, -17, [(FMT_DECIMAL, 1, 2.5)]), (5, 23, [(FMT_INTEGER, 1, 7), (FMT_UNKNOWN, 2, None)])]
    fields, again, _ = _decode_ticks(memoryview(tick_stream(ticks, with_ship=True)), with_ship=True)
    assert fields["ship"].tolist() == [-17] and fields["d"].tolist() == [2.5]
    assert again == [(5, 23)]
    empty, none, _ = _decode_ticks(memoryview(HEADER + TRAILER))
    assert empty["ts"].size == 0 and none == []
    with pytest.raises(ValueError):
        _decode_ticks(memoryview(tick_stream(ticks, with_ship=True)[:-2]), with_ship=True)


@pytest.mark.parametrize("shape", ["runs", "sorted", "random", "one"])
def test_tick_codes_equal_numpy_unique(shape):
    rng = np.random.default_rng(11)
    values = {"runs": np.repeat(rng.permutation(300), rng.integers(1, 9, 300)),
              "sorted": np.sort(rng.integers(0, 500, 4000)),
              "random": rng.integers(-10**15, 10**15, 5000),
              "one": np.array([42])}[shape].astype(np.int64)
    uniq, codes = _sorted_codes(values)
    want_u, want_c = np.unique(values, return_inverse=True)
    assert uniq.tolist() == want_u.tolist() and codes.tolist() == want_c.reshape(-1).tolist()



@pytest.mark.parametrize("shape", ["runs", "random", "one", "empty"])
def test_distinct_count_equals_the_size_of_numpy_unique(shape):
    rng = np.random.default_rng(5)
    values = {"runs": np.repeat(rng.permutation(300), rng.integers(1, 9, 300)),
              "random": rng.integers(-50, 50, 5000),
              "one": np.array([7]),
              "empty": np.empty(0)}[shape].astype(np.int64)
    assert distinct_count(values) == np.unique(values).size


def _plan() -> PivotPlan:
    """Two parts: doubles, a bigint, a boolean and a text column in the first, one double in the second."""
    channels = ("d1", "d2", "i1", "b1", "s1", "d3")
    kind = np.array([KIND_DOUBLE, KIND_DOUBLE, KIND_BIGINT, KIND_BOOL, KIND_TEXT, KIND_DOUBLE], dtype=np.int8)
    part = np.array([0, 0, 0, 0, 0, 1], dtype=np.int16)
    pos = np.array([0, 1, 0, 0, 0, 0], dtype=np.int32)
    parts = (PartColumns("t1", {KIND_DOUBLE: ("c_d1", "c_d2"), KIND_BIGINT: ("c_i1",), KIND_BOOL: ("c_b1",),
                                KIND_TEXT: ("c_s1",)}),
             PartColumns("t2", {KIND_DOUBLE: ("c_d3",)}))
    return PivotPlan("ship", channels, kind, part, pos, parts)


def _batch(rng: np.random.Generator, n_ticks: int) -> tuple[NarrowBatch, dict]:
    """Random numeric rows (some rejects) for channels 0-3 and 5, text rows for channel 4; and the
    cells a plain Python pivot makes of them: (table, column) -> {time: value}."""
    ts, idx, fmt, d, lv, b, nulls = [], [], [], [], [], [], []
    cells: dict[tuple[str, str], dict[int, object]] = {}
    columns = {0: ("t1", "c_d1"), 1: ("t1", "c_d2"), 2: ("t1", "c_i1"), 3: ("t1", "c_b1"), 5: ("t2", "c_d3")}
    for t in range(n_ticks):
        for ch in (0, 1, 2, 3, 5):
            if rng.random() < 0.2:
                continue  # a missing cell
            f = {0: FMT_DECIMAL, 1: FMT_INTEGER, 2: FMT_INTEGER, 3: FMT_BOOLEAN, 5: FMT_DECIMAL}[ch]
            if rng.random() < 0.05:
                f = FMT_STRING  # a reject: a string for a numeric column
            dv, li, bv = float(rng.normal()), int(rng.integers(-1000, 1000)), bool(rng.integers(2))
            if ch == 2 and rng.random() < 0.3:
                f, dv = FMT_DECIMAL, float(rng.integers(-50, 50))  # an integral double in a bigint column
            ts.append(t * 15_000_000)
            idx.append(ch)
            fmt.append(f)
            d.append(dv)
            lv.append(li)
            b.append(bv)
            nulls.append(0)
            if f != FMT_STRING:
                value = {KIND_DOUBLE: float(li) if f == FMT_INTEGER else dv, KIND_BIGINT: int(dv) if f == FMT_DECIMAL
                         else li, KIND_BOOL: bv}[int(_plan().kind[ch])]
                cells.setdefault(columns[ch], {})[t * 15_000_000] = value
    text_ts = [t * 15_000_000 for t in range(n_ticks) if t % 3]
    text_values = [f"mode {t}".encode() for t in range(n_ticks) if t % 3]
    for t, v in zip(text_ts, text_values, strict=True):
        cells.setdefault(("t1", "c_s1"), {})[t] = v
    order = rng.permutation(len(ts))
    arr = lambda xs, dt: np.array(xs, dtype=dt)[order]  # noqa: E731 - read order is not time order
    batch = NarrowBatch(arr(ts, np.int64), arr(idx, np.int32), arr(fmt, np.int8), arr(d, np.float64),
                        arr(lv, np.int64), arr(b, bool), arr(nulls, np.int8),
                        text_ts=np.array(text_ts, dtype=np.int64), text_idx=np.full(len(text_ts), 4, np.int32),
                        text_fmt=np.full(len(text_ts), FMT_STRING, np.int8), text_values=text_values, may_repeat=False)
    return batch, cells


def test_the_scatter_equals_a_plain_python_pivot_with_rejects_counted():
    rng = np.random.default_rng(3)
    batch, want = _batch(rng, 50)
    result = pivot(_plan(), batch)
    got: dict[tuple[str, str], dict[int, object]] = {}
    for part in result.parts:
        for _, (m, v, cols) in part.matrices.items():
            for j, col in enumerate(cols):
                for r in np.flatnonzero(v[:, j]).tolist():
                    got.setdefault((part.table, col), {})[int(part.ts[r])] = m[r, j].item()
        for col, values in part.text.items():
            for r, value in values.items():
                got.setdefault((part.table, col), {})[int(part.ts[r])] = value
    assert got == want
    assert len(result.rejects) == int((batch.fmt == FMT_STRING).sum())
    assert result.rows_read == batch.ts.size + batch.text_ts.size


def _decode_copy(payload: bytes, columns: list[str]) -> list[list[bytes | None]]:
    """A plain reading of a binary COPY payload: per row, each field's bytes (None for NULL)."""
    assert payload.startswith(HEADER) and payload.endswith(TRAILER)
    pos, rows = len(HEADER), []
    while True:
        (nf,) = struct.unpack_from(">h", payload, pos)
        pos += 2
        if nf == -1:
            break
        assert nf == len(columns)
        row = []
        for _ in range(nf):
            (n,) = struct.unpack_from(">i", payload, pos)
            pos += 4
            row.append(None if n < 0 else payload[pos:pos + n])
            pos += max(n, 0)
        rows.append(row)
    assert pos == len(payload)
    return rows


@pytest.mark.parametrize("every_value", [True, False])
def test_the_copy_encoder_writes_every_cell_and_null_of_every_row(every_value):
    rng = np.random.default_rng(5)
    batch, _ = _batch(rng, 2600)  # more than two encoder blocks
    if every_value:  # no missing cell, no reject: the fast path of a production ship
        keep = batch.fmt != FMT_STRING
        batch = NarrowBatch(*(getattr(batch, k)[keep] for k in ("ts", "idx", "fmt", "d", "l", "b", "nulls")),
                            text_ts=batch.text_ts, text_idx=batch.text_idx, text_fmt=batch.text_fmt,
                            text_values=batch.text_values, may_repeat=False)
    part = pivot(_plan(), batch).parts[0]
    columns, payload = encode_copy(part, "created_time")
    rows = _decode_copy(payload, columns)
    assert len(rows) == part.ts.size
    fmt = {KIND_DOUBLE: ">d", KIND_BIGINT: ">q", KIND_BOOL: ">?"}
    where = {c: (k, j) for k, (_, _, cols) in part.matrices.items() for j, c in enumerate(cols)}
    for r, row in enumerate(rows):
        assert struct.unpack(">q", row[0])[0] == part.ts[r]
        for col, field in zip(columns[1:], row[1:], strict=True):
            if col in part.text:
                assert field == part.text[col].get(r)
                continue
            k, j = where[col]
            m, v, _ = part.matrices[k]
            assert (field is not None) == bool(v[r, j])
            if field is not None:
                assert struct.unpack(fmt[k], field)[0] == m[r, j].item()


@pytest.mark.parametrize("pg_type", sorted(FITS))
def test_the_pivot_accepts_exactly_what_the_one_definition_of_fits_accepts(pg_type):
    """common/fits.py defines what fits a column (the reject files' and the validator's SQL come from it);
    the pivot's array form must accept the same (type, format) pairs, with values that fit."""
    kind = KIND_OF_TYPE[pg_type]
    plan = PivotPlan("ship", ("c",), np.array([kind], dtype=np.int8), np.array([0], dtype=np.int16),
                     np.array([0], dtype=np.int32), (PartColumns("t", {kind: ("c",)}),))
    formats = [FMT_DECIMAL, FMT_INTEGER, FMT_BOOLEAN, FMT_STRING, FMT_UNKNOWN]
    n = len(formats)
    batch = NarrowBatch(np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int32), np.array(formats, dtype=np.int8),
                        np.full(n, 3.0), np.full(n, 3, dtype=np.int64), np.ones(n, dtype=bool),
                        np.zeros(n, dtype=np.int8), may_repeat=False)
    result = pivot(plan, batch)
    accepted = {FORMAT_NAMES[f] for f, t in zip(formats, batch.ts.tolist(), strict=True) if t not in result.rejects.ts}
    assert accepted == set(FITS[pg_type])
    assert sum(part.cells for part in result.parts) == len(accepted)  # each accepted row is a cell, none dropped


def test_the_full_rows_encoder_writes_the_bytes_of_the_general_one():
    """Rows whose fixed-width cells all have a value, with several text columns that miss cells here
    and there (NULLs), empty texts and multi-byte ones: the per-row encoder gives the same bytes as
    the dense general one."""
    rng = np.random.default_rng(3)
    n, r0, r1 = 300, 100, 260
    ts = np.arange(n, dtype=">i8").view(np.uint8).reshape(n, 1, 8)
    doubles = rng.normal(size=(n, 5)).astype(">f8").view(np.uint8).reshape(n, 5, 8)
    fields = [(ts, np.ones((n, 1), dtype=bool), 8), (doubles, np.ones((n, 5), dtype=bool), 8)]
    words = [b"", b"a", "\u00e9t\u00e9".encode(), b"x" * 40]
    texts = [{r: words[int(rng.integers(len(words)))] for r in range(r0, r1) if rng.random() < share}
             for share in (0.9, 0.3, 0.0, 1.0)]
    assert _encode_full(fields, texts, r0, r1) == _encode_dense(fields, texts, r0, r1)
