"""Restore drills: the latest backup of a database, downloaded from the chat as a new machine would (the
pinned manifest, the signed chain walked back, each part downloaded and checked), restored into a scratch
database, counted against what its verification counted when it was made, and dropped. This proves the
offsite copy; the local one is never read. The result goes to the chat, the log, status (kept in the
state store's meta, so that it survives a restart) and the `drilled` event (metrics, pings)."""

import io
import json
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from . import messages, restore
from .backup import Backup
from .clock import Clock
from .errors import Cancelled, RestoreError, TgbackupdError, TimedOut
from .events import Drilled, Events
from .manifest import Manifest, ManifestRef, series_of
from .progress import Progress
from .redaction import scrub
from .scheduling import DrillSchedule
from .signing import Keyring, ManifestKey
from .state import StateError, StateStore
from .states import Trigger
from .stopping import WATCH_INTERVAL_S, Stop, duration_text
from .telegram import BotApi, TelegramError

# The meta keys: each series' last drill (a JSON object by prefix), and when the scheduled drills last
# started (for catch-up after the host was down).
LAST_DRILLS_KEY = "last_drills"
ATTEMPT_KEY = "drill_attempt"
# What backup.verify_after writes in a backup's facts (restore.VerifyReport.summary).
_VERIFIED_COUNTS = re.compile(r"^verified: .*?\b([0-9]+) tables, ([0-9]+) rows\b")
NO_EARLIER_COUNT = "no earlier count to compare with"

log = structlog.stdlib.get_logger("tgbackupd.drilling")


@dataclass(frozen=True)
class DrillResult:
    """What one drill came to. `comparison` says how the counts compare with the verification's when the
    backup was made; `warning` is something to look at that did not fail the drill (a scratch database
    left behind)."""

    prefix: str
    database: str
    at: str
    duration_s: float
    file: str | None = None
    tables: int | None = None
    rows: int | None = None
    comparison: str | None = None
    warning: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """As status --json shows it (`last_drill`)."""
        return {"ok": self.ok, **asdict(self)}


def recorded_counts(verification: str | None) -> tuple[int, int] | None:
    """The tables and rows a backup's verification counted when it was made, from its facts
    (`verified: restored into a scratch database, 3 tables, 6001 rows`); None when it did not run,
    failed, or says something else."""
    if not isinstance(verification, str):
        return None
    match = _VERIFIED_COUNTS.match(verification)
    return (int(match[1]), int(match[2])) if match else None


def compare(tables: int, rows: int, recorded: tuple[int, int] | None) -> tuple[str, str | None]:
    """(what the comparison says, the problem if the counts differ)."""
    if recorded is None:
        return NO_EARLIER_COUNT, None
    if recorded == (tables, rows):
        return f"the same as its verification counted when it was made ({tables} tables, {rows} rows)", None
    said = f"{recorded[0]} tables, {recorded[1]} rows"
    return (
        f"its verification counted {said} when it was made",
        f"restored from the chat it has {tables} tables and {rows} rows, but its verification counted "
        f"{said} when it was made: the backup in the chat is not the one that was verified",
    )


def recorded_drills(store: StateStore) -> dict[str, dict[str, Any]]:
    """The last drill of each series, by prefix, as recorded; checked, since a meta value is a file's
    content, not trusted. Raise StateError if the store cannot be read."""
    try:
        text = store.meta(LAST_DRILLS_KEY)
        recorded = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {
        prefix: value
        for prefix, value in recorded.items()
        if isinstance(prefix, str) and isinstance(value, dict) and isinstance(value.get("ok"), bool)
    }


