"""verify.schedule: its grammar, when a drill is due (an injected clock), catch-up after the host was down;
what a backup's verification recorded, read back for the comparison; and a drill queued behind a backup,
never beside it."""

import threading
from datetime import UTC, datetime, timedelta

import pytest

from tgbackupd.clock import Clock
from tgbackupd.config import load_config
from tgbackupd.drilling import DrillResult, Drills, compare, recorded_counts
from tgbackupd.errors import ConfigError
from tgbackupd.events import Events
from tgbackupd.runner import BackupBusy, BackupRunner, Selection
from tgbackupd.scheduling import DrillSchedule, ScheduleError
from tgbackupd.statefile import open_store
from tgbackupd.states import Trigger

# A Thursday.
THURSDAY = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


class SetClock(Clock):
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment


@pytest.mark.parametrize(
    ("text", "written", "said"),
    [
        ("daily 4:30", "daily 04:30", "every day at 04:30"),
        ("weekly sun 04:30", "weekly sun 04:30", "every Sunday at 04:30"),
        ("Weekly MONDAY 23:59", "weekly mon 23:59", "every Monday at 23:59"),
        ("monthly 1 03:00", "monthly 1 03:00", "on day 1 of every month at 03:00"),
    ],
)
def test_schedules_are_read_in_any_case_and_written_back_plainly(text, written, said):
    schedule = DrillSchedule.parse(text)
    assert schedule is not None
    assert (schedule.text, schedule.describe()) == (written, said)


@pytest.mark.parametrize("text", ["off", "OFF", "", "  "])
def test_off_or_nothing_means_no_scheduled_drills(text):
    assert DrillSchedule.parse(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("weekly", 'expected "off", "daily HH:MM"'),
        ("yearly 1 04:00", 'expected "off", "daily HH:MM"'),
        ("daily sun 04:00", 'expected "off", "daily HH:MM"'),
        ("daily 24:00", "expected a time of day as HH:MM"),
        ("daily 4:5", "expected a time of day as HH:MM"),
        ("weekly someday 04:00", "expected a day of the week"),
        ("monthly 31 04:00", "must be 1 … 28, which every month has"),
        ("monthly first 04:00", "must be 1 … 28"),
    ],
)
def test_a_schedule_that_cannot_be_read_says_what_was_expected(text, problem):
    with pytest.raises(ScheduleError, match=problem.replace("(", r"\(")):
        DrillSchedule.parse(text)


def environment_of(tmp_path, config: str = "", **variables: str) -> dict[str, str]:
    (tmp_path / "config.toml").write_text(config)
    return {
        "TGBACKUPD_CONFIG": str(tmp_path / "config.toml"),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1/shop",
        "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path),
        **variables,
    }


