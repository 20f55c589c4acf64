"""`tgbackupd --check` and `tgbackupctl check`: the live setup checked end to end, one line per check,
each failure with what to do."""

import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

from . import encryption, psql
from .config import Config, DatabaseConfig
from .errors import TgbackupdError
from .pgdump import pg_dump_major
from .redaction import scrub
from .state import StateError, StateStore, check_location
from .statefile import open_reader
from .storage import BackupDirectory
from .telegram import BotApi, TelegramError, TelegramRejected, TelegramUnreachable


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'✓' if check.ok else '✗'} {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"    fix: {check.fix}")
    return "\n".join(lines)


def run_checks(config: Config, directory: BackupDirectory, store: StateStore | None = None) -> list[Check]:
    """Check the setup; `store` is the daemon's own, written to once as a backup would (without it, the
    state file is only read)."""
    secrets = config.secrets()
    source = str(config.config_file or "environment only")
    checks = [Check("configuration", True, f"valid ({source})")]
    for target in config.databases:  # each entry's server, as its backup connects to it
        checks += _postgres(target.database)
    checks.append(_directory(directory))
    checks.append(_state_file(config, store))
    checks += _encryption(config)
    checks += _telegram(config)
    return [Check(c.name, c.ok, scrub(c.detail, secrets), scrub(c.fix, secrets)) for c in checks]


def _postgres(database: DatabaseConfig) -> list[Check]:
    try:
        client_major, client_text = pg_dump_major(database.pg_dump)
    except TgbackupdError as error:
        return [
            Check("pg_dump", False, str(error), "apt-get install postgresql-client, or set database.pg_dump")
        ]
    found = Check("pg_dump", True, client_text)
    try:
        number = int(psql.query(database, "SHOW server_version_num")[0][0])
    except (TgbackupdError, IndexError, ValueError) as error:
        return [
            found,
            Check(
                "database",
                False,
                f"cannot connect to {database.describe()}: {error}",
                "check DATABASE_URL (host, port, user, password, database name) and that "
                "PostgreSQL accepts this connection (pg_hba.conf)",
            ),
        ]
    server_major = number // 10000
    reached = Check("database", True, f"{database.describe()} reached, PostgreSQL {server_major}")
    if client_major < server_major:
        return [
            found,
            reached,
            Check(
                "pg_dump version",
                False,
                f"pg_dump {client_major} cannot dump a PostgreSQL {server_major} server",
                f"install postgresql-client-{server_major} and set database.pg_dump to its pg_dump",
            ),
        ]
    return [found, reached, Check("pg_dump version", True, f"{client_major} can dump server {server_major}")]


def _encryption(config: Config) -> list[Check]:
    """age, run as a backup (and verify_after) runs it, when backups are encrypted."""
    if not config.encryption.enabled:
        return []
    try:
        return [
            Check(
                "encryption",
                True,
                encryption.round_trip(config.encryption.recipients, config.encryption.identity),
            )
        ]
    except TgbackupdError as error:
        return [
            Check(
                "encryption",
                False,
                str(error),
                "apt-get install age; check encryption.recipients, and that encryption.identity_file is the "
                "identity of one of them",
            )
        ]


def _directory(directory: BackupDirectory) -> Check:
    try:
        directory.ensure()
        with tempfile.NamedTemporaryFile(dir=directory.path, prefix=".tgbackupd-check-"):
            pass
    except (TgbackupdError, OSError) as error:
        text = str(error) if isinstance(error, TgbackupdError) else (error.strerror or str(error))
        return Check(
            "backup directory",
            False,
            f"{directory.path}: {text}",
            "give the tgbackupd user a directory it can write (backup.directory)",
        )
    free = os.statvfs(directory.path)
    return Check(
        "backup directory",
        True,
        f"{directory.path} is writable, {free.f_bavail * free.f_frsize / 2**30:.1f} GB free",
    )


def _state_file(config: Config, store: StateStore | None) -> Check:
    path = config.daemon.state_file
    fix = "see the message; daemon.state_file must be a file the tgbackupd user can write"
    try:
        check_location(path, create=False)
        if store is not None:
            store.probe()
            backups, waiting = len(store.known()), len(store.waiting())
        else:
            reader = open_reader(path)
            try:
                backups, waiting = len(reader.known()), len(reader.waiting())
            finally:
                reader.close()
    except StateError as error:
        return Check("state file", False, str(error), fix)
    return Check(
        "state file", True, f"{path}: {backups} backup(s) in the catalogue, {waiting} waiting for Telegram"
    )


