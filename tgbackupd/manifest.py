"""The manifest: a small JSON document sent after a backup's parts, saying what they are and where the
previous backup's manifest is, so that the whole history can be found from the chat alone."""

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from .formats import (
    DUMP_EXTENSIONS,
    ENCRYPTED_SUFFIX,
    FORMATS,
    SUFFIX_PATTERN,
    by_name,
    dump_format_by_name,
    stem,
)

FORMAT = "tgbackupd-manifest"
VERSION = 1
SUFFIX = ".manifest.json"
# A globals dump (pg_dumpall --globals-only: roles, tablespaces) is plain SQL too, restored without a
# transaction (see restore.restore_globals).
PLAIN_FORMAT = "plain"
GLOBALS_FORMAT = "globals"
DUMP_FORMATS = (*DUMP_EXTENSIONS, GLOBALS_FORMAT)
# Bounds on what a manifest read from the chat or a folder may claim: 100,000 parts is 1.9 TB at the
# default part size; sizes stay within what every JSON reader holds exactly.
MAX_PARTS = 100_000
# A manifest of MAX_PARTS parts is some 35 MB of JSON: larger is not one of ours.
MAX_MANIFEST_BYTES = 48 * 1024 * 1024
MAX_BYTES = 2**53
MAX_MESSAGE_ID = 2**53
MAX_TEXT = 1000
# An encrypted backup's recipients (public keys): as many as encryption.recipients may name, each at most
# an SSH RSA key of 16384 bits with its comment.
MAX_RECIPIENTS = 100
MAX_RECIPIENT_TEXT = 4000
# `<prefix>_backup_YYYYMMDD_HHMMSS.sql.gz` (or `.sql.zst`, `.dump.gz`,
# `.dump.zst`, any with `.age`), the prefix in the character class that
# backup.prefix allows and the database names it falls back to are made of: never a path.
_BACKUP_NAME = re.compile(
    rf"^[A-Za-z0-9_.-]{{1,200}}_backup_(?P<stamp>[0-9]{{8}}_[0-9]{{6}})(?P<suffix>{SUFFIX_PATTERN})?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_ID = re.compile(r"^[!-~]{1,512}$")  # printable ASCII, as the Bot API's file ids are
# Control characters, and halves of a surrogate pair that JSON can carry alone but no text holds.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Part:
    index: int
    file_name: str
    offset: int
    size_bytes: int
    sha256: str
    message_id: int | None = None
    file_id: str | None = None


@dataclass(frozen=True)
class ManifestRef:
    """Where a manifest document is in the chat. `name` is the backup's, or, for a manifest found pinned,
    its stem (the manifest's file name does not say the format)."""

    name: str
    message_id: int | None
    file_id: str | None


@dataclass(frozen=True)
class Manifest:
    name: str
    database: str
    host: str
    server: str
    created_at: str
    size_bytes: int
    sha256: str
    parts: tuple[Part, ...]
    previous: ManifestRef | None = None
    dump_format: str = "plain"
    compression: str = "gzip"
    verified: bool | None = None
    encrypted: bool = False
    recipients: tuple[str, ...] = ()  # the public keys an encrypted backup can be decrypted with

    @property
    def file_name(self) -> str:
        return manifest_name(self.name)

    def document(self) -> dict[str, Any]:
        """The manifest as the JSON object that is written and signed."""
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def to_json(self, signature: dict[str, str] | None = None) -> bytes:
        document = self.document()
        if signature is not None:
            document["signature"] = signature
        return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        """Parse a manifest that came from outside (the chat, a folder, a file) into typed objects,
        checking every field's type and range, the names against those its backup's name makes, and the
        parts against each other. Fields it does not know are left alone (a later version may add some).
        Raise ManifestError saying what is wrong."""
        document = _Object(load_json(data), "the manifest")
        if document.get("format") != FORMAT:
            raise ManifestError('not a tgbackupd manifest (no "format": "tgbackupd-manifest")')
        if document.get("version") != VERSION:
            raise ManifestError(
                f"manifest version {_show(document.get('version'))} is not one this tgbackupd reads "
                f"({VERSION}): restore with the tgbackupd version that made it"
            )
        name = document.text("name")
        if not is_backup_name(name):
            raise ManifestError(
                f"the manifest's \"name\" is {_show(name)}, not a backup's name "
                "(<prefix>_backup_YYYYMMDD_HHMMSS.sql.gz, .sql.zst, .dump.gz or .dump.zst, any with .age "
                "when encrypted)"
            )
        compression = document.choice("compression", tuple(FORMATS), default="gzip")
        if by_name(name).name != compression:
            raise ManifestError(f'the manifest\'s "compression" is {compression}, but {name} is not')
        dump_format = document.choice("dump_format", DUMP_FORMATS, default="plain")
        # A globals dump is plain SQL by its name (`.sql.gz`).
        if dump_format_by_name(name) != (PLAIN_FORMAT if dump_format == GLOBALS_FORMAT else dump_format):
            raise ManifestError(f'the manifest\'s "dump_format" is {dump_format}, but {name} is not')
        if dump_format == GLOBALS_FORMAT and not is_globals_series(series_of(name)):
            # A globals backup is restored without a transaction and past errors: only its own series.
            raise ManifestError(
                f"the manifest's \"dump_format\" is globals, but {name} is not a globals backup's name "
                "(<prefix>_globals_backup_…)"
            )
        encrypted = document.optional_boolean("encrypted") or False
        if encrypted != name.endswith(ENCRYPTED_SUFFIX):
            raise ManifestError(
                f'the manifest\'s "encrypted" is {_show(encrypted)}, but {name} '
                + ("does not end" if encrypted else "ends")
                + f" in {ENCRYPTED_SUFFIX}"
            )
        recipients = document.texts("recipients", MAX_RECIPIENTS, MAX_RECIPIENT_TEXT)
        if recipients and not encrypted:
            raise ManifestError('the manifest lists "recipients", but its backup is not encrypted')
        created_at = document.text("created_at")
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise ManifestError(
                f'the manifest\'s "created_at" is {_show(created_at)}, not a date and time'
            ) from None
        size_bytes = document.integer("size_bytes", 0, MAX_BYTES)
        raw_parts = document.array("parts", 1, MAX_PARTS)
        parts = tuple(
            _part(raw, position, name, len(raw_parts)) for position, raw in enumerate(raw_parts, start=1)
        )
        offset = 0
        for part in parts:
            if part.offset != offset:
                raise ManifestError(
                    f"part {part.index} of the manifest starts at byte {part.offset}, not at {offset} where "
                    "the part before it ends"
                )
            offset += part.size_bytes
        if offset != size_bytes:
            raise ManifestError("the manifest's part sizes do not add up to the backup's size")
        previous = document.get("previous")
        return cls(
            name=name,
            database=document.text("database"),
            host=document.text("host"),
            server=document.text("server"),
            created_at=created_at,
            size_bytes=size_bytes,
            sha256=document.sha256("sha256"),
            parts=parts,
            previous=None if previous is None else _reference(previous, 'the manifest\'s "previous"'),
            dump_format=dump_format,
            compression=compression,
            verified=document.optional_boolean("verified"),
            encrypted=encrypted,
            recipients=recipients,
        )


def load_json(data: bytes) -> Any:
    """JSON from outside, whatever it holds. Raise ManifestError if it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ManifestError(f"not a tgbackupd manifest (not JSON: {error})") from None


def series_of(name: str) -> str:
    """The prefix of a backup's name (`shop` of `shop_backup_20251203_030000.sql.gz`): which database's
    series of backups it belongs to."""
    return name.rsplit("_backup_", 1)[0]


def is_globals_series(series: str) -> bool:
    """Whether a series holds a server's globals (config's globals_prefix: `<prefix>_globals`)."""
    return series == GLOBALS_FORMAT or series.endswith(f"_{GLOBALS_FORMAT}")


def is_backup_name(text: str, stem_only: bool = False) -> bool:
    """Whether `text` is a backup's file name (with `stem_only`: one without its `.sql.gz` ending, as a
    manifest's file name gives it), with a real date and time."""
    match = _BACKUP_NAME.match(text)
    if match is None or (match["suffix"] is None) != stem_only:
        return False
    try:
        datetime.strptime(match["stamp"], "%Y%m%d_%H%M%S")
    except ValueError:
        return False
    return True


