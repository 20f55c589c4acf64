"""Commands in the chat (telegram.commands): /status, /backup [DATABASE], /list and /last_error, answered
to the users of telegram.admin_user_ids, in the configured chat or in a private chat with the bot. A
thread of its own long-polls getUpdates; everything an update carries is input from the chat, parsed into
a ChatCommand and checked before anything is done. Everyone else is ignored and logged (user and chat
ids, and the command word: never the rest of a message). The answers are what tgbackupctl shows: the
status and the list come from Commands, and /backup starts a backup through the same runner."""

import re
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from .clock import Clock
from .commands import Commands, describe_last
from .config import Config
from .ctl import render_backup, render_backups, render_listing, render_status
from .errors import Cancelled
from .runner import RunningBackup
from .state import StateError, StateStore
from .telegram import BotApi, ChatPacer, TelegramConflict, TelegramError

log = structlog.stdlib.get_logger("tgbackupd.chat_commands")

POLL_TIMEOUT_S = 50
MAX_BACKOFF_S = 60.0
STOP_WAIT_S = 2.0  # how long shutdown waits for a poll in flight; the thread is left to end with the process
OFFSET_KEY = "telegram_updates_offset"
# A command sent this long before the poller started is not carried out: it waited in Telegram while
# tgbackupd was down, and a /backup of hours ago is not what anyone expects now. The margin allows for
# the host's clock and Telegram's disagreeing a little.
STALE_MARGIN_S = 60
# Channel posts are asked for only to say in the log why they are not obeyed (they carry no sender).
ALLOWED_UPDATES = ["message", "channel_post"]
LISTED_BACKUPS = 10
MESSAGE_LIMIT = 4096
_MAX_ID = 2**53
_CHAT_TYPES = frozenset({"private", "group", "supergroup", "channel"})
_COMMAND = re.compile(r"/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]{1,64}))?(?:\s+(.*))?", re.DOTALL)
_DATABASE_ARGUMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
HELP = (
    "Commands: /status, /backup (every database), /backup DATABASE (one of them), /list (the newest "
    f"{LISTED_BACKUPS} backups), /last_error"
)


@dataclass(frozen=True)
class ChatCommand:
    """A message that starts with a slash, as far as it could be read. `word` is the command without its
    slash and bot name, lowercased ("" when the text after the slash is no command word); `user_id` is
    None for a channel post, which names no sender."""

    update_id: int
    chat_id: int
    chat_type: str
    chat_username: str | None
    user_id: int | None
    user_is_bot: bool
    word: str
    bot_name: str | None
    argument: str
    sent_at: int


