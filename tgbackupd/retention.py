"""Retention: which backups of a series stay, and why. The policy (`decide`) is pure: given the backups,
each with when it was made and where it stands with Telegram, it says of each whether it is kept and by
which rules, as restic counts them (each rule on its own): the newest `keep`, and for each of the newest N
days, ISO weeks, months and years that have a backup, the newest backup in it (local time, the time in the
name). A backup is kept if any rule keeps it; one not yet delivered, the newest good one, and the newest
made (by the time with its UTC offset, where the catalogue knows it: a name's local time can go back at
the end of summer time), always.

The Pruner applies it after each delivery, and for `tgbackupctl prune`: to the backup directory, and with
telegram.delete_old to the messages of delivered backups in the chat: their parts, and their manifest once
the later manifest that named it skips it (the chain that restore walks from the chat alone stays whole)."""

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from . import messages
from .clock import Clock
from .config import Config, KeepRules
from .errors import Cancelled, TgbackupdError
from .files import FileSlice, write_atomically
from .manifest import Manifest, ManifestRef, series_of
from .redaction import scrub
from .signing import ManifestKey, signed_json
from .state import Entry, StateError, StateStore, backup_stamp
from .states import DeliveryState
from .storage import BackupDirectory, DirectoryBusy
from .telegram import BotApi, MessageNotDeletable, TelegramError, TelegramRejected

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


class ChainLinkRefused(TelegramRejected):
    """Telegram would not replace the later manifest that names one retention deletes: that one stays."""


class ChainBusy(TgbackupdError):
    """Another process is delivering a backup, whose manifest may name one retention would delete."""


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


def manifest_key(config: Config) -> ManifestKey | None:
    """The key the manifests in the chat are signed with, the bot token's (None without a token)."""
    token = config.telegram.bot_token
    return ManifestKey.from_token(token) if token else None


def local_rules(rules: KeepRules) -> KeepRules:
    """The rules for the files here: none with keep = 0, which keeps no backup here (but one not
    delivered, whose file its delivery still needs)."""
    return rules if rules.last > 0 else KeepRules(0)


