"""Several databases, one at a time and in order: a Backup for each `[[databases]]` entry, for each
database an `all = true` entry finds on its server when it runs, and for a server's globals. One failing
does not stop the others: each has its own result, chat notice and `Backup routine failed` event. They
share one outbox, so their backups reach the chat in the order they were made, in one chain."""

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import structlog

from . import psql
from .backup import Backup, BackupResult
from .clock import Clock
from .config import BackupConfig, Config, DatabaseConfig, Target, file_safe
from .drilling import ChatIndex, DrillResult, Drills
from .errors import TgbackupdError
from .events import Events
from .runner import EVERY_DATABASE, Selection
from .state import StateError, StateStore
from .states import Trigger
from .storage import BackupDirectory
from .telegram import BotApi

# The databases of a server that a dump can be made of: those that accept connections, but no template.
LIST_DATABASES = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
_ATTEMPT_KEY = "scheduled_attempt_{hour:02d}{minute:02d}"

Slot = tuple[int, int]

log = structlog.stdlib.get_logger("tgbackupd.fleet")


def slot_of(target: Target) -> Slot:
    """When the entry is backed up each day: its own hour and minute, else the `backup` section's."""
    return (target.backup.hour, target.backup.minute)


def first_directory(config: Config) -> BackupDirectory:
    """The first entry's backup directory, named by its own format and compression: the one whose Backup
    holds the outbox the others share, and where the daemon's checks look."""
    first = config.databases[0].backup
    return BackupDirectory(first.directory, first.prefix, config.suffix_of(first))


