"""The retention policy alone: generated histories in, verdicts out, no files."""

from datetime import date, datetime, timedelta

import pytest

from tgbackupd.config import KeepRules, load_config
from tgbackupd.errors import ConfigError
from tgbackupd.retention import (
    NEWEST_GOOD,
    NEWEST_MADE,
    UNDELIVERED,
    Candidate,
    candidates,
    decide,
    made_at,
    rules_for,
)
from tgbackupd.states import DeliveryState


def nights(
    first: date, last: date, at: str = "030000", skip: frozenset[date] = frozenset()
) -> list[Candidate]:
    """A backup each night from `first` to `last`, all delivered (good)."""
    days = (first + timedelta(days=offset) for offset in range((last - first).days + 1))
    return [
        Candidate(name, made_at(name), good=True)
        for day in days
        if day not in skip
        for name in [f"shop_backup_{day:%Y%m%d}_{at}.sql.gz"]
    ]


def kept_days(verdicts) -> set[date]:
    return {made_at(verdict.name).date() for verdict in verdicts if verdict.kept}


def test_keep_alone_keeps_the_newest_n_as_it_always_did():
    verdicts = decide(nights(date(2026, 11, 1), date(2026, 11, 30)), KeepRules(last=7))

    assert kept_days(verdicts) == {date(2026, 11, day) for day in range(24, 31)}
    assert [verdict.reasons for verdict in verdicts[:2]] == [("last 7", NEWEST_GOOD), ("last 7",)]
    assert all(verdict.reasons == () for verdict in verdicts[7:])


def test_a_year_of_nights_keeps_the_newest_of_each_counted_day_week_month_and_year():
    history = nights(date(2026, 1, 1), date(2026, 12, 31))

    verdicts = decide(history, KeepRules(last=3, daily=7, weekly=4, monthly=12, yearly=3))

    month_ends = {date(2026, month + 1, 1) - timedelta(days=1) for month in range(1, 12)}
    assert kept_days(verdicts) == (
        {date(2026, 12, day) for day in range(25, 32)}  # daily: the last 7 nights
        | {date(2026, 12, 20), date(2026, 12, 13)}  # weekly: the Sundays of W51 and W50 (W52's is the 27th)
        | month_ends  # monthly: January to November (December's is the 31st)
    )
    by_name = {made_at(verdict.name).date(): verdict.reasons for verdict in verdicts}
    assert by_name[date(2026, 12, 31)] == (
        "last 3",
        "daily 2026-12-31",
        "weekly 2026-W53",
        "monthly 2026-12",
        "yearly 2026",  # one year has backups: three years are not made up
        NEWEST_GOOD,
    )
    assert by_name[date(2026, 12, 27)] == ("daily 2026-12-27", "weekly 2026-W52")
    assert by_name[date(2026, 2, 28)] == ("monthly 2026-02",)
    assert by_name[date(2026, 1, 30)] == ()


def test_periods_without_a_backup_are_not_counted_so_a_gap_keeps_older_nights():
    # restic and borg count days that have a backup, not calendar days: a week the server was down
    # keeps 3 nights from before it.
    outage = frozenset(date(2026, 12, day) for day in range(20, 28))
    history = nights(date(2026, 12, 1), date(2026, 12, 31), skip=outage)

    verdicts = decide(history, KeepRules(last=0, daily=7))

    assert kept_days(verdicts) == {date(2026, 12, day) for day in (17, 18, 19, 28, 29, 30, 31)}


def test_several_backups_a_day_keep_only_the_newest_of_each_day():
    morning = nights(date(2026, 12, 1), date(2026, 12, 10), at="030000")
    evening = nights(date(2026, 12, 1), date(2026, 12, 10), at="213000")

    verdicts = decide(morning + evening, KeepRules(last=1, daily=5))

    kept = sorted(verdict.name for verdict in verdicts if verdict.kept)
    assert kept == [f"shop_backup_202612{day:02d}_213000.sql.gz" for day in range(6, 11)]


def test_an_iso_week_runs_across_new_year_and_a_year_is_counted_by_its_own_dates():
    history = nights(date(2026, 12, 21), date(2027, 1, 6))

    verdicts = decide(history, KeepRules(last=0, weekly=3, yearly=2))

    by_day = {made_at(verdict.name).date(): verdict.reasons for verdict in verdicts if verdict.kept}
    assert by_day == {
        date(2027, 1, 6): ("weekly 2027-W01", "yearly 2027", NEWEST_GOOD),
        date(2027, 1, 3): ("weekly 2026-W53",),  # Monday 28 December to Sunday 3 January
        date(2026, 12, 31): ("yearly 2026",),
        date(2026, 12, 27): ("weekly 2026-W52",),
    }


def test_undelivered_backups_and_the_newest_good_one_stay_whatever_the_rules():
    history = nights(date(2026, 12, 1), date(2026, 12, 10))
    # The newest three are not good: one waits for Telegram, two were flagged (an empty dump, say).
    history = [
        Candidate(candidate.name, candidate.made_at, undelivered=day == 3, good=day not in (8, 9, 10, 3))
        for candidate in history
        for day in [made_at(candidate.name).day]
    ]

    verdicts = decide(history, KeepRules(last=2))

    reasons = {made_at(verdict.name).day: verdict.reasons for verdict in verdicts if verdict.kept}
    assert reasons == {10: ("last 2",), 9: ("last 2",), 7: (NEWEST_GOOD,), 3: (UNDELIVERED,)}
    assert [verdict.protected_only for verdict in verdicts if verdict.kept] == [False, False, True, True]


