"""The daemon's memory across restarts (the last backup's result), written atomically."""

import json
import os
from pathlib import Path
from typing import Any

import structlog

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


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def last_backup(self) -> dict[str, Any] | None:
        """Return the last backup's result as saved, or None when there is none (or it is unreadable)."""
        try:
            state = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("Ignoring an unreadable state file", path=str(self.path), error=str(error))
            return None
        last = state.get("last_backup") if isinstance(state, dict) else None
        return last if isinstance(last, dict) else None

    def save_last_backup(self, result: dict[str, Any]) -> None:
        """Save the result; a failure to do so is logged, never fatal: the backup itself is what matters."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps({"last_backup": result}, indent=2).encode())
        except OSError as error:
            log.error(
                "Could not save the daemon state", path=str(self.path), error=error.strerror or str(error)
            )
