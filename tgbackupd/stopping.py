"""Why a job must stop before it is done: tgbackupd is stopping (SIGTERM), or the backup ran past its
deadline (backup.timeout). The programs a job runs (pg_dump, psql) are ended as soon as either happens,
also while they print nothing, as a pg_dump waiting for a lock does."""

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from .clock import Clock
from .errors import Cancelled, TgbackupdError, TimedOut

WATCH_INTERVAL_S = 0.2
TERMINATE_GRACE_S = 5.0


def duration_text(seconds: float) -> str:
    """`21600` as people read a duration: `6h0m`; `300`: `5m0s`; `2`: `2s`."""
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60}s"
    return f"{whole}s"


class Stop:
    """Tells a job when it must stop: once `cancel` is set, or `timeout_s` after it was made."""

    def __init__(self, cancel: threading.Event, timeout_s: float | None = None, clock: Clock | None = None):
        self.cancel = cancel
        self._clock = clock or Clock()
        self._timeout_s = timeout_s
        self._deadline = None if timeout_s is None else self._clock.monotonic() + timeout_s

    def reason(self, ended: str) -> TgbackupdError | None:
        """The error to end the job with now, if it must stop; `ended` says what was ended (and undone)."""
        if self.cancel.is_set():
            return Cancelled(f"the backup was stopped because tgbackupd is stopping; {ended}")
        if self._deadline is not None and self._clock.monotonic() >= self._deadline:
            assert self._timeout_s is not None
            return TimedOut(
                f"the backup took longer than backup.timeout = {self._timeout_s:g} s "
                f"({duration_text(self._timeout_s)}); {ended}. Raise backup.timeout if the database needs "
                "longer, or find what holds the backup up (locks: pg_locks and pg_stat_activity)"
            )
        return None


class Watch:
    """Ends a running program the moment its job must stop: a thread looks a few times a second. Once the
    program is gone and the watch closed, `reason` says why the job stopped it, if it did."""

    def __init__(self, stop: Stop, running: Callable[[], bool], end: Callable[[], None], ended: str) -> None:
        self.reason: TgbackupdError | None = None
        self._stop = stop
        self._running = running
        self._end = end
        self._ended = ended
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stop-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set() and self._running():
            reason = self._stop.reason(self._ended)
            if reason is not None:
                self.reason = reason
                self._end()
                return
            self._done.wait(WATCH_INTERVAL_S)

    def close(self, failed: bool) -> None:
        """Stop watching. A program that `failed` while its job had to stop was ended for that reason
        too, also if someone else was first: under systemd, stopping signals every process of the
        service at once."""
        self._done.set()
        self._thread.join()
        if self.reason is None and failed:
            self.reason = self._stop.reason(self._ended)


def end(process: subprocess.Popen[Any], group: bool = True) -> None:
    """End a program (SIGTERM, then SIGKILL if it lingers) and reap it. With `group`, the signals go to
    its whole process group (it was started in its own session): a wrapper script's children would
    otherwise keep its pipes open after it is gone."""

    def send(signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            if group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)

    if process.poll() is None:
        send(signal.SIGTERM)
        try:
            process.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            process.wait()
