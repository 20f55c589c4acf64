"""File helpers that the backup directory, the state store and the Telegram client all stand on: writing a
file so that a crash leaves the old content or the new, and naming a byte range of a file."""

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileSlice:
    """Bytes [offset, offset + length) of a file on disk: one part of a backup, or all of it."""

    path: Path
    offset: int
    length: int

    @classmethod
    def whole(cls, path: Path) -> "FileSlice":
        return cls(path, 0, path.stat().st_size)


def sync_directory(path: Path) -> None:
    """Make a rename or a removal in the directory `path` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
    sync_directory(path.parent)
