"""The state store: the catalogue of backups (each with its parts and where its manifest is in the chat),
the outbox of backups waiting for Telegram, and the last result of each database, in one SQLite file
(`daemon.state_file`).

SQLite, so that a change costs one small transaction whatever the history holds (recording a sent part
updates one row), the daemon, `tgbackupd --once` and `tgbackupctl` share the file safely (WAL, a busy
timeout), and a failure to read or write is an error to report, never an empty catalogue. The store knows
rows; where files lie is the backup directory's business (storage.py).
"""

import contextlib
import json
import os
import pwd
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import TgbackupdError
from .files import open_lock_file, wait_for_lock
from .formats import SUFFIX_PATTERN, stem
from .manifest import Manifest, ManifestRef, Part, series_of
from .states import DeliveryState

SCHEMA_VERSION = 4
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 15.0
_STAMP = re.compile(rf"_backup_(?P<stamp>[0-9]{{8}}_[0-9]{{6}}){SUFFIX_PATTERN}$")

# MIGRATIONS[n] brings a store at schema version n to n + 1; a new file starts at 0.
MIGRATIONS = (
    """
    CREATE TABLE backups (
        name TEXT PRIMARY KEY,
        stem TEXT NOT NULL UNIQUE,
        stamp TEXT NOT NULL,
        database TEXT NOT NULL,
        host TEXT NOT NULL,
        server TEXT NOT NULL,
        created_at TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        dump_format TEXT NOT NULL,
        compression TEXT NOT NULL,
        verified INTEGER,
        part_count INTEGER NOT NULL,
        previous_name TEXT,
        previous_message_id INTEGER,
        previous_file_id TEXT,
        facts TEXT,
        sql_bytes INTEGER,
        warning TEXT,
        spooled INTEGER NOT NULL,
        captions_to_complete TEXT NOT NULL,
        delivery TEXT NOT NULL,
        manifest_message_id INTEGER,
        manifest_file_id TEXT,
        pin_error TEXT,
        lost_reason TEXT
    );
    CREATE INDEX backups_by_stamp ON backups (stamp, name);
    CREATE TABLE parts (
        backup TEXT NOT NULL REFERENCES backups (name) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        file_name TEXT NOT NULL,
        offset INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        message_id INTEGER,
        file_id TEXT,
        PRIMARY KEY (backup, idx)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        backup TEXT PRIMARY KEY REFERENCES backups (name) ON DELETE CASCADE,
        attempts INTEGER NOT NULL,
        next_attempt_at TEXT,
        last_error TEXT,
        unconfirmed INTEGER NOT NULL
    );
    CREATE TABLE results (database TEXT PRIMARY KEY, result TEXT NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # The public keys an encrypted backup was encrypted for (a JSON list; NULL: not encrypted).
    "ALTER TABLE backups ADD COLUMN recipients TEXT",
    # The last results by series (the prefix of the file names), not by database name: two entries for
    # databases of one name on two servers kept one result between them. Rows written before keep the
    # database's name, which is its prefix unless an entry set another.
    "ALTER TABLE results RENAME COLUMN database TO series",
    # When retention (telegram.delete_old) removed a delivered backup's parts from the chat; its manifest
    # stays there, a link of the chain to the older backups (NULL: its parts are in the chat). And the chat
    # a backup was delivered to (NULL: delivered before it was recorded): retention deletes only from it.
    "ALTER TABLE backups ADD COLUMN parts_deleted_at TEXT; ALTER TABLE backups ADD COLUMN chat_id TEXT",
)
_TABLES = {"backups", "parts", "outbox", "results", "meta"}

# Meta: after a rebuild, "history" walks the whole chain in the chat back into the catalogue; "confirm"
# only looks there for backups found on disk, to learn whether they reached the chat already.
CHAIN_KEY = "chain_check"
CHAIN_HISTORY = "history"
CHAIN_CONFIRM = "confirm"

# What each SQLite failure means for the administrator.
_ADVICE = {
    "SQLITE_FULL": "the disk holding it is full: free space there",
    "SQLITE_READONLY": "it cannot be written (a read-only file system, or its permissions changed)",
    "SQLITE_IOERR_SHM": "there is no room for its shared-memory file (-shm): free space beside it",
    "SQLITE_IOERR": "the disk reported an I/O error: check it (dmesg, smartctl)",
    "SQLITE_CANTOPEN": "it cannot be opened: was its directory removed or unmounted?",
    "SQLITE_CORRUPT": "the file is damaged: restart tgbackupd, which moves it aside and rebuilds it",
    "SQLITE_NOTADB": "it is not a state file: restart tgbackupd, which moves it aside and rebuilds it",
    "SQLITE_BUSY": f"another process kept it locked for over {BUSY_TIMEOUT_S:g} s",
}
DAMAGE_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class StateError(TgbackupdError):
    """The state file could not be read or written; the message names daemon.state_file and the cause."""

    exit_code = os.EX_CANTCREAT


class StateLocationError(StateError):
    """`daemon.state_file` points where no state can be kept: tgbackupd refuses to start."""


class NotTheOwner(StateLocationError):
    """The state belongs to another user than the one running this: right for the service's own user
    when root only looks at it (`--check-config`), fatal for a process that would write it."""


class Damaged(Exception):
    """The file at daemon.state_file is not a state store this version can use (its reason)."""


class Foreign(Exception):
    """The file at daemon.state_file is someone else's (another program's database or JSON): it is left
    alone, never moved aside nor converted."""


@dataclass(frozen=True)
class Entry:
    """One backup in the catalogue, as it is recorded."""

    manifest: Manifest
    delivery: DeliveryState
    facts: dict[str, Any] | None = None  # what its captions say (messages.BackupFacts)
    sql_bytes: int | None = None
    warning: str | None = None
    spooled: bool = False  # not kept here: its parts wait in the spool until sent
    captions_to_complete: frozenset[int] = frozenset()
    manifest_ref: ManifestRef | None = None
    pin_error: str | None = None
    lost_reason: str | None = None
    attempts: int = 0
    next_attempt_at: str | None = None
    last_error: str | None = None
    unconfirmed: bool = False  # found on disk after a rebuild: look for it in the chat before sending it


@dataclass(frozen=True)
class Waiting:
    """A backup in the outbox, oldest first."""

    name: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    unconfirmed: bool


@dataclass(frozen=True)
class Opened:
    """A store, and what opening it took: a migration from 0.1's JSON file, or a damaged file moved aside."""

    store: "StateStore"
    migrated_from: Path | None = None
    damaged: str | None = None  # why the file was moved aside
    moved_to: Path | None = None
    skipped: list[str] = field(default_factory=list)  # entries of the old file that could not be read
    created: bool = False  # there was no file: a first start, or a state file lost


