"""The ``streaming`` strategy (the code is in :mod:`narrow2wide.strategies.streaming`)."""

from __future__ import annotations

from narrow2wide.strategies.streaming import StreamingStrategy

__all__ = ["StreamingStrategy"]
