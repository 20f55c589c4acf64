"""What lies at daemon.state_file, and opening it: a state store to use as it is, the JSON file of
tgbackupd 0.1 to import (and keep as `*.migrated`), or something damaged to move aside
(`*.corrupt-<time>`) so that a new store can be rebuilt. The daemon and `tgbackupd --once` open it for
writing; tgbackupctl opens it only to read."""

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from .config import STATE_FILE_NAME
from .files import sync_directory, wait_for_lock
from .legacy_state import LEGACY_STATE_FILE_NAME, LegacyState, looks_like_legacy, read_legacy
from .state import (
    DAMAGE_CODES,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    Damaged,
    Opened,
    StateError,
    StateLocationError,
    StateStore,
    beside,
    check_location,
    configure_for_writing,
    connect,
    migrate,
)

REBUILD_KEY = "rebuild"  # meta: why the store was rebuilt, until the backup directory has been read back
MIGRATED_KEY = "migrated_from"
_OPEN_WAIT_S = 60.0


def open_store(path: Path, now: datetime | None = None) -> Opened:
    """Open the state for the daemon or `tgbackupd --once`. Raise StateLocationError if it cannot be kept
    at `path`. A damaged file is moved aside and a new, empty store made (flagged to be rebuilt)."""
    check_location(path)
    moment = now or datetime.now().astimezone()
    with _opening(path):
        legacy = None
        try:
            legacy = _legacy_source(path)
            if legacy is not None:
                return _import_legacy(path, legacy)
            store = _open_writable(path)
        except Damaged as damage:
            damaged = legacy or path
            moved = _move_aside(damaged, moment)
            store = _create(path, {REBUILD_KEY: str(damage)})
            return Opened(store, damaged=str(damage), moved_to=moved)
        _finish_migration(store)
        return Opened(store)


def open_reader(path: Path) -> StateStore:
    """Open the state only to read it (tgbackupctl), whatever version wrote it. Raise StateError saying
    what to do if it cannot be read."""
    try:
        legacy = _legacy_source(path)
        if legacy is not None:
            return _in_memory(read_legacy(_read(legacy)), path)
        if not path.exists():
            return _in_memory(None, path)
        with _as_owner_of(path):
            connection = connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)
            try:
                version = connection.execute("PRAGMA user_version").fetchone()[0]
            except BaseException:
                connection.close()
                raise
        if version == 0 or version > SCHEMA_VERSION:
            connection.close()
            if version:
                raise Damaged(f"it was written by a newer tgbackupd (schema {version})")
            return _in_memory(None, path)
        return StateStore(connection, path)
    except Damaged as damage:
        raise StateError(
            f"the catalogue {path} (daemon.state_file) cannot be used: {damage}. tgbackupd moves it aside "
            "and rebuilds it at its next start (systemctl restart tgbackupd); meanwhile restore from a file, "
            "a folder of parts, or --from-telegram"
        ) from None
    except (OSError, sqlite3.Error) as error:
        text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise StateError(
            f"cannot read the catalogue {path} (daemon.state_file): {text}. Run this as root or as the user "
            "tgbackupd runs as, or pass --config with the daemon's configuration"
        ) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot read it ({error.strerror or error}): fix its permissions"
        ) from None


def _head(path: Path) -> bytes | None:
    """The first bytes of the file, or None if there is none."""
    try:
        with path.open("rb") as stream:
            return stream.read(64)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot read it ({error.strerror or error}): fix its permissions"
        ) from None


def _legacy_source(path: Path) -> Path | None:
    """0.1's JSON file to import: the file at `path` itself, or, when `path` has the default name and does
    not exist yet, 0.1's default file beside it. Raise Damaged if `path` holds neither format."""
    head = _head(path)
    if head is None:
        sibling = path.with_name(LEGACY_STATE_FILE_NAME)
        return sibling if path.name == STATE_FILE_NAME and sibling.is_file() else None
    if head.startswith(SQLITE_HEADER):
        return None
    if not head:
        raise Damaged("the file is empty (it was truncated)")
    if looks_like_legacy(head):
        return path
    raise Damaged("it is neither an SQLite state file nor a state file of tgbackupd 0.1")


@contextlib.contextmanager
def _opening(path: Path) -> Iterator[None]:
    """One process at a time looks at the file, migrates it or moves it aside."""
    lock = beside(path, ".lock")
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot create its lock file {lock} ({error.strerror or error})"
        ) from None
    try:
        if not wait_for_lock(descriptor, _OPEN_WAIT_S):
            raise StateLocationError(
                f"daemon.state_file = {path}: another process has held {lock} for over "
                f"{_OPEN_WAIT_S:g} s; is a tgbackupd stuck? (fuser {lock})"
            )
        yield
    finally:
        os.close(descriptor)


