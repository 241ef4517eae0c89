"""Two hosts run the same backfill at the same time against one target: no chunk is done twice.

Two invocations of the real CLI, as on two machines: separate processes, separate STATE_DIRs (so
separate cutoff stores), the same ``--cutoff-time``, each with ``--workers 2``, started together. The
only thing they share is the database, and with it the chunk ledger. A test-side audit trigger on the
ledger records every write of a chunk as done (including a done chunk written again), so a chunk done
twice cannot go unseen; a slow claim makes the two invocations really overlap. The oracle then checks
every cell of every ship.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from cutoff_store import CutoffStore
from narrow2wide.checks.validator import validate
from narrow2wide.db.database import qualified
from narrow2wide.demo.demo_data import DemoSpec, demo_channels, insert_rows
from narrow2wide.store.chunk_ledger import ChunkLedger
from tests.wide_check import compare

SHIPS = ("IMO9301234", "IMO9876543", "IMO9512087")
CUTOFF = datetime(2024, 10, 2)
HOURS = 8  # 3 ships x 8 one-hour chunks
CHANNELS = 12
CLAIM_SLEEP = 0.3  # seconds each claim of a chunk takes (a trigger): the two hosts overlap


def _children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.add(int(status.parent.name))
    return out


def seed_fleet(runtime) -> int:
    """The source with HOURS of 15 s ticks before CUTOFF, written in 15-minute slices in time order."""
    spec = DemoSpec(interval_seconds=15, late_channel_share=0.0, offline_hours=0.0)
    channels = demo_channels(CHANNELS)
    with runtime.dbs.source.begin() as conn:
        runtime.source.create(conn)
        a, rows = CUTOFF - timedelta(hours=HOURS), 0
        while a < CUTOFF:
            rows += insert_rows(conn, runtime.source, SHIPS, channels, a, a + timedelta(minutes=15), spec)
            a += timedelta(minutes=15)
        conn.execute(text(f"ANALYZE {runtime.source.sql}"))
    return rows


def install_ledger_audit(runtime) -> str:
    """Create the ledger now, with an audit of every claim and every done write, and a slow claim."""
    tgt = runtime.settings.target_schema
    ledger = ChunkLedger(tgt)
    audit = qualified(tgt, "chunk_audit")
    with runtime.dbs.target.begin() as conn:
        ledger.ensure(conn, "timestamp without time zone")
        conn.execute(text(f"""CREATE TABLE {audit} (chunk_id bigint, old_status text, status text, worker text,
                                  backend integer, at timestamptz)"""))
        conn.execute(text(f"""CREATE FUNCTION {qualified(tgt, 'chunk_audit_fn')}() RETURNS trigger
            LANGUAGE plpgsql AS $$ BEGIN
                INSERT INTO {audit} VALUES (NEW.id, OLD.status, NEW.status, NEW.worker, pg_backend_pid(),
                                            clock_timestamp());
                RETURN NULL; END $$"""))
        conn.execute(text(f"""CREATE TRIGGER audit AFTER UPDATE ON {ledger.table} FOR EACH ROW
            WHEN (NEW.status IN ('running', 'done')) EXECUTE FUNCTION {qualified(tgt, 'chunk_audit_fn')}()"""))
        conn.execute(text(f"""CREATE FUNCTION {qualified(tgt, 'slow_claim_fn')}() RETURNS trigger
            LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep({CLAIM_SLEEP}); RETURN NEW; END $$"""))
        conn.execute(text(f"""CREATE TRIGGER slow_claim BEFORE UPDATE ON {ledger.table} FOR EACH ROW
            WHEN (NEW.status = 'running') EXECUTE FUNCTION {qualified(tgt, 'slow_claim_fn')}()"""))
    return audit


@pytest.mark.slow
def test_two_hosts_share_one_backfill_and_no_chunk_is_done_twice(runtime, procs, tmp_path):
    rows = seed_fleet(runtime)
    host_a = runtime.settings.state_dir  # the one that ran steps 1 and 2 (and the library's runtime)
    host_b = tmp_path / "host-b-state"
    for mode in ("schema-only", "tables-only"):
        code, out, err = procs.run("--mode", mode, STATE_DIR=str(host_a))
        assert code == 0, out + err
    audit = install_ledger_audit(runtime)

    args = ("--mode", "migration-only", "--workers", "2", "--cutoff-time", str(CUTOFF), "--chunk-hours", "1")
    hosts = {"a": procs.start(*args, STATE_DIR=str(host_a)), "b": procs.start(*args, STATE_DIR=str(host_b))}
    children: dict[str, set[int]] = {h: set() for h in hosts}
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in hosts.values()):  # each host's worker processes, while they live
        for h, p in hosts.items():
            if p.poll() is None:
                children[h] |= _children(p.pid)
        assert time.monotonic() < deadline, "the two backfills did not finish in 120 s"
        time.sleep(0.05)
    for h, p in hosts.items():
        code, out, err = procs.finish(p)
        assert code == 0, (h, out, err)
        assert "Traceback" not in err, (h, err)
        for ship in SHIPS:  # each host reports the whole shared ledger
            assert f"{ship}: cutoff {CUTOFF}, chunks {HOURS}/{HOURS} done, 0 failed" in out, (h, out)
    assert not children["a"] & children["b"]

    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.connect() as conn:
        chunks = conn.execute(text(
            f"SELECT id, ship_id, window_start, window_end, status, worker, rows_read, attempts FROM {ledger.table} "
            "ORDER BY ship_id, window_start")).all()
        events = conn.execute(text(f"SELECT chunk_id, old_status, status, worker, at FROM {audit} ORDER BY at")).all()
        overlapping = conn.execute(text(
            f"""SELECT count(*) FROM {ledger.table} x JOIN {ledger.table} y ON x.ship_id = y.ship_id AND x.id < y.id
                AND x.window_start < y.window_end AND y.window_start < x.window_end""")).scalar_one()
    assert len(chunks) == len(SHIPS) * HOURS
    assert {(c.status, c.attempts) for c in chunks} == {("done", 0)}
    done = [e for e in events if e.status == "done"]
    claims = [e for e in events if e.status == "running"]
    done_count = Counter(e.chunk_id for e in done)
    assert [i for i, n in done_count.items() if n > 1] == [], "a chunk was done twice"
    assert set(done_count) == {c.id for c in chunks}, "a chunk was never done"
    assert Counter(e.chunk_id for e in claims) == Counter({c.id: 1 for c in chunks}), "a chunk was claimed twice"
    assert all(e.old_status == "running" for e in done)
    assert {e.chunk_id: e.worker for e in done} == {c.id: c.worker for c in chunks}

    # who did what: the worker (host:pid) of each done chunk is a worker process of exactly one host
    def host_of(worker: str) -> str:
        pid = int(worker.rsplit(":", 1)[1])
        owners = [h for h, pids in children.items() if pid in pids]
        assert len(owners) == 1, (worker, children)
        return owners[0]

    by_host = {h: [e for e in done if host_of(e.worker) == h] for h in hosts}
    assert by_host["a"] and by_host["b"], {h: len(v) for h, v in by_host.items()}
    assert len(by_host["a"]) + len(by_host["b"]) == len(chunks)
    spans = {h: (min(e.at for e in v), max(e.at for e in v)) for h, v in by_host.items()}
    print(f"\nchunks done: host a {len(by_host['a'])}, host b {len(by_host['b'])}; done between "
          + ", ".join(f"{h} {a:%H:%M:%S.%f}..{b:%H:%M:%S.%f}" for h, (a, b) in spans.items()))
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values()), spans  # they ran at once

    # the windows of each ship tile its history hour by hour, and each narrow row was read by one chunk
    assert overlapping == 0
    for ship in SHIPS:
        windows = [(c.window_start, c.window_end) for c in chunks if c.ship_id == ship]
        assert windows == [(CUTOFF - timedelta(hours=HOURS - i), CUTOFF - timedelta(hours=HOURS - i - 1))
                           for i in range(HOURS)]
    assert sum(c.rows_read for c in chunks) == rows
    for state_dir in (host_a, host_b):  # each host stored the same cutoff in its own store
        store = CutoffStore(state_dir / "cutoffs.json")
        assert {s: store.get(s).cutoff for s in SHIPS} == {s: CUTOFF for s in SHIPS}

    for ship in SHIPS:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        assert diff.exact, (ship, diff)
        assert diff.expected == rows // len(SHIPS)
    report = validate(runtime)
    assert report.ok, [s.message for s in report.ships]
    assert {s.ship_id: s.checked_buckets for s in report.ships} == {s: HOURS for s in SHIPS}
    code, out, err = procs.run("--mode", "validate", STATE_DIR=str(host_b))  # host B sees the same
    assert code == 0 and "Validation passed" in out, out + err
