"""The one durable, atomic file write of the tool (cutoff store, schema file, reject files, progress file).

A temp file in the target's folder is written and fsynced, renamed over the target with ``os.replace``
(readers see the old file or the new one, never a part), and the folder is fsynced so that the
rename survives a crash. A failed write leaves the old file as it was and no temp file behind.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("durable")


def _umask() -> int:
    """The process's umask, read without changing it (Linux); else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; file systems that cannot fsync a directory are tolerated."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, replace: bool = True, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync of the folder).

    ``mode`` (e.g. ``0o666``) gives the file the permissions ``open()`` would, the umask applied; by
    default it is private to the owner (0600). With ``replace=False`` the synced temp file is removed
    instead: a trial write that checks the folder takes a write and leaves ``path`` as it is.
    An :class:`OSError` reaches the caller, who names the file in its own words.
    """
    folder = path.parent
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
            tmp = None
            fsync_folder(folder)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError as exc:
                log.warning("could not remove the temp file %s: %s", tmp, exc)