def _telegram(config: Config) -> list[Check]:
    telegram = config.telegram
    if not telegram.configured:
        return [
            Check(
                "telegram",
                False,
                f"not configured ({', '.join(telegram.missing)} missing): backups stay local",
                "set TELEGRAM_BOT_TOKEN (or the telegram-bot-token credential) and TELEGRAM_CHAT_ID",
            )
        ]
    assert telegram.bot_token is not None and telegram.chat_id is not None
    bot = BotApi(telegram.api_url, telegram.bot_token, timeout_s=min(telegram.timeout, 30), retries=1)
    checks: list[Check] = []
    try:
        _ask_bot_api(bot, telegram.chat_id, checks, telegram.delete_old)
        if telegram.commands and checks[0].ok:  # the token works: ask about its webhook
            checks.append(_webhook(bot))
    except TelegramUnreachable as error:
        checks.append(
            Check(
                "Bot API",
                False,
                f"cannot reach the Bot API at {telegram.api_url}: {error.reason}",
                "check the network, a proxy, or telegram.api_url",
            )
        )
    except TelegramError as error:  # a 5xx, or a 429 asking for a long wait: the server, not the setup
        checks.append(Check("Bot API", False, str(error), "the Bot API server is failing: try again later"))
    finally:
        bot.close()
    return checks


def _ask_bot_api(bot: BotApi, chat_id: str, checks: list[Check], delete_old: bool = False) -> None:
    """Append the checks of the token, the chat and the bot's rights (with `delete_old`, that of deleting
    old backups), up to the first the Bot API refuses. Raise TelegramError when it does not answer, or not
    properly: that says nothing about the setup."""
    try:
        me = bot.get_me()
    except TelegramRejected as error:
        checks.append(Check("bot token", False, str(error), "a token from @BotFather in TELEGRAM_BOT_TOKEN"))
        return
    checks.append(Check("bot token", True, f"valid, bot @{me.get('username')}"))
    try:
        chat = bot.get_chat(chat_id)
    except TelegramRejected as error:
        checks.append(Check("chat", False, str(error), "check TELEGRAM_CHAT_ID, and add the bot to the chat"))
        return
    title = chat.get("title") or chat.get("username") or chat_id
    checks.append(Check("chat", True, f"{chat.get('type')} {title!r} reached"))
    if chat.get("type") == "private":
        if delete_old:
            checks.append(_deleting(None))
        return
    try:
        member = bot.get_chat_member(chat_id, int(me["id"]))
    except (TelegramRejected, KeyError, ValueError) as error:
        checks.append(
            Check(
                "bot rights",
                False,
                f"cannot read the bot's rights: {error}",
                "make the bot an administrator of the chat",
            )
        )
        return
    checks.extend(_rights(chat.get("type"), member))
    if delete_old:
        checks.append(_deleting(member))


def _deleting(member: dict[str, Any] | None) -> Check:
    """Whether the bot may delete the old backups retention drops (telegram.delete_old): only with the
    right to delete messages, since Telegram lets a bot delete its own messages for 48 hours only."""
    if member is not None and (member.get("status") == "creator" or member.get("can_delete_messages")):
        return Check("deleting old backups", True, "the bot may delete messages of any age")
    where = "in a private chat a bot" if member is None else "without the right to delete messages the bot"
    return Check(
        "deleting old backups",
        False,
        f"telegram.delete_old is on, but {where} may delete its messages only within 48 hours of sending "
        "them: older backups would stay in the chat",
        'make the bot an administrator with the right to delete messages ("Delete messages of others" in '
        "a channel), or set telegram.delete_old = false",
    )


def _webhook(bot: BotApi) -> Check:
    """Chat commands long-poll getUpdates, which Telegram refuses while the token has a webhook. The
    webhook's address is not shown: it may hold a secret of whatever receives it."""
    if bot.get_webhook_info().get("url"):
        return Check(
            "chat commands",
            False,
            "the bot token has a webhook set, so Telegram refuses getUpdates: chat commands cannot work",
            "if nothing needs the webhook, remove it (https://api.telegram.org/bot<TOKEN>/deleteWebhook) and "
            "restart tgbackupd; else give tgbackupd a bot of its own",
        )
    return Check("chat commands", True, "no webhook set, so the bot's updates can be polled")


def _rights(chat_type: str | None, member: dict[str, Any]) -> list[Check]:
    status = member.get("status")
    if status in ("left", "kicked"):
        return [
            Check(
                "bot rights",
                False,
                f"the bot is {status} from the chat",
                "add the bot to the channel as an administrator allowed to post messages",
            )
        ]
    if chat_type == "channel" and not (status == "creator" or member.get("can_post_messages")):
        return [
            Check(
                "bot rights",
                False,
                "the bot may not post in the channel",
                "make it an administrator with the right to post messages",
            )
        ]
    pin = "can_edit_messages" if chat_type == "channel" else "can_pin_messages"
    if status != "creator" and not member.get(pin) and status == "administrator":
        return [
            Check("bot rights", True, "may post"),
            Check(
                "pinning",
                False,
                "the bot may not pin the newest manifest",
                "give it the right to "
                + ("edit messages" if chat_type == "channel" else "pin messages")
                + " so that a new machine finds the newest backup",
            ),
        ]
    return [Check("bot rights", True, f"{status}, may post and pin")]
