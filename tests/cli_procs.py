"""The one CLI driver of the tests: in this process (:func:`invoke_cli`, click's runner) or as real
subprocesses (:class:`Procs`: output to files, survivors killed at teardown)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner, Result

from main import cli

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "main.py")


def invoke_cli(env: Mapping[str, str | None] | None, *args: str) -> Result:
    """``python main.py ARGS`` in this process (no interpreter start), with ``env`` over the environment.

    The CLI sets up logging as a process does (the root logger's handlers and level); they are put back
    afterwards, so that a later test neither logs into this run's files nor finds its handlers.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return CliRunner().invoke(cli, list(args), env=env)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def clean_environ() -> dict[str, str]:
    """This process's environment without the tool's own settings (the tests set those)."""
    own = ("DATABASE_URL", "TARGET_DATABASE_URL", "DB_", "TARGET_SHIP_IDS", "CHUNK_HOURS", "EMBEDDED_PGDATA",
           "SOURCE_TIMEZONE", "PGOPTIONS")
    return {k: v for k, v in os.environ.items() if not k.startswith(own)}


class Procs:
    """CLI processes started by a test (output to files); killed at teardown if still running."""

    def __init__(self, tmp_path: Path, cli_env: dict[str, str]):
        self.tmp_path = tmp_path
        self.cli_env = cli_env
        self.started: list[tuple[subprocess.Popen, Path, Path]] = []

    def start(self, *args: str, **env_extra: str) -> subprocess.Popen:
        env = clean_environ()
        env.update(self.cli_env)
        env.update(env_extra)
        n = len(self.started)
        out, err = self.tmp_path / f"cli{n}.out", self.tmp_path / f"cli{n}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen([sys.executable, MAIN, *args], cwd=self.tmp_path, env=env, stdout=fo, stderr=fe)
        self.started.append((proc, out, err))
        return proc

    def output(self, proc: subprocess.Popen) -> tuple[str, str]:
        for p, out, err in self.started:
            if p is proc:
                return out.read_text(), err.read_text()
        raise KeyError(proc)

    def finish(self, proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for ``proc``; returns (exit code, stdout, stderr)."""
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out, err = self.output(proc)
            raise AssertionError(f"CLI did not finish in {timeout} s\n{out}\n{err}") from None
        out, err = self.output(proc)
        return code, out, err

    def run(self, *args: str, timeout: float = 60, **env_extra: str) -> tuple[int, str, str]:
        return self.finish(self.start(*args, **env_extra), timeout)

    def kill_all(self) -> None:
        for proc, _, _ in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
