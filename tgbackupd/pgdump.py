"""pg_dump: its command line (a pure function), and running it as a stream."""

import collections
import contextlib
import fcntl
import os
import re
import select
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from .config import DatabaseConfig
from .errors import DumpError
from .libpq import build_environment, client_environment, conninfo
from .stopping import TERMINATE_GRACE_S, Stop, Watch, end

STDERR_TAIL_LINES = 20
PIPE_BYTES = 1024 * 1024
_GONE_CHECK_S = 0.5
_STDERR_WAIT_S = 2.0


def build_command(database: DatabaseConfig, dump_format: str = "plain") -> tuple[str, ...]:
    """Return pg_dump's argv for a dump on standard output: plain SQL, as the original restore steps
    expect, or a custom-format archive for pg_restore, uncompressed since tgbackupd compresses every
    dump itself (so hashing, parts and delivery do not care which). Without owners and privileges, so
    that it restores into any database as any user: on a new machine the original roles may not exist
    (an archive keeps them anyway: pg_restore leaves them out). A table it cannot lock within
    database.lock_wait_timeout fails the dump, instead of leaving it (and every session queued behind
    its lock request) waiting for as long as an ALTER TABLE or a VACUUM FULL runs; in milliseconds, which
    every pg_dump understands. Then what the configuration chooses to dump, and its own options. The
    connection comes first: an option of database.pg_dump_args left without its value would otherwise
    take `--dbname=…` as that value, and pg_dump would dump libpq's default database instead (the
    configuration refuses such options too)."""
    compress = ("--compress=0",) if dump_format == "custom" else ()
    return (
        database.pg_dump,
        f"--dbname={conninfo(database)}",
        f"--format={dump_format}",
        *compress,
        "--no-owner",
        "--no-privileges",
        "--no-password",
        f"--lock-wait-timeout={database.lock_wait_timeout * 1000}",
        *(f"--schema={pattern}" for pattern in database.schemas),
        *(f"--exclude-schema={pattern}" for pattern in database.exclude_schemas),
        *(f"--table={pattern}" for pattern in database.tables),
        *(f"--exclude-table={pattern}" for pattern in database.exclude_tables),
        *database.pg_dump_args,
    )


def pg_dumpall_program(pg_dump: str) -> str:
    """pg_dumpall of the same installation as database.pg_dump (beside it when that is a path)."""
    return str(Path(pg_dump).with_name("pg_dumpall")) if "/" in pg_dump else "pg_dumpall"


def build_globals_command(database: DatabaseConfig, role_passwords: bool) -> tuple[str, ...]:
    """Return pg_dumpall's argv for the server's roles and tablespaces (what no pg_dump carries), as SQL
    on standard output; without the roles' password hashes unless `role_passwords`."""
    return (
        pg_dumpall_program(database.pg_dump),
        "--globals-only",
        *(() if role_passwords else ("--no-role-passwords",)),
        "--no-password",
        f"--dbname={conninfo(database)}",
    )


def pg_dump_major(program: str) -> tuple[int, str]:
    """Return pg_dump's major version and its own words (`pg_dump (PostgreSQL) 15.20`)."""
    try:
        completed = subprocess.run(
            [program, "--version"],
            capture_output=True,
            text=True,
            env=client_environment(os.environ),
            timeout=30,
            check=False,
        )
    except OSError as error:
        raise DumpError(f"{program} cannot be run: {error.strerror or error}") from None
    match = re.search(r"([0-9]+)(?:\.[0-9]+)?", completed.stdout)
    if completed.returncode != 0 or match is None:
        raise DumpError(f"{program} --version did not say its version: {completed.stderr.strip()}")
    return int(match[1]), completed.stdout.strip()