class Drills:
    """Runs drills and remembers their results (one per series, and when the scheduled drills last
    started) in the state store's meta."""

    def __init__(self, store: StateStore, events: Events, clock: Clock | None = None) -> None:
        self._store = store
        self._events = events
        self._clock = clock or Clock()
        self.last: dict[str, dict[str, Any]] = self._recall()
        self.last_attempt: datetime | None = self._recall_attempt()

    def due(self, schedule: DrillSchedule | None, since: datetime, catch_up: bool) -> datetime | None:
        """The scheduled time a drill is due for now, if any: one after the last drill's start. With
        `catch_up`, one missed while tgbackupd or the host was down is made up (once); otherwise, and
        before any drill was made, none from before `since` (when tgbackupd started)."""
        if schedule is None:
            return None
        last = self.last_attempt
        after = last if catch_up and last is not None else max(since, last or since)
        return schedule.due(self._clock.now(), after)

    def note_attempt(self) -> None:
        """The scheduled drills start now: catch-up and the schedule count from here."""
        now = self._clock.now()
        self.last_attempt = now
        try:
            self._store.set_meta(ATTEMPT_KEY, now.isoformat(timespec="seconds"))
        except StateError as error:
            log.warning("Could not record when the restore drills started", error=str(error))

    def run(self, backup: Backup, chat: "ChatIndex", problem: str | None = None) -> DrillResult:
        """Drill the latest backup of `backup`'s series in the chat, found in `chat` (this drill run's),
        or report `problem`, which kept it from starting. Never raises: even a bug ends in a failed
        result that is recorded, announced and told to the chat, and the next database is drilled."""
        config = backup.config
        started = self._clock.now()
        began = self._clock.monotonic()
        bound = log.bind(trigger=Trigger.DRILL, database=backup.series, prefix=backup.prefix)
        bound.info("Starting restore drill from the chat...")
        bot = backup.open_bot()
        try:
            try:
                if problem is not None:
                    outcome: dict[str, Any] = {"error": problem}
                else:
                    stop = Stop(backup.cancel, config.backup.timeout, self._clock)
                    outcome = _drill(backup, bot, chat, stop, bound)
            except Exception as error:  # a bug: this drill fails as itself, the others still run
                bound.exception(
                    "Restore drill crashed unexpectedly; please report this", error=type(error).__name__
                )
                outcome = {
                    "error": f"internal error: {type(error).__name__}; the log has the details (please "
                    "report it)"
                }
            for key in ("error", "warning"):
                if outcome.get(key) is not None:
                    outcome[key] = scrub(outcome[key], config.secrets())
            result = DrillResult(
                prefix=backup.prefix,
                database=backup.describe,
                at=started.isoformat(timespec="seconds"),
                duration_s=round(self._clock.monotonic() - began, 3),
                **outcome,
            )
            if bot is not None and not backup.cancel.is_set():
                _tell_chat(bot, backup, result, bound)
        finally:
            if bot is not None:
                bot.close()
        self._record(result, bound)
        fields = {
            key: value for key, value in result.to_dict().items() if key not in ("prefix", "ok", "database")
        }
        if result.ok:
            bound.info("Restore drill passed", **fields)
        else:
            bound.error("Restore drill failed", **fields)
        self._events.drilled(
            Drilled(
                prefix=result.prefix,
                file=result.file,
                finished_at=self._clock.now().isoformat(timespec="seconds"),
                duration_s=result.duration_s,
                tables=result.tables,
                rows=result.rows,
                error=result.error,
            )
        )
        return result

    def _record(self, result: DrillResult, bound: Any) -> None:
        """Keep the result for status across restarts; one that cannot be kept is logged, and status
        shows it until tgbackupd stops."""
        self.last[result.prefix] = result.to_dict()
        try:
            self._store.set_meta(LAST_DRILLS_KEY, json.dumps(self.last))
        except StateError as error:
            bound.error("Could not record the restore drill's result", error=str(error))

    def _recall(self) -> dict[str, dict[str, Any]]:
        try:
            return recorded_drills(self._store)
        except StateError:
            return {}

    def _recall_attempt(self) -> datetime | None:
        try:
            text = self._store.meta(ATTEMPT_KEY)
            return datetime.fromisoformat(text) if text else None
        except (StateError, ValueError):
            return None


def _drill(backup: Backup, bot: BotApi | None, chat: "ChatIndex", stop: Stop, bound: Any) -> dict[str, Any]:
    """Download, restore, count, compare and drop: the DrillResult's fields that say how it went."""
    config = backup.config
    telegram = config.telegram
    if bot is None or telegram.chat_id is None or telegram.bot_token is None:
        return {
            "error": "Telegram is not configured (set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID): a drill "
            "restores the backup in the chat"
        }
    quiet = Progress(io.StringIO())  # inside the daemon, the log reports instead
    source = restore.TelegramSource(
        bot, telegram.chat_id, Keyring((ManifestKey.from_token(telegram.bot_token),)), quiet
    )
    outcome: dict[str, Any] = {}
    guard = _Guard(stop)
    try:
        manifest = chat.newest(backup, stop)
        outcome["file"] = manifest.name
        bound.info(f"Restore drill: downloading {manifest.name} from the chat", file=manifest.name)
        with tempfile.TemporaryDirectory(prefix="tgbackupd-drill-") as workdir:
            checked = source.fetch(manifest, Path(workdir))
            guard.watch(checked.downloads)

            def left_behind(problem: str) -> None:
                outcome["warning"] = problem
                bound.error("The restore drill's scratch database was left behind", error=problem)

            try:
                identity = config.encryption.identity
                checked = restore.unlock(checked, (identity,) if identity else ())
                report = restore.verify(config.database, checked, quiet, stop, left_behind)
            finally:
                if checked.downloads is not None:  # before their directory goes, however it ended
                    checked.downloads.close()
    except (TgbackupdError, OSError) as error:
        reason: BaseException = guard.reason or error
        if isinstance(reason, OSError):
            reason = RestoreError(
                f"a disk error stopped the drill: {reason}. It downloads the backup to a temporary "
                f"directory under {tempfile.gettempdir()}: make room there (about the backup's size), or "
                "give tgbackupd a TMPDIR on a file system with space, and run "
                f"`tgbackupctl drill {backup.prefix}` again"
            )
        elif isinstance(reason, TimedOut):
            reason = TimedOut(
                f"the drill took longer than backup.timeout = {config.backup.timeout} s "
                f"({duration_text(config.backup.timeout)}) and was stopped (a scratch database it made was "
                "dropped). Raise backup.timeout if downloading and restoring need longer"
            )
        elif isinstance(reason, Cancelled):
            reason = Cancelled("tgbackupd stopped during the drill; it runs again at its next time")
        return {**outcome, "error": str(reason)}
    finally:
        guard.close()
    tables, rows = len(report.tables), report.rows
    outcome.update(tables=tables, rows=rows)
    try:
        entry = backup.store.entry(manifest.name)
    except StateError as error:
        outcome["comparison"] = f"{NO_EARLIER_COUNT} (the catalogue could not be read: {error})"
        return outcome
    verification = (entry.facts or {}).get("verification") if entry is not None else None
    outcome["comparison"], problem = compare(tables, rows, recorded_counts(verification))
    if problem is not None:
        outcome["error"] = problem
    return outcome


