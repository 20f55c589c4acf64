"""Several databases: `[[databases]]` entries over the sections, their problems named by entry, and each
entry's own time of day."""

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import freezegun.api
import pytest
from freezegun import freeze_time
from freezegun.api import real_datetime

from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tests.unit.test_config import problems, write
from tgbackupd.clock import Clock
from tgbackupd.config import effective_config, file_safe, load_config
from tgbackupd.daemon import Daemon
from tgbackupd.fleet import Fleet, _digest
from tgbackupd.runner import Selection
from tgbackupd.statefile import open_store
from tgbackupd.states import Trigger
from tgbackupd.storage import BackupDirectory

ENTRIES = """
[database]
port = 6432

[backup]
compression = "zstd"

[[databases]]
name = "shop"

[[databases]]
url = "postgresql://reporter@reports.internal/analytics"
prefix = "stats"
compression = "gzip"
hour = 1
minute = 30
globals = true
"""


def test_without_entries_the_sections_are_the_one_database_as_before(tmp_path):
    config = load_config(write(tmp_path, ""), {"DATABASE_URL": "postgresql://app@h:5433/shop"})
    (only,) = config.databases
    assert only.database == config.database and only.backup == config.backup
    assert only.label == "database" and config.backup.prefix == "shop"
    assert not (only.all or only.globals)


def test_entries_inherit_what_they_do_not_set_from_the_sections_and_the_environment(tmp_path):
    config = load_config(write(tmp_path, ENTRIES), {"PGHOST": "db.internal", "PGUSER": "backup"})
    shop, stats = config.databases
    assert (shop.database.name, shop.database.host, shop.database.port, shop.database.user) == (
        "shop",
        "db.internal",
        6432,
        "backup",
    )
    assert shop.backup.prefix == "shop" and shop.backup.compression.name == "zstd"
    assert (shop.backup.hour, shop.backup.minute) == (3, 0)
    # The entry's URL wins over the sections' connection, key by key, as DATABASE_URL does over them.
    assert (stats.database.name, stats.database.host, stats.database.user) == (
        "analytics",
        "reports.internal",
        "reporter",
    )
    assert stats.backup.prefix == "stats" and stats.backup.compression.name == "gzip"
    assert (stats.backup.hour, stats.backup.minute) == (1, 30)
    assert stats.globals and stats.globals_prefix == "stats_globals"
    assert config.database == shop.database  # what status calls `database`: the first entry


def test_an_entry_on_another_server_does_not_inherit_the_sections_password(tmp_path):
    text = """
[database]
url = "postgresql://app:db1-secret@db1.internal/shop"

[[databases]]
name = "orders"

[[databases]]
url = "postgresql://reports.partner.example/stats"

[[databases]]
host = "db2.internal"
name = "logs"

[[databases]]
url = "postgresql://other:own-secret@db3.internal/crm"
"""
    for environ, sections in (({}, "db1-secret"), ({"PGPASSWORD": "env-secret"}, "env-secret")):
        orders, stats, logs, crm = load_config(write(tmp_path, text), environ).databases
        assert orders.database.password == sections  # the same server: inherited
        assert (stats.database.password, logs.database.password) == (None, None)
        assert (stats.database.user, logs.database.user) == ("app", "app")  # the user is inherited
        assert crm.database.password == "own-secret"


def test_each_problem_of_an_entry_names_the_entry_and_where_it_came_from(tmp_path):
    found = problems(
        tmp_path,
        """
[[databases]]
name = "shop"
port = "x"

[[databases]]
name = "shop"
compresion = "zstd"

[[databases]]
prefix = "other"

[[databases]]
name = "logs"
compression = "gzip"
compression_level = 19
""",
    )
    config_file = tmp_path / "config.toml"
    assert f"databases[1].port = 'x' (from {config_file}): expected a TCP port from 1 to 65535" in found[0]
    assert any("unknown key databases[2].compresion (did you mean compression?)" in p for p in found)
    assert any(p.startswith("databases[3]: no database named") for p in found)
    assert any(p.startswith("databases[4]: backup.compression_level = 19 is not a gzip level") for p in found)
    assert any("databases[1] and databases[2] both write backups named shop_backup_" in p for p in found)
    assert not any("no database to back up" in p for p in found)  # the entries name them


def test_an_entry_for_a_whole_server_connects_to_its_maintenance_database(tmp_path):
    text = '[[databases]]\nall = true\nexclude = ["scratch"]\n[[databases]]\nall = true\nprefix = "b_"\n'
    config = load_config(write(tmp_path, text), {"PGHOST": "h", "PGDATABASE": "app"})
    first, second = config.databases
    assert first.all and first.database.name == "postgres" and first.exclude == ("scratch",)
    assert first.backup.prefix == "" and second.backup.prefix == "b_"
    assert problems(tmp_path, '[[databases]]\nname = "a"\nexclude = "scratch"\n')[0].startswith(
        "databases[1].exclude = 'scratch'"
    )


