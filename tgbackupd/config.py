"""Configuration: read the TOML file, apply the environment, validate it all, report every problem at once.

Environment variables win over the file. The names users already have in their `.env` files
(TELEGRAM_BOT_TOKEN, BACKUP_HOUR, DATABASE_URL, PGHOST, ...) work unchanged; every key is also
reachable as TGBACKUPD_<SECTION>_<KEY>, which wins over the legacy name when both are set.
"""

import difflib
import grp
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .encryption import SUFFIX as ENCRYPTED_SUFFIX
from .encryption import recipient_problem, recipients_file_entries
from .errors import ConfigError
from .formats import DUMP_EXTENSIONS, FORMATS, GZIP, ZSTD, Format, backup_suffix
from .manifest import MAX_RECIPIENTS
from .redaction import url_for_logs, url_secrets
from .scheduling import DrillSchedule, ScheduleError

DEFAULT_CONFIG_PATH = Path("/etc/tgbackupd/config.toml")
DEFAULT_API_URL = "https://api.telegram.org"
# The public Bot API hands a file back to a bot (getFile) only up to 20 MB: its server compares the size
# with 20 << 20 bytes, and our MB is 1024 * 1024 bytes too, so a part of exactly 20 MB still comes back.
PUBLIC_DOWNLOAD_LIMIT_MB = 20
TOKEN_CREDENTIAL = "telegram-bot-token"
IDENTITY_CREDENTIAL = "age-identity"
REDACTED = "<redacted>"
STATE_FILE_NAME = ".tgbackupd-state.db"

_PUBLIC_API_HOST = urllib.parse.urlsplit(DEFAULT_API_URL).hostname
_TOKEN_PATTERN = re.compile(r"^[0-9]+:[A-Za-z0-9_-]+$")
_CHAT_ID_PATTERN = re.compile(r"^(-?[0-9]+|@[A-Za-z][A-Za-z0-9_]{3,31})$")
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}
_LOG_LEVELS = ("debug", "info", "warning", "error")
_URL_SCHEMES = ("postgresql", "postgres")


class _Problem(Exception):
    """One value's problem; the loader adds the key and where the value came from."""


class _EntryProblems(_Problem):
    """Problems of some entries of a list value: (index, entry, problem) each, named one by one."""

    def __init__(self, entries: list[tuple[int, str, str]]) -> None:
        super().__init__("; ".join(problem for _, _, problem in entries))
        self.entries = entries


@dataclass(frozen=True)
class _Key:
    section: str
    name: str
    parse: Callable[[Any, bool], Any]
    default: Any = None
    legacy_env: tuple[str, ...] = ()
    secret: bool = False
    # What the key does, for people: tgbackupd.toml(5) is made from it (tgbackupd/manpages.py).
    description: str = ""

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_name(self) -> str:
        return f"TGBACKUPD_{self.section}_{self.name}".upper()


def _text(value: Any, from_env: bool) -> str | None:
    if not isinstance(value, str):
        raise _Problem(f"expected a string, got {type(value).__name__}")
    return value.strip() or None


