"""The ``concurrent`` strategy (the code is in :mod:`narrow2wide.strategies.concurrent`)."""

from __future__ import annotations

from narrow2wide.strategies.concurrent import ConcurrentStrategy

__all__ = ["ConcurrentStrategy"]
