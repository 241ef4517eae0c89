"""Peers of the tool for ``bench/run.py``: what a competent Python user would write with the usual libraries.

Run one peer in its own process (so its peak RSS is its own)::

    python bench/peers.py NAME --args-file ARGS.json

``ARGS.json`` (written by ``bench/run.py``) names the database URL (libpq form), the source
table, a scratch target schema, and per ship the window ``[start, end)`` and the wide tables to
write: the tool's own split of the ship's channels into parts (``table`` and ``[channel_id,
column]`` pairs). A 1,000-channel row of the production shape (940 doubles, 19 bigints, 15 texts,
26 booleans) is about 8.2 kB, above PostgreSQL's 8,160-byte row limit, so one 1,000-column table
cannot take a full row; every peer writes the same parts the tool writes, with the same names.

Every peer does, per ship:

1. **read** the ship's rows of the window, one query, the value in its typed column::

       SELECT created_time, data_channel_id, value_format, double_v, long_v, bool_v, str_v
       FROM source WHERE ship_id = '...' AND created_time >= '...' AND created_time < '...'

2. **pivot** each value_format on its own (its rows, its value column: float8, int8, bool, text)
   to one column per channel, then join the four pivots on created_time (full outer join), so
   each column keeps its type;
3. **write** each part (created_time plus the part's channels, renamed to the tool's column names)
   with ADBC bulk ingest into a new table (``adbc_ingest(..., mode="create")``) and commit.

The peers:

* ``connectorx+polars``: ``connectorx.read_sql(..., return_type="polars")``, polars ``pivot`` and
  ``join``;
* ``connectorx+duckdb``: ``connectorx.read_sql(..., return_type="arrow")``, DuckDB ``PIVOT ... ON
  data_channel_id USING first(value) GROUP BY created_time`` per format, joined ``FULL JOIN ...
  USING (created_time)``, fetched as arrow;
* ``adbc+pyarrow``: ADBC read (``cursor.execute``; ``fetch_arrow_table``), pyarrow's
  ``pivot_wider`` hash aggregate per format, ``Table.join``;
* ``adbc+polars``: ADBC read, then the polars pivot of the first peer.

Stdout gets one JSON object: ``ok``, the stage seconds (``read``, ``pivot``, ``write``, and
``seconds`` for all three), ``narrow_rows`` read, the tables written (``rows``, ``columns``) and
``ru_maxrss_kb`` (this process's peak RSS). A missing package gives ``{"ok": false, "missing":
MODULE}`` and exit code 3; any other failure ``{"ok": false, "error": ...}`` and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

# value_format -> the source column that holds its value (the same as narrow_source.VALUE_COLUMN)
VALUE_COLUMNS = {"Decimal": "double_v", "Integer": "long_v", "Boolean": "bool_v", "String": "str_v"}
TIME = "created_time"
MISSING_EXIT = 3


@dataclass
class Part:
    """One wide table to write: its name and its ``(channel_id, column)`` pairs, in column order."""

    table: str
    columns: list[tuple[str, str]]


@dataclass
class ShipJob:
    """One ship's window and the tables its rows go to."""

    ship_id: str
    start: str
    end: str
    parts: list[Part]


@dataclass
class PeerArgs:
    """What ``bench/run.py`` hands a peer."""

    url: str
    source_schema: str
    source_table: str
    target_schema: str
    ships: list[ShipJob]

    @classmethod
    def load(cls, path: Path) -> PeerArgs:
        """Read the arguments file."""
        data = json.loads(path.read_text(encoding="utf-8"))
        ships = [ShipJob(s["ship_id"], s["start"], s["end"],
                         [Part(p["table"], [(c[0], c[1]) for c in p["columns"]]) for p in s["parts"]])
                 for s in data["ships"]]
        return cls(data["url"], data["source_schema"], data["source_table"], data["target_schema"], ships)


