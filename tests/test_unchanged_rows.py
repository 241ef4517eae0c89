"""``pivot.drop_unchanged``: which re-read rows a realtime cycle may skip (pure numpy, no database)."""

from __future__ import annotations

import numpy as np

from narrow2wide.engine.pivot import KIND_BIGINT, KIND_BOOL, KIND_DOUBLE, PartRows, drop_unchanged


def _part(ts, doubles, valid, ints=None, flags=None, text=None) -> PartRows:
    ts = np.array(ts, dtype=np.int64)
    n = ts.size
    matrices = {KIND_DOUBLE: (np.array(doubles, dtype=np.float64).reshape(n, -1),
                              np.array(valid, dtype=bool).reshape(n, -1), ("d1", "d2"))}
    if ints is not None:
        matrices[KIND_BIGINT] = (np.array(ints, dtype=np.int64).reshape(n, 1), np.ones((n, 1), dtype=bool), ("i1",))
    if flags is not None:
        matrices[KIND_BOOL] = (np.array(flags, dtype=bool).reshape(n, 1), np.ones((n, 1), dtype=bool), ("b1",))
    return PartRows("t", ts, matrices, text or {})


def test_rows_written_unchanged_are_dropped_and_new_ones_kept():
    before = _part([10, 20, 30], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[1, 1], [1, 1], [1, 1]])
    now = _part([20, 30, 40], [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], [[1, 1], [1, 1], [1, 1]])
    left = drop_unchanged(now, before)
    assert left is not None and left.ts.tolist() == [40]
    assert left.matrices[KIND_DOUBLE][0].tolist() == [[7.0, 8.0]]


def test_nothing_left_is_none_and_no_history_keeps_everything():
    before = _part([10, 20], [[1.0, 2.0], [3.0, 4.0]], [[1, 1], [1, 1]])
    assert drop_unchanged(_part([10, 20], [[1.0, 2.0], [3.0, 4.0]], [[1, 1], [1, 1]]), before) is None
    now = _part([10], [[1.0, 2.0]], [[1, 1]])
    assert drop_unchanged(now, None) is now


def test_a_changed_value_a_new_cell_and_a_sign_of_zero_are_kept():
    before = _part([1, 2, 3, 4], [[1.0, 0.0], [2.0, 0.0], [0.0, 5.0], [np.nan, 1.0]], [[1, 0], [1, 1], [1, 1], [1, 1]])
    now = _part([1, 2, 3, 4], [[1.0, 9.0], [2.5, 0.0], [-0.0, 5.0], [np.nan, 1.0]], [[1, 1], [1, 1], [1, 1], [1, 1]])
    left = drop_unchanged(now, before)
    # row 1 gained a cell, row 2 changed, row 3 turned 0.0 into -0.0; row 4 (NaN as NaN) is the same
    assert left is not None and left.ts.tolist() == [1, 2, 3]


def test_other_kinds_and_text_are_compared_too():
    before = _part([1, 2, 3], [[1.0, 1.0]] * 3, [[1, 1]] * 3, ints=[5, 6, 7], flags=[True, False, True],
                   text={"s": {0: b"AUTO", 2: b"MANUAL"}})
    now = _part([1, 2, 3], [[1.0, 1.0]] * 3, [[1, 1]] * 3, ints=[5, 60, 7], flags=[True, False, True],
                text={"s": {0: b"AUTO", 2: b"STANDBY"}})
    left = drop_unchanged(now, before)
    assert left is not None and left.ts.tolist() == [2, 3]
    assert left.text == {"s": {1: b"STANDBY"}}  # row indexes follow the rows kept


def test_a_changed_layout_keeps_every_row():
    before = _part([1, 2], [[1.0, 2.0], [3.0, 4.0]], [[1, 1], [1, 1]])
    now = _part([1, 2], [[1.0, 2.0], [3.0, 4.0]], [[1, 1], [1, 1]], ints=[1, 2])  # a new bigint column
    assert drop_unchanged(now, before) is now
