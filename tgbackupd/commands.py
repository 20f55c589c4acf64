"""What the control socket's commands mean: dispatch and authorization, with no socket in sight."""

import grp
import os
import pwd
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from . import __version__, messages
from .checks import run_checks
from .config import Config, KeepRules
from .control import Peer, error_reply
from .errors import Cancelled, StorageError
from .figures import gather
from .fleet import Fleet, Slot
from .manifest import series_of
from .outbox import Outbox
from .reloading import ReloadRequests
from .retention import Pruner, mark, rules_for
from .runner import BackupBusy, BackupRunner, RunningBackup, Selection
from .state import StateError, StateStore, backup_stamp
from .states import DeliveryState, Trigger
from .storage import BackupDirectory, DirectoryBusy
from .telegram import BotApi

log = structlog.stdlib.get_logger("tgbackupd.retention")

COMMANDS = ("status", "trigger", "list", "check", "reload", "drill", "prune")
# How long `reload` waits for the main loop to make it (it reads the file and builds the new databases).
RELOAD_WAIT_S = 60.0


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def peer_may_trigger(peer: Peer, control_group: int | None, daemon_uid: int | None = None) -> bool:
    """Root, the daemon's own user and members of the control group may start backups, and the checks:
    both make the daemon act outside on demand (a dump; connections to the database and the Bot API)."""
    if peer.uid in (0, os.getuid() if daemon_uid is None else daemon_uid):
        return True
    if control_group is None:
        return False
    if peer.gid == control_group:
        return True
    try:
        account = pwd.getpwuid(peer.uid)
    except KeyError:
        return False
    return control_group in os.getgrouplist(account.pw_name, account.pw_gid)


