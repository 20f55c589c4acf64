"""The daemon's lifecycle, after uvicorn's: signals only set flags, one main loop ticks, runs the schedule,
pings the watchdog while it is healthy, and shutdown is bounded in time."""

import os
import signal
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from types import FrameType

import structlog

from . import __version__
from .backup import Backup
from .clock import Clock
from .commands import Commands, status_line
from .config import Config
from .control import ControlServer
from .errors import TgbackupdError
from .runner import BackupBusy, BackupRunner
from .scheduling import DailySchedule
from .state import StateFile
from .storage import BackupDirectory
from .systemd import Notifier, watchdog_interval

SHUTDOWN_TIMEOUT_S = 20.0
TICK_S = 1.0

log = structlog.stdlib.get_logger("tgbackupd.daemon")


class Daemon:
    def __init__(
        self, config: Config, environ: Mapping[str, str] = os.environ, clock: Clock | None = None
    ) -> None:
        self._config = config
        self._clock = clock or Clock()
        self._notifier = Notifier(environ)
        self._watchdog_every = watchdog_interval(environ)
        self._cancel = threading.Event()
        self.should_exit = False
        self.force_exit = False
        backup = Backup(config, clock=self._clock, cancel=self._cancel)
        self._runner = BackupRunner(
            backup.run, StateFile(config.daemon.state_file), self._cancel, self._clock
        )
        self._schedule = (
            DailySchedule(config.backup.hour, config.backup.minute, self._run_scheduled)
            if config.backup.enabled
            else None
        )
        self._commands = Commands(
            config, self._runner, self._next_run, self._clock.now().isoformat(timespec="seconds")
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
        return self._schedule.next_run if self._schedule else None

    def _run_scheduled(self) -> None:
        try:
            self._runner.start("scheduled")
        except BackupBusy as error:
            log.warning("Scheduled backup skipped: a backup is already running", error=str(error))
        except TgbackupdError as error:
            log.warning("Scheduled backup not started", error=str(error))

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_exit)
        signal.signal(signal.SIGHUP, self.handle_reload)
        try:
            BackupDirectory(self._config.backup.directory, self._config.backup.prefix).ensure()
            self._control.start()
        except TgbackupdError as error:
            log.error("tgbackupd cannot start", error=str(error))
            return error.exit_code
        try:
            self._started()
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _started(self) -> None:
        status = self._commands.status()
        config = self._config
        if not config.telegram.configured:
            missing = [
                name
                for name, value in (
                    ("TELEGRAM_BOT_TOKEN", config.telegram.bot_token),
                    ("TELEGRAM_CHAT_ID", config.telegram.chat_id),
                )
                if not value
            ]
            log.warning("Telegram is not configured: backups will be kept locally only", missing=missing)
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
            if self._schedule is not None:
                self._schedule.run_pending()
            self._publish_status()
            now = time.monotonic()
            if self._watchdog_every is not None and now - last_ping >= self._watchdog_every:
                self._notifier.watchdog()
                last_ping = now
            time.sleep(tick)

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
        log.info("tgbackupd stopped")