def test_a_backup_made_after_summer_time_ended_stays_though_its_name_says_earlier():
    # Berlin, 25 October 2026: the scheduled backup at 02:45 CEST, then a manual one at 02:15 CET, after
    # the clocks went back from 03:00 to 02:00: made half an hour later, named half an hour earlier.
    scheduled, manual = "shop_backup_20261025_024500.sql.gz", "shop_backup_20261025_021500.sql.gz"
    catalogue = {
        scheduled: {"delivery": DeliveryState.SENT, "created_at": "2026-10-25T02:45:00+02:00"},
        manual: {"delivery": DeliveryState.SENT, "created_at": "2026-10-25T02:15:00+01:00"},
    }

    verdicts = {
        verdict.name: verdict
        for verdict in decide(candidates([scheduled, manual], catalogue, "shop", set()), KeepRules(1))
    }

    assert verdicts[manual].reasons == (NEWEST_MADE,) and verdicts[manual].protected_only
    assert verdicts[scheduled].kept  # by keep = 1, as the names order them


def test_nothing_at_all_is_kept_only_where_nothing_is_good_nor_waiting_and_no_rule_is_on():
    history = [Candidate(c.name, c.made_at) for c in nights(date(2026, 12, 1), date(2026, 12, 3))]

    assert [verdict.kept for verdict in decide(history, KeepRules(last=0))] == [False, False, False]
    assert [verdict.kept for verdict in decide(history, KeepRules(last=1))] == [True, False, False]


def test_pruning_every_night_for_a_year_ends_where_pruning_once_does():
    """The daemon prunes after each backup: what it drops one night must not be what a later night's rules
    would have kept (a monthly backup dropped in its own month, say)."""
    rules = KeepRules(last=7, daily=14, weekly=8, monthly=12, yearly=5)
    history = nights(date(2025, 6, 1), date(2026, 12, 31))
    stored: list[Candidate] = []
    clock = datetime(2025, 6, 1, 3)
    for candidate in history:
        assert candidate.made_at == clock  # one a night, in order
        clock += timedelta(days=1)
        stored.append(candidate)
        kept = {verdict.name for verdict in decide(stored, rules) if verdict.kept}
        stored = [each for each in stored if each.name in kept]

    once = {verdict.name for verdict in decide(history, rules) if verdict.kept}
    assert {candidate.name for candidate in stored} == once
    # 14 nights (keep = 7 among them), 5 more Sundays (W51 and W52's are among the nights), 11 more month
    # ends (January to November 2026), and 31 December 2025 for its year.
    assert len(once) == 14 + 5 + 11 + 1


def test_each_database_entry_may_set_its_own_rules_and_each_series_gets_its_entrys(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        "[backup]\nkeep = 5\nkeep_daily = 7\n\n"
        '[[databases]]\nname = "shop"\nglobals = true\nkeep_monthly = 12\n\n'
        '[[databases]]\nall = true\nhost = "db2"\nprefix = "db2_"\nkeep_daily = 0\nkeep_yearly = 3\n'
    )
    config = load_config(str(config_file), {"TGBACKUPD_BACKUP_KEEP_WEEKLY": "4"})

    assert rules_for(config, "shop") == KeepRules(last=5, daily=7, weekly=4, monthly=12)
    assert rules_for(config, "shop_globals") == KeepRules(last=5, daily=7, weekly=4, monthly=12)
    assert rules_for(config, "db2_billing") == KeepRules(last=5, weekly=4, yearly=3)
    assert rules_for(config, "elsewhere") is None  # no entry names it: left alone, not pruned
    assert KeepRules(last=5, weekly=4, yearly=3).describe() == "keep = 5, keep_weekly = 4, keep_yearly = 3"


def test_a_rule_that_is_not_a_count_is_refused_with_its_entry_named(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text('[[databases]]\nname = "shop"\nkeep_weekly = -1\n')

    with pytest.raises(ConfigError, match=r"databases\[1\]\.keep_weekly = -1 .*a number of weeks \(0: off\)"):
        load_config(str(config_file), {})


def test_a_series_found_by_two_whole_server_entries_belongs_to_the_one_with_the_longer_prefix(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[[databases]]\nall = true\nhost = "db1"\nprefix = "db"\nkeep_daily = 3\n\n'
        '[[databases]]\nall = true\nhost = "db2"\nprefix = "db2_"\nkeep_yearly = 3\n'
    )
    config = load_config(str(config_file), {})

    # Retention and the pings ask the same question of the configuration, and get the same entry.
    assert rules_for(config, "db2_billing") == config.databases[1].backup.keep_rules
    assert rules_for(config, "dbshop") == config.databases[0].backup.keep_rules
    assert config.target_of("db2_billing") is config.databases[1]