def _part(value: Any, position: int, name: str, count: int) -> Part:
    fields = _Object(value, f"part {position} of the manifest")
    index = fields.integer("index", 1, MAX_PARTS)
    if index != position:
        raise ManifestError(
            f"the manifest's parts are not numbered 1, 2, 3, … (part {position} says it is {index})"
        )
    file_name = fields.text("file_name")
    expected = part_name(name, index, count)
    if file_name != expected:
        raise ManifestError(
            f'part {index} of the manifest has the "file_name" {_show(file_name)}, not {expected} as the '
            f"backup's name and its {count} part(s) make it"
        )
    return Part(
        index=index,
        file_name=file_name,
        offset=fields.integer("offset", 0, MAX_BYTES),
        size_bytes=fields.integer("size_bytes", 0, MAX_BYTES),
        sha256=fields.sha256("sha256"),
        message_id=fields.optional_integer("message_id", 1, MAX_MESSAGE_ID),
        file_id=fields.file_id("file_id"),
    )


def _reference(value: Any, where: str) -> ManifestRef:
    fields = _Object(value, where)
    name = fields.text("name")
    if not (is_backup_name(name) or is_backup_name(name, stem_only=True)):
        raise ManifestError(f'{where} has the "name" {_show(name)}, which is not a backup\'s name')
    return ManifestRef(
        name=name,
        message_id=fields.optional_integer("message_id", 1, MAX_MESSAGE_ID),
        file_id=fields.file_id("file_id"),
    )