class Commands:
    def __init__(
        self,
        config: Config,
        runner: BackupRunner,
        next_run: Callable[[], datetime | None],
        started_at: str,
        outbox: Outbox,
        store: StateStore,
        directory: BackupDirectory,
        fleet: Fleet | None = None,
        slot_next_run: Callable[[Slot], datetime | None] | None = None,
        chat_commands: Callable[[], dict[str, Any] | None] | None = None,
        reloads: ReloadRequests | None = None,
    ) -> None:
        """`fleet`: the databases backed up, for status by database and `trigger DBNAME`; without it, one.
        `chat_commands`: how the chat's commands fare (telegram.commands), for status.
        `reloads`: where `reload` asks the main loop for one; without it, reloading is not offered."""
        self._reloads = reloads
        self._config = config
        self._runner = runner
        self._next_run = next_run
        self._started_at = started_at
        self._outbox = outbox
        self._store = store
        self._directory = directory
        self._fleet = fleet
        self._slot_next_run = slot_next_run or (lambda slot: None)
        self._chat_commands = chat_commands or (lambda: None)

    def handle(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            return {"data": self.status()}
        if command == "trigger":
            database = request.get("database")
            if database is not None and not isinstance(database, str):
                return error_reply("bad_request", "database must be a database's name or prefix")
            return self.trigger(peer, wait=request.get("wait") is True, database=database)
        if command == "drill":
            database = request.get("database")
            if database is not None and not isinstance(database, str):
                return error_reply("bad_request", "database must be a database's name or prefix")
            return self.drill(peer, wait=request.get("wait") is True, database=database)
        if command == "check":
            if not peer_may_trigger(peer, self._config.daemon.control_group):
                return error_reply(
                    "permission_denied",
                    self._refusal(peer, "run the checks (they connect to the database and Telegram)"),
                )
            checks = run_checks(self._config, self._directory, self._store)
            return {
                "data": {"ok": all(check.ok for check in checks), "checks": [c.to_dict() for c in checks]}
            }
        if command == "reload":
            return self.reload(peer)
        if command == "list":
            return self.list_backups()
        if command == "prune":
            return self.prune(peer, dry_run=request.get("dry_run") is not False)
        return error_reply(
            "unknown_command", f"unknown command {command!r}; known commands: {', '.join(COMMANDS)}"
        )

    def list_backups(self) -> dict[str, Any]:
        try:
            return {"data": {"backups": listing(self._store, self._directory, self._rules_of)}}
        except StateError as error:
            return error_reply("state_unreadable", str(error))

    def reconfigure(self, config: Config) -> None:
        """A reload: status and the rights to trigger follow the new configuration at once."""
        self._config = config

    def use(self, fleet: Fleet, outbox: Outbox, directory: BackupDirectory) -> None:
        """A reload's databases, once they are the ones backed up (after the backup that was running)."""
        self._fleet, self._outbox, self._directory = fleet, outbox, directory

    def reload(self, peer: Peer) -> dict[str, Any]:
        """Have the main loop reload the configuration, and answer how it went."""
        if self._reloads is None:
            return error_reply("unknown_command", "this tgbackupd cannot reload its configuration")
        if not peer_may_trigger(peer, self._config.daemon.control_group):
            return error_reply("permission_denied", self._refusal(peer, "reload the configuration"))
        outcome = self._reloads.ask(RELOAD_WAIT_S)
        if outcome is None:
            return error_reply(
                "timeout",
                f"tgbackupd did not finish reloading within {RELOAD_WAIT_S:g} s; see its log "
                "(journalctl -u tgbackupd) and `tgbackupctl status`",
            )
        if not outcome.ok:
            return error_reply("reload_failed", outcome.message(), reload=outcome.describe())
        return {"data": {"message": outcome.message(), "reload": outcome.describe()}}

    def status(self, count_backups: bool = True) -> dict[str, Any]:
        """The status reply; `count_backups=False` spares the directory scan when only a summary is needed."""
        config = self._config
        running = self._runner.current
        next_run = self._next_run()
        last_reload = self._reloads.last if self._reloads else None
        pending, state_problem, figures = None, None, None
        if count_backups:
            try:
                pending = self._pending()
                figures = gather(self._store, config.fixed_prefixes())
            except StateError as error:
                state_problem = str(error)
        databases = self._fleet.status(self._slot_next_run) if self._fleet else None
        for prefix, each in (databases or {}).items():
            if figures and prefix in figures:
                each["metrics"] = figures[prefix].to_dict()  # as the metrics file has them
        return {
            "backup_enabled": config.backup.enabled,
            "backup_hour": config.backup.hour,
            "backup_minute": config.backup.minute,
            "drill_schedule": config.verify.schedule.describe() if config.verify.schedule else "off",
            "telegram_configured": config.telegram.configured,
            "telegram_chat_id": config.telegram.chat_id,
            "state": "running" if running else "idle",
            "running": self._running(running) if running else None,
            "next_run": next_run.astimezone().isoformat(timespec="seconds") if next_run else None,
            "database": config.database.describe(),
            "backup_directory": str(config.backup.directory),
            "keep": config.backup.keep,
            "backups_stored": self._stored() if count_backups else None,
            "spool": self._spool() if count_backups else None,
            "pending_deliveries": self._outbox.pending_count,
            "pending": pending,
            "sending": self._outbox.sending.describe(),
            "state_file": str(config.daemon.state_file),
            "state_problem": state_problem,
            "last_backup": self._runner.last_backup,
            "databases": databases,
            "failures_total": sum(each.backup_failures_total for each in figures.values())
            if figures is not None
            else None,
            "reload": last_reload.describe() if last_reload else None,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "chat_commands": self._chat_commands(),
        }

    def _stored(self) -> int:
        return self._fleet.stored() if self._fleet else len(self._directory.backups())

    def _running(self, running: RunningBackup) -> dict[str, Any]:
        """What runs, and which database it is at (a run backs up several one after the other)."""
        current = self._fleet.current if self._fleet else None
        return {**running.describe(), **({"database": current.describe} if current else {})}

    def _spool(self) -> dict[str, int]:
        """Parts of backups not kept here (backup.keep = 0) that wait on this disk for Telegram."""
        waiting = self._directory.spooled()
        return {"parts": len(waiting), "size_bytes": sum(part.size_bytes for part in waiting)}

    def _pending(self) -> list[dict[str, Any]]:
        return [
            {
                "name": waiting.name,
                "attempts": waiting.attempts,
                "next_attempt_at": waiting.next_attempt_at.isoformat() if waiting.next_attempt_at else None,
                "last_error": waiting.last_error,
            }
            for waiting in self._store.waiting()
        ]

    def trigger(self, peer: Peer, wait: bool, database: str | None = None) -> dict[str, Any]:
        """Back up every database (or the one named), one at a time; fail if any failed, naming each."""
        running = self._run_now(peer, "trigger backups", Trigger.MANUAL, wait, database)
        if isinstance(running, dict):
            return running
        return self.outcome(running, database)

    def start_manual(self, database: str | None, wait: bool = False) -> RunningBackup | dict[str, Any]:
        """Start a manual backup of every database (or the one named), after the running one with `wait`;
        return it, or the error reply saying why it did not start (unknown_database, busy, stopping)."""
        return self._start(Trigger.MANUAL, database, wait)

    def outcome(self, running: RunningBackup, database: str | None) -> dict[str, Any]:
        """The reply for a manual backup that has ended: fail if any database failed, naming each."""
        results = running.results
        assert results is not None
        if not results:  # an `all = true` entry found no database of that name
            return error_reply("unknown_database", self._unknown(database or ""))
        telegram_configured = self._config.telegram.configured
        several = len(self._config.databases) > 1 or len(results) > 1
        details = {
            "telegram_configured": telegram_configured,
            "backup": results[-1].to_dict(),
            **({"backups": [result.to_dict() for result in results]} if several else {}),
        }
        failed = [result for result in results if not result.succeeded]
        if not failed:
            return {"data": {"message": "Manual backup completed successfully", **details}}
        if several:
            names = "; ".join(f"{result.database}: {result.error}" for result in failed)
            return error_reply(
                "backup_failed",
                f"Manual backup failed for {len(failed)} of {len(results)} databases: {names}",
                **details,
            )
        return error_reply("backup_failed", f"Manual backup failed: {failed[0].error}", **details)

    def drill(self, peer: Peer, wait: bool, database: str | None = None) -> dict[str, Any]:
        """A restore drill from the chat of every database (or the one named) now, one at a time, queued
        like a backup; fail if any failed, naming each."""
        running = self._run_now(peer, "run restore drills", Trigger.DRILL, wait, database)
        if isinstance(running, dict):
            return running
        results = running.drills or []
        if not results:  # a server's globals, or an `all = true` entry found no database of that name
            return error_reply(
                "unknown_database",
                self._unknown(database or "") + " (a server's globals are not drilled: restoring roles is "
                "no check)",
            )
        drills = [result.to_dict() for result in results]
        failed = [result for result in results if not result.ok]
        if not failed:
            return {"data": {"message": "Restore drill passed", "drills": drills}}
        names = "; ".join(f"{result.prefix}: {result.error}" for result in failed)
        return error_reply(
            "drill_failed",
            f"Restore drill failed for {len(failed)} of {len(results)}: {names}",
            drills=drills,
        )

    def _run_now(
        self, peer: Peer, action: str, trigger: Trigger, wait: bool, database: str | None
    ) -> RunningBackup | dict[str, Any]:
        """Run a job now for a peer who may (`action` says what, if refused), and wait for it to end; with
        `wait`, after the one running. Return it ended, or the error reply saying why it did not start."""
        if not peer_may_trigger(peer, self._config.daemon.control_group):
            return error_reply("permission_denied", self._refusal(peer, action))
        running = self._start(trigger, database, wait)
        if isinstance(running, RunningBackup):
            running.done.wait()
        return running

    def _start(self, trigger: Trigger, database: str | None, wait: bool) -> RunningBackup | dict[str, Any]:
        if database is not None and (self._fleet is None or not self._fleet.knows(database)):
            return error_reply("unknown_database", self._unknown(database))
        selection = Selection(database=database)
        try:
            return (
                self._runner.start_when_free(trigger, selection)
                if wait
                else self._runner.start(trigger, selection)
            )
        except BackupBusy as error:
            return error_reply("busy", str(error))
        except Cancelled as error:
            return error_reply("stopping", str(error))

    def _rules_of(self, series: str) -> KeepRules | None:
        return rules_for(self._config, series)

    def prune(self, peer: Peer, dry_run: bool) -> dict[str, Any]:
        """What retention removes from the backup directory now, series by series, and why each other
        backup stays, and with telegram.delete_old whose parts it deletes from the chat; without
        `dry_run`, do it as after a backup (and log it alike), under the directory's lock, unless a
        backup is running (it prunes when it ends)."""
        if not dry_run:
            if not peer_may_trigger(peer, self._config.daemon.control_group):
                return error_reply("permission_denied", self._refusal(peer, "remove backups"))
            if self._runner.current is not None:
                return error_reply(
                    "busy", "a backup is running; it removes old backups itself when it ends: try again then"
                )
        chat_id = self._config.telegram.chat_id if self._config.telegram.delete_old else None
        bot = self._fleet.first.open_bot() if chat_id and self._fleet and not dry_run else None
        try:
            return self._prune(dry_run, chat_id, bot)
        finally:
            if bot is not None:
                bot.close()

    def _prune(self, dry_run: bool, chat_id: str | None, bot: BotApi | None) -> dict[str, Any]:
        try:
            known = {series_of(row["name"]) for row in self._store.listing()}
        except StateError as error:
            return error_reply("state_unreadable", str(error))
        known |= {series_of(backup.name) for backup in self._directory.every_backup()}
        found = []
        for series in sorted(known):
            rules = self._rules_of(series)
            if rules is None:  # a renamed prefix's, a removed database's: not this configuration's to prune
                found.append(
                    {
                        "series": series,
                        "configured": False,
                        "rules": None,
                        "backups": [],
                        "remove": [],
                        "removed": [],
                        "chat_delete": [],
                    }
                )
                continue
            pruner = Pruner(
                BackupDirectory(self._directory.path, series),
                self._store,
                rules,
                self._config.secrets(),
                chat_id=chat_id,
            )
            bound = log.bind(database=series)
            try:
                removed: list[str] = []
                chat: list[str] = []
                if dry_run:
                    plan = pruner.plan()
                    chat = pruner.chat_plan() if chat_id else []
                else:
                    plan, removed = pruner.apply()
                    pruner.report(plan, removed, bound)
                    if bot is not None and chat_id is not None:
                        chat = pruner.prune_chat(bot, chat_id, bound)
            except StateError as error:
                return error_reply("state_unreadable", str(error))
            except StorageError as error:  # busy (a `tgbackupd --once`), or a file that cannot be removed
                return error_reply("busy" if isinstance(error, DirectoryBusy) else "prune_failed", str(error))
            found.append(
                {
                    "series": series,
                    "configured": True,
                    "rules": pruner.rules.describe(),
                    "backups": [
                        {"name": verdict.name, **verdict.to_dict()}
                        for verdict in plan.verdicts
                        if verdict.name in plan.files
                    ],
                    "remove": plan.to_remove,
                    "removed": removed,
                    # Whose parts go from the chat (telegram.delete_old): would, or did (a refusal stops it).
                    "chat_delete": chat,
                }
            )
        return {"data": {"dry_run": dry_run, "series": found}}

    def _unknown(self, database: str) -> str:
        known = ", ".join(self._fleet.status(self._slot_next_run)) if self._fleet else ""
        return f"no database named {database!r} is backed up here" + (f" (known: {known})" if known else "")

    def _refusal(self, peer: Peer, action: str) -> str:
        user = _user_name(peer.uid)
        group = self._config.daemon.control_group
        if group is None:
            return (
                f"{user} may not {action}: only root and the tgbackupd user may. To let others, "
                "set daemon.control_group and add them to that group"
            )
        name = _group_name(group)
        return (
            f"{user} may not {action}: only root, the tgbackupd user and members of the group "
            f"{name!r} may (`usermod -aG {name} {user}`, then log in again)"
        )


def listing(
    store: StateStore, directory: BackupDirectory, rules_of: Callable[[str], KeepRules | None]
) -> list[dict[str, Any]]:
    """Every backup known here, newest first: those in the catalogue, with whether they are on this
    machine, and any other backup file in the directory, of any database (made before the catalogue
    existed, or by the system tgbackupd replaces); each file here with whether retention keeps it and
    why, by its series' rules (`rules_of`). Raise StateError if the catalogue cannot be read."""
    rows = {row["name"]: row for row in store.listing()}
    for row in rows.values():
        row["local"] = directory.where_kept(
            row["name"], row["spooled"], row["delivery"] == DeliveryState.SENT, row["parts"]
        )
    for backup in directory.every_backup():
        if backup.name not in rows:
            rows[backup.name] = {
                "name": backup.name,
                "created_at": None,
                "size_bytes": backup.size_bytes,
                "sha256": None,
                "parts": None,
                "verified": None,
                "delivery": None,
                "manifest_message_id": None,
                "local": True,
                "warning": None,
                "last_error": None,
            }
    ordered = sorted(rows.values(), key=lambda row: backup_stamp(row["name"]), reverse=True)
    mark(ordered, rules_of, store.undelivered())
    return ordered


def status_line(status: dict[str, Any]) -> str:
    """One line for `systemctl status`: what it is doing, when it runs next, how the last backup went,
    and what still waits for Telegram."""
    if status["running"]:
        running = status["running"]
        if running["trigger"] == Trigger.REDELIVERY:
            line = f"Sending backups that were waiting for Telegram (started {running['started_at']})"
        elif running["trigger"] == Trigger.DRILL:
            what = running.get("database") or status["database"]
            line = f"Restore drill of {what} from the chat (started {running['started_at']})"
        else:
            what = running.get("database") or status["database"]
            line = f"Backing up {what} ({running['trigger']}, started {running['started_at']})"
    else:
        if status["next_run"]:
            schedule = f"next backup {_minutes(status['next_run'])}"
        else:
            schedule = "scheduled backups off (BACKUP_ENABLED=false)"
        line = f"Idle; {schedule}; last: {describe_last(status['last_backup'])}"
    if status.get("sending"):
        line += f"; {messages.describe_sending(status['sending'])}"
    if status.get("pending_deliveries"):
        line += f"; {status['pending_deliveries']} backup(s) waiting for Telegram"
    return line


def _minutes(iso_time: str) -> str:
    """`2026-12-01T03:00:00+00:00` as people read it: `2026-12-01 03:00`."""
    return iso_time[:16].replace("T", " ")


def describe_last(last: dict[str, Any] | None) -> str:
    """The last backup in a few words; tolerant of records written by other versions."""
    if not last or not last.get("started_at"):
        return "none yet"
    if last.get("error"):
        return f"FAILED at {_minutes(last['started_at'])}: {last['error']}"[:300]
    if not last.get("file"):
        return f"attempted at {_minutes(last['started_at'])}"
    size = messages.human_size(last["size_bytes"]) if last.get("size_bytes") is not None else "?"
    where = {"sent": "sent to Telegram", "pending": "waiting for Telegram"}.get(
        str(last.get("delivery")), "kept locally"
    )
    warning = " (WARNING: see status)" if last.get("warning") else ""
    return f"{last['file']} ({size}) {where}{warning}"


def describe_drill(drill: dict[str, Any] | None) -> str:
    """A restore drill's result in a few words; tolerant of records written by other versions."""
    if not drill or not drill.get("at"):
        return "none yet"
    at = _minutes(str(drill["at"]))
    if not drill.get("ok"):
        return f"FAILED at {at} ({drill.get('file') or 'no backup read'}): {drill.get('error')}"[:300]
    counted = f"{drill.get('tables')} tables, {drill.get('rows')} rows"
    return f"passed at {at}: {drill.get('file')}, {counted}; {drill.get('comparison')}"[:300]
