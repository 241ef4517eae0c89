"""The one window cutter: a time range cut into consecutive half-open pieces."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def cut_window(start: datetime, end: datetime, steps: Sequence[timedelta]) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` in pieces of the sizes in ``steps`` (the last size repeats), the last one ending at ``end``.

    Used for the ledger's chunks, a backfill window's read blocks and realtime's catch-up pieces.
    An empty range gives no pieces.
    """
    out: list[tuple[datetime, datetime]] = []
    a = start
    while a < end:
        b = min(a + steps[min(len(out), len(steps) - 1)], end)
        out.append((a, b))
        a = b
    return out
