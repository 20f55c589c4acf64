"""One backup, start to end: pg_dump → gzip → file in place (hashed in parts as it is written) →
verification, when asked → the outbox, drained to the chat → retention (retention.py) → one summary
event."""

import contextlib
import dataclasses
import errno
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from . import messages, psql
from .clock import Clock
from .config import Config
from .delivery import EarlyUploader, Sending
from .encryption import AgeEncryptor
from .errors import Cancelled, StorageError, TgbackupdError
from .events import Events, Finished, Started
from .files import write_atomically
from .formats import DUMP_EXTENSIONS, stem
from .manifest import GLOBALS_FORMAT, Manifest, part_name, plan_parts
from .notices import ChatNotices
from .outbox import Outbox, delivery_text
from .pgdump import DumpProcess, run_pg_dump, run_pg_dumpall_globals
from .pipeline import Count, Digest, PartDigests
from .redaction import scrub
from .retention import Pruner
from .state import StateError, StateStore
from .states import DeliveryState, Trigger
from .stopping import Stop
from .storage import BackupDirectory
from .telegram import BotApi, ChatPacer, SentMessage
from .verification import Verification

CHUNK_BYTES = 1024 * 1024
# A dump this much smaller than the previous one of the same database is flagged: tools that reported
# an empty dump as success have let retention delete the last good backup.
SHRINK_WARNING_RATIO = 0.5
# How long a backup waits for another process (the daemon, or `tgbackupd --once`) to finish delivering
# before it leaves its own backup in the outbox for that process to send.
DELIVERY_WAIT_S = 300.0
# A compressed dump is about a quarter of the database's size on the server (bench/speed.py: 862 MB on
# disk, 212 MB as gzip -6): indexes and free space are not dumped, and compression does the rest.
DATABASE_BYTES_PER_DUMP_BYTE = 4
# How long a backup waits for the backup directory's lock another process holds (a prune: moments).
DIRECTORY_WAIT_S = 30.0
_START_EVENTS = {
    Trigger.SCHEDULED: "Starting automated database backup...",
    Trigger.CATCH_UP: "Starting automated database backup...",
    Trigger.MANUAL: "Starting manual database backup...",
}

log = structlog.stdlib.get_logger("tgbackupd.backup")


@dataclass(frozen=True)
class BackupResult:
    """What one backup came to. `delivery` is sent, pending (kept, and sent again later), local_only,
    lost or not_attempted; `message_id` is the manifest's (the pinned message); `verified` is None
    when verification did not run; `warning` flags a suspicious dump that was kept and sent anyway.
    `delivery_error` is the part of `error` that says why it did not reach the chat: a later delivery
    takes it out again."""

    trigger: str
    database: str
    started_at: str
    duration_s: float
    file: str | None = None
    path: str | None = None
    size_bytes: int | None = None
    sql_bytes: int | None = None
    sha256: str | None = None
    parts: int | None = None
    verified: bool | None = None
    delivery: DeliveryState = DeliveryState.NOT_ATTEMPTED
    message_id: int | None = None
    pin_error: str | None = None
    warning: str | None = None
    error: str | None = None
    delivery_error: str | None = None

    def __post_init__(self) -> None:
        # Status, logs and scripts read `delivery`: a word outside DeliveryState would mislead them all.
        object.__setattr__(self, "delivery", DeliveryState(self.delivery))

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Made:
    manifest: Manifest
    sql_bytes: int
    sent_early: frozenset[int]  # parts that reached the chat while the dump ran
    mixed_part_names: bool = False  # some of those keep names of another width in the chat


