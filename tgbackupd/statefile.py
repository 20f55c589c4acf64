"""What lies at daemon.state_file, and opening it: a state store to use as it is, the JSON file of
tgbackupd 0.1 to import (and keep as `*.migrated`), or something damaged to move aside
(`*.corrupt-<time>`) so that a new store can be rebuilt. The daemon and `tgbackupd --once` open it for
writing; tgbackupctl opens it only to read."""

import contextlib
import fcntl
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from .config import STATE_FILE_NAME
from .files import open_lock_file, sync_directory, wait_for_lock
from .legacy_state import LEGACY_STATE_FILE_NAME, LegacyState, looks_like_legacy, read_legacy
from .state import (
    DAMAGE_CODES,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    Damaged,
    Foreign,
    Opened,
    StateError,
    StateLocationError,
    StateStore,
    beside,
    check_location,
    configure_for_writing,
    connect,
    explain,
    migrate,
    recognize,
)

REBUILD_KEY = "rebuild"  # meta: why the store was rebuilt, until the backup directory has been read back
MIGRATED_KEY = "migrated_from"
_OPEN_WAIT_S = 60.0


def open_store(path: Path, now: datetime | None = None) -> Opened:
    """Open the state for the daemon or `tgbackupd --once`. Raise StateLocationError if it cannot be kept
    at `path`. A damaged file is moved aside and a new, empty store made (flagged to be rebuilt).

    Every process holds a shared lock on the store's lock file while it has the store open; creating,
    migrating or moving the file aside needs the lock alone, so no process ever writes into a file another
    has just moved away."""
    check_location(path)
    moment = now or datetime.now().astimezone()
    lock = beside(path, ".lock")
    try:
        descriptor = open_lock_file(lock)
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot open its lock file {lock} ({error.strerror or error})"
        ) from None
    try:
        if not wait_for_lock(descriptor, _OPEN_WAIT_S, shared=True):
            raise StateLocationError(
                f"daemon.state_file = {path}: another process has been migrating or rebuilding it for over "
                f"{_OPEN_WAIT_S:g} s; is a tgbackupd stuck? (fuser {lock})"
            )
        return _open_holding(path, descriptor, moment)
    except BaseException:
        os.close(descriptor)
        raise


def _open_holding(path: Path, descriptor: int, moment: datetime) -> Opened:
    why = "created" if not path.exists() else "migrated from tgbackupd 0.1"
    older = False
    try:
        if path.exists() and _legacy_source(path) is None:
            store = _open_writable(path, descriptor, migrating=False)
            _finish_migration(store)
            return Opened(store)
    except _OlderSchema as schema:
        why, older = f"migrated from schema {schema.version}", True
    except Damaged as damage:
        why = f"moved aside ({damage})"
    except Foreign as foreign:
        raise _not_ours(path, foreign) from None
    # The file must be made, migrated, imported or moved aside: only with no other process using it (an
    # older tgbackupd still running would fail at its next write). Let go of the shared lock first, so that
    # two processes starting at once do not wait for each other.
    fcntl.flock(descriptor, fcntl.LOCK_UN)
    if not wait_for_lock(descriptor, _OPEN_WAIT_S):
        if older:
            raise StateLocationError(
                f"daemon.state_file = {path} must be {why} to this version's, but another tgbackupd (an "
                f"older version?) has had the state file open for over {_OPEN_WAIT_S:g} s: restart it "
                "(systemctl restart tgbackupd), and this one runs after"
            )
        raise StateLocationError(
            f"daemon.state_file = {path} must be {why}, but another tgbackupd process has had it open for "
            f"over {_OPEN_WAIT_S:g} s: stop it (systemctl stop tgbackupd), then start again"
        )
    try:
        opened = _open_alone(path, descriptor, moment)
    except BaseException:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        raise
    fcntl.flock(descriptor, fcntl.LOCK_SH)  # a process that took it alone meanwhile is waited for: briefly
    return opened


def _open_alone(path: Path, descriptor: int, moment: datetime) -> Opened:
    """As open_store, holding the lock alone: look again (another process may have done it meanwhile)."""
    legacy = None
    try:
        legacy = _legacy_source(path)
        if legacy is not None:
            return _import_legacy(path, legacy, descriptor)
        if not path.exists():
            return Opened(_create(path, {}, descriptor), created=True)
        return Opened(_open_writable(path, descriptor))
    except Foreign as foreign:
        raise _not_ours(legacy or path, foreign) from None
    except Damaged as damage:
        moved = _move_aside(legacy or path, moment)
        store = _create(path, {REBUILD_KEY: str(damage)}, descriptor)
        return Opened(store, damaged=str(damage), moved_to=moved)


def _not_ours(path: Path, foreign: "Foreign") -> StateLocationError:
    return StateLocationError(
        f"daemon.state_file = {path} is not a state file of tgbackupd ({foreign}); it was left as it is: "
        "point daemon.state_file elsewhere, or move that file away if it is no longer needed"
    )


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
    except Foreign as foreign:
        raise StateError(f"the catalogue {path} (daemon.state_file) is not tgbackupd's: {foreign}") from None
    except (Damaged, sqlite3.DatabaseError) as damage:
        if isinstance(damage, sqlite3.Error) and not _damaged(damage):
            raise _unreadable(path, damage) from None
        raise StateError(
            f"the catalogue {path} (daemon.state_file) cannot be used: {damage}. tgbackupd moves it aside "
            "and rebuilds it at its next start (systemctl restart tgbackupd); meanwhile restore from a file, "
            "a folder of parts, or --from-telegram"
        ) from None
    except OSError as error:
        raise _unreadable(path, error) from None


