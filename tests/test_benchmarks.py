"""The benchmark commands a user runs from a fresh clone, each at a tiny size, on a real server.

Nothing here is timed (the scripts measure; tests only check): each command must run to its end,
migrate what it seeded, validate it, and report figures that agree with one another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli_procs import clean_environ

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, args: list[str], pg_url: str, tmp_path: Path) -> tuple[dict, str]:
    """Run ``bench/<script>`` with ``args`` against ``pg_url``; its JSON report and its stdout."""
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--database-url", pg_url, *args,
                           "--json-out", str(out)], capture_output=True, text=True, timeout=600,
                          env=clean_environ(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_the_fleet_benchmark_migrates_and_validates_every_case(pg_url, tmp_path):
    report, stdout = run_bench("fleet.py", ["--quick", "--skip-realtime", "--skip-freshness", "--raw-passes", "2"],
                               pg_url, tmp_path)
    cases = report["backfill"]
    assert [(c["kind"], c["source_ships"]) for c in cases] == [("alone", 1), ("fleet", 2), ("fleet", 4), ("long", 1)]
    for case in cases:
        assert case["validate_ok"], case["validate_message"]
        assert case["rows_read"] == case["ship_rows"] == case["channels"] * case["hours"] * 240  # a tick per 15 s
        assert case["failed_chunks"] == 0
        assert len(case["backfill_passes"]) == len(case["raw_copy_passes"]) == 2  # the passes went round
        assert case["backfill_seconds"] == min(case["backfill_passes"])
    assert "backfill rate: ship in 2 / alone" in stdout


def test_the_throughput_benchmark_migrates_what_it_read_raw(pg_url, tmp_path):
    report, stdout = run_bench("run.py", ["--channels", "20", "--days", "0.05", "--skip-peers", "--skip-realtime",
                                          "--raw-passes", "2", "--process-passes", "1", "--pivot-hours", "0.5"],
                               pg_url, tmp_path)
    rows = {m["name"].split(" (")[0]: m["rows"] for m in report["measures"]}
    assert rows["raw read"] == rows["tool backfill"] == rows["tool process"] == 20 * 288  # 1.2 h of 20 channels
    process = report["tool_process"]
    assert process["returncode"] == 0 and process["failed_chunks"] == 0 and process["wide_tables_checked"] >= 1
    assert process["rows_read"] == 20 * 288
    assert "tool process / raw read" in stdout