class ChatIndex:
    """The newest manifest of each series in the chat, for one drill run. The chain is walked once, from
    the pinned manifest back only as far as the series asked for so far, one step at a time under the
    asking drill's Stop (backup.timeout, tgbackupd stopping): a series with nothing in the chat would
    otherwise walk every manifest, thousands of requests for each database, while every backup waits."""

    def __init__(self) -> None:
        self._newest: dict[str, Manifest] = {}
        self._walk: Iterator[tuple[Manifest, ManifestRef]] | None = None
        self._bot: BotApi | None = None
        self._walked = 0
        self._ended = False
        self._failure: TgbackupdError | None = None  # what ended the walk early: the same for every series

    def newest(self, backup: Backup, stop: Stop) -> Manifest:
        """The newest manifest of `backup`'s series (Telegram configured). Raise what `stop` says when the
        drill must stop, RestoreError when the chain cannot be read or holds no backup of the series."""
        prefix, chat_id = backup.prefix, backup.config.telegram.chat_id
        while prefix not in self._newest and not self._ended:
            if self._failure is not None:
                raise self._failure
            reason = stop.reason("nothing was restored")
            if reason is not None:
                raise reason
            try:
                step = next(self._steps(backup), None)
            except TgbackupdError as error:
                self._failure = error
                raise
            if step is None:
                self._ended = True
            else:
                self._walked += 1
                self._newest.setdefault(series_of(step[0].name), step[0])
        if prefix in self._newest:
            return self._newest[prefix]
        raise RestoreError(
            f"no backup of {prefix} is in chat {chat_id}: none among the {self._walked} manifest(s) reached "
            "from the pinned one (was it never delivered, or was the pinned message changed?)"
        )

    def close(self) -> None:
        if self._bot is not None:
            self._bot.close()

    def _steps(self, backup: Backup) -> Iterator[tuple[Manifest, ManifestRef]]:
        """The walk, begun with a Bot API client of its own (each drill closes its own)."""
        if self._walk is None:
            telegram = backup.config.telegram
            self._bot = backup.open_bot()
            assert self._bot is not None and telegram.chat_id is not None and telegram.bot_token is not None
            keyring = Keyring((ManifestKey.from_token(telegram.bot_token),))
            source = restore.TelegramSource(self._bot, telegram.chat_id, keyring, Progress(io.StringIO()))
            self._walk = source.history()
        return self._walk


class _Guard:
    """Stops the downloads when the drill must stop (tgbackupd stops, backup.timeout passes): `Stop` ends
    psql then, but the restore may be waiting for a part, not for psql."""

    def __init__(self, stop: Stop) -> None:
        self._stop = stop
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.reason: TgbackupdError | None = None

    def watch(self, downloads: restore.Downloads | None) -> None:
        if downloads is None:
            return
        self._thread = threading.Thread(target=self._run, args=(downloads,), name="drill-guard", daemon=True)
        self._thread.start()

    def _run(self, downloads: restore.Downloads) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            reason = self._stop.reason("the scratch database was dropped")
            if reason is not None:
                self.reason = reason
                downloads.close()
                return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _tell_chat(bot: BotApi, backup: Backup, result: DrillResult, bound: Any) -> None:
    chat_id = backup.config.telegram.chat_id
    assert chat_id is not None
    counted = f"{result.tables} tables, {result.rows} rows" if result.tables is not None else None
    comparison = result.comparison or NO_EARLIER_COUNT
    if result.warning:
        comparison += f". WARNING: {result.warning}"
    notice = messages.drill_notice(
        prefix=backup.prefix,
        database=backup.describe,
        server=backup.server,
        file=result.file,
        counted=counted,
        comparison=comparison,
        error=result.error,
    )
    try:
        bot.send_message(chat_id, notice)
    except (TelegramError, Cancelled) as error:
        bound.warning(
            "Could not tell the Telegram chat",
            chat_id=chat_id,
            error=scrub(str(error), backup.config.secrets()),
        )
