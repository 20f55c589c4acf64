"""Opening the state where a process starts, and reading back into the catalogue what exists on disk: the
manifests and spooled parts in the backup directory, of every database whose backups it holds, after a
damaged or lost state file, or when a backup was made but could not be recorded. Backups not known to have
reached the chat come back pending, to be looked for in the chat's chain of manifests before they are sent
(outbox.py)."""

from dataclasses import dataclass, replace
from typing import Any

from .config import Config
from .manifest import MAX_MANIFEST_BYTES, SUFFIX, Manifest, ManifestError, manifest_name
from .state import CHAIN_CONFIRM, CHAIN_HISTORY, CHAIN_KEY, Entry, StateStore
from .statefile import REBUILD_KEY, open_store
from .states import DeliveryState
from .storage import BackupDirectory, spooled_parts

# Before part numbers were as wide as the count, spooled parts were numbered with three digits whatever the
# count, which is how part_name numbers 2 parts (`.001` … `.999`, `.1000`): a backup of 1000 parts or
# more left waiting in the spool by those versions takes today's names when it is read back.
OLDER_SPOOL_NAMES_FOR = 2


@dataclass(frozen=True)
class Prepared:
    store: StateStore
    problem: str | None  # for the chat: the state file was damaged or lost, and rebuilt


def prepare_state(config: Config, directory: BackupDirectory, log: Any) -> Prepared:
    """Open the store (migrating 0.1's file, or moving a damaged one aside) and read back what the backup
    directory holds that the catalogue does not know. Raise StateLocationError if no state can be kept."""
    opened = open_store(config.daemon.state_file)
    store = opened.store
    if opened.migrated_from is not None:
        log.info(
            "Imported the state file of tgbackupd 0.1 into the state store",
            migrated_from=str(opened.migrated_from),
            backups=len(store.known()),
        )
    if opened.skipped:
        log.warning("Some entries of the old state file could not be imported", skipped=opened.skipped)
    if opened.created and directory.every_manifest():
        # No state file, but backups made by tgbackupd: it was lost (removed, or a disk replaced).
        store.set_meta(REBUILD_KEY, "it was missing, but the backup directory holds backups of tgbackupd")
    rebuilding = store.meta(REBUILD_KEY)
    problem = None
    if rebuilding is not None:
        telegram = config.telegram.configured
        problem = (
            f"the state file {config.daemon.state_file} could not be used ({rebuilding}); "
            + (f"it was moved aside as {opened.moved_to.name}, and " if opened.moved_to else "")
            + "the catalogue is rebuilt from the backup directory"
            + (" and the chain of manifests in the chat" if telegram else "")
            + ". Backups not delivered yet are sent again"
        )
        log.error(
            "The state file was damaged or lost; the catalogue is rebuilt",
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
    return Prepared(store, problem)


def read_back(store: StateStore, directory: BackupDirectory, telegram: bool, log: Any) -> list[str]:
    """Record every backup whose manifest is in the directory and not in the catalogue (a rebuild, or a
    backup whose recording failed), whichever database's it is; return their names. The parts of each
    that wait in the spool under the names of older versions take today's first. What cannot be read is
    skipped and logged: it must not stop tgbackupd, nor be taken for a backup."""
    entries = []
    for path in directory.every_manifest():  # a few files: each looked up, not the whole catalogue read
        backup_stem = path.name.removesuffix(SUFFIX)
        kept_whole = directory.keeps_whole(backup_stem)
        known = store.stem_taken(backup_stem)
        if known and kept_whole:
            continue
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ManifestError("it is implausibly large")
            manifest = Manifest.from_json(path.read_bytes())
            if manifest_name(manifest.name) != path.name:
                raise ManifestError("it describes another backup than its name says")
            if not kept_whole:
                directory.rename_spooled(manifest.name, OLDER_SPOOL_NAMES_FOR, len(manifest.parts))
            if not known:
                entries.append(_found(manifest, directory, telegram, log))
        except (OSError, ValueError, TypeError) as error:  # ManifestError is a ValueError
            log.warning("Skipping a manifest file that cannot be read", path=str(path), error=str(error))
    if entries:
        store.add_many(entries)
        if telegram and store.meta(CHAIN_KEY) is None:
            store.set_meta(CHAIN_KEY, CHAIN_CONFIRM)
        log.warning(
            "Found finished backups in the backup directory that the catalogue did not know; they are "
            "recorded now",
            names=[entry.manifest.name for entry in entries],
        )
    return [entry.manifest.name for entry in entries]


def _found(manifest: Manifest, directory: BackupDirectory, telegram: bool, log: Any) -> Entry:
    """A backup found on disk: where its bytes are, and whether it can still be delivered."""
    name = manifest.name
    if directory.has_whole_file(name):
        spooled, lost = False, None
    else:
        spooled = True
        noted = directory.receipts(name, log)
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
