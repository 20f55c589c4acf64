"""Getting a database back: find a backup (a local file, a folder of parts, the catalogue, or Telegram
alone), check before anything touches a database what is cheap to check (every part there, of its size;
the age identity, for an encrypted one), then read it once: each piece's bytes are hashed (the part's and
the whole's SHA-256) on their way through decryption and decompression into psql (through pg_restore, for
a custom-format archive), in one transaction that is committed only once every hash matched (or into a
scratch database to verify it, or into a file; on several connections, from a file)."""

import contextlib
import hashlib
import itertools
import os
import re
import secrets
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TypeVar

import zstandard

from . import chain, encryption, psql
from .config import DatabaseConfig
from .errors import Cancelled, ConfigError, RestoreError, TgbackupdError, UsageError
from .formats import SUFFIX_PATTERN, Decompressor, Format, by_magic, dump_format_by_name, stem
from .manifest import (
    GLOBALS_FORMAT,
    PART_FILE,
    SUFFIX,
    Manifest,
    ManifestError,
    ManifestRef,
    Part,
    manifest_name,
    part_name,
    series_of,
)
from .progress import Progress
from .signing import Keyring
from .stopping import Stop
from .telegram import BotApi, TelegramError, TelegramRejected

READ_BYTES = 1024 * 1024
DOWNLOAD_ATTEMPTS = 3
# Parts downloaded from Telegram ahead of the one being restored: the work directory holds at most this
# many and the one being read (each removed once read), and a slow part download rarely stalls psql.
PARTS_AHEAD = 2
# Dropping a scratch database happens also while tgbackupd stops: it may not hold the stop up for long.
_DROP_TIMEOUT_S = 60
_WHOLE_FILE = re.compile(rf"^.+{SUFFIX_PATTERN}$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Piece:
    """Bytes [offset, offset + size) of a file that hold one part of a backup."""

    path: Path
    offset: int
    size: int
    label: str
    sha256: str | None


@dataclass(frozen=True)
class CheckedBackup:
    """A backup whose pieces were all found, each of the size the manifest says: what can be checked
    before reading it. Their hashes, and the whole's, are checked as it is read (`read_sql`). Pieces
    that `downloads` brings arrive while the earlier ones are read."""

    name: str
    pieces: tuple[Piece, ...]
    sha256: str | None
    recipients: tuple[str, ...] = ()  # the public keys the manifest says it is encrypted for
    identities: tuple[Path, ...] = ()  # the age identities it is decrypted with (see `unlock`)
    declared_format: str | None = None  # as its manifest says (GLOBALS_FORMAT: see restore_globals)
    downloads: "Downloads | None" = None  # parts still being downloaded (TelegramSource.fetch)

    @property
    def size_bytes(self) -> int:
        return sum(piece.size for piece in self.pieces)

    @property
    def dump_format(self) -> str:
        """pg_dump's format the backup holds: as its manifest says, else as its name says (a manifest that
        disagreed with its name was refused)."""
        return self.declared_format or dump_format_by_name(self.name)

    def head(self) -> bytes:
        """The first bytes of the backup, as many as encryption.PROBE_BYTES (of its first pieces; those not
        downloaded yet are waited for)."""
        head = b""
        for position, piece in enumerate(self.pieces):
            if self.downloads is not None:
                if position > PARTS_AHEAD:
                    break  # the downloads wait for the reading to free the disk: no more are on it
                self.downloads.wait(piece.path)
            with piece.path.open("rb") as stream:
                stream.seek(piece.offset)
                head += stream.read(min(piece.size, encryption.PROBE_BYTES - len(head)))
            if len(head) == encryption.PROBE_BYTES:
                break
        return head

    @property
    def encrypted(self) -> bool:
        """As its name says (a manifest's name ends in .age exactly when it says it is encrypted), else,
        for a file found without a manifest, as its first bytes say."""
        if self.name.endswith(encryption.SUFFIX):
            return True
        return self.declared_format is None and self.head().startswith(encryption.MAGIC)


class _Reading:
    """One pass over a backup: pieces → hash → decompress. Each piece is read once; its SHA-256 is
    checked when its last byte has passed, the whole's after the last piece, and the stream raises
    RestoreError there, before its end: what it fed (psql, in one transaction) must then end without
    committing."""

    def __init__(self, backup: CheckedBackup, progress: Progress | None) -> None:
        self._backup = backup
        self._progress = progress
        # The piece being read, its open file and its hash so far: what `cause` finishes reading.
        self._current: tuple[Piece, BinaryIO, hashlib._Hash] | None = None
        self._decrypting = False

    def sql(self) -> Generator[bytes]:
        """The backup's SQL, decompressed as it is read, in the format its first bytes say (gzip or zstd).
        A file compressed on several threads is several gzip members in a row (as gunzip reads them).
        Raise RestoreError if a hash does not match or the stream is cut short."""
        blocks = self._blocks()
        if self._backup.encrypted:
            # age reads the blocks on a thread of its own, which also closes them: `cause` must not read
            # the piece under it. What the hashes find is raised through age's stream all the same.
            self._decrypting = True
            whole = Piece(self._backup.pieces[0].path, 0, self._backup.size_bytes, self._backup.name, None)
            stored = (block for _, block in blocks)
            decrypted = ((whole, block) for block in encryption.decrypt(stored, self._backup.identities))
            yield from _decompressed(decrypted, self._backup.name)
            return
        try:
            yield from _decompressed(blocks, self._backup.name)
        except RestoreError as error:
            raise self.cause(error) from None
        finally:
            blocks.close()

    def _blocks(self) -> Generator[tuple[Piece, bytes]]:
        whole = hashlib.sha256()
        done = 0
        downloads = self._backup.downloads
        for piece in self._backup.pieces:
            if downloads is not None:
                downloads.wait(piece.path)
            part_hash = hashlib.sha256()
            with piece.path.open("rb") as stream:
                stream.seek(piece.offset)
                self._current = (piece, stream, part_hash)
                try:
                    remaining = piece.size
                    while remaining:
                        block = _read_block(piece, stream, remaining)
                        remaining -= len(block)
                        part_hash.update(block)
                        whole.update(block)
                        yield piece, block
                        done += len(block)
                        if self._progress is not None:
                            self._progress.update(done)
                finally:
                    self._current = None
            _check_part(piece, part_hash)
            if downloads is not None:
                downloads.release(piece.path)
        if self._backup.sha256 and whole.hexdigest() != self._backup.sha256:
            raise RestoreError(
                f"{self._backup.name} as a whole does not match its SHA-256 ({whole.hexdigest()} instead of "
                f"{self._backup.sha256}): a part is missing, extra or out of order. Nothing was restored"
            )

    def cause(self, error: RestoreError) -> RestoreError:
        """Why the SQL could not be decompressed, or psql stopped at an error: the piece being read then,
        if it turns out corrupt once read to its end (its garbage reaches psql before its hash can tell),
        else `error` itself."""
        if self._current is None or self._decrypting:
            return error
        piece, stream, part_hash = self._current
        self._current = None
        remaining = piece.size - (stream.tell() - piece.offset)
        try:
            while remaining:
                block = _read_block(piece, stream, remaining)
                remaining -= len(block)
                part_hash.update(block)
            _check_part(piece, part_hash)
        except RestoreError as corrupt:
            return corrupt
        return error


def _read_block(piece: Piece, stream: BinaryIO, remaining: int) -> bytes:
    block = stream.read(min(READ_BYTES, remaining))
    if not block:
        raise RestoreError(
            f"{piece.label} ({piece.path}) ends early: the file is truncated. Nothing was restored"
        )
    return block


def _check_part(piece: Piece, part_hash: "hashlib._Hash") -> None:
    if piece.sha256 and part_hash.hexdigest() != piece.sha256:
        raise RestoreError(
            f"{piece.label} is corrupt: its SHA-256 is {part_hash.hexdigest()}, the manifest says "
            f"{piece.sha256}. Nothing was restored"
        )


def _decompressed(blocks: Iterator[tuple[Piece, bytes]], name: str) -> Iterator[bytes]:
    compression: Format | None = None
    decompressor: Decompressor | None = None
    in_stream = False  # part of a member or frame was read, and its end was not
    for piece, data in blocks:
        while data:
            if compression is None:
                compression = by_magic(data)
                if compression is None:
                    raise RestoreError(
                        f"{piece.label} is neither gzip nor zstd data: is it a tgbackupd backup?"
                    )
            if decompressor is None:
                decompressor = compression.decompressor()
            try:
                yield from decompressor.feed(data)
            except (zlib.error, zstandard.ZstdError) as error:
                raise RestoreError(f"{piece.label} is not valid {compression.name} data ({error})") from None
            if decompressor.eof:
                data, decompressor, in_stream = decompressor.unused_data, None, False
            else:
                data, in_stream = b"", True
    if in_stream or compression is None:
        raise RestoreError(
            f"{name} ends in the middle of its {compression.name if compression else 'compressed'} stream: "
            "the last part is missing or cut. Nothing was restored"
        )


def read_sql(
    backup: CheckedBackup, progress: Progress | None, consume: Callable[[Iterator[bytes]], _T]
) -> _T:
    """Give the backup's SQL, read once and checked on the way (see `_Reading`), to `consume`, whose
    result is returned. If consuming fails, a corrupt piece is reported as the cause when there is one.
    Downloads still running are stopped, whatever happens."""
    reading = _Reading(backup, progress)
    chunks = reading.sql()
    try:
        return consume(chunks)
    except RestoreError as error:
        raise reading.cause(error) from None
    finally:
        chunks.close()
        if backup.downloads is not None:
            backup.downloads.close()


class Downloads:
    """Parts that a thread downloads while the restore reads the ones before them. At most PARTS_AHEAD
    besides the one being read are on disk at once; each is removed once it was read. A download that
    failed is raised to the reader when it comes to that part."""

    def __init__(
        self, download: Callable[[Part, Path, Callable[[], bool]], None], wanted: list[tuple[Part, Path]]
    ):
        self._download = download
        self._wanted = wanted
        self._paths = {path for _, path in wanted}
        self._condition = threading.Condition()
        self._arrived: set[Path] = set()
        self._on_disk = 0
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def wait(self, path: Path) -> None:
        """Return once `path` is downloaded (at once for a part that was not to be); the first call starts
        the downloads. Raise what made its download fail."""
        if path not in self._paths:
            return
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="download", daemon=True)
                self._thread.start()
            self._condition.wait_for(
                lambda: path in self._arrived or self._failure is not None or self._closed
            )
            if path not in self._arrived:
                if self._failure is not None:
                    raise self._failure
                raise Cancelled("the restore stopped before this part was downloaded")

    def release(self, path: Path) -> None:
        """The part at `path` was read: remove it, and let the next download start."""
        if path not in self._paths:
            return
        path.unlink(missing_ok=True)
        with self._condition:
            self._on_disk -= 1
            self._condition.notify_all()

    def close(self) -> None:
        """Stop downloading (a download under way stops at its next block) and wait for the thread."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _stopping(self) -> bool:
        return self._closed

    def _run(self) -> None:
        try:
            for part, path in self._wanted:
                with self._condition:
                    self._condition.wait_for(lambda: self._on_disk <= PARTS_AHEAD or self._closed)
                    if self._closed:
                        return
                    self._on_disk += 1
                self._download(part, path, self._stopping)
                with self._condition:
                    self._arrived.add(path)
                    self._condition.notify_all()
        except BaseException as error:  # raised in the reader's thread, where it is handled
            with self._condition:
                self._failure = error
                self._condition.notify_all()


def unlock(backup: CheckedBackup, identities: tuple[Path, ...]) -> CheckedBackup:
    """Given a found backup and the age identities a person gave, return it ready to be read. When it is
    encrypted, one of the identities must open it: found out now, from its first bytes, before a database
    sees any of it (encryption.check_identities says which of no identity, the wrong one or a damaged
    backup)."""
    if not backup.encrypted:
        return backup
    try:
        head = backup.head()
        encryption.check_identities(head, len(head) == backup.size_bytes, identities, backup.recipients)
    except BaseException:
        if backup.downloads is not None:
            backup.downloads.close()  # before the work directory is removed under them
        raise
    return replace(backup, identities=identities)


# Sources


def _manifest_pieces(
    manifest: Manifest,
    locate: dict[int, Path],
    whole_file: Path | None = None,
    arriving: frozenset[Path] = frozenset(),
) -> list[Piece]:
    """The manifest's parts, each found where `locate` says (in `whole_file` when given) and of the size
    it says; those `arriving` are still being downloaded (a download checks its size and hash itself)."""
    pieces = []
    count = len(manifest.parts)
    for part in manifest.parts:
        label = f"part {part.index} of {count} ({part.file_name})"
        if whole_file is not None:
            pieces.append(Piece(whole_file, part.offset, part.size_bytes, label, part.sha256))
            continue
        path = locate.get(part.index)
        if path is None:
            raise RestoreError(f"{label} is missing. Nothing was restored")
        if path not in arriving and path.stat().st_size != part.size_bytes:
            raise RestoreError(
                f"{label} is {path.stat().st_size} bytes, the manifest says {part.size_bytes}: the file is "
                "truncated or not that part. Nothing was restored"
            )
        pieces.append(Piece(path, 0, part.size_bytes, label, part.sha256))
    return pieces


def from_local_file(path: Path, manifest: Manifest | None, progress: Progress) -> CheckedBackup:
    """A whole `.sql.gz` (or `.sql.zst`) file, checked against its manifest when there is one."""
    if not path.is_file():
        raise RestoreError(f"{path} does not exist or is not a file")
    if manifest is None:
        sibling = path.with_name(manifest_name(path.name))
        manifest = _load_manifest_file(sibling) if sibling.exists() else None
    if manifest is not None and manifest.size_bytes != path.stat().st_size:
        raise RestoreError(
            f"{path} is {path.stat().st_size} bytes, its manifest says {manifest.size_bytes}: it is "
            "truncated "
            "or not that backup"
        )
    if manifest is None:
        return _found(path.name, [Piece(path, 0, path.stat().st_size, path.name, None)], None, progress)
    return _found(
        manifest.name, _manifest_pieces(manifest, {}, whole_file=path), manifest.sha256, progress, manifest
    )


def from_parts(manifest: Manifest, located: dict[int, Path], progress: Progress) -> CheckedBackup:
    """A backup's parts, each a file of its own (a download, or the spool of a backup not kept here)."""
    return _found(manifest.name, _manifest_pieces(manifest, located), manifest.sha256, progress, manifest)


