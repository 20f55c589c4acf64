"""The daily timer, on a private `schedule.Scheduler` (never the module-level default one), and when a
restore drill is due (verify.schedule)."""

from collections.abc import Callable
from dataclasses import dataclass
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


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DRILL_GRAMMAR = (
    'expected "off", "daily HH:MM", "weekly DAY HH:MM" (DAY: mon … sun) or "monthly N HH:MM" (N: 1 … 28), '
    'e.g. "weekly sun 04:30"'
)


class ScheduleError(ValueError):
    """A schedule that cannot be read; the message says what was expected."""


@dataclass(frozen=True)
class DrillSchedule:
    """When restore drills run, on the local wall clock (as backups do): every day, one day of the week
    (`weekday`, 0 = Monday) or one day of the month (`day`, 1 to 28, which every month has)."""

    every: str  # "daily", "weekly" or "monthly"
    hour: int
    minute: int
    weekday: int | None = None
    day: int | None = None

    @classmethod
    def parse(cls, text: str) -> "DrillSchedule | None":
        """`off` (None), `daily 04:30`, `weekly sun 04:30`, `monthly 1 04:30`; words in any case. Raise
        ScheduleError saying what was expected."""
        words = text.strip().lower().split()
        if words in ([], ["off"]):
            return None
        every, *rest = words
        if every not in ("daily", "weekly", "monthly") or len(rest) != (1 if every == "daily" else 2):
            raise ScheduleError(f"{_DRILL_GRAMMAR}, got {text!r}")
        hour, minute = _time_of_day(rest[-1])
        if every == "weekly":
            return cls(every, hour, minute, weekday=_weekday(rest[0]))
        if every == "monthly":
            if not rest[0].isdigit() or not 1 <= int(rest[0]) <= 28:
                raise ScheduleError(
                    f"the day of the month must be 1 … 28, which every month has, got {rest[0]!r} "
                    '(for the end of the month choose e.g. "monthly 28 04:30")'
                )
            return cls(every, hour, minute, day=int(rest[0]))
        return cls(every, hour, minute)

    @property
    def text(self) -> str:
        """As the configuration writes it: `weekly sun 04:30`."""
        which = f"{_WEEKDAYS[self.weekday][:3]} " if self.weekday is not None else ""
        which += f"{self.day} " if self.day is not None else ""
        return f"{self.every} {which}{self.hour:02d}:{self.minute:02d}"

    def describe(self) -> str:
        """As people say it: `every Sunday at 04:30`."""
        at = f"at {self.hour:02d}:{self.minute:02d}"
        if self.weekday is not None:
            return f"every {_WEEKDAYS[self.weekday].capitalize()} {at}"
        if self.day is not None:
            return f"on day {self.day} of every month {at}"
        return f"every day {at}"

    def latest_slot(self, now: datetime) -> datetime:
        """The last scheduled wall-clock time at or before `now` (naive, as `latest_slot` for backups)."""
        if self.weekday is not None:
            wall = now.replace(tzinfo=None)
            slot = wall.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
            slot -= timedelta(days=(wall.weekday() - self.weekday) % 7)
            return slot if slot <= wall else slot - timedelta(days=7)
        if self.day is not None:
            wall = now.replace(tzinfo=None)
            slot = wall.replace(day=self.day, hour=self.hour, minute=self.minute, second=0, microsecond=0)
            return slot if slot <= wall else _month_before(slot)
        return latest_slot(now, self.hour, self.minute)

    def next_slot(self, now: datetime) -> datetime:
        """The first scheduled wall-clock time after `now` (naive)."""
        slot = self.latest_slot(now)
        if self.weekday is not None:
            return slot + timedelta(days=7)
        if self.day is not None:
            return slot.replace(year=slot.year + slot.month // 12, month=slot.month % 12 + 1)
        return slot + timedelta(days=1)

    def due(self, now: datetime, after: datetime) -> datetime | None:
        """The latest scheduled time, if it came after `after` (the last drill's start; compared on the
        wall clock): the one a drill is due for now, or None. However many passed since, one is due."""
        slot = self.latest_slot(now)
        return slot if slot > after.replace(tzinfo=None) else None


def _time_of_day(text: str) -> tuple[int, int]:
    hour, _, minute = text.partition(":")
    if not (hour.isdigit() and minute.isdigit() and len(minute) == 2 and 0 <= int(hour) <= 23):
        raise ScheduleError(f"expected a time of day as HH:MM (00:00 … 23:59), got {text!r}")
    if not 0 <= int(minute) <= 59:
        raise ScheduleError(f"expected a time of day as HH:MM (00:00 … 23:59), got {text!r}")
    return int(hour), int(minute)


def _weekday(text: str) -> int:
    for index, name in enumerate(_WEEKDAYS):
        if text in (name, name[:3]):
            return index
    raise ScheduleError(f"expected a day of the week (mon, tue, … sun, or monday … sunday), got {text!r}")


def _month_before(slot: datetime) -> datetime:
    return slot.replace(year=slot.year - (slot.month == 1), month=(slot.month - 2) % 12 + 1)
