"""The test oracle: compare the wide tables with the pivot of the narrow source in SQL, cell by cell.

Written independently of the product's validator: expected cells come straight from the narrow
rows (the value named by value_format, rendered as the column's type renders it; values that
cannot fit their column are expected to be absent, and counted: a test says how many rejects its
data holds), actual cells from unpivoting every wide table, whose live column types must be the
recorded ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from narrow2wide.db.database import qi, qualified

EXPECTED_VALUE = """CASE m.data_type
  WHEN 'double precision' THEN CASE s.value_format WHEN 'Decimal' THEN s.double_v::text
                                                   WHEN 'Integer' THEN s.long_v::float8::text END
  WHEN 'bigint' THEN CASE s.value_format WHEN 'Integer' THEN s.long_v::text
                        WHEN 'Decimal' THEN CASE WHEN s.double_v = trunc(s.double_v) AND abs(s.double_v) < 9e18
                                                 THEN s.double_v::bigint::text END END
  WHEN 'boolean' THEN CASE s.value_format WHEN 'Boolean' THEN s.bool_v::text END
  ELSE CASE s.value_format WHEN 'String' THEN s.str_v WHEN 'Decimal' THEN s.double_v::text
                           WHEN 'Integer' THEN s.long_v::text WHEN 'Boolean' THEN s.bool_v::text END
END"""


@dataclass(frozen=True)
class CellDiff:
    """How the wide tables differ from the source."""

    expected: int
    actual: int
    missing: int  # expected cells absent or different in the wide tables
    extra: int  # wide cells the source does not explain
    unmapped_rows: int  # narrow rows whose channel has no column
    excused_rows: int = 0  # narrow rows no cell is expected for (no value where their format says, or one that
    #                        does not fit the column): the rejects a test must expect by number
    wrong_types: tuple[str, ...] = ()  # wide columns whose live type is not the one recorded for them

    @property
    def exact(self) -> bool:
        """Every cell of a non-empty comparison matches, nothing is unmapped, and no row was excused."""
        return self.exact_with_rejects(0)

    def exact_with_rejects(self, rejected: int) -> bool:
        """:attr:`exact`, where exactly ``rejected`` narrow rows have no cell (the test's own count of its bad
        rows, never the product's)."""
        return (self.expected > 0 and self.expected == self.actual and self.missing == 0 and self.extra == 0
                and self.unmapped_rows == 0 and self.excused_rows == rejected and not self.wrong_types)


def compare(engine, settings, ship_id: str, start=None, end=None) -> CellDiff:
    """Cell-by-cell comparison of one ship in [start, end) (everything when not given)."""
    src = qualified(settings.source_schema, settings.source_table)
    meta = qualified(settings.target_schema, "migrator_columns")
    lo = "AND s.created_time >= :lo" if start is not None else ""
    hi = "AND s.created_time < :hi" if end is not None else ""
    params = {"ship": ship_id, "lo": start, "hi": end}
    with engine.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE exp_cells (ch text, t text, v text) ON COMMIT DROP"))
        conn.execute(text("CREATE TEMP TABLE act_cells (ch text, t text, v text) ON COMMIT DROP"))
        conn.execute(text(
            f"""INSERT INTO exp_cells SELECT s.data_channel_id, s.created_time::text, {EXPECTED_VALUE}
                FROM {src} s JOIN {meta} m ON m.ship_id = s.ship_id AND m.channel_id = s.data_channel_id
                WHERE s.ship_id = :ship {lo} {hi}"""), params)
        excused = conn.execute(text("DELETE FROM exp_cells WHERE v IS NULL")).rowcount
        wrong_types = conn.execute(text(
            f"""SELECT m.table_name || '.' || m.column_name FROM {meta} m
                LEFT JOIN information_schema.columns c ON c.table_schema = :schema AND c.table_name = m.table_name
                     AND c.column_name = m.column_name
                WHERE m.ship_id = :ship AND c.data_type IS DISTINCT FROM m.data_type ORDER BY 1"""),
            {"schema": settings.target_schema, "ship": ship_id}).scalars().all()
        unmapped = conn.execute(text(
            f"""SELECT count(*) FROM {src} s WHERE s.ship_id = :ship {lo} {hi}
                AND NOT EXISTS (SELECT 1 FROM {meta} m WHERE m.ship_id = s.ship_id
                                AND m.channel_id = s.data_channel_id)"""), params).scalar_one()
        cols = conn.execute(text(f"SELECT table_name, channel_id, column_name FROM {meta} WHERE ship_id = :ship"),
                            {"ship": ship_id}).all()
        by_table: dict[str, list[tuple[str, str]]] = {}
        for table, ch, col in cols:
            by_table.setdefault(table, []).append((ch, col))
        wlo = "AND w.created_time >= :lo" if start is not None else ""
        whi = "AND w.created_time < :hi" if end is not None else ""
        for table, chans in by_table.items():
            for i in range(0, len(chans), 200):
                batch = chans[i:i + 200]
                values = ", ".join(f"(:c{j}, w.{qi(col)}::text)" for j, (_, col) in enumerate(batch))
                p = dict(params, **{f"c{j}": ch for j, (ch, _) in enumerate(batch)})
                conn.execute(text(
                    f"""INSERT INTO act_cells SELECT v.ch, w.created_time::text, v.val
                        FROM {qualified(settings.target_schema, table)} w
                        CROSS JOIN LATERAL (VALUES {values}) AS v(ch, val)
                        WHERE v.val IS NOT NULL {wlo} {whi}"""), p)
        expected = conn.execute(text("SELECT count(*) FROM exp_cells")).scalar_one()
        actual = conn.execute(text("SELECT count(*) FROM act_cells")).scalar_one()
        missing = conn.execute(text(
            "SELECT count(*) FROM (SELECT * FROM exp_cells EXCEPT ALL SELECT * FROM act_cells) x")).scalar_one()
        extra = conn.execute(text(
            "SELECT count(*) FROM (SELECT * FROM act_cells EXCEPT ALL SELECT * FROM exp_cells) x")).scalar_one()
    return CellDiff(int(expected), int(actual), int(missing), int(extra), int(unmapped), int(excused),
                    tuple(wrong_types))


def wide_snapshot(engine, settings, ship_id: str) -> dict[str, str]:
    """An md5 of each wide table's full content (ordered), to prove re-runs change nothing."""
    meta = qualified(settings.target_schema, "migrator_tables")
    out = {}
    with engine.connect() as conn:
        tables = conn.execute(text(f"SELECT table_name FROM {meta} WHERE ship_id = :s"), {"s": ship_id}).scalars()
        for t in tables:
            q = qualified(settings.target_schema, t)
            out[t] = conn.execute(text(
                f"SELECT md5(coalesce(string_agg(w::text, '|' ORDER BY created_time), '')) FROM {q} w")).scalar_one()
    return out