def from_folder(folder: Path, progress: Progress) -> CheckedBackup:
    """A folder of downloaded parts (`name.sql.gz.001`, …), with or without the manifest beside them."""
    manifests = sorted(folder.glob(f"*{SUFFIX}"))
    parts: dict[str, dict[int, Path]] = {}
    for path in folder.iterdir():
        match = PART_FILE.match(path.name)
        if match:
            parts.setdefault(match["name"], {})[int(match["index"])] = path
    wholes = sorted(path for path in folder.iterdir() if _WHOLE_FILE.match(path.name))
    if len(manifests) == 1:
        manifest = _load_manifest_file(manifests[0])
        whole = folder / manifest.name
        if len(manifest.parts) == 1 and whole.is_file():
            return from_local_file(whole, manifest, progress)
        return from_parts(manifest, parts.get(manifest.name, {}), progress)
    if len(manifests) > 1:
        raise RestoreError(
            f"{folder} holds {len(manifests)} manifests: keep the one backup to restore, or name a file"
        )
    if len(parts) == 1:
        ((name, indexed),) = parts.items()
        numbers = sorted(indexed)
        if numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
            raise RestoreError(
                f"{name}: part(s) {', '.join(f'{n:03d}' for n in missing)} are missing from {folder}"
            )
        pieces = [
            Piece(
                indexed[n],
                0,
                indexed[n].stat().st_size,
                f"part {n} of {len(numbers)} ({indexed[n].name})",
                None,
            )
            for n in numbers
        ]
        return _found(name, pieces, None, progress)
    if len(wholes) == 1 and not parts:
        return from_local_file(wholes[0], None, progress)
    raise RestoreError(
        f"{folder} does not hold exactly one backup (found {len(wholes)} backup file(s) and parts of "
        f"{len(parts)} backup(s)): point at one file instead"
    )


