"""Opening the state where a process starts, and reading back into the catalogue what exists on disk: the
manifests and spooled parts in the backup directory, after a damaged state file was moved aside, or when a
backup was made but could not be recorded. Backups not known to have reached the chat come back pending,
to be looked for in the chat's chain of manifests before they are sent (outbox.py)."""

from dataclasses import dataclass, replace
from typing import Any

from .config import Config
from .manifest import Manifest, ManifestError, manifest_name
from .outbox import CHAIN_CONFIRM, CHAIN_HISTORY, CHAIN_KEY
from .state import Entry, StateStore
from .statefile import REBUILD_KEY, open_store
from .states import DeliveryState
from .storage import BackupDirectory, spooled_parts

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# Before part numbers were as wide as the count, spooled parts were numbered with three digits whatever the
# count, which is how part_name numbers 2 parts (`.001` … `.999`, `.1000`): a backup of 1000 parts or
# more left waiting in the spool by those versions takes today's names when it is read back.
OLDER_SPOOL_NAMES_FOR = 2


@dataclass(frozen=True)
class Prepared:
    store: StateStore
    problem: str | None  # for the chat: the state file was damaged and rebuilt


def prepare_state(config: Config, directory: BackupDirectory, log: Any) -> Prepared:
    """Open the store (migrating 0.1's file, or moving a damaged one aside) and read back what the backup
    directory holds that the catalogue does not know. Raise StateLocationError if no state can be kept."""
    opened = open_store(config.daemon.state_file)
    store = opened.store
    if opened.migrated_from is not None:
        log.info(
            "Imported the state file of tgbackupd 0.1 into the state store",
            migrated_from=str(opened.migrated_from),
            kept_as=str(opened.migrated_from) + ".migrated",
            backups=len(store.known()),
            skipped=opened.skipped or None,
        )
    if opened.skipped:
        log.warning("Some entries of the old state file could not be imported", skipped=opened.skipped)
    problem = None
    rebuilding = store.meta(REBUILD_KEY)
    if rebuilding is not None:
        telegram = config.telegram.configured
        problem = (
            f"the state file {config.daemon.state_file} was damaged ({rebuilding}); it was "
            + (f"moved aside as {opened.moved_to.name} and " if opened.moved_to else "")
            + "the catalogue is rebuilt from the backup directory"
            + (" and the chain of manifests in the chat" if telegram else "")
            + ". Backups not delivered yet are sent again"
        )
        log.error(
            "The state file was damaged; the catalogue is rebuilt",
            reason=rebuilding,
            moved_to=str(opened.moved_to) if opened.moved_to else None,
            state_file=str(config.daemon.state_file),
        )
    added = read_back(store, directory, config.telegram.configured, log)
    if rebuilding is not None:
        if config.telegram.configured:
            store.set_meta(CHAIN_KEY, CHAIN_HISTORY)
        store.set_meta(REBUILD_KEY, None)
        log.error("Rebuilt the catalogue from the backup directory", backups=len(added), names=added or None)
    elif added:
        if config.telegram.configured and store.meta(CHAIN_KEY) is None:
            store.set_meta(CHAIN_KEY, CHAIN_CONFIRM)
        log.warning(
            "Found finished backups in the backup directory that the catalogue did not know; they are "
            "recorded now",
            names=added,
        )
    return Prepared(store, problem)


def read_back(store: StateStore, directory: BackupDirectory, telegram: bool, log: Any) -> list[str]:
    """Record every backup whose manifest is in the directory and not in the catalogue; return their names.
    The parts of each that wait in the spool under the names of older versions take today's first."""
    known = store.known()
    entries = []
    for path in directory.manifests():
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ManifestError("it is implausibly large")
            manifest = Manifest.from_json(path.read_bytes())
        except (OSError, ManifestError) as error:
            log.warning("Skipping a manifest file that cannot be read", path=str(path), error=str(error))
            continue
        if manifest_name(manifest.name) != path.name:
            log.warning("Skipping a manifest file that describes another backup", path=str(path))
            continue
        if not directory.has_whole_file(manifest.name):
            try:
                directory.rename_spooled(manifest.name, OLDER_SPOOL_NAMES_FOR, len(manifest.parts))
            except OSError as error:
                log.warning(
                    "Could not rename the spooled parts of a backup to today's names",
                    file=manifest.name,
                    error=str(error),
                )
        if manifest.name not in known:
            entries.append(_found(manifest, directory, telegram))
    store.add_many(entries)
    return [entry.manifest.name for entry in entries]


def _found(manifest: Manifest, directory: BackupDirectory, telegram: bool) -> Entry:
    """A backup found on disk: where its bytes are, and whether it can still be delivered."""
    name = manifest.name
    if directory.has_whole_file(name):
        spooled, lost = False, None
    else:
        spooled = True
        noted = directory.receipts(name)
        manifest = replace(
            manifest,
            parts=tuple(
                replace(part, message_id=noted[part.index][0], file_id=noted[part.index][1])
                if part.message_id is None and part.index in noted
                else part
                for part in manifest.parts
            ),
        )
        present = spooled_parts(directory.path, manifest)
        gone = [
            part.index for part in manifest.parts if part.message_id is None and part.index not in present
        ]
        lost = f"part(s) {', '.join(map(str, gone))} are no longer on disk nor in the chat" if gone else None
    if lost is not None:
        delivery = DeliveryState.LOST
    elif telegram:
        delivery = DeliveryState.PENDING
    elif spooled:
        delivery, lost = DeliveryState.LOST, "its file is no longer on disk"
    else:
        delivery = DeliveryState.LOCAL_ONLY
    return Entry(manifest, delivery, spooled=spooled, lost_reason=lost, unconfirmed=True)
