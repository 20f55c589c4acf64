"""The outbox: backups waiting to reach the chat. Kept in the state store, so a backup whose upload failed
(or was cut by a crash) is sent again after a restart; delivered oldest first, so the chain of manifests
and the pinned one stay in the order the backups were made; and delivered by one process at a time, so
that the daemon and a `tgbackupd --once` never send the same backup twice."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import chain, messages
from .clock import Clock
from .config import Config
from .delivery import Delivery, Sending
from .errors import Cancelled, StorageError, TgbackupdError
from .events import Delivered, Events
from .manifest import Manifest, ManifestRef, Part
from .recovery import read_back
from .redaction import scrub
from .signing import Keyring, ManifestKey
from .state import (
    CHAIN_CONFIRM,
    CHAIN_HISTORY,
    CHAIN_KEY,
    Entry,
    StateError,
    StateStore,
    Waiting,
    backup_stamp,
)
from .states import DeliveryState
from .storage import BackupDirectory
from .telegram import BotApi, TelegramError

BUSY_RETRY_S = 10


@dataclass(frozen=True)
class Drained:
    sent: int  # backups this drain delivered
    busy: str | None = None  # nothing was tried: another process is delivering (who)


class Outbox:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        directory: BackupDirectory,
        clock: Clock,
        log: Any,
        sending: Sending,
        events: Events | None = None,
    ) -> None:
        self._config = config
        self._events = events or Events()
        self.sending = sending  # what is on its way to the chat, for status
        self._store = store
        self._directory = directory
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self.pending_count = 0
        self.last_error: str | None = None
        self._next_due: datetime | None = None
        self._failures = 0  # in a row, of the store or of a lock held elsewhere: they back off too
        self.refresh()

    def refresh(self) -> None:
        """Re-read what is pending (at start, and after a drain). Delivery is in order, so only the oldest
        pending backup's next attempt decides when the outbox is due."""
        try:
            waiting = self._store.waiting()
            chain_check = self._store.meta(CHAIN_KEY) if self._config.telegram.configured else None
        except StateError as error:
            self._back_off(str(error))
            return
        head = waiting[0] if waiting else None
        with self._lock:
            self.pending_count = len(waiting)
            self.last_error = head.last_error if head else None
            if head is None:
                self._next_due = self._clock.now() if chain_check else None
            else:
                self._next_due = head.next_attempt_at or self._clock.now()

    def _back_off(self, reason: str, delay_s: float | None = None) -> None:
        """Try again later, after a failure that is not the head backup's own (the store, a lock)."""
        telegram = self._config.telegram
        self._failures += 1
        if delay_s is None:
            delay_s = min(
                telegram.redeliver_max_s, telegram.redeliver_min_s * 2 ** min(self._failures - 1, 30)
            )
        with self._lock:
            self.last_error = reason
            self._next_due = self._clock.now() + timedelta(seconds=delay_s)

    def undelivered(self) -> set[str]:
        """Backups retention and clean-up must not remove. Raise StateError if the store cannot say:
        nothing is removed on the strength of a catalogue that could not be read."""
        return self._store.undelivered()

    def is_due(self) -> bool:
        with self._lock:
            return self._next_due is not None and self._next_due <= self._clock.now()

    def add(
        self,
        manifest: Manifest,
        facts: messages.BackupFacts,
        sql_bytes: int,
        warning: str | None,
        captions_to_complete: frozenset[int] = frozenset(),
        spooled: bool = False,
    ) -> None:
        """Put a new backup in the catalogue: pending when Telegram is configured, else kept locally.
        A `spooled` backup is not kept here: its parts wait in the spool, each removed once sent.
        Raise StateError if it could not be recorded."""
        configured = self._config.telegram.configured
        self._store.add(
            Entry(
                manifest=manifest,
                delivery=DeliveryState.PENDING if configured else DeliveryState.LOCAL_ONLY,
                facts=facts.__dict__,
                sql_bytes=sql_bytes,
                warning=warning,
                spooled=spooled,
                captions_to_complete=captions_to_complete,
            )
        )
        self.refresh()

    def drain(self, bot: BotApi, cancel: threading.Event, wait_s: float = 0.0) -> Drained:
        """Deliver what is pending, oldest first, stopping at the first failure so that none overtakes
        another; unless another process is delivering (waited for up to `wait_s` seconds), which then
        sends them. Raise Cancelled if told to stop (what was not sent stays pending, due at once after a
        restart) and StateError if the store fails."""
        chat_id = self._config.telegram.chat_id
        assert chat_id is not None
        try:
            with self._store.delivery_lock(wait_s, cancel) as held_elsewhere:
                if held_elsewhere:
                    if cancel.is_set():
                        raise Cancelled("tgbackupd is stopping")
                    self._back_off(held_elsewhere, BUSY_RETRY_S)
                    return Drained(0, held_elsewhere)
                sent = self._drain_held(bot, chat_id, cancel)
        except Cancelled:
            raise
        except Exception as error:  # the store, or a bug: either way, not again every second
            self._back_off(str(error) if isinstance(error, TgbackupdError) else f"internal error: {error!r}")
            raise
        if sent is None:  # the chat could not be read: it backed off
            return Drained(0)
        self._failures = 0
        self.refresh()
        return Drained(sent)

    def _drain_held(self, bot: BotApi, chat_id: str, cancel: threading.Event) -> int | None:
        """Deliver what waits, in order; return how many went, or None if the chat's manifests, to be
        read first after a rebuild, could not be."""
        # A backup made while its recording failed, recorded now: it is sent like any other.
        read_back(self._store, self._directory, True, self._log)
        if not self._look_in_chat(bot, chat_id, cancel):
            return None
        tried: set[str] = set()
        sent = 0
        while not cancel.is_set():
            waiting = self._store.waiting()  # again each time: another process may have added or sent one
            if not waiting or waiting[0].name in tried:
                break
            tried.add(waiting[0].name)
            outcome = self._deliver_one(bot, chat_id, waiting[0])
            if outcome == DeliveryState.PENDING:
                break
            sent += outcome == DeliveryState.SENT
        return sent

    def _deliver_one(self, bot: BotApi, chat_id: str, waiting: Waiting) -> DeliveryState:
        name = waiting.name
        bound = self._log.bind(file=name)
        entry = self._store.entry(name)
        if entry is None or entry.delivery != DeliveryState.PENDING:
            return DeliveryState.NOT_ATTEMPTED  # delivered or given up meanwhile, by another process
        manifest = entry.manifest
        facts = messages.facts_of(manifest, entry.facts)
        try:
            missing = self._directory.first_missing(manifest, entry.spooled)
        except StorageError as error:  # a name no backup of ours has: nothing is read, nothing removed
            return self._lose(name, str(error), bound)
        if missing is not None:
            if not self._directory.looks_mounted():
                return self._postpone(
                    entry,
                    f"{missing} cannot be read: is the file system of {self._directory.path} mounted?",
                    bound,
                )
            if entry.spooled:
                self._directory.remove_spooled(name)
            return self._lose(name, f"{missing} was removed before it could be sent", bound)
        resized = self._directory.first_resized(manifest, entry.spooled)
        if resized is not None:
            path, size, recorded = resized
            return self._postpone(
                entry,
                f"{path} is {size} bytes, but was {recorded} when the backup was made: it was cut short or "
                "replaced, so nothing of it is sent (its parts would not match their SHA-256). Put the "
                "right file back; or remove it, which gives this backup up and lets the newer ones go",
                bound,
            )
        attempts = entry.attempts + 1
        if attempts > 1:
            bound.info("Sending a backup that is waiting for delivery", attempt=attempts)

        def part_sent(part: Part) -> None:
            assert part.message_id is not None
            self._store.record_part_sent(name, part.index, part.message_id, part.file_id)
            # Recorded first: a crash in between leaves a file, never a part unaccounted for.
            if entry.spooled:
                self._directory.spooled_part_sent(
                    name, part.index, len(manifest.parts), part.message_id, part.file_id
                )

        try:
            delivered = Delivery(bot, chat_id, self._key(), bound, self.sending).send(
                lambda part: self._directory.part_slice(manifest, part, entry.spooled),
                manifest,
                facts,
                self._directory.path / manifest.file_name,
                lambda: self._store.latest_manifest_ref(before=name) or self._pinned(bot, chat_id, bound),
                part_sent,
                entry.captions_to_complete,
                pin=not self._store.newer_delivered(name),
            )
        except (TelegramError, OSError) as error:
            return self._postpone(entry, error, bound)
        except StateError:
            raise
        except TgbackupdError as error:
            if isinstance(error, Cancelled):
                raise
            return self._postpone(entry, error, bound)
        self._store.record_delivered(
            delivered.manifest, delivered.manifest_ref, delivered.pin_error, chat_id=chat_id
        )
        if delivered.newest:
            self._note_newest(delivered.manifest_ref, bound)
        if entry.spooled:
            self._directory.remove_spooled(name)
        if attempts > 1:
            bound.info("A backup that was waiting has been delivered", attempts=attempts)
        self._events.delivered(Delivered(name, manifest.database, delivered.manifest_ref.message_id or 0))
        return DeliveryState.SENT

    def _postpone(self, entry: Entry, error: BaseException | str, bound: Any) -> DeliveryState:
        name = entry.manifest.name
        attempts = entry.attempts + 1
        reason = scrub(
            str(error) if not isinstance(error, OSError) else _os_error(error), self._config.secrets()
        )
        telegram = self._config.telegram
        delay = min(telegram.redeliver_max_s, telegram.redeliver_min_s * 2 ** min(attempts - 1, 30))
        next_attempt = self._clock.now() + timedelta(seconds=delay)
        self._store.record_postponed(name, attempts, next_attempt.isoformat(timespec="seconds"), reason)
        bound.error(
            "Failed to send backup to Telegram; it is kept and will be sent again",
            error=reason,
            attempts=attempts,
            next_attempt_at=next_attempt.isoformat(timespec="seconds"),
        )
        return DeliveryState.PENDING

    def _lose(self, name: str, why: str, bound: Any) -> DeliveryState:
        self._store.record_lost(name, why)
        bound.error("A backup waiting for delivery can no longer be sent", error=why)
        return DeliveryState.LOST

    def _key(self) -> ManifestKey:
        """The key manifests are signed with and checked against: the bot token's."""
        token = self._config.telegram.bot_token
        assert token is not None
        return ManifestKey.from_token(token)

    def _pinned(self, bot: BotApi, chat_id: str, bound: Any) -> ManifestRef | None:
        """On a machine with no delivered backup yet, continue the chain from the pinned manifest, if this
        bot token's key signed it: a signed link to anyone else's would lead whoever follows the chain to
        their backups."""
        try:
            reference = chain.pinned_manifest_ref(bot, chat_id)
            if reference is not None:
                chain.download_manifest(bot, reference, Keyring((self._key(),)))
            return reference
        except (TelegramError, chain.ChainError) as error:
            bound.warning(
                "The pinned manifest is not one to continue the chain from; this backup starts a chain of "
                "its own",
                error=scrub(str(error), self._config.secrets()),
            )
            return None

    def _look_in_chat(self, bot: BotApi, chat_id: str, cancel: threading.Event) -> bool:
        """After a rebuild, walk the chain of manifests in the chat before sending anything: backups found on
        disk may have reached the chat before the state was lost (they are marked sent, not sent twice),
        and the history of delivered backups comes back into the catalogue. Return False (having postponed
        the oldest pending backup) if the chat could not be read."""
        mode = self._store.meta(CHAIN_KEY)
        if mode is None:
            return True
        waiting = self._store.waiting()
        unconfirmed = {item.name: self._store.entry(item.name) for item in waiting if item.unconfirmed}
        oldest = min((backup_stamp(name) for name in unconfirmed), default=None)
        known = self._store.known()
        found: list[Entry] = []
        try:
            for manifest, reference in self._walk(bot, chat_id):
                if cancel.is_set():
                    raise Cancelled("tgbackupd is stopping")
                mine = unconfirmed.get(manifest.name)
                if mine is not None and (mine.manifest.sha256, mine.manifest.size_bytes) == (
                    manifest.sha256,
                    manifest.size_bytes,
                ):
                    self._store.record_delivered(manifest, reference, None, chat_id=chat_id)
                    unconfirmed.pop(manifest.name)
                elif mode == CHAIN_HISTORY and manifest.name not in known:
                    found.append(Entry(manifest, DeliveryState.SENT, manifest_ref=reference))
                if mode == CHAIN_CONFIRM and (
                    not unconfirmed or backup_stamp(manifest.name) < (oldest or "")
                ):
                    break
        except (TelegramError, chain.ChainError) as error:  # transient: asking later can help
            reason = (
                "the chat's manifests could not be read, so it is not known yet which backups found on disk "
                "after the state file was rebuilt reached the chat: "
                + scrub(str(error), self._config.secrets())
            )
            head = self._store.entry(waiting[0].name) if waiting else None
            if head is not None:
                self._postpone(head, reason, self._log.bind(file=head.manifest.name))
                self.refresh()
            else:
                self._back_off(reason)
            return False
        self._store.add_many(found)
        for name in unconfirmed:
            self._store.record_confirmed(name)
        self._store.set_meta(CHAIN_KEY, None)
        if found or mode == CHAIN_HISTORY:
            self._log.info(
                "Read the chain of manifests in the chat back into the catalogue", found=len(found)
            )
        return True

    def _note_newest(self, reference: ManifestRef, bound: Any) -> None:
        try:
            self._directory.note_newest_manifest(reference)
        except OSError as error:  # only a help for a rebuild: the backup is delivered and recorded
            bound.warning("Could not note where the newest manifest is", error=_os_error(error))

    def _walk(self, bot: BotApi, chat_id: str) -> Iterator[tuple[Manifest, ManifestRef]]:
        """The chain from the pinned manifest back (or, with nothing of ours pinned, from the newest this
        machine noted), ending where it is broken (a manifest deleted from the chat, or not one of ours:
        one this bot token's key did not sign is not believed, whatever it says reached the chat): what
        lies beyond cannot be found by anyone."""
        try:
            start = chain.pinned_manifest_ref(bot, chat_id) or self._directory.newest_manifest()
            yield from chain.walk(bot, start, Keyring((self._key(),)))
        except chain.ChainError as error:
            if not error.broken:
                raise
            self._log.warning(
                "The chain of manifests in the chat is broken; backups older than the break are not found",
                error=scrub(str(error), self._config.secrets()),
            )