def _found(
    name: str,
    pieces: list[Piece],
    sha256: str | None,
    progress: Progress,
    manifest: Manifest | None = None,
    downloads: Downloads | None = None,
) -> CheckedBackup:
    hashes = "each part's and the whole's SHA-256 are checked as it is read" if sha256 else "no SHA-256 known"
    progress.note(f"Found {name}: {len(pieces)} part(s); {hashes}")
    if manifest is None:
        return CheckedBackup(name, tuple(pieces), sha256, downloads=downloads)
    return CheckedBackup(
        name,
        tuple(pieces),
        sha256,
        recipients=manifest.recipients,
        declared_format=manifest.dump_format,
        downloads=downloads,
    )


def _load_manifest_file(path: Path) -> Manifest:
    try:
        return Manifest.from_json(path.read_bytes())
    except ManifestError as error:
        raise RestoreError(f"{path}: {error}") from None


class TelegramSource:
    """Backups found from the chat alone: the pinned manifest, then each manifest's `previous`."""

    def __init__(self, bot: BotApi, chat_id: str, keyring: Keyring, progress: Progress) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._keyring = keyring
        self._progress = progress

    def history(self, limit: int = chain.HISTORY_LIMIT) -> Iterator[tuple[Manifest, ManifestRef]]:
        """The manifests, newest first, by walking back from the pinned one; a manifest no key of the
        keyring signed ends the walk with a RestoreError saying so."""
        try:
            reference = chain.pinned_manifest_ref(self._bot, self._chat_id)
        except TelegramError as error:
            raise RestoreError(f"cannot read chat {self._chat_id}: {error}") from None
        if reference is None:
            raise RestoreError(
                f"no tgbackupd manifest is pinned in chat {self._chat_id}: either no backup was "
                "delivered there "
                "yet, or the bot may not pin messages (then restore from a folder of downloaded parts)"
            )
        yield from chain.walk(self._bot, reference, self._keyring, limit)

    def find(self, which: str, database: str | None = None) -> Manifest:
        """The manifest of the backup called `which`, or of the newest for `latest` (of `database`, by its
        name or prefix, when given). Raise ConfigError for `latest` without `database` when the two
        newest backups in the chat are of different databases (one daemon backs up several)."""
        history = self.history()
        if which == "latest" and database is None:
            for newest, _ in history:
                try:
                    following = next(history, None)
                except TgbackupdError:
                    following = None  # the walk ends there: nothing older to compare with
                if following is not None and series_of(following[0].name) != series_of(newest.name):
                    raise ConfigError(
                        [
                            f"the chat holds backups of several databases ({series_of(newest.name)}, "
                            f"{series_of(following[0].name)}, …): say which with --database NAME (its "
                            "name or prefix), or name the backup"
                        ]
                    )
                return newest
        for manifest, _ in history:
            wanted = (manifest.database, series_of(manifest.name)) if which == "latest" else ()
            if database in wanted or which in (manifest.name, stem(manifest.name)):
                return manifest
        raise RestoreError(
            f"no backup called {which} in chat {self._chat_id} (see `tgbackupctl list --remote`)"
        )

    def fetch(self, manifest: Manifest, workdir: Path, local: dict[int, Path] | None = None) -> CheckedBackup:
        """The backup, with the parts not found `local`ly downloaded into `workdir` while the restore reads
        the earlier ones (see Downloads), each checked as it arrives (and downloaded again when it came
        truncated or damaged). Telegram is asked first for every such part, so that one deleted from the
        chat stops the restore before any database sees it."""
        located = dict(local or {})
        count = len(manifest.parts)
        wanted = []
        file_paths = {}
        for part in manifest.parts:
            if part.index not in located:
                name = part_name(manifest.name, part.index, count)  # from the checked name, not from the chat
                file_paths[part.index] = self._file_path(part, f"part {part.index} of {count} ({name})")
                located[part.index] = workdir / name
                wanted.append((part, workdir / name))

        def download(part: Part, target: Path, stopping: Callable[[], bool]) -> None:
            self._download_part(manifest, part, target, file_paths[part.index], stopping)

        pieces = _manifest_pieces(manifest, located, arriving=frozenset(target for _, target in wanted))
        return _found(
            manifest.name, pieces, manifest.sha256, self._progress, manifest, Downloads(download, wanted)
        )

    def _file_path(self, part: Part, label: str) -> str:
        """Where the Bot API serves the part from (Telegram keeps such a path valid for an hour at least)."""
        if not part.file_id:
            raise RestoreError(f"{label} was never delivered to Telegram (no file id in the manifest)")
        try:
            return str(self._bot.get_file(part.file_id)["file_path"])
        except TelegramRejected as error:
            if "too big" in str(error).lower():
                raise RestoreError(
                    f"{label} is larger than the 20 MB a bot may download from the public Bot API: "
                    "this backup was made with telegram.part_size_mb above 20. Download it through a "
                    "self-hosted Bot API server (telegram.api_url)"
                ) from None
            raise RestoreError(
                f"{label} is missing from Telegram (was its message deleted?): {error}"
            ) from None
        except TelegramError as error:
            raise RestoreError(f"cannot download {label}: {error}") from None

    def _download_part(
        self, manifest: Manifest, part: Part, target: Path, file_path: str, stopping: Callable[[], bool]
    ) -> None:
        """Download a part into `target` from `file_path` (asked for again after a failed attempt), until
        it comes whole and matching its SHA-256. Raise Cancelled as soon as `stopping` says so."""
        label = f"part {part.index} of {len(manifest.parts)} ({target.name})"

        def received_so_far(_: int) -> None:
            if stopping():
                raise Cancelled(f"the download of {label} was stopped")

        problem = ""
        with _new_file(target) as sink:
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                if attempt > 1:
                    file_path = self._file_path(part, label)
                sink.seek(0)
                sink.truncate()  # an attempt that came short or damaged is replaced in the same file
                try:
                    received = self._bot.download(file_path, sink, received_so_far, limit=part.size_bytes)
                except TelegramError as error:
                    received, problem = -1, str(error)
                if received >= 0:
                    digest = _stream_sha256(sink)
                    if received > part.size_bytes:
                        problem = f"it is larger than the {part.size_bytes} bytes the manifest says"
                    elif received != part.size_bytes:
                        problem = f"the download was cut short ({received} of {part.size_bytes} bytes)"
                    elif digest != part.sha256:
                        problem = f"its SHA-256 is {digest}, the manifest says {part.sha256}"
                    else:
                        self._progress.note(f"Downloaded {label}: {part.size_bytes} bytes, SHA-256 matches")
                        return
                self._progress.note(
                    f"Downloaded {label} again: {problem} (attempt {attempt} of {DOWNLOAD_ATTEMPTS})"
                )
        raise RestoreError(f"{label} could not be downloaded intact: {problem}. Nothing was restored")


