"""Human-readable rendering of each mode's result (``--json`` bypasses this)."""

from __future__ import annotations

from collections.abc import Callable


def _seed(result) -> str:
    return (
        f"Seeded {result.rows:,} rows into {result.source}: {len(result.ship_ids)} ships "
        f"({', '.join(result.ship_ids)}), {result.channels} channels each, "
        f"{result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M}, in {result.seconds:.1f} s."
    )


RENDERERS: dict[str, Callable[[object], str]] = {
    "demo": _seed,
}


def render(mode: str, result: object) -> str:
    """Text for ``result`` of ``mode``; falls back to ``str``."""
    renderer = RENDERERS.get(mode)
    return renderer(result) if renderer else str(result)