def backup_stamp(name: str) -> str:
    """The `YYYYMMDD_HHMMSS` of a backup's name, which orders backups by age."""
    match = _STAMP.search(name)
    return match["stamp"] if match else ""


def explain(error: sqlite3.Error) -> str:
    """SQLite's words for a failure, and what they mean for the administrator."""
    name = getattr(error, "sqlite_errorname", "")
    advice = next((text for code, text in _ADVICE.items() if name.startswith(code)), "")
    return f"{error}; {advice}" if advice else str(error)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def beside(path: Path, suffix: str) -> Path:
    """A file of the store's own next to it, hidden like the store: `.tgbackupd-state.db.lock`."""
    return path.with_name(f"{'' if path.name.startswith('.') else '.'}{path.name}{suffix}")


def _sidecars(path: Path) -> tuple[Path, ...]:
    """The files SQLite and this module keep beside the store."""
    return (
        path.with_name(path.name + "-wal"),
        path.with_name(path.name + "-shm"),
        beside(path, ".lock"),
        beside(path, ".delivery-lock"),
    )


def check_location(path: Path, create: bool = True) -> None:
    """Raise StateLocationError, naming daemon.state_file and what to do, if tgbackupd (this process's
    user) cannot keep its state at `path`. With `create`, a missing parent directory is made."""
    me = _user(os.geteuid())
    where = f"daemon.state_file = {path}"
    if path.is_dir():
        raise StateLocationError(
            f"{where} is a directory: point daemon.state_file at a file in it (for example "
            f"{path / '.tgbackupd-state.db'}), or remove the directory"
        )
    if path.exists() and not path.is_file():
        raise StateLocationError(
            f"{where} is not a regular file (a device, a pipe or a socket): point daemon.state_file at a "
            "file tgbackupd may create"
        )
    parent = path.parent
    if not parent.is_dir():
        if not create:  # only say whether it could be made
            existing = next(p for p in (parent, *parent.parents) if p.exists() or p == Path("/"))
            if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
                return
            raise StateLocationError(
                f"{where}: its directory {parent} does not exist and cannot be created ({existing} is not "
                f"a directory {me} may write in): create it, writable by {me}, or set daemon.state_file "
                "elsewhere"
            )
        try:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise StateLocationError(
                f"{where}: its directory {parent} does not exist and cannot be created ({_describe(error)}): "
                f"create it, writable by {me}, or set daemon.state_file elsewhere"
            ) from None
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise StateLocationError(
            f"{where} is on a read-only file system: set daemon.state_file to a writable place (under the "
            "packaged unit only /var/lib/tgbackupd is writable; add ReadWritePaths= in a drop-in for another)"
        )
    for candidate in (path, *_sidecars(path)):
        try:
            owner = candidate.lstat().st_uid
        except FileNotFoundError:
            continue
        if candidate.is_symlink() or not candidate.is_file():
            raise StateLocationError(
                f"{where}: {candidate} is a symbolic link or not a regular file; remove it, or point "
                "daemon.state_file at what it should be"
            )
        if owner != os.geteuid():
            raise NotTheOwner(
                f"{where}: {candidate} belongs to {_user(owner)}, not to {me} who runs this: run "
                f"tgbackupd as "
                f"{_user(owner)} (sudo -u {_user(owner)} …), or give the file to {me} (chown)"
            )
        if not os.access(candidate, os.R_OK | os.W_OK):
            raise StateLocationError(
                f"{where}: {me} may not read and write {candidate}: chmod u+rw it, or set daemon.state_file "
                "elsewhere"
            )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StateLocationError(
            f"{where}: {me} may not create files in {parent} (SQLite keeps its journal beside the file): "
            f"make the directory writable by {me}, or set daemon.state_file elsewhere"
        )


