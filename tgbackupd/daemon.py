"""The daemon's lifecycle, after uvicorn's: signals only set flags, one main loop ticks, runs the schedule,
reloads the configuration when asked, pings the watchdog while it is healthy, and shutdown is bounded in
time."""

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
from .chat_commands import chat_commands_for
from .clock import Clock
from .commands import Commands, status_line
from .config import Config, load_config
from .control import ControlServer
from .drilling import Drills
from .errors import TgbackupdError
from .events import Events
from .fleet import Fleet, Slot, first_directory
from .integrations import listeners
from .logs import configure_logging
from .reloading import (
    ReloadOutcome,
    ReloadRequests,
    changed_keys,
    keeping_restart_keys,
    needing_restart,
    restart_notice,
)
from .runner import EVERY_DATABASE, BackupBusy, BackupRunner, RunningBackup, Selection
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
        config_path: str | None = None,
    ) -> None:
        """`config_path`: the --config the daemon was started with, read again (with the same process
        environment) at each reload."""
        self._config = config
        self._config_path = config_path
        self._store = store
        self._directory = directory
        self._state_problem = state_problem  # told to the chat once started
        self._clock = clock or Clock()
        self._notifier = Notifier(environ)
        self._watchdog_every = watchdog_interval(environ)
        self._cancel = threading.Event()
        self.should_exit = False
        self.force_exit = False
        self.should_reload = False
        self._reloads = ReloadRequests()
        self._secrets = set(config.secrets())  # scrubbed from the log: the running ones and any before
        # One set of listeners for the process, replaced whole on reload.
        self._events = Events(listeners(config, store))
        # One set of drill results for the process: a drill running during a reload records into it.
        self._drills = Drills(store, self._events, self._clock)
        self._fleet = self._fleet_of(config, directory)
        self._backup = self._fleet.first
        self._outbox = self._backup.outbox
        # A reload's databases wait here while a backup runs: it finishes with its own, and the next job
        # takes these (_fleet_for_next_job).
        self._fleet_lock = threading.Lock()
        self._new_fleet: tuple[Fleet, BackupDirectory] | None = None
        self._runner = BackupRunner(
            lambda trigger, selection: self._fleet_for_next_job().run(trigger, selection),
            store.last_result(),
            self._cancel,
            self._clock,
            redeliver=lambda: self._fleet_for_next_job().first.redeliver(),
            drill=lambda selection: self._fleet_for_next_job().drill(selection),
        )
        self._started_at = self._clock.now()
        # One timer for each time of day some database is backed up at (the `backup` section's, and
        # each entry's own hour and minute).
        self._schedules: dict[Slot, DailySchedule] = {}
        self._reschedule(config, self._fleet)
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
            chat_commands=lambda: self._chat.describe() if self._chat else None,
            reloads=self._reloads,
        )
        # Commands in the chat (telegram.commands): a poller of its own, started and stopped with the daemon.
        self._chat = chat_commands_for(config, self._commands, store, self._cancel)
        self._control = ControlServer(
            config.daemon.socket, self._commands.handle, config.daemon.control_group
        )

    def handle_exit(self, signum: int, frame: FrameType | None) -> None:
        """First signal: stop gracefully. Second: stop waiting for the running backup."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    def handle_reload(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP (systemctl reload): reload the configuration in the main loop."""
        self.should_reload = True

    def _fleet_of(self, config: Config, directory: BackupDirectory) -> Fleet:
        return Fleet(
            config,
            self._store,
            directory,
            clock=self._clock,
            cancel=self._cancel,
            events=self._events,
            drills=self._drills,
        )

    def _reschedule(self, config: Config, fleet: Fleet) -> None:
        """Keep the timers of the times still scheduled (one due now still fires), add the new ones and
        drop the rest."""
        slots = fleet.slots if config.backup.enabled else []
        self._schedules = {
            slot: self._schedules.get(slot) or DailySchedule(*slot, self._scheduled(slot)) for slot in slots
        }

    def _fleet_for_next_job(self) -> Fleet:
        """The databases a job starting now backs up: a reload's, if one came since the last job began."""
        with self._fleet_lock:
            if self._new_fleet is not None:
                fleet, directory = self._new_fleet
                self._new_fleet = None
                fleet.last.update(self._fleet.last)  # what the old one backed up meanwhile
                self._fleet, self._backup, self._outbox, self._directory = (
                    fleet,
                    fleet.first,
                    fleet.first.outbox,
                    directory,
                )
                self._outbox.refresh()
                self._commands.use(fleet, self._outbox, directory)
            return self._fleet

    def _reload(self) -> None:
        """Read and check the configuration again; apply it, or keep the running one and say why. Tell
        systemd (RELOADING=1, then READY=1 whatever the outcome) and whoever asked over the socket."""
        answered = self._reloads.begin()
        self._notifier.reloading()
        at = self._clock.now().isoformat(timespec="seconds")
        try:
            outcome = self._apply(at, load_config(self._config_path, os.environ))
        except TgbackupdError as error:
            outcome = ReloadOutcome(at, ok=False, error=str(error))
            log.error("Configuration reload failed; the running configuration stays", error=str(error))
        except Exception as error:  # a bug must not take the running daemon down with the new configuration
            outcome = ReloadOutcome(at, ok=False, error=f"internal error: {type(error).__name__}")
            log.exception(
                "Configuration reload failed; the running configuration stays", error=type(error).__name__
            )
        self._reloads.finish(answered, outcome)
        self._status_text = status_line(self._commands.status(count_backups=False))
        self._notifier.ready(self._status_text)

    def _apply(self, at: str, read: Config) -> ReloadOutcome:
        """Make `read` the running configuration, but for the keys only a restart changes. Everything that
        can fail is built before anything is changed: a failure leaves the running configuration whole."""
        running = self._config
        restart_required = needing_restart(changed_keys(running, read))
        new = keeping_restart_keys(read, running)
        changed = changed_keys(running, new)
        directory = first_directory(new)
        fleet = self._fleet_of(new, directory)
        self._control.change_group(new.daemon.control_group)
        # Last: listeners start threads (pings) and write files (metrics), and nothing after them fails.
        new_listeners = listeners(new, self._store)
        # From here on nothing fails: the new configuration takes over.
        self._config = new
        self._commands.reconfigure(new)
        self._events.replace(new_listeners)
        with self._fleet_lock:
            self._new_fleet = (fleet, directory)
        self._reschedule(new, fleet)
        if any(key.startswith("telegram.") for key in changed):
            self._restart_chat_commands(new)
        if new.daemon.log_level != running.daemon.log_level or not set(new.secrets()) <= self._secrets:
            self._secrets |= set(new.secrets())
            configure_logging(new.daemon.log_level, self._secrets)
        outcome = ReloadOutcome(at, ok=True, changed=tuple(changed), restart_required=tuple(restart_required))
        log.info(
            "Configuration reloaded",
            changed=changed,
            restart_required=restart_required,
            backup_running=self._runner.current is not None,
            next_run=self._commands.status(count_backups=False)["next_run"],
        )
        if restart_required:
            log.warning(
                "Configuration reloaded, but some changes wait for a restart",
                restart_required=restart_required,
                error=restart_notice(restart_required),
            )
        if not new.telegram.configured:
            log.warning(
                "Telegram is not configured: backups will be kept locally only", missing=new.telegram.missing
            )
        return outcome

    def _restart_chat_commands(self, config: Config) -> None:
        """The chat's commands follow new Telegram settings: the old poller stops, a new one (if asked
        for) polls with the new token, chat and admins."""
        if self._chat:
            self._chat.stop()
        self._chat = chat_commands_for(config, self._commands, self._store, self._cancel)
        if self._chat:
            self._chat.start()

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
            if self._chat:
                self._chat.start()
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
            restore_drills=status["drill_schedule"],
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
            if self.should_reload or self._reloads.pending():
                self.should_reload = False
                self._reload()
            if self._runner.current is None:
                self._fleet_for_next_job()  # the databases a reload brought, while no backup runs
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
        """Waiting and catch-up backups first, then a restore drill, then what waits in the outbox; one job
        at a time."""
        if self._runner.current is not None:
            return
        if self._waiting:
            self._start(*self._waiting.pop(0))
        elif self._catch_up_at is not None and time.monotonic() >= self._catch_up_at:
            self._catch_up_at = None
            self._start(Trigger.CATCH_UP, Selection(slots=self._catch_up))
        elif self._catch_up_at is None and self._drill_due():
            self._start(Trigger.DRILL, EVERY_DATABASE)
        elif self._outbox.is_due():
            self._start_redelivery()

    def _drill_due(self) -> bool:
        """A restore drill is due (verify.schedule): after the backups due before it, never beside one."""
        drills, config = self._fleet.drills, self._config
        return drills.due(config.verify.schedule, self._started_at, config.backup.catch_up) is not None

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
        if self._chat:
            self._chat.stop()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while not self._runner.join(0.2):
            if self.force_exit or time.monotonic() > deadline:
                log.error("The running backup did not stop in time; exiting anyway")
                break
        self._control.close()
        self._fleet.events.close()
        log.info("tgbackupd stopped")