def move_to(frozen: Any, when: str) -> None:
    """freezegun's move_to on a ticking clock, which Debian 12's freezegun (1.2) does not have."""
    if hasattr(frozen, "move_to"):
        frozen.move_to(when)
    else:
        frozen.time_to_freeze, frozen.start = datetime.fromisoformat(when), real_datetime.now()


def test_a_per_entry_hour_is_scheduled_at_its_hour_and_backs_up_only_that_entry(tmp_path):
    text = '[[databases]]\nname = "early"\nhour = 2\n[[databases]]\nname = "late"\n'
    # Port 1: nothing listens there, so each backup fails at once, naming its database.
    environ = {"PGHOST": "127.0.0.1", "PGPORT": "1", "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path / "b")}
    config = load_config(write(tmp_path, text), environ)
    store = open_store(tmp_path / "state.db").store
    directory = BackupDirectory(config.backup.directory, config.backup.prefix)
    with freeze_time("2025-12-02 01:30:00", tick=True) as frozen:
        daemon = Daemon(config, store, directory, environ={}, clock=Clock())
        databases = daemon._commands.status()["databases"]
        assert databases["early"]["next_run"].startswith("2025-12-02T02:00")
        assert databases["late"]["next_run"].startswith("2025-12-02T03:00")
        assert daemon._next_run() == datetime(2025, 12, 2, 2, 0)

        move_to(frozen, "2025-12-02 02:00:01")
        daemon._schedules[(2, 0)].run_pending()
        daemon._schedules[(3, 0)].run_pending()
        assert daemon._runner.join(60)

    assert [result["database"] for result in store.results()] == ["early"]
    assert daemon._runner.last_backup is not None and daemon._runner.last_backup["trigger"] == "scheduled"


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (Selection(), ["early", "late", "late_globals"]),
        (Selection(slots=((3, 0),)), ["late", "late_globals"]),
        (Selection(database="late_globals"), ["late_globals"]),
        (Selection(database="early"), ["early"]),
    ],
)
def test_a_run_backs_up_the_selected_databases_in_order_each_failure_its_own(tmp_path, selection, expected):
    text = '[[databases]]\nname = "early"\nhour = 2\n[[databases]]\nname = "late"\nglobals = true\n'
    environ = {"PGHOST": "127.0.0.1", "PGPORT": "1", "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path / "b")}
    config = load_config(write(tmp_path, text), environ)
    store = open_store(tmp_path / "state.db").store
    fleet = Fleet(config, store, BackupDirectory(config.backup.directory, config.backup.prefix))

    results = fleet.run(Trigger.MANUAL, selection)

    assert [result.database for result in results] == expected
    assert all(
        "pg_dump" in (result.error or "") or "pg_dumpall" in (result.error or "") for result in results
    )
    assert list(fleet.last) == expected


def test_the_example_configurations_entries_are_valid_once_uncommented(tmp_path):
    example = (Path(__file__).parents[2] / "config.example.toml").read_text()
    entries = example[example.index("# [[databases]]") :]
    text = "\n".join(line.removeprefix("# ") for line in entries.splitlines())
    config = load_config(write(tmp_path, text), {"PGHOST": "db.internal"})
    shop, stats, server = config.databases
    assert shop.globals and stats.backup.prefix == "stats" and server.all and server.exclude


def test_the_effective_configuration_shows_each_entry_resolved_with_its_password_redacted(tmp_path):
    text = ENTRIES.replace("reporter@", "reporter:s3cret@")
    effective = effective_config(load_config(write(tmp_path, text), {"PGHOST": "db.internal"}))
    shop, stats = effective["databases"]
    assert shop["host"] == "db.internal" and shop["port"] == 6432 and shop["compression"] == "zstd"
    assert stats["password"] == "<redacted>" and "s3cret" not in repr(effective)
    assert stats["globals"] is True and (stats["hour"], stats["minute"]) == (1, 30)


def test_two_entries_for_whole_servers_under_one_prefix_are_refused(tmp_path):
    text = '[[databases]]\nall = true\nhost = "a"\n[[databases]]\nall = true\nhost = "b"\n'
    found = problems(tmp_path, text)
    assert any(
        "databases[1] and databases[2] both back up every database of a server under the prefix ''" in p
        and "give each its own prefix" in p
        for p in found
    ), found
    load_config(write(tmp_path, text.replace('host = "b"', 'host = "b"\nprefix = "b_"')), {})


@pytest.fixture
def odd_databases():
    """Databases of the test server whose names collide once made safe for a file name."""
    tag = uuid.uuid4().hex[:8]
    names = [f"магазин_{tag}", f"продажи_{tag}", f"shop_{tag}"]
    for name in names:
        psql("postgres", f'CREATE DATABASE "{name}"')
    yield names
    for name in names:
        psql("postgres", f'DROP DATABASE IF EXISTS "{name}"')


def test_each_database_a_server_entry_finds_has_its_own_series_and_only_the_same_one_is_skipped(
    tmp_path, odd_databases
):
    shop_ru, sales_ru, shop = odd_databases
    here = f"host = '{PG_HOST}'\nport = {PG_PORT}\nuser = '{PG_USER}'\n"
    text = (
        f"[[databases]]\nname = '{shop}'\nhost = 'elsewhere.internal'\n"  # another server's `shop`
        f"[[databases]]\nname = '{shop_ru}'\nprefix = 'ru'\n{here}"  # this server's, by another entry
        f"[[databases]]\nall = true\n{here}"
    )
    config = load_config(write(tmp_path, text), {"TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path / "b")})
    store = open_store(tmp_path / "state.db").store
    fleet = Fleet(config, store, BackupDirectory(tmp_path / "b", shop))

    found = {backup.series: prefix for prefix, backup, _ in fleet._jobs(config.databases[2], None)}

    assert shop_ru not in found  # backed up by the second entry: the same server and database
    assert found[sales_ru] == f"{file_safe(sales_ru)}-{_digest(sales_ru)}"
    assert found[shop].startswith(f"{shop}-") and found[shop] != shop  # not the other server's series
    assert len(set(found.values())) == len(found)
    again = {backup.series: prefix for prefix, backup, _ in fleet._jobs(config.databases[2], None)}
    assert again == found


@pytest.mark.skipif(
    not hasattr(freezegun.api.TickingDateTimeFactory, "move_to"),
    reason="Debian 12's freezegun (1.2) moves a ticking clock in a way the queued run does not see",
)
def test_a_time_that_comes_due_while_another_times_backup_runs_waits_for_it_the_same_night(tmp_path):
    slow = tmp_path / "slow_pg_dump"
    slow.write_text("#!/bin/sh\nsleep 2\necho 'slow pg_dump gave up' >&2\nexit 1\n")
    slow.chmod(0o755)
    text = f'[[databases]]\nname = "early"\nhour = 1\npg_dump = "{slow}"\n[[databases]]\nname = "late"\n'
    text += "hour = 1\nminute = 30\n"
    environ = {"PGHOST": "127.0.0.1", "PGPORT": "1", "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path / "b")}
    config = load_config(write(tmp_path, text), environ)
    store = open_store(tmp_path / "state.db").store
    directory = BackupDirectory(config.backup.directory, config.backup.prefix)
    with freeze_time("2025-12-02 00:59:00", tick=True) as frozen:
        daemon = Daemon(config, store, directory, environ={}, clock=Clock())
        move_to(frozen, "2025-12-02 01:00:01")
        daemon._schedules[(1, 0)].run_pending()
        move_to(frozen, "2025-12-02 01:30:01")
        daemon._schedules[(1, 30)].run_pending()  # the 01:00 backup still dumps
        assert daemon._runner.current is not None and daemon._runner.current.selection.slots == ((1, 0),)
        assert daemon._runner.join(60)
        daemon._start_due_work()
        assert daemon._runner.join(60)
        attempt = daemon._fleet.last_attempt((1, 30), None)  # recorded: no catch-up, no double
        assert attempt is not None and attempt.replace(tzinfo=None) >= datetime(2025, 12, 2, 1, 30, 1)

    assert [result["database"] for result in store.results()] == ["early", "late"]


def test_two_entries_for_databases_of_one_name_on_two_servers_keep_their_own_last_result(tmp_path):
    text = (
        '[[databases]]\nname = "shop"\nhost = "127.0.0.1"\nport = 1\nprefix = "a"\n'
        '[[databases]]\nname = "shop"\nhost = "127.0.0.2"\nport = 1\nprefix = "b"\n'
    )
    config = load_config(write(tmp_path, text), {"TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path / "b")})
    store = open_store(tmp_path / "state.db").store
    directory = BackupDirectory(tmp_path / "b", "a")

    Fleet(config, store, directory).run(Trigger.MANUAL)  # both fail: nothing listens on port 1
    recalled = Fleet(config, store, directory).last  # as after a restart

    assert set(recalled) == {"a", "b"}
    assert "127.0.0.1" in recalled["a"]["error"] and "127.0.0.2" in recalled["b"]["error"]
