"""The Telegram Bot API client: the only module that imports requests.

The token is part of every request URL, and requests puts URLs into its exception texts, so every
text that leaves this module goes through `redaction.scrub` first.
"""

from __future__ import annotations  # annotations name requests' types without loading it

import collections
import importlib.util
import json
import os
import sys
import threading
import types
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from . import __version__
from .clock import Clock
from .errors import Cancelled, TgbackupdError
from .files import FileSlice
from .redaction import scrub


def _loaded_when_used(name: str) -> types.ModuleType:
    """The module, loaded at its first use: importing requests takes a fifth of a second, which a
    restore from a file (tgbackupctl restore FILE) would wait for and never use."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import requests
else:
    requests = _loaded_when_used("requests")

CONNECT_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 600
# How much longer than a long poll's own timeout its HTTP read may take before it counts as lost.
LONG_POLL_MARGIN_S = 15
_BODY_BLOCK_BYTES = 256 * 1024
# What posts a message in a chat (or changes one), and so counts towards Telegram's limits for that chat.
PACED_METHODS = frozenset(
    {"sendDocument", "sendMessage", "editMessageCaption", "pinChatMessage", "deleteMessage"}
)
PACING_WINDOW_S = 60.0


class TelegramError(TgbackupdError):
    """A request the Bot API did not carry out; the message says what to fix."""

    exit_code = os.EX_UNAVAILABLE


class TelegramRejected(TelegramError):
    """A 4xx answer: repeating the same request cannot help, so it is not retried."""


class TelegramTooLarge(TelegramRejected):
    """The Bot API server refused the file's size (413)."""


class TelegramConflict(TelegramRejected):
    """409 from getUpdates: another program polls updates with this token, or a webhook is set."""


class MessageNotDeletable(TelegramRejected):
    """Telegram refused to delete a message (400 "message can't be deleted"): the bot lacks the right, or
    the message is older than a bot may delete without it."""