@dataclass
class PeerResult:
    """What one peer did: stage seconds, rows read, tables written."""

    read: float = 0.0
    pivot: float = 0.0
    write: float = 0.0
    narrow_rows: int = 0
    tables: list[dict[str, Any]] = field(default_factory=list)


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a single-quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def narrow_query(args: PeerArgs, ship: ShipJob) -> str:
    """The read of one ship's window: time, channel, format and the four typed value columns."""
    src = f"{quote_ident(args.source_schema)}.{quote_ident(args.source_table)}"
    return (f"SELECT created_time, data_channel_id, value_format, double_v, long_v, bool_v, str_v FROM {src} "
            f"WHERE ship_id = {quote_literal(ship.ship_id)} AND created_time >= {quote_literal(ship.start)} "
            f"AND created_time < {quote_literal(ship.end)}")


# ----------------------------------------------------------------------------------------------
# reads: a query -> an arrow table or a polars frame


def read_connectorx(url: str, query: str, return_type: str) -> Any:
    """``connectorx.read_sql`` of ``query`` as ``return_type`` (``arrow`` or ``polars``)."""
    import connectorx

    return connectorx.read_sql(url, query, return_type=return_type)


def read_adbc(url: str, query: str) -> Any:
    """The ADBC PostgreSQL driver's read of ``query`` as an arrow table."""
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetch_arrow_table()


# ----------------------------------------------------------------------------------------------
# pivots: the narrow rows -> one arrow table per part, columns named as the tool names them


def _part_columns(part: Part, present: set[str]) -> list[tuple[str, str]]:
    """The part's (channel, column) pairs whose channel the pivot produced (a missing one fails the check)."""
    return [(ch, col) for ch, col in part.columns if ch in present]


def pivot_polars(narrow: Any, parts: list[Part]) -> list[Any]:
    """Polars: per format ``filter`` + ``pivot(on=channel, index=time, values=typed column)``, full joins."""
    import polars as pl

    df = narrow if isinstance(narrow, pl.DataFrame) else pl.from_arrow(narrow)
    wides = []
    for fmt, column in VALUE_COLUMNS.items():
        rows = df.filter(pl.col("value_format") == fmt)
        if rows.height:
            wides.append(rows.pivot(on="data_channel_id", index=TIME, values=column, aggregate_function="first"))
    wide = reduce(lambda a, b: a.join(b, on=TIME, how="full", coalesce=True), wides)
    present = set(wide.columns)
    return [wide.select(pl.col(TIME), *[pl.col(ch).alias(col) for ch, col in _part_columns(p, present)]).to_arrow()
            for p in parts]


