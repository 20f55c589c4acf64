"""Dead-man pings and the metrics file, heard from real backups of the real PostgreSQL: the pings reach
a monitoring service on 127.0.0.1 in order, one that is down or hangs holds no backup up, and the
metrics file reads back with prometheus_client's own parser."""

import os
import shutil
import time
from pathlib import Path

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.botapi import CHAT_ID, FAKE_TOKEN
from tests.conftest import base_environment
from tests.monitoring_service import MonitoringService, refused_url
from tgbackupd.backup import Backup
from tgbackupd.config import Config, load_config
from tgbackupd.events import Events
from tgbackupd.integrations import listeners
from tgbackupd.pings import FLUSH_S, Pings, configured_series, urls_of
from tgbackupd.recovery import prepare_state
from tgbackupd.storage import BackupDirectory

pytestmark = pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")

CHECK = "/ping/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def backup_heard(config: Config) -> tuple[Backup, Events]:
    """A Backup whose events go to the integrations the configuration turns on, as tgbackupd builds it."""
    directory = BackupDirectory(config.backup.directory, config.backup.prefix, config.backup_suffix)
    store = prepare_state(config, directory, structlog.get_logger()).store
    events = Events(listeners(config, store))
    return Backup(config, store, directory, events=events), events


def failing_pg_dump(tmp_path: Path) -> str:
    script = tmp_path / "pg_dump"
    script.write_text("#!/bin/sh\necho 'pg_dump: error: the disk of the server caught fire' >&2\nexit 1\n")
    script.chmod(0o755)
    return str(script)


