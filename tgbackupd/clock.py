"""All clock reads go through here, so tests can set the time (fail2ban's MyTime, without the globals)."""

import threading
import time
from datetime import datetime


class Clock:
    def now(self) -> datetime:
        """Return the local time, aware of its UTC offset: file names and schedules use local time."""
        return datetime.now().astimezone()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, cancel: threading.Event, seconds: float) -> bool:
        """Let `seconds` pass, unless `cancel` is set first; return whether it was (a test's clock may
        move on at once instead)."""
        return cancel.wait(seconds)
