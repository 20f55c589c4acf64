from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from tgbackupd.scheduling import DailySchedule, missed_run, repeated_slot


def test_next_run_is_today_at_the_hour_when_it_has_not_passed_yet():
    with freeze_time("2025-12-02 01:30:00"):
        assert DailySchedule(3, 0, lambda: None).next_run == datetime(2025, 12, 2, 3, 0)


def test_next_run_is_tomorrow_once_the_hour_has_passed():
    with freeze_time("2025-12-02 03:00:01"):
        assert DailySchedule(3, 0, lambda: None).next_run == datetime(2025, 12, 3, 3, 0)


def test_the_job_runs_once_when_its_time_comes_and_then_again_a_day_later():
    runs = []
    with freeze_time("2025-12-02 23:59:00") as clock:
        schedule = DailySchedule(0, 15, lambda: runs.append(datetime.now()))
        schedule.run_pending()
        assert runs == []
        clock.move_to("2025-12-03 00:15:00")
        schedule.run_pending()
        schedule.run_pending()
        assert runs == [datetime(2025, 12, 3, 0, 15)]
        assert schedule.next_run == datetime(2025, 12, 4, 0, 15)


BERLIN = ZoneInfo("Europe/Berlin")


def berlin(text: str, fold: int = 0) -> datetime:
    """A Berlin wall-clock time as tgbackupd holds it (the clock's reading, a recorded `started_at`): with
    the UTC offset in force then. fold=1 is the second 02:xx of the night the clocks go back."""
    local = datetime.fromisoformat(text).replace(tzinfo=BERLIN, fold=fold)
    return datetime.fromisoformat(local.isoformat())


def test_a_run_missed_while_the_host_was_down_is_found_and_a_recent_one_is_not():
    now = berlin("2025-12-03 09:00")
    assert missed_run(now, 3, 0, berlin("2025-12-01 03:00")) == datetime(2025, 12, 3, 3, 0)
    assert missed_run(now, 3, 0, berlin("2025-12-03 03:00")) is None
    assert missed_run(now, 12, 0, berlin("2025-12-02 12:00")) is None  # today's has not come yet
    assert missed_run(now, 12, 0, berlin("2025-12-01 12:00")) == datetime(2025, 12, 2, 12, 0)
    assert missed_run(now, 3, 0, None) is None  # a new install waits for its first time


@pytest.mark.parametrize("restart", ["2025-10-26 02:45", "2025-10-26 03:10", "2025-10-26 09:00"])
def test_a_restart_after_the_clocks_went_back_finds_nothing_missed_when_02_30_summer_time_was_backed_up(
    restart,
):
    summer_0230 = berlin("2025-10-26 02:30")  # +02:00; the same wall-clock time comes again at +01:00
    now = berlin(restart, fold=1)
    assert summer_0230.utcoffset() != now.utcoffset()
    assert missed_run(now, 2, 30, summer_0230) is None


def test_the_second_02_30_of_the_night_the_clocks_go_back_is_not_a_time_to_back_up_again():
    # Restarted at 02:15 winter time, the schedule comes to 02:30 a second time that night.
    assert missed_run(berlin("2025-10-26 02:30", fold=1), 2, 30, berlin("2025-10-26 02:30")) is None
    assert missed_run(berlin("2025-10-27 02:30"), 2, 30, berlin("2025-10-26 02:30")) is not None


def test_a_day_whose_02_30_never_came_gets_its_backup_exactly_once():
    # 2025-03-30: the clocks go from 02:00 straight to 03:00, so that day has no 02:30.
    down_all_night = missed_run(berlin("2025-03-30 05:00"), 2, 30, berlin("2025-03-29 02:30"))
    assert down_all_night == datetime(2025, 3, 30, 2, 30)  # caught up once
    assert missed_run(berlin("2025-03-30 06:00"), 2, 30, berlin("2025-03-30 05:01")) is None
    made_at_three = berlin("2025-03-30 03:00")  # the schedule fires at the first minute past 02:30
    assert missed_run(berlin("2025-03-30 04:00"), 2, 30, made_at_three) is None
    assert missed_run(berlin("2025-03-31 02:30"), 2, 30, made_at_three) == datetime(2025, 3, 31, 2, 30)


def test_only_the_second_02_30_of_the_night_the_clocks_go_back_is_skipped_never_a_later_night():
    summer_0230 = berlin("2025-10-26 02:30")
    assert repeated_slot(berlin("2025-10-26 02:30", fold=1), 2, 30, summer_0230)
    assert not repeated_slot(berlin("2025-10-27 02:30"), 2, 30, summer_0230)
    assert not repeated_slot(berlin("2025-10-26 02:30", fold=1), 2, 30, None)


def test_a_last_backup_that_lies_ahead_never_silences_the_schedule():
    # The clock was set back by months (a VM snapshot, a wrong hardware clock corrected): the recorded
    # last attempt is in the future, and every scheduled night must still be backed up.
    ahead = berlin("2026-09-01 03:00")
    for night in ("2026-03-10 03:00", "2026-03-11 03:00", "2026-08-31 03:00"):
        assert not repeated_slot(berlin(night), 3, 0, ahead)
