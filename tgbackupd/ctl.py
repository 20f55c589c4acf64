"""`tgbackupctl`: talks to the daemon's control socket and renders its replies for people."""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, messages
from .commands import describe_last
from .control import ControlClientError, request

DEFAULT_SOCKET = "/run/tgbackupd/control.sock"
EXIT_BACKUP_FAILED = 1
EXIT_REFUSED = {"permission_denied": os.EX_NOPERM, "busy": os.EX_TEMPFAIL, "stopping": os.EX_TEMPFAIL}

EPILOG = f"""\
exit status:
  0   success
  1   the backup failed (the reason is printed; it was also logged and sent to the chat)
  64  wrong usage
  69  tgbackupd is not running, or its socket is not where --socket says
  75  a backup is already running (use trigger --wait), tgbackupd is stopping, or it did not answer in time
  77  permission denied: not root, nor the tgbackupd user, nor a member of the control group

The socket is --socket, else $TGBACKUPD_DAEMON_SOCKET, else {DEFAULT_SOCKET}.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tgbackupctl",
        description="Ask tgbackupd for its status, or to make a backup now.",
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
    trigger.add_argument(
        "--wait",
        action="store_true",
        help="if a backup is already running, wait for it to finish, then make this one",
    )
    trigger.add_argument("--json", action="store_true", help="print the daemon's raw JSON reply")
    return parser


def render_status(data: dict[str, Any]) -> str:
    if data["running"]:
        state = f"running a {data['running']['trigger']} backup since {data['running']['started_at']}"
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
        f"Local backups:     {data['backups_stored']} in {data['backup_directory']}"
        f" (keeping the newest {data['keep']})",
        f"Last backup:       {describe_last(data['last_backup'])}",
    ]
    last = data["last_backup"]
    if last and last.get("file"):
        lines.append(
            f"  started {last['started_at']}, took {last['duration_s']:.1f} s, sha256 {last['sha256']}"
        )
    return "\n".join(lines)


def render_backup(backup: dict[str, Any]) -> str:
    if not backup.get("file"):
        return ""
    size = messages.human_size(backup["size_bytes"])
    delivery = {
        "sent": f"sent to Telegram (message {backup['message_id']})",
        "local_only": "kept locally only (Telegram is not configured)",
        "too_large": "kept locally, too large for Telegram",
        "failed": "kept locally, NOT sent to Telegram",
    }.get(backup["delivery"], backup["delivery"])
    return (
        f"File:     {backup['path']}\nSize:     {size}\nSHA-256:  {backup['sha256']}\n"
        f"Took:     {backup['duration_s']:.1f} s\nDelivery: {delivery}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    message: dict[str, Any] = {"command": args.command}
    if args.command == "trigger":
        message["wait"] = args.wait
    try:
        reply = request(args.socket, message, timeout=args.timeout if args.command == "status" else None)
    except ControlClientError as error:
        print(f"tgbackupctl: {error}", file=sys.stderr)
        return error.exit_code
    if args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    if "error" in reply:
        error = reply["error"]
        if not args.json:
            print(f"tgbackupctl: {error.get('message')}", file=sys.stderr)
            if error.get("backup"):
                print(render_backup(error["backup"]), file=sys.stderr)
        return EXIT_REFUSED.get(error.get("code"), EXIT_BACKUP_FAILED)
    if not args.json:
        data = reply["data"]
        if args.command == "status":
            print(render_status(data))
        else:
            print(data["message"])
            print(render_backup(data["backup"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
