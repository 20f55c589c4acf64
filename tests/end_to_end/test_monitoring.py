"""Monitoring as an administrator sets it up: `tgbackupd --once` and the daemon ping a monitoring service
on 127.0.0.1 and write the metrics file, and `tgbackupctl status --json` shows the file's figures."""

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import base_environment, run_tgbackupd, telegram_environment
from tests.end_to_end.conftest import fake_pg_dump, status, wait_until
from tests.monitoring_service import MonitoringService, refused_url
from tgbackupd.pings import FLUSH_S

CHECK = "/ping/5d9c1a2b-3e4f-4a5b-8c7d-6e5f4a3b2c1d"


def metrics(path: Path) -> dict[str, dict[str, float]]:
    """The metrics file by database, then by sample name less `tgbackupd_`, parsed by prometheus_client."""
    by_database: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            by_database.setdefault(sample.labels["database"], {})[sample.name.removeprefix("tgbackupd_")] = (
                sample.value
            )
    return by_database


def test_once_pings_and_counts_and_the_restarted_daemon_shows_the_same_figures_in_status(
    tmp_path, make_database, bot_api, start_daemon
):
    source = make_database(rows=100)
    metrics_file = tmp_path / "tgbackupd.prom"
    with MonitoringService() as service:
        environment = base_environment(
            tmp_path,
            source,
            **telegram_environment(bot_api),
            TGBACKUPD_MONITORING_PING_URL=service.url + CHECK,
            TGBACKUPD_MONITORING_METRICS_FILE=str(metrics_file),
            BACKUP_ENABLED="false",
        )
        good = run_tgbackupd(environment, "--once")
        after_success = metrics(metrics_file)[source]
        failing = fake_pg_dump(tmp_path, "echo 'pg_dump: error: out of cheese' >&2; exit 1")
        bad = run_tgbackupd({**environment, "TGBACKUPD_DATABASE_PG_DUMP": failing}, "--once")
        after_failure = metrics(metrics_file)[source]

        assert good.returncode == 0, good.stderr
        assert bad.returncode == 1
        assert service.pings() == [
            ("GET", CHECK + "/start"),
            ("GET", CHECK),
            ("GET", CHECK + "/start"),
            ("POST", CHECK + "/fail"),
        ]
        assert "out of cheese" in service.received[-1].body
        assert after_success["last_backup_success"] == 1 and after_success["backup_failures_total"] == 0
        assert after_failure["last_backup_success"] == 0 and after_failure["backup_failures_total"] == 1
        assert (
            after_failure["last_success_timestamp_seconds"] == after_success["last_backup_timestamp_seconds"]
        )

        metrics_file.unlink()
        daemon = start_daemon(environment)
        daemon.notify.wait_for("READY=1")
        wait_until(metrics_file.exists, timeout=10)
        figures = status(daemon)
        daemon.stop()

    assert metrics(metrics_file)[source] == after_failure
    assert figures["failures_total"] == 1 and figures["pending_deliveries"] == 0
    shown = figures["databases"][source]["metrics"]
    assert {name: value for name, value in shown.items() if value is not None} == after_failure
    assert CHECK.split("/")[-1] not in good.stdout + good.stderr + bad.stdout + bad.stderr + daemon.log_text()


def test_once_with_the_monitoring_service_down_succeeds_in_bounded_time_and_logs_no_secret(
    tmp_path, make_database
):
    source = make_database(rows=100)
    environment = base_environment(tmp_path, source, TGBACKUPD_MONITORING_PING_URL=refused_url() + CHECK)

    began = time.monotonic()
    completed = run_tgbackupd(environment, "--once")
    took_s = time.monotonic() - began

    assert completed.returncode == 0, completed.stderr
    assert took_s < FLUSH_S + 15  # the backup, the start of Python, and at most FLUSH_S for the pings
    output = completed.stdout + completed.stderr
    assert "Monitoring ping" in output
    assert CHECK.split("/")[-1] not in output
