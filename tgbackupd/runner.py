"""One backup at a time, in a worker thread, so the main loop keeps ticking (and pinging the watchdog)."""

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from .backup import BackupResult
from .clock import Clock
from .drilling import DrillResult
from .errors import Cancelled, TgbackupdError
from .states import Trigger

log = structlog.stdlib.get_logger("tgbackupd.runner")


class BackupBusy(TgbackupdError):
    exit_code = os.EX_TEMPFAIL


@dataclass(frozen=True)
class Selection:
    """Which databases a run backs up: one by its name or prefix (`tgbackupctl trigger DBNAME`), those
    scheduled at given times (hour, minute), or (both None) all of them."""

    database: str | None = None
    slots: tuple[tuple[int, int], ...] | None = None


EVERY_DATABASE = Selection()


class RunningBackup:
    def __init__(self, trigger: Trigger, started_at: str, selection: Selection = EVERY_DATABASE) -> None:
        self.trigger = trigger
        self.started_at = started_at
        self.selection = selection
        self.done = threading.Event()
        self.results: list[BackupResult] | None = None  # one per database, in the order they were made
        self.drills: list[DrillResult] | None = None  # a drill's, likewise

    def describe(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "started_at": self.started_at}


class BackupRunner:
    def __init__(
        self,
        run_backup: Callable[[Trigger, Selection], list[BackupResult]],
        last_backup: dict[str, Any] | None,
        cancel: threading.Event,
        clock: Clock | None = None,
        redeliver: Callable[[], dict[str, Any] | None] | None = None,
        drill: Callable[[Selection], list[DrillResult]] | None = None,
    ) -> None:
        """`drill`: runs restore drills (Trigger.DRILL) as a job like the others, never beside a backup."""
        self._run_backup = run_backup
        self._drill = drill
        self._redeliver = redeliver
        self._cancel = cancel
        self._clock = clock or Clock()
        self._lock = threading.Lock()
        self._current: RunningBackup | None = None
        self._thread: threading.Thread | None = None
        self.last_backup = last_backup

    @property
    def current(self) -> RunningBackup | None:
        return self._current

    def start(self, trigger: Trigger, selection: Selection = EVERY_DATABASE) -> RunningBackup:
        """Start backing up the selected databases now. Raise BackupBusy if a backup is running, Cancelled
        if the daemon is stopping."""
        with self._lock:
            if self._cancel.is_set():
                raise Cancelled("tgbackupd is stopping; no new backup is started")
            if self._current is not None:
                current = self._current
                doing = {
                    Trigger.REDELIVERY: "tgbackupd is sending backups that were waiting for Telegram",
                    Trigger.DRILL: "a restore drill is running",
                }.get(current.trigger, f"a {current.trigger} backup is already running")
                raise BackupBusy(
                    f"{doing} (started {current.started_at}); try again when it has finished, or use "
                    "`tgbackupctl trigger --wait`"
                )
            running = RunningBackup(trigger, self._clock.now().isoformat(timespec="seconds"), selection)
            self._current = running
            self._thread = threading.Thread(target=self._work, args=(running,), name="backup", daemon=True)
            self._thread.start()
            return running

    def start_when_free(self, trigger: Trigger, selection: Selection = EVERY_DATABASE) -> RunningBackup:
        """Wait for the running backup (if any) to finish, then start this one."""
        while True:
            try:
                return self.start(trigger, selection)
            except BackupBusy:
                current = self._current
                if current is not None:
                    current.done.wait()

    def _work(self, running: RunningBackup) -> None:
        if running.trigger == Trigger.REDELIVERY:
            self._finish_redelivery(running)
            return
        if running.trigger == Trigger.DRILL:
            self._finish_drill(running)
            return
        try:
            results = self._run_backup(running.trigger, running.selection)
        except Exception as error:  # a bug must not take the daemon down with it, nor hang the waiters
            log.exception("Backup crashed unexpectedly; please report this", error=type(error).__name__)
            results = [
                BackupResult(
                    trigger=running.trigger,
                    database="",
                    started_at=running.started_at,
                    duration_s=0.0,
                    error=f"internal error: {type(error).__name__}",
                )
            ]
        if results:
            self.last_backup = results[-1].to_dict()
        running.results = results
        with self._lock:
            self._current = None
        running.done.set()

    def _finish_redelivery(self, running: RunningBackup) -> None:
        try:
            recorded = self._redeliver() if self._redeliver is not None else None
            last = self.last_backup
            if (
                recorded is not None
                and last is not None
                and recorded.get("started_at") == last.get("started_at")
            ):
                self.last_backup = recorded  # the same backup, delivered now: status says so
        except Exception as error:  # as above: report, and keep serving
            log.exception("Redelivery crashed unexpectedly; please report this", error=type(error).__name__)
        with self._lock:
            self._current = None
        running.done.set()

    def _finish_drill(self, running: RunningBackup) -> None:
        try:
            running.drills = self._drill(running.selection) if self._drill is not None else []
        except Exception as error:  # as above: report, and keep serving
            log.exception(
                "Restore drill crashed unexpectedly; please report this", error=type(error).__name__
            )
            running.drills = [
                DrillResult(
                    prefix=running.selection.database or "",
                    database=running.selection.database or "",
                    at=running.started_at,
                    duration_s=0.0,
                    error=f"internal error: {type(error).__name__}",
                )
            ]
        with self._lock:
            self._current = None
        running.done.set()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the running backup; return True when none is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True