def _identifier(value: Any) -> int | None:
    """An id as the Bot API sends them (an integer of at most 52 bits), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not -_MAX_ID < value < _MAX_ID:
        return None
    return value


def update_id_of(update: Any) -> int | None:
    return _identifier(update.get("update_id")) if isinstance(update, dict) else None


def parse_update(update: Any) -> ChatCommand | None:
    """Given an update as getUpdates returned it, return the command its message (or channel post)
    carries; None when it carries none, or is not shaped as the Bot API documents it."""
    update_id = update_id_of(update)
    if update_id is None:
        return None
    message = update.get("message", update.get("channel_post"))
    if not isinstance(message, dict):
        return None
    chat, sender, text = message.get("chat"), message.get("from"), message.get("text")
    if not isinstance(chat, dict) or not isinstance(text, str) or not text.startswith("/"):
        return None
    chat_id, chat_type, username = _identifier(chat.get("id")), chat.get("type"), chat.get("username")
    sent_at = _identifier(message.get("date"))
    if chat_id is None or chat_type not in _CHAT_TYPES or sent_at is None:
        return None
    if username is not None and not isinstance(username, str):
        return None
    user_id: int | None = None
    user_is_bot = False
    if sender is not None:
        if not isinstance(sender, dict) or _identifier(sender.get("id")) is None:
            return None
        user_id = sender["id"]
        user_is_bot = sender.get("is_bot") is not False
    if len(text) > MESSAGE_LIMIT:
        return None
    matched = _COMMAND.fullmatch(text.strip())
    word, bot_name, argument = (
        (matched[1].lower(), matched[2], (matched[3] or "").strip()) if matched else ("", None, "")
    )
    return ChatCommand(
        update_id=update_id,
        chat_id=chat_id,
        chat_type=chat_type,
        chat_username=username,
        user_id=user_id,
        user_is_bot=user_is_bot,
        word=word,
        bot_name=bot_name,
        argument=argument,
        sent_at=sent_at,
    )


def last_errors(status: dict[str, Any]) -> str:
    """What went wrong last, from a status reply: each database's failed last backup, the backups waiting
    for Telegram and why, and a state file that cannot be read; or that nothing did."""
    databases = status.get("databases") or {}
    lasts = {prefix: each.get("last_backup") for prefix, each in databases.items()} or {
        "": status.get("last_backup")
    }
    lines = []
    for prefix, last in lasts.items():
        if last and last.get("error"):
            name = f"{prefix}: " if prefix else ""
            lines.append(f"{name}the backup started {last.get('started_at')} FAILED: {last['error']}")
    for waiting in status.get("pending") or []:
        if waiting.get("last_error"):
            attempt = f"attempt {waiting['attempts']}"
            lines.append(f"{waiting['name']} waits for Telegram ({attempt}): {waiting['last_error']}")
    if status.get("state_problem"):
        lines.append(f"State file: {status['state_problem']}")
    return "\n".join(lines) or f"No errors. Last backup: {describe_last(status.get('last_backup'))}"


def _fitted(text: str) -> str:
    """A text Telegram takes in one message: cut at its limit, saying so."""
    if len(text) <= MESSAGE_LIMIT:
        return text
    return text[: MESSAGE_LIMIT - 40] + "\n… (cut: see tgbackupctl on the server)"


class ChatCommands:
    """Answers the admins' commands while the daemon runs. `start` begins polling from a thread of its
    own; `stop` (at shutdown, or when a reload replaces it) ends it, waiting a bounded while."""

    def __init__(
        self,
        config: Config,
        commands: Commands,
        store: StateStore,
        shutdown: threading.Event,
        clock: Clock | None = None,
    ) -> None:
        """`shutdown`: set when tgbackupd stops. It alone cancels the answers: a reload that stops this
        poller must not lose the result of a /backup still running, which is sent when it ends."""
        telegram = config.telegram
        # Its own: a reload that changes the Telegram settings stops this poller, the daemon running on.
        cancel = threading.Event()
        assert telegram.bot_token is not None and telegram.chat_id is not None
        self._chat_id = telegram.chat_id
        self._admins = frozenset(telegram.admin_user_ids)
        self._commands = commands
        self._store = store
        self._cancel = cancel
        self._clock = clock or Clock()
        self._started_at = int(self._clock.now().timestamp())
        # Two clients: the long poll holds its connection for up to a minute while answers go out.
        self._poll_bot = BotApi(
            telegram.api_url, telegram.bot_token, timeout_s=telegram.timeout, retries=0, cancel=cancel
        )
        self._reply_bot = BotApi(
            telegram.api_url,
            telegram.bot_token,
            timeout_s=telegram.timeout,
            retries=2,
            cancel=shutdown,
            pacer=ChatPacer(telegram.messages_per_minute, self._clock),
        )
        self._replying = threading.Lock()
        # Who may still answer through _reply_bot: the poller, and each /backup waiting for its result.
        # The last to end closes it (a reload must not leak a connection to Telegram).
        self._reply_users = 0
        self._reply_users_lock = threading.Lock()
        self._bot_name: str | None = None
        self._state = "starting"
        self._problem: str | None = None
        self._thread = threading.Thread(target=self._run, name="chat-commands", daemon=True)

    def describe(self) -> dict[str, Any]:
        """For status: whether the chat's commands are answered, and if not, why."""
        return {
            "state": self._state,
            "problem": self._problem,
            "bot": self._bot_name,
            "admin_user_ids": len(self._admins),
        }

    def start(self) -> None:
        self._use_reply_bot()
        self._thread.start()

    def stop(self) -> None:
        """Tell the poller to stop and wait for it a bounded while; a long poll in flight is left to end
        on its own (what it fetched is not confirmed, so Telegram hands it out again), and the poller
        then closes its connections. A /backup's result still comes when the backup ends."""
        self._cancel.set()
        if self._thread.ident is None:  # never started: nothing else will close them
            self._poll_bot.close()
            self._reply_bot.close()
        else:
            self._thread.join(STOP_WAIT_S)
        self._state = "stopped"

    def _run(self) -> None:
        try:
            if self._prepare():
                self._poll()
        except Cancelled:
            pass
        except Exception as error:  # a bug here must not go unnoticed, nor take the daemon down
            log.exception("Chat commands stopped unexpectedly; please report", error=type(error).__name__)
            self._state, self._problem = "failed", f"internal error: {type(error).__name__}"
        finally:
            self._poll_bot.close()
            self._release_reply_bot()

    def _use_reply_bot(self) -> None:
        with self._reply_users_lock:
            self._reply_users += 1

    def _release_reply_bot(self) -> None:
        with self._reply_users_lock:
            self._reply_users -= 1
            last = self._reply_users == 0
        if last:
            self._reply_bot.close()

    def _prepare(self) -> bool:
        """Learn the bot's name (for /command@name) and make sure no webhook takes the updates; return
        whether polling can begin."""
        failures = 0
        while True:
            try:
                name = self._poll_bot.get_me().get("username")
                self._bot_name = name if isinstance(name, str) and name else None
                webhook = self._poll_bot.get_webhook_info().get("url")
                break
            except TelegramError as error:
                failures += 1
                self._back_off("Chat commands not started: getMe or getWebhookInfo failed", error, failures)
        if isinstance(webhook, str) and webhook:
            self._state = "webhook_set"
            self._problem = (
                "this bot token has a webhook set, so Telegram hands its updates to that web address and "
                "refuses getUpdates: chat commands cannot work. If nothing needs that webhook, remove it "
                "(https://api.telegram.org/bot<TOKEN>/deleteWebhook) and restart tgbackupd; else give "
                "tgbackupd a bot of its own"
            )
            log.error("Chat commands are off: the bot has a webhook", error=self._problem)
            return False
        return True

    def _poll(self) -> None:
        offset = self._stored_offset()
        failures = 0
        self._state, self._problem = "polling", None
        log.info("Answering chat commands", bot=self._bot_name, admins=len(self._admins))
        while not self._cancel.is_set():
            try:
                updates = self._poll_bot.get_updates(offset, POLL_TIMEOUT_S, ALLOWED_UPDATES)
            except TelegramConflict as error:
                failures += 1
                self._back_off("Chat commands: Telegram refused getUpdates (409 Conflict)", error, failures)
                continue
            except TelegramError as error:
                failures += 1
                self._back_off("Chat commands: getUpdates failed", error, failures)
                continue
            failures = 0
            self._state, self._problem = "polling", None
            offset = self._handle_batch(updates, offset)

    def _handle_batch(self, updates: list[Any], offset: int | None) -> int | None:
        """Record the offset past this batch before acting on it (a restart must never run a /backup
        again), then act; return the next offset. The next offset follows the batch's own ids: after a
        week without updates, Telegram numbers them anew, possibly lower. Once tgbackupd is stopping, the
        batch is left unconfirmed: nothing could be started now, and the next start sees it again."""
        if self._cancel.is_set():
            return offset
        ids = [update_id for update_id in map(update_id_of, updates) if update_id is not None]
        if not ids:
            if updates:
                log.warning("Chat commands: Telegram sent updates without an update_id; ignored")
            return offset
        offset = max(ids) + 1
        recorded = True
        try:
            self._store.set_meta(OFFSET_KEY, str(offset))
        except StateError as error:
            recorded = False
            log.error("Chat commands: the updates' offset could not be recorded", error=str(error))
        for update in updates:
            command = parse_update(update)
            if command is not None:
                self._handle(command, recorded)
        return offset

    def _stored_offset(self) -> int | None:
        try:
            stored = self._store.meta(OFFSET_KEY)
        except StateError as error:
            log.warning("Chat commands: the recorded updates' offset cannot be read", error=str(error))
            return None
        if stored is None:
            return None
        if not re.fullmatch(r"[0-9]{1,16}", stored):
            log.warning("Chat commands: the recorded updates' offset is no number; ignored")
            return None
        return int(stored)

    def _back_off(self, event: str, error: TelegramError, failures: int) -> None:
        """Log, say so in status, and wait longer each time (up to a minute): never a busy loop."""
        delay = min(MAX_BACKOFF_S, 2.0 ** (failures - 1))
        self._state, self._problem = "failing", str(error)
        log.warning(event, error=str(error), attempt=failures, retry_in_s=delay)
        if self._clock.wait(self._cancel, delay):
            raise Cancelled("tgbackupd is stopping")

    def _handle(self, command: ChatCommand, offset_recorded: bool) -> None:
        where = {"user_id": command.user_id, "chat_id": command.chat_id, "command": command.word or "?"}
        if command.bot_name and self._bot_name and command.bot_name.lower() != self._bot_name.lower():
            log.debug("Chat command for another bot ignored", **where)
            return
        if command.user_id is None:
            log.warning(
                "Chat command ignored: a channel post names no sender, so commands are not taken in a "
                "channel (send them in a private chat with the bot)",
                **where,
            )
            return
        if command.user_is_bot or command.user_id not in self._admins:
            log.warning("Chat command ignored: the sender is not in telegram.admin_user_ids", **where)
            return
        if not self._in_place(command):
            log.warning(
                "Chat command ignored: it came from a chat other than telegram.chat_id or a private chat "
                "with the bot",
                **where,
            )
            return
        if command.sent_at < self._started_at - STALE_MARGIN_S:
            log.info("Chat command sent before tgbackupd started; not carried out", **where)
            sent = datetime.fromtimestamp(command.sent_at).astimezone().isoformat(timespec="minutes")
            self._reply(
                command, f"/{command.word} of {sent} came before tgbackupd started: send it again if wanted"
            )
            return
        log.info("Chat command received", **where)
        self._reply(command, self._answer(command, offset_recorded))

    def _in_place(self, command: ChatCommand) -> bool:
        """The configured chat (by id, or by @name), or a private chat with this admin."""
        if command.chat_type == "private":
            return command.chat_id == command.user_id
        if str(command.chat_id) == self._chat_id:
            return True
        return bool(command.chat_username) and f"@{command.chat_username}".lower() == self._chat_id.lower()

    def _answer(self, command: ChatCommand, offset_recorded: bool) -> str:
        if command.word == "status":
            return render_status(self._commands.status())
        if command.word == "list":
            return self._listing()
        if command.word == "last_error":
            return last_errors(self._commands.status())
        if command.word == "backup":
            return self._backup(command, offset_recorded)
        return f"Unknown command. {HELP}"

    def _listing(self) -> str:
        reply = self._commands.list_backups()
        if "error" in reply:
            return f"The list cannot be read: {reply['error']['message']}"
        rows = reply["data"]["backups"]
        more = len(rows) - LISTED_BACKUPS
        return render_listing(rows[:LISTED_BACKUPS]) + (f"\n… and {more} older" if more > 0 else "")

    def _backup(self, command: ChatCommand, offset_recorded: bool) -> str:
        if command.argument and not _DATABASE_ARGUMENT.fullmatch(command.argument):
            return "Usage: /backup, or /backup DATABASE (a database's name or prefix)"
        if not offset_recorded:
            return (
                "Not started: the state file cannot record which commands were handled, so a restart "
                "could run this backup again. See tgbackupctl status on the server"
            )
        database = command.argument or None
        started = self._commands.start_manual(database)
        if not isinstance(started, RunningBackup):
            return f"Not started: {started['error']['message']}"
        self._use_reply_bot()
        threading.Thread(
            target=self._report_result, args=(command, started, database), name="chat-backup", daemon=True
        ).start()
        return f"Backup of {database or 'every database'} started; the result follows when it ends."

    def _report_result(self, command: ChatCommand, running: RunningBackup, database: str | None) -> None:
        try:
            running.done.wait()
            reply = self._commands.outcome(running, database)
            body = reply.get("data") or reply["error"]
            backups, backup = body.get("backups"), body.get("backup")
            details = render_backups(backups) if backups else render_backup(backup) if backup else ""
            self._reply(command, body["message"] + (f"\n{details}" if details else ""))
        finally:
            self._release_reply_bot()

    def _reply(self, command: ChatCommand, text: str) -> None:
        try:
            with self._replying:
                self._reply_bot.send_message(str(command.chat_id), _fitted(text))
        except Cancelled:
            log.warning(
                "Chat command's answer not sent: tgbackupd is stopping",
                chat_id=command.chat_id,
                command=command.word or "?",
            )
        except TelegramError as error:
            log.warning("Chat command's answer could not be sent", chat_id=command.chat_id, error=str(error))


def chat_commands_for(
    config: Config, commands: Commands, store: StateStore, shutdown: threading.Event
) -> ChatCommands | None:
    """The poller the configuration asks for (telegram.commands), else None."""
    return ChatCommands(config, commands, store, shutdown) if config.telegram.commands else None