def connect(target: str, uri: bool = False) -> sqlite3.Connection:
    connection = sqlite3.connect(
        target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=uri
    )
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def configure_for_writing(connection: sqlite3.Connection) -> None:
    """WAL, so that readers and the other process do not wait for a writer; FULL, so that a committed
    "sent" or "pending" survives a power loss (in WAL mode NORMAL may lose the last commits)."""
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")


def recognize(connection: sqlite3.Connection) -> int:
    """The schema version of the store, read without writing anything. Raise Damaged for a schema this
    version does not know, Foreign for a database that is not a store of tgbackupd's."""
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise Damaged(
            f"it was written by a newer tgbackupd (schema {version}; this one knows up to {SCHEMA_VERSION})"
        )
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == 0 and tables:
        raise Foreign(f"an SQLite database with the tables {', '.join(sorted(tables))}")
    return version


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the store to SCHEMA_VERSION, one version per transaction. Raise Damaged or Foreign as
    recognize does."""
    version = recognize(connection)
    for step in range(version, SCHEMA_VERSION):
        try:
            connection.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;"
            )
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= _TABLES:
        raise Damaged(f"tables {sorted(_TABLES - tables)} are missing")


class StateStore:
    """The catalogue, the outbox and the last results. Every change is one transaction; every failure is a
    StateError naming daemon.state_file, never a silent empty answer."""

    def __init__(self, connection: sqlite3.Connection, path: Path, held: int | None = None) -> None:
        self._connection = connection
        self.path = path
        self._lock = threading.RLock()
        self._held = held  # a shared lock on the store's lock file: nobody moves it aside while it is used
        self._identity = _identity(path) if held is not None else None

    def close(self) -> None:
        with self._lock:
            self._connection.close()
            if self._held is not None:
                os.close(self._held)
                self._held = None

    def _still_there(self) -> None:
        """The file this process has open must still be the one at daemon.state_file: a file system
        unmounted under it, or a file moved away, would take every later change with it unseen."""
        if self._identity is not None and _identity(self.path) != self._identity:
            raise StateError(
                f"the state file {self.path} (daemon.state_file) was moved, replaced or unmounted while "
                "tgbackupd had it open; nothing more is recorded until tgbackupd is restarted (systemctl "
                "restart tgbackupd), which opens what is there now"
            )

    # Transactions and errors

    @contextlib.contextmanager
    def _failing_as(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise StateError(
                f"cannot {action} in the state file {self.path} (daemon.state_file): {explain(error)}"
            ) from None

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (IMMEDIATE) so that two processes never deadlock."""
        with self._lock, self._failing_as(action):
            self._still_there()
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        """A consistent view across several statements."""
        with self._lock, self._failing_as(action):
            self._still_there()
            connection = self._connection
            connection.execute("BEGIN")
            try:
                yield connection
            finally:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("COMMIT")

    # Writing

    def add(self, entry: Entry) -> None:
        """Record a backup with its parts, and put it in the outbox if it is pending."""
        with self._writing(f"record the backup {entry.manifest.name}") as connection:
            _insert(connection, entry)

    def add_many(self, entries: list[Entry]) -> None:
        """Record backups not known yet (a migration, a rebuild), in one transaction."""
        with self._writing("record the rebuilt catalogue") as connection:
            for entry in entries:
                if not connection.execute(
                    "SELECT 1 FROM backups WHERE name = ? OR stem = ?",
                    (entry.manifest.name, stem(entry.manifest.name)),
                ).fetchone():
                    _insert(connection, entry)

    def record_part_sent(self, name: str, index: int, message_id: int, file_id: str | None) -> None:
        with self._writing(f"record part {index} of {name} as sent") as connection:
            connection.execute(
                "UPDATE parts SET message_id = ?, file_id = ? WHERE backup = ? AND idx = ?",
                (message_id, file_id, name, index),
            )

    def record_delivered(
        self,
        manifest: Manifest,
        reference: ManifestRef,
        pin_error: str | None,
        attempts: int | None = None,
        *,
        chat_id: str | None = None,
    ) -> None:
        """The backup's parts and manifest are in the chat `chat_id`, as `manifest` says (each part's
        message). When the last result of its database is this backup's, waiting for delivery, it now
        says sent."""
        with self._writing(f"record {manifest.name} as delivered") as connection:
            previous = manifest.previous
            connection.execute(
                "UPDATE backups SET delivery = ?, manifest_message_id = ?, manifest_file_id = ?, "
                "pin_error = ?, chat_id = ?, "
                "previous_name = ?, previous_message_id = ?, previous_file_id = ?, lost_reason = NULL "
                "WHERE name = ?",
                (
                    DeliveryState.SENT,
                    reference.message_id,
                    reference.file_id,
                    pin_error,
                    chat_id,
                    previous.name if previous else None,
                    previous.message_id if previous else None,
                    previous.file_id if previous else None,
                    manifest.name,
                ),
            )
            connection.executemany(
                "UPDATE parts SET message_id = ?, file_id = ? WHERE backup = ? AND idx = ?",
                [(part.message_id, part.file_id, manifest.name, part.index) for part in manifest.parts],
            )
            connection.execute("DELETE FROM outbox WHERE backup = ?", (manifest.name,))
            row = connection.execute(
                "SELECT result FROM results WHERE series = ?", (series_of(manifest.name),)
            ).fetchone()
            result = json.loads(row[0]) if row else None
            if (
                isinstance(result, dict)
                and result.get("file") == manifest.name
                and result.get("delivery") == DeliveryState.PENDING
            ):
                connection.execute(
                    "UPDATE results SET result = ? WHERE series = ?",
                    (json.dumps(_delivered_result(result, reference, pin_error)), series_of(manifest.name)),
                )

    def record_verified(self, name: str, verified: bool, facts: dict[str, Any]) -> None:
        """What the verification of a backup waiting in the outbox came to, and its captions' facts now."""
        with self._writing(f"record the verification of {name}") as connection:
            connection.execute(
                "UPDATE backups SET verified = ?, facts = ? WHERE name = ?",
                (int(verified), json.dumps(facts), name),
            )

    def record_postponed(self, name: str, attempts: int, next_attempt_at: str, error: str) -> None:
        with self._writing(f"record that {name} waits for another attempt") as connection:
            connection.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE backup = ?",
                (attempts, next_attempt_at, error, name),
            )

    def record_lost(self, name: str, why: str) -> None:
        with self._writing(f"record {name} as lost") as connection:
            connection.execute(
                "UPDATE backups SET delivery = ?, lost_reason = ? WHERE name = ?",
                (DeliveryState.LOST, why, name),
            )
            connection.execute("DELETE FROM outbox WHERE backup = ?", (name,))

    def record_confirmed(self, name: str) -> None:
        """A backup found on disk after a rebuild is not in the chat: send it as any other."""
        with self._writing(f"record {name} as not in the chat") as connection:
            connection.execute("UPDATE outbox SET unconfirmed = 0 WHERE backup = ?", (name,))

    def record_result(self, result: dict[str, Any], series: str | None = None) -> None:
        """The last result of a series' backup (what status and catch-up read): `series` is the prefix of
        its file names; without it, that of the result's file, else the database's name (0.1's)."""
        file = result.get("file")
        key = series or (series_of(file) if isinstance(file, str) else str(result.get("database") or ""))
        with self._writing("record the backup's result") as connection:
            connection.execute(
                "INSERT OR REPLACE INTO results (series, result) VALUES (?, ?)", (key, json.dumps(result))
            )

    def record_parts_deleted(self, name: str, when: str) -> None:
        """Retention removed the parts of a delivered backup from the chat (its manifest stays there)."""
        with self._writing(f"record that the parts of {name} were deleted from the chat") as connection:
            connection.execute("UPDATE backups SET parts_deleted_at = ? WHERE name = ?", (when, name))

    def set_meta(self, key: str, value: str | None) -> None:
        with self._writing(f"record {key}") as connection:
            if value is None:
                connection.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add_to_count(self, key: str) -> None:
        """Add one to the count kept under `key`, in one statement: two processes counting at once (the
        daemon and `tgbackupd --once`) both count."""
        with self._writing(f"count {key}") as connection:
            connection.execute(
                "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) "
                "DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                (key,),
            )

    def probe(self) -> None:
        """Write once, as a backup would: raise StateError if the file cannot take a change now."""
        self.set_meta("probed_at", datetime.now().astimezone().isoformat(timespec="seconds"))

    # Reading

    def meta(self, key: str) -> str | None:
        with self._reading(f"read {key}") as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def last_result(self) -> dict[str, Any] | None:
        with self._reading("read the last backup's result") as connection:
            row = connection.execute("SELECT result FROM results ORDER BY rowid DESC LIMIT 1").fetchone()
        if row is None:
            return None
        result = json.loads(row[0])
        return result if isinstance(result, dict) else None

    def results(self) -> list[dict[str, Any]]:
        """The last result of each database (of each series of backups), the most recent last."""
        return list(self.results_by_series().values())

    def results_by_series(self) -> dict[str, dict[str, Any]]:
        """The last result of each series of backups by its prefix (by its database's name when written
        before schema 3), the most recent last."""
        with self._reading("read the backups' results") as connection:
            rows = connection.execute("SELECT series, result FROM results ORDER BY rowid").fetchall()
        documents = ((row[0], json.loads(row[1])) for row in rows)
        return {series: document for series, document in documents if isinstance(document, dict)}

    def waiting(self) -> list[Waiting]:
        """The outbox, oldest backup first: the order they must reach the chat in."""
        with self._reading("read the outbox") as connection:
            rows = connection.execute(
                # From the outbox (a few rows), not from the catalogue (every backup ever made).
                "SELECT outbox.*, backups.stamp FROM outbox "
                "CROSS JOIN backups ON backups.name = outbox.backup ORDER BY backups.stamp, backups.name"
            ).fetchall()
        return [
            Waiting(
                name=row["backup"],
                attempts=row["attempts"],
                next_attempt_at=datetime.fromisoformat(row["next_attempt_at"])
                if row["next_attempt_at"]
                else None,
                last_error=row["last_error"],
                unconfirmed=bool(row["unconfirmed"]),
            )
            for row in rows
        ]

    def undelivered(self) -> set[str]:
        """Backups in the outbox: nothing of theirs may be removed."""
        return {waiting.name for waiting in self.waiting()}

    def entry(self, name: str) -> Entry | None:
        with self._reading(f"read {name}") as connection:
            row = connection.execute(
                "SELECT backups.*, outbox.attempts, outbox.next_attempt_at, outbox.last_error, "
                "outbox.unconfirmed "
                "FROM backups LEFT JOIN outbox ON outbox.backup = backups.name WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                return None
            parts = connection.execute(
                "SELECT * FROM parts WHERE backup = ? ORDER BY idx", (name,)
            ).fetchall()
        return _entry(row, parts)

    def find(self, which: str, database: str | None = None) -> Entry | None:
        """The backup called `which` (or its name without the format's suffix), or the newest for `latest`
        (of `database`, by its name or prefix, when given)."""
        with self._reading(f"look up {which}") as connection:
            if which == "latest" and database is not None:
                rows = connection.execute(
                    # Prefixes are letters, digits, '_', '.' and '-': nothing GLOB would read as a pattern.
                    # It also finds another series that begins so (`shop_backup_old_backup_…` for
                    # `shop`): the series is compared exactly, newest first, stopping at the first.
                    "SELECT name, database FROM backups WHERE database = ? OR name GLOB ? "
                    "ORDER BY stamp DESC, name DESC",
                    (database, f"{database}_backup_*"),
                )
                row = next((row for row in rows if database in (row[1], series_of(row[0]))), None)
            elif which == "latest":
                row = connection.execute(
                    "SELECT name FROM backups ORDER BY stamp DESC, name DESC LIMIT 1"
                ).fetchone()
            else:
                row = connection.execute(
                    "SELECT name FROM backups WHERE name = ? OR stem = ?", (which, which)
                ).fetchone()
        return self.entry(row[0]) if row else None

    def databases(self) -> list[str]:
        """The databases (series of backups) the catalogue holds backups of."""
        with self._reading("read the catalogue") as connection:
            return [row[0] for row in connection.execute("SELECT DISTINCT database FROM backups ORDER BY 1")]

    def stem_taken(self, name: str) -> bool:
        """Whether a backup of this name, in any format, is known (the manifest file is named by the stem)."""
        with self._reading("look up a backup name") as connection:
            return (
                connection.execute("SELECT 1 FROM backups WHERE stem = ?", (stem(name),)).fetchone()
                is not None
            )

    def second_taken(self, name: str) -> bool:
        """Whether a backup of any database is known made in the second this name gives. Several
        databases share the catalogue, the outbox and the chain, all ordered by (time, name): one
        backup a second keeps that order the order in which they were made, so that each manifest's
        `previous` is the one sent before it (by name alone, `srv_…` made before `shop_…` in the same
        second would come after it, and drop it out of the chain)."""
        with self._reading("look up a backup name") as connection:
            return (
                connection.execute("SELECT 1 FROM backups WHERE stamp = ?", (backup_stamp(name),)).fetchone()
                is not None
            )

    def known(self) -> set[str]:
        with self._reading("read the catalogue") as connection:
            return {row[0] for row in connection.execute("SELECT name FROM backups")}

    def latest_manifest_ref(self, before: str | None = None) -> ManifestRef | None:
        """Where the newest delivered manifest is in the chat (older than the backup `before`, when given),
        for the next manifest's `previous`."""
        query = (
            "SELECT name, manifest_message_id, manifest_file_id FROM backups "
            "WHERE manifest_file_id IS NOT NULL"
        )
        arguments: tuple[str, ...] = ()
        if before is not None:
            query += " AND (stamp, name) < (?, ?)"
            arguments = (backup_stamp(before), before)
        with self._reading("read the newest delivered backup") as connection:
            row = connection.execute(query + " ORDER BY stamp DESC, name DESC LIMIT 1", arguments).fetchone()
        return ManifestRef(row[0], row[1], row[2]) if row else None

    def newer_delivered(self, name: str) -> bool:
        """Whether a backup newer than `name` is in the chat already (then `name` must not be pinned)."""
        with self._reading("read the newest delivered backup") as connection:
            return (
                connection.execute(
                    "SELECT 1 FROM backups WHERE delivery = ? AND (stamp, name) > (?, ?) LIMIT 1",
                    (DeliveryState.SENT, backup_stamp(name), name),
                ).fetchone()
                is not None
            )

    def previous_sql_bytes(self, database: str) -> tuple[str, int] | None:
        """The newest backup of the database with SQL in it: (its name, its bytes of SQL)."""
        with self._reading("read the previous backup") as connection:
            row = connection.execute(
                "SELECT name, sql_bytes FROM backups WHERE database = ? AND sql_bytes > 0 "
                "ORDER BY stamp DESC, name DESC LIMIT 1",
                (database,),
            ).fetchone()
        return (row[0], row[1]) if row else None

    def newest_size_bytes(self, database: str) -> int | None:
        """The size of the newest backup of the database (compressed, as it is sent), if there is one."""
        with self._reading("read the previous backup") as connection:
            row = connection.execute(
                "SELECT size_bytes FROM backups WHERE database = ? ORDER BY stamp DESC, name DESC LIMIT 1",
                (database,),
            ).fetchone()
        return row[0] if row else None

    def listing(self) -> list[dict[str, Any]]:
        """Every backup in the catalogue, newest first, as `tgbackupctl list` shows it."""
        with self._reading("read the catalogue") as connection:
            rows = connection.execute(
                "SELECT backups.*, outbox.last_error FROM backups "
                "LEFT JOIN outbox ON outbox.backup = backups.name ORDER BY stamp DESC, name DESC"
            ).fetchall()
        columns = set(rows[0].keys()) if rows else set()
        return [
            {
                "name": row["name"],
                "database": row["database"],
                "created_at": row["created_at"],
                "size_bytes": row["size_bytes"],
                "sha256": row["sha256"],
                "parts": row["part_count"],
                "verified": None if row["verified"] is None else bool(row["verified"]),
                "delivery": row["delivery"],
                "manifest_message_id": row["manifest_message_id"],
                "spooled": bool(row["spooled"]),
                "warning": row["warning"],
                "last_error": row["last_error"]
                if row["delivery"] == DeliveryState.PENDING
                else row["lost_reason"],
                # Columns of schema 4: a reader of an older store (tgbackupctl) finds none.
                "parts_deleted_at": row["parts_deleted_at"] if "parts_deleted_at" in columns else None,
                "chat_id": row["chat_id"] if "chat_id" in columns else None,
            }
            for row in rows
        ]

    # Delivery across processes

    @contextlib.contextmanager
    def delivery_lock(self, wait_s: float, cancel: threading.Event) -> Iterator[str | None]:
        """Hold the right to deliver, shared with every process using this store, so that the daemon and a
        `tgbackupd --once` never send the same backup twice nor fork the chain. Yield None once held, or,
        after `wait_s` (or when `cancel` is set), who holds it."""
        lock_path = beside(self.path, ".delivery-lock")
        try:
            descriptor = open_lock_file(lock_path)
        except OSError as error:
            raise StateError(
                f"cannot create the delivery lock {lock_path} beside daemon.state_file: {_describe(error)}"
            ) from None
        try:
            if not wait_for_lock(descriptor, wait_s, cancel):
                holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip()
                yield f"another tgbackupd process ({holder or 'pid unknown'}) is delivering backups"
                return
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()}".encode(), 0)
            yield None
        finally:
            os.close(descriptor)


