"""Dead-man pings: tell a monitoring service (healthchecks.io, or any that takes a URL) when a backup
starts, succeeds or fails, so that it raises the alarm when no success arrives in time, even when this
host is down. Pings go out from a thread of their own, one at a time and in order (a start before its
success or failure), each tried a few times with a short timeout: a ping never fails a backup nor holds
it up. The URLs are secrets (a check's UUID is all it takes to ping it): logs show scheme and host only."""

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import requests
import structlog

from .config import Config, PingUrls
from .events import Drilled, Finished, Listener, Started
from .redaction import scrub, url_for_logs, url_secrets
from .state import StateError, StateStore

TIMEOUT_S = 10.0
ATTEMPTS = 3
BACKOFF_S = 2.0  # before the second attempt; doubled before each one after
FLUSH_S = 5.0  # how long stopping waits for pings still queued
QUEUED_AT_MOST = 1000  # a service down for days must not fill the memory
# What a failure ping's body carries of the error: its last lines, as healthchecks.io shows a body.
ERROR_LINES = 20
BODY_BYTES = 10_000

log = structlog.stdlib.get_logger("tgbackupd.pings")


@dataclass(frozen=True)
class Ping:
    kind: str  # start, success or failure
    database: str
    url: str
    body: str = ""


def urls_of(config: Config) -> Callable[[str], PingUrls]:
    """Given the configuration, return where each series (by prefix) is pinged: its entry's URLs (an
    entry of `[[databases]]` may have its own, else it has the `monitoring` section's)."""

    def find(prefix: str) -> PingUrls:
        target = config.target_of(prefix)
        return target.pings if target else config.monitoring.pings

    return find


def configured_series(config: Config) -> Callable[[str], bool]:
    """Given the configuration, return whether a series (by prefix) is one of its own. A series no longer
    configured is none of the monitoring's business: its last failure must not hold back a check's
    success."""
    return lambda prefix: config.target_of(prefix) is not None


def failure_body(what: str, error: str | None) -> str:
    """What a failure ping says: what failed, then the error's last lines (the cause is at the end)."""
    heading = f"tgbackupd: {what}\n"
    lines = "\n".join((error or "no reason was recorded").splitlines()[-ERROR_LINES:]).encode()
    return heading + lines[-(BODY_BYTES - len(heading.encode())) :].decode(errors="ignore")