def metrics(path: Path) -> dict[tuple[str, str], float]:
    """The metrics file, by (sample name, database), parsed by prometheus_client."""
    return {
        (sample.name, sample.labels["database"]): sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


def test_a_good_backup_pings_start_then_success_and_a_failed_one_start_then_fail_with_its_error(
    tmp_path, make_database
):
    source = make_database(rows=100)
    with MonitoringService() as service:
        environment = base_environment(tmp_path, source, TGBACKUPD_MONITORING_PING_URL=service.url + CHECK)
        backup, events = backup_heard(load_config(None, environment))
        assert backup.run("manual").succeeded
        failing = load_config(None, {**environment, "TGBACKUPD_DATABASE_PG_DUMP": failing_pg_dump(tmp_path)})
        bad_backup, bad_events = backup_heard(failing)
        result = bad_backup.run("manual")
        events.close()
        bad_events.close()

    assert not result.succeeded
    assert service.pings() == [
        ("GET", CHECK + "/start"),
        ("GET", CHECK),
        ("GET", CHECK + "/start"),
        ("POST", CHECK + "/fail"),
    ]
    body = service.received[-1].body
    assert body.startswith(f"tgbackupd: the backup of {source} ({source}) failed\n")
    assert "the disk of the server caught fire" in body


def test_a_backup_made_but_not_delivered_pings_fail(tmp_path, make_database):
    source = make_database(rows=100)
    with MonitoringService() as service:
        environment = base_environment(
            tmp_path,
            source,
            TGBACKUPD_MONITORING_PING_START_URL=service.url + "/begun",
            TGBACKUPD_MONITORING_PING_SUCCESS_URL=service.url + "/good",
            TGBACKUPD_MONITORING_PING_FAILURE_URL=service.url + "/bad",
            TELEGRAM_BOT_TOKEN=FAKE_TOKEN,
            TELEGRAM_CHAT_ID=CHAT_ID,
            TGBACKUPD_TELEGRAM_API_URL=refused_url(),  # Telegram cannot be reached
            TGBACKUPD_TELEGRAM_RETRIES="0",
        )
        backup, events = backup_heard(load_config(None, environment))
        result = backup.run("manual")
        events.close()

    assert result.path and not result.succeeded and result.delivery == "pending"
    assert service.pings() == [("GET", "/begun"), ("POST", "/bad")]
    assert "Telegram" in service.received[-1].body


@pytest.mark.parametrize("down", ["refused", "hanging"])
def test_a_monitoring_service_down_or_hanging_neither_fails_nor_holds_up_the_backup(
    tmp_path, make_database, down
):
    source = make_database(rows=100)
    with MonitoringService(hanging=True) as hanging:
        url = (refused_url() if down == "refused" else hanging.url) + CHECK
        environment = base_environment(tmp_path, source, TGBACKUPD_MONITORING_PING_URL=url)
        backup, events = backup_heard(load_config(None, environment))
        with capture_logs() as logs:
            began = time.monotonic()
            result = backup.run("manual")
            ran_s = time.monotonic() - began
            began = time.monotonic()
            events.close()
            closed_s = time.monotonic() - began

    assert result.succeeded, result.error
    assert ran_s < 5.0  # the backup of 100 rows itself; a ping's 10 s timeout would show
    assert closed_s < FLUSH_S + 1.0
    assert any(entry["event"].startswith("Monitoring ping") for entry in logs), logs
    assert CHECK.split("/")[-1] not in repr(logs)


def test_a_ping_that_keeps_failing_is_tried_again_and_logged_with_the_url_redacted(tmp_path, make_database):
    source = make_database(rows=100)
    url = refused_url() + CHECK
    config = load_config(None, base_environment(tmp_path, source, TGBACKUPD_MONITORING_PING_URL=url))
    backup, _ = backup_heard(config)
    pings = Pings(
        urls_of(config),
        backup.store,
        config.secrets(),
        configured=configured_series(config),
        timeout_s=1,
        backoff_s=0.05,
    )
    backup.events.replace([pings])
    with capture_logs() as logs:
        assert backup.run("manual").succeeded
        pings.close()

    failed = [entry for entry in logs if entry["event"] == "Monitoring ping failed"]
    assert [entry["ping"] for entry in failed] == ["start", "success"]
    assert failed[0]["attempts"] == 3 and failed[0]["url"] == url.split("/ping/")[0] + "/<redacted>"
    assert "ConnectionError" in failed[0]["error"]
    assert CHECK.split("/")[-1] not in repr(logs)


def test_the_metrics_file_tells_success_then_failure_and_a_restart_writes_the_same(tmp_path, make_database):
    source = make_database(rows=100)
    metrics_file = tmp_path / "textfile" / "tgbackupd.prom"
    metrics_file.parent.mkdir()
    environment = base_environment(tmp_path, source, TGBACKUPD_MONITORING_METRICS_FILE=str(metrics_file))
    config = load_config(None, environment)
    old_umask = os.umask(0o077)
    try:
        backup, _ = backup_heard(config)
        assert metrics(metrics_file) == {
            ("tgbackupd_pending_deliveries", source): 0.0,
            ("tgbackupd_backup_failures_total", source): 0.0,
        }
        good = backup.run("manual")
        after_success = metrics(metrics_file)
        failing = load_config(None, {**environment, "TGBACKUPD_DATABASE_PG_DUMP": failing_pg_dump(tmp_path)})
        bad_backup, _ = backup_heard(failing)
        bad = bad_backup.run("manual")
    finally:
        os.umask(old_umask)
    after_failure = metrics(metrics_file)
    assert metrics_file.stat().st_mode & 0o777 == 0o644
    metrics_file.unlink()
    backup_heard(config)  # a restart: the file is written again from the state store alone

    assert after_success[("tgbackupd_last_backup_success", source)] == 1
    assert after_success[("tgbackupd_last_success_size_bytes", source)] == good.size_bytes
    assert after_success[("tgbackupd_last_success_parts", source)] == good.parts
    assert after_success[("tgbackupd_backup_failures_total", source)] == 0
    started = after_success[("tgbackupd_last_backup_timestamp_seconds", source)]
    assert abs(started - time.time()) < 120
    assert after_success[("tgbackupd_last_success_timestamp_seconds", source)] == started
    assert after_failure[("tgbackupd_last_backup_success", source)] == 0
    assert after_failure[("tgbackupd_backup_failures_total", source)] == 1
    assert after_failure[("tgbackupd_last_success_timestamp_seconds", source)] == started
    assert after_failure[("tgbackupd_last_backup_duration_seconds", source)] == bad.duration_s
    assert metrics(metrics_file) == after_failure
