"""A damaged, read-only or full STATE_DIR: a clear one-line error (exit 1), and nothing reset or changed.

The cutoff store (``STATE_DIR/cutoffs.json``, see :mod:`cutoff_store`) is what ties the backfill and
realtime together: a cutoff silently reset would leave a gap or an overlap that nothing reports. So a
run that finds the file truncated, corrupt or of the wrong types, or cannot write it, must stop with a
:class:`errors.StateError` before touching anything: the file keeps its bytes, the ledger in the
database and the wide tables are as they were. Real CLI processes on a real PostgreSQL; the file system
faults are real too (a read-only bind mount or a tiny tmpfs when running as root, else chmod or skip).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from cutoff_store import CutoffStore
from data_migrator import BackfillOptions, run_backfill
from tests.test_backfill_faults import CUTOFF, SHIP, ledger_rows
from tests.wide_check import compare, wide_snapshot

WATERMARK = datetime(2024, 10, 2, 0, 5)
EXIT_GUARD = "20"  # --run-for for the long-lived modes, so that a wrong "keeps running" cannot hang the test

MODES: dict[str, tuple[str, ...]] = {
    "migration-only": ("--mode", "migration-only"),
    "migration-only --cutoff-time": ("--mode", "migration-only", "--cutoff-time", CUTOFF),
    "migration-only --force": ("--mode", "migration-only", "--cutoff-time", "2024-10-01 21:00:00", "--force"),
    "realtime": ("--mode", "realtime", "--run-for", EXIT_GUARD),
    "realtime --once": ("--mode", "realtime", "--once"),
    "concurrent": ("--mode", "concurrent", "--run-for", EXIT_GUARD),
    "status": ("--mode", "status"),
}


def _good_document() -> dict:
    return {"version": 1, "ships": {SHIP: {"cutoff": "2024-10-02T00:00:00", "watermark": "2024-10-02T00:05:00",
                                           "stream_cursor": None, "insert_cursor": None}}}


def _damaged(good: bytes) -> dict[str, bytes]:
    doc = _good_document()
    wrong_type = json.loads(json.dumps(doc))
    wrong_type["ships"][SHIP]["cutoff"] = 1727827200
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": b"\x00\xff\xfe\x89PNG\r\n not a cutoff store \x1a",
        "cutoff_is_a_number": json.dumps(wrong_type).encode(),
        "ships_is_a_list": json.dumps({"version": 1, "ships": [SHIP]}).encode(),
    }


# in the quick run each damage meets one or two modes (every mode at least once); --full runs them all
QUICK: dict[str, tuple[str, ...]] = {
    "truncated": ("migration-only", "status"),
    "empty": ("migration-only --force",),
    "garbage": ("realtime",),
    "cutoff_is_a_number": ("realtime --once", "migration-only --cutoff-time"),
    "ships_is_a_list": ("concurrent",),
}
assert {m for modes in QUICK.values() for m in modes} == set(MODES)


# ----------------------------------------------------------------------------------------------
# helpers


def _migrate(runtime, prepared) -> None:
    """A ship backfilled up to CUTOFF (3 chunks of 2 h), with a realtime watermark stored."""
    prepared(ships=1, channels=8)  # 2024-10-01 18:00 .. 24:00
    result = run_backfill(runtime, (), BackfillOptions(progress=False, cutoff_time=CUTOFF, chunk_hours=2))
    assert not result.failed_chunks
    assert compare(runtime.dbs.source, runtime.settings, SHIP).exact  # what the snapshots compare against
    CutoffStore(runtime.settings.cutoff_file).set_watermark(SHIP, WATERMARK)
    assert json.loads(runtime.settings.cutoff_file.read_text()) == _good_document()


def _snapshot(runtime) -> tuple:
    """The ledger (the cutoff as the database knows it) and every wide table's content."""
    return [tuple(r) for r in ledger_rows(runtime)], wide_snapshot(runtime.dbs.target, runtime.settings, SHIP)


def _leftovers(folder: Path) -> list[str]:
    """Temp files a write left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".cutoffs.json."))


def _error_line(err: str, allowed_warnings: tuple[str, ...] = ()) -> str:
    """The one ``error:`` line of stderr; any other line must start with one of ``allowed_warnings``."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    others = [line for line in lines if not line.startswith("error: ")
              and not any(line.startswith(w) for w in allowed_warnings)]
    assert len(errors) == 1 and not others, err
    assert "Traceback" not in err
    return errors[0]


def _assert_refused(procs, runtime, mode: str, before: tuple, content: bytes, expect: tuple[str, ...],
                    allowed_warnings: tuple[str, ...] = ()) -> str:
    """Run ``mode``: exit 1 with one error line holding every string of ``expect``; nothing changed."""
    path = runtime.settings.cutoff_file
    code, out, err = procs.run(*MODES[mode], timeout=60)
    assert code == 1, (mode, out, err)
    line = _error_line(err, allowed_warnings)
    for part in expect:
        assert part in line, (mode, line)
    assert out == "", (mode, out)
    assert path.read_bytes() == content, f"{mode}: the cutoff store was rewritten"
    assert _leftovers(path.parent) == [], mode
    assert _snapshot(runtime) == before, f"{mode}: the ledger or the wide tables changed"
    return line


