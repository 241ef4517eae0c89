"""Demo seeding: the production DDL, the row counts and the value types, checked in SQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text

from narrow2wide.demo.demo_data import DemoSpec, demo_channels, seed_demo


def test_demo_channels_look_real_and_cover_every_format():
    chans = demo_channels(1200)
    ids = [c.channel_id for c in chans]
    assert len(set(ids)) == 1200
    assert all(i.startswith("/hs4sd_v1/") or i.startswith("/HS4SD_V1/") or "/" in i for i in ids)
    assert {c.value_format for c in demo_channels(10)} == {"Decimal", "Integer", "Boolean", "String"}
    assert any(any(ch.isupper() for ch in i) for i in ids)
    assert any("//" in i for i in ids)


def test_seed_creates_the_production_table_with_exact_counts(runtime):
    end = datetime(2024, 10, 2, 0, 0)
    spec = DemoSpec(ships=2, channels=20, days=0.25, offline_hours=1, late_channel_share=0.1, end=end)
    result = seed_demo(runtime.dbs.source, runtime.source, spec)
    with runtime.dbs.source.connect() as conn:
        cols = dict(conn.execute(text(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = :s "
            "AND table_name = 'tbl_data_timeseries'"), {"s": runtime.settings.source_schema}).all())
        assert cols == {
            "ship_id": "text", "data_channel_id": "text", "created_time": "timestamp without time zone",
            "server_created_time": "timestamp without time zone", "bool_v": "boolean", "str_v": "text",
            "long_v": "bigint", "double_v": "double precision", "value_format": "character varying",
        }
        pk = conn.execute(text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
            "AND contype = 'p'"), {"t": runtime.source.sql}).scalar_one()
        assert pk == "PRIMARY KEY (ship_id, data_channel_id, created_time)"
        total = conn.execute(text(f"SELECT count(*) FROM {runtime.source.sql}")).scalar_one()
        per_ship = dict(conn.execute(text(
            f"SELECT ship_id, count(*) FROM {runtime.source.sql} GROUP BY 1")).all())
        # every value sits in the column its value_format names, and only there
        misplaced = conn.execute(text(f"""SELECT count(*) FROM {runtime.source.sql} WHERE NOT (
            (value_format = 'Decimal' AND double_v IS NOT NULL AND long_v IS NULL AND bool_v IS NULL AND str_v IS NULL)
         OR (value_format = 'Integer' AND long_v IS NOT NULL AND double_v IS NULL AND bool_v IS NULL AND str_v IS NULL)
         OR (value_format = 'Boolean' AND bool_v IS NOT NULL AND double_v IS NULL AND long_v IS NULL AND str_v IS NULL)
         OR (value_format = 'String' AND str_v IS NOT NULL AND double_v IS NULL AND long_v IS NULL AND bool_v IS NULL))
        """)).scalar_one()
        span = conn.execute(text(f"SELECT min(created_time), max(created_time) FROM {runtime.source.sql}")).one()
    samples = 6 * 3600 // 15  # 1440 per channel in 0.25 day
    late = 2  # 10 % of 20 channels start half-way
    full_ship = (20 - late) * samples + late * samples // 2
    assert per_ship["IMO9999993"] == full_ship
    assert per_ship["IMO9999994"] == full_ship - (20 - late) * 240 - late * 240  # one hour offline, after half-way
    assert total == result.rows == sum(per_ship.values())
    assert misplaced == 0
    assert span == (datetime(2024, 10, 1, 18, 0), datetime(2024, 10, 1, 23, 59, 45))


def test_seeding_twice_adds_nothing(runtime):
    spec = DemoSpec(ships=1, channels=5, days=0.01, end=datetime(2024, 1, 1))
    first = seed_demo(runtime.dbs.source, runtime.source, spec)
    second = seed_demo(runtime.dbs.source, runtime.source, spec)
    assert first.rows > 0 and second.rows == 0
