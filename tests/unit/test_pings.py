"""The monitoring keys as the configuration reads them, and which pings a series' events make: one
database's success never hides another's failure on a shared check, and a drill's success is no
backup's. Pings go to a real HTTP server on 127.0.0.1."""

import sqlite3
from pathlib import Path

import pytest
import structlog

from tests.monitoring_service import MonitoringService, refused_url
from tgbackupd.backup import BackupResult
from tgbackupd.config import PingUrls, effective_config, load_config
from tgbackupd.errors import ConfigError
from tgbackupd.events import Drilled, Finished, Started
from tgbackupd.pings import BODY_BYTES, Pings, configured_series, failure_body, urls_of
from tgbackupd.statefile import open_store
from tgbackupd.states import Trigger

UUID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
BASE = f"https://hc-ping.com/{UUID}"


def load(tmp_path: Path, text: str, **environ: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(str(path), {"DATABASE_URL": "postgresql://h/db", **environ})


def problems(tmp_path: Path, text: str, **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text, **environ)
    return raised.value.problems


def test_ping_url_gives_start_success_and_fail_below_it_keeping_its_query_and_explicit_urls_win(tmp_path):
    config = load(
        tmp_path,
        f'[monitoring]\nping_url = "{BASE}/?create=1"\nping_failure_url = "http://alerts.example/down"\n',
    )
    assert config.monitoring.pings == PingUrls(
        start=f"{BASE}/start?create=1", success=f"{BASE}/?create=1", failure="http://alerts.example/down"
    )
    assert config.databases[0].pings == config.monitoring.pings


def test_an_entry_with_a_ping_key_of_its_own_takes_none_of_the_sections(tmp_path):
    config = load(
        tmp_path,
        f'[monitoring]\nping_url = "{BASE}"\n'
        '[[databases]]\nname = "shop"\n'
        '[[databases]]\nname = "crm"\nping_success_url = "https://other.example/ok"\n'
        '[[databases]]\nname = "scratch"\nping_url = ""\n',
    )
    shop, crm, scratch = config.databases
    assert shop.pings == config.monitoring.pings
    assert crm.pings == PingUrls(success="https://other.example/ok")
    assert not scratch.pings
    assert urls_of(config)("crm") == crm.pings and urls_of(config)("unknown") == config.monitoring.pings


@pytest.mark.parametrize(
    "url", ["ftp://hc-ping.com/" + UUID, "hc-ping.com/" + UUID, "https:///" + UUID, "http://h:port/" + UUID]
)
def test_a_ping_url_that_is_not_http_is_refused_without_quoting_its_secret(tmp_path, url):
    [problem] = problems(tmp_path, "", TGBACKUPD_MONITORING_PING_SUCCESS_URL=url)
    assert problem.startswith("monitoring.ping_success_url (from environment variable")
    assert "http:// or https://" in problem or "cannot be parsed" in problem
    assert UUID not in problem


def test_the_metrics_file_must_be_an_absolute_prom_file(tmp_path):
    assert "ending in .prom" in problems(tmp_path, '[monitoring]\nmetrics_file = "/var/lib/m.txt"\n')[0]
    assert "absolute path" in problems(tmp_path, '[monitoring]\nmetrics_file = "m.prom"\n')[0]


def test_check_config_shows_the_ping_urls_scheme_and_host_only_and_logs_scrub_them(tmp_path):
    config = load(tmp_path, f'[monitoring]\nping_url = "{BASE}"\n')
    shown = effective_config(config)["monitoring"]
    assert shown["ping_start_url"] == "https://hc-ping.com/<redacted>"
    assert UUID not in repr(effective_config(config))
    assert any(UUID in secret for secret in config.secrets())


def result(database: str, error: str | None = None) -> BackupResult:
    return BackupResult(
        trigger="manual",
        database=database,
        started_at="2026-12-03T03:00:00+00:00",
        duration_s=1.0,
        error=error,
    )


@pytest.fixture
def store(tmp_path):
    opened = open_store(tmp_path / "state.db")
    yield opened.store
    opened.store.close()


def test_on_a_shared_check_a_success_is_held_back_until_every_database_that_failed_succeeds_again(store):
    with MonitoringService() as service:
        shared = PingUrls(success=service.url + "/ok", failure=service.url + "/fail")
        pings = Pings(lambda prefix: shared, store, configured=lambda prefix: True)
        with structlog.testing.capture_logs() as logs:
            pings.failed(Finished("shop", result("shop", "pg_dump failed")))
            pings.succeeded(Finished("crm", result("crm")))
            pings.succeeded(Finished("shop", result("shop")))
        pings.close()

    assert service.pings() == [("POST", "/fail"), ("GET", "/ok")]
    assert [entry["failed"] for entry in logs if "held back" in entry["event"]] == [["shop"]]


def test_a_failure_recorded_before_a_restart_still_holds_a_shared_success_back(store):
    store.record_result(result("shop", "pg_dump failed").to_dict(), "shop")
    with MonitoringService() as service:
        shared = PingUrls(success=service.url + "/ok")
        pings = Pings(lambda prefix: shared, store, configured=lambda prefix: True)
        pings.succeeded(Finished("crm", result("crm")))
        pings.close()

    assert service.received == []


def test_only_configured_series_failed_before_a_restart_hold_a_shared_success_back(tmp_path, store):
    with MonitoringService() as service:
        config = load(
            tmp_path,
            f'[monitoring]\nping_success_url = "{service.url}/ok"\n'
            '[[databases]]\nname = "shop"\n[[databases]]\nall = true\nprefix = "srv_"\n',
        )
        configured = configured_series(config)
        assert configured("shop") and configured("srv_crm") and not configured("gone")
        store.record_result(result("gone", "pg_dump failed").to_dict(), "gone")  # an entry since removed
        pings = Pings(urls_of(config), store, configured=configured)
        pings.succeeded(Finished("shop", result("shop")))
        store.record_result(result("srv_crm", "pg_dump failed").to_dict(), "srv_crm")
        restarted = Pings(urls_of(config), store, configured=configured)
        restarted.succeeded(Finished("shop", result("shop")))  # held back: srv_crm failed last
        restarted.succeeded(Finished("srv_crm", result("srv_crm")))
        pings.close()
        restarted.close()

    assert service.pings() == [("GET", "/ok"), ("GET", "/ok")]


def test_a_last_result_that_is_no_json_is_logged_and_holds_nothing_back(tmp_path, store):
    store.record_result(result("shop", "pg_dump failed").to_dict(), "shop")
    with sqlite3.connect(tmp_path / "state.db") as connection:
        connection.execute("INSERT INTO results (series, result) VALUES ('crm', 'not json {')")
    connection.close()
    with MonitoringService() as service:
        shared = PingUrls(success=service.url + "/ok")
        with structlog.testing.capture_logs() as logs:
            pings = Pings(lambda prefix: shared, store, configured=lambda prefix: True)
            pings.succeeded(Finished("crm", result("crm")))
            pings.close()

    assert service.pings() == [("GET", "/ok")]
    assert any("last results cannot be read" in entry["event"] for entry in logs)


def test_a_ping_made_after_close_is_still_sent_or_logged(store):
    with MonitoringService() as service:
        urls = PingUrls(success=service.url + "/ok")
        pings = Pings(lambda prefix: urls, store, configured=lambda prefix: True)
        pings.close()  # a reload replaced these listeners as a backup was ending
        pings.succeeded(Finished("shop", result("shop")))
    assert service.pings() == [("GET", "/ok")]

    refused = PingUrls(success=refused_url() + "/ok")
    pings = Pings(lambda prefix: refused, store, configured=lambda prefix: True, timeout_s=1)
    pings.close()
    with structlog.testing.capture_logs() as logs:
        pings.succeeded(Finished("shop", result("shop")))
    assert [entry["ping"] for entry in logs if entry["event"] == "Monitoring ping failed"] == ["success"]


def test_a_failed_drill_pings_failure_and_a_passing_one_pings_nothing(store):
    with MonitoringService() as service:
        urls = PingUrls(
            start=service.url + "/start", success=service.url + "/ok", failure=service.url + "/fail"
        )
        pings = Pings(lambda prefix: urls, store, configured=lambda prefix: True)
        pings.drilled(Drilled("shop", "shop_backup_x.sql.gz", "2026-12-03T04:00:00+00:00", 3.0, 2, 10))
        pings.drilled(Drilled("shop", None, "2026-12-03T04:00:00+00:00", 1.0, error="no backup in the chat"))
        pings.started(Started("shop", "shop", "shop on h", Trigger.MANUAL, "2026-12-03T05:00:00+00:00"))
        pings.close()

    assert service.pings() == [("POST", "/fail"), ("GET", "/start")]
    assert service.received[0].body == ("tgbackupd: the restore drill of shop failed\nno backup in the chat")


def test_a_failure_body_keeps_the_errors_last_lines_where_the_cause_is():
    error = "\n".join(f"line {number}" for number in range(1, 101))
    body = failure_body("the backup of shop (shop) failed", error)
    assert body.splitlines()[0] == "tgbackupd: the backup of shop (shop) failed"
    assert body.splitlines()[1:] == [f"line {number}" for number in range(81, 101)]
    long = failure_body("the backup of shop (shop) failed", "x" * 50_000)
    assert long.startswith("tgbackupd: the backup of shop (shop) failed\nxxx") and len(long) == BODY_BYTES