def _new_file(path: Path) -> BinaryIO:
    """A file that did not exist, created in its directory itself (never through a symbolic link), that
    only its owner may read: a part holds part of a whole database."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, 0o600)
    except OSError as error:
        raise RestoreError(
            f"cannot create {path.name} in the work directory {path.parent}: {error.strerror} (is something "
            "else writing there? Use a new --work-dir). Nothing was restored"
        ) from None
    return os.fdopen(descriptor, "w+b")


def _stream_sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    stream.flush()
    stream.seek(0)
    while block := stream.read(READ_BYTES):
        digest.update(block)
    return digest.hexdigest()


# Targets


def _psql_input(
    database: DatabaseConfig, backup: CheckedBackup, chunks: Iterator[bytes]
) -> contextlib.AbstractContextManager[Iterator[bytes]]:
    """The SQL psql runs for the backup's `chunks`: those, or the SQL pg_restore makes of a custom-format
    archive (closed when psql is done with it, so that a pg_restore left behind by a failed restore ends
    then)."""
    if backup.dump_format != "custom":
        return contextlib.nullcontext(chunks)
    return contextlib.closing(psql.archive_sql(database, chunks))


def _restore_in_one_transaction(
    database: DatabaseConfig,
    backup: CheckedBackup,
    progress: Progress,
    prologue: tuple[bytes, ...],
    dbname: str | None = None,
    stop: Stop | None = None,
) -> int:
    def run(chunks: Iterator[bytes]) -> int:
        with _psql_input(database, backup, chunks) as sql:
            return psql.restore(database, itertools.chain(prologue, sql), dbname=dbname, stop=stop)

    return read_sql(backup, progress, run)


def check_jobs(backup: CheckedBackup, jobs: int) -> None:
    """Raise UsageError if `jobs` asks for a parallel restore of a backup that cannot have one."""
    if jobs > 1 and backup.dump_format == GLOBALS_FORMAT:
        raise UsageError(
            f"--jobs applies to custom-format backups: {backup.name} is a server's globals, which psql runs "
            "on one connection. Leave --jobs out"
        )
    if jobs > 1 and backup.dump_format != "custom":
        raise UsageError(
            f'--jobs applies to custom-format backups (.dump.gz, .dump.zst; backup.format = "custom"): '
            f"{backup.name} is plain SQL, which psql restores on one connection. Leave --jobs out"
        )


def _restore_in_parallel(
    database: DatabaseConfig,
    backup: CheckedBackup,
    jobs: int,
    workdir: Path,
    progress: Progress,
    dbname: str | None = None,
    stop: Stop | None = None,
    before: Callable[[], object] = lambda: None,
) -> None:
    """pg_restore restores on several connections only from a file it can seek in: the archive is
    written decompressed into `workdir` (as large as the backup decompressed), readable by its owner
    only, and removed afterwards, whatever happens. `before` runs once the archive is whole and matched
    its hashes, and not at all if it could not be written: nothing is dropped for an archive never read."""
    archive = workdir / f"{stem(backup.name)}.dump"

    def write(chunks: Iterator[bytes]) -> None:
        with _new_file(archive) as sink:
            for chunk in chunks:
                sink.write(chunk)

    try:
        try:
            read_sql(backup, progress, write)
        except OSError as error:
            raise RestoreError(
                f"the archive could not be written into the work directory {workdir}: "
                f"{error.strerror or error} (it needs as much free space as the backup decompressed; "
                "choose another with --work-dir). Nothing was restored"
            ) from None
        before()
        psql.restore_archive_in_parallel(database, archive, jobs, dbname, stop)
    finally:
        archive.unlink(missing_ok=True)


def restore_into(
    database: DatabaseConfig,
    backup: CheckedBackup,
    clean: bool,
    progress: Progress,
    jobs: int = 1,
    workdir: Path | None = None,
) -> None:
    """Restore into the database in one transaction, committed only once the whole backup was read and
    matched its hashes; with `clean`, its schemas are dropped first in that same transaction, so that a
    failure leaves it exactly as it was. With `jobs` > 1 (a custom-format backup, its archive written in
    `workdir`), pg_restore restores on that many connections, each in a transaction of its own, after
    `clean` dropped the schemas in a step of its own (once the archive is whole): a failure then leaves
    part of the data. Raise UsageError for `jobs` with a plain backup."""
    check_jobs(backup, jobs)
    relations = psql.user_relations(database)
    if relations and not clean:
        raise RestoreError(
            f"the database {database.name} is not empty ({relations} tables, views, sequences or indexes): "
            "restoring on top would mix two databases. Restore into an empty database, or add --clean to "
            "drop its schemas first (in the same transaction as the restore)"
        )
    prologue = [psql.CLEAN_SQL.encode()] if clean else []
    progress.start(f"Restoring {backup.name} into {database.name}", backup.size_bytes)
    if jobs > 1:
        assert workdir is not None
        _restore_in_parallel(
            database, backup, jobs, workdir, progress, before=lambda: psql.restore(database, prologue)
        )
    else:
        _restore_in_one_transaction(database, backup, progress, tuple(prologue))
    progress.finish(f"Restored {backup.name} into {database.name}")


def restore_globals(
    database: DatabaseConfig, backup: CheckedBackup, progress: Progress, clean: bool = False, jobs: int = 1
) -> list[str]:
    """Restore a server's roles and tablespaces (pg_dumpall --globals-only) as pg_dumpall means it: run
    by psql statement by statement, with no transaction, going on past errors; for its `CREATE ROLE
    postgres` (and every role the server has already) fails on any server. Return notes on those errors
    (SQLSTATE 42710, duplicate_object: however many, in whatever language). Raise RestoreError naming
    the others. Raise UsageError for `clean` (the script drops nothing) or `jobs`."""
    if clean:
        raise UsageError(
            f"--clean applies to a database's backups: {backup.name} is a server's globals, which add and "
            "alter roles and drop none. Leave --clean out"
        )
    check_jobs(backup, jobs)
    progress.start(
        f"Restoring the globals {backup.name} into the server of {database.name}", backup.size_bytes
    )
    # Read whole and checked before psql runs any of it: no transaction would undo a role a damaged or
    # forged part altered. Globals are small (roles and tablespaces, not data).
    script = read_sql(backup, progress, b"".join)
    written, errors = psql.run_script(database, [script])
    if errors.failed_count:
        raise RestoreError(
            f"the globals {backup.name} were restored in part: psql reported {errors.failed_count} error(s) "
            "other than roles that exist already (the statements before and after them were run):\n"
            + "\n".join(errors.failed + _more(errors.failed_count, errors.failed))
        )
    progress.finish(f"Restored the globals {backup.name}: {written} bytes of SQL")
    return errors.existing + _more(errors.existing_count, errors.existing)


def _more(count: int, shown: list[str]) -> list[str]:
    """A line saying how many of `count` errors `shown` leaves out, if any."""
    return [f"(and {count - len(shown)} more)"] if count > len(shown) else []


def check_output(output: Path) -> None:
    """Raise UsageError if `output` exists (also as a symbolic link): write_sql would refuse it, and
    this says so before the backup is downloaded."""
    if os.path.lexists(output):
        raise _output_exists(output)


def _output_exists(output: Path) -> UsageError:
    return UsageError(
        f"{output} exists already: --output writes a new file and overwrites nothing (nor writes through a "
        "symbolic link). Remove it or give another name"
    )


def write_sql(backup: CheckedBackup, output: Path, progress: Progress) -> int:
    """Reassemble and decompress only: the SQL into a file, as `gunzip` would give it (for a custom-format
    backup, the archive, as `pg_restore` reads it). The file is a new one that only its owner may read
    (the backup decrypted is the whole database): raise UsageError if it exists. A file left incomplete
    by a failure is removed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(output, flags, 0o600)
    except FileExistsError:
        raise _output_exists(output) from None
    except OSError as error:
        raise UsageError(f"cannot create {output}: {error.strerror}") from None

    with os.fdopen(descriptor, "wb") as sink:

        def write(chunks: Iterator[bytes]) -> int:
            written = 0
            for chunk in chunks:
                sink.write(chunk)
                written += len(chunk)
            return written

        progress.start(f"Writing {output}", backup.size_bytes)
        try:
            written = read_sql(backup, progress, write)
        except BaseException as error:  # also an interruption: no partial plain text is left behind
            output.unlink()
            if isinstance(error, RestoreError):
                raise RestoreError(f"{error}; the incomplete {output} was removed") from None
            raise
    what = "a pg_restore archive" if backup.dump_format == "custom" else "SQL"
    progress.finish(f"Wrote {output}: {written} bytes of {what}")
    return written