def _delivered_result(
    result: dict[str, Any], reference: ManifestRef, pin_error: str | None
) -> dict[str, Any]:
    """A backup's result once a later attempt delivered it: sent, its manifest's message, and its error
    without the delivery's part (what else went wrong, such as a failed verification, stays)."""
    error, delivery_error = result.get("error"), result.get("delivery_error")
    if isinstance(error, str) and isinstance(delivery_error, str) and error.endswith(delivery_error):
        error = error.removesuffix(delivery_error).removesuffix("; ") or None
    return {
        **result,
        "delivery": DeliveryState.SENT,
        "message_id": reference.message_id,
        "pin_error": pin_error,
        "delivery_error": None,
        "error": error,
    }


def _insert(connection: sqlite3.Connection, entry: Entry) -> None:
    manifest = entry.manifest
    previous = manifest.previous
    reference = entry.manifest_ref
    connection.execute(
        f"INSERT INTO backups VALUES ({', '.join('?' * 29)})",
        (
            manifest.name,
            stem(manifest.name),
            backup_stamp(manifest.name),
            manifest.database,
            manifest.host,
            manifest.server,
            manifest.created_at,
            manifest.size_bytes,
            manifest.sha256,
            manifest.dump_format,
            manifest.compression,
            None if manifest.verified is None else int(manifest.verified),
            len(manifest.parts),
            previous.name if previous else None,
            previous.message_id if previous else None,
            previous.file_id if previous else None,
            json.dumps(entry.facts) if entry.facts is not None else None,
            entry.sql_bytes,
            entry.warning,
            int(entry.spooled),
            json.dumps(sorted(entry.captions_to_complete)),
            entry.delivery,
            reference.message_id if reference else None,
            reference.file_id if reference else None,
            entry.pin_error,
            entry.lost_reason,
            json.dumps(list(manifest.recipients)) if manifest.encrypted else None,
            None,  # parts_deleted_at: a backup is recorded with its parts where they were sent
            None,  # chat_id: recorded with its delivery
        ),
    )
    connection.executemany(
        "INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                manifest.name,
                part.index,
                part.file_name,
                part.offset,
                part.size_bytes,
                part.sha256,
                part.message_id,
                part.file_id,
            )
            for part in manifest.parts
        ],
    )
    if entry.delivery == DeliveryState.PENDING:
        connection.execute(
            "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
            (manifest.name, entry.attempts, entry.next_attempt_at, entry.last_error, int(entry.unconfirmed)),
        )


