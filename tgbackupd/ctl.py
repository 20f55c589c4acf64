"""`tgbackupctl`: talks to the daemon's control socket and renders its replies for people; restores and
verifies backups itself, since the server they came from may be gone."""

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__, messages, restore
from .checks import Check
from .checks import render as render_checks
from .commands import describe_drill, describe_last, listing
from .config import (
    ClientConfig,
    DatabaseConfig,
    database_from_url,
    load_client_config,
    secret_spellings,
    secrets_in_environment,
    token_from_file,
    url_password,
)
from .control import DaemonNotRunning, request
from .errors import ConfigError, RestoreError, TgbackupdError
from .manifest import GLOBALS_FORMAT, Manifest
from .progress import Progress
from .redaction import scrub
from .signing import Keyring, ManifestKey
from .statefile import open_reader
from .storage import BackupDirectory, spooled_parts
from .telegram import BotApi

DEFAULT_SOCKET = "/run/tgbackupd/control.sock"
# Older than this, the newest backup the pinned manifest leads to is worth a warning: backups run daily.
OLD_LATEST_DAYS = 2
EXIT_BACKUP_FAILED = 1
EXIT_REFUSED = {
    "permission_denied": os.EX_NOPERM,
    "busy": os.EX_TEMPFAIL,
    "stopping": os.EX_TEMPFAIL,
    "too_many_clients": os.EX_TEMPFAIL,
    "unknown_database": os.EX_USAGE,
    "reload_failed": os.EX_CONFIG,
    "timeout": os.EX_TEMPFAIL,
}

