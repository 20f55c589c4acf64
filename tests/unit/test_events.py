"""The backup's events reach every listener, and one listener's failure reaches none of the others."""

from tgbackupd.backup import BackupResult
from tgbackupd.events import Delivered, Events, Finished, Listener, Started
from tgbackupd.states import Trigger


class Recorder(Listener):
    name = "recorder"

    def __init__(self) -> None:
        self.heard: list[tuple[str, object]] = []

    def started(self, event: Started) -> None:
        self.heard.append(("started", event.prefix))

    def succeeded(self, event: Finished) -> None:
        self.heard.append(("succeeded", event.prefix))

    def failed(self, event: Finished) -> None:
        self.heard.append(("failed", event.result.error))

    def delivered(self, event: Delivered) -> None:
        self.heard.append(("delivered", event.message_id))


class Broken(Listener):
    name = "broken"

    def started(self, event: Started) -> None:
        raise RuntimeError("a bug in an integration")

    failed = succeeded = delivered = started  # type: ignore[assignment]


def result(error: str | None = None) -> BackupResult:
    return BackupResult(
        trigger=Trigger.MANUAL, database="shop", started_at="2026-12-03T03:00:00", duration_s=1.0, error=error
    )


def test_each_event_reaches_every_listener_and_a_broken_one_stops_none() -> None:
    recorder = Recorder()
    events = Events([Broken(), recorder])
    events.started(Started("shop", "shop", "shop on localhost", Trigger.MANUAL, "2026-12-03T03:00:00"))
    events.finished(Finished("shop", result()))
    events.finished(Finished("shop", result("pg_dump failed")))
    events.delivered(Delivered("shop_backup_x.sql.gz", "shop", 42))
    assert recorder.heard == [
        ("started", "shop"),
        ("succeeded", "shop"),
        ("failed", "pg_dump failed"),
        ("delivered", 42),
    ]


def test_replacing_the_listeners_takes_effect_for_the_next_event() -> None:
    first, second = Recorder(), Recorder()
    events = Events([first])
    events.finished(Finished("shop", result()))
    events.replace([second])
    events.finished(Finished("shop", result()))
    assert first.heard == [("succeeded", "shop")]
    assert second.heard == [("succeeded", "shop")]


class Closing(Recorder):
    def close(self) -> None:
        self.heard.append(("closed", None))


class BrokenOnClose(Listener):
    name = "broken on close"

    def close(self) -> None:
        raise RuntimeError("a bug in an integration")


def test_replaced_listeners_are_closed_and_closing_stops_at_no_broken_one() -> None:
    first, second = Closing(), Closing()
    events = Events([BrokenOnClose(), first])
    events.replace([BrokenOnClose(), second])
    assert first.heard == [("closed", None)] and second.heard == []
    events.close()
    assert second.heard == [("closed", None)]