class TelegramUnreachable(TelegramError):
    """No answer at all from the Bot API (refused, DNS, timeout): a matter for the network, not the token.
    `reason` says how the last attempt failed."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SentMessage:
    message_id: int
    file_id: str | None = None


class MultipartBody:
    """A multipart/form-data body read from disk block by block, so that memory stays flat however large
    the file (requests' `files=` builds the whole body in memory). Reading stops when `cancel` is set."""

    def __init__(
        self,
        fields: dict[str, str],
        file_field: str,
        content: FileSlice,
        file_name: str,
        content_type: str,
        cancel: threading.Event,
    ) -> None:
        self.boundary = uuid.uuid4().hex
        head = b"".join(
            self._part_header(f'name="{name}"') + value.encode("utf-8") + b"\r\n"
            for name, value in fields.items()
        )
        quoted_name = file_name.replace('"', "%22")
        head += self._part_header(f'name="{file_field}"; filename="{quoted_name}"', content_type)
        self._head = head
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._content = content
        self._cancel = cancel

    def _part_header(self, disposition: str, content_type: str | None = None) -> bytes:
        lines = [f"--{self.boundary}", f"Content-Disposition: form-data; {disposition}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self._content.length + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        with self._content.path.open("rb") as stream:
            stream.seek(self._content.offset)
            remaining = self._content.length
            while remaining:
                if self._cancel.is_set():
                    raise Cancelled("the upload was stopped because tgbackupd is stopping")
                block = stream.read(min(_BODY_BLOCK_BYTES, remaining))
                if not block:
                    raise TgbackupdError(f"{self._content.path} became shorter while it was being sent")
                remaining -= len(block)
                yield block
        yield self._tail


class ChatPacer:
    """Spaces the messages to each chat to Telegram's published limits instead of running into its 429s:
    at most `per_minute` in any 60 seconds (20 in a group or channel) and, within that, about one a second
    (at least min(1 s, 60 / per_minute) apart). One pacer serves every client of a process, so that a
    delivery and the next one do not add up to a burst."""

    def __init__(self, per_minute: int, clock: Clock | None = None) -> None:
        self.per_minute = per_minute
        self._spacing = min(1.0, PACING_WINDOW_S / per_minute)
        self._clock = clock or Clock()
        self._slots: dict[str, collections.deque[float]] = {}  # per chat, the last minute's sends
        self._lock = threading.Lock()

    def reserve(self, chat_id: str) -> float:
        """Take the next free slot for a message to `chat_id`; return how many seconds away it is."""
        with self._lock:
            now = self._clock.monotonic()
            slots = self._slots.setdefault(chat_id, collections.deque())
            while slots and slots[0] <= now - PACING_WINDOW_S:
                slots.popleft()
            slot = self._next_slot(slots, now)
            slots.append(slot)
            return slot - now

    def seconds_for(self, chat_id: str, messages: int) -> float:
        """How long `messages` more to `chat_id` take at this pace, from now (what status tells)."""
        with self._lock:
            now = self._clock.monotonic()
            slots = collections.deque(self._slots.get(chat_id, ()))
        last = now
        for _ in range(messages):
            last = self._next_slot(slots, now)
            slots.append(last)
        return last - now

    def _next_slot(self, slots: collections.deque[float], now: float) -> float:
        slot = now
        if slots:
            slot = max(slot, slots[-1] + self._spacing)
        if len(slots) >= self.per_minute:
            slot = max(slot, slots[-self.per_minute] + PACING_WINDOW_S)
        return slot


class BotApi:
    """Calls Bot API methods, retrying what can succeed later: network errors, 5xx and 429. With a
    pacer, what posts in a chat waits its turn (ChatPacer)."""

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        timeout_s: float,
        retries: int,
        cancel: threading.Event | None = None,
        wait: Callable[[float], bool] | None = None,
        pacer: ChatPacer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._api_url = api_url
        self._token = token
        self._timeout = (CONNECT_TIMEOUT_S, timeout_s)
        self._attempts = retries + 1
        self._cancel = cancel or threading.Event()
        self._clock = clock or Clock()
        self._wait = wait or (lambda seconds: self._clock.wait(self._cancel, seconds))
        self._pacer = pacer
        self._uploads_lock = threading.Lock()
        self._uploaded_bytes = 0
        self._upload_s = 0.0
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"tgbackupd/{__version__}"
        self.on_retry: Callable[[str, int, float, str], None] = lambda method, attempt, delay, reason: None

    def close(self) -> None:
        self._session.close()

    def send_message(self, chat_id: str, text: str, retry: bool = True) -> SentMessage:
        """Send a text; `retry=False` makes one attempt only, for a notice after the API already failed."""
        fields = {"chat_id": chat_id, "text": text, "disable_web_page_preview": "true"}
        attempts = self._attempts if retry else 1
        return self._sent(self._call("sendMessage", chat_id, lambda: {"data": fields}, attempts))

    def send_document(
        self,
        chat_id: str,
        content: FileSlice,
        file_name: str,
        caption: str,
        content_type: str = "application/gzip",
    ) -> SentMessage:
        def request() -> dict[str, Any]:
            fields = {"chat_id": chat_id, "caption": caption, "disable_content_type_detection": "true"}
            body = MultipartBody(fields, "document", content, file_name, content_type, self._cancel)
            return {"data": body, "headers": {"Content-Type": body.content_type}}

        return self._sent(self._call("sendDocument", chat_id, request, self._attempts, content.length))

    @property
    def upload_bytes_per_s(self) -> float | None:
        """How fast this client's uploads went, pacing aside (None before the first)."""
        with self._uploads_lock:
            return self._uploaded_bytes / self._upload_s if self._upload_s > 0 else None

    def edit_message_caption(self, chat_id: str, message_id: int, caption: str) -> None:
        fields = {"chat_id": chat_id, "message_id": str(message_id), "caption": caption}
        self._call("editMessageCaption", chat_id, lambda: {"data": fields}, self._attempts)

    def pin_chat_message(self, chat_id: str, message_id: int) -> None:
        fields = {"chat_id": chat_id, "message_id": str(message_id), "disable_notification": "true"}
        self._call("pinChatMessage", chat_id, lambda: {"data": fields}, self._attempts)

    def delete_message(self, chat_id: str, message_id: int) -> bool:
        """Delete one message of the chat: True when deleted, False when Telegram says it is not there
        (deleted already). Raise MessageNotDeletable when Telegram refuses, TelegramError otherwise."""
        fields = {"chat_id": chat_id, "message_id": str(message_id)}
        try:
            self._call("deleteMessage", chat_id, lambda: {"data": fields}, self._attempts)
        except TelegramRejected as error:
            if "message to delete not found" in str(error):
                return False
            raise
        return True

    def get_chat(self, chat_id: str) -> dict[str, Any]:
        result = self._call("getChat", chat_id, lambda: {"data": {"chat_id": chat_id}}, self._attempts)
        return result if isinstance(result, dict) else {}

    def get_me(self) -> dict[str, Any]:
        result = self._call("getMe", "", lambda: {}, self._attempts)
        return result if isinstance(result, dict) else {}

    def get_chat_member(self, chat_id: str, user_id: int) -> dict[str, Any]:
        fields = {"chat_id": chat_id, "user_id": str(user_id)}
        result = self._call("getChatMember", chat_id, lambda: {"data": fields}, self._attempts)
        return result if isinstance(result, dict) else {}

    def get_webhook_info(self) -> dict[str, Any]:
        """Return the WebhookInfo: while its `url` is set, Telegram refuses getUpdates (409)."""
        result = self._call("getWebhookInfo", "", lambda: {}, self._attempts)
        return result if isinstance(result, dict) else {}

    def get_updates(self, offset: int | None, timeout_s: int, allowed_updates: list[str]) -> list[Any]:
        """Long-poll for updates from `offset` on: Telegram answers as soon as there is one, else after
        `timeout_s`. One attempt, the read timeout above the poll's: the caller backs off as it sees fit.
        The updates are returned unchecked (they come from the chat: the caller parses them)."""
        fields = {"timeout": str(timeout_s), "allowed_updates": json.dumps(allowed_updates)}
        if offset is not None:
            fields["offset"] = str(offset)
        read_timeout_s = timeout_s + LONG_POLL_MARGIN_S
        result = self._call("getUpdates", "", lambda: {"data": fields}, 1, read_timeout_s=read_timeout_s)
        if not isinstance(result, list):
            raise TelegramError("Telegram's getUpdates answered with something other than a list of updates")
        return result

    def get_file(self, file_id: str) -> dict[str, Any]:
        """Return the File object (file_path, file_size); the public Bot API serves files up to 20 MB."""
        result = self._call("getFile", "", lambda: {"data": {"file_id": file_id}}, self._attempts)
        if not isinstance(result, dict) or not result.get("file_path"):
            raise TelegramError(f"Telegram's getFile answered without a file path for file {file_id}")
        return result

    def download(
        self,
        file_path: str,
        sink: BinaryIO,
        on_progress: Callable[[int], None] | None = None,
        limit: int | None = None,
    ) -> int:
        """Stream a file from the Bot API's file endpoint into `sink`; return how many bytes came. Past
        `limit` bytes it stops (having kept one byte more than the limit, so the caller sees it was longer):
        a file larger than it should be is never taken in whole. One attempt: the caller checks the size
        and hash, and retries the whole part if they are wrong."""
        url = f"{self._api_url}/file/bot{self._token}/{file_path}"
        try:
            with self._session.get(url, timeout=self._timeout, stream=True) as response:
                if response.status_code != 200:
                    raise TelegramError(
                        f"Telegram refused to hand out a file ({response.status_code} {response.reason})"
                    )
                received = 0
                for block in response.iter_content(_BODY_BLOCK_BYTES):
                    if self._cancel.is_set():
                        raise Cancelled("the download was stopped")
                    if limit is not None and received + len(block) > limit:
                        block = block[: limit + 1 - received]
                    sink.write(block)
                    received += len(block)
                    if on_progress is not None:
                        on_progress(received)
                    if limit is not None and received > limit:
                        break
                return received
        except requests.RequestException as error:
            raise TelegramError(
                f"downloading from Telegram failed: {self._describe_network_error(error)}"
            ) from None

    @staticmethod
    def _sent(result: Any) -> SentMessage:
        if not isinstance(result, dict):
            return SentMessage(message_id=0)
        document = result.get("document")
        if not isinstance(document, dict):
            document = {}
        return SentMessage(message_id=int(result.get("message_id", 0)), file_id=document.get("file_id"))

    def _call(
        self,
        method: str,
        chat_id: str,
        make_request: Callable[[], dict[str, Any]],
        attempts: int,
        upload_bytes: int = 0,
        read_timeout_s: float | None = None,
    ) -> Any:
        """POST a method (each attempt at what posts in a chat after its turn, with a pacer); return its
        `result`. Raise TelegramRejected at once on 4xx, TelegramError once the retries are spent,
        Cancelled when told to stop. `read_timeout_s` replaces telegram.timeout (a long poll's)."""
        timeout = self._timeout if read_timeout_s is None else (CONNECT_TIMEOUT_S, read_timeout_s)
        url = f"{self._api_url}/bot{self._token}/{method}"
        failure = ""
        unanswered = False
        for attempt in range(1, attempts + 1):
            if self._cancel.is_set():
                raise Cancelled("tgbackupd is stopping")
            if self._pacer is not None and chat_id and method in PACED_METHODS:
                turn = self._pacer.reserve(chat_id)
                if turn > 0 and self._wait(turn):
                    raise Cancelled("tgbackupd is stopping")
            began = self._clock.monotonic()
            try:
                response = self._session.post(url, timeout=timeout, allow_redirects=False, **make_request())
            except requests.RequestException as error:
                failure = self._describe_network_error(error)
                unanswered = True
                delay = min(MAX_BACKOFF_S, 2.0 ** (attempt - 1))
            else:
                unanswered = False
                reply = self._json(response)
                if response.status_code == 200 and reply.get("ok"):
                    if upload_bytes:
                        with self._uploads_lock:
                            self._uploaded_bytes += upload_bytes
                            self._upload_s += self._clock.monotonic() - began
                    return reply.get("result")
                description = str(reply.get("description") or response.reason or "no description")
                failure = f"{response.status_code} {scrub(description, [self._token])}"
                if response.status_code == 429:
                    retry_after = self._retry_after(reply)
                    if retry_after > MAX_RETRY_AFTER_S:
                        raise TelegramError(
                            f"Telegram asked to wait {retry_after} s before the next request (429 Too Many "
                            f"Requests); giving up rather than blocking that long"
                        )
                    delay = float(retry_after)
                elif 400 <= response.status_code < 500:
                    raise self._rejected(response.status_code, description, chat_id)
                else:
                    delay = min(MAX_BACKOFF_S, 2.0 ** (attempt - 1))
            if attempt < attempts:
                self.on_retry(method, attempt, delay, failure)
                if self._wait(delay):
                    raise Cancelled("tgbackupd is stopping")
        message = (
            f"Telegram {method} failed {attempts} time(s), last with: {failure}. "
            "Check that this host reaches the Bot API (telegram.api_url) and try again"
        )
        raise TelegramUnreachable(message, failure) if unanswered else TelegramError(message)

    def _describe_network_error(self, error: requests.RequestException) -> str:
        if isinstance(error, requests.Timeout):
            kind = "timed out talking"
        elif isinstance(error, requests.ConnectionError):
            kind = "could not connect"
        else:
            kind = "request failed"
        host = urllib.parse.urlsplit(self._api_url).netloc
        return scrub(f"{kind} to {host} ({type(error).__name__}: {error})", [self._token])[:400]

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            reply = response.json()
        except ValueError:
            return {}
        return reply if isinstance(reply, dict) else {}

    @staticmethod
    def _retry_after(reply: dict[str, Any]) -> int:
        parameters = reply.get("parameters")
        value = parameters.get("retry_after") if isinstance(parameters, dict) else None
        return value if isinstance(value, int) and value >= 0 else 5

    def _rejected(self, status: int, description: str, chat_id: str) -> TelegramRejected:
        """Turn a 4xx answer into a message that says what to fix."""
        description = scrub(description, [self._token])
        lowered = description.lower()
        if status == 401:
            return TelegramRejected(
                f"Telegram rejected the bot token (401 {description}): it is wrong or was revoked. Put the "
                "token @BotFather gave you in TELEGRAM_BOT_TOKEN or the telegram-bot-token credential"
            )
        if status == 404:
            return TelegramRejected(
                f"Telegram answered 404 {description}: the bot token is malformed, or telegram.api_url "
                f"({self._api_url}) is not a Bot API server"
            )
        if status == 409:
            return TelegramConflict(
                f"Telegram refused to hand out the chat's updates (409 {description}): another program "
                "polls getUpdates with this bot token (a second tgbackupd, another bot), or a webhook was "
                "set for it (remove it with deleteWebhook, or give tgbackupd a bot of its own)"
            )
        if status == 413:
            return TelegramTooLarge(
                f"the Bot API server refused the file as too large (413 {description}): lower "
                "telegram.part_size_mb (and telegram.max_upload_mb) to the server's limit"
            )
        if "chat not found" in lowered:
            return TelegramRejected(
                f"Telegram chat {chat_id} was not found ({status} {description}): check TELEGRAM_CHAT_ID "
                "(a channel's id starts with -100) and that the bot was added to that chat"
            )
        if "message can't be deleted" in lowered:
            return MessageNotDeletable(
                f"Telegram refused to delete a message in chat {chat_id} ({status} {description}): a bot "
                "may delete its own messages only within 48 hours of sending them, unless it is an "
                'administrator with the right to delete messages ("Delete messages of others" in a '
                'channel, "Delete messages" in a group); give the bot that right, or set '
                "telegram.delete_old = false and delete old backups in the chat by hand"
            )
        if status == 403:
            return TelegramRejected(
                f"the bot may not post in chat {chat_id} ({status} {description}): add the bot to the "
                "channel as an administrator allowed to post messages"
            )
        return TelegramRejected(f"Telegram refused the request ({status} {description})")
