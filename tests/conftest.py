import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tests.processes import child_environment
from tgbackupd.backup import Backup
from tgbackupd.clock import Clock
from tgbackupd.config import Config
from tgbackupd.recovery import prepare_state
from tgbackupd.storage import BackupDirectory

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("TEST_PG_PORT", "5432")
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
UNPACED = "60000"  # telegram.messages_per_minute for the Bot API stand-in: one message a millisecond


def psql_command(dbname: str) -> list[str]:
    return [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        PG_HOST,
        "-p",
        PG_PORT,
        "-U",
        PG_USER,
        "-d",
        dbname,
    ]


def psql(dbname: str, sql: str) -> str:
    completed = subprocess.run(
        [*psql_command(dbname), "-At", "-c", sql], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def run_tgbackupd(
    environment: dict[str, str], *args: str, module: str = "tgbackupd"
) -> subprocess.CompletedProcess[str]:
    """Run `tgbackupd ARGS` (or `tgbackupctl`, with module="tgbackupd.ctl") to completion, as a user
    would from a shell or cron."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class SteppingClock(Clock):
    """A monotonic clock that stands still until something waits on it, then moves on at once by the
    time waited: minutes of pacing pass in no time."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def wait(self, cancel: threading.Event, seconds: float) -> bool:
        self.seconds += seconds
        return cancel.is_set()


@contextlib.contextmanager
def small_file_system(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A file system of its own at `path` (tmpfs of `size`, e.g. "256k"), unmounted afterwards: a disk
    that fills up, or one that cannot be written. Root only."""
    path.mkdir(exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def backup_for(config: Config, **options) -> Backup:
    """A Backup built as tgbackupd builds it at start: the backup directory, and the state store opened
    (migrated, rebuilt) from the configuration."""
    backup = config.backup
    directory = BackupDirectory(backup.directory, backup.prefix, config.backup_suffix)
    prepared = prepare_state(config, directory, structlog.get_logger())
    return Backup(config, prepared.store, directory, **options)


def psql_refusing(directory: Path, refusals: dict[str, str]) -> str:
    """A PATH whose psql answers as a server that refuses some requests would: each key found in psql's
    arguments makes it fail with that error. The rest goes to the real psql and the real server."""
    directory.mkdir(exist_ok=True)
    cases = "".join(
        f"  *'{wanted}'*) echo 'psql: error: {error}' >&2; exit 1;;\n" for wanted, error in refusals.items()
    )
    script = directory / "psql"
    script.write_text(f'#!/bin/sh\ncase "$*" in\n{cases}esac\nexec {shutil.which("psql")} "$@"\n')
    script.chmod(0o755)
    return f"{directory}:{child_environment()['PATH']}"


POSTGRES_12 = {"WITH (FORCE)": 'ERROR:  syntax error at or near "WITH"'}


def database_url(dbname: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


SAMPLE_SCHEMA = r"""
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    balance numeric(12, 2),
    created timestamptz NOT NULL DEFAULT '2025-12-03 03:00:00+00',
    notes text,
    data jsonb,
    avatar bytea
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    amount numeric(10, 2) NOT NULL,
    placed date NOT NULL
);
CREATE INDEX orders_by_customer ON orders (customer_id);
CREATE VIEW big_spenders AS SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id;
INSERT INTO customers (name, email, balance, notes, data, avatar)
SELECT 'Ünïcødé – 名前 ' || i, 'user' || i || '@example.org', (i * 1.25)::numeric(12, 2),
       CASE WHEN i % 7 = 0 THEN NULL
            ELSE E'line one\nline two\ttab \\ backslash ''quote'' ' || md5(i::text) END,
       jsonb_build_object('i', i, 'tags', jsonb_build_array('a', 'b', i % 3)),
       decode(md5(i::text), 'hex')
FROM generate_series(1, %(rows)s) AS i;
INSERT INTO orders (customer_id, amount, placed)
SELECT 1 + (i % %(rows)s), (i % 1000) / 10.0, DATE '2025-01-01' + (i % 365)
FROM generate_series(1, %(rows)s * 2) AS i;
"""

FINGERPRINT_SQL = """
SELECT (SELECT count(*) FROM customers) || ' ' ||
       (SELECT md5(string_agg(c::text, '|' ORDER BY id)) FROM customers c) || ' ' ||
       (SELECT count(*) FROM orders) || ' ' ||
       (SELECT md5(string_agg(o::text, '|' ORDER BY id)) FROM orders o) || ' ' ||
       (SELECT md5(string_agg(b::text, '|' ORDER BY customer_id)) FROM big_spenders b) || ' ' ||
       (SELECT last_value FROM customers_id_seq)
"""


def add_noise(dbname: str, megabytes: int) -> None:
    """Random bytes, which gzip cannot shrink below about half of their hex dump."""
    psql(dbname, "CREATE TABLE noise (id int PRIMARY KEY, b bytea)")
    psql(
        dbname,
        f"INSERT INTO noise SELECT i, decode(string_agg(md5(i::text || random()::text), ''), 'hex') "
        f"FROM generate_series(1, {megabytes * 8}) AS i, generate_series(1, 8192) GROUP BY i",
    )


def fingerprint(dbname: str) -> str:
    """A digest of every row, the view and the sequence: equal fingerprints mean equal contents."""
    return psql(dbname, FINGERPRINT_SQL)


@pytest.fixture
def make_database() -> Iterator:
    created: list[str] = []

    def make(rows: int = 2000, empty: bool = False) -> str:
        name = f"tgb_test_{uuid.uuid4().hex[:10]}"
        psql("postgres", f"CREATE DATABASE {name}")
        created.append(name)
        if not empty:
            psql(name, SAMPLE_SCHEMA.replace("%(rows)s", str(rows)))
        return name

    yield make
    for name in created:
        psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# What a restore gets wrong first, beside the sample's unicode, NULLs, bytea, jsonb, view and sequence:
# a table of 100,000 rows, a schema of its own, a function, a sequence set by hand, a name that needs
# quoting, and tables that the database.* options can leave out.
AWKWARD_SCHEMA = r"""
CREATE SCHEMA app;
CREATE TABLE app.events (
    id integer PRIMARY KEY,
    kind text,
    payload text,
    raw bytea,
    at timestamptz
);
INSERT INTO app.events
SELECT i, CASE WHEN i % 11 = 0 THEN NULL ELSE 'kind ' || (i % 17) END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'ĉu 日本語 🙂 ' || md5(i::text) || E'\n\t\\' END,
       CASE WHEN i % 3 = 0 THEN NULL ELSE decode(lpad(to_hex(i), 8, '0'), 'hex') || '\x00ff'::bytea END,
       TIMESTAMPTZ '2025-01-01 00:00:00+00' + i * INTERVAL '1 minute'
FROM generate_series(1, 100000) AS i;
CREATE INDEX events_by_kind ON app.events (kind);
CREATE SEQUENCE app.tickets START 100;
SELECT setval('app.tickets', 4242, true);
CREATE FUNCTION app.spent(customer integer) RETURNS numeric LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(sum(amount), 0) FROM public.orders WHERE customer_id = customer);
END $$;
CREATE VIEW app.kinds AS SELECT kind, count(*) AS n FROM app.events GROUP BY kind;
CREATE TABLE public."Odd Name ✓" (x text);
INSERT INTO public."Odd Name ✓" VALUES ('a'), (NULL), ('');
CREATE TABLE public.audit_log (id serial PRIMARY KEY, what text);
INSERT INTO public.audit_log (what) SELECT 'entry ' || i FROM generate_series(1, 50) AS i;
CREATE SCHEMA scratch;
CREATE TABLE scratch.junk (x int);
INSERT INTO scratch.junk SELECT generate_series(1, 10);
"""
_USER_SCHEMAS = "NOT IN ('pg_catalog', 'information_schema') AND {column} NOT LIKE 'pg_toast%'"


def contents(dbname: str) -> dict[str, str]:
    """Every table's and view's rows (count and digest), every sequence's value and every function's
    definition in the database: equal when two databases hold the same."""
    found: dict[str, str] = {}
    relations = psql(
        dbname,
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables "
        f"WHERE table_schema {_USER_SCHEMAS.format(column='table_schema')} ORDER BY 1",
    ).splitlines()
    for relation in relations:
        found[relation] = psql(
            dbname,
            f"SELECT count(*) || ' ' || coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '-') "
            f"FROM {relation} AS r",
        )
    for line in psql(
        dbname,
        "SELECT format('sequence %I.%I', schemaname, sequencename) || '|' || last_value FROM pg_sequences "
        "UNION ALL SELECT 'function ' || p.oid::regprocedure || '|' || md5(pg_get_functiondef(p.oid)) "
        f"FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE n.nspname {_USER_SCHEMAS.format(column='n.nspname')}",
    ).splitlines():
        name, value = line.split("|", 1)
        found[name] = value
    return found


@pytest.fixture
def awkward_database(make_database) -> Callable[[], str]:
    """Make a database with AWKWARD_SCHEMA beside the sample's, and return its name."""

    def make() -> str:
        name = make_database(rows=2000)
        psql(name, AWKWARD_SCHEMA)
        return name

    return make