# ----------------------------------------------------------------------------------------------
# 1. a damaged file


def test_a_damaged_cutoff_store_stops_every_mode_and_is_left_as_it_is(runtime, prepared, procs, full_run):
    _migrate(runtime, prepared)
    path = runtime.settings.cutoff_file
    good = path.read_bytes()
    before = _snapshot(runtime)
    for damage, content in _damaged(good).items():
        path.write_bytes(content)
        for mode in (MODES if full_run else QUICK[damage]):
            _assert_refused(procs, runtime, mode, before, content, expect=("cutoff store", str(path), "corrupt",
                                                                           "refusing to guess cutoffs"))
    # the operator restores the file: the ship carries on from its real cutoff, nothing was lost
    path.write_bytes(good)
    code, out, err = procs.run(*MODES["migration-only"])
    assert code == 0, out + err
    assert "cutoff 2024-10-02 00:00:00, chunks 3/3 done" in out
    assert path.read_bytes() == good
    assert _snapshot(runtime) == before
    assert compare(runtime.dbs.source, runtime.settings, SHIP).exact


# ----------------------------------------------------------------------------------------------
# 2. a STATE_DIR that cannot be written


def _run_root(*args: str) -> bool:
    return subprocess.run(list(args), capture_output=True, text=True).returncode == 0


@contextmanager
def read_only(folder: Path):
    """Make ``folder`` unwritable: chmod for a normal user; for root (whom chmod does not stop) a read-only
    bind mount of it on itself, or a skip when mounting is not allowed here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "Permission denied"
        finally:
            folder.chmod(0o755)
        return
    if not _run_root("mount", "--bind", str(folder), str(folder)):
        pytest.skip("running as root, where chmod does not stop writes, and bind mounts are not allowed here")
    try:
        if not _run_root("mount", "-o", "remount,ro,bind", str(folder)):
            pytest.skip("running as root, where chmod does not stop writes, and a read-only remount is refused")
        yield "Read-only file system"
    finally:
        _run_root("umount", "-l", str(folder))


def test_an_unwritable_state_dir_is_reported_before_anything_changes(runtime, prepared, procs, full_run):
    _migrate(runtime, prepared)
    path = runtime.settings.cutoff_file
    content = path.read_bytes()
    before = _snapshot(runtime)
    modes = ("migration-only --cutoff-time", "realtime --once", "concurrent", "migration-only --force") if full_run \
        else ("migration-only --cutoff-time",)
    with read_only(path.parent) as reason:
        probe = path.parent / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")  # the fault is real
        for mode in modes:
            # (even a backfill whose stored cutoff matches, which would not need to write the store)
            _assert_refused(procs, runtime, mode, before, content, expect=("not writable", reason, str(path)),
                            allowed_warnings=("cannot write the log file", "warning: cannot write the log file"))
        # reading still works on a read-only STATE_DIR
        code, out, err = procs.run(*MODES["status"])
        assert code == 0, out + err
        assert "cutoff 2024-10-02 00:00:00" in out and "Traceback" not in err
    assert path.read_bytes() == content
    assert _snapshot(runtime) == before


# ----------------------------------------------------------------------------------------------
# 3. a full STATE_DIR


@contextmanager
def tiny_tmpfs(folder: Path, size: str = "64k"):
    """Mount a tmpfs of ``size`` on ``folder`` (root only; skip otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a full file system without mocks needs root (to mount a tiny tmpfs)")
    if not _run_root("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield folder
    finally:
        _run_root("umount", "-l", str(folder))


def _fill(folder: Path) -> int:
    """Fill the file system of ``folder``; returns the bytes written."""
    written = 0
    with open(folder / "filler", "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written


def test_a_full_state_dir_is_reported_and_the_old_file_is_kept(runtime, prepared, procs, full_run):
    path = runtime.settings.cutoff_file
    with tiny_tmpfs(path.parent) as state:
        _migrate(runtime, prepared)
        content = path.read_bytes()
        before = _snapshot(runtime)
        assert _fill(state) > 0
        with pytest.raises(OSError):
            (state / "probe").write_bytes(b"x" * 8192)  # the fault is real
        (state / "probe").unlink(missing_ok=True)
        modes = ("realtime --once", "migration-only --cutoff-time", "concurrent", "realtime") if full_run \
            else ("realtime --once", "migration-only --cutoff-time")
        for mode in modes:
            _assert_refused(procs, runtime, mode, before, content,
                            expect=("STATE_DIR", "is full", "no space left on device", str(path)),
                            allowed_warnings=("warning: cannot write the log file",))
        # space is freed: the next run works and the state is the one from before
        (state / "filler").unlink()
        code, out, err = procs.run(*MODES["migration-only"])
        assert code == 0, out + err
        assert "chunks 3/3 done" in out
        assert path.read_bytes() == content
        assert _snapshot(runtime) == before
