"""systemd's notify protocol: the only module that imports sdnotify."""

import os
import time
from collections.abc import Mapping

import sdnotify


class Notifier:
    """Sends READY/RELOADING/STATUS/WATCHDOG/STOPPING when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._notifier = sdnotify.SystemdNotifier() if environ.get("NOTIFY_SOCKET") else None

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        """A reload begins; READY=1 (`ready`) ends it, whatever its outcome. systemd 253 and later want
        the CLOCK_MONOTONIC time with it, to tell this reload from an earlier one's late message."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=Reloading the configuration")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=Stopping")


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Return how often to ping the watchdog (half its timeout, as sd_watchdog_enabled advises), or None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2
