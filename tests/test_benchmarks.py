"""The benchmark commands a user runs from a fresh clone, each at a tiny size, on a real server.

Nothing here is timed (the scripts measure; tests only check): each command must run to its end,
migrate what it seeded (the oracle, on the schemas a ``--keep`` run leaves, dropped afterwards),
validate it, and report figures that agree with one another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from narrow2wide.db.database import qi
from tests.cli_procs import clean_environ
from tests.wide_check import compare

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, args: list[str], pg_url: str, tmp_path: Path) -> tuple[dict, str]:
    """Run ``bench/<script>`` with ``args`` against ``pg_url``; its JSON report and its stdout."""
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--database-url", pg_url, *args,
                           "--json-out", str(out)], capture_output=True, text=True, timeout=600,
                          env=clean_environ(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@contextmanager
def dropped_after(engine, tag: str) -> Iterator[None]:
    """Drop every ``bench_`` schema whose name holds ``tag`` (what a ``--keep`` run left) when the block ends."""
    try:
        yield
    finally:
        with engine.begin() as conn:
            names = conn.execute(text("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'bench_') "
                                      "AND strpos(nspname, :t) > 0"), {"t": tag}).scalars().all()
            for name in names:
                conn.execute(text(f"DROP SCHEMA {qi(name)} CASCADE"))


def test_the_fleet_benchmark_migrates_and_validates_every_case(pg_url, engine, settings, tmp_path):
    report, stdout = run_bench("fleet.py", ["--quick", "--skip-realtime", "--skip-freshness", "--raw-passes", "2",
                                            "--keep"], pg_url, tmp_path)
    prefix = f"bench_fleet_{report['params']['tag']}_"
    with dropped_after(engine, report["params"]["tag"]):
        cases = report["backfill"]
        assert [(c["kind"], c["source_ships"]) for c in cases] == [("alone", 1), ("fleet", 2), ("fleet", 4),
                                                                   ("long", 1)]
        for case in cases:  # the oracle on what the benchmark's last pass left in its kept schemas
            pair = prefix + ("blong" if case["kind"] == "long" else f"b{case['source_ships']}")
            kept = settings.with_overrides(source_schema=f"{pair}_src", target_schema=f"{pair}_tgt")
            diff = compare(engine, kept, case["ship_id"])
            assert diff.exact and diff.expected == case["ship_rows"], (case["name"], diff)
            _check_fleet_case(case)
    assert "backfill rate: ship in 2 / alone" in stdout


def _check_fleet_case(case: dict) -> None:
    """What one backfill case of bench/fleet.py reports must agree with itself."""
    assert case["validate_ok"], case["validate_message"]
    assert case["rows_read"] == case["ship_rows"] == case["channels"] * case["hours"] * 240  # a tick per 15 s
    assert case["failed_chunks"] == 0
    assert len(case["backfill_passes"]) == len(case["raw_copy_passes"]) == 2  # the passes went round
    assert case["backfill_seconds"] == min(case["backfill_passes"])


def test_the_throughput_benchmark_migrates_what_it_read_raw(pg_url, engine, settings, tmp_path):
    report, stdout = run_bench("run.py", ["--channels", "20", "--days", "0.05", "--skip-peers", "--skip-realtime",
                                          "--raw-passes", "2", "--process-passes", "1", "--pivot-hours", "0.5",
                                          "--keep"], pg_url, tmp_path)
    params = report["params"]
    with dropped_after(engine, params["source_schema"].removeprefix("bench_src_")):
        for target in (params["target_schema"], params["tool_process_schema"]):  # in-process, then main.py's
            kept = settings.with_overrides(source_schema=params["source_schema"], target_schema=target)
            for ship in params["ship_ids"]:
                diff = compare(engine, kept, ship)
                assert diff.exact and diff.expected == 20 * 288, (target, ship, diff)
    rows = {m["name"].split(" (")[0]: m["rows"] for m in report["measures"]}
    assert rows["raw read"] == rows["tool backfill"] == rows["tool process"] == 20 * 288  # 1.2 h of 20 channels
    process = report["tool_process"]
    assert process["returncode"] == 0 and process["failed_chunks"] == 0 and process["wide_tables_checked"] >= 1
    assert process["rows_read"] == 20 * 288
    assert "tool process / raw read" in stdout