EPILOG = f"""\
exit status:
  0   success
  1   the backup failed (the reason is printed; it was also logged and sent to the chat); a check failed;
      with several databases: any of them failed (each is named); drill: a restore drill failed; prune
      could not remove a file or read the catalogue
  64  wrong usage; trigger/drill DBNAME names no database backed up (or drilled) here; restore --jobs
      with a plain backup (it applies to custom-format ones); restore/verify: the backup is encrypted
      and no --identity given, or age cannot use an --identity file (a public key, a damaged or empty
      key file)
  65  restore/verify: a part is missing or corrupt, the restore failed (and was rolled back; with
      --jobs, what was restored before the failure stays), or no --identity given can decrypt the backup
  69  tgbackupd is not running, or its socket is not where --socket says; Telegram unreachable
  75  a backup or drill is already running (use trigger/drill --wait; prune: try again when it ended),
      tgbackupd is stopping, or it did not answer in time (also: it stayed busy with other clients for 5 s)
  77  permission denied: not root, nor the tgbackupd user, nor a member of the control group
  78  the configuration is invalid (reload: the new one was rejected, the running one stays), or restore
      does not know which database to restore into
  129, 143  restore/verify ended by SIGHUP, SIGTERM (130: Ctrl-C): rolled back, the work directory and an
      incomplete --output removed

The socket is --socket, else $TGBACKUPD_DAEMON_SOCKET, else {DEFAULT_SOCKET}.
restore, verify and list --remote read the same configuration as tgbackupd (--config, TGBACKUPD_CONFIG,
/etc/tgbackupd/config.toml) and environment (TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID, DATABASE_URL, PG*);
on a new machine the token and the chat id are enough to find every backup. A manifest in the chat is
followed only if it was signed with this bot token's key: after the token was changed, give the old one
with --manifest-key-from-token-file FILE; manifests of tgbackupd 0.1 need --trust-unsigned.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tgbackupctl",
        description="Ask tgbackupd for its status or a backup now; list, restore and verify backups.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        type=Path,
        default=Path(os.environ.get("TGBACKUPD_DAEMON_SOCKET") or DEFAULT_SOCKET),
        help="the daemon's control socket",
    )
    parser.add_argument("--config", metavar="PATH", help="configuration file (restore, verify, list)")
    parser.add_argument("--version", action="version", version=f"tgbackupctl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    status = commands.add_parser("status", help="show what the daemon is doing and how the last backup went")
    status.add_argument("--json", action="store_true", help="print the daemon's raw JSON reply")
    status.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up if the daemon does not answer in S seconds (default 10)",
    )
    trigger = commands.add_parser("trigger", help="make a backup now, wait for it, and print the result")
    _add_job_options(trigger, "back up")
    drill = commands.add_parser(
        "drill",
        help="restore the latest backup in the chat into a scratch database now, count it, and drop it",
    )
    reload = commands.add_parser(
        "reload",
        help="have the daemon read its configuration again, and say what changed or why it was rejected",
    )
    reload.add_argument("--json", action="store_true", help="print the daemon's raw JSON reply")
    _add_job_options(drill, "drill")
    check = commands.add_parser(
        "check", help="have the daemon check its setup end to end: database, pg_dump, directory, Telegram"
    )
    check.add_argument("--json", action="store_true", help="print the daemon's raw JSON reply")
    listing = commands.add_parser("list", help="list local and delivered backups (--remote: from Telegram)")
    listing.add_argument("--remote", action="store_true", help="walk the chain of manifests in the chat")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _add_trust_options(listing)
    prune = commands.add_parser(
        "prune",
        help="have the daemon remove the backups its retention rules drop now (--dry-run: only show them)",
        description="Without --dry-run this removes, as the daemon does after each backup, the backup files "
        "its retention rules (backup.keep, keep_daily, …) drop, and with telegram.delete_old their parts in "
        "the chat; never one not yet delivered, nor the newest good one. It needs the daemon, which knows "
        "each database's rules; refused while a backup runs.",
    )
    prune.add_argument("--dry-run", action="store_true", help="show what would go and why each other stays")
    prune.add_argument("--json", action="store_true", help="print the daemon's raw JSON reply")
    restore_parser = commands.add_parser(
        "restore",
        help="restore a backup into a database (or only reassemble it with --output)",
        description="SOURCE is a .sql.gz (or .dump.gz, …) file, a folder of downloaded parts, or a backup "
        "name (or 'latest') from the catalogue; or use --from-telegram.",
    )
    verify = commands.add_parser(
        "verify", help="restore a backup into a scratch database, count its rows, and drop it again"
    )
    for command in (restore_parser, verify):
        command.add_argument("source", nargs="?", metavar="SOURCE", help="file, folder, NAME or latest")
        command.add_argument(
            "--from-telegram",
            nargs="?",
            const="latest",
            metavar="NAME",
            help="find the backup in the chat alone (default: the latest)",
        )
        command.add_argument(
            "--dbname",
            metavar="DB",
            help="database name or postgresql:// URL (its password would show in ps: use PGPASSWORD)",
        )
        command.add_argument(
            "--work-dir",
            type=Path,
            metavar="DIR",
            help="where downloaded parts (and the archive for --jobs) are kept, in a directory of its own "
            "(mode 0700, files 0600) removed afterwards; default: $TMPDIR, else /tmp",
        )
        command.add_argument(
            "--jobs",
            type=_jobs,
            default=1,
            metavar="N",
            help="custom-format backups (.dump.*) only: restore on N connections with pg_restore --jobs. "
            "The archive is first written decompressed (and decrypted: the plain data) into the work "
            "directory (free space there: the backup's size decompressed, about the size of a plain dump) "
            "and removed afterwards. The "
            "connections commit each on their own: a failure leaves part of the data, so restore into an "
            "empty database; --clean then drops the schemas in a step of its own first. Without --jobs, "
            "a restore is one transaction and a failure leaves nothing",
        )
        command.add_argument(
            "--identity",
            action="append",
            type=Path,
            default=[],
            metavar="FILE",
            help="an age identity (age-keygen's key.txt, or an SSH private key) to decrypt an encrypted "
            "backup with; may be given several times",
        )
        command.add_argument(
            "--database",
            metavar="NAME",
            help="with latest: the newest backup of this database (its name or backup prefix); needed when "
            "backups of several databases are kept",
        )
        _add_trust_options(command)
    restore_parser.add_argument("--clean", action="store_true", help="drop the target's schemas first")
    restore_parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write the SQL to FILE instead (a custom-format backup: its archive, for pg_restore): a new "
        "file, mode 0600; an existing one is refused",
    )
    return parser


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of connections from 1 to 64, got {text!r}")
    return int(text)


def _add_job_options(command: argparse.ArgumentParser, doing: str) -> None:
    """trigger's and drill's: --wait, --json and the database."""
    command.add_argument(
        "--wait",
        action="store_true",
        help="if a backup or drill is already running, wait for it to finish, then start this one",
    )
    command.add_argument("--json", action="store_true", help="print the daemon's raw JSON reply")
    command.add_argument(
        "database",
        nargs="?",
        metavar="DBNAME",
        help=f"{doing} only this database (its name or prefix); default: every database configured",
    )


def _add_trust_options(command: argparse.ArgumentParser) -> None:
    """What a command that reads manifests from the chat may follow besides those this token's key signed."""
    command.add_argument(
        "--manifest-key-from-token-file",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="also follow manifests signed with the bot token in FILE (the token before it was changed)",
    )
    command.add_argument(
        "--trust-unsigned",
        action="store_true",
        help="also follow manifests that no key here signed (tgbackupd 0.1 made unsigned ones), warning "
        "for each: anyone who may post and pin in the chat can make one",
    )


