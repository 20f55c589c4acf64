"""Verification right after a backup is made (backup.verify_after): the local copy (or the spool's parts,
when none is kept) restored into a scratch database and counted, before anything is sent, so that the
captions say whether it restored."""

import io
from collections.abc import Callable
from typing import Any

from . import restore
from .config import Config
from .errors import Cancelled, TgbackupdError
from .manifest import Manifest
from .progress import Progress
from .stopping import Stop
from .storage import BackupDirectory, spooled_parts


class Verification:
    def __init__(
        self, config: Config, directory: BackupDirectory, text: Callable[[BaseException | str], str]
    ):
        """`text` makes an error fit for logs and the chat (secrets scrubbed)."""
        self._config = config
        self._directory = directory
        self._text = text

    def run(
        self, manifest: Manifest, bound: Any, stop: Stop, errors: list[str]
    ) -> tuple[bool | None, str | None]:
        """Restore the backup into a scratch database: (whether it restored, what its captions say), or
        (None, None) when tgbackupd stopped meanwhile. What goes wrong is added to `errors`."""
        bound.info(f"Verifying backup: {manifest.name}", file=manifest.name)
        quiet = Progress(io.StringIO())  # inside the daemon, the log reports instead

        def left_behind(problem: str) -> None:
            errors.append(self._text(problem))
            bound.error("The verification's scratch database was left behind", error=errors[-1])

        try:
            if self._config.backup.keep_local:
                checked = restore.from_local_file(self._directory.path / manifest.name, manifest, quiet)
            else:
                spooled = spooled_parts(self._directory.path, manifest)
                checked = restore.from_parts(manifest, spooled, quiet)
            identity = self._config.encryption.identity
            checked = restore.unlock(checked, (identity,) if identity else ())
            report = restore.verify(self._config.database, checked, quiet, stop, left_behind)
        except Cancelled:
            bound.warning("Backup verification stopped because tgbackupd is stopping", file=manifest.name)
            return None, None
        except TgbackupdError as error:
            reason = self._text(error)
            bound.error("Backup verification failed", file=manifest.name, error=reason)
            errors.append(f"verification failed: {reason}")
            return False, f"NOT VERIFIED: {reason}"[:300]
        bound.info("Backup verified", file=manifest.name, tables=len(report.tables), rows=report.rows)
        return True, report.summary()