def _unusable(path: Path, error: sqlite3.Error) -> StateLocationError:
    return StateLocationError(f"daemon.state_file = {path} cannot be used: {error}")


def _open_writable(path: Path) -> StateStore:
    """The store at `path`, checked and brought to the current schema; a new one if there is no file.
    Raise Damaged if it is damaged or of an unknown schema."""
    if not path.exists():
        return _create(path, {})
    connection = connect(str(path))
    try:
        configure_for_writing(connection)
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            raise Damaged(f"SQLite's integrity check failed: {'; '.join(problems)}")
        migrate(connection)
    except sqlite3.Error as error:
        connection.close()
        if getattr(error, "sqlite_errorname", "").startswith(DAMAGE_CODES):
            raise Damaged(f"SQLite cannot read it: {error}") from None
        raise _unusable(path, error) from None
    except BaseException:
        connection.close()
        raise
    return StateStore(connection, path)


def _create(path: Path, meta: dict[str, str], legacy: LegacyState | None = None) -> StateStore:
    """Make a new store under a temporary name and rename it into place, so that `path` never holds a
    half-made one."""
    temporary = beside(path, ".new")
    for leftover in (temporary, temporary.with_name(temporary.name + "-journal")):
        leftover.unlink(missing_ok=True)
    try:
        descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(descriptor)
        connection = connect(str(temporary))
        try:
            connection.execute("PRAGMA synchronous = FULL")
            migrate(connection)
            store = StateStore(connection, path)
            _fill(store, legacy)
            for key, value in meta.items():
                store.set_meta(key, value)
        finally:
            connection.close()
        os.rename(temporary, path)
        sync_directory(path.parent)
    except (OSError, sqlite3.Error, StateError) as error:
        temporary.unlink(missing_ok=True)
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot create the state file: "
            f"{getattr(error, 'strerror', None) or error}"
        ) from None
    return _open_writable(path)


def _import_legacy(path: Path, legacy_path: Path) -> Opened:
    """Import 0.1's JSON file into a new store at `path` and keep the old file as `<name>.migrated`."""
    legacy = read_legacy(_read(legacy_path))
    migrated = legacy_path.with_name(legacy_path.name + ".migrated")
    try:
        if legacy_path == path:  # the store takes the file's place: keep the old content first
            migrated.unlink(missing_ok=True)
            os.link(legacy_path, migrated)
        store = _create(path, {MIGRATED_KEY: str(legacy_path)}, legacy)
        if legacy_path != path:
            os.rename(legacy_path, migrated)
        sync_directory(path.parent)
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot migrate {legacy_path}: {error.strerror or error}"
        ) from None
    return Opened(store, migrated_from=legacy_path, skipped=legacy.skipped)


def _finish_migration(store: StateStore) -> None:
    """A migration that was cut between its two renames left 0.1's file beside the store: put it aside."""
    source = store.meta(MIGRATED_KEY)
    if source and Path(source) != store.path and Path(source).is_file():
        with contextlib.suppress(OSError):
            os.rename(source, source + ".migrated")


def _move_aside(path: Path, moment: datetime) -> Path:
    """Rename a damaged file (and SQLite's files beside it) to `<name>.corrupt-<time>`, never removing it."""
    target = path.with_name(f"{path.name}.corrupt-{moment:%Y%m%d-%H%M%S}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.name}.corrupt-{moment:%Y%m%d-%H%M%S}-{counter}")
    try:
        os.rename(path, target)
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                os.rename(companion, target.with_name(target.name + suffix))
        sync_directory(path.parent)
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path} is damaged and cannot be moved aside ({error.strerror or error}): "
            "move it away yourself; tgbackupd then rebuilds the catalogue"
        ) from None
    return target


def _in_memory(legacy: LegacyState | None, path: Path) -> StateStore:
    """A store in memory, for reading what a file that is not a store holds (or nothing)."""
    connection = connect(":memory:")
    migrate(connection)
    store = StateStore(connection, path)
    _fill(store, legacy)
    return store


def _fill(store: StateStore, legacy: LegacyState | None) -> None:
    """Put what 0.1's file held into a new store."""
    if legacy is not None:
        store.add_many(legacy.entries)
        if legacy.last_result is not None:
            store.record_result(legacy.last_result)


@contextlib.contextmanager
def _as_owner_of(path: Path) -> Iterator[None]:
    """Run as the file's owner while SQLite opens it: a reader running as root would otherwise create the
    journal files beside it as root, and the daemon could no longer write its own state."""
    owner = path.stat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        yield
        return
    saved_gid = os.getegid()
    os.setegid(owner.st_gid)
    os.seteuid(owner.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(saved_gid)