def render_status(data: dict[str, Any]) -> str:
    if data["running"]:
        running = data["running"]
        doing = "restore drill" if running["trigger"] == "drill" else f"{running['trigger']} backup"
        state = f"running a {doing} since {running['started_at']}"
        if running.get("database"):
            state += f", now of {running['database']}"
    else:
        state = "idle"
    if data["backup_enabled"]:
        next_run = data["next_run"][:16].replace("T", " ")
        schedule = (
            f"daily at {data['backup_hour']:02d}:{data['backup_minute']:02d} local time, next {next_run}"
        )
    else:
        schedule = "off (BACKUP_ENABLED=false); `tgbackupctl trigger` still works"
    telegram = (
        f"configured, chat {data['telegram_chat_id']}"
        if data["telegram_configured"]
        else "not configured: backups are kept locally only (set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID)"
    )
    lines = [
        f"tgbackupd {data['version']} (pid {data['pid']}, up since {data['started_at']}): {state}",
        f"Database:          {data['database']}",
        f"Scheduled backups: {schedule}",
        f"Telegram:          {telegram}",
        f"Local backups:     {_local_backups(data)}",
        f"Last backup:       {describe_last(data['last_backup'])}",
        f"Restore drills:    {data.get('drill_schedule') or 'off'}",
    ]
    databases = data.get("databases") or {}
    if len(databases) > 1:
        for prefix, each in databases.items():
            next_run = f"next {each['next_run'][:16].replace('T', ' ')}; " if each.get("next_run") else ""
            lines.append(
                f"  {prefix} ({each['database']}): {next_run}last: {describe_last(each['last_backup'])}"
            )
    chat = data.get("chat_commands")
    if chat:
        if chat["state"] == "polling":
            lines.append(f"Chat commands:     answered to {chat['admin_user_ids']} admin(s)")
        else:
            problem = chat["problem"] or "not answered yet"
            lines.append(f"Chat commands:     {chat['state'].upper()}: {problem}")
    for prefix, each in databases.items():
        if each.get("last_drill"):
            lines.append(f"  last drill of {prefix}: {describe_drill(each['last_drill'])}")
    if data.get("sending"):
        sending = data["sending"]
        lines.append(f"Sending:           {sending['name']}: {messages.describe_sending(sending)}")
    if data.get("state_problem"):
        lines.append(f"State file:        PROBLEM: {data['state_problem']}")
    if data.get("reload"):
        lines.append(f"Last reload:       {describe_reload(data['reload'])}")
    for waiting in data.get("pending") or []:
        lines.append(
            f"Waiting for Telegram: {waiting['name']} (attempt {waiting['attempts']}, next try "
            f"{(waiting['next_attempt_at'] or 'now')[:16].replace('T', ' ')}): {waiting['last_error']}"
        )
    last = data["last_backup"]
    if last and last.get("warning"):
        lines.append(f"  WARNING: {last['warning']}")
    if last and last.get("file"):
        lines.append(
            f"  started {last['started_at']}, took {last['duration_s']:.1f} s, sha256 {last['sha256']}"
        )
        if last.get("verified") is not None:
            lines.append(f"  verified: {'yes' if last['verified'] else 'NO'}")
        if last.get("pin_error"):
            lines.append(f"  warning: {last['pin_error']}")
    return "\n".join(lines)


