"""The backup directory: names, files written under a temporary name and renamed into place, retention."""

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from .errors import StorageError
from .manifest import manifest_name

SUFFIX = ".sql.gz"
_PARTIAL_SUFFIX = ".partial"
_FILE_MODE = 0o600  # a backup holds the whole database
_DIRECTORY_MODE = 0o700


@dataclass(frozen=True)
class StoredBackup:
    name: str
    path: Path
    size_bytes: int


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


class BackupDirectory:
    """The backups of one database in one directory, named `<prefix>_backup_YYYYMMDD_HHMMSS.sql.gz`."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self._pattern = re.compile(rf"^{re.escape(prefix)}_backup_[0-9]{{8}}_[0-9]{{6}}{re.escape(SUFFIX)}$")

    def ensure(self) -> None:
        try:
            self.path.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"cannot create the backup directory {self.path}: {_describe(error)} "
                "(set backup.directory to a directory the tgbackupd user can write)"
            ) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageError(
                f"the backup directory {self.path} is not writable by this user (uid {os.getuid()}): "
                "fix its owner or permissions, or set backup.directory"
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock for one backup, so that a `tgbackupd --once` from cron and the
        daemon never write into the same directory at once, and leftovers found under it are stale."""
        try:
            descriptor = os.open(
                self.path / ".tgbackupd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE
            )
        except OSError as error:
            raise StorageError(f"cannot create the lock file in {self.path}: {_describe(error)}") from None
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageError(
                    f"another tgbackupd process is making a backup in {self.path} right now; "
                    "try again when it has finished"
                ) from None
            yield
        finally:
            os.close(descriptor)

    def unused_name(self, when: datetime) -> str:
        """Return the file name for a backup made at `when`; the next free second if that one is taken."""
        while True:
            name = f"{self.prefix}_backup_{when:%Y%m%d_%H%M%S}{SUFFIX}"
            if not (self.path / name).exists() and not (self.path / self._partial_name(name)).exists():
                return name
            when += timedelta(seconds=1)

    def partial_path(self, name: str) -> Path:
        """Where the backup called `name` is written until it is complete."""
        return self.path / self._partial_name(name)

    @staticmethod
    def _partial_name(name: str) -> str:
        """Hidden, and not matching the backup pattern, so nothing mistakes it for a backup."""
        return f".{name}{_PARTIAL_SUFFIX}"

    @contextlib.contextmanager
    def new_file(self, name: str) -> Iterator[BinaryIO]:
        """Yield a file to write the backup into. On a clean exit it is fsynced and renamed to `name`;
        on an exception it is removed, so a failed backup leaves nothing that looks like one."""
        partial = self.path / self._partial_name(name)
        try:
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        except OSError as error:
            raise StorageError(f"cannot create a file in {self.path}: {_describe(error)}") from None
        stream = os.fdopen(descriptor, "wb")
        try:
            yield stream
            stream.close()
            os.rename(partial, self.path / name)
            self._sync_directory()
        except BaseException:
            stream.close()
            partial.unlink(missing_ok=True)
            raise

    def _sync_directory(self) -> None:
        descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def backups(self) -> list[StoredBackup]:
        """Return this database's backups, newest first (the timestamp in the name orders them)."""
        try:
            entries = list(os.scandir(self.path))
        except OSError:  # missing or unusable: reported where it matters, when a backup is made
            return []
        found = [
            StoredBackup(entry.name, Path(entry.path), entry.stat().st_size)
            for entry in entries
            if self._pattern.match(entry.name) and entry.is_file(follow_symlinks=False)
        ]
        return sorted(found, key=lambda backup: backup.name, reverse=True)

    def prune(self, keep: int, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove all but the newest `keep` backups (and their manifests), except those in `protect`
        (not delivered yet); never touch any other file."""
        removed = []
        for backup in self.backups()[keep:]:
            if backup.name in protect:
                continue
            try:
                backup.path.unlink()
                (self.path / manifest_name(backup.name)).unlink(missing_ok=True)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise StorageError(
                    f"cannot remove the old backup {backup.path}: {_describe(error)}"
                ) from None
            removed.append(backup.name)
        return removed

    def remove_partials(self) -> list[str]:
        """Remove files left by a backup that was interrupted by a crash or power loss."""
        pattern = re.compile(rf"^\.{re.escape(self.prefix)}_backup_.*{re.escape(SUFFIX + _PARTIAL_SUFFIX)}$")
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.path):
                if pattern.match(entry.name):
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(entry.name)
        return removed
