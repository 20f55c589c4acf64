"""One backup, start to end: pg_dump → gzip → file in place (hashed in parts as it is written) →
retention → verification, when asked → parts, manifest and pin in the chat → one summary event."""

import dataclasses
import io
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from . import messages, restore
from .clock import Clock
from .config import Config
from .delivery import Delivered, Delivery, pinned_manifest_ref
from .errors import Cancelled, TgbackupdError
from .manifest import Manifest, ManifestRef, plan_parts
from .pgdump import run_pg_dump
from .pipeline import Digest, FileWriter, GzipCompressor, PartDigests
from .progress import Progress
from .redaction import scrub
from .state import StateFile, write_atomically
from .storage import BackupDirectory
from .telegram import BotApi, TelegramError

CHUNK_BYTES = 1024 * 1024
_START_EVENTS = {
    "scheduled": "Starting automated database backup...",
    "manual": "Starting manual database backup...",
}

log = structlog.stdlib.get_logger("tgbackupd.backup")


@dataclass(frozen=True)
class BackupResult:
    """What one backup came to. `delivery` is sent, local_only, failed or not_attempted; `message_id`
    is the manifest's (the message that is pinned); `verified` is None when verification did not run."""

    trigger: str
    database: str
    started_at: str
    duration_s: float
    file: str | None = None
    path: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    parts: int | None = None
    verified: bool | None = None
    delivery: str = "not_attempted"
    message_id: int | None = None
    pin_error: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Outcome:
    """What the steps after the dump found, gathered for the result."""

    def __init__(self) -> None:
        self.verified: bool | None = None
        self.verification: str | None = None
        self.delivery = "not_attempted"
        self.delivered: Delivered | None = None
        self.errors: list[str] = []


