"""The outbox: backups waiting to reach the chat. Kept in the state file, so a backup whose upload
failed (or was cut by a crash) is sent again after a restart; delivered oldest first, so the chain of
manifests and the pinned one stay in the order the backups were made."""

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import messages
from .clock import Clock
from .config import Config
from .delivery import Delivered, Delivery, pinned_manifest_ref
from .manifest import Manifest, ManifestError, ManifestRef
from .redaction import scrub
from .state import StateFile
from .storage import BackupDirectory
from .telegram import BotApi, TelegramError


@dataclass(frozen=True)
class Outcome:
    """What became of one backup in a drain: `sent`, `pending` (with why and when next), or `lost`."""

    delivery: str
    error: str | None = None
    delivered: Delivered | None = None


class Outbox:
    def __init__(self, config: Config, state: StateFile, clock: Clock, log: Any) -> None:
        self._config = config
        self._state = state
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Re-read what is pending (at start, and after this process changed it). Delivery is in order,
        so only the oldest pending backup's next attempt decides when the outbox is due."""
        waiting = self._state.pending()
        head = waiting[0] if waiting else None
        with self._lock:
            self.pending_count = len(waiting)
            self.last_error = head.get("last_error") if head else None
            if head is None:
                self._next_due = None
            elif head.get("next_attempt_at"):
                self._next_due = datetime.fromisoformat(head["next_attempt_at"])
            else:
                self._next_due = self._clock.now()

    def undelivered(self) -> set[str]:
        """Backups retention must not remove: those not delivered yet."""
        return {str(entry["name"]) for entry in self._state.pending()}

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
        A `spooled` backup is not kept here: its parts wait in the spool, each removed once sent."""
        self._state.add_entry(
            {
                "name": manifest.name,
                "database": manifest.database,
                "manifest": json.loads(manifest.to_json()),
                "manifest_ref": None,
                "facts": facts.__dict__,
                "sql_bytes": sql_bytes,
                "warning": warning,
                "delivery": "pending" if self._config.telegram.configured else "local_only",
                "attempts": 0,
                "next_attempt_at": None,
                "last_error": None,
                "captions_to_complete": sorted(captions_to_complete),
                "spooled": spooled,
            }
        )
        self.refresh()

    def drain(self, bot: BotApi, directory: BackupDirectory, cancel: threading.Event) -> dict[str, Outcome]:
        """Deliver what is pending, oldest first; stop at the first failure, so none overtakes another.
        Raise Cancelled if told to stop: what was not sent stays pending, due at once after a restart."""
        chat_id = self._config.telegram.chat_id
        assert chat_id is not None
        outcomes: dict[str, Outcome] = {}
        try:
            for entry in self._state.pending():
                outcome = self._deliver_one(bot, chat_id, directory, entry)
                outcomes[entry["name"]] = outcome
                if outcome.delivery == "pending" or cancel.is_set():
                    break
        finally:
            self.refresh()
        return outcomes

    def _deliver_one(
        self, bot: BotApi, chat_id: str, directory: BackupDirectory, entry: dict[str, Any]
    ) -> Outcome:
        name = entry["name"]
        spooled = bool(entry.get("spooled"))
        bound = self._log.bind(file=name)
        try:
            manifest = Manifest.from_json(json.dumps(entry["manifest"]).encode())
            facts = messages.BackupFacts(**entry["facts"])
        except (KeyError, TypeError, ManifestError) as error:
            return self._lose(name, f"its catalogue entry is damaged ({error})", bound)
        missing = directory.first_missing(manifest, spooled)
        if missing is not None:
            if spooled:
                directory.remove_spooled(name)
            return self._lose(name, f"{missing} was removed before it could be sent", bound)
        attempts = int(entry.get("attempts") or 0) + 1
        if attempts > 1:
            bound.info("Sending a backup that is waiting for delivery", attempt=attempts)

        def part_sent(progress: Manifest, index: int) -> None:
            self._state.update_entry(name, manifest=json.loads(progress.to_json()))
            if spooled:  # recorded first: a crash in between leaves a file, never a part unaccounted for
                directory.remove_spooled(name, index)

        try:
            delivered = Delivery(bot, chat_id, bound).send(
                lambda part: directory.part_slice(name, part, spooled),
                manifest,
                facts,
                directory.path / manifest.file_name,
                lambda: self._state.latest_manifest_ref() or self._pinned(bot, chat_id, bound),
                part_sent,
                frozenset(entry.get("captions_to_complete") or ()),
            )
        except TelegramError as error:
            return self._postpone(name, attempts, error, bound)
        self._state.update_entry(
            name,
            delivery="sent",
            manifest=json.loads(delivered.manifest.to_json()),
            manifest_ref=delivered.manifest_ref.__dict__,
            pin_error=delivered.pin_error,
            attempts=attempts,
            next_attempt_at=None,
            last_error=None,
        )
        if spooled:
            directory.remove_spooled(name)
        if attempts > 1:
            bound.info("A backup that was waiting has been delivered", attempts=attempts)
        return Outcome("sent", delivered=delivered)

    def _postpone(self, name: str, attempts: int, error: BaseException, bound: Any) -> Outcome:
        reason = scrub(str(error), self._config.secrets())
        telegram = self._config.telegram
        delay = min(telegram.redeliver_max_s, telegram.redeliver_min_s * 2 ** min(attempts - 1, 30))
        next_attempt = self._clock.now() + timedelta(seconds=delay)
        self._state.update_entry(
            name,
            attempts=attempts,
            next_attempt_at=next_attempt.isoformat(timespec="seconds"),
            last_error=reason,
        )
        bound.error(
            "Failed to send backup to Telegram; it is kept and will be sent again",
            error=reason,
            attempts=attempts,
            next_attempt_at=next_attempt.isoformat(timespec="seconds"),
        )
        when = next_attempt.strftime("%Y-%m-%d %H:%M")
        return Outcome(
            "pending", f"the backup was made but not sent to Telegram yet: {reason}; next try at {when}"
        )

    def _lose(self, name: str, why: str, bound: Any) -> Outcome:
        self._state.update_entry(name, delivery="lost", last_error=why, next_attempt_at=None)
        bound.error("A backup waiting for delivery can no longer be sent", error=why)
        return Outcome("lost", f"the backup can no longer be sent: {why}")

    def _pinned(self, bot: BotApi, chat_id: str, bound: Any) -> ManifestRef | None:
        """On a machine with no delivered backup yet, continue the chain from the pinned manifest."""
        try:
            return pinned_manifest_ref(bot, chat_id)
        except TelegramError as error:
            bound.warning(
                "Could not read the chat's pinned manifest", error=scrub(str(error), self._config.secrets())
            )
            return None
