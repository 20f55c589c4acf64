"""What a backup announces, and who hears it. The backup only announces (started, succeeded, failed,
delivered; and a restore drill's end, drilled); each outside integration (pings, the metrics file, the
chat's commands) is a Listener of its own, so adding one never means editing the backup. A listener that
fails is logged, never fails the backup; a listener must return quickly (one that talks to a network does
so from a thread of its own)."""

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from .states import Trigger

if TYPE_CHECKING:
    from .backup import BackupResult

log = structlog.stdlib.get_logger("tgbackupd.events")


@dataclass(frozen=True)
class Started:
    """A backup of one series began. `prefix` names the series in status, metrics and file names;
    `database` is what the backup is of (a database's name, or the prefix of a server's globals)."""

    prefix: str
    database: str
    describe: str
    trigger: Trigger
    started_at: str


@dataclass(frozen=True)
class Finished:
    """A backup of one series ended: `result.succeeded` is false also when it was made but not delivered."""

    prefix: str
    result: "BackupResult"

    @property
    def succeeded(self) -> bool:
        return self.result.succeeded


@dataclass(frozen=True)
class Delivered:
    """A backup reached the chat, during its own run or later from the outbox."""

    file: str
    database: str
    message_id: int


@dataclass(frozen=True)
class Drilled:
    """A restore drill ended: the latest backup of a series, downloaded from the chat as a new machine
    would, restored into a scratch database and counted (or not: `error` says why)."""

    prefix: str
    file: str | None
    finished_at: str
    duration_s: float
    tables: int | None = None
    rows: int | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


class Listener:
    """Hears a backup's events; override what is needed. Each call runs in the backup's thread."""

    name = "listener"

    def started(self, event: Started) -> None:
        """A backup began."""

    def succeeded(self, event: Finished) -> None:
        """A backup was made and delivered (or kept, where Telegram is not configured)."""

    def failed(self, event: Finished) -> None:
        """A backup failed, or was made and not delivered."""

    def delivered(self, event: Delivered) -> None:
        """A backup reached the chat."""

    def drilled(self, event: Drilled) -> None:
        """A restore drill from the chat ended, well or not."""

    def close(self) -> None:
        """The process stops, or a reload replaced this listener: finish what is under way, in a bounded
        time."""


class Events:
    """The listeners of one process, replaced whole on reload (a running backup's announcements go to
    whichever listeners are current when it makes them)."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._lock = threading.Lock()
        self._listeners: tuple[Listener, ...] = tuple(listeners)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return self._listeners

    def replace(self, listeners: Iterable[Listener]) -> None:
        """Hand the events to new listeners, and close the old ones (what they had under way ends)."""
        with self._lock:
            old, self._listeners = self._listeners, tuple(listeners)
        self._close(old)

    def close(self) -> None:
        """Close every listener (tgbackupd stops): each finishes what it has under way, in a bounded time."""
        self._close(self._listeners)

    def started(self, event: Started) -> None:
        self._tell("started", event)

    def finished(self, event: Finished) -> None:
        self._tell("succeeded" if event.succeeded else "failed", event)

    def delivered(self, event: Delivered) -> None:
        self._tell("delivered", event)

    def drilled(self, event: Drilled) -> None:
        self._tell("drilled", event)

    def _close(self, listeners: Iterable[Listener]) -> None:
        for listener in listeners:
            try:
                listener.close()
            except Exception as error:
                log.exception(
                    "An integration failed to close", integration=listener.name, error=type(error).__name__
                )

    def _tell(self, what: str, event: Any) -> None:
        for listener in self._listeners:
            try:
                getattr(listener, what)(event)
            except Exception as error:  # an integration's bug must not fail the backup
                log.exception(
                    "An integration failed to handle a backup event; the backup is not affected",
                    integration=listener.name,
                    backup_event=what,
                    error=type(error).__name__,
                )
