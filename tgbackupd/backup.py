"""One backup, start to end: pg_dump → gzip → file in place → retention → Telegram → one summary event."""

import dataclasses
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from . import messages
from .clock import Clock
from .config import Config
from .errors import Cancelled, TgbackupdError
from .pgdump import run_pg_dump
from .pipeline import Digest, FileWriter, GzipCompressor
from .redaction import scrub
from .storage import BackupDirectory
from .telegram import BotApi, TelegramError, TelegramTooLarge

CHUNK_BYTES = 1024 * 1024
_START_EVENTS = {
    "scheduled": "Starting automated database backup...",
    "manual": "Starting manual database backup...",
}

log = structlog.stdlib.get_logger("tgbackupd.backup")


@dataclass(frozen=True)
class BackupResult:
    """What one backup came to; `delivery` is sent, local_only, too_large, failed or not_attempted."""

    trigger: str
    database: str
    started_at: str
    duration_s: float
    file: str | None = None
    path: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    delivery: str = "not_attempted"
    message_id: int | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Made:
    file: str
    path: str
    size_bytes: int
    sha256: str


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
                made = self._make(started, bound)
            except TgbackupdError as error:
                result = BackupResult(**base, duration_s=self._since(began), error=self._text(error))
                self._report_failure(bot, result, bound)
                return result
            base.update(dataclasses.asdict(made))
            delivery, message_id, error = self._deliver(bot, made, self._since(began), bound)
            result = BackupResult(
                **base, duration_s=self._since(began), delivery=delivery, message_id=message_id, error=error
            )
        finally:
            if bot is not None:
                bot.close()
        self._summarize(result, bound)
        return result

    def _since(self, began: float) -> float:
        return round(self._clock.monotonic() - began, 3)

    def _text(self, error: BaseException) -> str:
        return scrub(str(error), self._config.secrets())

    def _make(self, started: Any, bound: Any) -> _Made:
        """Dump, compress and put the file in place; prune old backups. Raise on any failure."""
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
                digest = Digest(FileWriter(stream))
                pipeline = GzipCompressor(self._config.backup.compression_level, digest)
                with run_pg_dump(self._config.database) as dump:
                    for chunk in dump.chunks(CHUNK_BYTES):
                        if self.cancel.is_set():
                            raise Cancelled("the backup was stopped because tgbackupd is stopping")
                        pipeline.write(chunk)
                    dump.wait()
                pipeline.close()
            made = _Made(name, str(self._directory.path / name), digest.size, digest.sha256)
            bound.info(
                f"Backup created successfully: ({messages.human_size(made.size_bytes)})",
                file=made.file,
                path=made.path,
                size_bytes=made.size_bytes,
                sha256=made.sha256,
            )
            try:
                removed = self._directory.prune(self._config.backup.keep)
            except TgbackupdError as error:
                bound.error("Could not remove old backups", error=self._text(error))
            else:
                if removed:
                    bound.info("Removed old backups", removed=removed, keep=self._config.backup.keep)
        return made

    def _deliver(
        self, bot: BotApi | None, made: _Made, duration_s: float, bound: Any
    ) -> tuple[str, int | None, str | None]:
        """Send the file to the chat; return (delivery, message id, error)."""
        telegram = self._config.telegram
        if bot is None or telegram.chat_id is None:
            bound.warning("Telegram is not configured: the backup is kept locally only", path=made.path)
            return "local_only", None, None
        chat_id = telegram.chat_id
        if made.size_bytes > telegram.max_upload_bytes:
            return self._refuse_too_large(bot, made, bound)
        bound.info(f"Sending backup to Telegram chat: {chat_id}", chat_id=chat_id, file=made.file)
        caption = messages.backup_caption(
            file=made.file,
            database=self._config.database.describe(),
            server=self._server,
            size_bytes=made.size_bytes,
            sha256=made.sha256,
            duration_s=duration_s,
        )
        try:
            sent = bot.send_document(chat_id, self._directory.path / made.file, made.file, caption)
        except TelegramTooLarge as error:
            return self._refuse_too_large(bot, made, bound, reason=self._text(error))
        except (TelegramError, Cancelled) as error:
            reason = self._text(error)
            bound.error("Failed to send backup to Telegram", chat_id=chat_id, error=reason)
            error_text = f"the backup was made but not sent to Telegram: {reason}"
            if not self.cancel.is_set():
                notice = messages.failure_notice(
                    database=self._config.database.describe(), server=self._server, reason=error_text
                )
                self._tell_chat(bot, notice, bound, retry=False)
            return "failed", None, error_text
        bound.info("Backup sent to Telegram successfully", chat_id=chat_id, message_id=sent.message_id)
        return "sent", sent.message_id, None

    def _refuse_too_large(
        self, bot: BotApi, made: _Made, bound: Any, reason: str | None = None
    ) -> tuple[str, None, str]:
        limit_mb = self._config.telegram.max_upload_mb
        error = reason or (
            f"{made.file} is {messages.human_size(made.size_bytes)}, over the {limit_mb} MB upload limit "
            f"(telegram.max_upload_mb); it is kept locally at {made.path}"
        )
        bound.error(
            "Backup is too large to send to Telegram",
            file=made.file,
            size_bytes=made.size_bytes,
            max_upload_mb=limit_mb,
            error=error,
        )
        notice = messages.too_large_notice(
            file=made.file,
            database=self._config.database.describe(),
            server=self._server,
            path=made.path,
            size_bytes=made.size_bytes,
            limit_mb=limit_mb,
        )
        self._tell_chat(bot, notice, bound)
        return "too_large", None, error

    def _report_failure(self, bot: BotApi | None, result: BackupResult, bound: Any) -> None:
        self._summarize(result, bound)
        if bot is not None and not self.cancel.is_set():
            notice = messages.failure_notice(
                database=self._config.database.describe(),
                server=self._server,
                reason=result.error or "unknown",
            )
            self._tell_chat(bot, notice, bound)

    def _tell_chat(self, bot: BotApi, text: str, bound: Any, retry: bool = True) -> None:
        chat_id = self._config.telegram.chat_id
        assert chat_id is not None
        try:
            bot.send_message(chat_id, text, retry=retry)
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