def test_a_bad_schedule_in_the_environment_is_a_configuration_error_naming_the_key(tmp_path):
    environment = environment_of(
        tmp_path,
        TGBACKUPD_VERIFY_SCHEDULE="weekly funday 04:30",
        TELEGRAM_BOT_TOKEN="123456789:fake-token-for-tests-only",
        TELEGRAM_CHAT_ID="-100123456789",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(None, environment)
    assert (
        "verify.schedule = 'weekly funday 04:30' (from environment variable TGBACKUPD_VERIFY_SCHEDULE)"
        in str(raised.value)
    )
    assert "expected a day of the week" in str(raised.value)
    environment["TGBACKUPD_VERIFY_SCHEDULE"] = "weekly sun 04:30"
    assert load_config(None, environment).verify.schedule == DrillSchedule("weekly", 4, 30, weekday=6)


def test_the_latest_and_next_times_of_each_kind_of_schedule():
    now = datetime(2026, 12, 3, 8, 0)
    weekly, monthly, daily = (
        DrillSchedule.parse(t) for t in ("weekly sun 04:30", "monthly 3 09:00", "daily 08:00")
    )
    assert weekly is not None and monthly is not None and daily is not None
    assert (weekly.latest_slot(now), weekly.next_slot(now)) == (
        datetime(2026, 11, 29, 4, 30),
        datetime(2026, 12, 6, 4, 30),
    )
    assert (monthly.latest_slot(now), monthly.next_slot(now)) == (
        datetime(2026, 11, 3, 9),
        datetime(2026, 12, 3, 9),
    )
    assert monthly.latest_slot(datetime(2026, 1, 2)) == datetime(2025, 12, 3, 9)
    assert (daily.latest_slot(now), daily.next_slot(now)) == (now, datetime(2026, 12, 4, 8))


def drills_at(tmp_path, now: datetime) -> tuple[Drills, SetClock]:
    clock = SetClock(now)
    return Drills(open_store(tmp_path / "state.db").store, Events(), clock), clock


def test_a_new_install_waits_for_the_first_scheduled_time_then_drills_once(tmp_path):
    schedule = DrillSchedule.parse("weekly sun 04:30")
    drills, clock = drills_at(tmp_path, THURSDAY)
    started = THURSDAY

    assert drills.due(schedule, started, catch_up=True) is None  # last Sunday was before it started
    clock.moment = datetime(2026, 12, 6, 4, 29, tzinfo=UTC)
    assert drills.due(schedule, started, catch_up=True) is None
    clock.moment = datetime(2026, 12, 6, 4, 30, tzinfo=UTC)
    assert drills.due(schedule, started, catch_up=True) == datetime(2026, 12, 6, 4, 30)
    drills.note_attempt()
    clock.moment += timedelta(hours=1)
    assert drills.due(schedule, started, catch_up=True) is None
    assert drills.due(None, started, catch_up=True) is None


def test_a_drill_missed_while_the_host_was_down_is_caught_up_once_after_a_restart(tmp_path):
    schedule = DrillSchedule.parse("daily 04:30")
    drills, _ = drills_at(tmp_path, datetime(2026, 12, 1, 4, 30, tzinfo=UTC))
    drills.note_attempt()
    drills._store.close()

    # Down from the 1st to the 3rd: two drills were missed; one is due at start, none more after it.
    restarted, _ = drills_at(tmp_path, THURSDAY)
    assert restarted.last_attempt == datetime(2026, 12, 1, 4, 30, tzinfo=UTC)
    assert restarted.due(schedule, THURSDAY, catch_up=True) == datetime(2026, 12, 3, 4, 30)
    assert restarted.due(schedule, THURSDAY, catch_up=False) is None  # backup.catch_up = false
    restarted.note_attempt()
    assert restarted.due(schedule, THURSDAY, catch_up=True) is None


def test_the_verifications_counts_are_read_from_what_it_recorded_and_compared():
    assert recorded_counts("verified: restored into a scratch database, 3 tables, 6001 rows") == (3, 6001)
    assert recorded_counts("NOT VERIFIED: psql failed") is None
    assert recorded_counts(None) is None
    assert compare(3, 6001, None) == ("no earlier count to compare with", None)
    assert compare(3, 6001, (3, 6001))[1] is None
    comparison, problem = compare(3, 6000, (3, 6001))
    assert comparison == "its verification counted 3 tables, 6001 rows when it was made"
    assert problem is not None and "3 tables and 6000 rows" in problem


def test_scheduled_drills_without_telegram_are_a_configuration_error(tmp_path):
    environment = environment_of(tmp_path, '[verify]\nschedule = "daily 04:30"\n')
    with pytest.raises(ConfigError, match="drills the backups in the Telegram chat, which is not configured"):
        load_config(None, environment)


def test_a_drill_asked_for_during_a_backup_waits_for_it_and_never_runs_beside_it():
    backing_up, release = threading.Event(), threading.Event()
    overlapped: list[bool] = []

    def run_backup(trigger, selection):
        backing_up.set()
        release.wait(10)
        backing_up.clear()
        return []

    def drill(selection):
        overlapped.append(backing_up.is_set())
        return [DrillResult(prefix="shop", database="shop on db", at="now", duration_s=0.0)]

    runner = BackupRunner(run_backup, None, threading.Event(), drill=drill)
    runner.start(Trigger.SCHEDULED)
    assert backing_up.wait(5)
    with pytest.raises(BackupBusy, match="a scheduled backup is already running"):
        runner.start(Trigger.DRILL)
    waiting: list = []
    waiter = threading.Thread(
        target=lambda: waiting.append(runner.start_when_free(Trigger.DRILL, Selection()))
    )
    waiter.start()
    assert not overlapped
    release.set()
    waiter.join(10)
    (drilling,) = waiting
    assert drilling.done.wait(10)
    assert overlapped == [False]
    assert [result.prefix for result in drilling.drills] == ["shop"]
    assert runner.last_backup is None  # a drill is not a backup: status's last_backup stays
