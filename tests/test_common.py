"""Fast unit tests of the pure helpers in narrow2wide.common (no database)."""

from __future__ import annotations

import os
import stat

import pytest
from sqlalchemy.exc import OperationalError

from narrow2wide.common import errors
from narrow2wide.common.durable import write_durably
from narrow2wide.common.fits import FITS, TEXT_FITS, fits_sql, value_text_sql
from narrow2wide.common.jsonable import to_jsonable
from narrow2wide.common.retry import DATABASE_ERRORS, RETRYABLE, backoff_delay


def test_one_line_takes_the_drivers_first_line():
    exc = OperationalError("SELECT 1", {}, Exception("connection refused\n\tIs the server running?"))
    assert errors.one_line(exc) == "connection refused"
    assert errors.error_line(exc) == "Exception: connection refused"


def test_one_line_of_an_empty_message_names_the_type():
    assert errors.one_line(ValueError()) == "ValueError"
    assert errors.error_line(ValueError()) == "ValueError: "
    assert errors.one_line(RuntimeError("\n  first  \nsecond")) == "first"


def test_every_tool_error_is_retryable_or_fatal():
    tool_errors = [c for c in vars(errors).values()
                   if isinstance(c, type) and issubclass(c, errors.MigratorError)
                   and c not in (errors.MigratorError, errors.RetryableError, errors.FatalError)]
    for cls in tool_errors:
        assert issubclass(cls, errors.RetryableError) != issubclass(cls, errors.FatalError), cls
    assert issubclass(errors.ConfigError, errors.FatalError) and errors.ConfigError.exit_code == 2
    assert issubclass(errors.DatabaseUnavailable, RETRYABLE)
    assert not issubclass(errors.CutoffConflict, RETRYABLE)
    assert all(issubclass(c, BaseException) for c in DATABASE_ERRORS)


def test_backoff_doubles_to_its_cap():
    assert [backoff_delay(n, 1.0, 30.0) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(1, 0.25, 60.0) == 0.25


def test_fits_sql_covers_every_type_and_format():
    sql = fits_sql()
    for pg_type, fits in FITS.items():
        assert f"WHEN '{pg_type}'" in sql
        assert all(f"WHEN '{fmt}'" in sql for fmt in fits)
    assert all(f"WHEN '{fmt}'" in sql for fmt in TEXT_FITS)
    assert sql.endswith("IS TRUE")
    assert "s.double_v::bigint::text" in value_text_sql()
    assert "x.long_v" in fits_sql("x", "t.ty") and "CASE t.ty" in fits_sql("x", "t.ty")


def test_durable_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    write_durably(target, b"one")
    write_durably(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_durably(target, b"three", replace=False)
    assert target.read_bytes() == b"two" and len(list(tmp_path.iterdir())) == 1


def test_durable_write_with_a_mode_applies_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_durably(tmp_path / "rejects.csv", b"a,b\n", mode=0o666)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "rejects.csv").stat().st_mode) == 0o640


def test_a_failed_durable_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    write_durably(target, b"old")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_durably(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_to_jsonable_turns_dataclasses_times_and_paths_into_plain_values(tmp_path):
    from dataclasses import dataclass
    from datetime import datetime

    @dataclass
    class Item:
        when: datetime
        where: object
        lock: object = None

    value = to_jsonable({"items": (Item(datetime(2024, 1, 2, 3, 4, 5), tmp_path),)})
    assert value == {"items": [{"when": "2024-01-02 03:04:05", "where": str(tmp_path), "lock": None}]}


def test_cut_window_repeats_the_last_step_and_ends_at_the_end():
    from datetime import datetime, timedelta

    from narrow2wide.common.windows import cut_window

    t0 = datetime(2024, 1, 1)
    hour = timedelta(hours=1)
    assert cut_window(t0, t0 + 2.5 * hour, [hour]) == [(t0, t0 + hour), (t0 + hour, t0 + 2 * hour),
                                                       (t0 + 2 * hour, t0 + 2.5 * hour)]
    steps = [hour / 4, hour / 2, hour]
    pieces = cut_window(t0, t0 + 3 * hour, steps)
    assert [b - a for a, b in pieces] == [hour / 4, hour / 2, hour, hour, hour / 4]
    assert cut_window(t0, t0, [hour]) == []


@pytest.mark.parametrize("hours", [0.25, 0.5, 1, 1.5, 2, 3, 6, 24, 25, 168])
def test_a_windows_read_blocks_cover_it_exactly_and_ramp_up_and_down(hours):
    from datetime import datetime, timedelta

    from narrow2wide.engine.window_migrator import BLOCK_MIN, READ_BLOCKS, _blocks

    start = datetime(2024, 1, 1)
    end = start + timedelta(hours=hours)
    blocks = _blocks(start, end, READ_BLOCKS)
    assert blocks[0][0] == start and blocks[-1][1] == end
    assert all(a < b for a, b in blocks) and all(blocks[i][1] == blocks[i + 1][0] for i in range(len(blocks) - 1))
    assert all(a.second == 0 and a.microsecond == 0 for a, _ in blocks)  # whole minutes
    sizes = [b - a for a, b in blocks]
    if end - start <= 2 * BLOCK_MIN:
        assert max(sizes) <= BLOCK_MIN
        return
    full = max(sizes)
    assert len(blocks) <= READ_BLOCKS + 4
    assert sizes[0] <= full / 4 and sizes[1] <= full / 2  # a short first read fills the pipeline
    if end - start >= 3 * full:
        assert sizes[-1] <= full / 4 and sizes[-2] <= full / 2  # and short last ones drain it
