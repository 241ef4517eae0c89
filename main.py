"""The command line: ``python main.py --mode MODE`` (or the ``narrow-to-wide`` console script).

The click command lives in :mod:`narrow2wide.cli.app`; this file is the entry point users know.
"""

from __future__ import annotations

from narrow2wide.cli.app import MODES, cli

__all__ = ["MODES", "cli"]

if __name__ == "__main__":
    cli()