def pivot_duckdb(narrow: Any, parts: list[Part]) -> list[Any]:
    """DuckDB: per format ``PIVOT ... ON data_channel_id USING first(value) GROUP BY created_time``, joined."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("narrow", narrow)
        formats = [f for (f,) in con.execute("SELECT DISTINCT value_format FROM narrow").fetchall()
                   if f in VALUE_COLUMNS]
        pivots = [f"(PIVOT (SELECT {TIME}, data_channel_id, {VALUE_COLUMNS[f]} FROM narrow "
                  f"WHERE value_format = {quote_literal(f)}) ON data_channel_id USING first({VALUE_COLUMNS[f]}) "
                  f"GROUP BY {TIME}) AS p{i}" for i, f in enumerate(formats)]
        con.execute("CREATE TEMP TABLE wide AS SELECT * FROM " + " FULL JOIN ".join(
            p if i == 0 else f"{p} USING ({TIME})" for i, p in enumerate(pivots)))
        present = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name = 'wide'").fetchall()}
        out = []
        for part in parts:
            cols = ", ".join(f"{quote_ident(ch)} AS {quote_ident(col)}" for ch, col in _part_columns(part, present))
            out.append(con.sql(f"SELECT {TIME}, {cols} FROM wide").to_arrow_table())
        return out
    finally:
        con.close()


def pivot_pyarrow(narrow: Any, parts: list[Part]) -> list[Any]:
    """Pyarrow: per format ``group_by(created_time)`` with the ``pivot_wider`` aggregate, ``Table.join``."""
    import pyarrow.compute as pc

    wides = []
    for fmt, column in VALUE_COLUMNS.items():
        rows = narrow.filter(pc.equal(narrow["value_format"], fmt))
        if not rows.num_rows:
            continue
        keys = sorted(pc.unique(rows["data_channel_id"]).to_pylist())
        grouped = rows.group_by(TIME).aggregate(
            [(["data_channel_id", column], "pivot_wider", pc.PivotWiderOptions(key_names=keys))])
        flat = grouped.flatten()  # the struct's fields become "<aggregate>.<channel>"
        wides.append(flat.rename_columns([TIME if n == TIME else n.split(".", 1)[1] for n in flat.column_names]))
    wide = reduce(lambda a, b: a.join(b, keys=TIME, join_type="full outer"), wides)
    present = set(wide.column_names)
    out = []
    for part in parts:
        pairs = _part_columns(part, present)
        out.append(wide.select([TIME] + [ch for ch, _ in pairs]).rename_columns([TIME] + [col for _, col in pairs]))
    return out


# ----------------------------------------------------------------------------------------------
# the write, and the peers


def ingest(url: str, schema: str, tables: list[tuple[str, Any]]) -> None:
    """ADBC bulk ingest of each ``(name, arrow table)`` into a new table of ``schema``, one commit."""
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(url) as conn:
        with conn.cursor() as cur:
            for name, table in tables:
                cur.adbc_ingest(name, table, mode="create", db_schema_name=schema)
        conn.commit()


Reader = Callable[[str, str], Any]
Pivot = Callable[[Any, list[Part]], list[Any]]

PEERS: dict[str, tuple[tuple[str, ...], Reader, Pivot]] = {
    "connectorx+polars": (("connectorx", "polars", "pyarrow", "adbc_driver_postgresql"),
                          lambda url, q: read_connectorx(url, q, "polars"), pivot_polars),
    "connectorx+duckdb": (("connectorx", "duckdb", "pyarrow", "adbc_driver_postgresql"),
                          lambda url, q: read_connectorx(url, q, "arrow"), pivot_duckdb),
    "adbc+pyarrow": (("adbc_driver_postgresql", "pyarrow"), read_adbc, pivot_pyarrow),
    "adbc+polars": (("adbc_driver_postgresql", "polars", "pyarrow"), read_adbc, pivot_polars),
}


def run_peer(name: str, args: PeerArgs) -> PeerResult:
    """Read, pivot and write every ship of ``args`` with peer ``name``; the stages timed separately."""
    _, reader, pivot = PEERS[name]
    result = PeerResult()
    for ship in args.ships:
        t0 = time.perf_counter()
        narrow = reader(args.url, narrow_query(args, ship))
        t1 = time.perf_counter()
        wides = pivot(narrow, ship.parts)
        t2 = time.perf_counter()
        ingest(args.url, args.target_schema, [(p.table, w) for p, w in zip(ship.parts, wides, strict=True)])
        t3 = time.perf_counter()
        result.read += t1 - t0
        result.pivot += t2 - t1
        result.write += t3 - t2
        result.narrow_rows += len(narrow)
        result.tables += [{"ship_id": ship.ship_id, "table": p.table, "rows": w.num_rows, "columns": w.num_columns}
                          for p, w in zip(ship.parts, wides, strict=True)]
        del narrow, wides
    return result


def missing_module(name: str) -> str | None:
    """The first module peer ``name`` needs that cannot be imported, or ``None``."""
    import importlib

    for module in PEERS[name][0]:
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one peer and print its result as one JSON object on stdout."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(PEERS))
    p.add_argument("--args-file", type=Path, required=True)
    opts = p.parse_args(argv)
    missing = missing_module(opts.name)  # imported before the clock starts, as a user's script would be
    if missing is not None:
        print(json.dumps({"ok": False, "missing": missing}))
        return MISSING_EXIT
    try:
        res = run_peer(opts.name, PeerArgs.load(opts.args_file))
    except Exception as exc:  # noqa: BLE001 - reported to the caller as a failed peer
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 1
    out = {"ok": True, "seconds": round(res.read + res.pivot + res.write, 4), "read": round(res.read, 4),
           "pivot": round(res.pivot, 4), "write": round(res.write, 4), "narrow_rows": res.narrow_rows,
           "tables": res.tables, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
