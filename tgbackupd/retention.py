"""Retention: which backups of a series stay, and why. The policy (`decide`) is pure: given the backups,
each with when it was made and where it stands with Telegram, it says of each whether it is kept and by
which rules, as restic counts them (each rule on its own): the newest `keep`, and for each of the newest N
days, ISO weeks, months and years that have a backup, the newest backup in it (local time, the time in the
name). A backup is kept if any rule keeps it; one not yet delivered, the newest good one, and the newest
made (by the time with its UTC offset, where the catalogue knows it: a name's local time can go back at
the end of summer time), always.

The Pruner applies it after each delivery, and for `tgbackupctl prune`: to the backup directory, and with
telegram.delete_old to the parts of delivered backups in the chat (their manifests stay: links of the
chain that restore walks from the chat alone)."""

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import messages
from .clock import Clock
from .config import Config, KeepRules
from .errors import Cancelled, TgbackupdError
from .manifest import series_of
from .redaction import scrub
from .state import StateError, StateStore, backup_stamp
from .states import DeliveryState
from .storage import BackupDirectory, DirectoryBusy
from .telegram import BotApi, MessageNotDeletable, TelegramError

# Meta key: when the chat was told that Telegram refuses to delete old backups (absent: not told).
_REFUSAL_TOLD = "chat_deletion_refused_told_at"
# Meta key: how many dropped backups were last logged as left in the chat, not known to be in this chat.
_UNKNOWN_CHAT_TOLD = "chat_deletion_unknown_chat_told"
UNDELIVERED = "undelivered"
NEWEST_GOOD = "newest good"
NEWEST_MADE = "newest made"
# At most this many messages are deleted from the chat per run (Telegram's pace makes each take seconds):
# a first run over a year of history goes on at the next runs instead of holding up the backup.
CHAT_DELETIONS_PER_RUN = 50
_GOOD_DELIVERY = (DeliveryState.SENT, DeliveryState.LOCAL_ONLY)


@dataclass(frozen=True)
class Candidate:
    """One backup retention judges: `made_at` is the local time of its name; `undelivered` while it waits
    in the outbox; `good` when it reached the chat (or was kept, Telegram not being configured), its
    verification did not fail and nothing flagged it (an empty or shrunken dump is not trusted to be the
    one backup left). `created_at`: when it was made, with its UTC offset, where the catalogue knows it."""

    name: str
    made_at: datetime
    undelivered: bool = False
    good: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether a backup is kept, with every reason that keeps it (none: it goes)."""

    name: str
    reasons: tuple[str, ...]

    @property
    def kept(self) -> bool:
        return bool(self.reasons)

    @property
    def protected_only(self) -> bool:
        """Kept only because it is not delivered yet, or is the newest good or made: beyond the rules."""
        return self.kept and set(self.reasons) <= {UNDELIVERED, NEWEST_GOOD, NEWEST_MADE}

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "kept_because": list(self.reasons)}


def made_at(name: str) -> datetime:
    """When a backup was made, in the local time its name was given in."""
    return datetime.strptime(backup_stamp(name), "%Y%m%d_%H%M%S")


def _day(when: datetime) -> str:
    return f"{when:%Y-%m-%d}"


def _week(when: datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def _month(when: datetime) -> str:
    return f"{when:%Y-%m}"


def _year(when: datetime) -> str:
    return f"{when:%Y}"


def decide(candidates: Iterable[Candidate], rules: KeepRules) -> list[Verdict]:
    """Given one series' backups and its rules, return a verdict for each, newest first."""
    ordered = sorted(candidates, key=lambda candidate: (candidate.made_at, candidate.name), reverse=True)
    reasons: dict[str, list[str]] = {candidate.name: [] for candidate in ordered}
    for candidate in ordered[: rules.last]:
        reasons[candidate.name].append(f"last {rules.last}")
    periods: tuple[tuple[str, int, Callable[[datetime], str]], ...] = (
        ("daily", rules.daily, _day),
        ("weekly", rules.weekly, _week),
        ("monthly", rules.monthly, _month),
        ("yearly", rules.yearly, _year),
    )
    for label, count, period_of in periods:
        seen: set[str] = set()
        for candidate in ordered:
            if len(seen) == count:
                break
            period = period_of(candidate.made_at)
            if period not in seen:  # the newest backup of a period not counted yet
                seen.add(period)
                reasons[candidate.name].append(f"{label} {period}")
    for candidate in ordered:
        if candidate.undelivered:
            reasons[candidate.name].append(UNDELIVERED)
    newest_good = next((candidate for candidate in ordered if candidate.good), None)
    if newest_good is not None:
        reasons[newest_good.name].append(NEWEST_GOOD)
    timed = [candidate for candidate in ordered if candidate.created_at is not None]
    if timed:  # the name's local time may go back (end of summer time): the backup just made stays
        newest_made = max(timed, key=lambda candidate: candidate.created_at or candidate.made_at)
        if not reasons[newest_made.name]:
            reasons[newest_made.name].append(NEWEST_MADE)
    return [Verdict(candidate.name, tuple(reasons[candidate.name])) for candidate in ordered]


