"""The cutoff store: per ship, the backfill cutoff, the realtime watermark and cursors.

Everything lives in one human-readable JSON file (``STATE_DIR/cutoffs.json``)::

    {
      "ships": {
        "IMO9999993": {"cutoff": "2024-10-02T17:00:00", "insert_cursor": null, "stream_cursor": null, "watermark": null}
      },
      "version": 1
    }

Rules:

* Writes are atomic (temp file in the same folder, fsync, ``os.replace``, fsync of the folder).
* Several processes may share the file: every read-modify-write holds an exclusive ``flock`` on
  the sidecar ``<file>.lock``; plain reads hold a shared one.
* A damaged file is never reset or guessed around; it raises :class:`errors.StateError`.
* Times round-trip exactly as ISO-8601 strings (naive stays naive, aware keeps its offset).
  This module never reads the clock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from narrow2wide.common.durable import write_durably
from narrow2wide.common.errors import CutoffConflict, StateError

log = logging.getLogger("cutoff_store")  # the name the log file has always shown

STORE_VERSION = 1
_FIELDS = ("cutoff", "watermark", "stream_cursor", "insert_cursor")
_CORRUPT_HINT = "restore it from backup or fix it by hand; refusing to guess cutoffs"


@dataclass(frozen=True)
class ShipState:
    """What the store knows about one ship; ``None`` means "not set yet"."""

    cutoff: datetime | None = None
    watermark: datetime | None = None
    stream_cursor: datetime | None = None
    insert_cursor: datetime | None = None  # realtime's server_created_time cursor


class CutoffStore:
    """Cutoffs, watermarks and stream cursors of all ships in one JSON file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        """Remember where the file lives; nothing is read or created until a method needs it."""
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")

    @property
    def path(self) -> Path:
        """The JSON file this store reads and writes."""
        return self._path

    # ------------------------------------------------------------------ reads

    def load(self) -> dict[str, ShipState]:
        """All ships in the file (an empty dict when the file does not exist yet)."""
        with self._locked(exclusive=False):
            return self._read()

    def peek(self) -> dict[str, ShipState]:
        """Like :meth:`load`, but creates nothing (no lock file) when the store does not exist (``--dry-run``)."""
        if not self._path.exists():
            return {}
        return self.load()

    def get(self, ship_id: str) -> ShipState | None:
        """The state of one ship, or ``None`` when the store knows nothing about it."""
        return self.load().get(ship_id)

    # ----------------------------------------------------------------- writes

    def set_cutoff(self, ship_id: str, cutoff: datetime, force: bool = False) -> ShipState:
        """Store the backfill cutoff of a ship.

        Storing the value already stored is a no-op. A different stored cutoff raises
        :class:`errors.CutoffConflict` unless ``force`` is true.
        """
        with self._locked(exclusive=True):
            ships = self._read()
            current = ships.get(ship_id, ShipState())
            if current.cutoff is not None and current.cutoff == cutoff:
                return current
            if cutoff_conflicts(current.cutoff, cutoff, force):
                raise CutoffConflict(
                    f"ship {ship_id}: the stored cutoff is {current.cutoff.isoformat()} but "
                    f"{cutoff.isoformat()} was given; re-run with --force to move it "
                    f"(moving a cutoff can leave a gap or an overlap between backfill and realtime)"
                )
            if current.cutoff is not None:
                log.warning(
                    "ship %s: cutoff moved from %s to %s (--force); check for a gap or overlap",
                    ship_id, current.cutoff.isoformat(), cutoff.isoformat(),
                )
            else:
                log.info("ship %s: cutoff stored: %s", ship_id, cutoff.isoformat())
            new = replace(current, cutoff=cutoff)
            ships[ship_id] = new
            self._write(ships)
            return new

    def ensure_cutoff(self, ship_id: str, default: datetime) -> tuple[datetime, bool]:
        """Return the stored cutoff of a ship, storing ``default`` first when there is none.

        The boolean is true when ``default`` was stored by this call. The read and the write
        happen under one exclusive lock, so concurrent callers all get the same cutoff.
        """
        with self._locked(exclusive=True):
            ships = self._read()
            current = ships.get(ship_id, ShipState())
            if current.cutoff is not None:
                return current.cutoff, False
            ships[ship_id] = replace(current, cutoff=default)
            self._write(ships)
            log.info("ship %s: cutoff stored: %s", ship_id, default.isoformat())
            return default, True

    def ensure_cutoffs(self, ship_ids: list[str], default: datetime) -> dict[str, datetime]:
        """:meth:`ensure_cutoff` for many ships under one lock and one write; returns every ship's cutoff."""
        with self._locked(exclusive=True):
            ships = self._read()
            added = [s for s in ship_ids if ships.get(s, ShipState()).cutoff is None]
            for ship_id in added:
                ships[ship_id] = replace(ships.get(ship_id, ShipState()), cutoff=default)
            if added:
                self._write(ships)
                log.info("cutoff %s stored for %d ship(s): %s", default.isoformat(), len(added),
                         ", ".join(added[:5]) + (" ..." if len(added) > 5 else ""))
            return {s: ships[s].cutoff for s in ship_ids}  # type: ignore[misc]

    def advance(self, field: str, values: dict[str, datetime]) -> dict[str, ShipState]:
        """Advance ``field`` (watermark, stream_cursor or insert_cursor) of many ships in one write.

        A value older than the stored one is ignored, as in :meth:`set_watermark`. A realtime cycle
        over a fleet writes the file once, not once per ship.
        """
        if field not in _FIELDS or field == "cutoff":
            raise ValueError(f"not an advancing field: {field!r}")
        with self._locked(exclusive=True):
            ships = self._read()
            changed = False
            for ship_id, value in values.items():
                current = ships.get(ship_id, ShipState())
                if self._newer(ship_id, field, getattr(current, field), value):
                    ships[ship_id] = replace(current, **{field: value})
                    changed = True
            if changed:
                self._write(ships)
            return {s: ships[s] for s in values if s in ships}

    def set_watermark(self, ship_id: str, watermark: datetime) -> ShipState:
        """Advance the realtime watermark of a ship; an older value than the stored one is ignored."""
        return self._advance(ship_id, "watermark", watermark)

    def set_stream_cursor(self, ship_id: str, cursor: datetime) -> ShipState:
        """Advance the stream cursor of a ship; an older value than the stored one is ignored."""
        return self._advance(ship_id, "stream_cursor", cursor)

    def set_insert_cursor(self, ship_id: str, cursor: datetime) -> ShipState:
        """Advance the realtime server_created_time cursor of a ship; an older value is ignored."""
        return self._advance(ship_id, "insert_cursor", cursor)

    def check_writable(self) -> None:
        """Fail now, with :class:`errors.StateError`, when the store cannot be read or written.

        For a run that will write the store later (a backfill, realtime, a strategy): the file is read
        and parsed (a damaged one raises), and a temp file holding the document is written, synced and
        removed in the store's folder, so a full, read-only or misplaced STATE_DIR is reported before the
        run changes anything. The store file itself is never touched.
        """
        with self._locked(exclusive=True):
            self._write(self._read(), replace=False)

    def remove(self, ship_id: str) -> bool:
        """Forget a ship entirely (for tests and operators); true when it was present."""
        with self._locked(exclusive=True):
            ships = self._read()
            if ship_id not in ships:
                return False
            del ships[ship_id]
            self._write(ships)
            log.info("ship %s: removed from the cutoff store %s", ship_id, self._path)
            return True

    # -------------------------------------------------------------- internals

    def _advance(self, ship_id: str, field: str, value: datetime) -> ShipState:
        return self.advance(field, {ship_id: value})[ship_id]

    def _newer(self, ship_id: str, field: str, stored: datetime | None, value: datetime) -> bool:
        """True when ``value`` moves ``field`` forward (a time zone mix-up raises StateError)."""
        if stored is None:
            return True
        try:
            backwards = value <= stored
        except TypeError as exc:  # naive vs aware
            raise StateError(
                f"ship {ship_id}: cannot compare the new {field} {value.isoformat()} with the stored "
                f"{stored.isoformat()} in {self._path} (one has a time zone, the other not); "
                f"use one convention for all times of a ship"
            ) from exc
        if backwards and value < stored:
            log.debug("ship %s: %s %s is older than the stored %s; keeping the stored one",
                      ship_id, field, value.isoformat(), stored.isoformat())
        return not backwards

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        """Hold ``flock`` on the sidecar lock file (exclusive for writers, shared for readers)."""
        if exclusive:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _write_error(exc, self._path.parent, self._path) from exc
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise _write_error(exc, self._lock_path, self._path) from exc
        else:
            fd = self._open_lock_for_reading()
            if fd is None:
                yield
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _parent_not_a_folder(self) -> StateError:
        """The error for a store whose STATE_DIR is a file, not a folder."""
        return StateError(f"cannot read the cutoff store {self._path}: {self._path.parent} is not a directory; "
                          "point STATE_DIR at a folder")

    def _open_lock_for_reading(self) -> int | None:
        """A descriptor of the lock file for a shared lock, or ``None`` when no lock is possible or needed."""
        try:
            return os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            return None  # no state folder yet, so no file to read either
        except NotADirectoryError as exc:
            raise self._parent_not_a_folder() from exc
        except OSError as exc:
            try:
                return os.open(self._lock_path, os.O_RDONLY)
            except OSError:
                # A read-only STATE_DIR: nobody with our rights can write there, so read without a lock.
                log.debug("cannot open the lock file %s (%s); reading without a lock", self._lock_path, exc)
                return None

    def _read(self) -> dict[str, ShipState]:
        """Parse the file; the caller holds the lock."""
        try:
            raw_bytes = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        except IsADirectoryError as exc:
            raise StateError(f"cutoff store {self._path} is a directory, not a file; move it away") from exc
        except NotADirectoryError as exc:
            raise self._parent_not_a_folder() from exc
        except OSError as exc:
            raise StateError(
                f"cannot read the cutoff store {self._path}: {exc.strerror or exc}; check its permissions"
            ) from exc
        if not raw_bytes.strip():
            self._corrupt("the file is empty (truncated)")
        try:
            raw = json.loads(raw_bytes.decode("utf-8"))
        except UnicodeDecodeError:
            self._corrupt("the file is not UTF-8 text")
        except json.JSONDecodeError as exc:
            self._corrupt(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return self._parse(raw)

    def _parse(self, raw: Any) -> dict[str, ShipState]:
        if not isinstance(raw, dict):
            self._corrupt(f"the top level is a {type(raw).__name__}, expected an object")
        if "version" not in raw:
            self._corrupt("no 'version' key")
        version = raw["version"]
        if type(version) is not int or version != STORE_VERSION:
            raise StateError(
                f"cutoff store {self._path} has version {_short(version)}, this tool reads version {STORE_VERSION}; "
                f"use the tool version that wrote it, or {_CORRUPT_HINT}"
            )
        extra = sorted(set(raw) - {"version", "ships"})
        if extra:
            self._corrupt(f"unknown top-level key(s) {', '.join(map(repr, extra))}")
        ships_raw = raw.get("ships")
        if not isinstance(ships_raw, dict):
            self._corrupt("'ships' is missing or not an object")
        ships: dict[str, ShipState] = {}
        for ship_id, entry in ships_raw.items():
            if not isinstance(entry, dict):
                self._corrupt(f"ship {ship_id!r} is a {type(entry).__name__}, expected an object")
            unknown = sorted(set(entry) - set(_FIELDS))
            if unknown:
                self._corrupt(f"ship {ship_id!r} has unknown field(s) {', '.join(map(repr, unknown))}")
            values: dict[str, datetime | None] = {}
            for name in _FIELDS:
                value = entry.get(name)
                if value is None:
                    values[name] = None
                    continue
                if not isinstance(value, str):
                    self._corrupt(f"ship {ship_id!r} field {name!r} is {_short(value)}, expected an ISO-8601 string")
                try:
                    values[name] = datetime.fromisoformat(value)
                except ValueError:
                    self._corrupt(f"ship {ship_id!r} field {name!r} is not an ISO-8601 time: {_short(value)}")
            ships[ship_id] = ShipState(**values)
        return ships

    def _corrupt(self, what: str) -> NoReturn:
        raise StateError(f"cutoff store {self._path} is corrupt ({what}); {_CORRUPT_HINT}")

    @staticmethod
    def _encode(ships: dict[str, ShipState]) -> bytes:
        """The file's bytes for ``ships``."""
        document = {
            "version": STORE_VERSION,
            "ships": {
                ship_id: {name: _iso(getattr(state, name)) for name in _FIELDS}
                for ship_id, state in ships.items()
            },
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def _write(self, ships: dict[str, ShipState], replace: bool = True) -> None:
        """Replace the file atomically; the caller holds the exclusive lock.

        With ``replace=False`` the synced temp file is removed instead: a trial write that leaves the store as it is.
        """
        try:
            write_durably(self._path, self._encode(ships), replace=replace)
        except OSError as exc:
            raise _write_error(exc, self._path, self._path) from exc


def cutoff_conflicts(stored: datetime | None, given: datetime, force: bool) -> bool:
    """True when ``given`` may not replace the ``stored`` cutoff: it differs and ``force`` was not given."""
    return stored is not None and stored != given and not force


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _write_error(exc: OSError, where: Path, store: Path) -> StateError:
    """Turn an OS error during a write into one actionable line."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StateError(
            f"STATE_DIR {store.parent} is full (no space left on device) while writing {store}; "
            f"free some space and re-run"
        )
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StateError(
            f"{where} is not writable ({exc.strerror or 'permission denied'}); "
            f"fix the permissions or point STATE_DIR at a writable folder"
        )
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return StateError(
            f"cannot write the cutoff store {store}: {store.parent} is not a directory; point STATE_DIR at a folder"
        )
    return StateError(f"cannot write the cutoff store {store}: {exc.strerror or exc}")