def _integer(low: int, high: int, what: str) -> Callable[[Any, bool], int]:
    def parse(value: Any, from_env: bool) -> int:
        if from_env:
            value = _INLINE_COMMENT.sub("", value).strip()
            if not re.fullmatch(r"-?[0-9]+", value):
                raise _Problem(f"expected {what} from {low} to {high}, got {value!r}")
            value = int(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise _Problem(f"expected {what} from {low} to {high} (an integer), got {type(value).__name__}")
        if not low <= value <= high:
            raise _Problem(f"expected {what} from {low} to {high}, got {value}")
        return value

    return parse


def _boolean(value: Any, from_env: bool) -> bool:
    if from_env:
        word = _INLINE_COMMENT.sub("", value).strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise _Problem(f"expected true or false, got {value!r}")
    if not isinstance(value, bool):
        raise _Problem(f"expected true or false, got {type(value).__name__}")
    return value


def _chat_id(value: Any, from_env: bool) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _Problem(f"expected an integer chat id or an @channelname, got {type(value).__name__}")
    value = _INLINE_COMMENT.sub("", value).strip() if from_env else value.strip()
    if not value:
        return None
    if not _CHAT_ID_PATTERN.match(value):
        raise _Problem(f"expected an integer chat id (e.g. -100123456789) or an @channelname, got {value!r}")
    return value


def _bot_token(value: Any, from_env: bool) -> str | None:
    token = _text(value, from_env)
    if token is not None and not _TOKEN_PATTERN.match(token):
        raise _Problem("expected a bot token of the form <digits>:<letters>, as @BotFather gives it")
    return token


def _api_url(value: Any, from_env: bool) -> str:
    url = _text(value, from_env) or DEFAULT_API_URL
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise _Problem(f"expected an http:// or https:// URL such as {DEFAULT_API_URL}, got {url!r}")
    return url.rstrip("/")


def _path(value: Any, from_env: bool) -> Path | None:
    text = _text(value, from_env)
    if text is None:
        return None
    if not os.path.isabs(text):
        raise _Problem(f"expected an absolute path, got {text!r}")
    return Path(text)


def _metrics_file(value: Any, from_env: bool) -> Path | None:
    path = _path(value, from_env)
    if path is not None and path.suffix != ".prom":
        raise _Problem(
            f"expected a file name ending in .prom (node_exporter's textfile collector reads no other), "
            f"got {str(path)!r}"
        )
    return path


def _prefix(value: Any, from_env: bool) -> str | None:
    text = _text(value, from_env)
    if text is not None and not _PREFIX_PATTERN.match(text):
        raise _Problem(
            f"expected letters, digits, '_', '.' or '-' (it becomes part of file names), got {text!r}"
        )
    return text


def _log_level(value: Any, from_env: bool) -> str:
    text = (_text(value, from_env) or "info").lower()
    if text not in _LOG_LEVELS:
        raise _Problem(f"expected one of {', '.join(_LOG_LEVELS)}, got {text!r}")
    return text


def _compression(value: Any, from_env: bool) -> Format:
    text = (_text(value, from_env) or GZIP.name).lower()
    if text not in FORMATS:
        raise _Problem(f"expected one of {', '.join(FORMATS)}, got {text!r}")
    return FORMATS[text]


def _list(item: Callable[[str], str | None], most: int = 1000) -> Callable[[Any, bool], tuple[str, ...]]:
    """A list: a TOML array of strings, or in the environment the strings separated by commas. Each entry
    is checked by `item` (which returns its problem, or None); every bad entry is named."""

    def parse(value: Any, from_env: bool) -> tuple[str, ...]:
        if from_env:
            value = [entry.strip() for entry in value.split(",") if entry.strip()]
        elif not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
            raise _Problem(f'expected a list of strings (["…", "…"]), got {type(value).__name__}')
        entries = tuple(entry.strip() for entry in value)
        bad = [(index, entry, problem) for index, entry in enumerate(entries) if (problem := item(entry))]
        if bad:
            raise _EntryProblems(bad)
        if len(entries) > most:
            raise _Problem(f"expected at most {most} entries, got {len(entries)}")
        return entries

    return parse


def _user_ids(value: Any, from_env: bool) -> tuple[int, ...]:
    """Telegram user ids: a TOML array of integers, or in the environment integers separated by commas."""
    if from_env:
        entries: list[Any] = [entry.strip() for entry in _INLINE_COMMENT.sub("", value).split(",")]
        entries = [int(entry) if re.fullmatch(r"[0-9]{1,16}", entry) else entry for entry in entries if entry]
    elif isinstance(value, list):
        entries = value
    else:
        raise _Problem(f"expected a list of Telegram user ids ([123456789, …]), got {type(value).__name__}")
    bad = [
        (index, str(entry), "expected a Telegram user id (a positive integer, as @userinfobot tells it)")
        for index, entry in enumerate(entries)
        if isinstance(entry, bool) or not isinstance(entry, int) or not 0 < entry < 2**53
    ]
    if bad:
        raise _EntryProblems(bad)
    if len(entries) > 1000:
        raise _Problem(f"expected at most 1000 user ids, got {len(entries)}")
    return tuple(dict.fromkeys(entries))


def _pattern(entry: str) -> str | None:
    return "an empty entry (remove it)" if not entry else None


_strings = _list(_pattern)


def _dump_format(value: Any, from_env: bool) -> str:
    text = (_text(value, from_env) or "plain").lower()
    if text not in DUMP_EXTENSIONS:
        raise _Problem(f"expected one of {', '.join(DUMP_EXTENSIONS)}, got {text!r}")
    return text


# pg_dump's options that tgbackupd sets itself or that would break the pipeline, and why; refused in
# database.pg_dump_args. Short options that take a value, so that `-Ofx` is read as pg_dump reads it.
_REFUSED_PG_DUMP_OPTIONS = {
    ("f", "file"): "pg_dump must write to its standard output, which tgbackupd compresses and hashes",
    ("F", "format"): "the dump format is backup.format",
    ("Z", "compress"): "tgbackupd compresses the dump itself (backup.compression)",
    ("j", "jobs"): "parallel dumps need the directory format, which cannot be streamed",
    ("d", "dbname"): "the database is database.url or database.name",
    ("h", "host"): "the server is database.url or database.host",
    ("p", "port"): "the port is database.url or database.port",
    ("U", "username"): "the user is database.url or database.user",
    ("W", "password"): "pg_dump would wait for a password typed in: give it in database.password or a "
    "passfile",
    ("C", "create"): "a dump that creates and connects to its own database cannot be restored into "
    "another in one transaction",
    ("c", "clean"): "a dump that drops its objects first fails on an empty database (tgbackupctl restore "
    "--clean drops the target's schemas instead)",
}
# pg_dump's options that take a value (pg_dump --help, PostgreSQL 15 to 17): in database.pg_dump_args
# the value must be attached (`--section=data`, `-nPUBLIC`), or pg_dump would take the next argument
# as the value, or fail for want of one.
_PG_DUMP_SHORT_WITH_VALUE = set("defFhjnNpStTUZ")
_PG_DUMP_LONG_WITH_VALUE = [
    "file",
    "format",
    "jobs",
    "compress",
    "lock-wait-timeout",
    "extension",
    "exclude-extension",
    "encoding",
    "schema",
    "exclude-schema",
    "superuser",
    "table",
    "exclude-table",
    "exclude-table-data",
    "include-foreign-data",
    "extra-float-digits",
    "restrict-key",
    "rows-per-insert",
    "section",
    "snapshot",
    "filter",
    "sync-method",
    "table-and-children",
    "exclude-table-and-children",
    "exclude-table-data-and-children",
    "dbname",
    "host",
    "port",
    "username",
    "role",
]


def _pg_dump_args(value: Any, from_env: bool) -> tuple[str, ...]:
    arguments = _strings(value, from_env)
    problems = []
    for argument in arguments:
        refused = _refused_pg_dump_option(argument)
        if argument in ("-", "--") or not argument.startswith("-"):
            problems.append(
                f"{argument!r} is not an option: write each option with its value as one item "
                "(--exclude-table-data=log, -nPUBLIC)"
            )
        elif refused is not None:
            problems.append(f"{argument!r} is not allowed: {refused}")
        elif _lacks_its_value(argument):
            problems.append(
                f"{argument!r} needs its value in the same item (--section=data, -nPUBLIC): pg_dump "
                "would take the next argument as its value"
            )
    if problems:
        raise _Problem("; ".join(problems))
    return arguments


def _lacks_its_value(argument: str) -> bool:
    """Whether pg_dump would read `argument` as an option that takes a value, given none: a long one
    without `=` (or an abbreviation that could be one: pg_dump takes unambiguous prefixes), a short
    one last in its item (`-n`, `-On`)."""
    if argument.startswith("--"):
        if "=" in argument:
            return False
        return any(option.startswith(argument[2:]) for option in _PG_DUMP_LONG_WITH_VALUE)
    for position, letter in enumerate(argument[1:], start=2):
        if letter in _PG_DUMP_SHORT_WITH_VALUE:
            return position == len(argument)
    return False


def _refused_pg_dump_option(argument: str) -> str | None:
    """Why pg_dump would read `argument` as a refused option, if it would: long options abbreviated as
    pg_dump accepts them (`--form=custom`), short ones run together (`-Oxf out`)."""
    if argument.startswith("--"):
        given = argument[2:].split("=", 1)[0]
        for (_, long), reason in _REFUSED_PG_DUMP_OPTIONS.items():
            if given and long.startswith(given):
                return reason
        return None
    for letter in argument[1:]:
        for (short, _), reason in _REFUSED_PG_DUMP_OPTIONS.items():
            if letter == short:
                return reason
        if letter in _PG_DUMP_SHORT_WITH_VALUE:
            return None
    return None


def _ping_url(value: Any, from_env: bool) -> str | None:
    """A monitoring service's URL: http or https, with a host. It is a secret (a healthchecks.io URL
    carries the check's UUID), so a problem never quotes it whole."""
    url = _text(value, from_env)
    if url is None:
        return None
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise _Problem("expected a URL such as https://hc-ping.com/<uuid>; it cannot be parsed") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _Problem(
            "expected an http:// or https:// URL with a host, such as https://hc-ping.com/<uuid>, "
            f"got one beginning {url_for_logs(url)!r}"
        )
    return url


def _group(value: Any, from_env: bool) -> int | None:
    name = _text(value, from_env)
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise _Problem(
            f"there is no group named {name!r} on this system (create it, or leave the key empty)"
        ) from None


def _maintenance_db(value: Any, from_env: bool) -> str:
    return _text(value, from_env) or "postgres"


def _drill_schedule(value: Any, from_env: bool) -> DrillSchedule | None:
    try:
        return DrillSchedule.parse(_text(value, from_env) or "off")
    except ScheduleError as error:
        raise _Problem(str(error)) from None


def _database_url(value: Any, from_env: bool) -> str | None:
    url = _text(value, from_env)
    if url is not None:
        _parse_database_url(url)
    return url


KEYS = (
    _Key(
        "telegram",
        "bot_token",
        _bot_token,
        legacy_env=("TELEGRAM_BOT_TOKEN",),
        secret=True,
        description="The bot token from @BotFather. Better kept out of this file: use bot_token_file, or "
        "the systemd credential telegram-bot-token, which is read when neither is set.",
    ),
    _Key(
        "telegram",
        "bot_token_file",
        _path,
        description="A file holding only the bot token (mode 0600).",
    ),
    _Key(
        "telegram",
        "chat_id",
        _chat_id,
        legacy_env=("TELEGRAM_CHAT_ID",),
        description="The chat or channel that receives the backups: an integer id (channels start with "
        "-100) or @channelname. Without a token and a chat id, backups are kept locally only.",
    ),
    _Key(
        "telegram",
        "api_url",
        _api_url,
        DEFAULT_API_URL,
        description="The Bot API server; a self-hosted one sends larger files.",
    ),
    _Key(
        "telegram",
        "max_upload_mb",
        _integer(1, 2000, "a size in MB"),
        50,
        description="Largest backup sent, in MB (1024 * 1024 bytes): 50 on the public Bot API, up to 2000 "
        "self-hosted. A larger backup is kept locally and the chat is told why it was not sent.",
    ),
    _Key(
        "telegram",
        "part_size_mb",
        _integer(1, 2000, "a size in MB"),
        19,
        description="Backups are sent in parts of at most this many MB. 19 lets a bot on the public Bot API "
        "download every part back (it serves at most 20 MB); raise it with a self-hosted server.",
    ),
    _Key(
        "telegram",
        "upload_while_dumping",
        _boolean,
        True,
        description="Send each part as soon as the next one has begun, while pg_dump goes on (not while "
        "older backups wait for delivery, nor with backup.verify_after).",
    ),
    _Key(
        "telegram",
        "timeout",
        _integer(5, 3600, "a number of seconds"),
        120,
        description="Seconds to wait for the Bot API to answer one request.",
    ),
    _Key(
        "telegram",
        "retries",
        _integer(0, 20, "a number of retries"),
        5,
        description="How often a request is retried after a network error, a 5xx or a 429.",
    ),
    _Key(
        "telegram",
        "redeliver_min_s",
        _integer(1, 86400, "a number of seconds"),
        60,
        description="A backup that could not be delivered stays in the outbox and is sent again after a "
        "delay that doubles from this many seconds up to redeliver_max_s.",
    ),
    _Key(
        "telegram",
        "redeliver_max_s",
        _integer(1, 86400, "a number of seconds"),
        3600,
        description="The longest delay between two attempts to deliver a backup, in seconds.",
    ),
    _Key(
        "telegram",
        "messages_per_minute",
        _integer(1, 60000, "a number of messages"),
        20,
        description="Messages sent to the chat are paced to Telegram's limits: at most this many in any "
        "minute. Lower it if 429 Too Many Requests still come.",
    ),
    _Key(
        "telegram",
        "commands",
        _boolean,
        False,
        description="Answer /status, /backup [DATABASE], /list and /last_error in the chat (and in private "
        "chats) from the users in admin_user_ids, by long-polling getUpdates; cannot work while the bot "
        "token has a webhook set.",
    ),
    _Key(
        "telegram",
        "admin_user_ids",
        _user_ids,
        (),
        description="The Telegram user ids (integers) whose commands are answered; everyone else is "
        "ignored and logged. Required with commands = true.",
    ),
    _Key(
        "telegram",
        "delete_old",
        _boolean,
        False,
        description="Retention in the chat too: the parts of the delivered backups the keep rules drop are "
        "deleted from the chat (their manifests stay, as links of the chain). Needs the right to delete "
        "messages for parts older than 48 hours.",
    ),
    _Key(
        "database",
        "url",
        _database_url,
        legacy_env=("DATABASE_URL",),
        secret=True,
        description="The database to back up, as applications write it (postgresql://user:password@host:"
        "port/dbname). The password reaches pg_dump and psql through PGPASSWORD, never their command lines.",
    ),
    _Key(
        "database",
        "host",
        _text,
        legacy_env=("PGHOST",),
        description="The server, overriding the URL's; may be a Unix socket directory.",
    ),
    _Key(
        "database",
        "port",
        _integer(1, 65535, "a TCP port"),
        legacy_env=("PGPORT",),
        description="The port, overriding the URL's.",
    ),
    _Key(
        "database",
        "user",
        _text,
        legacy_env=("PGUSER",),
        description="The user, overriding the URL's.",
    ),
    _Key(
        "database",
        "password",
        _text,
        legacy_env=("PGPASSWORD",),
        secret=True,
        description="The password, overriding the URL's.",
    ),
    _Key(
        "database",
        "name",
        _text,
        legacy_env=("PGDATABASE",),
        description="The database name, overriding the URL's.",
    ),
    _Key(
        "database",
        "pg_dump",
        _text,
        "pg_dump",
        description="The pg_dump program; its major version must be at least the server's.",
    ),
    _Key(
        "database",
        "lock_wait_timeout",
        _integer(1, 86400, "a number of seconds"),
        300,
        description="Seconds pg_dump waits for a table's lock (pg_dump --lock-wait-timeout) before it fails "
        "the backup, instead of waiting behind an ALTER TABLE for as long as it runs.",
    ),
    _Key(
        "database",
        "maintenance_db",
        _maintenance_db,
        "postgres",
        description="The database a verification connects to, to create and drop its scratch database.",
    ),
    _Key(
        "database",
        "schemas",
        _strings,
        (),
        description="Schemas to dump, as pg_dump's --schema= patterns. Empty: every schema.",
    ),
    _Key(
        "database",
        "exclude_schemas",
        _strings,
        (),
        description="Schemas left out, as pg_dump's --exclude-schema= patterns.",
    ),
    _Key(
        "database",
        "tables",
        _strings,
        (),
        description="Tables to dump, as pg_dump's --table= patterns. Empty: every table.",
    ),
    _Key(
        "database",
        "exclude_tables",
        _strings,
        (),
        description="Tables left out, as pg_dump's --exclude-table= patterns.",
    ),
    _Key(
        "database",
        "pg_dump_args",
        _pg_dump_args,
        (),
        description="More pg_dump options, each with its value attached as one item "
        "(--exclude-table-data=audit_log). Those tgbackupd sets itself, or that would break the backup, "
        "are refused with the reason.",
    ),
    _Key(
        "backup",
        "enabled",
        _boolean,
        True,
        legacy_env=("BACKUP_ENABLED",),
        description="Make a backup every day at hour:minute. A manual tgbackupctl trigger works either way.",
    ),
    _Key(
        "backup",
        "hour",
        _integer(0, 23, "an hour"),
        3,
        legacy_env=("BACKUP_HOUR",),
        description="The hour of the daily backup, local time.",
    ),
    _Key(
        "backup",
        "minute",
        _integer(0, 59, "a minute"),
        0,
        description="The minute of the daily backup.",
    ),
    _Key(
        "backup",
        "directory",
        _path,
        description="Where backups are kept, mode 0600. Default: $STATE_DIRECTORY/backups under systemd, "
        "else /var/lib/tgbackupd/backups.",
    ),
    _Key(
        "backup",
        "prefix",
        _prefix,
        description="The start of each backup's file name. Default: the database name.",
    ),
    _Key(
        "backup",
        "keep",
        _integer(0, 10000, "a number of backups (0: none kept here)"),
        7,
        description="How many of the newest backups to keep; older files of this naming pattern are "
        "removed, no other file is. 0 keeps none here: the directory is then only a spool of the parts "
        "Telegram does not have yet.",
    ),
    _Key(
        "backup",
        "keep_daily",
        _integer(0, 10000, "a number of days (0: off)"),
        0,
        description="Also keep the newest backup of each of the last this many days that have one "
        "(counted as restic counts them; 0: off). A backup is kept if any rule keeps it.",
    ),
    _Key(
        "backup",
        "keep_weekly",
        _integer(0, 10000, "a number of weeks (0: off)"),
        0,
        description="Also keep the newest backup of each of the last this many ISO weeks that have one "
        "(counted as restic counts them; 0: off). A backup is kept if any rule keeps it.",
    ),
    _Key(
        "backup",
        "keep_monthly",
        _integer(0, 10000, "a number of months (0: off)"),
        0,
        description="Also keep the newest backup of each of the last this many months that have one "
        "(counted as restic counts them; 0: off). A backup is kept if any rule keeps it.",
    ),
    _Key(
        "backup",
        "keep_yearly",
        _integer(0, 10000, "a number of years (0: off)"),
        0,
        description="Also keep the newest backup of each of the last this many years that have one "
        "(counted as restic counts them; 0: off). A backup is kept if any rule keeps it.",
    ),
    _Key(
        "backup",
        "spool_parts",
        _integer(1, 10000, "a number of parts"),
        4,
        description="With keep = 0: how many finished parts may wait for the upload before the dump pauses "
        "for it.",
    ),
    _Key(
        "backup",
        "format",
        _dump_format,
        "plain",
        description="pg_dump's format: plain (SQL, restored with psql) or custom (an archive restored with "
        "pg_restore, which can restore on several connections).",
    ),
    _Key(
        "backup",
        "compression",
        _compression,
        GZIP,
        description="gzip (restores with gunzip and psql) or zstd (faster, and about a fifth smaller).",
    ),
    _Key(
        "backup",
        "compression_level",
        _integer(ZSTD.lowest, ZSTD.highest, "a compression level"),
        description="gzip: 1 (fastest) to 9 (smallest), default 6. zstd: 1 to 19, default 1.",
    ),
    _Key(
        "backup",
        "compression_threads",
        _integer(1, 64, "a number of threads"),
        1,
        description="Threads that compress at once.",
    ),
    _Key(
        "backup",
        "verify_after",
        _boolean,
        False,
        description="Restore each new backup into a scratch database (created and dropped again) before "
        "sending it. The database user needs CREATEDB.",
    ),
    _Key(
        "backup",
        "catch_up",
        _boolean,
        True,
        description="If the scheduled time passed while tgbackupd or the host was down, make one backup "
        "catch_up_delay_s seconds after start instead of waiting for the next day.",
    ),
    _Key(
        "backup",
        "catch_up_delay_s",
        _integer(0, 86400, "a number of seconds"),
        60,
        description="Seconds after start before a catch-up backup.",
    ),
    _Key(
        "backup",
        "timeout",
        _integer(1, 86400, "a number of seconds"),
        6 * 3600,
        description="Seconds one backup may take from its start: past it, pg_dump (or the verification) is "
        "ended and the backup fails with that reason.",
    ),
    _Key(
        "daemon",
        "socket",
        _path,
        description="The control socket tgbackupctl talks to. Default: $RUNTIME_DIRECTORY/control.sock, else "
        "/run/tgbackupd/control.sock.",
    ),
    _Key(
        "daemon",
        "control_group",
        _group,
        description="Members of this group may run tgbackupctl trigger and check (root and the daemon's "
        "user always may; anyone who can open the socket may ask for status and list).",
    ),
    _Key(
        "daemon",
        "state_file",
        _path,
        description="The state store (SQLite): the catalogue of backups, the outbox and the last result. A "
        "state file of tgbackupd 0.1 found there is imported and kept as *.migrated. Default: "
        ".tgbackupd-state.db in the backup directory.",
    ),
    _Key(
        "daemon",
        "log_level",
        _log_level,
        "info",
        description="debug, info, warning or error.",
    ),
    _Key(
        "encryption",
        "recipients",
        _list(recipient_problem, MAX_RECIPIENTS),
        (),
        description="Public keys (age1..., or SSH public keys) every backup is encrypted for with age before "
        "it touches the disk or the chat. Empty: backups are not encrypted.",
    ),
    _Key(
        "encryption",
        "recipients_file",
        _path,
        description="A file of recipients, one a line, # for comments; added to those above.",
    ),
    _Key(
        "encryption",
        "identity_file",
        _path,
        description="The age identity backup.verify_after decrypts each new backup with. Default: the "
        "systemd credential age-identity, if the unit passes one.",
    ),
    _Key(
        "verify",
        "schedule",
        _drill_schedule,
        description="Restore drills: when to download the latest backup of each database from the chat as a "
        'new machine would, restore it into a scratch database, count it and drop it: "off" (default), '
        '"daily HH:MM", "weekly DAY HH:MM" or "monthly N HH:MM" (N from 1 to 28), local time.',
    ),
    _Key(
        "monitoring",
        "ping_url",
        _ping_url,
        secret=True,
        description="Dead-man pings, healthchecks.io style: URL/start when a backup starts, URL on success, "
        "URL/fail (the error in the body) on failure or when it was not delivered. A secret: logs show "
        "only its scheme and host.",
    ),
    _Key(
        "monitoring",
        "ping_start_url",
        _ping_url,
        secret=True,
        description="For other services: the URL pinged (GET) when a backup starts; wins over ping_url's.",
    ),
    _Key(
        "monitoring",
        "ping_success_url",
        _ping_url,
        secret=True,
        description="The URL pinged (GET) when a backup was made and delivered; wins over ping_url's.",
    ),
    _Key(
        "monitoring",
        "ping_failure_url",
        _ping_url,
        secret=True,
        description="The URL pinged (POST, the error's last lines as the body) when a backup or a restore "
        "drill failed; wins over ping_url's.",
    ),
    _Key(
        "monitoring",
        "metrics_file",
        _metrics_file,
        description="A Prometheus text file (*.prom, an absolute path) for node_exporter's textfile "
        "collector, written atomically at start and after every backup, delivery and drill.",
    ),
)
_KEYS_BY_SECTION = {key.section: {k.name: k for k in KEYS if k.section == key.section} for key in KEYS}
# How the connection is named; the `database` section's other keys are settings of the DatabaseConfig of
# the same name, so that keys added to the section reach `[[databases]]` entries too.
_CONNECTION_KEYS = ("url", "host", "port", "user", "password", "name")
_DATABASE_SETTINGS = tuple(name for name in _KEYS_BY_SECTION["database"] if name not in _CONNECTION_KEYS)
# The `backup` section's keys an entry of `[[databases]]` may set for itself (the others are the daemon's).
_ENTRY_BACKUP_KEYS = (
    "prefix",
    "format",
    "compression",
    "compression_level",
    "compression_threads",
    "hour",
    "minute",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
# The `monitoring` section's keys an entry of `[[databases]]` may set for itself: its own check at a
# monitoring service. An entry that sets any of them takes none of the section's.
_PING_KEYS = ("ping_url", "ping_start_url", "ping_success_url", "ping_failure_url")
_CONFIG_FILE_ENV = "TGBACKUPD_CONFIG"


@dataclass(frozen=True)
class TelegramConfig:
    bot_token: str | None = field(repr=False)
    bot_token_source: str | None
    chat_id: str | None
    api_url: str
    max_upload_mb: int
    part_size_mb: int
    upload_while_dumping: bool
    timeout: int
    retries: int
    redeliver_min_s: int
    redeliver_max_s: int
    messages_per_minute: int
    # Answer /status, /backup, /list and /last_error from these Telegram users (telegram.commands).
    commands: bool = False
    admin_user_ids: tuple[int, ...] = ()
    delete_old: bool = False  # retention also deletes from the chat the parts of the backups it drops

    @property
    def configured(self) -> bool:
        return bool(self.bot_token and self.chat_id)

    @property
    def missing(self) -> list[str]:
        """What is missing for Telegram to be configured, by the names users set."""
        return [
            name
            for name, value in (("TELEGRAM_BOT_TOKEN", self.bot_token), ("TELEGRAM_CHAT_ID", self.chat_id))
            if not value
        ]

    @property
    def part_size_bytes(self) -> int:
        return self.part_size_mb * 1024 * 1024


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    host: str | None
    port: int | None
    user: str | None
    password: str | None = field(repr=False)
    options: tuple[tuple[str, str], ...]
    pg_dump: str
    lock_wait_timeout: int = 300  # seconds pg_dump waits for a table's lock before it gives up
    maintenance_db: str = "postgres"  # where scratch databases are created and dropped
    # What pg_dump dumps (patterns as pg_dump takes them), and options of its own for the rest.
    schemas: tuple[str, ...] = ()
    exclude_schemas: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    pg_dump_args: tuple[str, ...] = ()

    def describe(self) -> str:
        """Say which database this is, for people: `mydb on 127.0.0.1:5432`."""
        return f"{self.name} on {self.server()}"

    def server(self) -> str:
        """Say which server this is, for people: `127.0.0.1:5432`, or `the local socket`."""
        where = self.host or "the local socket"
        return f"{where}:{self.port}" if self.port else where


@dataclass(frozen=True)
class KeepRules:
    """Which backups retention keeps (retention.py): the newest `last`, and the newest of each of the
    newest `daily` days, `weekly` ISO weeks, `monthly` months and `yearly` years that have a backup, as
    restic counts them (each rule on its own); 0 turns a rule off."""

    last: int
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    @property
    def only_last(self) -> bool:
        """Whether "the newest `last`" is the only rule: what backup.keep alone always meant."""
        return not (self.daily or self.weekly or self.monthly or self.yearly)

    def describe(self) -> str:
        """The rules as the configuration spells them: `keep = 7, keep_daily = 7, keep_monthly = 12`."""
        counts = {"keep": self.last, "keep_daily": self.daily, "keep_weekly": self.weekly}
        counts |= {"keep_monthly": self.monthly, "keep_yearly": self.yearly}
        return ", ".join(f"{name} = {count}" for name, count in counts.items() if count or name == "keep")


@dataclass(frozen=True)
class BackupConfig:
    enabled: bool
    hour: int
    minute: int
    directory: Path
    prefix: str
    keep: int
    spool_parts: int
    dump_format: str  # pg_dump's: plain (SQL, for psql) or custom (an archive, for pg_restore)
    compression: Format
    compression_level: int
    compression_threads: int
    verify_after: bool
    catch_up: bool
    catch_up_delay_s: int
    timeout: int  # seconds a backup may take before its dump or verification is ended
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    @property
    def keep_rules(self) -> KeepRules:
        return KeepRules(self.keep, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)

    @property
    def keep_local(self) -> bool:
        """False with keep = 0: backups live in Telegram only, and the directory is a spool of the parts
        not sent yet."""
        return self.keep > 0

    @property
    def suffix(self) -> str:
        """The ending of new backups' file names (`.sql.gz`, `.dump.zst`, …)."""
        return backup_suffix(self.dump_format, self.compression)


@dataclass(frozen=True)
class PingUrls:
    """Where a monitoring service hears of one database's backups: when one starts, succeeds, fails.
    Each may be None (that event is not told)."""

    start: str | None = None
    success: str | None = None
    failure: str | None = None

    def __bool__(self) -> bool:
        return any((self.start, self.success, self.failure))

    def urls(self) -> tuple[str, ...]:
        return tuple(url for url in (self.start, self.success, self.failure) if url)


def ping_urls(values: Mapping[str, Any]) -> PingUrls:
    """The URLs of monitoring.ping_url and the explicit ones (by dotted key), the explicit ones winning:
    `<ping_url>/start`, `<ping_url>` and `<ping_url>/fail`, as healthchecks.io takes them."""
    base = values.get("monitoring.ping_url")
    return PingUrls(
        start=values.get("monitoring.ping_start_url") or (_below(base, "start") if base else None),
        success=values.get("monitoring.ping_success_url") or base,
        failure=values.get("monitoring.ping_failure_url") or (_below(base, "fail") if base else None),
    )


def _below(url: str, name: str) -> str:
    """`https://host/ping/uuid?x=1` with `/name` added to its path: `https://host/ping/uuid/name?x=1`."""
    parsed = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parsed._replace(path=f"{parsed.path.rstrip('/')}/{name}"))


@dataclass(frozen=True)
class MonitoringConfig:
    """`pings`: the `monitoring` section's URLs (an entry of `[[databases]]` may have its own);
    `metrics_file`: where the Prometheus text file is written, if anywhere."""

    pings: PingUrls = PingUrls()
    metrics_file: Path | None = None


@dataclass(frozen=True)
class Target:
    """One entry of `[[databases]]` (or, without that list, the `[database]` and `[backup]` sections): what
    to connect to and how to back it up. With `all`, `database` names the server (its `name` is where to
    connect) and each database found there at run time is backed up; with `globals`, the roles and
    tablespaces are backed up too (pg_dumpall --globals-only), under `globals_prefix`."""

    label: str  # how problems and logs name the entry: `databases[2]`, or `database` for the sections
    database: DatabaseConfig
    backup: BackupConfig
    all: bool = False
    exclude: tuple[str, ...] = ()
    globals: bool = False
    globals_passwords: bool = False
    pings: PingUrls = PingUrls()  # the entry's own, else the `monitoring` section's

    @property
    def globals_prefix(self) -> str:
        """`<prefix>_globals`, or `globals` for an `all` entry without a prefix."""
        base = self.backup.prefix.rstrip("_.-") if self.backup.prefix else ""
        return f"{base}_globals" if base else "globals"

    @property
    def fixed_prefixes(self) -> list[str]:
        """The prefixes the entry writes that are known before it runs (not those `all` finds)."""
        prefixes = [] if self.all else [self.backup.prefix]
        return [*prefixes, self.globals_prefix] if self.globals else prefixes


@dataclass(frozen=True)
class DaemonConfig:
    socket: Path
    control_group: int | None
    state_file: Path
    log_level: str


@dataclass(frozen=True)
class EncryptionConfig:
    """`recipients`: every public key a backup is encrypted for (encryption.recipients, then those of
    encryption.recipients_file); none: backups are not encrypted. `identity` decrypts them for
    backup.verify_after: encryption.identity_file, else the systemd credential age-identity."""

    recipients: tuple[str, ...] = ()
    recipients_file: Path | None = None
    identity: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.recipients)