def _damaged(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorname", "").startswith(DAMAGE_CODES)


def _unreadable(path: Path, error: OSError | sqlite3.Error) -> StateError:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return StateError(
        f"cannot read the catalogue {path} (daemon.state_file): {text}. Run this as root or as the user "
        "tgbackupd runs as, or pass --config with the daemon's configuration"
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot read it ({error.strerror or error}): fix its permissions"
        ) from None


def _head(path: Path) -> bytes | None:
    """The first bytes of the file, or None if there is none."""
    if path.exists() and not path.is_file():
        raise StateLocationError(f"daemon.state_file = {path} is not a regular file (a device, a pipe?)")
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


def _unusable(path: Path, error: sqlite3.Error) -> StateLocationError:
    return StateLocationError(f"daemon.state_file = {path} cannot be used: {explain(error)}")


class _OlderSchema(Exception):
    """The store is of an older schema: it is migrated only by a process that has it alone."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


def _open_writable(path: Path, held: int, migrating: bool = True) -> StateStore:
    """The store at `path`, checked and brought to the current schema (`migrating`: holding the lock
    alone). Raise Damaged if it is damaged or of a schema this version does not know, Foreign if it is
    someone else's database, _OlderSchema if it must be migrated and `migrating` is off."""
    connection = connect(str(path))
    try:
        version = recognize(connection)  # before anything is written: another's database is left as it is
        if version < SCHEMA_VERSION and not migrating:
            raise _OlderSchema(version)
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            raise Damaged(f"SQLite's integrity check failed: {'; '.join(problems)}")
        configure_for_writing(connection)
        migrate(connection)
    except sqlite3.Error as error:
        connection.close()
        if _damaged(error):
            raise Damaged(f"SQLite cannot read it: {error}") from None
        raise _unusable(path, error) from None
    except BaseException:
        connection.close()
        raise
    return StateStore(connection, path, held)


def _create(path: Path, meta: dict[str, str], held: int, legacy: LegacyState | None = None) -> StateStore:
    """Make a new store under a temporary name and rename it into place, so that `path` never holds a
    half-made one. SQLite's files of an earlier store left beside it are moved aside first: SQLite would
    otherwise read an old journal into the new store."""
    temporary = beside(path, ".new")
    for leftover in (temporary, temporary.with_name(temporary.name + "-journal")):
        leftover.unlink(missing_ok=True)
    orphans = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    if any(orphan.exists() for orphan in orphans):
        _move_aside(path, datetime.now().astimezone(), orphans_only=True)
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
    return _open_writable(path, held)


def _import_legacy(path: Path, legacy_path: Path, held: int) -> Opened:
    """Import 0.1's JSON file into a new store at `path` and keep the old file as `<name>.migrated`."""
    legacy = read_legacy(_read(legacy_path))
    migrated = _unused(legacy_path.with_name(legacy_path.name + ".migrated"))
    try:
        if legacy_path == path:  # the store takes the file's place: keep the old content first
            os.link(legacy_path, migrated)
        store = _create(path, {MIGRATED_KEY: str(legacy_path)}, held, legacy)
        if legacy_path != path:
            os.rename(legacy_path, migrated)
        sync_directory(path.parent)
    except OSError as error:
        raise StateLocationError(
            f"daemon.state_file = {path}: cannot migrate {legacy_path}: {error.strerror or error}"
        ) from None
    return Opened(store, migrated_from=legacy_path, skipped=legacy.skipped)


def _finish_migration(store: StateStore) -> None:
    """0.1's file beside the store after its migration: a migration cut between its two renames, or an old
    tgbackupd still running somewhere (cron?). It is not imported twice; it is kept, under a new name."""
    source = store.meta(MIGRATED_KEY)
    if source and Path(source) != store.path and Path(source).is_file():
        with contextlib.suppress(OSError):
            os.rename(source, _unused(Path(source + ".migrated")))


def _unused(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, … : the first that does not exist, so nothing kept is overwritten."""
    candidate, counter = path, 1
    while candidate.exists() or candidate.is_symlink():
        counter += 1
        candidate = path.with_name(f"{path.name}-{counter}")
    return candidate


def _move_aside(path: Path, moment: datetime, orphans_only: bool = False) -> Path:
    """Rename a damaged file (and SQLite's files beside it) to `<name>.corrupt-<time>`, never removing it."""
    target = _unused(path.with_name(f"{path.name}.corrupt-{moment:%Y%m%d-%H%M%S}"))
    try:
        if not orphans_only:
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
    try:
        os.setegid(owner.st_gid)
        os.seteuid(owner.st_uid)
        yield
    finally:
        os.seteuid(0)
        os.setegid(saved_gid)
