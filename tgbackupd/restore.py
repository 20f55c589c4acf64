"""Getting a database back: find a backup (a local file, a folder of parts, the catalogue, or Telegram
alone), check every part's and the whole's SHA-256 before anything touches a database, then stream
the SQL through gunzip into psql in one transaction, or into a scratch database to verify it. A
custom-format archive goes through pg_restore on its way to psql, or, on several connections, from a
file."""

import contextlib
import hashlib
import itertools
import os
import re
import secrets
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import zstandard

from . import chain, encryption, psql
from .config import DatabaseConfig
from .errors import ConfigError, RestoreError, TgbackupdError, UsageError
from .formats import SUFFIX_PATTERN, Decompressor, Format, by_magic, dump_format_by_name, stem
from .manifest import (
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
# Dropping a scratch database happens also while tgbackupd stops: it may not hold the stop up for long.
_DROP_TIMEOUT_S = 60
_WHOLE_FILE = re.compile(rf"^.+{SUFFIX_PATTERN}$")


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
    """A backup whose pieces are all present and, where their hashes are known, match them."""

    name: str
    pieces: tuple[Piece, ...]
    sha256: str | None
    recipients: tuple[str, ...] = ()  # the public keys the manifest says it is encrypted for
    identities: tuple[Path, ...] = ()  # the age identities it is decrypted with (see `unlock`)
    declared_format: str | None = None  # as its manifest says (GLOBALS_FORMAT: see restore_globals)

    @property
    def size_bytes(self) -> int:
        return sum(piece.size for piece in self.pieces)

    @property
    def dump_format(self) -> str:
        """pg_dump's format the backup holds: as its manifest says, else as its name says (a manifest that
        disagreed with its name was refused)."""
        return self.declared_format or dump_format_by_name(self.name)

    def head(self) -> bytes:
        """The first bytes of the backup (of its first pieces), as many as encryption.PROBE_BYTES."""
        head = b""
        for piece in self.pieces:
            for block in _read_piece(piece):
                head += block[: encryption.PROBE_BYTES - len(head)]
                if len(head) == encryption.PROBE_BYTES:
                    return head
        return head

    @property
    def encrypted(self) -> bool:
        return encryption.is_encrypted(self.name, self.head())


def _read_piece(piece: Piece) -> Iterator[bytes]:
    with piece.path.open("rb") as stream:
        stream.seek(piece.offset)
        remaining = piece.size
        while remaining:
            block = stream.read(min(READ_BYTES, remaining))
            if not block:
                raise RestoreError(f"{piece.label} ({piece.path}) ends early: the file is truncated")
            remaining -= len(block)
            yield block


def check(
    name: str,
    pieces: list[Piece],
    whole_sha256: str | None,
    progress: Progress,
    recipients: tuple[str, ...] = (),
    declared_format: str | None = None,
) -> CheckedBackup:
    """Hash every piece and the whole; raise RestoreError naming the first piece that does not match."""
    whole = hashlib.sha256()
    total = sum(piece.size for piece in pieces)
    done = 0
    progress.start(f"Checking {name}", total)
    for piece in pieces:
        part_hash = hashlib.sha256()
        for block in _read_piece(piece):
            part_hash.update(block)
            whole.update(block)
            done += len(block)
            progress.update(done)
        if piece.sha256 and part_hash.hexdigest() != piece.sha256:
            raise RestoreError(
                f"{piece.label} is corrupt: its SHA-256 is {part_hash.hexdigest()}, the manifest says "
                f"{piece.sha256}. Nothing was restored"
            )
    if whole_sha256 and whole.hexdigest() != whole_sha256:
        raise RestoreError(
            f"{name} as a whole does not match its SHA-256 ({whole.hexdigest()} instead of {whole_sha256}): "
            "a part is missing, extra or out of order. Nothing was restored"
        )
    progress.finish(
        f"Checked {name}: {len(pieces)} part(s), SHA-256 {'matches' if whole_sha256 else 'computed'}"
    )
    checked = CheckedBackup(name, tuple(pieces), whole_sha256, recipients, declared_format=declared_format)
    if whole_sha256 is None and not checked.encrypted:  # an encrypted one: in `unlock`, with its identity
        # Nothing to compare with: make sure the gzip stream is whole before a database sees any of it.
        for _ in sql_chunks(checked):
            pass
    return checked


def sql_chunks(backup: CheckedBackup, progress: Progress | None = None) -> Iterator[bytes]:
    """The backup's SQL, decompressed as it is read, in the format its first bytes say (gzip or zstd).
    A file compressed on several threads is several gzip members in a row (as gunzip reads them).
    Raise RestoreError if the stream is cut short."""
    compression: Format | None = None
    decompressor: Decompressor | None = None
    in_stream = False  # part of a member or frame was read, and its end was not
    done = 0
    for label, blocks in _compressed(backup):
        for block in blocks:
            done += len(block)
            data = block
            while data:
                if compression is None:
                    compression = by_magic(data)
                    if compression is None:
                        raise RestoreError(
                            f"{label} is neither gzip nor zstd data: is it a tgbackupd backup?"
                        )
                if decompressor is None:
                    decompressor = compression.decompressor()
                try:
                    yield from decompressor.feed(data)
                except (zlib.error, zstandard.ZstdError) as error:
                    raise RestoreError(f"{label} is not valid {compression.name} data ({error})") from None
                if decompressor.eof:
                    data, decompressor, in_stream = decompressor.unused_data, None, False
                else:
                    data, in_stream = b"", True
            if progress is not None:
                progress.update(done)
    if in_stream or done == 0:
        name = compression.name if compression else "compressed"
        raise RestoreError(
            f"{backup.name} ends in the middle of its {name} stream: the last part is missing or cut"
        )


def _compressed(backup: CheckedBackup) -> Iterator[tuple[str, Iterator[bytes]]]:
    """The backup's compressed bytes, piece by piece with each piece's label; when it is encrypted, one
    stream, decrypted as it is read, labelled with the backup's name."""
    if not backup.encrypted:
        yield from ((piece.label, _read_piece(piece)) for piece in backup.pieces)
        return
    stored = (block for piece in backup.pieces for block in _read_piece(piece))
    yield backup.name, encryption.decrypt(stored, backup.identities)


def unlock(backup: CheckedBackup, identities: tuple[Path, ...]) -> CheckedBackup:
    """Given a checked backup and the age identities a person gave, return it ready to be read. When it
    is encrypted, one of the identities must open it: found out now, from its first bytes, before a
    database sees any of it (encryption.check_identities says which of no identity, the wrong one or a
    damaged backup). One without a SHA-256 to compare with is read whole, as `check` does with others."""
    head = backup.head()
    if not encryption.is_encrypted(backup.name, head):
        return backup
    encryption.check_identities(head, len(head) == backup.size_bytes, identities, backup.recipients)
    unlocked = replace(backup, identities=identities)
    if backup.sha256 is None:
        for _ in sql_chunks(unlocked):
            pass
    return unlocked


# Sources


def _manifest_pieces(
    manifest: Manifest, locate: dict[int, Path], whole_file: Path | None = None
) -> list[Piece]:
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
        if path.stat().st_size != part.size_bytes:
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
        return check(path.name, [Piece(path, 0, path.stat().st_size, path.name, None)], None, progress)
    return check(
        manifest.name,
        _manifest_pieces(manifest, {}, whole_file=path),
        manifest.sha256,
        progress,
        manifest.recipients,
        manifest.dump_format,
    )


def from_parts(manifest: Manifest, located: dict[int, Path], progress: Progress) -> CheckedBackup:
    """A backup's parts, each a file of its own (a download, or the spool of a backup not kept here)."""
    pieces = _manifest_pieces(manifest, located)
    return check(manifest.name, pieces, manifest.sha256, progress, manifest.recipients, manifest.dump_format)


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
        return check(name, pieces, None, progress)
    if len(wholes) == 1 and not parts:
        return from_local_file(wholes[0], None, progress)
    raise RestoreError(
        f"{folder} does not hold exactly one backup (found {len(wholes)} backup file(s) and parts of "
        f"{len(parts)} backup(s)): point at one file instead"
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
        """Download every part not found `local`ly into `workdir`, each checked as it arrives (and
        downloaded again when it came truncated or damaged), then check the whole."""
        located = dict(local or {})
        for part in manifest.parts:
            if part.index not in located:
                located[part.index] = self._download_part(manifest, part, workdir)
        return from_parts(manifest, located, self._progress)

    def _download_part(self, manifest: Manifest, part: Part, workdir: Path) -> Path:
        count = len(manifest.parts)
        name = part_name(manifest.name, part.index, count)  # from the checked name, not a name from the chat
        label = f"part {part.index} of {count} ({name})"
        if not part.file_id:
            raise RestoreError(f"{label} was never delivered to Telegram (no file id in the manifest)")
        target = workdir / name
        problem = ""
        with _new_file(target) as sink:
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                try:
                    file = self._bot.get_file(part.file_id)
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
                self._progress.start(f"Downloading {label}", part.size_bytes)
                sink.seek(0)
                sink.truncate()  # an attempt that came short or damaged is replaced in the same file
                try:
                    received = self._bot.download(
                        file["file_path"], sink, self._progress.update, limit=part.size_bytes
                    )
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
                        self._progress.finish(f"Downloaded {label}: {part.size_bytes} bytes, SHA-256 matches")
                        return target
                self._progress.finish(
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


@contextlib.contextmanager
def _psql_input(
    database: DatabaseConfig, backup: CheckedBackup, progress: Progress
) -> Iterator[Iterator[bytes]]:
    """The SQL psql runs for the backup: its own, or the SQL pg_restore makes of a custom-format archive
    (closed when psql is done with it, so that a pg_restore left behind by a failed restore ends then)."""
    chunks = sql_chunks(backup, progress)
    if backup.dump_format != "custom":
        yield chunks
        return
    archive = psql.archive_sql(database, chunks)
    try:
        yield archive
    finally:
        archive.close()


def check_jobs(backup: CheckedBackup, jobs: int) -> None:
    """Raise UsageError if `jobs` asks for a parallel restore of a backup that cannot have one."""
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
) -> None:
    """pg_restore restores on several connections only from a file it can seek in: the archive is
    written decompressed into `workdir` (as large as the backup decompressed), readable by its owner
    only, and removed afterwards, whatever happens."""
    archive = workdir / f"{stem(backup.name)}.dump"
    try:
        with _new_file(archive) as sink:
            for chunk in sql_chunks(backup, progress):
                sink.write(chunk)
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
    """Restore into the database in one transaction; with `clean`, its schemas are dropped first in that
    same transaction, so that a failure leaves it exactly as it was. With `jobs` > 1 (a custom-format
    backup, its archive written in `workdir`), pg_restore restores on that many connections, each in a
    transaction of its own, after `clean` dropped the schemas in a step of its own: a failure then
    leaves part of the data. Raise UsageError for `jobs` with a plain backup."""
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
        if clean:
            psql.restore(database, prologue)
        _restore_in_parallel(database, backup, jobs, workdir, progress)
    else:
        with _psql_input(database, backup, progress) as sql:
            psql.restore(database, itertools.chain(prologue, sql))
    progress.finish(f"Restored {backup.name} into {database.name}")


def restore_globals(database: DatabaseConfig, backup: CheckedBackup, progress: Progress) -> list[str]:
    """Restore a server's roles and tablespaces (pg_dumpall --globals-only) as pg_dumpall means it: run
    by psql statement by statement, with no transaction, going on past errors; for its `CREATE ROLE
    postgres` (and every role the server has already) fails on any server. Return those errors, when each
    says that something already exists. Raise RestoreError naming the others."""
    progress.start(
        f"Restoring the globals {backup.name} into the server of {database.name}", backup.size_bytes
    )
    written, errors = psql.run_script(database, sql_chunks(backup, progress))
    failed = [error for error in errors if "already exists" not in error]
    if failed:
        raise RestoreError(
            f"the globals {backup.name} were restored in part: psql reported {len(failed)} error(s) other "
            "than roles that exist already (the statements before and after them were run):\n"
            + "\n".join(failed)
        )
    progress.finish(f"Restored the globals {backup.name}: {written} bytes of SQL")
    return errors


def write_sql(backup: CheckedBackup, output: Path, progress: Progress) -> int:
    """Reassemble and decompress only: the SQL into a file, as `gunzip` would give it (for a custom-format
    backup, the archive, as `pg_restore` reads it)."""
    written = 0
    progress.start(f"Writing {output}", backup.size_bytes)
    with output.open("wb") as sink:
        for chunk in sql_chunks(backup, progress):
            sink.write(chunk)
            written += len(chunk)
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
    With `jobs` > 1, as restore_into."""
    check_jobs(backup, jobs)
    scratch = f"tgbackupd_verify_{secrets.token_hex(4)}"
    psql.query(database, f'CREATE DATABASE "{scratch}"', dbname=database.maintenance_db, stop=stop)
    try:
        progress.start(f"Verifying {backup.name} in scratch database {scratch}", backup.size_bytes)
        if jobs > 1:
            assert workdir is not None
            _restore_in_parallel(database, backup, jobs, workdir, progress, scratch, stop)
        else:
            with _psql_input(database, backup, progress) as sql:
                psql.restore(database, sql, dbname=scratch, stop=stop)
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
