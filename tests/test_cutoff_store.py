"""The cutoff store: exact round trips, conflicts, forward-only watermarks, damaged files, locking."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cutoff_store import CutoffStore, ShipState
from narrow2wide.common import durable
from narrow2wide.common.errors import CutoffConflict, StateError
from narrow2wide.store import cutoff_store

SHIP = "IMO9999993"
T0 = datetime(2024, 10, 2, 17, 0, 0)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "state" / "cutoffs.json"


@pytest.fixture
def store(path) -> CutoffStore:
    return CutoffStore(path)


# ------------------------------------------------------------------ basics


def test_constructor_does_no_io_and_missing_file_is_empty(tmp_path):
    path = tmp_path / "nowhere" / "cutoffs.json"
    store = CutoffStore(path)
    assert not path.parent.exists()
    assert store.load() == {}
    assert store.get(SHIP) is None
    assert not path.parent.exists()  # reading never creates the folder


def test_round_trip_naive_and_aware_with_microseconds(store, path):
    naive = datetime(2024, 10, 2, 17, 0, 0, 123456)
    aware = datetime(2024, 10, 2, 22, 30, 0, 654321, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    utc = datetime(2024, 10, 3, 0, 0, 0, 1, tzinfo=timezone.utc)
    store.set_cutoff("naive", naive)
    store.set_cutoff("aware", aware)
    store.set_watermark("aware", utc)
    store.set_stream_cursor("aware", aware + timedelta(microseconds=7))

    fresh = CutoffStore(path).load()
    assert fresh["naive"] == ShipState(cutoff=naive)
    assert fresh["naive"].cutoff.tzinfo is None
    got = fresh["aware"]
    assert got.cutoff == aware and got.cutoff.utcoffset() == timedelta(hours=5, minutes=30)
    assert got.cutoff.microsecond == 654321
    assert got.watermark == utc and got.watermark.utcoffset() == timedelta(0)
    assert got.stream_cursor == aware + timedelta(microseconds=7)


def test_file_format_is_readable_sorted_and_versioned(store, path):
    store.set_cutoff(SHIP, T0)
    text = path.read_text()
    assert json.loads(text) == {
        "version": 1,
        "ships": {SHIP: {"cutoff": "2024-10-02T17:00:00", "watermark": None, "stream_cursor": None,
                         "insert_cursor": None}},
    }
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert _files(path.parent) == ["cutoffs.json", "cutoffs.json.lock"]


def test_remove(store):
    store.set_cutoff("A", T0)
    store.set_cutoff("B", T0)
    assert store.remove("A") is True
    assert store.remove("A") is False
    assert set(store.load()) == {"B"}


# ------------------------------------------------------------------ cutoffs


def test_same_cutoff_is_a_no_op_and_different_one_conflicts(store, path):
    store.set_cutoff(SHIP, T0)
    before = path.read_bytes()
    assert store.set_cutoff(SHIP, T0) == ShipState(cutoff=T0)

    later = T0 + timedelta(hours=1)
    with pytest.raises(CutoffConflict) as info:
        store.set_cutoff(SHIP, later)
    message = str(info.value)
    assert "\n" not in message
    assert SHIP in message and T0.isoformat() in message and later.isoformat() in message
    assert "--force" in message and "gap" in message
    assert path.read_bytes() == before
    assert store.get(SHIP).cutoff == T0

    assert store.set_cutoff(SHIP, later, force=True).cutoff == later
    assert CutoffStore(path).get(SHIP).cutoff == later


def test_set_cutoff_keeps_watermark(store):
    store.set_watermark(SHIP, T0 + timedelta(hours=3))
    state = store.set_cutoff(SHIP, T0)
    assert state == ShipState(cutoff=T0, watermark=T0 + timedelta(hours=3))


def test_ensure_cutoff_stores_once(store, path):
    assert store.ensure_cutoff(SHIP, T0) == (T0, True)
    assert store.ensure_cutoff(SHIP, T0 + timedelta(days=1)) == (T0, False)
    assert CutoffStore(path).ensure_cutoff(SHIP, T0 - timedelta(days=1)) == (T0, False)
    assert store.get(SHIP).cutoff == T0


# ------------------------------------------------------------------ forward-only


@pytest.mark.parametrize("setter,field", [("set_watermark", "watermark"), ("set_stream_cursor", "stream_cursor")])
def test_forward_only(store, path, caplog, setter, field):
    set_ = getattr(store, setter)
    t1, t2 = T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)
    assert getattr(set_(SHIP, t1), field) == t1
    assert getattr(set_(SHIP, t2), field) == t2
    before = path.read_bytes()
    with caplog.at_level(logging.DEBUG, logger="cutoff_store"):
        state = set_(SHIP, t1)
    assert getattr(state, field) == t2
    assert path.read_bytes() == before
    assert any("older" in r.getMessage() for r in caplog.records)
    assert getattr(CutoffStore(path).get(SHIP), field) == t2


def test_naive_vs_aware_watermark_is_a_state_error(store):
    store.set_watermark(SHIP, T0)
    with pytest.raises(StateError, match="time zone"):
        store.set_watermark(SHIP, T0.replace(tzinfo=timezone.utc) + timedelta(hours=1))


# ------------------------------------------------------------------ damaged files

GOOD_SHIP = {"cutoff": "2024-10-02T17:00:00", "watermark": None, "stream_cursor": None}

DAMAGED = {
    "garbage": b"\x00\xff not json at all \x89PNG",
    "empty": b"",
    "truncated": b'{"version": 1, "ships": {"IMO9999993": {"cutoff": "2024-10-02T17:',
    "plain_text": b"hello\n",
    "top_level_list": b"[1, 2, 3]",
    "ships_not_object": json.dumps({"version": 1, "ships": []}).encode(),
    "ships_missing": json.dumps({"version": 1}).encode(),
    "ship_not_object": json.dumps({"version": 1, "ships": {SHIP: "2024-10-02"}}).encode(),
    "bad_time": json.dumps({"version": 1, "ships": {SHIP: {**GOOD_SHIP, "cutoff": "yesterday"}}}).encode(),
    "time_not_string": json.dumps({"version": 1, "ships": {SHIP: {**GOOD_SHIP, "watermark": 12}}}).encode(),
    "unknown_field": json.dumps({"version": 1, "ships": {SHIP: {**GOOD_SHIP, "cutof": None}}}).encode(),
    "no_version": json.dumps({"ships": {}}).encode(),
    "unknown_version": json.dumps({"version": 2, "ships": {SHIP: GOOD_SHIP}}).encode(),
    "version_string": json.dumps({"version": "1", "ships": {}}).encode(),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_file_raises_and_is_left_untouched(store, path, name):
    path.parent.mkdir(parents=True)
    content = DAMAGED[name]
    path.write_bytes(content)
    calls = [
        lambda: store.load(),
        lambda: store.get(SHIP),
        lambda: store.set_cutoff(SHIP, T0),
        lambda: store.set_cutoff(SHIP, T0, force=True),
        lambda: store.ensure_cutoff(SHIP, T0),
        lambda: store.set_watermark(SHIP, T0),
        lambda: store.set_stream_cursor(SHIP, T0),
        lambda: store.remove(SHIP),
    ]
    for call in calls:
        with pytest.raises(StateError) as info:
            call()
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        if name == "unknown_version":
            assert "version 2" in message
        else:
            assert "refusing to guess" in message
    assert path.read_bytes() == content
    assert _files(path.parent) == ["cutoffs.json", "cutoffs.json.lock"]


def test_store_path_is_a_directory(store, path):
    path.mkdir(parents=True)
    with pytest.raises(StateError, match="is a directory"):
        store.load()
    with pytest.raises(StateError):
        store.set_cutoff(SHIP, T0)


# ------------------------------------------------------------------ unwritable / full


def test_parent_is_a_regular_file(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    store = CutoffStore(blocker / "cutoffs.json")
    with pytest.raises(StateError) as info:
        store.set_cutoff(SHIP, T0)
    assert str(blocker) in str(info.value)
    with pytest.raises(StateError, match="not a directory"):
        store.load()
    assert blocker.read_text() == "not a folder"


def _raise(exc: OSError):
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_replace_permission_error_keeps_old_state_and_leaves_no_temp_file(store, path, monkeypatch):
    store.set_cutoff(SHIP, T0)
    before = path.read_bytes()
    monkeypatch.setattr(cutoff_store.os, "replace", _raise(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(StateError) as info:
        store.set_watermark(SHIP, T0 + timedelta(hours=1))
    assert "not writable" in str(info.value) and str(path) in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _files(path.parent) == ["cutoffs.json", "cutoffs.json.lock"]


def test_bare_permission_error_is_still_named(store, path, monkeypatch):
    monkeypatch.setattr(cutoff_store.os, "replace", _raise(PermissionError()))
    with pytest.raises(StateError, match="not writable"):
        store.set_cutoff(SHIP, T0)
    monkeypatch.undo()
    assert _files(path.parent) == ["cutoffs.json.lock"]


def test_disk_full_says_state_dir_is_full(store, path, monkeypatch):
    store.set_cutoff(SHIP, T0)
    before = path.read_bytes()
    monkeypatch.setattr(cutoff_store.os, "fsync", _raise(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(StateError) as info:
        store.ensure_cutoff("OTHER", T0)
    assert "STATE_DIR" in str(info.value) and "full" in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _files(path.parent) == ["cutoffs.json", "cutoffs.json.lock"]
    assert store.get("OTHER") is None


def test_temp_file_creation_failure(store, path, monkeypatch):
    monkeypatch.setattr(durable.tempfile, "mkstemp", _raise(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(StateError, match="full"):
        store.set_cutoff(SHIP, T0)
    monkeypatch.undo()
    assert _files(path.parent) == ["cutoffs.json.lock"]


def test_lock_file_not_writable(store, path, monkeypatch):
    real_open = os.open

    def fake_open(file, flags, *args, **kwargs):
        if str(file).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(cutoff_store.os, "open", fake_open)
    with pytest.raises(StateError) as info:
        store.set_cutoff(SHIP, T0)
    assert "cutoffs.json.lock" in str(info.value) and "not writable" in str(info.value)


# ------------------------------------------------------------------ several processes

WORKERS = 4
ROUNDS = 25


def _worker(path: str, worker: int, barrier, results) -> None:
    store = CutoffStore(Path(path))
    barrier.wait(timeout=60)
    shared = []
    for i in range(ROUNDS):
        own = f"W{worker}"
        store.ensure_cutoff(own, T0 + timedelta(hours=worker))
        store.set_watermark(own, T0 + timedelta(minutes=i))
        store.set_watermark(f"W{worker}-{i}", T0 + timedelta(seconds=i, microseconds=worker))
        shared.append(store.ensure_cutoff("SHARED", T0 + timedelta(days=worker, minutes=i))[0])
        store.set_watermark("SHARED", T0 + timedelta(minutes=worker * ROUNDS + i))
    results.put((worker, shared))


@pytest.mark.slow
def test_several_processes_lose_no_update(path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), w, barrier, results)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    document = json.loads(path.read_text())  # still valid JSON
    assert document["version"] == 1
    ships = CutoffStore(path).load()
    assert len(ships) == WORKERS + WORKERS * ROUNDS + 1
    for w in range(WORKERS):
        assert ships[f"W{w}"] == ShipState(cutoff=T0 + timedelta(hours=w), watermark=T0 + timedelta(minutes=ROUNDS - 1))
        for i in range(ROUNDS):
            assert ships[f"W{w}-{i}"].watermark == T0 + timedelta(seconds=i, microseconds=w)

    # Every process saw the same shared cutoff, and it is the stored one.
    seen = {c for shared in outcomes.values() for c in shared}
    assert seen == {ships["SHARED"].cutoff}
    # The shared watermark is the largest any process offered.
    assert ships["SHARED"].watermark == T0 + timedelta(minutes=(WORKERS - 1) * ROUNDS + ROUNDS - 1)
    assert _files(path.parent) == ["cutoffs.json", "cutoffs.json.lock"]
