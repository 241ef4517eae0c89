"""The ``hybrid`` strategy (the code is in :mod:`narrow2wide.strategies.hybrid`)."""

from __future__ import annotations

from narrow2wide.strategies.hybrid import HybridStrategy

__all__ = ["HybridStrategy"]
