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
    """Return the scheduled time (local wall-clock, naive) that passed with no backup attempted since
    (tgbackupd or the host was down then), or None. With no backup ever attempted nothing was missed: a
    new install waits.

    Times are compared on the wall clock, each as it was recorded, since the schedule runs by the wall
    clock: on the day the clocks go back, a backup at 02:30 summer time is that day's 02:30, though
    02:30 winter time comes an hour later; on the day they go forward, the 02:30 that never came is due
    from 03:00 on."""
    if last_attempt is None:
        return None
    slot = latest_slot(now, hour, minute)
    return slot if last_attempt.replace(tzinfo=None) < slot else None


def repeated_slot(now: datetime, hour: int, minute: int, last_attempt: datetime | None) -> bool:
    """Whether the scheduled time now due was backed up already, before the clocks went back: on that
    night the wall clock shows it twice, an hour apart. Only then is a scheduled backup skipped: a last
    attempt that merely lies ahead (the clock was set back by hand) never silences the schedule."""
    if last_attempt is None or last_attempt.utcoffset() == now.utcoffset():
        return False
    slot = latest_slot(now, hour, minute)
    return slot <= last_attempt.replace(tzinfo=None) < slot + timedelta(hours=1)


def latest_slot(now: datetime, hour: int, minute: int) -> datetime:
    """The last scheduled wall-clock time at or before `now` (naive: the wall clock has no offset)."""
    wall = now.replace(tzinfo=None)
    slot = wall.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return slot if slot <= wall else slot - timedelta(days=1)
