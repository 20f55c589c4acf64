"""The daemon's lifecycle, after uvicorn's: signals only set flags, one main loop ticks, runs the schedule,
pings the watchdog while it is healthy, and shutdown is bounded in time."""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from types import FrameType

import structlog

from . import __version__
from .clock import Clock
from .commands import Commands, status_line
from .config import Config
from .control import ControlServer
from .errors import TgbackupdError
from .events import Events
from .fleet import Fleet, Slot
from .integrations import listeners
from .runner import BackupBusy, BackupRunner, RunningBackup, Selection
from .scheduling import DailySchedule, missed_run, repeated_slot
from .state import StateStore
from .states import Trigger
from .storage import BackupDirectory
from .systemd import Notifier, watchdog_interval

SHUTDOWN_TIMEOUT_S = 20.0
TICK_S = 1.0

log = structlog.stdlib.get_logger("tgbackupd.daemon")


class Daemon:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        directory: BackupDirectory,
        state_problem: str | None = None,
        environ: Mapping[str, str] = os.environ,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._directory = directory
        self._state_problem = state_problem  # told to the chat once started
        self._clock = clock or Clock()
        self._notifier = Notifier(environ)
        self._watchdog_every = watchdog_interval(environ)
        self._cancel = threading.Event()
        self.should_exit = False
        self.force_exit = False
        self._fleet = Fleet(
            config,
            store,
            directory,
            clock=self._clock,
            cancel=self._cancel,
            events=Events(listeners(config, store)),
        )
        self._backup = self._fleet.first
        self._outbox = self._backup.outbox
        self._runner = BackupRunner(
            self._fleet.run, store.last_result(), self._cancel, self._clock, redeliver=self._backup.redeliver
        )
        # One timer for each time of day some database is backed up at (the `backup` section's, and
        # each entry's own hour and minute).
        self._schedules = (
            {slot: DailySchedule(*slot, self._scheduled(slot)) for slot in self._fleet.slots}
            if config.backup.enabled
            else {}
        )
        # Scheduled and catch-up backups that came due while another job ran, in the order they came:
        # each starts when the one before it ends, the same day, instead of being lost for the day.
        self._waiting: list[tuple[Trigger, Selection]] = []
        self._catch_up_at: float | None = None
        self._catch_up: tuple[Slot, ...] = ()
        self._commands = Commands(
            config,
            self._runner,
            self._next_run,
            self._clock.now().isoformat(timespec="seconds"),
            self._outbox,
            store,
            directory,
            self._fleet,
            self._slot_next_run,
        )
        self._control = ControlServer(
            config.daemon.socket, self._commands.handle, config.daemon.control_group
        )

    def handle_exit(self, signum: int, frame: FrameType | None) -> None:
        """First signal: stop gracefully. Second: stop waiting for the running backup."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    @staticmethod
    def handle_reload(signum: int, frame: FrameType | None) -> None:
        log.warning(
            "Reloading is not supported yet: restart tgbackupd to apply configuration changes "
            "(systemctl restart tgbackupd)"
        )

    def _next_run(self) -> datetime | None:
        runs = [run for run in map(self._slot_next_run, self._schedules) if run is not None]
        return min(runs, default=None)

    def _slot_next_run(self, slot: Slot) -> datetime | None:
        schedule = self._schedules.get(slot)
        return schedule.next_run if schedule else None

    def _scheduled(self, slot: Slot) -> Callable[[], None]:
        return lambda: self._run_scheduled(slot)

    def _run_scheduled(self, slot: Slot) -> None:
        last_attempt = self._last_attempt(slot)
        now = self._clock.now()
        if repeated_slot(now, *slot, last_attempt):
            assert last_attempt is not None
            log.info(
                "Scheduled backup skipped: a backup was made at this time already, before the clocks "
                "went back",
                last_attempt=last_attempt.isoformat(timespec="seconds"),
            )
            return
        if last_attempt is not None and last_attempt > now:
            log.warning(
                "The last backup's time lies in the future: was the clock set back? Backing up as scheduled",
                last_attempt=last_attempt.isoformat(timespec="seconds"),
            )
        self._start(Trigger.SCHEDULED, Selection(slots=(slot,)))

    def _last_attempt(self, slot: Slot) -> datetime | None:
        return self._fleet.last_attempt(slot, self._runner.last_backup)

    def _start(self, trigger: Trigger, selection: Selection) -> None:
        """Start a scheduled or catch-up backup; after the running job (a redelivery, a manual backup,
        another time's databases), not instead of it. Skipped only when the same one waits already."""
        try:
            self._runner.start(trigger, selection)
        except BackupBusy:
            current = self._runner.current
            if (trigger, selection) in self._waiting:
                self._report_skipped(trigger, current)
            else:
                self._waiting.append((trigger, selection))
                log.info(
                    "Scheduled backup waits for the running one to end",
                    trigger=trigger,
                    running=current.trigger if current else None,
                )
        except TgbackupdError as error:
            log.warning("Scheduled backup not started", error=str(error))

    def _report_skipped(self, trigger: Trigger, running: RunningBackup | None) -> None:
        """A night without its backup is a failure someone must hear of: logged as an error, and told to
        the chat from a thread of its own (the main loop must go on pinging the watchdog meanwhile)."""
        what = f"a {running.trigger} backup started {running.started_at}" if running else "another backup"
        problem = (
            f"the {trigger} backup did not start because {what} was still running and the same backup "
            "already waits for it, so none more was made for this time; if they fail, make one with "
            "`tgbackupctl trigger --wait`"
        )
        log.error("Scheduled backup skipped: a backup is already running", trigger=trigger, error=problem)
        threading.Thread(target=self._backup.tell_chat, args=(problem,), name="notice", daemon=True).start()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_exit)
        signal.signal(signal.SIGHUP, self.handle_reload)
        try:
            self._control.start()
        except TgbackupdError as error:
            log.error("tgbackupd cannot start", error=str(error))
            return error.exit_code
        try:
            if self._state_problem is not None:
                self._backup.tell_chat(self._state_problem)
            self._check_directory()
            self._backup.clean_up_after_crash()
            self._plan_catch_up()
            self._started()
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _check_directory(self) -> None:
        """An unusable backup directory is reported at once (log and chat), but the daemon stays up:
        it may be a mount that is not there yet, and someone must hear about every failed night."""
        try:
            self._directory.ensure()
        except TgbackupdError as error:
            log.error(
                "The backup directory is not usable; backups will fail until it is fixed", error=str(error)
            )
            self._backup.tell_chat(f"the backup directory is not usable, so backups will fail: {error}")

    def _plan_catch_up(self) -> None:
        backup = self._config.backup
        if not (backup.enabled and backup.catch_up):
            return
        missed_slots = []
        for slot in self._schedules:
            last_attempt = self._last_attempt(slot)
            missed = missed_run(self._clock.now(), *slot, last_attempt)
            if missed is not None:
                log.warning(
                    f"The backup scheduled for {missed:%Y-%m-%d %H:%M} did not run (tgbackupd or the host "
                    f"was down); catching up in {backup.catch_up_delay_s} s",
                    missed=missed.isoformat(timespec="minutes"),
                    last_attempt=last_attempt.isoformat(timespec="seconds") if last_attempt else None,
                )
                missed_slots.append(slot)
        if missed_slots:
            self._catch_up = tuple(missed_slots)
            self._catch_up_at = time.monotonic() + backup.catch_up_delay_s

    def _started(self) -> None:
        status = self._commands.status()
        config = self._config
        if not config.telegram.configured:
            log.warning(
                "Telegram is not configured: backups will be kept locally only",
                missing=config.telegram.missing,
            )
        log.info(
            "tgbackupd started",
            version=__version__,
            database=status["database"],
            backup_enabled=config.backup.enabled,
            next_run=status["next_run"],
            telegram_configured=config.telegram.configured,
            chat_id=config.telegram.chat_id,
            socket=str(config.daemon.socket),
            backup_directory=status["backup_directory"],
            watchdog_interval_s=self._watchdog_every,
        )
        self._status_text = status_line(status)
        self._notifier.ready(self._status_text)

    def _main_loop(self) -> None:
        last_ping = float("-inf")
        tick = min(TICK_S, self._watchdog_every or TICK_S)
        while not self.should_exit:
            for schedule in self._schedules.values():
                schedule.run_pending()
            self._start_due_work()
            self._publish_status()
            now = time.monotonic()
            if self._watchdog_every is not None and now - last_ping >= self._watchdog_every:
                self._notifier.watchdog()
                last_ping = now
            time.sleep(tick)

    def _start_due_work(self) -> None:
        """Waiting and catch-up backups first, then what waits in the outbox; one job at a time."""
        if self._runner.current is not None:
            return
        if self._waiting:
            self._start(*self._waiting.pop(0))
        elif self._catch_up_at is not None and time.monotonic() >= self._catch_up_at:
            self._catch_up_at = None
            self._start(Trigger.CATCH_UP, Selection(slots=self._catch_up))
        elif self._outbox.is_due():
            self._start_redelivery()

    def _start_redelivery(self) -> None:
        with contextlib.suppress(TgbackupdError):  # a backup started in between: it drains the outbox
            self._runner.start(Trigger.REDELIVERY)

    def _publish_status(self) -> None:
        text = status_line(self._commands.status(count_backups=False))
        if text != self._status_text:
            self._status_text = text
            self._notifier.status(text)

    def _shutdown(self) -> None:
        self._notifier.stopping()
        running = self._runner.current
        log.info("Stopping tgbackupd", backup_running=running is not None)
        self._cancel.set()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while not self._runner.join(0.2):
            if self.force_exit or time.monotonic() > deadline:
                log.error("The running backup did not stop in time; exiting anyway")
                break
        self._control.close()
        self._fleet.events.close()
        log.info("tgbackupd stopped")
