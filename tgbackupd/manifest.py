"""The manifest: a small JSON document sent after a backup's parts, saying what they are and where the
previous backup's manifest is, so that the whole history can be found from the chat alone."""

import json
import re
from dataclasses import asdict, dataclass

from .formats import SUFFIX_PATTERN, stem

FORMAT = "tgbackupd-manifest"
VERSION = 1
SUFFIX = ".manifest.json"


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
    """Where a manifest document is in the chat."""

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

    @property
    def file_name(self) -> str:
        return manifest_name(self.name)

    def to_json(self) -> bytes:
        document = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        """Parse and check a manifest. Raise ManifestError saying what is wrong with it."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise ManifestError(f"not a tgbackupd manifest (not JSON: {error})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ManifestError('not a tgbackupd manifest (no "format": "tgbackupd-manifest")')
        if document.get("version") != VERSION:
            raise ManifestError(
                f"manifest version {document.get('version')} is not one this tgbackupd reads ({VERSION}): "
                "restore with the tgbackupd version that made it"
            )
        try:
            parts = tuple(Part(**part) for part in document["parts"])
            previous = ManifestRef(**document["previous"]) if document.get("previous") else None
            manifest = cls(
                name=str(document["name"]),
                database=str(document["database"]),
                host=str(document["host"]),
                server=str(document["server"]),
                created_at=str(document["created_at"]),
                size_bytes=int(document["size_bytes"]),
                sha256=str(document["sha256"]),
                parts=parts,
                previous=previous,
                dump_format=str(document.get("dump_format", "plain")),
                compression=str(document.get("compression", "gzip")),
                verified=document.get("verified"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(
                f"the manifest is incomplete or malformed ({type(error).__name__}: {error})"
            ) from None
        if [part.index for part in parts] != list(range(1, len(parts) + 1)) or not parts:
            raise ManifestError("the manifest's parts are not numbered 1, 2, 3, …")
        if sum(part.size_bytes for part in parts) != manifest.size_bytes:
            raise ManifestError("the manifest's part sizes do not add up to the backup's size")
        return manifest


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