def _os_error(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return f"a local error while sending: {error.strerror or error}{where}"


def delivery_text(store: StateStore, name: str) -> tuple[DeliveryState, Entry | None, str | None]:
    """What became of backup `name` after a drain: its delivery state, its entry, and, when it did not
    reach the chat, the real reason in a sentence."""
    entry = store.entry(name)
    if entry is None:
        return DeliveryState.NOT_ATTEMPTED, None, "it is not in the catalogue"
    if entry.delivery == DeliveryState.LOST:
        return entry.delivery, entry, f"the backup can no longer be sent: {entry.lost_reason}"
    if entry.delivery != DeliveryState.PENDING:
        return entry.delivery, entry, None
    if entry.last_error:
        when = (
            f"; next try at {entry.next_attempt_at[:16].replace('T', ' ')}" if entry.next_attempt_at else ""
        )
        return (
            entry.delivery,
            entry,
            f"the backup was made but not sent to Telegram yet: {entry.last_error}{when}",
        )
    older = next((item for item in store.waiting() if item.name != name and item.last_error), None)
    if older is not None:
        return (
            entry.delivery,
            entry,
            f"the backup waits behind the older backup {older.name}, which could not be sent yet: "
            f"{older.last_error}",
        )
    return entry.delivery, entry, None