class Fleet:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        directory: BackupDirectory,
        *,
        clock: Clock | None = None,
        cancel: threading.Event | None = None,
        bot_factory: Callable[[Config, threading.Event], BotApi | None] | None = None,
        events: Events | None = None,
        drills: Drills | None = None,
    ) -> None:
        """`directory` is the first entry's: its Backup holds the outbox (and the events) the others share.
        `drills`: the process's, kept across reloads (a drill running during one records into it, and the
        new databases' status shows that), else one of this fleet's own."""
        self._config = config
        self._store = store
        self._clock = clock or Clock()
        self._bot_factory = bot_factory
        first = config.databases[0]
        self.first = Backup(
            self._config_for(first.database, first.backup),
            store,
            directory,
            clock=self._clock,
            cancel=cancel,
            bot_factory=bot_factory,
            events=events,
        )
        self.events = self.first.events
        self.drills = drills or Drills(store, self.events, self._clock)
        self._backups: dict[str, Backup] = {} if first.all else {first.backup.prefix: self.first}
        self._directories = {} if first.all else {first.backup.prefix: directory}
        self._slots: dict[str, Slot] = {}  # each series' schedule, by prefix
        # Which database (server, name) each prefix is the series of: a prefix is never shared.
        self._owners: dict[str, tuple[str, str]] = {
            prefix: _identity(target.database, target.database.name if prefix == target.backup.prefix else "")
            for target in config.databases
            for prefix in target.fixed_prefixes
        }
        self.last: dict[str, dict[str, Any]] = {}  # each series' last result, by prefix
        self.current: Backup | None = None  # the one being made now
        for target in config.databases:
            for prefix in target.fixed_prefixes:
                self._slots[prefix] = slot_of(target)
        # The series known before any run, by prefix (those an `all` entry finds join when they run).
        self._fixed: dict[str, Backup] = {
            prefix: backup
            for target in config.databases
            if not target.all
            for prefix, backup, _ in self._jobs(target, None)
        }
        self._recall()

    @property
    def slots(self) -> list[Slot]:
        return sorted({slot_of(target) for target in self._config.databases})

    def knows(self, name: str) -> bool:
        """Whether `tgbackupctl trigger NAME` may name a database: one configured (by its name or
        prefix), or any when an entry finds the databases of a server at run time."""
        return any(target.all for target in self._config.databases) or any(
            name in (prefix, backup.series) for prefix, backup in self._fixed.items()
        )

    def run(self, trigger: Trigger, selection: Selection = EVERY_DATABASE) -> list[BackupResult]:
        """Back up the selected databases one after the other; return each one's result, in order."""
        self._note_attempt(selection)
        results: list[BackupResult] = []
        for target in self._config.databases:
            if selection.slots is not None and slot_of(target) not in selection.slots:
                continue
            for prefix, backup, problem in self._jobs(target, selection.database):
                if self.first.cancel.is_set():
                    return results  # stopping: the rest wait for the next run
                self._slots[prefix] = slot_of(target)
                self.current = backup
                try:
                    result = backup.fail(trigger, problem) if problem else backup.run(trigger)
                finally:
                    self.current = None
                self.last[prefix] = result.to_dict()
                results.append(result)
        return results

    def drill(self, selection: Selection = EVERY_DATABASE) -> list[DrillResult]:
        """A restore drill of the latest backup in the chat of each selected database, one after the other
        (drilling.py); a server's globals are not drilled. Scheduled drills (every database) record when
        they started, for catch-up."""
        if selection.database is None:
            self.drills.note_attempt()
        results: list[DrillResult] = []
        chat = ChatIndex()  # the chain is read once for all of them
        try:
            for target in self._config.databases:
                for prefix, backup, problem in self._jobs(target, selection.database):
                    if self.first.cancel.is_set():
                        return results  # stopping: the rest wait for the next drill
                    if backup.globals_only:
                        log.info(
                            "No restore drill of a server's globals: restoring roles is no check",
                            prefix=prefix,
                        )
                        continue
                    self._slots[prefix] = slot_of(target)
                    self.current = backup
                    try:
                        results.append(self.drills.run(backup, chat, problem))
                    finally:
                        self.current = None
        finally:
            chat.close()
        return results

    def status(self, next_run: Callable[[Slot], datetime | None]) -> dict[str, dict[str, Any]]:
        """Each series' description, last result and next scheduled run, by prefix."""
        databases = {}
        for prefix in [*self._slots, *(prefix for prefix in self.last if prefix not in self._slots)]:
            backup = self._backups.get(prefix)
            last = self.last.get(prefix)
            slot = self._slots.get(prefix)
            upcoming = next_run(slot) if slot is not None else None
            databases[prefix] = {
                "database": backup.describe if backup else (last or {}).get("database"),
                "last_backup": last,
                "next_run": upcoming.astimezone().isoformat(timespec="seconds") if upcoming else None,
                "last_drill": self.drills.last.get(prefix),
            }
        return databases

    def stored(self) -> int:
        """How many backups the directory keeps, of every series known (found ones once they ran)."""
        return sum(len(directory.backups()) for directory in self._directories.values())

    def last_attempt(self, slot: Slot, fallback: dict[str, Any] | None) -> datetime | None:
        """When the databases scheduled at `slot` were last backed up; without a record of it (a state
        file from before several databases), when any backup last started (`fallback`'s)."""
        try:
            recorded = self._store.meta(_ATTEMPT_KEY.format(hour=slot[0], minute=slot[1]))
        except StateError:
            recorded = None
        started = recorded or (fallback or {}).get("started_at")
        try:
            return datetime.fromisoformat(started) if started else None
        except (TypeError, ValueError):
            return None  # a state file from elsewhere: nothing to compare with

    def _note_attempt(self, selection: Selection) -> None:
        """Record when each schedule's databases were backed up, for catch-up and the night the clocks go
        back; a backup of one database (`trigger DBNAME`) stands for no schedule."""
        if selection.database is not None:
            return
        started = self._clock.now().isoformat(timespec="seconds")
        for hour, minute in selection.slots or self.slots:
            try:
                self._store.set_meta(_ATTEMPT_KEY.format(hour=hour, minute=minute), started)
            except StateError as error:
                log.warning("Could not record when the scheduled backups started", error=str(error))

    def _jobs(self, target: Target, only: str | None) -> Iterator[tuple[str, Backup, str | None]]:
        """The backups an entry makes now, with the problem that keeps one from starting (if any):
        (prefix, backup, problem)."""
        if target.all:
            yield from self._found(target, only)
        else:
            backup = self._backup(target.backup.prefix, target.database, target.backup)
            if only in (None, target.backup.prefix, backup.series):
                yield target.backup.prefix, backup, None
        if target.globals:
            backup = self._backup(
                target.globals_prefix,
                target.database,
                # Restoring roles is no check; pg_dumpall writes SQL whatever the entry's format.
                dataclasses.replace(target.backup, verify_after=False, dump_format="plain"),
                globals_only=True,
                role_passwords=target.globals_passwords,
            )
            if only in (None, target.globals_prefix):
                yield target.globals_prefix, backup, None

    def _found(self, target: Target, only: str | None) -> Iterator[tuple[str, Backup, str | None]]:
        """The databases of an `all = true` entry's server, less `exclude` and those that other entries
        back up under the same name."""
        try:
            names = [row[0] for row in psql.query(target.database, LIST_DATABASES)]
        except TgbackupdError as error:
            server = self._backup(target.backup.prefix or "all", target.database, target.backup)
            problem = (
                f"could not list the databases of {target.database.server()} ({target.label}, all = true), "
                f"so none of them was backed up: {error}"
            )
            yield target.backup.prefix or "all", server, problem
            return
        fixed = {
            _identity(entry.database, entry.database.name)
            for entry in self._config.databases
            if not entry.all
        }
        for name in names:
            if name in target.exclude:
                continue
            if _identity(target.database, name) in fixed:
                if only in (None, name):
                    log.info(
                        "Database backed up by another entry; not twice", database=name, entry=target.label
                    )
                continue
            prefix = self._prefix_of(target, name)
            if only not in (None, name, prefix):
                continue
            yield (
                prefix,
                self._backup(prefix, dataclasses.replace(target.database, name=name), target.backup),
                None,
            )

    def _prefix_of(self, target: Target, name: str) -> str:
        """The prefix of a database an `all` entry found: `<prefix><name>`, made safe for a file name.
        A name that had to be changed for that (`магазин` is `_______`, as `продажи` is) ends in a digest
        of itself, and a prefix that is another database's series already (a fixed entry's on another
        server, another `all` entry's) in a digest of the server and name: each database its own series,
        the same every night, never one skipped nor backed up twice under one name."""
        safe = file_safe(name)
        prefix = target.backup.prefix + safe + ("" if safe == name else f"-{_digest(name)}")
        identity = _identity(target.database, name)
        if self._owners.setdefault(prefix, identity) != identity:
            prefix += f"-{_digest(' '.join(identity))}"
            self._owners.setdefault(prefix, identity)
        return prefix

    def _backup(
        self,
        prefix: str,
        database: DatabaseConfig,
        backup: BackupConfig,
        globals_only: bool = False,
        role_passwords: bool = False,
    ) -> Backup:
        if prefix not in self._backups:
            config = self._config_for(database, dataclasses.replace(backup, prefix=prefix))
            self._directories[prefix] = BackupDirectory(backup.directory, prefix, config.backup_suffix)
            self._backups[prefix] = Backup(
                config,
                self._store,
                self._directories[prefix],
                clock=self._clock,
                bot_factory=self._bot_factory,
                shared_with=self.first,
                globals_only=globals_only,
                role_passwords=role_passwords,
            )
        return self._backups[prefix]

    def _config_for(self, database: DatabaseConfig, backup: BackupConfig) -> Config:
        return dataclasses.replace(self._config, database=database, backup=backup)

    def _recall(self) -> None:
        """Each series' last result from the catalogue, by the prefix of its file name, else by the series
        it was recorded for (a failure has no file); one recorded by its database's name (before schema
        3) goes to the entry of that database."""
        try:
            results = self._store.results_by_series()
        except StateError:
            return  # status shows none; the store's problem is reported where it is used
        by_series = {backup.series: prefix for prefix, backup in self._fixed.items()}
        for series, result in results.items():
            file = result.get("file")
            prefix = file.split("_backup_")[0] if isinstance(file, str) and "_backup_" in file else None
            if prefix is None:
                prefix = series if series in self._fixed or series not in by_series else by_series[series]
            self.last[prefix] = result


def _identity(database: DatabaseConfig, name: str) -> tuple[str, str]:
    """Which database of which server: what a series is of (`name` "" for the server's globals)."""
    return (database.server(), name)


def _digest(text: str) -> str:
    """A short name for a text that stays the same from run to run: 8 hexadecimal digits of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]
