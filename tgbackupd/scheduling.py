"""The daily timer, on a private `schedule.Scheduler` (never the module-level default one)."""

from collections.abc import Callable
from datetime import datetime

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
