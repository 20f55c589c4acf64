"""A Bot API stand-in on 127.0.0.1: answers sendDocument, sendMessage, pinChatMessage, getChat, getFile
and file downloads as the real server does, with its size limits (50 MB up, 20 MB down) and its error
replies, and can be told to fail (5xx, 429 with retry_after, 4xx, a reset connection, a stall, a
download cut short). Tests read what it received and may damage what it stores. Tests also write in the
chat (`write`): getUpdates hands those messages out as the real server does (long polling, `offset`
confirming what came before, `allowed_updates`), and refuses with 409 while a webhook is set
(`webhook_url`, which getWebhookInfo tells)."""

import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAKE_TOKEN = "123456789:fake-token-for-tests-only"
CHAT_ID = "-100123456789"
UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024
DOWNLOAD_LIMIT_BYTES = 20 * 1024 * 1024
CAPTION_LIMIT = 1024
MESSAGE_LIMIT = 4096


@dataclass
class Received:
    method: str
    fields: dict[str, str]
    file_name: str | None = None
    content: bytes | None = None
    message_id: int = 0


@dataclass
class Fault:
    """What to do instead of answering the next request: an HTTP status with a Bot API error body,
    `reset` (close the connection), `stall`, `truncate` (a file download cut in half), `damage` (a file
    download with one byte changed), or `pass` (answer as usual: it lets a fault land on a later
    request)."""

    status: int = 500
    description: str = "Internal Server Error"
    retry_after: int | None = None
    action: str = "reply"
    stall_s: float = 0.0


@dataclass
class BotApiState:
    token: str
    chats: set[str]
    upload_limit: int
    download_limit: int = DOWNLOAD_LIMIT_BYTES
    can_pin: bool = True
    # Telegram's rules for deleteMessage: a bot deletes its own messages within 48 hours of sending them;
    # with the right to delete messages (an administrator's can_delete_messages), any message of any age.
    can_delete_messages: bool = True
    wall_clock: Callable[[], float] = time.time  # "now" for the 48 hours (a test moves it on by days)
    deleted: list[int] = field(default_factory=list)  # message ids deleted, in order
    kicked_from: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)  # message id → Message
    files: dict[str, bytes] = field(default_factory=dict)  # file id → content
    pinned: dict[str, dict[str, Any]] = field(default_factory=dict)  # chat id → pinned Message
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_message_id: int = 1
    uplink_bytes_per_s: float | None = None  # read uploads no faster than this, like a slow uplink
    clock: Callable[[], float] = time.monotonic  # what stamps `posts` (a test may give its own clock)
    posts: list[tuple[float, str]] = field(default_factory=list)  # (when, method) of every POST
    on_download: Callable[[str], None] | None = None  # told the file id of each download before it is sent
    updates: list[dict[str, Any]] = field(default_factory=list)  # not confirmed yet, oldest first
    written: dict[int, dict[str, Any]] = field(default_factory=dict)  # every update ever, by update_id
    next_update_id: int = 700_000_000
    updates_changed: threading.Condition = field(default_factory=threading.Condition)
    webhook_url: str = ""
    polls: int = 0  # getUpdates requests so far: a newer one ends the one waiting
    connections: int = 0  # open now: a client that keeps one after it is done leaks it
    closing: bool = False


