"""Settings: :class:`Settings` and :func:`load_settings` (the code is in :mod:`narrow2wide.common.config`)."""

from __future__ import annotations

from narrow2wide.common.config import DEFAULTS, Settings, load_settings, redact_url

__all__ = ["DEFAULTS", "Settings", "load_settings", "redact_url"]
