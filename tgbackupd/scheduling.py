"""The daily timer, on a private `schedule.Scheduler` (never the module-level default one)."""

from collections.abc import Callable
from datetime import datetime, timedelta

import schedule


class DailySchedule:
    def __init__(self, hour: int, minute: int, job: Callable[[], None]) -> None:
        self._scheduler = schedule.Scheduler()
        self._scheduler.every().day.at(f"{hour:02d}:{minute:02d}").do(job)

    def run_pending(self) -> None:
        self._scheduler.run_pending()

    @property
    def next_run(self) -> datetime | None:
        """The next run, in local time (naive, as `schedule` keeps it)."""
        return self._scheduler.next_run


def missed_run(now: datetime, hour: int, minute: int, last_attempt: datetime | None) -> datetime | None:
    """Return the scheduled time that passed with no backup attempted since (tgbackupd or the host was
    down then), or None. With no backup ever attempted nothing was missed: a new install waits."""
    if last_attempt is None:
        return None
    slot = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if slot > now:
        slot -= timedelta(days=1)
    return slot if last_attempt < slot else None