def is_good(row: dict[str, Any]) -> bool:
    """Whether a catalogue row (StateStore.listing) is a backup to fall back on: delivered, or kept here
    with Telegram not configured; not failed verification; not flagged as empty or shrunken."""
    return (
        row.get("delivery") in _GOOD_DELIVERY and row.get("verified") is not False and not row.get("warning")
    )


def _created_at(row: dict[str, Any] | None) -> datetime | None:
    """When a catalogue row says its backup was made, if it says so with a UTC offset."""
    value = (row or {}).get("created_at")
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def candidates(
    files: Iterable[str], catalogue: dict[str, dict[str, Any]], series: str, undelivered: set[str]
) -> list[Candidate]:
    """The backups of `series` retention counts: its files here (`files`), and those of its backups in the
    catalogue (rows by name) that are in the chat or waiting for it; not those that are nowhere any more
    (lost, kept here only and removed since, or whose parts were deleted from the chat). Undelivered are
    those in the outbox (`undelivered`) or recorded as pending. A file the catalogue does not know is not
    good."""
    names = set(files) | {
        name
        for name, row in catalogue.items()
        if series_of(name) == series
        and (
            row.get("delivery") == DeliveryState.PENDING
            or (row.get("delivery") == DeliveryState.SENT and not row.get("parts_deleted_at"))
        )
    }
    return [
        Candidate(
            name,
            made_at(name),
            undelivered=name in undelivered
            or catalogue.get(name, {}).get("delivery") == DeliveryState.PENDING,
            good=name in catalogue and is_good(catalogue[name]),
            created_at=_created_at(catalogue.get(name)),
        )
        for name in names
    ]


def in_chat(row: dict[str, Any], chat_id: str) -> bool:
    """Whether a catalogue row's backup has its parts in the chat `chat_id`: delivered there, or delivered
    before the chat was recorded (NULL), and not deleted since."""
    return (
        row.get("delivery") == DeliveryState.SENT
        and not row.get("parts_deleted_at")
        and row.get("chat_id") in (None, chat_id)
    )


def chat_candidates(catalogue: dict[str, dict[str, Any]], series: str, chat_id: str) -> list[Candidate]:
    """The backups of `series` retention counts in the chat `chat_id`: only those whose parts are there
    (one waiting for delivery, or kept here only, takes no place of one in the chat)."""
    return [
        Candidate(name, made_at(name), good=is_good(row), created_at=_created_at(row))
        for name, row in catalogue.items()
        if series_of(name) == series and in_chat(row, chat_id)
    ]


def local_rules(rules: KeepRules) -> KeepRules:
    """The rules for the files here: none with keep = 0, which keeps no backup here (but one not
    delivered, whose file its delivery still needs)."""
    return rules if rules.last > 0 else KeepRules(0)


def rules_for(config: Config, series: str) -> KeepRules | None:
    """The rules of a series: its entry's (Config.target_of); None for a series no entry names (a renamed
    prefix's, a removed database's): its backups are left alone."""
    target = config.target_of(series)
    return target.backup.keep_rules if target else None


def mark(
    rows: list[dict[str, Any]], rules_of: Callable[[str], KeepRules | None], undelivered: set[str]
) -> None:
    """Add to each row of `tgbackupctl list` (StateStore.listing's, with `local`) whether retention keeps
    its file here, and why (`kept`, `kept_because`): None where it has no file here, or the rules of its
    series are unknown. `undelivered`: the outbox."""
    catalogue = {row["name"]: row for row in rows}
    files: dict[str, list[str]] = {}
    for row in rows:
        row["kept"], row["kept_because"] = None, None
        if row.get("local") is True:
            files.setdefault(series_of(row["name"]), []).append(row["name"])
    for series, names in files.items():
        rules = rules_of(series)
        if rules is None:
            continue
        for verdict in decide(candidates(names, catalogue, series, undelivered), local_rules(rules)):
            if verdict.name in names:
                catalogue[verdict.name].update(verdict.to_dict())


@dataclass(frozen=True)
class Plan:
    """What retention does to one series' files here now: every backup it counted, newest first, and
    which of them are files here (only those are removed)."""

    verdicts: list[Verdict]
    files: frozenset[str]

    @property
    def to_remove(self) -> list[str]:
        return [verdict.name for verdict in self.verdicts if not verdict.kept and verdict.name in self.files]

    @property
    def beyond_rules(self) -> list[Verdict]:
        """Files kept only because they are undelivered, or the newest good backup."""
        return [verdict for verdict in self.verdicts if verdict.protected_only and verdict.name in self.files]