@dataclass(frozen=True)
class VerifyConfig:
    """Restore drills: `schedule` says when the latest backup of each database is downloaded from the
    chat and restored into a scratch database (None: only with `tgbackupctl drill`)."""

    schedule: DrillSchedule | None = None


@dataclass(frozen=True)
class Config:
    telegram: TelegramConfig
    database: DatabaseConfig
    backup: BackupConfig
    daemon: DaemonConfig
    config_file: Path | None
    sources: Mapping[str, str]
    # What to back up, in order: the `[[databases]]` entries, else one made of `database` and `backup`.
    databases: tuple[Target, ...] = ()
    encryption: EncryptionConfig = EncryptionConfig()
    verify: VerifyConfig = VerifyConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    @property
    def backup_suffix(self) -> str:
        """How new backup files end: `.sql.gz`, or `.sql.gz.age` when they are encrypted."""
        return self.suffix_of(self.backup)

    def suffix_of(self, backup: BackupConfig) -> str:
        """How new backup files of an entry end: its own format and compression, and `.age` when backups
        are encrypted (`backup` is the sections' only without entries: never name an entry's files by it)."""
        return backup.suffix + (ENCRYPTED_SUFFIX if self.encryption.enabled else "")

    def fixed_prefixes(self) -> list[str]:
        """Every series known before any backup ran, by prefix, in the order of the entries."""
        return [prefix for target in self.databases for prefix in target.fixed_prefixes]

    def target_of(self, series: str) -> "Target | None":
        """The entry a series (by prefix) belongs to: the one that writes that prefix, else the `all = true`
        entry whose prefix begins it (`<prefix><name>`; the longest such); None for a series no entry
        names (a renamed prefix's, a removed database's), which retention and monitoring leave alone."""
        for target in self.databases:
            if series in target.fixed_prefixes:
                return target
        finding = [
            target for target in self.databases if target.all and series.startswith(target.backup.prefix)
        ]
        return max(finding, key=lambda target: len(target.backup.prefix), default=None)

    def secrets(self) -> list[str]:
        """Return the values that must never reach logs, errors or status output."""
        return secret_spellings(
            self.telegram.bot_token,
            self.database.password,
            *(target.database.password for target in self.databases),
            *url_secrets(self.monitoring.pings.urls()),
            *url_secrets(url for target in self.databases for url in target.pings.urls()),
        )


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Config:
    """Given a config path (or None for TGBACKUPD_CONFIG or the default) and the environment, return the
    validated configuration. Raise ConfigError listing every problem found."""
    values, sources, problems, config_file, document = _collect(path, environ)
    telegram = _telegram(values, sources, environ, problems)
    entries = _entries(document, config_file, problems)
    database = _resolve_database(values, problems, required=not entries)
    _check_compression_level(values, "", problems)
    encryption = _encryption(values, sources, environ, problems)
    if values["backup.keep"] == 0 and not telegram.configured:
        problems.append(
            "backup.keep = 0 keeps no backup on this machine, so they must go to Telegram, which is not "
            f"configured (set {' and '.join(telegram.missing)}): configure Telegram, or keep at least 1 "
            "backup here"
        )
    if values["verify.schedule"] is not None and not telegram.configured:
        problems.append(
            f"verify.schedule = {values['verify.schedule'].text!r} drills the backups in the Telegram chat, "
            f"which is not configured (set {' and '.join(telegram.missing)}): configure Telegram, or set "
            'verify.schedule = "off"'
        )
    directory = _backup_directory(values, environ)
    targets = tuple(_target(values, entry, label, directory, problems) for label, entry in entries)
    _check_prefixes(targets, problems)
    if values["telegram.delete_old"]:
        sections = _backup_config(values, directory, None).keep_rules
        _check_chat_retention([(t.label, t.backup.keep_rules) for t in targets] or [("", sections)], problems)
    if problems:
        raise ConfigError(problems)
    if not targets:
        assert database is not None
        targets = (
            Target(
                "database",
                database,
                _backup_config(values, directory, _backup_prefix(values, database)),
                pings=ping_urls(values),
            ),
        )
    return Config(
        telegram=telegram,
        database=targets[0].database,
        backup=_backup_config(values, directory, targets[0].backup.prefix),
        databases=targets,
        daemon=DaemonConfig(
            socket=_socket(values, environ),
            control_group=values["daemon.control_group"],
            state_file=values["daemon.state_file"] or directory / STATE_FILE_NAME,
            log_level=values["daemon.log_level"],
        ),
        config_file=config_file if config_file.exists() else None,
        sources=sources,
        encryption=encryption,
        verify=VerifyConfig(schedule=values["verify.schedule"]),
        monitoring=MonitoringConfig(pings=ping_urls(values), metrics_file=values["monitoring.metrics_file"]),
    )


