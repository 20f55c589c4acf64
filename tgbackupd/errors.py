"""Error types whose messages are written for the administrator, each with its sysexits status."""

import os


class TgbackupdError(Exception):
    """An expected failure: its message says what happened and what to do, without a traceback."""

    exit_code = 1


class ConfigError(TgbackupdError):
    """The configuration is invalid; carries every problem found, not just the first."""

    exit_code = os.EX_CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"Invalid configuration ({len(problems)} problem(s)):\n{listing}")


class UsageError(TgbackupdError):
    """A command was asked for something that does not apply (an option for another kind of backup)."""

    exit_code = os.EX_USAGE


class DumpError(TgbackupdError):
    """pg_dump could not be started or did not finish successfully."""

    exit_code = os.EX_UNAVAILABLE


class StorageError(TgbackupdError):
    """The backup file could not be written, moved into place or pruned."""

    exit_code = os.EX_CANTCREAT


class Cancelled(TgbackupdError):
    """The backup was stopped on purpose (the daemon is stopping)."""

    exit_code = os.EX_TEMPFAIL


class RestoreError(TgbackupdError):
    """A backup could not be fetched, checked or restored; nothing was changed unless the message says so."""

    exit_code = os.EX_DATAERR


class TimedOut(TgbackupdError):
    """The backup ran past backup.timeout, and what it was running was ended."""

    exit_code = os.EX_TEMPFAIL


class UndocumentedKey(TgbackupdError):
    """A configuration key without a description: tgbackupd.toml(5), made from the keys, would omit it."""

    exit_code = os.EX_SOFTWARE
