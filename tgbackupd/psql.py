"""psql and pg_restore: the one place that runs them, to restore a dump into a database and to ask the
server questions."""

import collections
import contextlib
import itertools
import os
import queue
import re
import secrets
import subprocess
import threading
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import DatabaseConfig
from .errors import RestoreError
from .libpq import build_environment, conninfo
from .stopping import Stop, Watch, end

STDERR_TAIL_LINES = 20
SHOWN_ERRORS = 20
QUERY_TIMEOUT_S = 3600
_READ_BYTES = 1024 * 1024
# Chunks of SQL (up to 4 MB each) made ahead of what psql has read.
_QUEUED_CHUNKS = 4
_WRITER_POLL_S = 0.1
_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema')"


def _argv(database: DatabaseConfig, dbname: str | None, *extra: str, stop_on_error: bool = True) -> list[str]:
    return [
        "psql",
        "-X",
        "-q",
        "--no-password",
        *(("-v", "ON_ERROR_STOP=1") if stop_on_error else ()),
        "-d",
        conninfo(database, dbname),
        *extra,
    ]


def _start(
    argv: list[str], database: DatabaseConfig, extra_environment: Mapping[str, str] = {}, **streams: Any
) -> subprocess.Popen[Any]:
    environment = {**build_environment(database, os.environ), **extra_environment}
    try:
        return subprocess.Popen(argv, env=environment, **streams)
    except FileNotFoundError:
        raise RestoreError(
            f"{argv[0]} was not found: install the PostgreSQL client tools (postgresql-client)"
        ) from None


def _watch(process: subprocess.Popen[Any], stop: Stop | None, program: str = "psql") -> Watch | None:
    """End psql (or pg_restore) the moment the job must stop; its server session ends with it or is
    terminated later."""
    if stop is None:
        return None
    return Watch(
        stop, lambda: process.poll() is None, lambda: end(process, group=False), f"{program} was ended"
    )


class _StderrTail:
    """The last lines a program prints on its standard error, read as they come (so that it never waits
    for a full pipe)."""

    def __init__(
        self, process: subprocess.Popen[Any], program: str, errors: "ScriptErrors | None" = None
    ) -> None:
        self._process = process
        self._program = program
        self._lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._errors = errors  # where each line goes to be sorted, for a script run past its errors
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            text = line.decode("utf-8", "replace").rstrip()
            self._lines.append(text)
            if self._errors is not None:
                self._errors.note(text)

    def text(self) -> str:
        """What it printed, once it has closed its standard error (it ended)."""
        self._reader.join()
        return "\n".join(self._lines) or f"{self._program} exited with status {self._process.returncode}"


class _EndMarker:
    """A line psql is given to print after the SQL (`\\echo` of a random word), and whether it did:
    proof that it ran to the end of its input. Its standard output (the rows of the dump's few SELECTs)
    is read as it comes, keeping nothing but that."""

    def __init__(self, process: subprocess.Popen[Any]) -> None:
        self._process = process
        self._word = f"tgbackupd-end-{secrets.token_hex(16)}"
        self.command = f"\n\\echo {self._word}\n".encode()
        self._seen = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip() == self._word.encode():
                self._seen = True

    def seen(self) -> bool:
        """Whether psql printed it, once psql has ended."""
        self._reader.join()
        return self._seen


def _stopped(watch: Watch | None, returncode: int) -> None:
    """Raise why psql was ended, if the job ended it."""
    if watch is not None:
        watch.close(failed=returncode != 0)
        if watch.reason is not None:
            raise watch.reason


def _failure(process: subprocess.Popen[Any], watch: Watch | None, tail: _StderrTail) -> str | None:
    """Wait for the program to end. Raise why the job ended it, if it did; return what it printed if it
    failed, else None."""
    returncode = process.wait()
    printed = tail.text()
    _stopped(watch, returncode)
    return printed if returncode != 0 else None