def _show(value: Any) -> str:
    """A value from outside, quoted and cut short, with nothing a terminal would act on."""
    shown = json.dumps(value, ensure_ascii=True)
    return shown if len(shown) <= 80 else shown[:77] + "..."


class _Object:
    """A JSON object from a manifest, read field by field: each field is checked as it is read, and a
    problem names the field, what it holds and what it should hold."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ManifestError(f"{where} is {_show(value)}, not a JSON object")
        self._fields: dict[str, Any] = value
        self._where = where

    def get(self, key: str) -> Any:
        return self._fields.get(key)

    def _required(self, key: str) -> Any:
        if key not in self._fields:
            raise ManifestError(f'{self._where} is incomplete: it has no "{key}"')
        return self._fields[key]

    def _wrong(self, key: str, expected: str) -> ManifestError:
        return ManifestError(f'{self._where}\'s "{key}" is {_show(self._fields.get(key))}, not {expected}')

    def integer(self, key: str, low: int, high: int) -> int:
        value = self._required(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._wrong(key, f"a whole number from {low} to {high}")
        return value

    def optional_integer(self, key: str, low: int, high: int) -> int | None:
        return None if self._fields.get(key) is None else self.integer(key, low, high)

    def text(self, key: str) -> str:
        value = self._required(key)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or _CONTROL.search(value):
            raise self._wrong(key, f"text of 1 to {MAX_TEXT} printable characters")
        return value

    def sha256(self, key: str) -> str:
        value = self._required(key)
        if not isinstance(value, str) or not _SHA256.match(value):
            raise self._wrong(key, "a SHA-256 (64 lowercase hexadecimal digits)")
        return value

    def file_id(self, key: str) -> str | None:
        value = self._fields.get(key)
        if value is not None and not (isinstance(value, str) and _FILE_ID.match(value)):
            raise self._wrong(key, "a Telegram file id (1 to 512 printable ASCII characters) or null")
        return value

    def choice(self, key: str, known: tuple[str, ...], default: str) -> str:
        value = self._fields.get(key, default)
        if value not in known:
            raise self._wrong(key, f"one of {', '.join(known)}")
        return str(value)

    def optional_boolean(self, key: str) -> bool | None:
        value = self._fields.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._wrong(key, "true, false or null")
        return value

    def texts(self, key: str, most: int, longest: int) -> tuple[str, ...]:
        """An optional list of at most `most` texts of at most `longest` printable characters each."""
        value = self._fields.get(key, [])
        if (
            not isinstance(value, list)
            or len(value) > most
            or not all(
                isinstance(item, str) and 0 < len(item) <= longest and not _CONTROL.search(item)
                for item in value
            )
        ):
            raise self._wrong(key, f"a list of at most {most} texts of 1 to {longest} printable characters")
        return tuple(value)

    def array(self, key: str, fewest: int, most: int) -> list[Any]:
        value = self._required(key)
        if not isinstance(value, list) or not fewest <= len(value) <= most:
            raise self._wrong(key, f"a list of {fewest} to {most} items")
        return value


def manifest_name(backup_name: str) -> str:
    """`shop_backup_20251203_030000.sql.gz` → `shop_backup_20251203_030000.manifest.json`."""
    return stem(backup_name) + SUFFIX


# A part's file name, as part_name makes it for a backup of several parts (and the spool for any).
PART_FILE = re.compile(rf"^(?P<name>.+{SUFFIX_PATTERN})\.(?P<index>[0-9]{{3,}})$")


def part_name(backup_name: str, index: int, count: int, numbered: bool = False) -> str:
    """Part `index` of `count`: the backup's own name when it fits in one (unless `numbered`: the spool
    numbers every part), else `<name>.001`, `<name>.002`, …, the number padded to the width of the count
    (at least three digits: `.0001` … `.1200`), so that `cat name.sql.gz.* > name.sql.gz` puts it back
    together in order however many parts there are."""
    if count == 1 and not numbered:
        return backup_name
    return f"{backup_name}.{index:0{max(3, len(str(count)))}d}"


def plan_parts(backup_name: str, digests: list[tuple[int, str]]) -> tuple[Part, ...]:
    """Given each part's (size, sha256) in order, return the parts with their names and offsets."""
    parts = []
    offset = 0
    for index, (size, sha256) in enumerate(digests, start=1):
        parts.append(Part(index, part_name(backup_name, index, len(digests)), offset, size, sha256))
        offset += size
    return tuple(parts)