@dataclass(frozen=True)
class ClientConfig:
    """What tgbackupctl's restore, verify and list need: no database is required (a new machine may
    have nothing but the token and the chat id)."""

    telegram: TelegramConfig
    database: DatabaseConfig | None
    backup_directory: Path
    backup_prefix: str | None  # None when no database is configured (a new machine)
    state_file: Path
    socket: Path
    # The sections' retention rules, by which `list` marks what is kept when the daemon does not answer;
    # None with `[[databases]]` entries, whose own rules it does not read (the daemon knows them).
    keep_rules: KeepRules | None = None

    def secrets(self) -> list[str]:
        return secret_spellings(self.telegram.bot_token, self.database.password if self.database else None)


def secrets_in_environment(environ: Mapping[str, str]) -> list[str]:
    """Return the secrets the environment holds under the names of secret keys (the password of a
    database URL, not the whole URL), for scrubbing texts when no configuration could be loaded."""
    found: list[str | None] = []
    for key in KEYS:
        if key.secret:
            for name in (key.env_name, *key.legacy_env):
                value = environ.get(name, "").strip()
                found.append(url_password(value) if key.dotted == "database.url" else value)
    return secret_spellings(*found)


def secret_spellings(*secrets: str | None) -> list[str]:
    """Return each secret as it is, and as a URL spells it (`p%40ss` for `p@ss`): a text that quotes
    DATABASE_URL carries the password in that form."""
    spellings: list[str] = []
    for secret in secrets:
        if secret:
            for spelling in (secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)):
                if spelling not in spellings:
                    spellings.append(spelling)
    return spellings


