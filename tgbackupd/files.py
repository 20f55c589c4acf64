"""File helpers that the backup directory, the state store and the Telegram client all stand on: writing a
file so that a crash leaves the old content or the new, and naming a byte range of a file."""

import errno
import fcntl
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_LOCK_POLL_S = 0.1


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
    crash leaves either the old content or the new, never half of one. The file gets `mode` whatever
    the umask (a file others must read, such as the metrics file, gets it under UMask=0077 too). The
    temporary file has a name of its own, made new (never through a link another user planted in a
    directory they may write, such as node_exporter's), so two writers never write into one file."""
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def wait_for_lock(
    descriptor: int, wait_s: float, cancel: threading.Event | None = None, shared: bool = False
) -> bool:
    """Take a flock on `descriptor` (exclusive, or `shared`), waiting up to `wait_s` seconds (less if
    `cancel` is set): True once held, False if another process still holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if cancel is not None and cancel.is_set():
                return False
            time.sleep(_LOCK_POLL_S)


def open_lock_file(path: Path) -> int:
    """Open (or create, 0600) a lock or note file of ours; never through a symbolic link someone planted,
    and never anything but a regular file. Raise OSError otherwise."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return descriptor


def open_for_reading(path: Path) -> BinaryIO:
    """A regular file of ours to read, never through a symbolic link nor a pipe someone left in its place.
    Raise OSError otherwise."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(descriptor, "rb")
