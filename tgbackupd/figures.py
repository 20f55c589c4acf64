"""The figures by which monitoring knows the backups work: for each series, when its last backup ran and
how it went, when it last succeeded and how big that backup was, what waits for Telegram, how many have
failed, and the last restore drill. Read from the state store only, so that the metrics file and
`tgbackupctl status --json` show the same numbers, and a restarted daemon the same as before."""

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import structlog

from .drilling import recorded_drills
from .events import Finished, Listener
from .manifest import series_of
from .state import StateError, StateStore

# Meta keys, each followed by the series' prefix.
FAILURES_KEY = "failures_total:"
LAST_SUCCESS_KEY = "last_success:"

log = structlog.stdlib.get_logger("tgbackupd.figures")


@dataclass(frozen=True)
class SeriesFigures:
    """One series' figures, named as the metrics are (less `tgbackupd_`); None where nothing is known
    yet. Times are Unix seconds; a backup's time is when it started (when its data was read)."""

    last_backup_timestamp_seconds: float | None
    last_backup_success: int | None
    last_backup_duration_seconds: float | None
    last_success_timestamp_seconds: float | None
    last_success_size_bytes: int | None
    last_success_parts: int | None
    pending_deliveries: int
    backup_failures_total: int
    last_drill_timestamp_seconds: float | None
    last_drill_success: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(store: StateStore, prefixes: Iterable[str] = ()) -> dict[str, SeriesFigures]:
    """Given the store and the prefixes configured (known before they ever ran), return the figures of
    every series, by prefix. Raise StateError if the store cannot be read."""
    results = store.results_by_series()
    pending = Counter(series_of(waiting.name) for waiting in store.waiting())
    drills = recorded_drills(store)
    every = dict.fromkeys([*prefixes, *results, *pending])
    return {
        prefix: _series(store, results.get(prefix), pending[prefix], prefix, drills.get(prefix))
        for prefix in every
    }


def _series(
    store: StateStore, last: dict[str, Any] | None, pending: int, prefix: str, drill: dict[str, Any] | None
) -> SeriesFigures:
    success = _document(store.meta(LAST_SUCCESS_KEY + prefix))
    if success is None and last is not None and not last.get("error"):
        success = last  # recorded before this version counted successes
    return SeriesFigures(
        last_backup_timestamp_seconds=_timestamp(last, "started_at"),
        last_backup_success=None if last is None else int(not last.get("error")),
        last_backup_duration_seconds=_number(last, "duration_s"),
        last_success_timestamp_seconds=_timestamp(success, "started_at"),
        last_success_size_bytes=_whole(success, "size_bytes"),
        last_success_parts=_whole(success, "parts"),
        pending_deliveries=pending,
        backup_failures_total=_count(store.meta(FAILURES_KEY + prefix)),
        last_drill_timestamp_seconds=_timestamp(drill, "at"),
        last_drill_success=None if drill is None else int(not drill.get("error")),
    )


def _document(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _count(text: str | None) -> int:
    """A count kept in the store; 0 for none (or for what no version of tgbackupd writes)."""
    return int(text) if text is not None and re.fullmatch("[0-9]{1,18}", text) else 0


def _timestamp(document: dict[str, Any] | None, key: str) -> float | None:
    """An ISO time of a record (written by this or another version) as Unix seconds; None if unreadable."""
    value = (document or {}).get(key)
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
    except ValueError:
        return None


def _number(document: dict[str, Any] | None, key: str) -> float | None:
    value = (document or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _whole(document: dict[str, Any] | None, key: str) -> int | None:
    value = (document or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Tally(Listener):
    """Keeps in the store what the last results alone do not: each series' failures (a counter that a
    restart must not reset) and its last success after a failure (drilling.py records the drills).
    Always on, and first: status shows these figures whether or not a metrics file is written, and the
    metrics file, written after it, finds them recorded."""

    name = "tally"

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def succeeded(self, event: Finished) -> None:
        self._keep(LAST_SUCCESS_KEY + event.prefix, json.dumps(event.result.to_dict()))

    def failed(self, event: Finished) -> None:
        try:
            self._store.add_to_count(FAILURES_KEY + event.prefix)
        except StateError as error:
            log.warning("Could not count the backup's failure", database=event.prefix, error=str(error))

    def _keep(self, key: str, value: str) -> None:
        try:
            self._store.set_meta(key, value)
        except StateError as error:
            log.warning("Could not record a figure for monitoring", key=key, error=str(error))