def describe_reload(reload: dict[str, Any]) -> str:
    """The last reload: when, and what changed, what waits for a restart, or why it was rejected."""
    when = reload["last_at"][:16].replace("T", " ")
    if not reload["ok"]:
        return f"{when}, REJECTED (the configuration before it still runs): {reload['error']}"
    text = f"{when}, changed: {', '.join(reload['changed']) or 'nothing'}"
    if reload.get("restart_required"):
        text += f"; restart tgbackupd to apply: {', '.join(reload['restart_required'])}"
    return text


def _local_backups(data: dict[str, Any]) -> str:
    stored = f"{data['backups_stored']} in {data['backup_directory']}"
    if data["keep"]:
        return f"{stored} (keeping the newest {data['keep']})"
    spool = data.get("spool") or {}
    waiting = ""
    if spool.get("parts"):
        size = messages.human_size(spool["size_bytes"])
        waiting = f"; {spool['parts']} part(s), {size}, wait in the spool for Telegram"
    return f"{stored} (backup.keep = 0: backups are kept in Telegram only{waiting})"


def _spooled_file(backup: dict[str, Any]) -> str:
    if backup["delivery"] == "pending":
        return f"{backup['file']} (its parts wait in the spool until Telegram has them; backup.keep = 0)"
    return f"{backup['file']} (not kept on this machine: backup.keep = 0)"


def render_backup(backup: dict[str, Any]) -> str:
    if not backup.get("file"):
        return ""
    size = messages.human_size(backup["size_bytes"])
    delivery = {
        "sent": f"sent to Telegram in {backup.get('parts')} part(s), manifest message {backup['message_id']}",
        "local_only": "kept locally only (Telegram is not configured)",
        "failed": "kept locally, NOT sent to Telegram",
    }.get(backup["delivery"], backup["delivery"])
    lines = [
        f"File:     {backup['path'] or _spooled_file(backup)}",
        f"Size:     {size}",
        f"SHA-256:  {backup['sha256']}",
        f"Took:     {backup['duration_s']:.1f} s",
        f"Delivery: {delivery}",
    ]
    if backup.get("verified") is not None:
        lines.append(f"Verified: {'yes' if backup['verified'] else 'NO'}")
    if backup.get("pin_error"):
        lines.append(f"Warning:  {backup['pin_error']}")
    return "\n".join(lines)


def render_backups(backups: list[dict[str, Any]]) -> str:
    """The backups of one run over several databases, each under its database's name."""
    blocks = []
    for backup in backups:
        outcome = f"FAILED: {backup['error']}" if backup.get("error") else "backed up"
        details = render_backup(backup)
        blocks.append(f"{backup['database']}: {outcome}" + (f"\n{details}" if details else ""))
    return "\n\n".join(blocks)


def render_drills(drills: list[dict[str, Any]]) -> str:
    return "\n".join(f"{drill['prefix']} ({drill['database']}): {describe_drill(drill)}" for drill in drills)