def _backup_config(values: dict[str, Any], directory: Path, prefix: str | None) -> BackupConfig:
    """The `backup` section's values (or an entry's, over them) as a BackupConfig."""
    return BackupConfig(
        enabled=values["backup.enabled"],
        hour=values["backup.hour"],
        minute=values["backup.minute"],
        directory=directory,
        prefix=prefix or "",
        keep=values["backup.keep"],
        spool_parts=values["backup.spool_parts"],
        dump_format=values["backup.format"],
        compression=values["backup.compression"],
        compression_level=values["backup.compression_level"] or values["backup.compression"].default_level,
        compression_threads=values["backup.compression_threads"],
        verify_after=values["backup.verify_after"],
        catch_up=values["backup.catch_up"],
        catch_up_delay_s=values["backup.catch_up_delay_s"],
        timeout=values["backup.timeout"],
        keep_daily=values["backup.keep_daily"],
        keep_weekly=values["backup.keep_weekly"],
        keep_monthly=values["backup.keep_monthly"],
        keep_yearly=values["backup.keep_yearly"],
    )


def _check_compression_level(values: dict[str, Any], label: str, problems: list[str]) -> None:
    compression, level = values["backup.compression"], values["backup.compression_level"]
    if level is not None and not compression.lowest <= level <= compression.highest:
        problems.append(
            f"{label}backup.compression_level = {level} is not a {compression.name} level: "
            f"{compression.name} goes from {compression.lowest} (fastest) to {compression.highest} (smallest)"
        )


