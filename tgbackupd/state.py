"""The daemon's memory across restarts: the last backup's result and the catalogue of backups (each
with its manifest and where that manifest is in the chat), written atomically."""

import contextlib
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from .formats import SUFFIX_PATTERN
from .manifest import Manifest, ManifestError, ManifestRef
from .storage import spool_path

CATALOGUE_LIMIT = 500
_BACKUP_NAME = re.compile(rf"^.+_backup_(?P<stamp>[0-9]{{8}}_[0-9]{{6}}){SUFFIX_PATTERN}$")

log = structlog.stdlib.get_logger("tgbackupd.state")


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write to a temporary file, fsync it, rename it over `path` and fsync the directory, so that a
    crash leaves either the old content or the new, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _mapping(value: Any) -> dict[str, Any]:
    """A JSON object from the state file, or an empty one where something else stands."""
    return value if isinstance(value, dict) else {}


def _where_kept(directory: Path, entry: dict[str, Any], manifest: dict[str, Any]) -> bool | str:
    """True for a backup file here; `spool` while parts of a backup not kept here wait to be sent (only
    those not delivered are looked for: a delivered one left none)."""
    name = str(entry.get("name"))
    if not entry.get("spooled"):
        return (directory / name).is_file()
    if entry.get("delivery") == "sent":
        return False
    count = len(manifest.get("parts") or [])
    return "spool" if any(spool_path(directory, name, i).is_file() for i in range(1, count + 1)) else False


def _stamp(name: str) -> str:
    """The `YYYYMMDD_HHMMSS` of a backup's name, which orders backups by age."""
    match = _BACKUP_NAME.match(name)
    return match["stamp"] if match else ""


def _entries(state: dict[str, Any]) -> list[dict[str, Any]]:
    entries = state.get("catalogue")
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


class StateFile:
    """The state on disk. Every change is a read-modify-write under a lock on a sidecar file, so that
    the daemon and a `tgbackupd --once` from cron never lose each other's updates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()

    def _read(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("Ignoring an unreadable state file", path=str(self.path), error=str(error))
            return {}
        return state if isinstance(state, dict) else {}

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        """Yield the state to change in place; it is written back atomically. A failure to write is
        logged, never fatal: the backup itself is what matters."""
        with self._thread_lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                lock = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as error:
                log.error("Could not save the daemon state", path=str(self.path), error=error.strerror)
                yield self._read()
                return
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                state = self._read()
                yield state
                write_atomically(self.path, json.dumps(state, indent=2).encode())
            except OSError as error:
                log.error(
                    "Could not save the daemon state", path=str(self.path), error=error.strerror or str(error)
                )
            finally:
                os.close(lock)

    def last_backup(self) -> dict[str, Any] | None:
        """Return the last backup's result as saved, or None when there is none (or it is unreadable)."""
        last = self._read().get("last_backup")
        return last if isinstance(last, dict) else None

    def catalogue(self) -> list[dict[str, Any]]:
        """Return the catalogue, newest first: entries with `manifest`, `manifest_ref` and `delivery`."""
        return _entries(self._read())

    def entry(self, name: str) -> dict[str, Any] | None:
        return next((entry for entry in self.catalogue() if entry.get("name") == name), None)

    def pending(self) -> list[dict[str, Any]]:
        """Backups waiting for delivery, oldest first: the order they must reach the chat in."""
        waiting = [entry for entry in self.catalogue() if entry.get("delivery") == "pending"]
        return sorted(waiting, key=lambda entry: _stamp(str(entry.get("name"))))

    def latest_manifest_ref(self) -> ManifestRef | None:
        """Where the newest delivered manifest is in the chat, for the next manifest's `previous`."""
        delivered = [entry for entry in self.catalogue() if isinstance(entry.get("manifest_ref"), dict)]
        for entry in sorted(delivered, key=lambda entry: _stamp(str(entry.get("name"))), reverse=True):
            reference = entry["manifest_ref"]
            if reference.get("file_id"):
                return ManifestRef(**reference)
        return None

    def find(self, name: str) -> tuple[Manifest, ManifestRef | None] | None:
        """Return the catalogued manifest of the backup called `name` (or `latest`)."""
        for entry in self.catalogue():
            if name in ("latest", entry.get("name")):
                try:
                    manifest = Manifest.from_json(json.dumps(entry["manifest"]).encode())
                except (KeyError, ManifestError):
                    continue
                reference = entry.get("manifest_ref")
                return manifest, ManifestRef(**reference) if isinstance(reference, dict) else None
        return None

    def listing(self, directory: Path) -> list[dict[str, Any]]:
        """Every backup known here, newest first: those in the catalogue, and any other backup file in
        the directory (made before the catalogue existed, or by the system tgbackupd replaces)."""
        rows: dict[str, dict[str, Any]] = {}
        for entry in self.catalogue():
            name = str(entry.get("name"))
            if name in rows:
                continue
            manifest = _mapping(entry.get("manifest"))
            reference = _mapping(entry.get("manifest_ref"))
            rows[name] = {
                "name": name,
                "created_at": manifest.get("created_at"),
                "size_bytes": manifest.get("size_bytes"),
                "sha256": manifest.get("sha256"),
                "parts": len(manifest.get("parts") or []),
                "verified": manifest.get("verified"),
                "delivery": entry.get("delivery"),
                "manifest_message_id": reference.get("message_id"),
                "local": _where_kept(directory, entry, manifest),
                "warning": entry.get("warning"),
                "last_error": entry.get("last_error") if entry.get("delivery") == "pending" else None,
            }
        found = directory.glob("*_backup_*.sql.*") if directory.is_dir() else iter(())
        for path in found:
            if _BACKUP_NAME.match(path.name) and path.name not in rows:
                rows[path.name] = {
                    "name": path.name,
                    "created_at": None,
                    "size_bytes": path.stat().st_size,
                    "sha256": None,
                    "parts": None,
                    "verified": None,
                    "delivery": None,
                    "manifest_message_id": None,
                    "local": True,
                    "warning": None,
                    "last_error": None,
                }
        return sorted(rows.values(), key=lambda row: _stamp(row["name"]), reverse=True)

    def record_result(self, result: dict[str, Any]) -> None:
        with self._changing() as state:
            state["last_backup"] = result

    def add_entry(self, entry: dict[str, Any]) -> None:
        with self._changing() as state:
            others = [other for other in _entries(state) if other.get("name") != entry["name"]]
            state["catalogue"] = [entry, *others][:CATALOGUE_LIMIT]

    def update_entry(self, name: str, **fields: Any) -> None:
        with self._changing() as state:
            for entry in _entries(state):
                if entry.get("name") == name:
                    entry.update(fields)
            state["catalogue"] = _entries(state)