@pytest.fixture
def bot_api() -> Iterator[BotApiStandIn]:
    with BotApiStandIn() as server:
        yield server


def base_environment(tmp_path: Path, dbname: str, **overrides: str) -> dict[str, str]:
    """An environment for tgbackupd that reads nothing of this machine's own configuration."""
    config_file = tmp_path / "config.toml"
    if not config_file.exists():
        config_file.write_text("")
    environment = child_environment(
        HOME=str(tmp_path),
        TGBACKUPD_CONFIG=str(config_file),
    )
    environment |= {
        "DATABASE_URL": database_url(dbname),
        "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path / "backups"),
        "TGBACKUPD_DAEMON_STATE_FILE": str(tmp_path / "state.db"),
        "TGBACKUPD_DAEMON_SOCKET": str(tmp_path / "control.sock"),
    }
    environment.update(overrides)
    return {name: value for name, value in environment.items() if value is not None}


def telegram_environment(bot_api: BotApiStandIn) -> dict[str, str]:
    return {
        "TELEGRAM_BOT_TOKEN": FAKE_TOKEN,
        "TELEGRAM_CHAT_ID": CHAT_ID,
        "TGBACKUPD_TELEGRAM_API_URL": bot_api.url,
        "TGBACKUPD_TELEGRAM_RETRIES": "2",
        # The stand-in is not Telegram: no need to pace to its limits (a test that checks the pace sets it).
        "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE": UNPACED,
    }


