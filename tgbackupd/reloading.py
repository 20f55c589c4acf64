"""Reloading the configuration (SIGHUP, `tgbackupctl reload`): what changed between two configurations,
which changes wait for a restart, and the hand-over between whoever asks for a reload and the main loop
that makes it. The reload itself is the daemon's (daemon.py); this module is plain logic over it."""

import dataclasses
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import KEYS, Config

# Keys the running daemon cannot take over, with why (said to the administrator along with the key).
RESTART_KEYS = {
    "daemon.socket": "the control socket is bound at start, and tgbackupctl talks to the daemon through it",
    "daemon.state_file": "the state store is opened, locked and migrated at start",
    "backup.directory": "the backups kept, the spool and the catalogue's view of them are the old "
    "directory's",
}
# Where a section's field is not named as its key is; None: it is no key (where the token came from).
_KEY_NAMES: dict[str, str | None] = {
    "backup.dump_format": "backup.format",
    "encryption.identity": "encryption.identity_file",
    "database.options": "database.url",
    "telegram.bot_token_source": None,
}


def changed_keys(old: Config, new: Config) -> list[str]:
    """Given the running and the new configuration, return the names of the keys whose values differ,
    in the order of the sections: `databases[N]` (counted from 1, as problems name them) for an entry of
    `[[databases]]`, `databases` when entries were added or removed. Names only: secrets are compared,
    never shown."""
    entries = _entries(old) or _entries(new)
    # Every section of the file (in the order of KEYS), each a field of Config of the same name.
    sections = [
        section
        for section in dict.fromkeys(key.section for key in KEYS)
        if not entries or section != "database"
    ]
    changed = []
    for section in sections:
        before, after = getattr(old, section), getattr(new, section)
        for field in dataclasses.fields(before):
            field_name = f"{section}.{field.name}"
            name = _KEY_NAMES.get(field_name, field_name)
            if name is not None and getattr(before, field.name) != getattr(after, field.name):
                changed.append(name)
    if entries:
        if len(old.databases) != len(new.databases):
            changed.append("databases")
        changed.extend(
            target.label
            for target, before in zip(new.databases, old.databases, strict=False)
            if target != before
        )
    return changed


def _entries(config: Config) -> bool:
    """Whether the databases are `[[databases]]` entries (else the `database` section, compared above)."""
    return config.databases[0].label != "database"


def needing_restart(changed: list[str]) -> list[str]:
    """Of the changed keys, those only a restart applies."""
    return [key for key in changed if key in RESTART_KEYS]


def keeping_restart_keys(new: Config, running: Config) -> Config:
    """The new configuration with the running one's values for RESTART_KEYS: what a reload applies."""
    directory = running.backup.directory
    return dataclasses.replace(
        new,
        daemon=dataclasses.replace(
            new.daemon, socket=running.daemon.socket, state_file=running.daemon.state_file
        ),
        backup=dataclasses.replace(new.backup, directory=directory),
        databases=tuple(
            dataclasses.replace(target, backup=dataclasses.replace(target.backup, directory=directory))
            for target in new.databases
        ),
    )


@dataclass(frozen=True)
class ReloadOutcome:
    """How a reload went: `changed` the keys that took effect, `restart_required` those that changed in
    the file but wait for a restart (the running daemon keeps their old values); `error` why a rejected
    configuration was rejected."""

    at: str
    ok: bool
    error: str | None = None
    changed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "last_at": self.at,
            "ok": self.ok,
            "error": self.error,
            "changed": list(self.changed),
            "restart_required": list(self.restart_required),
        }

    def message(self) -> str:
        """One sentence for the administrator (tgbackupctl reload, status)."""
        if not self.ok:
            return f"Configuration reload failed; the running configuration stays: {self.error}"
        text = (
            f"Configuration reloaded; changed: {', '.join(self.changed)}"
            if self.changed
            else "Configuration reloaded; nothing changed"
        )
        if self.restart_required:
            text += f". Not applied: {restart_notice(self.restart_required)}"
        return text


def restart_notice(keys: Iterable[str]) -> str:
    """Say which changed keys the running daemon keeps the old values of, why, and what to do."""
    keys = list(keys)
    why = "; ".join(RESTART_KEYS[key] for key in keys)
    return (
        f"{', '.join(keys)} cannot change while tgbackupd runs ({why}): the running daemon keeps the old "
        "value; restart tgbackupd to apply it (systemctl restart tgbackupd)"
    )


class ReloadRequests:
    """Reloads asked for over the control socket, made by the main loop: the asker waits for the outcome
    of a reload that began after it asked (never an older one's)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._asked = 0  # requests so far
        self._done = 0  # requests answered by the reloads so far
        self.last: ReloadOutcome | None = None

    def ask(self, timeout: float) -> ReloadOutcome | None:
        """Ask for a reload and wait up to `timeout` seconds for its outcome; None if it did not come."""
        with self._condition:
            self._asked += 1
            ticket = self._asked
            if self._condition.wait_for(lambda: self._done >= ticket, timeout):
                return self.last
            return None

    def begin(self) -> int:
        """The main loop starts a reload: it answers every request made so far. Return how many."""
        with self._condition:
            return self._asked

    def pending(self) -> bool:
        with self._condition:
            return self._asked > self._done

    def finish(self, answered: int, outcome: ReloadOutcome) -> None:
        with self._condition:
            self.last = outcome
            self._done = max(self._done, answered)
            self._condition.notify_all()
