"""Restore drills through the real daemon process: `tgbackupctl drill` over the control socket, a drill's
result kept through a reload made while it ran, and a scheduled drill missed while tgbackupd was down,
caught up at start; each from the chat alone."""

import json
import sqlite3
import threading
import time

from tests.conftest import run_tgbackupd
from tests.end_to_end.conftest import events, status, wait_until
from tests.integration.test_restore_drills import damage_first_part

ROWS = 30  # the sample's customers; it has twice as many orders
ENDED = ("Restore drill passed", "Restore drill failed")


def remove_local_backups(directory) -> None:
    for path in directory.iterdir():
        if "_backup_" in path.name:
            path.unlink()


def test_tgbackupctl_drill_restores_from_the_chat_and_status_keeps_the_result(
    tmp_path, make_database, daemon_for, bot_api
):
    daemon = daemon_for(
        make_database(rows=ROWS), TGBACKUPD_BACKUP_VERIFY_AFTER="true", TGBACKUPD_BACKUP_PREFIX="shop"
    )
    made = daemon.ctl("trigger")
    assert made.returncode == 0, made.stderr
    remove_local_backups(tmp_path / "backups")

    drilled = daemon.ctl("drill", "--json")

    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    (drill,) = json.loads(drilled.stdout)["data"]["drills"]
    assert (drill["ok"], drill["tables"], drill["rows"]) == (True, 2, ROWS * 3)
    assert drill["comparison"].startswith("the same as its verification counted")
    last = status(daemon)["databases"]["shop"]["last_drill"]
    assert last == drill
    assert any(event["event"] == "Restore drill passed" for event in events(daemon.log_text()))
    people = daemon.ctl("drill", "shop")
    assert people.returncode == 0 and "shop (" in people.stdout and "passed at" in people.stdout

    # A part damaged in the chat: the drill fails, with exit status 1 and the reason.
    damage_first_part(bot_api, drill["file"])
    failed = daemon.ctl("drill")
    assert failed.returncode == 1
    assert "Restore drill failed for 1 of 1: shop:" in failed.stderr and "SHA-256" in failed.stderr
    assert status(daemon)["databases"]["shop"]["last_drill"]["ok"] is False
    assert daemon.ctl("drill", "nosuchdb").returncode == 64
    assert daemon.stop() == 0


def test_a_drills_result_is_kept_when_the_configuration_is_reloaded_while_it_runs(
    tmp_path, make_database, daemon_for, bot_api
):
    daemon = daemon_for(make_database(rows=ROWS), TGBACKUPD_BACKUP_PREFIX="shop")
    assert daemon.ctl("trigger").returncode == 0
    remove_local_backups(tmp_path / "backups")
    passed = daemon.ctl("drill")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    file = status(daemon)["databases"]["shop"]["last_drill"]["file"]
    damage_first_part(bot_api, file)  # the next drill fails
    downloading = threading.Event()

    def slowly(file_id: str) -> None:
        downloading.set()
        time.sleep(0.5)

    bot_api.state.on_download = slowly
    drilled: list = []
    drill = threading.Thread(target=lambda: drilled.append(daemon.ctl("drill")))
    drill.start()
    assert downloading.wait(30)
    reloaded = daemon.ctl("reload")  # while the drill runs
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    drill.join(60)
    bot_api.state.on_download = None
    assert drilled and drilled[0].returncode == 1, drilled and drilled[0].stderr
    assert daemon.ctl("trigger").returncode == 0  # a job: the reloaded configuration's databases take over

    last = status(daemon)["databases"]["shop"]["last_drill"]
    assert last["ok"] is False and "SHA-256" in last["error"]
    assert daemon.stop() == 0


def test_a_scheduled_drill_missed_while_tgbackupd_was_down_runs_at_start(tmp_path, make_database, daemon_for):
    dbname = make_database(rows=ROWS)
    daemon = daemon_for(dbname, TGBACKUPD_BACKUP_PREFIX="shop")
    assert daemon.ctl("trigger").returncode == 0
    assert daemon.stop() == 0
    remove_local_backups(tmp_path / "backups")
    with sqlite3.connect(tmp_path / "state.db") as state:  # the last drill was long ago
        state.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('drill_attempt', '2026-01-01T00:00:00+00:00')"
        )
    state.close()

    daemon = daemon_for(dbname, TGBACKUPD_BACKUP_PREFIX="shop", TGBACKUPD_VERIFY_SCHEDULE="daily 00:00")

    wait_until(lambda: any(e["event"] in ENDED for e in events(daemon.log_text())), 60)
    (ended,) = [e for e in events(daemon.log_text()) if e["event"] in ENDED]
    assert ended["event"] == "Restore drill passed", ended
    assert (ended["trigger"], ended["rows"], ended["comparison"]) == (
        "drill",
        ROWS * 3,
        "no earlier count to compare with",
    )
    assert status(daemon)["drill_schedule"] == "every day at 00:00"
    assert daemon.stop() == 0


def test_a_bad_schedule_keeps_tgbackupd_from_starting_with_the_reason(tmp_path, make_database):
    from tests.conftest import base_environment

    environment = base_environment(
        tmp_path, make_database(empty=True), TGBACKUPD_VERIFY_SCHEDULE="weekly 04:30"
    )
    completed = run_tgbackupd(environment, "--check-config")
    assert completed.returncode == 78
    assert "verify.schedule" in completed.stderr + completed.stdout