class Backup:
    """Makes backups of the configured database; `run` never raises for an expected failure."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        directory: BackupDirectory,
        *,
        clock: Clock | None = None,
        cancel: threading.Event | None = None,
        bot_factory: Callable[[Config, threading.Event], BotApi | None] | None = None,
        shared_with: "Backup | None" = None,
        globals_only: bool = False,
        role_passwords: bool = False,
        events: Events | None = None,
    ) -> None:
        """`shared_with`: the backup of another database whose chat pacer and outbox this one uses, so that
        all databases' backups reach the chat in the order they were made, in one chain of manifests.
        `globals_only`: the server's roles and tablespaces (pg_dumpall), with their password hashes when
        `role_passwords`, instead of the database. `events`: who hears this backup's events (pings, the
        metrics file); one for all the backups that share `shared_with`'s outbox."""
        self._config = config
        self.events: Events = shared_with.events if shared_with else events or Events()
        self._clock = clock or Clock()
        self.cancel: threading.Event = shared_with.cancel if shared_with else cancel or threading.Event()
        # One pacer for every client this process makes: one delivery and the next share the chat's limits.
        self._pacer: ChatPacer = (
            shared_with._pacer if shared_with else ChatPacer(config.telegram.messages_per_minute, self._clock)
        )
        self._bot_factory = bot_factory or (
            lambda config, cancel: make_bot(config, cancel, self._pacer, self._clock)
        )
        self._directory = directory
        self.store = store
        self.outbox: Outbox = (
            shared_with.outbox
            if shared_with
            else Outbox(config, store, directory, self._clock, log, Sending(self._pacer), self.events)
        )
        self.pruner = Pruner(
            directory,
            store,
            config.backup.keep_rules,
            config.secrets(),
            chat_id=config.telegram.chat_id if config.telegram.delete_old else None,
            clock=self._clock,
        )
        self._server = socket.gethostname()
        self._notices = ChatNotices(config.telegram.chat_id, self._server, self._text)
        self._verification = Verification(config, directory, self._text)
        self._globals = globals_only
        self._role_passwords = role_passwords
        # What results, size judgements and logs call this series of backups: its database, or its prefix
        # for the server's globals (another series than the database it connects to).
        self.series = config.backup.prefix if globals_only else config.database.name
        self.prefix = config.backup.prefix  # what status, metrics and file names call the series
        self.describe = (
            f"globals (roles, tablespaces) of {config.database.server()}"
            if globals_only
            else config.database.describe()
        )

    def run(self, trigger: Trigger) -> BackupResult:
        started = self._clock.now()
        began = self._clock.monotonic()
        bound = log.bind(trigger=trigger, database=self.series)
        bound.info(_START_EVENTS.get(trigger, "Starting database backup..."))
        base: dict[str, Any] = {
            "trigger": trigger,
            "database": self.series,
            "started_at": started.isoformat(timespec="seconds"),
        }
        self.events.started(Started(self.prefix, self.series, self.describe, trigger, base["started_at"]))
        bot = self._bot_factory(self._config, self.cancel)
        stop = Stop(self.cancel, self._config.backup.timeout, self._clock)
        try:
            try:
                made = self._make(started, bound, bot, stop)
            except TgbackupdError as error:
                result = BackupResult(**base, duration_s=self._since(began), error=self._text(error))
                self._report_failure(bot, result.error or "", bound)
            else:
                result = self._after_dump(bot, made, base, began, bound, stop)
                # After delivery: a backup delivered just now is no longer protected.
                self.pruner.prune(bound, bot)
            result = self._record(result, bot, bound)
        finally:
            if bot is not None:
                bot.close()
        self._summarize(result, bound)
        self.events.finished(Finished(self.prefix, result))
        return result

    def fail(self, trigger: Trigger, reason: str) -> BackupResult:
        """Report a backup that could not start (its server's databases could not be listed) as a failed
        one: its own result, chat notice and `Backup routine failed` event."""
        bound = log.bind(trigger=trigger, database=self.series)
        result = BackupResult(
            trigger=trigger,
            database=self.series,
            started_at=self._clock.now().isoformat(timespec="seconds"),
            duration_s=0.0,
            error=self._text(reason),
        )
        bot = self._bot_factory(self._config, self.cancel)
        try:
            self._report_failure(bot, result.error or "", bound)
            result = self._record(result, bot, bound)
        finally:
            if bot is not None:
                bot.close()
        self._summarize(result, bound)
        self.events.finished(Finished(self.prefix, result))
        return result

    def _record(self, result: BackupResult, bot: BotApi | None, bound: Any) -> BackupResult:
        """Save the result for status and catch-up; a result that cannot be saved makes the backup fail."""
        try:
            self.store.record_result(result.to_dict(), self._config.backup.prefix)
        except StateError as error:
            reason = self._text(error)
            if result.succeeded:  # else the chat heard of this backup's failure already
                self._report_failure(bot, reason, bound)
            return dataclasses.replace(result, error="; ".join(filter(None, (result.error, reason))))
        return result

    def redeliver(self) -> dict[str, Any] | None:
        """Send what waits in the outbox (the daemon calls this when a retry is due). Return the last
        backup's result as recorded now when something was sent (it may be that backup, now sent)."""
        bot = self._bot_factory(self._config, self.cancel)
        if bot is None:
            return None
        try:
            try:
                drained = self.outbox.drain(bot, self.cancel)
            except Cancelled:
                log.warning(
                    "Redelivery stopped because tgbackupd is stopping; the backups stay in the outbox"
                )
                return None
            except StateError as error:
                log.error("Redelivery failed; it is tried again later", error=self._text(error))
                return None
            if drained.busy:
                log.info(
                    "Another tgbackupd process is delivering backups; trying again shortly",
                    holder=drained.busy,
                )
                return None
            if not drained.sent:
                return None
            self.pruner.prune(log, bot)  # what was kept only because it was undelivered may go now
        finally:
            bot.close()
        try:
            return self.store.last_result()
        except StateError:
            return None  # status keeps what it had; the store's problem is reported where it is used

    def clean_up_after_crash(self) -> None:
        """Remove what an interrupted run left behind, unless another process is backing up right now."""
        try:
            with self._directory.lock():
                for stale in self._directory.remove_leftovers(self.outbox.undelivered()):
                    log.warning("Removed an unfinished backup file left by an interrupted run", file=stale)
        except StateError as error:
            log.error(
                "Not cleaning the backup directory: the catalogue cannot be read", error=self._text(error)
            )
        except TgbackupdError as error:
            log.info("Not cleaning the backup directory now", reason=self._text(error))

    @property
    def config(self) -> Config:
        """This series' configuration (its database, prefix and the shared Telegram settings)."""
        return self._config

    @property
    def server(self) -> str:
        """This machine's name, as the chat's notices give it."""
        return self._server

    @property
    def globals_only(self) -> bool:
        return self._globals

    def open_bot(self) -> BotApi | None:
        """A Bot API client paced with this process's others (None when Telegram is not configured);
        the caller closes it."""
        return self._bot_factory(self._config, self.cancel)

    def tell_chat(self, problem: str) -> None:
        """Tell the chat about a problem found outside a backup (at start, say)."""
        bot = self._bot_factory(self._config, self.cancel)
        if bot is None:
            return
        try:
            # One attempt: this runs before the daemon reports ready, and Telegram may be down too.
            self._notices.problem(bot, self._text(problem), log)
        finally:
            bot.close()

    def _since(self, began: float) -> float:
        return round(self._clock.monotonic() - began, 3)

    def _text(self, error: BaseException | str) -> str:
        return scrub(str(error), self._config.secrets())

    def _make(self, started: datetime, bound: Any, bot: BotApi | None, stop: Stop) -> _Made:
        """Dump, compress and put the file in place, hashed in parts as it is written. Raise on any
        failure, having removed what it wrote."""
        self._directory.ensure()
        with self._directory.lock(DIRECTORY_WAIT_S, self.cancel):
            for stale in self._directory.remove_leftovers(self.outbox.undelivered()):
                bound.warning("Removed an unfinished backup file left by an interrupted run", file=stale)
            name = self._directory.unused_name(started, self.store.second_taken)
            dumped = stem(name) + DUMP_EXTENSIONS[self._config.backup.dump_format]
            bound.info(f"Creating database backup: {dumped}", file=dumped)
            bound.info(
                f"Compressing backup: {name}",
                file=name,
                compression=self._config.backup.compression.name,
                compression_level=self._config.backup.compression_level,
            )
            sends_early = self._sends_during_dump(bot)
            # Only the spool's files and the parts sent during the dump are named before the count is known.
            named_early = sends_early or not self._config.backup.keep_local
            expected_parts = self._expected_parts(stop) if named_early else 1
            early = self._early_uploader(bot, name, expected_parts, bound) if sends_early else None
            try:
                made = self._dump_into(name, started, expected_parts, early, bound, stop)
            except OSError as error:
                raise self._write_failed(error) from None
            bound.info(
                f"Backup created successfully: ({messages.human_size(made.manifest.size_bytes)})",
                file=name,
                path=str(self._directory.path / name) if self._config.backup.keep_local else None,
                size_bytes=made.manifest.size_bytes,
                sql_bytes=made.sql_bytes,
                sha256=made.manifest.sha256,
                parts=len(made.manifest.parts),
            )
        return made

    def _expected_parts(self, stop: Stop) -> int:
        """How many parts this backup will likely have, to name the parts written and sent before the dump
        ends (their numbers are as wide as the count, see manifest.part_name): as many as the newest
        backup of this database (a database grows slowly from one night to the next), else its size on
        the server over DATABASE_BYTES_PER_DUMP_BYTE. Raise StateError if the catalogue cannot be read."""
        size = self.store.newest_size_bytes(self.series)
        if size is None and self._globals:
            return 1  # a few kilobytes of roles
        if size is None:
            try:
                size = psql.database_size_bytes(self._config.database, stop) // DATABASE_BYTES_PER_DUMP_BYTE
            except TgbackupdError:
                return 1  # no guess: pg_dump says next what is wrong with the database
        return max(1, -(-size // self._config.telegram.part_size_bytes))

    def _sends_during_dump(self, bot: BotApi | None) -> bool:
        """Upload parts during the dump only when nothing older waits (the chat gets backups in order)
        and no verification must come first."""
        telegram = self._config.telegram
        return (
            bot is not None
            and telegram.chat_id is not None
            and telegram.upload_while_dumping
            and not self._config.backup.verify_after
            and not self.outbox.pending_count
        )

    def _early_uploader(
        self, bot: BotApi | None, name: str, expected_parts: int, bound: Any
    ) -> EarlyUploader:
        """When the backup is not kept here, each part leaves the spool once sent, and the dump waits while
        backup.spool_parts of them are queued."""
        telegram = self._config.telegram
        assert bot is not None and telegram.chat_id is not None
        spooled = not self._config.backup.keep_local
        return EarlyUploader(
            bot,
            telegram.chat_id,
            name,
            self.describe,
            bound,
            expected_parts,
            self.outbox.sending,
            max_waiting=self._config.backup.spool_parts if spooled else 0,
            after_sent=(
                (
                    lambda index, sent: self._directory.spooled_part_sent(
                        name, index, expected_parts, sent.message_id, sent.file_id
                    )
                )
                if spooled
                else None
            ),
        )

    def _dump_into(
        self,
        name: str,
        started: datetime,
        expected_parts: int,
        early: EarlyUploader | None,
        bound: Any,
        stop: Stop,
    ) -> _Made:
        part_size = self._config.telegram.part_size_bytes
        kept = self._config.backup.keep_local
        with (
            self._directory.new_file(name) if kept else self._directory.new_spool(name, expected_parts)
        ) as writer:

            def part_done(index: int, size: int, sha256: str) -> None:
                assert early is not None
                early.part_ready(index, sha256, writer.part(index, (index - 1) * part_size, size))

            parts = PartDigests(part_size, writer, part_done if early else None)
            digest = Digest(parts)
            backup = self._config.backup
            recipients = self._config.encryption.recipients
            encryptor = AgeEncryptor(recipients, digest) if recipients else None
            try:  # from here on, age runs: the `finally` ends it, also if the compressor cannot start
                sql = Count(
                    backup.compression.compressor(
                        backup.compression_level, backup.compression_threads, encryptor or digest
                    )
                )
                with self._run_dump(stop) as dump:
                    for chunk in dump.chunks(CHUNK_BYTES):
                        sql.write(chunk)
                    dump.wait()  # raises the reason when it was ended: stopping, or backup.timeout
                sql.close()
                if early is not None:
                    early.counted(len(parts.parts), digest.size)
            finally:
                if encryptor is not None:
                    encryptor.abort()  # age, when the dump failed before it was closed
                # Before the file is renamed (or removed): the uploads read it under its partial name.
                sent = early.finish() if early is not None else {}
            writer.counted(len(parts.parts))
            if early is not None:
                sent = self._named_for_the_count(name, early, sent, len(parts.parts), bound)
            mixed = (
                any(early.part_name(index) != part_name(name, index, len(parts.parts)) for index in sent)
                if early
                else False
            )
            planned = plan_parts(name, parts.parts)
            manifest = Manifest(
                name=name,
                database=self.series,
                host=self.describe,
                server=self._server,
                created_at=started.isoformat(timespec="seconds"),
                size_bytes=digest.size,
                sha256=digest.sha256,
                parts=tuple(
                    dataclasses.replace(
                        part, message_id=sent[part.index].message_id, file_id=sent[part.index].file_id
                    )
                    if part.index in sent
                    else part
                    for part in planned
                ),
                previous=None,
                dump_format=GLOBALS_FORMAT if self._globals else backup.dump_format,
                compression=self._config.backup.compression.name,
                encrypted=bool(recipients),
                recipients=recipients,
            )
            write_atomically(self._directory.path / manifest.file_name, manifest.to_json())
        return _Made(manifest, sql.size, frozenset(sent), mixed)

    def _run_dump(self, stop: Stop) -> contextlib.AbstractContextManager[DumpProcess]:
        if self._globals:
            return run_pg_dumpall_globals(self._config.database, self._role_passwords, stop=stop)
        return run_pg_dump(self._config.database, stop=stop, dump_format=self._config.backup.dump_format)

    def _named_for_the_count(
        self, name: str, early: EarlyUploader, sent: dict[int, SentMessage], count: int, bound: Any
    ) -> dict[int, SentMessage]:
        """The parts sent during the dump, by number, that may stay as they are in the chat. They were named
        before the count was known; when it has another width than expected (1000 parts where 999 were
        expected), their names would not sort with the others. A backup kept here sends them again under
        the right names (the copies sent stay in the chat, referred to by nothing, as the parts of a dump
        that failed). One not kept here no longer has their bytes: they stay, and the manifest names them
        rightly and finds them by their message."""
        misnamed = sorted(index for index in sent if early.part_name(index) != part_name(name, index, count))
        if not misnamed:
            return sent
        names = f"{early.part_name(misnamed[0])} … {early.part_name(misnamed[-1])}"
        if self._config.backup.keep_local:
            bound.warning(
                "Parts sent during the dump are sent again, named for the number of parts the backup has",
                file=name,
                parts=count,
                expected_parts=early.expected_parts,
                sent_again=len(misnamed),
                named_before=names,
            )
            return {index: message for index, message in sent.items() if index not in misnamed}
        bound.warning(
            "Parts sent during the dump keep names of another width in the chat: tgbackupctl restore finds "
            f"them through the manifest; to join them by hand with cat, name them as the manifest does "
            f"({part_name(name, misnamed[0], count)} …) first",
            file=name,
            parts=count,
            expected_parts=early.expected_parts,
            named_before=names,
        )
        return sent

    def _write_failed(self, error: OSError) -> StorageError:
        where = self._directory.path
        if error.errno == errno.ENOSPC:
            # With keep = 0 the parts already wait for the upload: what is left to lower is how many.
            lower = "backup.keep" if self._config.backup.keep_local else "backup.spool_parts"
            return StorageError(
                f"the backup directory {where} is full (No space left on device); the unfinished file was "
                f"removed. Free space there, lower {lower}, or set backup.directory to a larger disk"
            )
        return StorageError(f"writing the backup into {where} failed: {error.strerror or error}")

    def _after_dump(
        self, bot: BotApi | None, made: _Made, base: dict[str, Any], began: float, bound: Any, stop: Stop
    ) -> BackupResult:
        """Queue the backup, then verify it when asked, then deliver it. Queued first, so that a stop or a
        crash during a long verification leaves it in the outbox rather than nowhere; nothing is sent
        before the verification's result is in its captions (delivery only starts after it)."""
        manifest = made.manifest
        errors: list[str] = []
        kept = self._config.backup.keep_local
        facts = self._queue(bot, made, began, errors, bound)
        verified = None
        if self._config.backup.verify_after:
            verified, verification = self._verification.run(manifest, bound, stop, errors)
            if verified is not None and facts is not None:
                self._record_verified(
                    manifest.name,
                    verified,
                    dataclasses.replace(facts, duration_s=self._since(began), verification=verification),
                    errors,
                    bound,
                )
        before_delivery = len(errors)
        if facts is not None:
            delivery, message_id, pin_error = self._deliver(bot, manifest.name, errors, bound)
        else:
            delivery, message_id, pin_error = DeliveryState.NOT_ATTEMPTED, None, None
        delivery_error = "; ".join(errors[before_delivery:]) or None
        return BackupResult(
            **base,
            duration_s=self._since(began),
            file=manifest.name,
            path=str(self._directory.path / manifest.name) if kept else None,
            size_bytes=manifest.size_bytes,
            sql_bytes=made.sql_bytes,
            sha256=manifest.sha256,
            parts=len(manifest.parts),
            verified=verified,
            delivery=delivery,
            message_id=message_id,
            pin_error=pin_error,
            warning=facts.warning if facts is not None else None,
            error="; ".join(errors) or None,
            delivery_error=delivery_error,
        )

    def _queue(
        self, bot: BotApi | None, made: _Made, began: float, errors: list[str], bound: Any
    ) -> messages.BackupFacts | None:
        """Judge the dump's size, then put the backup in the catalogue (and the outbox). Return what its
        captions say, or None when it could not be recorded (the reason added to `errors`)."""
        try:
            warning = self._shrink_warning(made)
            if warning:
                bound.warning("Backup looks wrong; it is kept and sent, but check it", warning=warning)
            facts = messages.BackupFacts(
                file=made.manifest.name,
                database=self.describe,
                server=self._server,
                size_bytes=made.manifest.size_bytes,
                sha256=made.manifest.sha256,
                duration_s=self._since(began),
                warning=warning,
                mixed_part_names=made.mixed_part_names,
            )
            self.outbox.add(
                made.manifest,
                facts,
                made.sql_bytes,
                warning,
                made.sent_early,
                spooled=not self._config.backup.keep_local,
            )
        except StateError as error:
            # Not recorded, so not sent: a delivery nobody remembers could not be resumed nor chained.
            # The files stay, and the next delivery (or start) reads them back into the catalogue.
            errors.append(
                "the backup was made but could not be recorded, so it is not sent to Telegram: "
                f"{self._text(error)}. Its files stay in {self._directory.path}; tgbackupd records "
                "and sends it as soon as the state file can be written again (at the next delivery or start)"
            )
            self._report_failure(bot, errors[-1], bound)
            return None
        return facts

    def _record_verified(
        self, name: str, verified: bool, facts: messages.BackupFacts, errors: list[str], bound: Any
    ) -> None:
        """Put the verification's result in the queued backup's captions and manifest."""
        try:
            self.store.record_verified(name, verified, facts.__dict__)
        except StateError as error:
            errors.append(
                "the verification's result could not be recorded, so the captions do not say it: "
                f"{self._text(error)}"
            )
            bound.error("Could not record the verification's result", file=name, error=errors[-1])

    def _shrink_warning(self, made: _Made) -> str | None:
        """Say so when the dump is empty, or far smaller than the previous one of the same database."""
        if made.sql_bytes == 0:
            return "pg_dump produced no SQL at all: this backup is empty"
        previous = self.store.previous_sql_bytes(made.manifest.database)
        if previous is None:
            return None
        name, previous_bytes = previous
        if made.sql_bytes < previous_bytes * SHRINK_WARNING_RATIO:
            shrink = 100 - made.sql_bytes * 100 // previous_bytes
            return (
                f"this dump is {messages.human_size(made.sql_bytes)} of SQL, {shrink}% smaller than the "
                f"previous one ({messages.human_size(previous_bytes)}, {name}). Check that the "
                "database has not lost data before relying on it"
            )
        return None

    def _deliver(
        self, bot: BotApi | None, name: str, errors: list[str], bound: Any
    ) -> tuple[DeliveryState, int | None, str | None]:
        """Drain the outbox (older pending backups first); return this backup's delivery, message id and
        pin error, adding to `errors`, with the real reason, when it did not reach the chat."""
        chat_id = self._config.telegram.chat_id
        if bot is None or chat_id is None:
            bound.warning(
                "Telegram is not configured: the backup is kept locally only",
                path=str(self._directory.path / name),
            )
            return DeliveryState.LOCAL_ONLY, None, None
        bound.info(f"Sending backup to Telegram chat: {chat_id}", chat_id=chat_id, file=name)
        try:
            if self.cancel.is_set():  # stopped during the verification: the backup waits in the outbox
                raise Cancelled("tgbackupd is stopping")
            drained = self.outbox.drain(bot, self.cancel, wait_s=DELIVERY_WAIT_S)
            delivery, entry, why = delivery_text(self.store, name)
        except Cancelled:
            errors.append("tgbackupd is stopping; the backup stays in the outbox and is sent after a restart")
            return DeliveryState.PENDING, None, None
        except StateError as error:
            errors.append(f"the backup's delivery could not be recorded: {self._text(error)}")
            self._report_failure(bot, errors[-1], bound, retry=False)
            return DeliveryState.PENDING, None, None
        if delivery == DeliveryState.SENT and entry is not None and entry.manifest_ref is not None:
            bound.info(
                "Backup sent to Telegram successfully",
                chat_id=chat_id,
                message_id=entry.manifest_ref.message_id,
                parts=len(entry.manifest.parts),
            )
            if entry.pin_error:
                bound.warning(
                    "Could not pin the backup's manifest in the chat", error=self._text(entry.pin_error)
                )
            return delivery, entry.manifest_ref.message_id, entry.pin_error
        if drained.busy and why is None:
            # The other process sends it after its own: not a failure to tell the chat about.
            errors.append(f"the backup waits in the outbox: {drained.busy}, and sends it after them")
            return delivery, None, None
        errors.append(self._text(why or "the backup was not delivered"))
        if not self.cancel.is_set():
            self._report_failure(bot, errors[-1], bound, retry=False)
        return delivery, None, None

    def _report_failure(self, bot: BotApi | None, reason: str, bound: Any, retry: bool = True) -> None:
        if not self.cancel.is_set():
            self._notices.failure(bot, self.describe, reason, bound, retry)

    def _summarize(self, result: BackupResult, bound: Any) -> None:
        """One event per backup carrying everything a person filters on."""
        fields = {key: value for key, value in result.to_dict().items() if key not in ("trigger",)}
        if result.succeeded:
            bound.info("Backup routine completed successfully", **fields)
        elif self.cancel.is_set():
            bound.warning("Backup routine cancelled", **fields)
        else:
            bound.error("Backup routine failed", **fields)


def make_bot(config: Config, cancel: threading.Event, pacer: ChatPacer, clock: Clock) -> BotApi | None:
    """Return a Bot API client that paces what it posts with `pacer`, or None when Telegram is not
    configured (backups stay local)."""
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
        pacer=pacer,
        clock=clock,
    )
    retry_log = log.bind(chat_id=telegram.chat_id)
    bot.on_retry = lambda method, attempt, delay, reason: retry_log.warning(
        "Telegram request failed; retrying", method=method, attempt=attempt, retry_in_s=delay, error=reason
    )
    return bot
