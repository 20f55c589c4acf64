"""Delivery of one backup to the chat: its parts in order, then its manifest, then the manifest pinned,
so that a new machine with only the token and the chat id finds the newest backup (getChat)."""

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import messages
from .errors import TgbackupdError
from .files import FileSlice, write_atomically
from .manifest import Manifest, ManifestRef, Part, part_name
from .signing import ManifestKey, signed_json
from .telegram import BotApi, ChatPacer, SentMessage, TelegramError, TelegramRejected


@dataclass
class _Progress:
    name: str
    chat_id: str
    parts_total: int | None  # None while the dump runs
    parts_sent: int
    bytes_total: int | None
    bytes_sent: int
    captions_owed: int  # parts sent during the dump, whose captions are completed at the end
    early: bool  # the parts still to send go during the dump, and each will owe its caption too
    upload_bytes_per_s: float | None = None


class Sending:
    """What is on its way to the chat now, for status: the backup, its parts sent and in all (not known
    while the dump runs), and about how long the rest takes, at the pace the chat allows (ChatPacer) and
    the upload speed measured so far, whichever is slower. Written by the thread that sends, read by the
    one that answers status."""

    def __init__(self, pacer: ChatPacer) -> None:
        self._pacer = pacer
        self._lock = threading.Lock()
        self._progress: _Progress | None = None

    def begin(
        self,
        name: str,
        chat_id: str,
        *,
        parts_total: int | None,
        bytes_total: int | None,
        parts_sent: int = 0,
        bytes_sent: int = 0,
        captions_owed: int = 0,
        early: bool = False,
    ) -> None:
        with self._lock:
            self._progress = _Progress(
                name, chat_id, parts_total, parts_sent, bytes_total, bytes_sent, captions_owed, early
            )

    def counted(self, parts_total: int, bytes_total: int) -> None:
        """The dump has ended: the number of parts and the size are known."""
        with self._lock:
            if self._progress is not None:
                self._progress.parts_total, self._progress.bytes_total = parts_total, bytes_total

    def part_sent(self, size_bytes: int, upload_bytes_per_s: float | None) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.parts_sent += 1
                self._progress.bytes_sent += size_bytes
                self._progress.captions_owed += 1 if self._progress.early else 0
                self._progress.upload_bytes_per_s = upload_bytes_per_s

    def caption_completed(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.captions_owed = max(0, self._progress.captions_owed - 1)

    def end(self) -> None:
        with self._lock:
            self._progress = None

    def describe(self) -> dict[str, Any] | None:
        """`{"name", "parts_sent", "parts_total", "eta_s"}` while a backup is sent, else None; the total
        and the estimate are None while the dump runs."""
        with self._lock:
            progress = None if self._progress is None else replace(self._progress)
        if progress is None:
            return None
        eta_s = None
        if progress.parts_total is not None and progress.bytes_total is not None:
            parts_left = max(0, progress.parts_total - progress.parts_sent)
            # Each part, then each caption owed, then the manifest and its pin.
            to_post = parts_left * (2 if progress.early else 1) + progress.captions_owed + 2
            pace = self._pacer.seconds_for(progress.chat_id, to_post)
            speed = progress.upload_bytes_per_s
            upload = (progress.bytes_total - progress.bytes_sent) / speed if speed else 0.0
            eta_s = round(max(pace, upload))
        return {
            "name": progress.name,
            "parts_sent": progress.parts_sent,
            "parts_total": progress.parts_total,
            "eta_s": eta_s,
        }


@dataclass(frozen=True)
class Delivered:
    manifest: Manifest  # with each part's message and file id
    manifest_ref: ManifestRef
    pin_error: str | None
    newest: bool  # the newest backup in the chat: its manifest was pinned (or the bot may not pin)


class Delivery:
    def __init__(self, bot: BotApi, chat_id: str, key: ManifestKey, log: Any, sending: Sending) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._key = key
        self._log = log
        self._sending = sending

    def send(
        self,
        locate: Callable[[Part], FileSlice],
        manifest: Manifest,
        facts: messages.BackupFacts,
        manifest_file: Path,
        find_previous: Callable[[], ManifestRef | None],
        on_part_sent: Callable[[Part], None],
        captions_to_complete: frozenset[int] = frozenset(),
        pin: bool = True,
    ) -> Delivered:
        """Send the parts not sent yet (a part with a message id already reached the chat on an earlier
        attempt), each read from where `locate` says, then the manifest, linked to the previous one, signed
        and written to `manifest_file` first. `on_part_sent` hears of each part as it reaches the chat, so
        that progress survives a crash. The manifest is pinned unless `pin` is false (a newer backup is in
        the chat already). Raise TelegramError if a part or the manifest could not be sent; a refused pin
        is only reported."""
        already = [part for part in manifest.parts if part.message_id is not None]
        self._sending.begin(
            manifest.name,
            self._chat_id,
            parts_total=len(manifest.parts),
            bytes_total=manifest.size_bytes,
            parts_sent=len(already),
            bytes_sent=sum(part.size_bytes for part in already),
            captions_owed=len(captions_to_complete),
        )
        try:
            count = len(manifest.parts)
            parts = list(manifest.parts)
            for position, part in enumerate(parts):
                if part.message_id is not None:
                    continue
                if count == 1:
                    caption = messages.backup_caption(facts)
                else:
                    caption = messages.part_caption(
                        facts,
                        index=part.index,
                        count=count,
                        part_size=part.size_bytes,
                        part_sha256=part.sha256,
                    )
                    self._log.info(
                        f"Sending part {part.index} of {count}",
                        file=part.file_name,
                        size_bytes=part.size_bytes,
                    )
                sent = self._bot.send_document(self._chat_id, locate(part), part.file_name, caption)
                parts[position] = replace(part, message_id=sent.message_id, file_id=sent.file_id)
                self._sending.part_sent(part.size_bytes, self._bot.upload_bytes_per_s)
                on_part_sent(parts[position])
            self._complete_captions(parts, facts, captions_to_complete)
            complete = replace(manifest, parts=tuple(parts), previous=find_previous())
            write_atomically(manifest_file, signed_json(complete, self._key))
            sent = self._bot.send_document(
                self._chat_id,
                FileSlice.whole(manifest_file),
                complete.file_name,
                messages.manifest_caption(facts, parts=count),
                content_type="application/json",
            )
            reference = ManifestRef(name=complete.name, message_id=sent.message_id, file_id=sent.file_id)
            return Delivered(complete, reference, self._pin(sent.message_id) if pin else None, pin)
        finally:
            self._sending.end()

    def _complete_captions(
        self, parts: list[Part], facts: messages.BackupFacts, indexes: frozenset[int]
    ) -> None:
        """Parts sent while the dump ran did not know the count and the whole SHA-256 yet: add them."""
        for part in parts:
            if part.index not in indexes or part.message_id is None:
                continue
            caption = messages.part_caption(
                facts, index=part.index, count=len(parts), part_size=part.size_bytes, part_sha256=part.sha256
            )
            try:
                self._bot.edit_message_caption(self._chat_id, part.message_id, caption)
            except TelegramError as error:
                self._log.warning(
                    "Could not complete the caption of a part", part=part.index, error=str(error)
                )
            self._sending.caption_completed()

    def _pin(self, message_id: int) -> str | None:
        try:
            self._bot.pin_chat_message(self._chat_id, message_id)
        except TelegramRejected as error:
            return (
                f"the bot may not pin messages in chat {self._chat_id} ({error}); give it the right to pin "
                "(in a channel: to edit messages) so that a new machine finds the newest backup"
            )
        except TelegramError as error:
            return f"pinning the manifest failed: {error}"
        return None


class EarlyUploader:
    """Sends the parts of a backup that pg_dump is still writing, each once the part after it has begun
    (so it is known not to be the only one), so that the upload overlaps the dump. The count is not known
    yet: parts are named for `expected_parts` (the width of their numbers depends on the count). It stops
    at the first failure and leaves the rest to the outbox; its parts' captions are completed with the
    manifest. With `max_waiting`, handing over a part waits while that many are queued (the spool stays
    small); `after_sent` hears of each part that reached the chat."""

    def __init__(
        self,
        bot: BotApi,
        chat_id: str,
        name: str,
        database: str,
        log: Any,
        expected_parts: int,
        sending: Sending,
        max_waiting: int = 0,
        after_sent: Callable[[int, SentMessage], None] | None = None,
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._name = name
        self.expected_parts = max(2, expected_parts)  # a part sent early is never the only one
        self._database = database
        self._log = log
        self._sending = sending
        self._after_sent = after_sent
        sending.begin(name, chat_id, parts_total=None, bytes_total=None, early=True)
        self._queue: queue.Queue[tuple[int, str, FileSlice] | None] = queue.Queue(max_waiting)
        self.sent: dict[int, SentMessage] = {}
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="early-upload", daemon=True)
        self._thread.start()

    def part_ready(self, index: int, sha256: str, piece: FileSlice) -> None:
        self._queue.put((index, sha256, piece))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue  # after a failure the outbox sends what is left, in order
            index, sha256, piece = item
            caption = messages.early_part_caption(
                file=self._name,
                database=self._database,
                index=index,
                part_size=piece.length,
                part_sha256=sha256,
            )
            try:
                sent = self._bot.send_document(self._chat_id, piece, self.part_name(index), caption)
                self.sent[index] = sent
                self._sending.part_sent(piece.length, self._bot.upload_bytes_per_s)
                if self._after_sent is not None:
                    self._after_sent(index, sent)
            except (TgbackupdError, OSError) as error:  # TelegramError and Cancelled among them
                # Whatever it is, the queue must go on draining (the dump may be waiting to hand over a
                # part), and the outbox sends the parts not sent and the rest later, in order.
                self.error = str(error)
                self._log.warning(
                    "Sending parts during the dump stopped; the outbox sends them after it", error=self.error
                )
                continue
            self._log.info(f"Sent part {index} while the dump goes on", file=self.part_name(index))

    def part_name(self, index: int) -> str:
        return part_name(self._name, index, self.expected_parts)

    def counted(self, parts: int, size_bytes: int) -> None:
        """The dump ended in `parts` parts of `size_bytes` in all (what status tells from now on)."""
        self._sending.counted(parts, size_bytes)

    def finish(self) -> dict[int, SentMessage]:
        """Wait for the parts handed over so far; return what reached the chat, by part number."""
        self._queue.put(None)
        self._thread.join()
        self._sending.end()
        return self.sent