class DumpProcess:
    """A running pg_dump whose standard output is read in chunks; keeps the tail of its standard error.
    With a `stop`, it is ended the moment the backup must stop, whether or not it is printing."""

    def __init__(
        self,
        argv: tuple[str, ...],
        environment: dict[str, str],
        stop: Stop | None = None,
        name: str = "pg_dump",
    ) -> None:
        self._program = argv[0]
        self._name = name  # what errors call it
        try:
            # Its own session: a Ctrl-C meant for tgbackupd must not kill pg_dump behind our back.
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise DumpError(
                f"{self._program} was not found: install the PostgreSQL client tools "
                "(apt-get install postgresql-client) or set database.pg_dump to its path"
            ) from None
        except PermissionError:
            raise DumpError(f"{self._program} is not executable: check database.pg_dump") from None
        assert self._process.stdout is not None
        with contextlib.suppress(OSError):  # best effort: the user may be over its pipe quota
            # A pipe of 1 MiB instead of 64 KiB: pg_dump goes on writing while a chunk is compressed,
            # instead of waiting for it each time (measured: the dump then runs at its own speed).
            fcntl.fcntl(self._process.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_done = threading.Event()
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="pg_dump-stderr", daemon=True)
        self._stderr_reader.start()
        self._watch = (
            Watch(
                stop,
                lambda: self._process.poll() is None,
                self.terminate,
                f"{name} was ended and the unfinished file removed",
            )
            if stop is not None
            else None
        )

    def _read_stderr(self) -> None:
        """Keep the last lines pg_dump printed on its standard error, until it closes it or is gone (a
        process that left its session may hold it open: it is not waited for, nor is the pipe closed
        under a read, which would wait for that process too)."""
        assert self._process.stderr is not None
        descriptor = self._process.stderr.fileno()
        pending = b""
        while not self._stderr_done.is_set():
            readable, _, _ = select.select([descriptor], [], [], _GONE_CHECK_S)
            if not readable:
                if self._process.poll() is not None and self._stderr_done.wait(_STDERR_WAIT_S):
                    break
                continue
            block = os.read(descriptor, 65536)
            if not block:
                break
            *lines, pending = (pending + block).split(b"\n")
            self._stderr_tail.extend(line.decode("utf-8", "replace").rstrip() for line in lines)
        if pending:
            self._stderr_tail.append(pending.decode("utf-8", "replace").rstrip())

    def chunks(self, size: int) -> Iterator[bytes]:
        """What pg_dump writes, as it comes, until it closes its output or is gone: a process of its own
        that left its session (a wrapper script's) may hold the pipe open after pg_dump was ended."""
        assert self._process.stdout is not None
        descriptor = self._process.stdout.fileno()
        while True:
            readable, _, _ = select.select([descriptor], [], [], _GONE_CHECK_S)
            if not readable:
                if self._process.poll() is not None:
                    return
                continue
            chunk = os.read(descriptor, size)  # what the pipe holds, without waiting for more
            if not chunk:
                return
            yield chunk

    def wait(self) -> None:
        """Wait for pg_dump to end. Raise DumpError carrying its own error output if it failed."""
        returncode = self._process.wait()
        # Its error output is read to the end, unless a process that left its session holds it open.
        self._stderr_reader.join(_STDERR_WAIT_S)
        if self._watch is not None:
            self._watch.close(failed=returncode != 0)
            if self._watch.reason is not None:
                raise self._watch.reason
        if returncode != 0:
            detail = "\n".join(self._stderr_tail) or "it printed nothing"
            if "server version mismatch" in detail:
                detail += (
                    f"\n{self._program} is older than the server: install the client of the server's major "
                    "version (postgresql-client-NN) and point database.pg_dump at its pg_dump"
                )
            if "statement timeout" in detail and "LOCK TABLE" in detail:
                detail += (
                    "\npg_dump could not lock a table within database.lock_wait_timeout: another session "
                    "holds a conflicting lock (ALTER TABLE, VACUUM FULL, …; see pg_locks and "
                    "pg_stat_activity). Find that session, or raise database.lock_wait_timeout"
                )
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
            )
            raise DumpError(f"{self._name} {how}: {detail}")

    def terminate(self) -> None:
        """Stop pg_dump now (SIGTERM, then SIGKILL if it lingers) and reap it."""
        end(self._process)
        self._stderr_reader.join(TERMINATE_GRACE_S)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close(failed=False)
        self._stderr_done.set()
        self._stderr_reader.join()  # at most a moment: it looks at the flag twice a second
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def run_pg_dump(
    database: DatabaseConfig,
    base_environment: Mapping[str, str] = os.environ,
    stop: Stop | None = None,
    dump_format: str = "plain",
) -> Iterator[DumpProcess]:
    """Start pg_dump for the database; on leaving early (an error, a cancel) it is stopped and reaped.
    With a `stop`, it is ended when the backup must stop, and `wait` raises that reason."""
    with _running(
        DumpProcess(build_command(database, dump_format), build_environment(database, base_environment), stop)
    ) as process:
        yield process


@contextlib.contextmanager
def run_pg_dumpall_globals(
    database: DatabaseConfig,
    role_passwords: bool,
    base_environment: Mapping[str, str] = os.environ,
    stop: Stop | None = None,
) -> Iterator[DumpProcess]:
    """As run_pg_dump, for pg_dumpall --globals-only on the database's server."""
    argv = build_globals_command(database, role_passwords)
    environment = build_environment(database, base_environment)
    with _running(DumpProcess(argv, environment, stop, name="pg_dumpall")) as process:
        yield process


@contextlib.contextmanager
def _running(process: DumpProcess) -> Iterator[DumpProcess]:
    try:
        yield process
    finally:
        process.terminate()
        process.close()