def rules_for(config: Config, series: str) -> KeepRules | None:
    """The rules of a series: those of the `[[databases]]` entry whose prefix (or globals' prefix) it is,
    else of the first entry backing up a whole server whose prefix begins its name; None for a series no
    entry names (a renamed prefix's, a removed database's): its backups are left alone."""
    for target in config.databases:
        if (not target.all and target.backup.prefix == series) or (
            target.globals and target.globals_prefix == series
        ):
            return target.backup.keep_rules
    for target in config.databases:
        if target.all and series.startswith(target.backup.prefix):
            return target.backup.keep_rules
    return None


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
    with `chat_id` and `key` (telegram.delete_old), also their messages from the chat."""

    def __init__(
        self,
        directory: BackupDirectory,
        store: StateStore,
        rules: KeepRules,
        secrets: list[str] | None = None,
        *,
        chat_id: str | None = None,
        key: ManifestKey | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._directory = directory
        self._store = store
        self.rules = local_rules(rules)
        self.chat_rules = rules
        self._secrets = secrets or []
        self._chat_id = chat_id
        self._key = key  # what the manifests replaced in the chat are signed with: the bot token's
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
        delete the messages of what they drop from the chat too. Never raises for an expected failure: it is
        logged, and pruning runs again after the next backup."""
        if bot is not None and self._chat_id is not None and self._key is not None:
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
        """The delivered backups, newest first, whose messages retention deletes from the chat now (with
        telegram.delete_old): those the rules drop, counting only the backups whose parts are in this
        chat, and those whose parts went already but whose manifest is still there (a refused edit or
        deletion kept it, or an earlier tgbackupd, which kept them, left it); only those recorded as
        delivered to this chat (not those delivered before the chat was recorded: they may be in a chat
        telegram.chat_id named before; with `log`, said once), and never the newest manifest, where the
        chain begins. Raise StateError if the catalogue cannot be read."""
        chat_id = self._chat_id or ""
        rows = self._store.listing()
        catalogue = {row["name"]: row for row in rows}
        head = self._store.latest_manifest_ref()
        verdicts = decide(chat_candidates(catalogue, self._directory.prefix, chat_id), self.chat_rules)
        dropped = [verdict.name for verdict in verdicts if not verdict.kept]
        if log is not None:
            self._tell_unknown_chat_once(
                [name for name in dropped if catalogue[name].get("chat_id") is None], log
            )
        linked = {
            row["name"]
            for row in rows
            if series_of(row["name"]) == self._directory.prefix
            and row.get("parts_deleted_at")
            and row.get("manifest_message_id") is not None
        }
        here = {name for name in [*dropped, *linked] if catalogue[name].get("chat_id") == chat_id}
        doomed = here - {head.name if head is not None else ""}
        return [row["name"] for row in rows if row["name"] in doomed]  # the listing's newest first

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
            messages = len(entry.manifest.parts) + 1  # and its manifest
            if batch and messages_now + messages > CHAT_DELETIONS_PER_RUN:
                break
            batch.append(name)
            messages_now += messages
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
        """Delete from the chat the messages of the delivered backups the rules drop, newest first: first
        their parts; then, under the delivery lock, their manifests, each once the later manifest that
        names it as its previous names the next older one kept instead (its message's document replaced,
        signed anew), so that the chain from the pinned manifest still reaches every older backup kept,
        from the chat alone, after each step. Return those whose messages all went. The first refusal
        ends the run (the bot's rights, or the 48-hour rule, refuse the older ones alike): said in the log
        each time, and in the chat once until it works again; a manifest that could not be skipped stays,
        a link of the chain."""
        try:
            doomed = self._chat_batch(self.chat_plan(log), log)
        except TgbackupdError as error:
            log.error("Could not delete old backups from the chat", error=scrub(str(error), self._secrets))
            return []
        gone: list[str] = []  # every message of theirs deleted
        relinked: list[str] = []
        refusal: TelegramRejected | None = None
        try:
            parts_gone, refusal = self._delete_parts(bot, chat_id, doomed)
            with self._store.delivery_lock(0, threading.Event()) as held_elsewhere:
                if held_elsewhere:
                    raise ChainBusy(f"their manifests are left for now: {held_elsewhere}")
                relinked += self._repair_links(bot, chat_id)
                for name in doomed:
                    if name in parts_gone:
                        relinked += self._delete_manifest(bot, chat_id, name, parts_gone)
                        gone.append(name)
        except (MessageNotDeletable, ChainLinkRefused) as refused:
            refusal = refused
        except (TelegramError, Cancelled, StateError, ChainBusy, OSError) as error:
            log.warning(
                "Could not delete old backups from the chat now; tried again after the next backup",
                error=scrub(str(error), self._secrets),
                not_deleted=len(doomed) - len(gone),
            )
        if refusal is not None:
            reason = scrub(str(refusal), self._secrets)
            log.error(
                "Telegram refused to delete old backups from the chat; they stay there"
                if isinstance(refusal, MessageNotDeletable)
                else "Telegram refused to replace a manifest that names an old backup's; that backup's "
                "manifest stays in the chat, a link of the chain",
                error=reason,
                backup=next(name for name in doomed if name not in gone),
                not_deleted=len(doomed) - len(gone),
            )
            self._tell_chat_once(bot, chat_id, reason, log)
        elif len(gone) == len(doomed):
            self._forget_refusal(log)
        if gone:
            log.info(
                "Deleted old backups' parts and manifests from the chat; the later manifests skip them",
                deleted=gone,
                relinked=sorted(set(relinked)),
                rules=self.chat_rules.describe(),
            )
        return gone

    def _delete_parts(
        self, bot: BotApi, chat_id: str, doomed: list[str]
    ) -> tuple[set[str], MessageNotDeletable | None]:
        """Delete the parts of `doomed` from the chat, newest first, up to the first that Telegram refuses
        to delete; return those of `doomed` whose parts are gone (now or before), and the refusal, if any.
        Raise TelegramError or StateError if they could not be deleted for another reason."""
        gone = {row["name"] for row in self._store.listing() if row.get("parts_deleted_at")} & set(doomed)
        for name in doomed:
            entry = self._store.entry(name)
            if name in gone or entry is None:
                continue
            try:
                for part in entry.manifest.parts:
                    if part.message_id is not None:
                        bot.delete_message(chat_id, part.message_id)  # False: gone already, as wanted
            except MessageNotDeletable as refused:
                return gone, refused
            self._store.record_parts_deleted(name, self._clock.now().isoformat(timespec="seconds"))
            gone.add(name)
        return gone, None

    def _delete_manifest(self, bot: BotApi, chat_id: str, name: str, skippable: set[str]) -> list[str]:
        """Delete the manifest of `name` from the chat, after replacing each later manifest that names it
        as its previous by one that names the next older manifest not in `skippable` (backups whose parts
        are gone: their manifests go next) instead, and each manifest after that by one that names it by
        its new file; return the backups whose manifests were replaced. Raise ChainLinkRefused (and keep
        it) if a later manifest could not be replaced, MessageNotDeletable if Telegram refuses to delete it
        (the chain walks past it already), TelegramError, StateError or OSError otherwise."""
        entry = self._store.entry(name)
        reference = entry.manifest_ref if entry is not None else None
        if entry is None or reference is None or reference.message_id is None:
            return []  # where its manifest is, if anywhere, is not known: nothing to delete
        relinked = []
        for successor in self._store.successors(name):
            skip_to = self._skip_to(entry.manifest.previous, skippable)
            self._replace_manifest(bot, chat_id, successor, replace(successor.manifest, previous=skip_to))
            relinked.append(successor.manifest.name)
            relinked += self._repair_links(bot, chat_id)
        bot.delete_message(chat_id, reference.message_id)  # False: gone already, as wanted
        self._store.record_manifest_deleted(name, self._clock.now().isoformat(timespec="seconds"))
        return relinked

    def _skip_to(self, previous: ManifestRef | None, skippable: set[str]) -> ManifestRef | None:
        """What a later manifest names instead of `previous`: `previous`, or, while that is the manifest of
        a backup whose manifest goes too (`skippable`), the one that one names."""
        seen: set[str] = set()
        while previous is not None and previous.name in skippable and previous.name not in seen:
            seen.add(previous.name)
            entry = self._store.entry(previous.name)
            if entry is None or entry.manifest_ref is None:
                break
            previous = entry.manifest.previous
        return previous

    def _repair_links(self, bot: BotApi, chat_id: str) -> list[str]:
        """Replace, oldest first, each manifest whose `previous` names a manifest by the file it had before
        it was replaced (Telegram does not promise that an old file id still downloads): each such
        replacement makes the next later manifest's link old in turn, up to the newest. Return the backups
        whose manifests were replaced. Raise as _replace_manifest."""
        relinked: list[str] = []
        while stale := self._store.stale_links():
            entry, current = stale
            if entry.manifest.name in relinked:  # a loop in the catalogue's chain: never replaced again
                raise StateError(f"the catalogue's chain of manifests loops at {entry.manifest.name}")
            self._replace_manifest(bot, chat_id, entry, replace(entry.manifest, previous=current))
            relinked.append(entry.manifest.name)
        return relinked

    def _replace_manifest(self, bot: BotApi, chat_id: str, entry: Entry, manifest: Manifest) -> None:
        """Put `manifest`, signed, in the message of `entry`'s manifest (its caption kept, its pin too),
        then record it, here (the manifest file, if one is kept; the note of the newest manifest, if it is
        that one) and in the catalogue. Raise ChainLinkRefused if Telegram will not replace it."""
        old = entry.manifest_ref
        assert old is not None and old.message_id is not None and self._key is not None
        data = signed_json(manifest, self._key)
        local = self._directory.path / manifest.file_name
        sending = self._directory.path / f".{manifest.file_name}.relinked"
        caption = messages.manifest_caption(
            messages.facts_of(manifest, entry.facts), parts=len(manifest.parts)
        )
        write_atomically(sending, data)
        try:
            sent = bot.edit_message_document(
                chat_id, old.message_id, FileSlice.whole(sending), manifest.file_name, caption
            )
        except TelegramRejected as error:
            raise ChainLinkRefused(
                f"the manifest of {entry.manifest.name} (message {old.message_id}) could not be replaced by "
                f"one that skips the manifest retention deletes: {error}"
            ) from None
        finally:
            sending.unlink(missing_ok=True)
        if sent.file_id is None:
            raise TelegramError(
                f"Telegram replaced the manifest of {entry.manifest.name} (message {old.message_id}) but did "
                "not say its new file id; the next run replaces it again"
            )
        reference = ManifestRef(manifest.name, old.message_id, sent.file_id)
        self._store.record_relinked(manifest, reference)
        if local.exists():
            write_atomically(local, data)
        noted = self._directory.newest_manifest()
        if noted is not None and noted.message_id == old.message_id:
            self._directory.note_newest_manifest(reference)

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