def render_listing(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No backups yet."
    lines = [
        f"{'NAME':<48} {'DATABASE':<16} {'SIZE':>10} {'PARTS':>5}  {'LOCAL':<5}  {'TELEGRAM':<16} "
        f"{'VERIFIED':<8}  KEPT"
    ]
    for row in rows:
        size = messages.human_size(row["size_bytes"]) if row.get("size_bytes") is not None else "?"
        telegram = row.get("delivery") or "unknown"
        if row.get("manifest_message_id"):
            telegram = f"{telegram} (#{row['manifest_message_id']})"
        if row.get("parts_deleted_at"):  # retention deleted its parts from the chat; the manifest stays
            message = row.get("manifest_message_id")
            telegram = "manifest only" + (f" (#{message})" if message else "")
        verified = {True: "yes", False: "NO", None: "-"}[row.get("verified")]
        local = {True: "yes", False: "no", None: "-"}.get(row.get("local"), str(row.get("local")))
        parts = row.get("parts") or "?"
        database = row.get("database") or "?"
        lines.append(
            f"{row['name']:<48} {database:<16} {size:>10} {parts:>5}  {local:<5}  {telegram:<16} "
            f"{verified:<8}  {_kept(row)}"
        )
    return "\n".join(lines)


def _kept(row: dict[str, Any]) -> str:
    """The KEPT column: why retention keeps a file here, `drop` for one it removes next, `-` where nothing
    here is up to it (no file here, or its rules are unknown)."""
    if row.get("kept") is None:
        return "-"
    return ", ".join(row.get("kept_because") or ()) if row["kept"] else "drop"


def render_prune(data: dict[str, Any]) -> str:
    if not data["series"]:
        return "No backup files here."
    blocks = []
    for series in data["series"]:
        if series.get("configured") is False:
            blocks.append(f"{series['series']}: not configured here: left alone")
            continue
        going = len(series["remove"] if data["dry_run"] else series["removed"])
        did = "would remove" if data["dry_run"] else "removed"
        lines = [f"{series['series']} ({series['rules']}): {did} {going}"]
        for name in series.get("chat_delete", ()):
            lines.append(
                f"  {'chat' if data['dry_run'] else 'deleted':<7} {name}  (its parts, from the chat)"
            )
        for backup in series["backups"]:
            if backup["kept"]:
                lines.append(f"  keep    {backup['name']:<48} {', '.join(backup['kept_because'])}")
            else:
                gone = data["dry_run"] or backup["name"] in series["removed"]
                lines.append(f"  {'remove' if gone else 'left':<7} {backup['name']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _prune(args: argparse.Namespace) -> int:
    try:
        # Deleting from the chat is paced (telegram.messages_per_minute): up to 50 messages in one run.
        reply = request(args.socket, {"command": "prune", "dry_run": args.dry_run}, timeout=300.0)
    except DaemonNotRunning as error:
        raise DaemonNotRunning(f"{error}. prune asks the daemon, which knows each database's rules") from None
    if args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    if "error" in reply:
        if not args.json:
            print(f"tgbackupctl: {reply['error'].get('message')}", file=sys.stderr)
        return EXIT_REFUSED.get(reply["error"].get("code"), EXIT_BACKUP_FAILED)
    if not args.json:
        print(render_prune(reply["data"]))
    return 0


def _ask_daemon(args: argparse.Namespace) -> int:
    message: dict[str, Any] = {"command": args.command}
    if args.command in ("trigger", "drill"):
        message["wait"] = args.wait
        if args.database:
            message["database"] = args.database
    reply = request(args.socket, message, timeout=args.timeout if args.command == "status" else None)
    if args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    if "error" in reply:
        error = reply["error"]
        if not args.json:
            print(f"tgbackupctl: {error.get('message')}", file=sys.stderr)
            if error.get("drills"):
                print(render_drills(error["drills"]), file=sys.stderr)
            elif error.get("backups"):
                print(render_backups(error["backups"]), file=sys.stderr)
            elif error.get("backup"):
                print(render_backup(error["backup"]), file=sys.stderr)
        return EXIT_REFUSED.get(error.get("code"), EXIT_BACKUP_FAILED)
    if not args.json:
        data = reply["data"]
        if args.command == "status":
            print(render_status(data))
        elif args.command == "reload":
            print(data["message"])
        elif args.command == "drill":
            print(data["message"])
            print(render_drills(data["drills"]))
        else:
            print(data["message"])
            print(render_backups(data["backups"]) if data.get("backups") else render_backup(data["backup"]))
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        reply = request(args.socket, {"command": "check"}, timeout=120.0)
    except DaemonNotRunning as error:
        raise DaemonNotRunning(f"{error}. Without the daemon, run `tgbackupd --check` as its user") from None
    if args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    elif "data" in reply:
        print(render_checks([Check(**check) for check in reply["data"]["checks"]]))
    else:
        print(f"tgbackupctl: {reply['error']['message']}", file=sys.stderr)
    if "error" in reply:
        return EXIT_REFUSED.get(reply["error"].get("code"), 1)
    return 0 if reply.get("data", {}).get("ok") else 1


def _client_config(args: argparse.Namespace) -> ClientConfig:
    return load_client_config(args.config, os.environ)


def _telegram_source(
    args: argparse.Namespace, config: ClientConfig, progress: Progress
) -> restore.TelegramSource:
    """The chat, with the keys whose manifests are followed: this token's, and any old one given."""
    telegram = config.telegram
    if not telegram.configured:
        raise ConfigError(["reading backups from Telegram needs TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID"])
    assert telegram.bot_token is not None and telegram.chat_id is not None
    bot = BotApi(telegram.api_url, telegram.bot_token, timeout_s=telegram.timeout, retries=telegram.retries)
    old_tokens = [
        token_from_file(path, f"--manifest-key-from-token-file {path}")
        for path in args.manifest_key_from_token_file
    ]
    keys = tuple(ManifestKey.from_token(token) for token in (telegram.bot_token, *old_tokens))
    keyring = Keyring(keys, _warn_unauthenticated if args.trust_unsigned else None)
    return restore.TelegramSource(bot, telegram.chat_id, keyring, progress)


def _warn_unauthenticated(what: str) -> None:
    print(
        f"tgbackupctl: WARNING: {what}; followed all the same (--trust-unsigned). Anyone who may post and "
        "pin in the chat could have made it, and restore runs the SQL of its parts: be sure it is yours",
        file=sys.stderr,
    )


def _list(args: argparse.Namespace) -> int:
    if args.remote:
        rows = []
        try:
            for manifest, reference in _telegram_source(args, _client_config(args), Progress()).history():
                rows.append(
                    {
                        "name": manifest.name,
                        "created_at": manifest.created_at,
                        "size_bytes": manifest.size_bytes,
                        "sha256": manifest.sha256,
                        "parts": len(manifest.parts),
                        "verified": manifest.verified,
                        "delivery": "sent",
                        "manifest_message_id": reference.message_id,
                        "local": None,
                    }
                )
        except RestoreError:
            if rows:  # those newer than the manifest that could not be followed
                print(json.dumps(rows, indent=2) if args.json else render_listing(rows))
            raise
    else:
        try:
            reply = request(args.socket, {"command": "list"}, timeout=10.0)
            if "error" in reply:
                print(f"tgbackupctl: {reply['error'].get('message')}", file=sys.stderr)
                return EXIT_REFUSED.get(reply["error"].get("code"), EXIT_BACKUP_FAILED)
            rows = reply["data"]["backups"]
        except DaemonNotRunning:
            config = _client_config(args)
            store = open_reader(config.state_file)
            try:
                # Every database's backup files are listed, whatever their prefix: the prefix given here
                # (unknown without the database's name, which may be in a file only the daemon reads)
                # names no series that is listed alone. Where it is known, another series is not this
                # configuration's: it is not marked.
                directory = BackupDirectory(config.backup_directory, config.backup_prefix or "")
                rows = listing(
                    store,
                    directory,
                    lambda series: config.keep_rules if config.backup_prefix in (None, series) else None,
                )
            finally:
                store.close()
    print(json.dumps(rows, indent=2) if args.json else render_listing(rows))
    return 0


def _target(args: argparse.Namespace, config: ClientConfig) -> DatabaseConfig:
    """The database to restore into (or, for verify, the server to make a scratch database on). A URL's
    password is accepted, with a warning: this command line shows it to every local user."""
    if args.dbname and "://" in args.dbname:
        target = database_from_url(args.dbname)
        if target.password:
            print(
                "tgbackupctl: warning: the password in --dbname can be read by every user of this machine "
                "(ps, /proc) while tgbackupctl runs; give it in PGPASSWORD or a passfile (~/.pgpass, "
                "PGPASSFILE) instead",
                file=sys.stderr,
            )
            return target
        return replace(target, password=os.environ.get("PGPASSWORD") or None)
    if args.dbname:
        if config.database is not None:
            return replace(config.database, name=args.dbname)
        return DatabaseConfig(args.dbname, None, None, None, None, (), "pg_dump")
    if config.database is None:
        raise ConfigError(
            ["say which database to use: --dbname NAME (or a postgresql:// URL), or DATABASE_URL"]
        )
    return config.database


def _say_how_old(manifest: Manifest) -> None:
    """The signature proves the owner made a backup, not that it is the newest: anyone who may pin in the
    chat can pin an older manifest of the owner's again. Say how old "latest" is, loudly when it is old."""
    try:
        made = datetime.fromisoformat(manifest.created_at)
    except ValueError:
        return
    age = datetime.now(made.tzinfo) - made if made.tzinfo else datetime.now() - made
    days = age.total_seconds() / 86400
    print(
        f"tgbackupctl: the newest backup in the chat is {manifest.name}, made {manifest.created_at}",
        file=sys.stderr,
    )
    if days > OLD_LATEST_DAYS:
        _warn(
            f"WARNING: that is {days:.0f} days ago. If backups ran since, the pinned message was moved to an "
            "older manifest (anyone who may pin in the chat can do that): see `tgbackupctl list --remote`, "
            "and name the backup to restore"
        )


def _fetch(
    args: argparse.Namespace, config: ClientConfig, workdir: Path, progress: Progress
) -> restore.CheckedBackup:
    """Find the backup SOURCE names, and check what is cheap to check (every part there, of its size)
    before any database sees it; its hashes are checked as it is restored."""
    if args.from_telegram:
        if args.source:
            raise ConfigError(["give either SOURCE or --from-telegram, not both"])
        source = _telegram_source(args, config, progress)
        manifest = source.find(args.from_telegram, args.database)
        if args.from_telegram == "latest":
            _say_how_old(manifest)
        return source.fetch(manifest, workdir)
    if not args.source:
        raise ConfigError(["say which backup: a file, a folder of parts, a NAME, latest, or --from-telegram"])
    path = Path(args.source)
    if path.is_dir():
        return restore.from_folder(path, progress)
    if path.is_file():
        return restore.from_local_file(path, None, progress)
    store = open_reader(config.state_file)
    try:
        if args.source == "latest" and args.database is None and len(databases := store.databases()) > 1:
            raise ConfigError(
                [
                    f"the catalogue holds backups of several databases ({', '.join(databases)}): say which "
                    "with --database NAME, or name the backup (see `tgbackupctl list`)"
                ]
            )
        found = store.find(args.source, args.database)
    finally:
        store.close()
    if found is None:
        raise RestoreError(
            f"{args.source} is not a file, a folder, nor a backup in the catalogue {config.state_file} "
            "(see `tgbackupctl list`; on a new machine use --from-telegram)"
        )
    manifest = found.manifest
    local = config.backup_directory / manifest.name
    if local.is_file():
        return restore.from_local_file(local, manifest, progress)
    # Not kept here (backup.keep = 0): parts still waiting in the spool are read from it.
    spooled = spooled_parts(config.backup_directory, manifest)
    if len(spooled) == len(manifest.parts):
        return restore.from_parts(manifest, spooled, progress)
    source = _telegram_source(args, config, progress)
    if spooled:
        progress.note(
            f"{len(spooled)} of the {len(manifest.parts)} parts of {manifest.name} are still in the spool "
            "here: downloading the others from Telegram"
        )
    else:
        progress.note(f"{manifest.name} is not on this machine any more: downloading it from Telegram")
    return source.fetch(manifest, workdir, spooled)


@contextmanager
def _workdir(args: argparse.Namespace) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tgbackupd-restore-", dir=args.work_dir) as directory:
        yield Path(directory)


def _restore(args: argparse.Namespace) -> int:
    config = _client_config(args)
    progress = Progress()
    target = None if args.output else _target(args, config)
    if args.output:
        restore.check_output(args.output)
    with _workdir(args) as workdir:
        backup = restore.unlock(_fetch(args, config, workdir, progress), tuple(args.identity))
        if args.output:
            restore.write_sql(backup, args.output, progress)
            return 0
        assert target is not None
        if backup.dump_format == GLOBALS_FORMAT:
            for note in restore.restore_globals(target, backup, progress, args.clean, args.jobs):
                print(f"tgbackupctl: note: {note}", file=sys.stderr)
        else:
            restore.restore_into(target, backup, args.clean, progress, args.jobs, workdir)
    return 0


def _verify(args: argparse.Namespace) -> int:
    config = _client_config(args)
    progress = Progress()
    server = _target(args, config)
    with _workdir(args) as workdir:
        backup = restore.unlock(_fetch(args, config, workdir, progress), tuple(args.identity))
        report = restore.verify(
            server, backup, progress, on_left_behind=_warn, jobs=args.jobs, workdir=workdir
        )
    for table, rows in report.tables:
        print(f"{table:<60} {rows:>12}")
    print(f"{backup.name}: {report.summary()}")
    return 0


def _secrets(args: argparse.Namespace) -> list[str]:
    """What must not be echoed: the secrets of the environment (also when the configuration could not be
    read), of the configuration, and the password of a --dbname URL."""
    dbname = getattr(args, "dbname", None) or ""
    secrets = secrets_in_environment(os.environ) + secret_spellings(url_password(dbname))
    with contextlib.suppress(TgbackupdError):
        secrets += _client_config(args).secrets()
    return secrets


def _warn(problem: str) -> None:
    print(f"tgbackupctl: {scrub(problem, secrets_in_environment(os.environ))}", file=sys.stderr)


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a `kill`, a closed terminal): ended as Ctrl-C ends a restore, through every
    `finally` on the way, so that psql is ended before it commits, the work directory (parts, the
    decrypted archive) and an incomplete --output are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, _frame: object) -> None:
    raise _Signalled(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("restore", "verify"):
        for ending in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(ending, _raise_signalled)
    handlers = {
        "status": _ask_daemon,
        "trigger": _ask_daemon,
        "reload": _ask_daemon,
        "drill": _ask_daemon,
        "check": _check,
        "list": _list,
        "prune": _prune,
        "restore": _restore,
        "verify": _verify,
    }
    try:
        return handlers[args.command](args)
    except TgbackupdError as error:
        print(f"tgbackupctl: {scrub(str(error), _secrets(args))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interruption:
        signum = interruption.signum if isinstance(interruption, _Signalled) else signal.SIGINT
        how = "interrupted" if signum == signal.SIGINT else f"ended by {signal.Signals(signum).name}"
        print(f"tgbackupctl: {how} (a restore in progress was rolled back)", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