def _entry(row: sqlite3.Row, parts: list[sqlite3.Row]) -> Entry:
    previous = (
        ManifestRef(row["previous_name"], row["previous_message_id"], row["previous_file_id"])
        if row["previous_name"] is not None
        else None
    )
    manifest = Manifest(
        name=row["name"],
        database=row["database"],
        host=row["host"],
        server=row["server"],
        created_at=row["created_at"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        parts=tuple(
            Part(
                index=part["idx"],
                file_name=part["file_name"],
                offset=part["offset"],
                size_bytes=part["size_bytes"],
                sha256=part["sha256"],
                message_id=part["message_id"],
                file_id=part["file_id"],
            )
            for part in parts
        ),
        previous=previous,
        dump_format=row["dump_format"],
        compression=row["compression"],
        verified=None if row["verified"] is None else bool(row["verified"]),
        encrypted=row["recipients"] is not None,
        recipients=tuple(json.loads(row["recipients"])) if row["recipients"] is not None else (),
    )
    reference = (
        ManifestRef(row["name"], row["manifest_message_id"], row["manifest_file_id"])
        if row["manifest_file_id"] is not None
        else None
    )
    pending = row["attempts"] is not None
    return Entry(
        manifest=manifest,
        delivery=DeliveryState(row["delivery"]),
        facts=json.loads(row["facts"]) if row["facts"] else None,
        sql_bytes=row["sql_bytes"],
        warning=row["warning"],
        spooled=bool(row["spooled"]),
        captions_to_complete=frozenset(json.loads(row["captions_to_complete"])),
        manifest_ref=reference,
        pin_error=row["pin_error"],
        lost_reason=row["lost_reason"],
        attempts=row["attempts"] if pending else 0,
        next_attempt_at=row["next_attempt_at"] if pending else None,
        last_error=row["last_error"] if pending else None,
        unconfirmed=bool(row["unconfirmed"]) if pending else False,
    )
