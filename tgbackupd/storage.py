"""The backup directory: names, files written under a temporary name and renamed into place, removing
the backups retention drops (retention.py decides which), and the spool of parts waiting for Telegram when
backups are not kept here (backup.keep = 0)."""

import contextlib
import glob
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from .errors import StorageError
from .files import FileSlice, open_for_reading, sync_directory, wait_for_lock, write_atomically
from .formats import DUMP_EXTENSIONS, ENCRYPTED_SUFFIX, FORMATS, GZIP, SUFFIX_PATTERN, backup_suffix, stem
from .manifest import PART_FILE, SUFFIX, Manifest, ManifestRef, Part, is_backup_name, manifest_name, part_name

_PARTIAL_SUFFIX = ".partial"
_RECEIPTS_SUFFIX = ".sent"
_LOCK_NAME = ".tgbackupd.lock"
_NEWEST_MANIFEST = ".tgbackupd-newest-manifest"
_MAX_RECEIPTS_BYTES = 16 * 1024 * 1024
_FILE_MODE = 0o600  # a backup holds the whole database
_DIRECTORY_MODE = 0o700


@dataclass(frozen=True)
class StoredBackup:
    name: str
    path: Path
    size_bytes: int


class DirectoryBusy(StorageError):
    """Another process (or job) holds the directory's lock: it is making a backup there right now."""


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


def checked_name(name: str) -> str:
    """`name`, if it is one tgbackupd gives a backup. Raise StorageError otherwise."""
    if not is_backup_name(name):
        raise StorageError(f"{name!r} is not the name of a tgbackupd backup; it is not used as a file name")
    return name


def spool_path(directory: Path, name: str, index: int, count: int) -> Path:
    """Where part `index` of `count` of a backup that is not kept here waits until it is sent. Named as
    in the chat (numbered even when it is the only one), so that a folder of them restores
    (`tgbackupctl restore DIR`) or joins with `cat`."""
    return directory / part_name(checked_name(name), index, count, numbered=True)


def spooled_parts(directory: Path, manifest: Manifest) -> dict[int, Path]:
    """The parts of a backup not kept here that still wait in the spool, by part number."""
    count = len(manifest.parts)
    located = {part.index: spool_path(directory, manifest.name, part.index, count) for part in manifest.parts}
    return {index: path for index, path in located.items() if path.is_file()}


