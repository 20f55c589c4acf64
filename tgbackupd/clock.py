"""All clock reads go through here, so tests can set the time (fail2ban's MyTime, without the globals)."""

import time
from datetime import datetime


class Clock:
    def now(self) -> datetime:
        """Return the local time, aware of its UTC offset: file names and schedules use local time."""
        return datetime.now().astimezone()

    def monotonic(self) -> float:
        return time.monotonic()