def _names(value: Any, from_env: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _Problem('expected a list of database names, such as ["template_app", "scratch"]')
    return tuple(value)


# Keys only an entry of `[[databases]]` has: what it backs up besides (or instead of) one database.
ENTRY_FLAGS = {
    key.name: key
    for key in (
        _Key(
            "databases",
            "all",
            _boolean,
            False,
            description="Back up every database of this server that accepts connections, except templates, "
            "found when the backup runs, each as <prefix><its name>; name (default: maintenance_db) is where "
            "to connect to list them.",
        ),
        _Key(
            "databases",
            "exclude",
            _names,
            (),
            description='With all: the databases left out, such as ["scratch", "postgres"].',
        ),
        _Key(
            "databases",
            "globals",
            _boolean,
            False,
            description="Also back up the server's roles and tablespaces (pg_dumpall --globals-only), as "
            "<prefix>_globals.",
        ),
        _Key(
            "databases",
            "globals_passwords",
            _boolean,
            False,
            description="With globals: include the roles' password hashes (the backup then holds them).",
        ),
    )
}


def entry_keys() -> dict[str, _Key]:
    """The keys an entry of `[[databases]]` takes from the `database`, `backup` and `monitoring` sections."""
    backup = {name: key for name, key in _KEYS_BY_SECTION["backup"].items() if name in _ENTRY_BACKUP_KEYS}
    pings = {name: key for name, key in _KEYS_BY_SECTION["monitoring"].items() if name in _PING_KEYS}
    return {**_KEYS_BY_SECTION["database"], **backup, **pings}


@dataclass(frozen=True)
class _Entry:
    """One `[[databases]]` table, each value checked: `values` by dotted key (`database.port`), over
    the sections' values; `flags` the entry's own keys (all, exclude, globals, globals_passwords)."""

    values: dict[str, Any]
    flags: dict[str, Any]


def _entries(document: dict[str, Any], config_file: Path, problems: list[str]) -> list[tuple[str, _Entry]]:
    """The `[[databases]]` entries of the file, labelled `databases[1]` … (counted from 1, as people
    count), each key checked by its section's rules; every problem named by its entry."""
    tables = document.get("databases")
    if tables is None:
        return []
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        problems.append(f"{config_file}: databases must be a list of tables ([[databases]] entries)")
        return []
    keys = entry_keys()
    entries = []
    for number, table in enumerate(tables, start=1):
        label = f"databases[{number}]"
        entry = _Entry({}, {})
        for name, raw in table.items():
            key = keys.get(name)
            flag = ENTRY_FLAGS.get(name)
            parse = key.parse if key is not None else flag.parse if flag is not None else None
            if parse is None:
                hint = _suggest(name, [*keys, *ENTRY_FLAGS])
                problems.append(f"{config_file}: unknown key {label}.{name}{hint}")
                continue
            try:
                value = parse(raw, False)
            except _Problem as problem:
                shown = "" if key is not None and key.secret else f" = {raw!r}"
                problems.append(f"{label}.{name}{shown} (from {config_file}): {problem}")
                continue
            if key is not None:
                entry.values[key.dotted] = value
            else:
                entry.flags[name] = value
        entries.append((label, entry))
    if not entries:
        problems.append(f"{config_file}: databases is an empty list: add [[databases]] entries, or remove it")
    return entries


def _target(
    values: dict[str, Any], entry: _Entry, label: str, directory: Path, problems: list[str]
) -> Target:
    """An entry over the sections: what it does not set, it inherits from them (and the environment)."""
    merged = {**values, **entry.values}
    server = bool(entry.flags.get("all"))
    database = _resolve_database(values, problems, required=not server, entry=entry.values, label=label)
    if server and (database is None or not _names_database(entry.values)):
        # An entry for a whole server connects to its maintenance database unless it names one.
        database = _resolve_database(
            values,
            [],
            required=False,
            entry={**entry.values, "database.name": merged["database.maintenance_db"]},
        )
    _check_compression_level(merged, f"{label}: ", problems)
    if database is None:  # reported
        database = DatabaseConfig("", None, None, None, None, (), "pg_dump")
    if entry.values.get("backup.prefix"):
        prefix = str(entry.values["backup.prefix"])
    else:
        prefix = "" if server else file_safe(database.name)
    return Target(
        label=label,
        database=database,
        backup=_backup_config(merged, directory, prefix),
        all=server,
        exclude=entry.flags.get("exclude", ()),
        globals=bool(entry.flags.get("globals")),
        globals_passwords=bool(entry.flags.get("globals_passwords")),
        pings=ping_urls(entry.values if _sets_pings(entry.values) else values),
    )


def _sets_pings(entry_values: dict[str, Any]) -> bool:
    """Whether an entry has a check of its own at a monitoring service (then none of the section's URLs
    apply to it: its failures must not go to another check, nor another database's success to its).
    One set empty (`ping_url = ""`) counts: that entry's databases are not pinged at all."""
    return any(f"monitoring.{name}" in entry_values for name in _PING_KEYS)


def _names_database(entry_values: dict[str, Any]) -> bool:
    """Whether an entry names its database itself (name, or the path of its url)."""
    if entry_values.get("database.name"):
        return True
    url = entry_values.get("database.url")
    return bool(url and _parse_database_url(url)["name"])


def _check_chat_retention(rules: list[tuple[str, KeepRules]], problems: list[str]) -> None:
    """telegram.delete_old with no rule (keep = 0 and no keep_daily, …) would delete the parts of every
    backup but the newest from the chat: refused, as restic's forget refuses to run without a policy."""
    for label, kept in rules:
        if kept.only_last and kept.last == 0:
            where = f" (for {label})" if label else ""
            problems.append(
                "telegram.delete_old = true with backup.keep = 0 and no keep_daily, keep_weekly, "
                f"keep_monthly nor keep_yearly{where} would delete every backup but the newest from the "
                "chat: set the rules that say what to keep there, or telegram.delete_old = false"
            )


def _check_prefixes(targets: tuple[Target, ...], problems: list[str]) -> None:
    """Two entries writing the same file names would prune and replace each other's backups; two entries
    for whole servers under one prefix would name the databases of both alike."""
    seen: dict[str, str] = {}
    servers: dict[str, str] = {}
    for target in targets:
        if target.all and target.backup.prefix in servers:
            problems.append(
                f"{servers[target.backup.prefix]} and {target.label} both back up every database of a server "
                f"under the prefix {target.backup.prefix!r}, so the databases of one would be taken for "
                'those of the other: give each its own prefix (prefix = "db2_")'
            )
        if target.all:
            servers[target.backup.prefix] = target.label
        prefixes = [] if target.all else [target.backup.prefix]
        if target.globals:
            prefixes.append(target.globals_prefix)
        for prefix in prefixes:
            if prefix in seen:
                problems.append(
                    f"{seen[prefix]} and {target.label} both write backups named {prefix}_backup_…: give "
                    "one of them another prefix"
                )
            seen[prefix] = target.label


def file_safe(name: str) -> str:
    """A database name made safe for a file name (what backup names start with)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def load_client_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> ClientConfig:
    values, sources, problems, _, document = _collect(path, environ)
    telegram = _telegram(values, sources, environ, problems)
    database = _resolve_database(values, problems, required=False)
    if problems:
        raise ConfigError(problems)
    directory = _backup_directory(values, environ)
    return ClientConfig(
        telegram=telegram,
        database=database,
        backup_directory=directory,
        backup_prefix=_backup_prefix(values, database),
        state_file=values["daemon.state_file"] or directory / STATE_FILE_NAME,
        socket=_socket(values, environ),
        keep_rules=None if "databases" in document else _backup_config(values, directory, None).keep_rules,
    )


def database_from_url(url: str, pg_dump: str = "pg_dump") -> DatabaseConfig:
    """Return the connection a URL names. Raise ConfigError if it is not a PostgreSQL URL with a database."""
    try:
        parts = _parse_database_url(url)
    except _Problem as problem:
        raise ConfigError([f"{problem}"]) from None
    if not parts["name"]:
        raise ConfigError(["the URL names no database: postgresql://user@host:port/DBNAME"])
    return DatabaseConfig(pg_dump=pg_dump, **parts)


def _collect(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str], list[str], Path, dict[str, Any]]:
    """Read the file, apply the environment and check each value: (values, sources, problems, file, the
    file's tables)."""
    config_file, explicit = _choose_config_file(path, environ)
    problems = _unknown_environment(environ)
    file_values = _read_config_file(config_file, explicit, problems)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        raw, source, from_env = _raw_value(key, file_values, config_file, environ)
        if source is None:
            values[key.dotted] = key.default
            continue
        try:
            values[key.dotted] = key.parse(raw, from_env)
            sources[key.dotted] = source
        except _EntryProblems as bad:
            values[key.dotted] = key.default
            problems.extend(
                f"{key.dotted}[{index}] = {entry!r} (from {source}): {problem}"
                for index, entry, problem in bad.entries
            )
        except _Problem as problem:
            values[key.dotted] = key.default
            shown = "" if key.secret else f" = {raw!r}"
            problems.append(f"{key.dotted}{shown} (from {source}): {problem}")
    return values, sources, problems, config_file, file_values


def _telegram(
    values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str], problems: list[str]
) -> TelegramConfig:
    token, token_source = _resolve_token(values, sources, environ, problems)
    if values["telegram.part_size_mb"] > values["telegram.max_upload_mb"]:
        problems.append(
            f"telegram.part_size_mb ({values['telegram.part_size_mb']}) is larger than "
            f"telegram.max_upload_mb "
            f"({values['telegram.max_upload_mb']}): a part must fit in one upload"
        )
    if (
        values["telegram.part_size_mb"] > PUBLIC_DOWNLOAD_LIMIT_MB
        and urllib.parse.urlsplit(values["telegram.api_url"]).hostname == _PUBLIC_API_HOST
    ):
        source = sources.get("telegram.part_size_mb")
        problems.append(
            f"telegram.part_size_mb = {values['telegram.part_size_mb']}"
            + (f" (from {source})" if source else "")
            + f": the public Bot API ({values['telegram.api_url']}) hands a bot back files of at most "
            f"{PUBLIC_DOWNLOAD_LIMIT_MB} MB, so parts this large would be sent but could never be downloaded "
            f"for a restore. Lower it to {PUBLIC_DOWNLOAD_LIMIT_MB} or less (the default, 19, leaves a "
            "margin), or set telegram.api_url to a self-hosted Bot API server (telegram-bot-api --local), "
            "which hands back files up to 2000 MB"
        )
    if values["telegram.commands"]:
        if not values["telegram.admin_user_ids"]:
            problems.append(
                "telegram.commands = true, but telegram.admin_user_ids is empty: the bot would answer "
                "nobody. List the Telegram user ids allowed to send commands (admin_user_ids = [123456789]; "
                "a user learns theirs from @userinfobot), or set telegram.commands = false"
            )
        if not (token and values["telegram.chat_id"]):
            problems.append(
                "telegram.commands = true, but Telegram is not configured: chat commands need the bot "
                "token and telegram.chat_id too"
            )
    return TelegramConfig(
        bot_token=token,
        bot_token_source=token_source,
        chat_id=values["telegram.chat_id"],
        api_url=values["telegram.api_url"],
        max_upload_mb=values["telegram.max_upload_mb"],
        part_size_mb=values["telegram.part_size_mb"],
        upload_while_dumping=values["telegram.upload_while_dumping"],
        timeout=values["telegram.timeout"],
        retries=values["telegram.retries"],
        redeliver_min_s=values["telegram.redeliver_min_s"],
        redeliver_max_s=max(values["telegram.redeliver_min_s"], values["telegram.redeliver_max_s"]),
        messages_per_minute=values["telegram.messages_per_minute"],
        commands=values["telegram.commands"],
        admin_user_ids=values["telegram.admin_user_ids"],
        delete_old=values["telegram.delete_old"],
    )


def _backup_prefix(values: dict[str, Any], database: DatabaseConfig | None) -> str | None:
    """The start of backup file names: backup.prefix, else the database name made safe for a file name."""
    if values["backup.prefix"]:
        return str(values["backup.prefix"])
    return file_safe(database.name) if database is not None else None


def _backup_directory(values: dict[str, Any], environ: Mapping[str, str]) -> Path:
    return values["backup.directory"] or _state_directory(environ) / "backups"


def _socket(values: dict[str, Any], environ: Mapping[str, str]) -> Path:
    return values["daemon.socket"] or _runtime_directory(environ) / "control.sock"


def _choose_config_file(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    if path is not None:
        return Path(path), True
    if environ.get(_CONFIG_FILE_ENV):
        return Path(environ[_CONFIG_FILE_ENV]), True
    return DEFAULT_CONFIG_PATH, False


def _read_config_file(config_file: Path, explicit: bool, problems: list[str]) -> dict[str, Any]:
    """Return the file's tables; an absent default file is fine, the environment may say it all."""
    try:
        with config_file.open("rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        if explicit:
            problems.append(f"configuration file {config_file} does not exist")
        return {}
    except OSError as error:
        problems.append(f"cannot read configuration file {config_file}: {error.strerror}")
        return {}
    except tomllib.TOMLDecodeError as error:
        problems.append(f"{config_file} is not valid TOML: {error}")
        return {}
    for section, table in document.items():
        if section == "databases":
            continue  # entries, each checked by _entries
        if section not in _KEYS_BY_SECTION:
            hint = _suggest(section, _KEYS_BY_SECTION)
            problems.append(f"{config_file}: unknown section [{section}]{hint}")
        elif not isinstance(table, dict):
            problems.append(f"{config_file}: {section} must be a table ([{section}]), not a single value")
        else:
            for name in table:
                if name not in _KEYS_BY_SECTION[section]:
                    hint = _suggest(name, _KEYS_BY_SECTION[section])
                    problems.append(f"{config_file}: unknown key {section}.{name}{hint}")
    return document


def _unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """Return a problem for each TGBACKUPD_* variable that names no key: a typo must not pass silently."""
    known = {key.env_name for key in KEYS} | {_CONFIG_FILE_ENV}
    return [
        f"unknown environment variable {name}{_suggest(name, known)}"
        for name in sorted(environ)
        if name.startswith("TGBACKUPD_") and name not in known
    ]


def _suggest(name: str, known: Iterable[str]) -> str:
    """Return ` (did you mean X?)` for a near miss, else the list of what is known."""
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known: {', '.join(sorted(known))})"


def _raw_value(
    key: _Key, file_values: dict[str, Any], config_file: Path, environ: Mapping[str, str]
) -> tuple[Any, str | None, bool]:
    """Return (raw value, where it came from, whether it came from the environment)."""
    for env_name in (key.env_name, *key.legacy_env):
        if environ.get(env_name, "").strip():
            return environ[env_name], f"environment variable {env_name}", True
    table = file_values.get(key.section)
    if isinstance(table, dict) and key.name in table:
        return table[key.name], f"{config_file}", False
    return None, None, False


def _resolve_token(
    values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str], problems: list[str]
) -> tuple[str | None, str | None]:
    """Return the bot token and where it came from: bot_token, then bot_token_file, then the credential."""
    if values["telegram.bot_token"]:
        return values["telegram.bot_token"], sources["telegram.bot_token"]
    candidates = []
    if values["telegram.bot_token_file"]:
        candidates.append(
            (
                values["telegram.bot_token_file"],
                f"telegram.bot_token_file (from {sources['telegram.bot_token_file']})",
            )
        )
    elif environ.get("CREDENTIALS_DIRECTORY"):
        credential = Path(environ["CREDENTIALS_DIRECTORY"]) / TOKEN_CREDENTIAL
        # An empty credential is the unit's default when the token file is absent: no token yet.
        if credential.exists() and credential.stat().st_size > 0:
            candidates.append((credential, f"systemd credential {TOKEN_CREDENTIAL}"))
    for token_path, source in candidates:
        try:
            token = _read_token(token_path, source)
        except _Problem as problem:
            problems.append(str(problem))
            return None, None
        sources["telegram.bot_token"] = f"file {token_path}"
        return token, source
    return None, None


def _encryption(
    values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str], problems: list[str]
) -> EncryptionConfig:
    """The recipients (encryption.recipients, then those of encryption.recipients_file, each checked) and
    the identity verify_after decrypts with (encryption.identity_file, then the systemd credential)."""
    recipients = list(values["encryption.recipients"])
    recipients_file = values["encryption.recipients_file"]
    if recipients_file is not None:
        source = sources["encryption.recipients_file"]
        where = f"encryption.recipients_file = '{recipients_file}' (from {source})"
        try:
            entries = recipients_file_entries(recipients_file.read_text(encoding="utf-8"))
        except OSError as error:
            problems.append(f"{where}: cannot read the recipients file: {error.strerror}")
            entries = []
        except UnicodeDecodeError:
            problems.append(f"{where}: the recipients file is not text")
            entries = []
        else:
            if not entries:
                problems.append(f"{where}: the recipients file names no recipient (one public key a line)")
        for number, entry in entries:
            problem = recipient_problem(entry)
            if problem:
                problems.append(f"{where}: line {number} ({entry!r}) is {problem}")
            elif entry not in recipients:
                recipients.append(entry)
    if len(recipients) > MAX_RECIPIENTS:
        problems.append(f"encryption: {len(recipients)} recipients, more than the {MAX_RECIPIENTS} allowed")
    identity = values["encryption.identity_file"]
    if identity is not None:
        if not os.access(identity, os.R_OK) or not identity.is_file():
            problems.append(
                f"encryption.identity_file = '{identity}' (from {sources['encryption.identity_file']}): "
                "the identity file does not exist or cannot be read"
            )
    elif environ.get("CREDENTIALS_DIRECTORY"):
        credential = Path(environ["CREDENTIALS_DIRECTORY"]) / IDENTITY_CREDENTIAL
        if credential.is_file() and credential.stat().st_size > 0:
            identity = credential
            sources["encryption.identity_file"] = f"systemd credential {IDENTITY_CREDENTIAL}"
    if recipients and values["backup.verify_after"] and identity is None:
        problems.append(
            "backup.verify_after = true restores each backup to check it, and backups are encrypted "
            "(encryption.recipients): set encryption.identity_file to an age identity of one of the "
            f"recipients, or pass it as the systemd credential {IDENTITY_CREDENTIAL}; or turn "
            "backup.verify_after off"
        )
    return EncryptionConfig(recipients=tuple(recipients), recipients_file=recipients_file, identity=identity)


