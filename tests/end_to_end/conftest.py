"""What the end-to-end tests share: the real daemon against the Bot API stand-in, its status, and waits
with a bound."""

import json
import time
from pathlib import Path

import pytest

from tests.botapi import FAKE_TOKEN
from tests.conftest import base_environment, telegram_environment

FAST_RETRIES = {
    "TGBACKUPD_TELEGRAM_RETRIES": "0",
    "TGBACKUPD_TELEGRAM_REDELIVER_MIN_S": "1",
    "TGBACKUPD_TELEGRAM_REDELIVER_MAX_S": "2",
}


def fake_pg_dump(directory: Path, script: str) -> str:
    path = directory / "fake_pg_dump"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def status(daemon) -> dict:
    completed = daemon.ctl("status", "--json")
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)["data"]


def events(log_text: str) -> list[dict]:
    """The daemon's log, one JSON object per event."""
    return [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert FAKE_TOKEN not in text and FAKE_TOKEN.split(":")[1] not in text


@pytest.fixture
def daemon_for(tmp_path, bot_api, start_daemon):
    def start(dbname: str, **overrides: str):
        environment = base_environment(
            tmp_path, dbname, **{**telegram_environment(bot_api), **FAST_RETRIES, **overrides}
        )
        daemon = start_daemon(environment)
        daemon.notify.wait_for("READY=1")
        return daemon

    return start