class Backup:
    """Makes backups of the configured database; `run` never raises for an expected failure."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        cancel: threading.Event | None = None,
        bot_factory: Callable[[Config, threading.Event], BotApi | None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock or Clock()
        self.cancel = cancel or threading.Event()
        self._bot_factory = bot_factory or make_bot
        self._directory = BackupDirectory(config.backup.directory, config.backup.prefix)
        self._state = StateFile(config.daemon.state_file)
        self._server = socket.gethostname()

    def run(self, trigger: str) -> BackupResult:
        started = self._clock.now()
        began = self._clock.monotonic()
        bound = log.bind(trigger=trigger, database=self._config.database.name)
        bound.info(_START_EVENTS.get(trigger, "Starting database backup..."))
        base: dict[str, Any] = {
            "trigger": trigger,
            "database": self._config.database.name,
            "started_at": started.isoformat(timespec="seconds"),
        }
        bot = self._bot_factory(self._config, self.cancel)
        try:
            try:
                manifest = self._make(started, bound)
            except TgbackupdError as error:
                result = BackupResult(**base, duration_s=self._since(began), error=self._text(error))
                self._summarize(result, bound)
                self._report_failure(bot, result.error or "", bound)
                self._state.record(result.to_dict(), None, None)
                return result
            outcome = self._after_dump(bot, manifest, self._since(began), bound)
        finally:
            if bot is not None:
                bot.close()
        delivered = outcome.delivered
        result = BackupResult(
            **base,
            duration_s=self._since(began),
            file=manifest.name,
            path=str(self._directory.path / manifest.name),
            size_bytes=manifest.size_bytes,
            sha256=manifest.sha256,
            parts=len(manifest.parts),
            verified=outcome.verified,
            delivery=outcome.delivery,
            message_id=delivered.manifest_ref.message_id if delivered else None,
            pin_error=delivered.pin_error if delivered else None,
            error="; ".join(outcome.errors) or None,
        )
        self._summarize(result, bound)
        self._state.record(
            result.to_dict(),
            delivered.manifest if delivered else manifest,
            delivered.manifest_ref if delivered else None,
        )
        return result

    def _since(self, began: float) -> float:
        return round(self._clock.monotonic() - began, 3)

    def _text(self, error: BaseException | str) -> str:
        return scrub(str(error), self._config.secrets())

    def _make(self, started: datetime, bound: Any) -> Manifest:
        """Dump, compress and put the file in place, hashed in parts as it is written; prune old backups.
        Return the backup's manifest (without message ids yet). Raise on any failure."""
        self._directory.ensure()
        with self._directory.lock():
            for stale in self._directory.remove_partials():
                bound.warning("Removed an unfinished backup file left by an interrupted run", file=stale)
            name = self._directory.unused_name(started)
            bound.info(f"Creating database backup: {name.removesuffix('.gz')}", file=name.removesuffix(".gz"))
            bound.info(
                f"Compressing backup: {name}",
                file=name,
                compression_level=self._config.backup.compression_level,
            )
            with self._directory.new_file(name) as stream:
                parts = PartDigests(self._config.telegram.part_size_bytes, FileWriter(stream))
                digest = Digest(parts)
                pipeline = GzipCompressor(self._config.backup.compression_level, digest)
                with run_pg_dump(self._config.database) as dump:
                    for chunk in dump.chunks(CHUNK_BYTES):
                        if self.cancel.is_set():
                            raise Cancelled("the backup was stopped because tgbackupd is stopping")
                        pipeline.write(chunk)
                    dump.wait()
                pipeline.close()
            manifest = Manifest(
                name=name,
                database=self._config.database.name,
                host=self._config.database.describe(),
                server=self._server,
                created_at=started.isoformat(timespec="seconds"),
                size_bytes=digest.size,
                sha256=digest.sha256,
                parts=plan_parts(name, parts.parts),
                previous=None,
            )
            write_atomically(self._directory.path / manifest.file_name, manifest.to_json())
            bound.info(
                f"Backup created successfully: ({messages.human_size(manifest.size_bytes)})",
                file=name,
                path=str(self._directory.path / name),
                size_bytes=manifest.size_bytes,
                sha256=manifest.sha256,
                parts=len(manifest.parts),
            )
            try:
                removed = self._directory.prune(self._config.backup.keep)
            except TgbackupdError as error:
                bound.error("Could not remove old backups", error=self._text(error))
            else:
                if removed:
                    bound.info("Removed old backups", removed=removed, keep=self._config.backup.keep)
        return manifest

    def _after_dump(self, bot: BotApi | None, manifest: Manifest, duration_s: float, bound: Any) -> _Outcome:
        outcome = _Outcome()
        path = self._directory.path / manifest.name
        if self._config.backup.verify_after:
            self._verify(path, manifest, outcome, bound)
        facts = messages.BackupFacts(
            file=manifest.name,
            database=self._config.database.describe(),
            server=self._server,
            size_bytes=manifest.size_bytes,
            sha256=manifest.sha256,
            duration_s=duration_s,
            verification=outcome.verification,
        )
        self._deliver(bot, path, manifest, facts, outcome, bound)
        return outcome

    def _verify(self, path: Path, manifest: Manifest, outcome: _Outcome, bound: Any) -> None:
        bound.info(f"Verifying backup: {manifest.name}", file=manifest.name)
        quiet = Progress(io.StringIO())  # inside the daemon, the log reports instead
        try:
            checked = restore.from_local_file(path, manifest, quiet)
            report = restore.verify(self._config.database, checked, quiet)
        except TgbackupdError as error:
            reason = self._text(error)
            outcome.verified = False
            outcome.verification = f"NOT VERIFIED: {reason}"[:300]
            outcome.errors.append(f"verification failed: {reason}")
            bound.error("Backup verification failed", file=manifest.name, error=reason)
            return
        outcome.verified = True
        outcome.verification = report.summary()
        bound.info(
            "Backup verified",
            file=manifest.name,
            tables=len(report.tables),
            rows=report.rows,
        )

    def _deliver(
        self,
        bot: BotApi | None,
        path: Path,
        manifest: Manifest,
        facts: messages.BackupFacts,
        outcome: _Outcome,
        bound: Any,
    ) -> None:
        chat_id = self._config.telegram.chat_id
        if bot is None or chat_id is None:
            bound.warning("Telegram is not configured: the backup is kept locally only", path=str(path))
            outcome.delivery = "local_only"
            return
        bound.info(f"Sending backup to Telegram chat: {chat_id}", chat_id=chat_id, file=manifest.name)
        try:
            delivered = Delivery(bot, chat_id, bound).send(
                path,
                dataclasses.replace(manifest, verified=outcome.verified),
                facts,
                self._directory.path / manifest.file_name,
                lambda: self._state.latest_manifest_ref() or self._pinned(bot, chat_id, bound),
            )
        except (TelegramError, Cancelled) as error:
            reason = self._text(error)
            bound.error("Failed to send backup to Telegram", chat_id=chat_id, error=reason)
            outcome.delivery = "failed"
            outcome.errors.append(f"the backup was made but not sent to Telegram: {reason}")
            if not self.cancel.is_set():
                self._report_failure(bot, outcome.errors[-1], bound, retry=False)
            return
        outcome.delivery = "sent"
        outcome.delivered = delivered
        bound.info(
            "Backup sent to Telegram successfully",
            chat_id=chat_id,
            message_id=delivered.manifest_ref.message_id,
            parts=len(delivered.manifest.parts),
        )
        if delivered.pin_error:
            bound.warning(
                "Could not pin the backup's manifest in the chat", error=self._text(delivered.pin_error)
            )

    def _pinned(self, bot: BotApi, chat_id: str, bound: Any) -> ManifestRef | None:
        """On a machine with no catalogue yet, continue the chain from the manifest pinned in the chat."""
        try:
            return pinned_manifest_ref(bot, chat_id)
        except TelegramError as error:
            bound.warning("Could not read the chat's pinned manifest", error=self._text(error))
            return None

    def _report_failure(self, bot: BotApi | None, reason: str, bound: Any, retry: bool = True) -> None:
        chat_id = self._config.telegram.chat_id
        if bot is None or chat_id is None or self.cancel.is_set():
            return
        notice = messages.failure_notice(
            database=self._config.database.describe(), server=self._server, reason=reason
        )
        try:
            bot.send_message(chat_id, notice, retry=retry)
        except (TelegramError, Cancelled) as error:
            bound.warning("Could not tell the Telegram chat", chat_id=chat_id, error=self._text(error))

    def _summarize(self, result: BackupResult, bound: Any) -> None:
        """One event per backup carrying everything a person filters on."""
        fields = {key: value for key, value in result.to_dict().items() if key not in ("trigger",)}
        if result.succeeded:
            bound.info("Backup routine completed successfully", **fields)
        elif self.cancel.is_set():
            bound.warning("Backup routine cancelled", **fields)
        else:
            bound.error("Backup routine failed", **fields)


def make_bot(config: Config, cancel: threading.Event) -> BotApi | None:
    """Return a Bot API client, or None when Telegram is not configured (backups stay local)."""
    telegram = config.telegram
    if not telegram.configured:
        return None
    assert telegram.bot_token is not None
    bot = BotApi(
        telegram.api_url,
        telegram.bot_token,
        timeout_s=telegram.timeout,
        retries=telegram.retries,
        cancel=cancel,
    )
    retry_log = log.bind(chat_id=telegram.chat_id)
    bot.on_retry = lambda method, attempt, delay, reason: retry_log.warning(
        "Telegram request failed; retrying", method=method, attempt=attempt, retry_in_s=delay, error=reason
    )
    return bot