class Pruner:
    """Removes from the backup directory the files of one series' backups that its rules drop, holding the
    directory's lock (so that no backup is being written there meanwhile, by this or another process);
    with `chat_id` (telegram.delete_old), also their parts from the chat."""

    def __init__(
        self,
        directory: BackupDirectory,
        store: StateStore,
        rules: KeepRules,
        secrets: list[str] | None = None,
        *,
        chat_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._directory = directory
        self._store = store
        self.rules = local_rules(rules)
        self.chat_rules = rules
        self._secrets = secrets or []
        self._chat_id = chat_id
        self._clock = clock or Clock()

    def plan(self) -> Plan:
        """What retention keeps and removes now. Raise StateError if the catalogue cannot be read: nothing
        is removed on the strength of an outbox that could not be read."""
        return Plan(self._judge(self.rules), frozenset(backup.name for backup in self._directory.backups()))

    def _judge(self, rules: KeepRules) -> list[Verdict]:
        """The verdicts on this series by `rules`. Raise StateError if the outbox or the catalogue cannot
        be read."""
        undelivered = self._store.undelivered()
        catalogue = {row["name"]: row for row in self._store.listing()}
        files = [backup.name for backup in self._directory.backups()]
        return decide(candidates(files, catalogue, self._directory.prefix, undelivered), rules)

    def apply(self) -> tuple[Plan, list[str]]:
        """Remove what the rules drop: (the plan, what was removed). Raise DirectoryBusy while a backup is
        being made in the directory, StateError if the catalogue cannot be read, StorageError if a file
        cannot be removed."""
        with self._directory.lock():
            plan = self.plan()
            return plan, self._directory.remove(plan.to_remove)

    def prune(self, log: Any, bot: BotApi | None = None) -> list[str]:
        """Remove what the rules drop, and log it; return what went. With a bot and telegram.delete_old,
        delete the parts of what they drop from the chat too. Never raises for an expected failure: it is
        logged, and pruning runs again after the next backup."""
        if bot is not None and self._chat_id is not None:
            self.prune_chat(bot, self._chat_id, log)
        try:
            plan, removed = self.apply()
        except DirectoryBusy as busy:
            log.info("Not removing old backups now; they are removed after the next backup", reason=str(busy))
            return []
        except TgbackupdError as error:
            log.error("Could not remove old backups", error=scrub(str(error), self._secrets))
            return []
        self.report(plan, removed, log)
        return removed

    def chat_plan(self, log: Any = None) -> list[str]:
        """The delivered backups, newest first, whose parts retention deletes from the chat now (with
        telegram.delete_old): the rules count only the backups whose parts are in this chat, and only
        those recorded as delivered to it are deleted (not those delivered before the chat was recorded:
        they may be in a chat telegram.chat_id named before). With `log`, say once why those stay. Raise
        StateError if the catalogue cannot be read."""
        chat_id = self._chat_id or ""
        catalogue = {row["name"]: row for row in self._store.listing()}
        verdicts = decide(chat_candidates(catalogue, self._directory.prefix, chat_id), self.chat_rules)
        dropped = [verdict.name for verdict in verdicts if not verdict.kept]
        unknown = [name for name in dropped if catalogue[name].get("chat_id") is None]
        if log is not None:
            self._tell_unknown_chat_once(unknown, log)
        return [name for name in dropped if catalogue[name].get("chat_id") == chat_id]

    def _tell_unknown_chat_once(self, unknown: list[str], log: Any) -> None:
        """Log, when their number changes, the dropped backups left in the chat because the catalogue does
        not say which chat they went to (delivered before tgbackupd recorded it)."""
        key = f"{_UNKNOWN_CHAT_TOLD}:{self._directory.prefix}"
        try:
            if self._store.meta(key) == str(len(unknown)):
                return
            self._store.set_meta(key, str(len(unknown)))
        except StateError:
            return
        if unknown:
            log.warning(
                "Not deleting old backups from the chat: the catalogue does not say which chat they were "
                "delivered to (before tgbackupd recorded it), and telegram.chat_id may have named another "
                "then; delete them by hand if they are in this chat",
                backups=unknown,
            )

    def _chat_batch(self, doomed: list[str], log: Any) -> list[str]:
        """Of the backups whose parts go from the chat, those deleted in this run: up to
        CHAT_DELETIONS_PER_RUN messages (the rest go at the next runs, said in the log), and only those
        whose every part's message is known (a backup imported from tgbackupd 0.1 may not say): the
        others are left, and said. Raise StateError if the catalogue cannot be read."""
        batch: list[str] = []
        unknown: list[str] = []
        messages_now = 0
        for name in doomed:
            entry = self._store.entry(name)
            if entry is None or any(part.message_id is None for part in entry.manifest.parts):
                unknown.append(name)
                continue
            if batch and messages_now + len(entry.manifest.parts) > CHAT_DELETIONS_PER_RUN:
                break
            batch.append(name)
            messages_now += len(entry.manifest.parts)
        if unknown:
            log.warning(
                "Not deleting old backups from the chat: the catalogue does not know the messages of "
                "their parts; delete them by hand if they are there",
                backups=unknown,
            )
        remaining = len(doomed) - len(batch) - len(unknown)
        if remaining:
            log.info(
                f"Deleting at most {CHAT_DELETIONS_PER_RUN} messages from the chat per run; the other old "
                "backups' parts go at the next runs",
                deleting=len(batch),
                remaining=remaining,
            )
        return batch

    def prune_chat(self, bot: BotApi, chat_id: str, log: Any) -> list[str]:
        """Delete from the chat the parts of the delivered backups the rules drop, newest first; return
        those whose parts went. Their manifests stay: each is a link of the chain (a later manifest names
        it as its previous) through which restore and `list --remote` reach the older backups kept, from
        the chat alone. The first refusal ends the run (the bot's rights, or the 48-hour rule, refuse the
        older ones alike): said in the log each time, and in the chat once until a deletion works again."""
        try:
            doomed = self._chat_batch(self.chat_plan(log), log)
        except TgbackupdError as error:
            log.error("Could not delete old backups from the chat", error=scrub(str(error), self._secrets))
            return []
        deleted: list[str] = []
        try:
            for name in doomed:
                entry = self._store.entry(name)
                for part in entry.manifest.parts if entry is not None else ():
                    if part.message_id is not None:
                        bot.delete_message(chat_id, part.message_id)  # False: gone already, as wanted
                self._store.record_parts_deleted(name, self._clock.now().isoformat(timespec="seconds"))
                deleted.append(name)
        except MessageNotDeletable as refused:
            reason = scrub(str(refused), self._secrets)
            log.error(
                "Telegram refused to delete old backups from the chat; they stay there",
                error=reason,
                backup=doomed[len(deleted)],
                not_deleted=len(doomed) - len(deleted),
            )
            self._tell_chat_once(bot, chat_id, reason, log)
        except (TelegramError, Cancelled, StateError) as error:
            log.warning(
                "Could not delete old backups from the chat now; tried again after the next backup",
                error=scrub(str(error), self._secrets),
                not_deleted=len(doomed) - len(deleted),
            )
        else:
            self._forget_refusal(log)
        if deleted:
            log.info(
                "Deleted old backups' parts from the chat; their manifests stay as links of the chain",
                deleted=deleted,
                rules=self.chat_rules.describe(),
            )
        return deleted

    def _tell_chat_once(self, bot: BotApi, chat_id: str, reason: str, log: Any) -> None:
        """The chat hears of a refusal once, not after every backup: until a deletion works again."""
        try:
            if self._store.meta(_REFUSAL_TOLD) is not None:
                return
            self._store.set_meta(_REFUSAL_TOLD, self._clock.now().isoformat(timespec="seconds"))
        except StateError:
            return  # not told rather than told after every backup; the log says it each time
        notice = messages.problem_notice(server=socket.gethostname(), problem=reason)
        try:
            bot.send_message(chat_id, notice, retry=False)
        except (TelegramError, Cancelled) as error:
            log.warning("Could not tell the Telegram chat", error=scrub(str(error), self._secrets))

    def _forget_refusal(self, log: Any) -> None:
        try:
            if self._store.meta(_REFUSAL_TOLD) is not None:
                self._store.set_meta(_REFUSAL_TOLD, None)
        except StateError as error:
            log.warning(
                "Could not record that Telegram deletes again", error=scrub(str(error), self._secrets)
            )

    def report(self, plan: Plan, removed: list[str], log: Any) -> None:
        """Log what went, and any file kept beyond the rules (undelivered, or the newest good one)."""
        keep = self.rules.last
        if removed:
            log.info("Removed old backups", removed=removed, keep=keep, rules=self.rules.describe())
        beyond = plan.beyond_rules
        if not beyond:
            return
        kept = [verdict for verdict in plan.verdicts if verdict.kept and verdict.name in plan.files]
        fields = {
            "undelivered": sorted(verdict.name for verdict in kept if UNDELIVERED in verdict.reasons),
            "beyond_rules": [verdict.name for verdict in beyond],
        }
        if self.rules.only_last:
            log.warning(
                f"Keeping {len(kept)} backups, more than backup.keep ({keep}): those not yet delivered "
                "to Telegram are never removed",
                **fields,
            )
        else:
            log.warning(
                f"Keeping {len(beyond)} backups the retention rules ({self.rules.describe()}) would "
                "remove: those not yet delivered to Telegram, and the newest good one, are never removed",
                **fields,
            )
