"""Pure rules of wide_layout: types, column names, table names, row budget, placement."""

from __future__ import annotations

import pytest

from narrow2wide.common.model import (
    MAX_COLUMNS,
    MAX_IDENTIFIER_BYTES,
    MAX_ROW_BYTES,
    PlannedPart,
    assign_columns,
    fits,
    place_channels,
    resolve_type,
    row_bytes,
    table_name_for,
)


@pytest.mark.parametrize(
    ("formats", "pg_type", "conflict", "unknown"),
    [
        (["Decimal"], "double precision", None, ()),
        (["Integer"], "bigint", None, ()),
        (["Boolean"], "boolean", None, ()),
        (["String"], "text", None, ()),
        (["Integer", "Decimal"], "double precision", "formats Decimal+Integer -> double precision", ()),
        (["Decimal", "String"], "text", "formats Decimal+String -> text", ()),
        (["Boolean", "String"], "text", "formats Boolean+String -> text", ()),
        (["Boolean", "Integer"], "text", "formats Boolean+Integer -> text", ()),
        (["Float"], "text", None, ("Float",)),
        ([None], "text", None, ("NULL",)),
        (["Decimal", "Float", None], "double precision", None, ("Float", "NULL")),
    ],
)
def test_resolve_type(formats, pg_type, conflict, unknown):
    decision = resolve_type(formats)
    assert (decision.pg_type, decision.conflict, decision.unknown_formats) == (pg_type, conflict, unknown)


def test_assign_columns_distinct_bounded_and_stable():
    ids = [
        "p" * 63 + "A" * 17,
        "p" * 63 + "B" * 17,
        "p" * 63,
        'x"; DROP TABLE foo; --',
        "엔진 온도",
        "엔진 압력",
        "created_time",
        "Engine Temp",
        "engine-temp",
        "",
    ]
    for style in ("id", "snake"):
        mapping = assign_columns(ids, style)
        names = list(mapping.values())
        assert sorted(mapping) == sorted(ids)
        assert len(set(names)) == len(ids), (style, mapping)
        assert "created_time" not in names
        assert all(0 < len(n.encode("utf-8")) <= MAX_IDENTIFIER_BYTES for n in names), mapping
        # same input, same answer; input order does not matter
        assert assign_columns(list(reversed(ids)), style) == mapping
    ident = assign_columns(ids, "id")
    assert ident["p" * 63] == "p" * 63
    assert ident['x"; DROP TABLE foo; --'] == 'x"; DROP TABLE foo; --'
    assert ident["엔진 온도"] == "엔진 온도"


def test_assign_columns_keeps_existing_names_and_avoids_them():
    existing = {"a": "b", "old": "kept_name"}
    mapping = assign_columns(["a", "b", "old", "kept_name", "new"], "id", existing)
    assert mapping["a"] == "b" and mapping["old"] == "kept_name"
    assert mapping["new"] == "new"
    assert mapping["b"] != "b" and mapping["kept_name"] != "kept_name"
    assert len(set(mapping.values())) == 5


def test_table_name_for_short_ids():
    assert table_name_for("IMO9999993", None) == "tbl_data_timeseries_imo9999993"
    assert table_name_for("IMO9999993", 2) == "tbl_data_timeseries_imo9999993_2"


@pytest.mark.parametrize("length", [42, 50])
def test_table_name_for_long_ship_ids_fit_63_bytes_and_differ(length):
    ship = "S" * length
    names = [table_name_for(ship, p) for p in (None, 1, 2)]
    assert all(len(n.encode("utf-8")) <= MAX_IDENTIFIER_BYTES for n in names), names
    # PostgreSQL truncates to 63 bytes: the parts must still differ after that
    assert len({n.encode("utf-8")[:MAX_IDENTIFIER_BYTES] for n in names}) == 3


def test_row_budget_boundaries():
    # 1,000 doubles + created_time is exactly MaxHeapTupleSize: 152-byte header + 1,001 * 8 (PostgreSQL's
    # figures written out here, not the product's constants)
    assert MAX_ROW_BYTES == 8160 and MAX_COLUMNS == 1600
    assert row_bytes(["double precision"] * 1000) == 8160
    assert fits(["double precision"] * 1000)
    assert not fits(["double precision"] * 1001)
    assert fits(["boolean"] * 1599)
    assert not fits(["boolean"] * 1600)


def test_place_channels_never_moves_existing_and_respects_limits():
    first = place_channels([], {f"d{i:04d}": "double precision" for i in range(1500)})
    assert [len(p.channels) for p in first] == [1000, 500]
    types = {c: "double precision" for p in first for c in p.channels}
    second = place_channels(first, {"zz_new": "text", "aa_new": "boolean"}, None, types=types)
    assert second[0] == first[0]
    assert second[1].channels[:500] == first[1].channels
    assert set(second[1].channels[500:]) == {"zz_new", "aa_new"}
    all_types = {**types, "zz_new": "text", "aa_new": "boolean"}
    for part in second:
        assert fits([all_types[c] for c in part.channels])


def test_place_channels_routing_and_overfull_route():
    routed = place_channels([], {"a": "bigint", "b": "bigint", "c": "bigint"}, {"a": 3, "b": 1})
    assert {p.number: p.channels for p in routed} == {1: ("b",), 3: ("a", "c")}
    with pytest.raises(ValueError, match="routing part 1"):
        place_channels([], {f"d{i}": "double precision" for i in range(1001)}, {f"d{i}": 1 for i in range(1001)})
    kept = place_channels([PlannedPart(1, ("x",))], {"y": "text"}, {"y": 1}, types={"x": "text"})
    assert kept == [PlannedPart(1, ("x", "y"))]