def url_password(url: str) -> str | None:
    """Return the password a database URL carries, in its user info or as `?password=` (which libpq
    lets win), without judging the rest of the URL."""
    parsed = urllib.parse.urlsplit(url)
    in_query = dict(urllib.parse.parse_qsl(parsed.query)).get("password")
    return in_query or (urllib.parse.unquote(parsed.password) if parsed.password else None)


def _read_token(path: Path, source: str) -> str:
    """The bot token in the file `path`. Raise _Problem saying why it cannot be used."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise _Problem(f"{source}: cannot read the bot token file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise _Problem(f"{source}: the bot token file {path} is not text") from None
    if not _TOKEN_PATTERN.match(token):
        raise _Problem(f"{source}: the file {path} does not hold a bot token of the form <digits>:<letters>")
    return token


def token_from_file(path: Path, source: str) -> str:
    """A bot token kept in a file (an old one, to check the manifests it signed). Raise ConfigError."""
    try:
        return _read_token(path, source)
    except _Problem as problem:
        raise ConfigError([str(problem)]) from None


def _parse_database_url(url: str) -> dict[str, Any]:
    """Split postgresql://user:password@host:port/dbname?options into parts; SQLAlchemy-style
    schemes such as postgresql+asyncpg:// are accepted, since application .env files carry them.
    The password, wherever the URL has it, is taken out of the options: it reaches libpq through the
    environment only. Raise _Problem for sslpassword, which libpq reads from nowhere but a command line
    or a service file."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.split("+")[0] not in _URL_SCHEMES:
        raise _Problem("expected a URL of the form postgresql://user:password@host:port/dbname")
    try:
        port = parsed.port
    except ValueError:
        raise _Problem("the port in the URL is not a number from 1 to 65535") from None
    options = dict(urllib.parse.parse_qsl(parsed.query))
    if "sslpassword" in options:
        raise _Problem(
            "sslpassword in the URL would put the client key's passphrase on pg_dump's and psql's command "
            "lines, where every local user can read it: use a key without a passphrase (mode 0600), or "
            "put sslpassword in a connection service file (PGSERVICEFILE) and name the service in the URL "
            "(?service=NAME)"
        )
    # dbname may itself be a connection string or URL, with a password inside: that would go on the
    # command line too. The database is named in the URL's path.
    nested = sorted(
        name
        for name, value in options.items()
        if name == "dbname" or "://" in value or re.search(r"password\s*=", value, re.IGNORECASE)
    )
    if nested:
        raise _Problem(
            f"the URL's option(s) {', '.join(nested)} hold a connection string of their own, which would "
            "reach pg_dump's and psql's command lines with whatever password it holds: name the database "
            "in the URL's path (postgresql://user@host:port/DBNAME) and keep the password in PGPASSWORD"
        )
    options.pop("password", None)
    socket_directory = options.pop("host", None)  # postgresql:///db?host=/var/run/postgresql
    host = urllib.parse.unquote(parsed.hostname or "") or socket_directory
    return {
        "host": host or None,
        "port": port,
        "user": urllib.parse.unquote(parsed.username) if parsed.username else None,
        "password": url_password(url),
        "name": urllib.parse.unquote(parsed.path.lstrip("/")) or None,
        "options": tuple(sorted(options.items())),
    }