@dataclass(frozen=True)
class VerifyReport:
    name: str
    tables: list[tuple[str, int]]

    @property
    def rows(self) -> int:
        return sum(count for _, count in self.tables)

    def summary(self) -> str:
        return f"verified: restored into a scratch database, {len(self.tables)} tables, {self.rows} rows"


def verify(
    database: DatabaseConfig,
    backup: CheckedBackup,
    progress: Progress,
    stop: Stop | None = None,
    on_left_behind: Callable[[str], None] | None = None,
    jobs: int = 1,
    workdir: Path | None = None,
) -> VerifyReport:
    """Restore into a scratch database created for the purpose (from database.maintenance_db) and
    dropped afterwards, whatever happens: also when `stop` ends the restore. A scratch database that
    cannot be dropped is told to `on_left_behind`, beside the verification's own outcome, never instead.
    With `jobs` > 1, as restore_into. Raise UsageError for a globals backup."""
    if backup.dump_format == GLOBALS_FORMAT:
        raise UsageError(
            f"{backup.name} holds a server's roles and tablespaces, which belong to the whole server: they "
            "are not verified in a scratch database. Restore them with tgbackupctl restore "
            f"{backup.name} --dbname postgres"
        )
    check_jobs(backup, jobs)
    scratch = f"tgbackupd_verify_{secrets.token_hex(4)}"
    try:
        # Within the `try`: a CREATE DATABASE that `stop` ended (psql was ended) may have been done by the
        # server all the same, and must be dropped as well.
        psql.query(database, f'CREATE DATABASE "{scratch}"', dbname=database.maintenance_db, stop=stop)
        progress.start(f"Verifying {backup.name} in scratch database {scratch}", backup.size_bytes)
        if jobs > 1:
            assert workdir is not None
            _restore_in_parallel(database, backup, jobs, workdir, progress, scratch, stop)
        else:
            _restore_in_one_transaction(database, backup, progress, (), scratch, stop)
        tables = psql.table_row_counts(database, scratch, stop=stop)
    finally:
        left_behind = _drop_scratch(database, scratch)
        if left_behind is not None and on_left_behind is not None:
            on_left_behind(left_behind)
    report = VerifyReport(backup.name, tables)
    progress.finish(f"{backup.name}: {report.summary()}")
    return report


def _drop_scratch(database: DatabaseConfig, scratch: str) -> str | None:
    """Drop the scratch database, ending first the sessions still in it (a restore whose psql was ended
    may leave its server session running): DROP … WITH (FORCE) would do both, but only from PostgreSQL
    13 on. Return what went wrong, if it could not be dropped."""
    maintenance = database.maintenance_db
    try:
        psql.query(
            database,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{scratch}' AND pid <> pg_backend_pid()",
            dbname=maintenance,
            timeout_s=_DROP_TIMEOUT_S,
        )
        psql.query(
            database, f'DROP DATABASE IF EXISTS "{scratch}"', dbname=maintenance, timeout_s=_DROP_TIMEOUT_S
        )
    except RestoreError as error:
        return (
            f"the scratch database {scratch} could not be dropped ({error}); drop it by hand: "
            f"psql -d {maintenance} -c 'DROP DATABASE \"{scratch}\"'"
        )
    return None
