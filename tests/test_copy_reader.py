"""The backfill's reader helper processes: connected before their first read, failing it with the reason."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import text

from narrow2wide.db.database import make_engine, qualified
from narrow2wide.db.narrow_source import begin_snapshot_read
from narrow2wide.engine.copy_reader import CopyReaderProcess, SourceReadError, _wait_for_exit


def _backends_named(engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                                {"n": name}).scalar_one())


def test_a_started_reader_connects_before_its_first_read_and_reads_in_the_callers_snapshot(engine, schemas):
    """``start()`` brings the helper up and connected while the worker prepares; its read sees the snapshot
    the worker exported, not rows committed after it."""
    name = f"reader-test-{uuid.uuid4().hex[:8]}"
    table = qualified(schemas[0], "reader_probe")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (v int)"))
        conn.execute(text(f"INSERT INTO {table} VALUES (1), (2)"))
    reader = CopyReaderProcess(engine, application_name=name)
    try:
        reader.start()
        deadline = time.monotonic() + 20
        while _backends_named(engine, name) == 0:
            assert time.monotonic() < deadline, "the started reader never connected"
            time.sleep(0.05)
        with engine.connect() as conn:
            begin_snapshot_read(conn)  # as the backfill's source transaction
            snapshot = reader.export_snapshot(conn)
            with engine.begin() as other:  # committed after the snapshot: not in the read
                other.execute(text(f"INSERT INTO {table} VALUES (3)"))
            data = reader.copy_out(snapshot, f"COPY (SELECT v FROM {table} ORDER BY v) TO STDOUT")
            conn.rollback()
        assert bytes(data) == b"1\n2\n"
    finally:
        reader.close()
    deadline = time.monotonic() + 10
    while _backends_named(engine, name):  # its backend ends with the helper
        assert time.monotonic() < deadline, "the closed reader's connection is still open"
        time.sleep(0.05)


def test_a_reader_that_cannot_connect_fails_its_first_read_with_the_reason():
    """A helper whose connection at start fails does not hang or read nothing: the first read fails, naming why."""
    unreachable = make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere", "reader-test")
    reader = CopyReaderProcess(unreachable)
    try:
        reader.start()
        with pytest.raises(SourceReadError, match="OperationalError"):
            reader.copy_out("00000003-00000002-1", "COPY (SELECT 1) TO STDOUT")
    finally:
        reader.close()
        unreachable.dispose()


def test_readers_told_to_exit_together_all_exit_cleanly_and_close_waits_for_each(engine):
    """``request_exit`` on every helper, then ``close`` on each (how a worker ends): the request alone makes
    each helper process exit, with status 0, and its backend goes; a second ``close`` is harmless."""
    name = f"reader-exit-{uuid.uuid4().hex[:8]}"
    readers = [CopyReaderProcess(engine, application_name=name) for _ in range(2)]
    for reader in readers:
        reader.start()
    processes = [reader.process for reader in readers]
    deadline = time.monotonic() + 20
    while _backends_named(engine, name) < 2:
        assert time.monotonic() < deadline, "the started readers never connected"
        time.sleep(0.05)
    for reader in readers:
        reader.request_exit()
    deadline = time.monotonic() + 10
    while any(p.poll() is None for p in processes):  # the request alone ends them, before any wait
        assert time.monotonic() < deadline, "a helper told to exit is still running"
        time.sleep(0.05)
    for reader in readers:
        reader.close()
        reader.close()
    assert [p.returncode for p in processes] == [0, 0]
    deadline = time.monotonic() + 10
    while _backends_named(engine, name):
        assert time.monotonic() < deadline, "a closed reader's connection is still open"
        time.sleep(0.05)


def test_waiting_for_a_helper_reaps_it_once_it_exits_and_gives_up_at_the_timeout():
    """The wait ``close`` uses: it returns once the process has exited (reaped, with its status) and
    raises ``TimeoutExpired`` for one that does not exit in time."""
    exiting = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        exiting.stdin.close()  # EOF: the helper's signal to exit
        _wait_for_exit(exiting, 20)
        assert exiting.returncode == 0
        _wait_for_exit(exiting, 20)  # already reaped: returns at once
        with pytest.raises(subprocess.TimeoutExpired):
            _wait_for_exit(stuck, 0.2)
        assert stuck.poll() is None
    finally:
        stuck.kill()
        stuck.wait()