def query(
    database: DatabaseConfig,
    sql: str,
    dbname: str | None = None,
    stop: Stop | None = None,
    timeout_s: float = QUERY_TIMEOUT_S,
) -> list[list[str]]:
    """Run SQL and return its rows as lists of text, within `timeout_s`. Raise RestoreError with psql's
    message if it fails, and the reason if `stop` ended it."""
    process = _start(
        _argv(database, dbname, "-At", "-F", "\t", "-c", sql),
        database,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = _watch(process, stop)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        end(process, group=False)
        raise RestoreError(
            f"psql had no answer from {dbname or database.name} within {timeout_s:g} s and was ended"
        ) from None
    finally:
        if process.poll() is None:  # an exception while waiting: never leave psql behind
            end(process, group=False)
    _stopped(watch, process.returncode)
    if process.returncode != 0:
        raise RestoreError(f"psql failed on {dbname or database.name}: {stderr.strip()}")
    return [line.split("\t") for line in stdout.splitlines()]


def user_relations(database: DatabaseConfig) -> int:
    """How many tables, views, sequences, … the database holds outside the system schemas."""
    rows = query(
        database,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg_toast%' "
        "AND n.nspname NOT LIKE 'pg_temp%'",
    )
    return int(rows[0][0])


def database_size_bytes(database: DatabaseConfig, stop: Stop | None = None) -> int:
    """The database's size on the server (tables, indexes, free space), as pg_database_size says."""
    return int(query(database, "SELECT pg_database_size(current_database())", stop=stop, timeout_s=60)[0][0])


# Prepended to a restore with --clean: the same transaction drops every non-system schema first.
CLEAN_SQL = (
    "DO $$ DECLARE schema_name text; BEGIN "
    f"FOR schema_name IN SELECT nspname FROM pg_namespace WHERE nspname NOT IN {_SYSTEM_SCHEMAS} "
    "AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%' "
    "LOOP EXECUTE format('DROP SCHEMA %I CASCADE', schema_name); END LOOP; "
    "CREATE SCHEMA public; END $$;\n"
)


def table_row_counts(
    database: DatabaseConfig, dbname: str, stop: Stop | None = None
) -> list[tuple[str, int]]:
    """Every table of the database with its exact number of rows."""
    rows = query(
        database,
        "SELECT format('%I.%I', table_schema, table_name), "
        "(xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, "
        "table_name), false, true, '')))[1]::text FROM information_schema.tables "
        f"WHERE table_type = 'BASE TABLE' AND table_schema NOT IN {_SYSTEM_SCHEMAS} ORDER BY 1",
        dbname,
        stop,
    )
    return [(name, int(count)) for name, count in rows]


def restore(
    database: DatabaseConfig, sql_chunks: Iterable[bytes], dbname: str | None = None, stop: Stop | None = None
) -> int:
    """Feed SQL to psql in one transaction that stops at the first error, so that a failed restore
    leaves the database as it was. The transaction is ours (BEGIN first, not psql's --single-transaction,
    which commits at the end of its input, however it ends): COMMIT is sent only once `sql_chunks` is
    exhausted (every check it makes passed). If taking a chunk raises, psql is ended instead; if
    tgbackupctl dies, psql's input ends without COMMIT: either way the server rolls the transaction back.
    Return how many bytes of SQL went in. With a `stop`, psql is ended the moment the job must stop, and
    that reason is raised."""
    failed = (
        f"the restore into {dbname or database.name} failed and was rolled back, so the database is as it "
        "was before"
    )
    statements = itertools.chain((_BEGIN,), sql_chunks)
    return _feed(_argv(database, dbname), database, statements, failed, stop, commit=_COMMIT) - len(_BEGIN)


# A message psql prints from the server running a script (`-f -`, VERBOSITY verbose): where, the severity
# (in the server's language), then the SQLSTATE, which no language changes. Classes 00, 01 and 02 are
# notices and warnings; every other is an error. psql's own errors (LC_ALL=C: in English) say "error:".
_SERVER_MESSAGE = re.compile(r"psql:<stdin>:\d+: [^:]+:  ([0-9A-Z]{5}): ")
_PSQL_ERROR = re.compile(r"psql:<stdin>:\d+: error: ")
_NOT_ERRORS = ("00", "01", "02")
DUPLICATE_OBJECT = "42710"  # CREATE ROLE of a role the server has: what a globals script always meets


class ScriptErrors:
    """The errors psql reported running a script, counted without limit: those saying an object exists
    already (DUPLICATE_OBJECT) apart from all others; the first SHOWN_ERRORS lines of each are kept."""

    def __init__(self) -> None:
        self.existing: list[str] = []
        self.existing_count = 0
        self.failed: list[str] = []
        self.failed_count = 0

    def note(self, line: str) -> None:
        server = _SERVER_MESSAGE.match(line)
        if server is None and not _PSQL_ERROR.match(line):
            return
        if server is not None and server.group(1).startswith(_NOT_ERRORS):
            return
        if server is not None and server.group(1) == DUPLICATE_OBJECT:
            self.existing_count += 1
            if len(self.existing) < SHOWN_ERRORS:
                self.existing.append(line)
        else:
            self.failed_count += 1
            if len(self.failed) < SHOWN_ERRORS:
                self.failed.append(line)


_BEGIN = b"BEGIN;\n"
_COMMIT = b"\nCOMMIT;\n"


def run_script(database: DatabaseConfig, sql_chunks: Iterable[bytes]) -> tuple[int, ScriptErrors]:
    """Feed SQL to psql as `psql -f` runs a script: each statement on its own, going on past errors.
    Return how many bytes of SQL went in, and the errors psql reported, each told by its SQLSTATE."""
    failed = f"psql could not run the script on {database.name}"
    errors = ScriptErrors()
    argv = _argv(database, None, "-v", "VERBOSITY=verbose", "-f", "-", stop_on_error=False)
    # psql's own messages in English; the server's may be in any language: their SQLSTATE tells them.
    english = {"LC_ALL": "C", "LC_MESSAGES": "C"}
    return _feed(argv, database, sql_chunks, failed, None, errors, english), errors


def _feed(
    argv: list[str],
    database: DatabaseConfig,
    sql_chunks: Iterable[bytes],
    failed: str,
    stop: Stop | None,
    errors: ScriptErrors | None = None,
    extra_environment: Mapping[str, str] = {},
    commit: bytes = b"",
) -> int:
    """Run psql with the SQL on its standard input, then `commit`; return how many bytes of SQL went in.
    Each line it prints on its standard error goes to `errors`, if given. Raise RestoreError saying
    `failed`, with the tail of its error output, if it fails, or if it stopped reading before the end (a
    `\\q` in the SQL: what came after it, and its checks, never ran)."""
    streams = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    process = _start(argv, database, extra_environment, **streams)
    watch = _watch(process, stop)
    tail = _StderrTail(process, "psql", errors)
    # psql says this once it has run everything before it (and `commit`): a `\q` in the SQL cannot.
    reached = _EndMarker(process)
    writer = _Writer(process)
    written = 0
    try:
        for chunk in sql_chunks:
            if not writer.put(chunk):
                break  # psql stopped reading; its exit status and message say why
            written += len(chunk)
        else:
            writer.put(commit + reached.command)
        writer.finish()
    except BaseException:
        end(process, group=False)  # before its input could end: nothing is committed
        writer.abandon()
        raise
    failure = _failure(process, watch, tail)
    if failure is not None:
        raise RestoreError(f"{failed}: {failure}")
    if not reached.seen():
        raise RestoreError(
            f"{failed}: psql ended before the end of the backup (a \\q in it?), so the rest of it was not "
            "read nor checked"
        )
    return written


# pg_restore leaves out what a plain dump leaves out (pg_dump cannot leave them out of an archive).
_PG_RESTORE = ("pg_restore", "--no-owner", "--no-privileges")


def archive_sql(database: DatabaseConfig, archive_chunks: Iterable[bytes]) -> Generator[bytes, None, None]:
    """The SQL a custom-format archive (fed on pg_restore's standard input) stands for, as pg_restore
    writes it out, for `restore` to run in psql's one transaction: a --clean prologue then runs in that
    same transaction, and any failure rolls all of it back. Raise RestoreError if pg_restore cannot
    read the archive (psql, still in its transaction, is then ended: nothing is committed), and what
    reading `archive_chunks` raised. Left early, pg_restore is ended."""
    process = _start(
        [*_PG_RESTORE, "--file=-"],
        database,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tail = _StderrTail(process, "pg_restore")
    failures: list[BaseException] = []
    ending = threading.Event()

    def feed() -> None:
        """Give pg_restore the archive, and read it to its end even when pg_restore stopped reading
        early: the checks made as it is read (each part's hash, the whole's) must all run before psql
        may commit what pg_restore made of it."""
        assert process.stdin is not None
        reading = True
        try:
            for chunk in archive_chunks:
                if ending.is_set():
                    return  # the restore failed or was stopped: no need to read further
                if reading:
                    try:
                        process.stdin.write(chunk)
                    except BrokenPipeError:
                        reading = False  # its exit status says why; the rest is still checked
        except BaseException as error:
            failures.append(error)
            end(process, group=False)
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    feeder = threading.Thread(target=feed, name="pg_restore-stdin", daemon=True)
    feeder.start()
    assert process.stdout is not None
    try:
        while block := os.read(process.stdout.fileno(), _READ_BYTES):
            yield block
        returncode = process.wait()
    finally:
        if process.poll() is None:  # left early: the restore failed or was stopped
            ending.set()
            end(process, group=False)
        # Before the archive's reader is closed by whoever gave it: never close it under this thread.
        feeder.join()
        process.stdout.close()
    if failures:
        raise failures[0]
    if returncode != 0:
        raise RestoreError(f"pg_restore cannot read the backup's archive: {tail.text()}")


def restore_archive_in_parallel(
    database: DatabaseConfig, archive: Path, jobs: int, dbname: str | None = None, stop: Stop | None = None
) -> None:
    """Restore a custom-format archive file with pg_restore on `jobs` connections at once, stopping at
    the first error. Each connection commits on its own (pg_restore cannot run several in one
    transaction): a failure leaves what was restored before it, and RestoreError says so."""
    process = _start(
        [
            *_PG_RESTORE,
            "--exit-on-error",
            "--no-password",
            f"--jobs={jobs}",
            f"--dbname={conninfo(database, dbname)}",
            str(archive.resolve()),  # absolute: a --work-dir such as -x is no option
        ],
        database,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    watch = _watch(process, stop, "pg_restore")
    tail = _StderrTail(process, "pg_restore")
    try:
        failure = _failure(process, watch, tail)
    finally:
        if process.poll() is None:  # interrupted while waiting: never leave pg_restore behind
            end(process, group=False)
    if failure is not None:
        raise RestoreError(
            f"the parallel restore into {dbname or database.name} failed, and what was restored before the "
            f"failure is still there ({jobs} connections each commit on their own): drop the database, "
            f"create it empty and restore again (without --jobs, a failure leaves nothing): {failure}"
        )


class _Writer:
    """Writes chunks to psql's input from a thread of its own, a few chunks behind whoever puts them;
    closes that input (so psql commits) only when told to `finish`."""

    def __init__(self, process: subprocess.Popen[Any]) -> None:
        assert process.stdin is not None
        self._stdin = process.stdin
        self._chunks: queue.Queue[bytes | None] = queue.Queue(_QUEUED_CHUNKS)
        self._broken = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="psql-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: bytes) -> bool:
        """Queue a chunk; False once psql no longer reads."""
        while not self._broken.is_set():
            try:
                self._chunks.put(chunk, timeout=_WRITER_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def finish(self) -> None:
        """Let psql's input end after the chunks queued, and wait until it did. Raise what writing
        raised, other than psql no longer reading."""
        self._put_end()
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def abandon(self) -> None:
        """psql was ended: stop writing, without ending its input."""
        self._broken.set()
        with contextlib.suppress(queue.Full):  # full: the thread is writing, and the write fails
            self._chunks.put_nowait(b"")  # wakes the thread if it waits for a chunk
        self._thread.join()

    def _put_end(self) -> None:
        while not self._broken.is_set():
            try:
                self._chunks.put(None, timeout=_WRITER_POLL_S)
                return
            except queue.Full:
                continue

    def _write(self) -> None:
        try:
            while (chunk := self._chunks.get()) is not None:
                if self._broken.is_set():
                    return
                self._stdin.write(chunk)
            self._stdin.close()
        except BrokenPipeError:
            pass
        except BaseException as error:  # raised again by finish, on the caller's thread
            self._failure = error
        finally:
            self._broken.set()