def _error(status: int, description: str, retry_after: int | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return status, body


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: without this, Nagle's algorithm holds the body until the
        # client's delayed ACK, 40 ms on every reply, which no real Bot API server adds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.state.lock:
            self.server.state.connections += 1

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.connections -= 1
        super().finish()

    def do_GET(self) -> None:
        if self.path.startswith("/file/"):
            self._download()
        else:
            self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _download(self) -> None:
        state = self.server.state
        parts = urllib.parse.urlsplit(self.path).path.split("/")  # '', 'file', 'bot<token>', 'documents', id
        with state.lock:
            state.requests.append(self.path)
            fault = state.faults.pop(0) if state.faults else None
        if len(parts) != 5 or parts[2] != f"bot{state.token}" or parts[4] not in state.files:
            self._reply(*_error(404, "Not Found"))
            return
        if state.on_download is not None:
            state.on_download(parts[4])
        content = state.files[parts[4]]
        if fault is not None and fault.action == "damage":
            content = content[:-1] + bytes([content[-1] ^ 0xFF])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if fault is not None and fault.action == "truncate":
            self.wfile.write(content[: len(content) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(content)

    def _handle(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        path = urllib.parse.urlsplit(self.path).path
        with state.lock:
            state.requests.append(path)
            state.posts.append((state.clock(), path.rsplit("/", 1)[-1]))
            fault = state.faults.pop(0) if state.faults else None
        if fault is not None and fault.action == "reset":
            self.rfile.read(min(length, 64 * 1024))
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault is not None and fault.action == "stall":
            # Hang, then drop the request unprocessed: the client's timeout is what is being tested.
            time.sleep(fault.stall_s)
            self.close_connection = True
            return
        if length > state.upload_limit + 64 * 1024:
            # The real server refuses before reading it all; read it anyway so the client sees the reply.
            remaining = length
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 1024 * 1024)))
            self._reply(*_error(413, "Request Entity Too Large"))
            return
        body = self._read_body(length)
        if fault is not None and fault.action == "reply":
            self._reply(*_error(fault.status, fault.description, fault.retry_after))
            return
        self._reply(*self._answer(path, body))

    def _read_body(self, length: int) -> bytes:
        rate = self.server.state.uplink_bytes_per_s
        if not rate:
            return self.rfile.read(length)
        chunks = []
        began = time.monotonic()
        received = 0
        while received < length:
            chunk = self.rfile.read(min(64 * 1024, length - received))
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
            time.sleep(max(0.0, began + received / rate - time.monotonic()))
        return b"".join(chunks)

    def _answer(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        state = self.server.state
        parts = path.split("/")
        if len(parts) != 3 or not parts[1].startswith("bot"):
            return _error(404, "Not Found")
        token, method = parts[1][3:], parts[2]
        if token != state.token:
            return _error(401, "Unauthorized")
        fields, file_name, content = self._form(body)
        if method == "getMe":
            return 200, {
                "ok": True,
                "result": {
                    "id": int(token.split(":")[0]),
                    "is_bot": True,
                    "first_name": "Backups",
                    "username": "backup_test_bot",
                },
            }
        if method == "getFile":
            return self._get_file(fields.get("file_id", ""))
        if method == "getWebhookInfo":
            with state.updates_changed:
                pending = len(state.updates)
            return 200, {
                "ok": True,
                "result": {
                    "url": state.webhook_url,
                    "has_custom_certificate": False,
                    "pending_update_count": pending,
                },
            }
        if method == "getUpdates":
            return self._get_updates(fields)
        if method not in (
            "sendDocument",
            "sendMessage",
            "getChat",
            "pinChatMessage",
            "getChatMember",
            "editMessageCaption",
            "deleteMessage",
        ):
            return _error(404, "Not Found: method not found")
        chat_id = fields.get("chat_id", "")
        if not chat_id:
            return _error(400, "Bad Request: chat_id is empty")
        if chat_id not in state.chats:
            return _error(400, "Bad Request: chat not found")
        if chat_id in state.kicked_from:
            return _error(403, "Forbidden: bot is not a member of the channel chat")
        if method == "getChat":
            return 200, {"ok": True, "result": self._chat(chat_id)}
        if method == "pinChatMessage":
            return self._pin(chat_id, fields.get("message_id", ""))
        if method == "editMessageCaption":
            return self._edit_caption(fields.get("message_id", ""), fields.get("caption", ""))
        if method == "deleteMessage":
            return self._delete(chat_id, fields.get("message_id", ""))
        if method == "getChatMember":
            if chat_id in state.kicked_from:
                return 200, {"ok": True, "result": {"status": "kicked"}}
            rights = {
                "can_post_messages": True,
                "can_edit_messages": state.can_pin,
                "can_delete_messages": state.can_delete_messages,
            }
            return 200, {"ok": True, "result": {"status": "administrator", **rights}}
        if method == "sendMessage":
            text = fields.get("text", "")
            if not text:
                return _error(400, "Bad Request: message text is empty")
            if len(text) > MESSAGE_LIMIT:
                return _error(400, "Bad Request: message is too long")
        else:
            if content is None:
                return _error(400, "Bad Request: there is no document in the request")
            if not content:
                return _error(400, "Bad Request: file must be non-empty")
            if len(content) > state.upload_limit:
                return _error(413, "Request Entity Too Large")
            if len(fields.get("caption", "")) > CAPTION_LIMIT:
                return _error(400, "Bad Request: message caption is too long")
        with state.lock:
            message_id = state.next_message_id
            state.next_message_id += 1
            state.received.append(Received(method, fields, file_name, content, message_id))
        result: dict[str, Any] = {
            "message_id": message_id,
            "date": int(state.wall_clock()),
            "chat": self._chat(chat_id, with_pinned=False),
        }
        if method == "sendMessage":
            result["text"] = fields["text"]
        else:
            result["document"] = {
                "file_name": file_name,
                "file_id": f"doc{message_id}",
                "file_unique_id": f"u{message_id}",
                "file_size": len(content or b""),
            }
            if fields.get("caption"):
                result["caption"] = fields["caption"]
            with state.lock:
                state.files[f"doc{message_id}"] = content or b""
        with state.lock:
            state.messages[message_id] = result
        return 200, {"ok": True, "result": result}

    def _chat(self, chat_id: str, with_pinned: bool = True) -> dict[str, Any]:
        chat: dict[str, Any] = {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else 0, "type": "channel"}
        chat["title"] = "Backups"
        pinned = self.server.state.pinned.get(chat_id)
        if with_pinned and pinned is not None:
            chat["pinned_message"] = pinned
        return chat

    def _pin(self, chat_id: str, message_id: str) -> tuple[int, dict[str, Any]]:
        state = self.server.state
        if not state.can_pin:
            return _error(400, "Bad Request: not enough rights to manage pinned messages in the chat")
        message = state.messages.get(int(message_id)) if message_id.isdigit() else None
        if message is None:
            return _error(400, "Bad Request: message to pin not found")
        state.pinned[chat_id] = message
        return 200, {"ok": True, "result": True}

    def _delete(self, chat_id: str, message_id: str) -> tuple[int, dict[str, Any]]:
        """deleteMessage as the real API answers it: gone or never there → "message to delete not found";
        older than 48 hours without the right to delete messages → "message can't be deleted". The
        document goes with its message: its file id no longer downloads."""
        state = self.server.state
        if not message_id.lstrip("-").isdigit():
            return _error(400, "Bad Request: message identifier is not specified")
        with state.lock:
            message = state.messages.get(int(message_id))
            if message is None:
                return _error(400, "Bad Request: message to delete not found")
            if not state.can_delete_messages and state.wall_clock() - message["date"] >= 48 * 3600:
                return _error(400, "Bad Request: message can't be deleted")
            del state.messages[int(message_id)]
            document = message.get("document")
            if isinstance(document, dict):
                state.files.pop(document["file_id"], None)
            if state.pinned.get(chat_id, {}).get("message_id") == int(message_id):
                del state.pinned[chat_id]
            state.deleted.append(int(message_id))
        return 200, {"ok": True, "result": True}

    def _edit_caption(self, message_id: str, caption: str) -> tuple[int, dict[str, Any]]:
        state = self.server.state
        message = state.messages.get(int(message_id)) if message_id.isdigit() else None
        if message is None:
            return _error(400, "Bad Request: message to edit not found")
        if len(caption) > CAPTION_LIMIT:
            return _error(400, "Bad Request: message caption is too long")
        if message.get("caption") == caption:
            return _error(400, "Bad Request: message is not modified")
        with state.lock:
            message["caption"] = caption
            for received in state.received:
                if received.message_id == int(message_id):
                    received.fields["caption"] = caption
        return 200, {"ok": True, "result": message}

    def _get_updates(self, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Confirm the updates below `offset`, then hand out the rest of the kinds asked for, waiting up to
        `timeout` seconds for one to come (long polling). A getUpdates that comes meanwhile (another poller
        with the same token) ends the waiting one with 409, as the real server does."""
        state = self.server.state
        if state.webhook_url:
            return _error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
                "the webhook first",
            )
        try:
            offset = int(fields.get("offset", "0"))
            timeout = int(fields.get("timeout", "0"))
            allowed = json.loads(fields.get("allowed_updates", "[]"))
        except ValueError:
            return _error(400, "Bad Request: wrong parameter value")
        if timeout < 0 or not isinstance(allowed, list):
            return _error(400, "Bad Request: wrong parameter value")
        deadline = time.monotonic() + min(timeout, 120)
        with state.updates_changed:
            state.polls += 1
            this_poll = state.polls
            state.updates_changed.notify_all()
            if offset:
                state.updates = [update for update in state.updates if update["update_id"] >= offset]
            while True:
                found = [update for update in state.updates if not allowed or update.keys() & allowed]
                remaining = deadline - time.monotonic()
                if state.webhook_url:
                    return _error(409, "Conflict: terminated by setWebhook request")
                if state.polls != this_poll:
                    return _error(
                        409,
                        "Conflict: terminated by other getUpdates request; make sure that only one bot "
                        "instance is running",
                    )
                if found or remaining <= 0 or state.closing:
                    return 200, {"ok": True, "result": found[:100]}
                state.updates_changed.wait(remaining)

    def _get_file(self, file_id: str) -> tuple[int, dict[str, Any]]:
        state = self.server.state
        if file_id not in state.files:
            return _error(400, "Bad Request: invalid file_id")
        size = len(state.files[file_id])
        if size > state.download_limit:
            return _error(400, "Bad Request: file is too big")
        file = {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": size,
            "file_path": f"documents/{file_id}",
        }
        return 200, {"ok": True, "result": file}

    def _form(self, body: bytes) -> tuple[dict[str, str], str | None, bytes | None]:
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            return {key: str(value) for key, value in json.loads(body or b"{}").items()}, None, None
        if content_type.startswith("multipart/form-data"):
            return _multipart(body, content_type)
        return dict(urllib.parse.parse_qsl(body.decode("utf-8"))), None, None


def _multipart(body: bytes, content_type: str) -> tuple[dict[str, str], str | None, bytes | None]:
    """Split a multipart/form-data body (RFC 7578) into its fields and its one file, by finding the
    delimiters and copying each payload once: a stand-in that spends less CPU than the client it
    measures (the email package took seconds per part, splitting and trimming copies several times)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if boundary is None:
        return {}, None, None
    delimiter = b"\r\n--" + boundary[1].encode()
    fields: dict[str, str] = {}
    file_name = content = None
    position = body.find(delimiter[2:])
    if position < 0:
        return {}, None, None
    position += len(delimiter) - 2
    while not body.startswith(b"--", position):
        head_end = body.find(b"\r\n\r\n", position)
        end = body.find(delimiter, head_end)
        if head_end < 0 or end < 0:
            break
        disposition = body[position:head_end].decode("utf-8", "replace")
        payload = body[head_end + 4 : end]
        position = end + len(delimiter)
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if filename is not None:
            file_name, content = filename[1], payload
        elif name is not None:
            fields[name[1]] = payload.decode("utf-8")
    return fields, file_name, content


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: BotApiState

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timed out, was killed) is part of the tests, not an error to print."""


class BotApiStandIn:
    def __init__(
        self, token: str = FAKE_TOKEN, chats: set[str] | None = None, upload_limit: int = UPLOAD_LIMIT_BYTES
    ) -> None:
        self.state = BotApiState(token=token, chats=chats or {CHAT_ID}, upload_limit=upload_limit)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "BotApiStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.state.updates_changed:
            self.state.closing = True
            self.state.updates_changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, *faults: Fault) -> None:
        with self.state.lock:
            self.state.faults.extend(faults)

    def documents(self) -> list[Received]:
        return [item for item in self.state.received if item.method == "sendDocument"]

    def messages(self) -> list[Received]:
        return [item for item in self.state.received if item.method == "sendMessage"]

    def messages_to(self, chat_id: str | int) -> list[str]:
        """The texts the bot sent to one chat, in order."""
        return [item.fields["text"] for item in self.messages() if item.fields["chat_id"] == str(chat_id)]

    def write(
        self,
        text: str,
        user_id: int | None,
        chat_id: str | int = CHAT_ID,
        chat_type: str = "supergroup",
        sent_at: int | None = None,
    ) -> int:
        """A message someone writes where the bot sees it, as getUpdates hands it out: in a group, a
        private chat with the bot (chat_type "private", chat_id the user's id: the bot may then answer
        there) or a channel (a channel post, which names no sender: user_id None). Return its update_id."""
        message: dict[str, Any] = {
            "message_id": 0,
            "date": int(time.time()) if sent_at is None else sent_at,
            "chat": {"id": int(chat_id), "type": chat_type},
            "text": text,
        }
        if user_id is not None:
            message["from"] = {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}
        kind = "channel_post" if chat_type == "channel" else "message"
        with self.state.lock:
            message["message_id"] = self.state.next_message_id
            self.state.next_message_id += 1
            if chat_type == "private":
                self.state.chats.add(str(chat_id))
        with self.state.updates_changed:
            update_id = self.state.next_update_id
            self.state.next_update_id += 1
            self.state.updates.append({"update_id": update_id, kind: message})
            self.state.written[update_id] = self.state.updates[-1]
            self.state.updates_changed.notify_all()
        return update_id

    def hand_out_again(self, update_id: int) -> None:
        """Make a confirmed update unconfirmed, as if the confirmation had never reached the server (the
        poller crashed between handling an update and its next getUpdates)."""
        with self.state.updates_changed:
            self.state.updates.insert(0, self.state.written[update_id])
            self.state.updates_changed.notify_all()

    def set_webhook(self, url: str) -> None:
        """setWebhook (an empty url: deleteWebhook); a getUpdates waiting meanwhile ends with 409."""
        with self.state.updates_changed:
            self.state.webhook_url = url
            self.state.updates_changed.notify_all()

    def open_connections(self) -> int:
        with self.state.lock:
            return self.state.connections

    def pending_updates(self) -> list[int]:
        """The update_ids not confirmed yet (a getUpdates with a higher offset confirms them)."""
        with self.state.updates_changed:
            return [update["update_id"] for update in self.state.updates]
