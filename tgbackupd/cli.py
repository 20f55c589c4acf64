"""`tgbackupd`: the daemon's command line."""

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import structlog
import tomli_w

from . import __version__, messages
from .checks import render as render_checks
from .checks import run_checks
from .config import Config, effective_config, load_config
from .daemon import Daemon
from .errors import TgbackupdError
from .events import Events
from .fleet import Fleet, first_directory
from .integrations import listeners
from .logs import SYSLOG_PRIORITIES, configure_logging, under_journald
from .recovery import prepare_state
from .state import NotTheOwner, StateError, StateStore, check_location
from .states import Trigger
from .storage import BackupDirectory

log = structlog.stdlib.get_logger("tgbackupd.daemon")

EPILOG = """\
exit status:
  0   success (--once: the backup was made, and sent when Telegram is configured; --check: all passed)
  1   the backup failed (--once; the reason is logged and sent to the chat), or a check failed (--check)
  69  the daemon could not start (control socket in use, ...)
  73  the state file (daemon.state_file) or the backup directory cannot be created or written
  78  the configuration is invalid (every problem is listed on standard error)

configuration: /etc/tgbackupd/config.toml, --config, or TGBACKUPD_CONFIG; environment variables
(TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID, BACKUP_ENABLED, BACKUP_HOUR, DATABASE_URL, PG*, and
TGBACKUPD_<SECTION>_<KEY>) override the file.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgbackupd",
        description="Back up a PostgreSQL database every day and deliver it to a Telegram chat.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="PATH", help="configuration file (default /etc/tgbackupd/config.toml)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it with secrets redacted, and exit",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="check the live setup end to end (database, pg_dump, directory, token, chat, rights) and exit",
    )
    mode.add_argument(
        "--once",
        action="store_true",
        help="make one backup now, deliver it, and exit (for cron, or a first try)",
    )
    parser.add_argument("--version", action="version", version=f"tgbackupd {__version__}")
    return parser


def _print_error(error: TgbackupdError) -> None:
    """Plain text for people; under journald each line carries the error priority, so `-p err` shows it."""
    prefix = f"<{SYSLOG_PRIORITIES['ERROR']}>" if under_journald(os.environ) else ""
    for line in f"tgbackupd: {error}".splitlines():
        print(f"{prefix}{line}", file=sys.stderr)


def _render_config(config: Config) -> str:
    environment = sorted(
        source.removeprefix("environment variable ")
        for source in set(config.sources.values())
        if source.startswith("environment variable ")
    )
    header = [
        "# tgbackupd: the configuration is valid. Effective values follow, secrets redacted.",
        f"# file: {config.config_file or 'none (defaults and environment only)'}",
        f"# from the environment: {', '.join(environment) or 'nothing'}",
    ]
    if config.telegram.bot_token_source:
        header.append(f"# bot token from: {config.telegram.bot_token_source}")
    if config.database.options:
        options = " ".join(f"{name}={value}" for name, value in config.database.options)
        header.append(f"# connection options from database.url: {options}")
    if not config.telegram.configured:
        header.append("# Telegram is not configured: backups will be kept locally only.")
    return "\n".join(header) + "\n" + tomli_w.dumps(effective_config(config))


def _run_once(config: Config, store: StateStore, directory: BackupDirectory, problem: str | None) -> int:
    """Back up every database once, one after the other; exit 1 if any failed."""
    fleet = Fleet(config, store, directory, events=Events(listeners(config, store)))
    backup = fleet.first
    if problem is not None:
        backup.tell_chat(problem)

    def stop(signum: int, frame: FrameType | None) -> None:
        backup.cancel.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        results = fleet.run(Trigger.MANUAL)
    finally:
        fleet.events.close()  # the last pings go out before the process ends
    for result in results:
        if result.succeeded:
            where = (
                ("sent to Telegram chat " + str(config.telegram.chat_id))
                if result.delivery == "sent"
                else "kept locally (Telegram is not configured)"
            )
            if result.path is None:
                where += "; not kept on this machine (backup.keep = 0)"
            size = messages.human_size(result.size_bytes or 0)
            print(f"Backup created: {result.path or result.file} ({size}), {where}")
        else:
            named = f" ({result.database})" if len(results) > 1 else ""
            print(f"Backup failed{named}: {result.error}", file=sys.stderr)
    return 0 if results and all(result.succeeded for result in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, os.environ)
        if args.check_config:
            sys.stdout.write(_render_config(config))
            try:
                check_location(config.daemon.state_file, create=False)
            except NotTheOwner as owned:
                if os.geteuid() != 0:
                    raise
                # Root checking the configuration of a service that runs as its own user: say so, no more.
                print(f"tgbackupd: note: {owned}", file=sys.stderr)
            return 0
    except TgbackupdError as error:
        _print_error(error)
        return error.exit_code
    directory = first_directory(config)
    if args.check:
        checks = run_checks(config, directory)
        print(render_checks(checks))
        return 0 if all(check.ok for check in checks) else 1
    configure_logging(config.daemon.log_level, config.secrets())
    try:
        prepared = prepare_state(config, directory, log)
    except StateError as error:
        log.error("tgbackupd cannot start", error=str(error))
        _print_error(error)
        return error.exit_code
    try:
        if args.once:
            return _run_once(config, prepared.store, directory, prepared.problem)
        return Daemon(config, prepared.store, directory, prepared.problem, config_path=args.config).run()
    finally:
        prepared.store.close()


if __name__ == "__main__":
    sys.exit(main())