class Pings(Listener):
    """Hears the backups and queues their pings. A series that shares its URLs with others (one check for
    several databases) pings success only when none of them failed last: else the success of one would
    hide the failure of another. A restore drill pings failure when it fails, nothing when it passes (a
    drill's success is no backup's, and must not tell a dead-man check that one was made)."""

    name = "pings"

    def __init__(
        self,
        urls_of: Callable[[str], PingUrls],
        store: StateStore,
        secrets: Iterable[str] = (),
        *,
        configured: Callable[[str], bool],
        timeout_s: float = TIMEOUT_S,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._urls_of = urls_of
        self._secrets = list(secrets)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._flush_s = flush_s
        self._queue: queue.Queue[Ping | None] = queue.Queue(QUEUED_AT_MOST)
        self._abandon = threading.Event()
        self._failing: dict[PingUrls, set[str]] = {}
        self._recall(store, configured)
        # Set by `close`: a ping made after it (a backup that heard these listeners as a reload replaced
        # them) no longer goes to the worker, which is ending, but is sent at once.
        self._closed = False
        self._closing = threading.Lock()
        self._session = _new_session()
        self._worker = threading.Thread(target=self._work, name="pings", daemon=True)
        self._worker.start()

    def _recall(self, store: StateStore, configured: Callable[[str], bool]) -> None:
        """The configured series whose last backup failed, from the store: a restart must not forget
        them. A series no longer configured (or a 0.1 row, by database name) is left out: nothing of it
        would ever succeed again to release the check."""
        try:
            results = store.results_by_series()
        except (StateError, ValueError) as error:  # ValueError: a result that is no JSON
            log.warning(
                "Monitoring: the last results cannot be read; no earlier failure holds a success ping back",
                error=str(error),
            )
            return
        for prefix, result in results.items():
            if result.get("error") and configured(prefix):
                self._failing.setdefault(self._urls_of(prefix), set()).add(prefix)

    def started(self, event: Started) -> None:
        urls = self._urls_of(event.prefix)
        if urls.start:
            self._put(Ping("start", event.prefix, urls.start))

    def succeeded(self, event: Finished) -> None:
        urls = self._urls_of(event.prefix)
        failing = self._failing.setdefault(urls, set())
        failing.discard(event.prefix)
        if not urls.success:
            return
        if failing:
            log.warning(
                "Monitoring success ping held back: another database pinging the same URL failed last",
                database=event.prefix,
                failed=sorted(failing),
            )
            return
        self._put(Ping("success", event.prefix, urls.success))

    def failed(self, event: Finished) -> None:
        what = f"the backup of {event.result.database} ({event.prefix}) failed"
        self._fail(event.prefix, failure_body(what, event.result.error))

    def drilled(self, event: Drilled) -> None:
        if not event.succeeded:
            what = f"the restore drill of {event.prefix}{f' ({event.file})' if event.file else ''} failed"
            self._fail(event.prefix, failure_body(what, event.error))

    def _fail(self, prefix: str, body: str) -> None:
        urls = self._urls_of(prefix)
        self._failing.setdefault(urls, set()).add(prefix)
        if urls.failure:
            self._put(Ping("failure", prefix, urls.failure, scrub(body, self._secrets)))

    def _put(self, ping: Ping) -> None:
        with self._closing:
            if not self._closed:
                self._queue_up(ping)
                return
        self._send_late(ping)

    def _queue_up(self, ping: Ping) -> None:
        try:
            self._queue.put_nowait(ping)
        except queue.Full:
            log.error(
                "Monitoring ping failed",
                ping=ping.kind,
                database=ping.database,
                url=url_for_logs(ping.url),
                error=f"{QUEUED_AT_MOST} pings wait already: the service has not answered for long",
            )

    def _work(self) -> None:
        while (ping := self._queue.get()) is not None:
            self._send(ping)

    def _send_late(self, ping: Ping) -> None:
        """Send a ping made after `close`, in the caller's thread and once only (bounded by the timeout):
        the worker is gone or going, and a dead-man check must not miss a backup for a reload. It goes
        after what the worker still flushes (a start ping must not come after its success)."""
        log.info(
            "Monitoring ping made after a reload replaced the monitoring, or as tgbackupd stops: sent now",
            ping=ping.kind,
            database=ping.database,
        )
        self._worker.join(self._flush_s)
        with _new_session() as session:
            self._send(ping, session, attempts=1)

    def _send(self, ping: Ping, session: requests.Session | None = None, attempts: int | None = None) -> None:
        """Send one ping, trying again after a growing pause; log it if it never got through."""
        session = session or self._session
        attempts = attempts or self._attempts
        problem = ""
        for attempt in range(1, attempts + 1):
            try:
                if ping.body:  # healthchecks.io keeps a POST's body and shows it with the failure
                    response = session.post(ping.url, data=ping.body.encode(), timeout=self._timeout_s)
                else:
                    response = session.get(ping.url, timeout=self._timeout_s)
                response.close()
            except requests.RequestException as error:
                secrets = [*self._secrets, *url_secrets([ping.url])]
                problem = scrub(f"{type(error).__name__}: {error}", secrets)
            else:
                if response.ok:
                    log.debug("Monitoring ping sent", ping=ping.kind, database=ping.database)
                    return
                problem = f"the service answered HTTP {response.status_code}"
            if attempt < attempts and self._abandon.wait(self._backoff_s * 2 ** (attempt - 1)):
                break
        log.warning(
            "Monitoring ping failed",
            ping=ping.kind,
            database=ping.database,
            url=url_for_logs(ping.url),
            attempts=attempt,
            error=problem,
        )

    def close(self) -> None:
        """Send what is queued, for at most FLUSH_S seconds (a backup's last ping must not be lost when
        `tgbackupd --once` ends); what is left then is logged, not sent."""
        deadline = time.monotonic() + self._flush_s
        with self._closing:
            self._closed = True
        try:
            self._queue.put(None, timeout=self._flush_s)
            queued_end = 1
        except queue.Full:
            queued_end = 0
        self._worker.join(max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive():  # a daemon thread: it ends with the process, or at its next pause
            self._abandon.set()
            log.warning(
                "Monitoring pings not sent: tgbackupd is stopping and the service has not accepted them",
                unsent=self._queue.qsize() - queued_end + 1,  # and the one being tried
                waited_s=self._flush_s,
            )
        else:
            self._session.close()


def _new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "tgbackupd"
    return session