def _resolve_database(
    values: dict[str, Any],
    problems: list[str],
    required: bool,
    entry: dict[str, Any] | None = None,
    label: str = "",
) -> DatabaseConfig | None:
    """Return the database to dump: the URL's parts, each overridden by its own key when that is set; an
    entry of `[[databases]]` (its values by dotted key) over the sections, in the same way; but an entry
    that names its own server (url or host) does not inherit the sections' password, which belongs to
    another server (it may still inherit the user; a passfile, PGPASSFILE, serves several servers)."""
    parts: dict[str, Any] = {"options": ()}
    own_server = bool(entry and (entry.get("database.url") or entry.get("database.host")))
    for layer in (values, entry or {}):
        if own_server and layer is entry:
            parts.pop("password", None)
        if layer.get("database.url"):  # valid: its key's own check passed
            parsed = _parse_database_url(layer["database.url"])
            parts.update({name: value for name, value in parsed.items() if value is not None})
        for name in _CONNECTION_KEYS[1:]:
            if layer.get(f"database.{name}") is not None:
                parts[name] = layer[f"database.{name}"]
    if not parts.get("name"):
        if entry is not None and required:
            problems.append(
                f"{label}: no database named: set name (or url) in the entry, or all = true to back up "
                "every database of the server"
            )
        elif required and not any(problem.startswith("database.") for problem in problems):
            problems.append(
                "no database to back up: set DATABASE_URL (postgresql://user@host:port/dbname), "
                "PGDATABASE, or database.name in the configuration file"
            )
        return None
    settings = {**values, **(entry or {})}
    return DatabaseConfig(
        name=parts["name"],
        host=parts.get("host"),
        port=parts.get("port"),
        user=parts.get("user"),
        password=parts.get("password"),
        options=parts["options"],
        **{name: settings[f"database.{name}"] for name in _DATABASE_SETTINGS},
    )


def _first_directory(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    """systemd passes StateDirectory= and RuntimeDirectory= as colon-separated lists."""
    value = environ.get(variable, "").split(":")[0]
    return Path(value) if value else Path(fallback)


def _state_directory(environ: Mapping[str, str]) -> Path:
    return _first_directory(environ, "STATE_DIRECTORY", "/var/lib/tgbackupd")


def _runtime_directory(environ: Mapping[str, str]) -> Path:
    return _first_directory(environ, "RUNTIME_DIRECTORY", "/run/tgbackupd")


def effective_config(config: Config) -> dict[str, Any]:
    """Return the configuration as TOML-ready tables, secrets redacted, for `--check-config`."""
    database = config.database
    encryption = config.encryption
    group = None
    if config.daemon.control_group is not None:
        group = grp.getgrgid(config.daemon.control_group).gr_name
    tables: dict[str, dict[str, Any]] = {
        "telegram": {
            "bot_token": REDACTED if config.telegram.bot_token else None,
            "chat_id": config.telegram.chat_id,
            "api_url": config.telegram.api_url,
            "max_upload_mb": config.telegram.max_upload_mb,
            "part_size_mb": config.telegram.part_size_mb,
            "upload_while_dumping": config.telegram.upload_while_dumping,
            "timeout": config.telegram.timeout,
            "retries": config.telegram.retries,
            "redeliver_min_s": config.telegram.redeliver_min_s,
            "redeliver_max_s": config.telegram.redeliver_max_s,
            "messages_per_minute": config.telegram.messages_per_minute,
            "commands": config.telegram.commands,
            "admin_user_ids": list(config.telegram.admin_user_ids),
            "delete_old": config.telegram.delete_old,
        },
        "database": {
            "host": database.host,
            "port": database.port,
            "user": database.user,
            "password": REDACTED if database.password else None,
            "name": database.name,
            "pg_dump": database.pg_dump,
            "lock_wait_timeout": database.lock_wait_timeout,
            "maintenance_db": database.maintenance_db,
            "schemas": list(database.schemas),
            "exclude_schemas": list(database.exclude_schemas),
            "tables": list(database.tables),
            "exclude_tables": list(database.exclude_tables),
            "pg_dump_args": list(database.pg_dump_args),
        },
        "backup": {
            "enabled": config.backup.enabled,
            "hour": config.backup.hour,
            "minute": config.backup.minute,
            "directory": str(config.backup.directory),
            "prefix": config.backup.prefix,
            "keep": config.backup.keep,
            "keep_daily": config.backup.keep_daily,
            "keep_weekly": config.backup.keep_weekly,
            "keep_monthly": config.backup.keep_monthly,
            "keep_yearly": config.backup.keep_yearly,
            "spool_parts": config.backup.spool_parts,
            "format": config.backup.dump_format,
            "compression": config.backup.compression.name,
            "compression_level": config.backup.compression_level,
            "compression_threads": config.backup.compression_threads,
            "verify_after": config.backup.verify_after,
            "catch_up": config.backup.catch_up,
            "catch_up_delay_s": config.backup.catch_up_delay_s,
            "timeout": config.backup.timeout,
        },
        "daemon": {
            "socket": str(config.daemon.socket),
            "control_group": group,
            "state_file": str(config.daemon.state_file),
            "log_level": config.daemon.log_level,
        },
        "encryption": {
            "recipients": list(config.encryption.recipients) or None,
            "recipients_file": str(encryption.recipients_file) if encryption.recipients_file else None,
            "identity_file": str(encryption.identity) if encryption.identity else None,
        },
        "verify": {"schedule": config.verify.schedule.text if config.verify.schedule else "off"},
        "monitoring": {
            **_effective_pings(config.monitoring.pings),
            "metrics_file": str(config.monitoring.metrics_file) if config.monitoring.metrics_file else None,
        },
    }
    effective: dict[str, Any] = {
        section: {name: value for name, value in table.items() if value is not None}
        for section, table in tables.items()
    }
    if config.databases[0].label != "database":  # `[[databases]]` entries, each as it is resolved
        effective["databases"] = [_effective_target(target) for target in config.databases]
    return effective


def _effective_target(target: Target) -> dict[str, Any]:
    database, backup = target.database, target.backup
    entry = {
        "name": database.name,
        "host": database.host,
        "port": database.port,
        "user": database.user,
        "password": REDACTED if database.password else None,
        "prefix": backup.prefix,
        "compression": backup.compression.name,
        "compression_level": backup.compression_level,
        "compression_threads": backup.compression_threads,
        "hour": backup.hour,
        "minute": backup.minute,
        "keep_daily": backup.keep_daily,
        "keep_weekly": backup.keep_weekly,
        "keep_monthly": backup.keep_monthly,
        "keep_yearly": backup.keep_yearly,
        "all": target.all or None,
        "exclude": list(target.exclude) or None,
        "globals": target.globals or None,
        "globals_passwords": target.globals_passwords or None,
        **_effective_pings(target.pings),
    }
    return {name: value for name, value in entry.items() if value is not None}


def _effective_pings(pings: PingUrls) -> dict[str, str | None]:
    """The URLs pinged, as derived, with their secret parts (a check's UUID) redacted."""
    return {
        f"ping_{name}_url": url_for_logs(url) if url else None
        for name, url in (("start", pings.start), ("success", pings.success), ("failure", pings.failure))
    }
