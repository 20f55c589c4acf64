from datetime import datetime

from freezegun import freeze_time

from tgbackupd.scheduling import DailySchedule


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