def _create(path: Path) -> BinaryIO:
    """A new file only its owner may read (a backup holds the whole database)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    except OSError as error:
        raise StorageError(f"cannot create a file in {path.parent}: {_describe(error)}") from None
    return os.fdopen(descriptor, "wb")


class BackupDirectory:
    """The backups of one database in one directory, named `<prefix>_backup_YYYYMMDD_HHMMSS.sql.gz` (or
    `.sql.zst`, `.dump.gz`, `.dump.zst`, any with `.age` when encrypted: new ones end in `suffix`, and
    retention counts them all as one series)."""

    def __init__(self, path: Path, prefix: str, suffix: str = backup_suffix("plain", GZIP)) -> None:
        self.path = path
        self.prefix = prefix
        self._suffix = suffix
        self._pattern = re.compile(rf"^{re.escape(prefix)}_backup_[0-9]{{8}}_[0-9]{{6}}{SUFFIX_PATTERN}$")
        self._stem_pattern = re.compile(rf"^{re.escape(prefix)}_backup_[0-9]{{8}}_[0-9]{{6}}$")

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
    def lock(self, wait_s: float = 0.0, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold the directory's lock for one backup, so that a `tgbackupd --once` from cron and the
        daemon never write into the same directory at once, and leftovers found under it are stale.
        Wait up to `wait_s` for another process to let go of it (a prune holds it for a moment). Raise
        DirectoryBusy if it still holds it."""
        try:
            descriptor = os.open(self.path / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        except OSError as error:
            raise StorageError(f"cannot create the lock file in {self.path}: {_describe(error)}") from None
        try:
            if not wait_for_lock(descriptor, wait_s, cancel):
                raise DirectoryBusy(
                    f"another tgbackupd process is making a backup in {self.path} right now; "
                    "try again when it has finished"
                )
            yield
        finally:
            os.close(descriptor)

    def unused_name(self, when: datetime, taken: Callable[[str], bool] = lambda name: False) -> str:
        """Return the file name for a backup made at `when`; the next free second if that one is taken
        here or `taken` says so (the catalogue: a backup not kept here leaves no file behind)."""
        while True:
            name = f"{self.prefix}_backup_{when:%Y%m%d_%H%M%S}{self._suffix}"
            files = (
                self.path / name,
                self.path / self._partial_name(name),
                self.path / manifest_name(name),  # shared by the formats
            )
            if not any(path.exists() for path in files) and not self._part_files(name) and not taken(name):
                return name
            when += timedelta(seconds=1)

    @staticmethod
    def _partial_name(name: str) -> str:
        """Hidden, and not matching the backup pattern, so nothing mistakes it for a backup."""
        return f".{name}{_PARTIAL_SUFFIX}"

    @contextlib.contextmanager
    def new_file(self, name: str) -> Iterator["WholeFileWriter"]:
        """Yield a writer for the backup, kept here as one file. On a clean exit it is fsynced and renamed
        to `name`; on an exception it is removed, so a failed backup leaves nothing that looks like one."""
        partial = self.path / self._partial_name(name)
        stream = _create(partial)
        try:
            yield WholeFileWriter(stream, partial)
            stream.close()
            os.rename(partial, self.path / name)
            sync_directory(self.path)
        except BaseException:
            stream.close()
            partial.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def new_spool(self, name: str, expected_parts: int) -> Iterator["SpoolWriter"]:
        """Yield a writer for a backup that is not kept here: one file per part, each removed once Telegram
        has it, named for `expected_parts` until the count is known. On an exception every part file of
        it is removed."""
        writer = SpoolWriter(self, name, expected_parts)
        try:
            yield writer
            sync_directory(self.path)
        except BaseException:
            writer.abandon()
            self.remove_spooled(name)
            raise

    def spool_path(self, name: str, index: int, count: int) -> Path:
        return spool_path(self.path, name, index, count)

    def rename_spooled(self, name: str, named_for: int, count: int) -> None:
        """Give the parts of backup `name` still in the spool, named for `named_for` parts, the names of
        `count` parts where the width of their numbers differs (`.999` and `.1000` → `.0999`, `.1000`)."""
        for index in range(1, count + 1):
            before, after = self.spool_path(name, index, named_for), self.spool_path(name, index, count)
            if before != after:
                with contextlib.suppress(FileNotFoundError):  # sent and removed (or never written)
                    os.rename(before, after)

    def part_slice(self, manifest: Manifest, part: Part, spooled: bool) -> FileSlice:
        """The bytes of one part: its own file in the spool, or a byte range of the backup file."""
        if spooled:
            return FileSlice(
                self.spool_path(manifest.name, part.index, len(manifest.parts)), 0, part.size_bytes
            )
        return FileSlice(self._whole(manifest.name), part.offset, part.size_bytes)

    def _whole(self, name: str) -> Path:
        return self.path / checked_name(name)

    def first_missing(self, manifest: Manifest, spooled: bool) -> Path | None:
        """A file that a backup's parts not yet sent are read from, and that is gone, if any."""
        if not spooled:
            whole = self._whole(manifest.name)
            return None if whole.is_file() else whole
        for part in manifest.parts:
            path = self.spool_path(manifest.name, part.index, len(manifest.parts))
            if part.message_id is None and not path.is_file():
                return path
        return None

    def first_resized(self, manifest: Manifest, spooled: bool) -> tuple[Path, int, int] | None:
        """A file that a backup's parts not yet sent are read from, whose size is not the one recorded when
        it was written: (the file, its size now, the size recorded). Such a file would send parts that do
        not match their SHA-256."""
        if spooled:
            expected = [
                (self.spool_path(manifest.name, part.index, len(manifest.parts)), part.size_bytes)
                for part in manifest.parts
                if part.message_id is None
            ]
        else:
            expected = [(self._whole(manifest.name), manifest.size_bytes)]
        for path, recorded in expected:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # missing: first_missing says so
            if size != recorded:
                return path, size, recorded
        return None

    def _receipts(self, name: str) -> Path:
        """Where the chat's message of each part of a spooled backup is noted as it is sent: the part's
        file is removed then, so after a lost state file this is what says the part is in the chat."""
        return self.path / f".{stem(checked_name(name))}{_RECEIPTS_SUFFIX}"

    def spooled_part_sent(
        self, name: str, index: int, count: int, message_id: int, file_id: str | None
    ) -> None:
        """Part `index` of `count` of a backup not kept here reached the chat: note where, then remove its
        file."""
        receipt = json.dumps({"index": index, "message_id": message_id, "file_id": file_id}) + "\n"
        descriptor = os.open(
            self._receipts(name),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            _FILE_MODE,
        )
        try:
            os.write(descriptor, receipt.encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self.spool_path(name, index, count).unlink(missing_ok=True)

    def receipts(self, name: str, log: Any) -> dict[int, tuple[int, str | None]]:
        """The parts of a spooled backup noted as sent: (message id, file id) by part number. Lines that do
        not parse (a write cut by a crash) are skipped: that part is then sent again."""
        noted: dict[int, tuple[int, str | None]] = {}
        path = self._receipts(name)
        try:
            with open_for_reading(path) as stream:
                text = stream.read(_MAX_RECEIPTS_BYTES).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return noted
        except OSError as error:
            log.warning(
                "Cannot read where the spooled parts went; they are sent again",
                path=str(path),
                error=str(error),
            )
            return noted
        for line in text.splitlines():
            try:
                receipt = json.loads(line)
            except ValueError:
                continue
            if not isinstance(receipt, dict):
                continue
            index, message_id, file_id = (
                receipt.get("index"),
                receipt.get("message_id"),
                receipt.get("file_id"),
            )
            if (
                isinstance(index, int)
                and isinstance(message_id, int)
                and not isinstance(message_id, bool)
                and (file_id is None or isinstance(file_id, str))
            ):
                noted[index] = (message_id, file_id)
        return noted

    def _part_files(self, name: str) -> list[Path]:
        """The spooled part files of backup `name`, whatever the width of their numbers."""
        return [
            path
            for path in self.path.glob(f"{glob.escape(name)}.[0-9][0-9][0-9]*")
            if (match := PART_FILE.match(path.name)) and match["name"] == name
        ]

    def remove_spooled(self, name: str) -> None:
        """Remove what is left of a backup that is not kept here: its parts, receipts and manifest."""
        for path in self._part_files(name):
            path.unlink(missing_ok=True)
        self._receipts(name).unlink(missing_ok=True)
        (self.path / manifest_name(name)).unlink(missing_ok=True)

    def every_manifest(self) -> list[Path]:
        """The manifest files of every database's backups in the directory, whatever their prefix: the
        directory is tgbackupd's own, and several databases (`[[databases]]`, those an `all = true` entry
        finds, a server's globals) keep their backups in it, all of which a rebuilt catalogue must know."""
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return []
        return sorted(
            Path(entry.path)
            for entry in entries
            if entry.name.endswith(SUFFIX) and is_backup_name(entry.name.removesuffix(SUFFIX), stem_only=True)
        )

    def where_kept(self, name: str, spooled: bool, delivered: bool, part_count: int) -> bool | str:
        """True for a backup file here; `spool` while parts of a backup not kept here wait to be sent (only
        those not delivered are looked for: a delivered one left none)."""
        if not is_backup_name(name):
            return False
        if not spooled:
            return (self.path / name).is_file()
        if delivered:
            return False
        waiting = any(
            self.spool_path(name, index, part_count).is_file() for index in range(1, part_count + 1)
        )
        return "spool" if waiting else False

    def has_whole_file(self, name: str) -> bool:
        return self._whole(name).is_file()

    def keeps_whole(self, backup_stem: str) -> bool:
        """Whether the backup of this name (without its format's ending) is kept here as one file."""
        return any(
            (self.path / f"{backup_stem}{backup_suffix(dump_format, known)}{encrypted}").is_file()
            for known in FORMATS.values()
            for dump_format in DUMP_EXTENSIONS
            for encrypted in ("", ENCRYPTED_SUFFIX)
        )

    def note_newest_manifest(self, reference: ManifestRef) -> None:
        """Where the newest manifest in the chat is, kept here too: after a lost state file, the chain in
        the chat is walked from it when nothing of ours is pinned (the bot may not pin)."""
        note = {"name": reference.name, "message_id": reference.message_id, "file_id": reference.file_id}
        write_atomically(self.path / _NEWEST_MANIFEST, json.dumps(note).encode())

    def newest_manifest(self) -> ManifestRef | None:
        """The note note_newest_manifest left, if it is there and holds together."""
        try:
            with open_for_reading(self.path / _NEWEST_MANIFEST) as stream:
                note = json.loads(stream.read(4096))
        except (OSError, ValueError):
            return None
        if not isinstance(note, dict):
            return None
        name, message_id, file_id = note.get("name"), note.get("message_id"), note.get("file_id")
        if isinstance(name, str) and isinstance(message_id, int) and isinstance(file_id, str):
            return ManifestRef(name, message_id, file_id)
        return None

    def looks_mounted(self) -> bool:
        """Whether the directory is the one backups were written to: it exists and holds the lock file that
        every backup made in it leaves. An empty mount point (its file system not mounted yet) does not."""
        return (self.path / _LOCK_NAME).exists()

    def spooled(self) -> list[StoredBackup]:
        """The part files waiting in the spool for Telegram, of every database (as every_manifest): the
        status of the one spool they share."""
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return []
        waiting = []
        for entry in entries:
            match = PART_FILE.match(entry.name)
            if match and is_backup_name(match["name"]):
                with contextlib.suppress(FileNotFoundError):  # sent and removed meanwhile
                    waiting.append(StoredBackup(entry.name, Path(entry.path), entry.stat().st_size))
        return waiting

    def backups(self) -> list[StoredBackup]:
        """Return this database's backups, newest first (the timestamp in the name orders them)."""
        return self._backup_files(lambda name: self._pattern.match(name) is not None)

    def every_backup(self) -> list[StoredBackup]:
        """The backup files of every database in the directory, whatever their prefix (as every_manifest),
        by name: what `tgbackupctl list` shows. Retention and clean-up keep to backups(), one series."""
        return self._backup_files(is_backup_name)

    def _backup_files(self, ours: Callable[[str], bool]) -> list[StoredBackup]:
        try:
            entries = list(os.scandir(self.path))
        except OSError:  # missing or unusable: reported where it matters, when a backup is made
            return []
        found = [
            StoredBackup(entry.name, Path(entry.path), entry.stat().st_size)
            for entry in entries
            if ours(entry.name) and entry.is_file(follow_symlinks=False)
        ]
        return sorted(found, key=lambda backup: backup.name, reverse=True)

    def remove(self, names: Iterable[str]) -> list[str]:
        """Remove these backups of this series (and their manifests), as retention decided; never touch any
        other file. Return those removed (one already gone is not)."""
        removed = []
        for name in names:
            if not self._pattern.match(name):
                raise StorageError(f"{name!r} is not a backup of {self.prefix}; it is not removed")
            path = self.path / name
            try:
                path.unlink()
                (self.path / manifest_name(name)).unlink(missing_ok=True)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise StorageError(f"cannot remove the old backup {path}: {_describe(error)}") from None
            removed.append(name)
        return removed

    def remove_leftovers(self, waiting: set[str] | frozenset[str]) -> list[str]:
        """Remove what a backup interrupted by a crash or power loss left: files still being written, and
        the spooled parts (and their receipts) of a dump that never finished, which has no manifest. Parts
        of a finished dump stay even when the catalogue does not know it (its recording failed), and so
        do those of backups `waiting` to be sent: they may be the only copy."""
        # Anchored on the date and time like the names, so that no other series' files match (`shop`'s
        # clean-up never reaches `.shop_backup_archive_backup_…partial`, a database so named).
        partial = re.compile(
            rf"^\.{re.escape(self.prefix)}_backup_[0-9]{{8}}_[0-9]{{6}}{SUFFIX_PATTERN}(\.[0-9]{{3,}})?"
            rf"{re.escape(_PARTIAL_SUFFIX)}$"
        )
        receipts = re.compile(rf"^\.(?P<stem>.+){re.escape(_RECEIPTS_SUFFIX)}$")
        waiting_stems = {stem(name) for name in waiting}

        def unfinished(backup_stem: str) -> bool:
            return (
                self._stem_pattern.match(backup_stem) is not None
                and backup_stem not in waiting_stems
                and not (self.path / (backup_stem + SUFFIX)).exists()
            )

        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.path):
                spooled = PART_FILE.match(entry.name)
                receipt = receipts.match(entry.name)
                if (
                    partial.match(entry.name)
                    or (spooled and unfinished(stem(spooled["name"])))
                    or (receipt and unfinished(receipt["stem"]))
                ):
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(entry.name)
        return sorted(removed)


class WholeFileWriter:
    """Writes a backup into one file, the copy kept locally; its parts are byte ranges of it."""

    def __init__(self, stream: BinaryIO, path: Path) -> None:
        self._stream = stream
        self._path = path  # its name while it is written

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    def end_part(self) -> None:
        self._stream.flush()  # so that the part can be read (and uploaded) from the file already

    def close(self) -> None:
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def part(self, index: int, offset: int, size: int) -> FileSlice:
        return FileSlice(self._path, offset, size)

    def counted(self, count: int) -> None:
        """The dump ended in `count` parts: byte ranges of one file, they have no names to change."""


class SpoolWriter:
    """Writes a backup as one file per part, each under a hidden name until it is complete and durable.
    While the dump runs the count is not known: parts are named for `expected_parts` until `counted`."""

    def __init__(self, directory: BackupDirectory, name: str, expected_parts: int) -> None:
        self._directory = directory
        self._name = name
        self._expected_parts = expected_parts
        self._index = 1
        self._stream: BinaryIO | None = None

    def _path(self, index: int) -> Path:
        return self._directory.spool_path(self._name, index, self._expected_parts)

    def _partial(self) -> Path:
        final = self._path(self._index)
        return final.with_name(f".{final.name}{_PARTIAL_SUFFIX}")

    def write(self, data: bytes) -> None:
        if self._stream is None:
            self._stream = _create(self._partial())
        self._stream.write(data)

    def end_part(self) -> None:
        if self._stream is None:  # an empty backup is one empty part
            self._stream = _create(self._partial())
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        self._stream = None
        os.rename(self._partial(), self._path(self._index))
        self._index += 1

    def close(self) -> None:
        self.end_part()

    def part(self, index: int, offset: int, size: int) -> FileSlice:
        return FileSlice(self._path(index), 0, size)

    def counted(self, count: int) -> None:
        """The dump ended in `count` parts: the parts still here take the names of that count when it
        has another width than the one expected (1000 parts where 999 were expected: `.0001`, …)."""
        self._directory.rename_spooled(self._name, self._expected_parts, count)
        self._expected_parts = count

    def abandon(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._partial().unlink(missing_ok=True)
