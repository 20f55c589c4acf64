import io
import json
import logging

import structlog

from tgbackupd.logs import configure_logging

TOKEN = "123456789:fake-token-for-tests-only"


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_each_event_is_one_json_line_with_what_a_person_filters_on():
    stream = io.StringIO()
    configure_logging("info", stream=stream, journald=False)
    structlog.stdlib.get_logger("tgbackupd.backup").info(
        "Backup created successfully: (1.00 MB)", file="x.sql.gz", size_bytes=1048576
    )
    structlog.stdlib.get_logger("tgbackupd.backup").debug("not shown at info")
    (line,) = lines(stream)
    event = json.loads(line)
    assert list(event)[:4] == ["timestamp", "level", "logger", "event"]
    assert event["level"] == "info" and event["logger"] == "tgbackupd.backup"
    assert event["size_bytes"] == 1048576


def test_under_journald_each_line_starts_with_its_syslog_priority():
    stream = io.StringIO()
    configure_logging("debug", stream=stream, journald=True)
    log = structlog.stdlib.get_logger("tgbackupd.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [line[:3] for line in lines(stream)] == ["<7>", "<6>", "<4>", "<3>"]


def test_secrets_are_scrubbed_from_our_events_and_from_libraries_records():
    stream = io.StringIO()
    configure_logging("debug", secrets=["db-pa55word"], stream=stream, journald=False)
    structlog.stdlib.get_logger("tgbackupd.test").error(
        "failed", error=f"url /bot{TOKEN}/x pw db-pa55word", nested={"list": [TOKEN]}
    )
    logging.getLogger("requests.something").warning("POST /bot%s/sendDocument", TOKEN)
    logging.getLogger("urllib3.connectionpool").debug("never at debug: /bot%s/", TOKEN)
    text = stream.getvalue()
    assert TOKEN not in text and "db-pa55word" not in text and "fake-token" not in text
    assert len(lines(stream)) == 2
    assert json.loads(lines(stream)[1])["logger"] == "requests.something"