class NotifyListener:
    """The receiving end of systemd's notify protocol: a datagram socket at NOTIFY_SOCKET, drained by a
    thread as systemd would (a full queue would block the daemon's sends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.messages: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.socket.recv(4096).decode())
            except OSError:
                return

    def wait_for(self, wanted: str, timeout: float = 20.0) -> str:
        """Return the first message that contains `wanted`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if wanted in message:
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no {wanted!r} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.socket.shutdown(socket.SHUT_RDWR)
        self.socket.close()


class DaemonProcess:
    def __init__(self, environment: dict[str, str], tmp_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        tag = uuid.uuid4().hex[:8]
        self.notify = NotifyListener(tmp_path / f"notify-{tag}.sock")
        self.log_path = tmp_path / f"daemon-{tag}.log"
        self.socket_path = Path(environment["TGBACKUPD_DAEMON_SOCKET"])
        environment = {**environment, "NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": "1000000"}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgbackupd", *extra_args],
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.environment = environment

    def log_text(self) -> str:
        return self.log_path.read_text()

    def _ctl_command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tgbackupd.ctl", "--socket", str(self.socket_path), *args]

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._ctl_command(*args), capture_output=True, text=True, timeout=timeout, env=child_environment()
        )

    def trigger_in_background(self) -> subprocess.Popen[str]:
        """`tgbackupctl trigger`, left running while the test does something to the daemon."""
        return subprocess.Popen(
            self._ctl_command("trigger"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_environment(),
        )

    def stop(self) -> int:
        """SIGTERM, as systemctl stop sends it, then wait for the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.wait()

    def wait(self) -> int:
        try:
            return self.process.wait(30)
        finally:
            self._log.close()
            self.notify.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    started: list[DaemonProcess] = []

    def start(environment: dict[str, str], *extra_args: str) -> DaemonProcess:
        daemon = DaemonProcess(environment, tmp_path, extra_args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
