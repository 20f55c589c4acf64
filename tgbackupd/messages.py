"""What the chat reads: captions and notices, as plain text (no parse mode, so nothing needs escaping)."""

from dataclasses import dataclass
from typing import Any

from .formats import ENCRYPTED_SUFFIX, restore_hint
from .manifest import Manifest

CAPTION_LIMIT = 1024
MESSAGE_LIMIT = 4096


def human_size(size_bytes: int) -> str:
    """Sizes as the original logs show them: `15.43 MB` (MB of 1024 * 1024 bytes, like the upload limit)."""
    if size_bytes >= 1024 * 1024:
        return f"{size_bytes / (1024 * 1024):.2f} MB"
    if size_bytes >= 1024:
        return f"{size_bytes / 1024:.2f} KB"
    return f"{size_bytes} bytes"


def human_duration(seconds: float) -> str:
    """A time left as people say it: `40 s`, `12 min`, `1 h 05 min` (minutes rounded up)."""
    if seconds < 60:
        return f"{round(seconds)} s"
    minutes = -(-int(seconds) // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def describe_sending(sending: dict[str, Any]) -> str:
    """How far a backup on its way to the chat is, from status's `sending`: `120 of 1000 parts sent,
    about 44 min left`."""
    if sending.get("parts_total") is None:
        return f"{sending['parts_sent']} part(s) sent while the dump goes on"
    left = f", about {human_duration(sending['eta_s'])} left" if sending.get("eta_s") is not None else ""
    return f"{sending['parts_sent']} of {sending['parts_total']} parts sent{left}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class BackupFacts:
    """What every caption of one backup says about it."""

    file: str
    database: str
    server: str
    size_bytes: int
    sha256: str
    duration_s: float | None  # None when not known (a backup read back from its manifest after a rebuild)
    verification: str | None = None  # "verified: …" or "NOT VERIFIED: …", when verification ran
    warning: str | None = None  # something a person must look at, such as a dump far smaller than the last
    mixed_part_names: bool = False  # parts sent during the dump keep numbers of another width in the chat


def facts_of(manifest: Manifest, recorded: dict[str, Any] | None) -> BackupFacts:
    """The facts recorded with a backup, or what its manifest alone tells (a backup found on disk)."""
    if recorded is not None:
        try:
            return BackupFacts(**recorded)
        except TypeError:
            pass
    return BackupFacts(
        file=manifest.name,
        database=manifest.host,
        server=manifest.server,
        size_bytes=manifest.size_bytes,
        sha256=manifest.sha256,
        duration_s=None,
    )


def _notes(facts: BackupFacts) -> str:
    """The lines about verification and warnings; a warning comes first, where nobody can miss it."""
    lines = f"⚠️ WARNING: {facts.warning}\n" if facts.warning else ""
    if facts.verification is not None:
        mark = "✅" if facts.verification.startswith("verified") else "⚠️"
        lines += f"{mark} {facts.verification[0].upper()}{facts.verification[1:]}\n"
    return lines


def backup_caption(facts: BackupFacts) -> str:
    """The caption of a backup sent as one document."""
    took = f"Took: {facts.duration_s:.1f} s\n" if facts.duration_s is not None else ""
    return _clip(
        f"✅ Backup {facts.file}\n"
        f"{_notes(facts)}"
        f"Database: {facts.database}\n"
        f"Server: {facts.server}\n"
        f"Size: {human_size(facts.size_bytes)} ({facts.size_bytes} bytes)\n"
        f"SHA-256: {facts.sha256}\n"
        f"{took}"
        f"Restore: {restore_hint(facts.file)}",
        CAPTION_LIMIT,
    )


def _rebuild(facts: BackupFacts) -> str:
    """How to join the parts: `cat`, unless their numbers differ in width (then it would join them out of
    order), when tgbackupctl finds each by the manifest."""
    if facts.mixed_part_names:
        return (
            f"tgbackupctl restore --from-telegram {facts.file} (part numbers differ in width here: cat would "
            "join them out of order)"
        )
    return f"cat {facts.file}.* > {facts.file}"


def part_caption(facts: BackupFacts, *, index: int, count: int, part_size: int, part_sha256: str) -> str:
    """The caption of one part of a backup sent in several."""
    return _clip(
        f"📦 Backup {facts.file}, part {index} of {count}\n"
        f"{_notes(facts)}"
        f"Database: {facts.database}\n"
        f"Server: {facts.server}\n"
        f"This part: {human_size(part_size)}, SHA-256 {part_sha256}\n"
        f"Whole backup: {human_size(facts.size_bytes)}, SHA-256 {facts.sha256}\n"
        f"Rebuild: {_rebuild(facts)}",
        CAPTION_LIMIT,
    )


def early_part_caption(*, file: str, database: str, index: int, part_size: int, part_sha256: str) -> str:
    """A part sent while the dump goes on; its caption is completed once the whole is known."""
    return _clip(
        f"📦 Backup {file}, part {index} (the dump is still running)\n"
        f"Database: {database}\n"
        f"This part: {human_size(part_size)}, SHA-256 {part_sha256}",
        CAPTION_LIMIT,
    )


def manifest_caption(facts: BackupFacts, *, parts: int) -> str:
    return _clip(
        f"🗂 Manifest of backup {facts.file}: {parts} part(s), {human_size(facts.size_bytes)}, "
        f"SHA-256 {facts.sha256}\n"
        f"{_notes(facts)}"
        f"Restore from Telegram alone: tgbackupctl restore --from-telegram {facts.file} --dbname DATABASE"
        + (" --identity key.txt" if facts.file.endswith(ENCRYPTED_SUFFIX) else ""),
        CAPTION_LIMIT,
    )


def failure_notice(*, database: str, server: str, reason: str) -> str:
    return _clip(
        f"❌ Backup of {database} on {server} failed.\n"
        f"Reason: {reason}\n"
        "Details: journalctl -u tgbackupd -p warning",
        MESSAGE_LIMIT,
    )


def problem_notice(*, server: str, problem: str) -> str:
    return _clip(
        f"⚠️ tgbackupd on {server}: {problem}\nDetails: journalctl -u tgbackupd -p warning", MESSAGE_LIMIT
    )


def drill_notice(
    *,
    prefix: str,
    database: str,
    server: str,
    file: str | None,
    counted: str | None,
    comparison: str | None,
    error: str | None,
) -> str:
    """What a restore drill came to: on failure, what it means and what to do."""
    if error is None:
        return _clip(
            f"✅ Restore drill passed: {file}\n"
            f"Database: {database}\n"
            f"Server: {server}\n"
            f"Downloaded from this chat as a new machine would, restored into a scratch database (dropped "
            f"again): {counted}; {comparison}.",
            MESSAGE_LIMIT,
        )
    return _clip(
        f"❌ Restore drill FAILED: {file or 'no backup could be read from this chat'}\n"
        f"Database: {database}\n"
        f"Server: {server}\n"
        f"Reason: {error}\n"
        "The backups in this chat may not restore. Make a fresh backup now (tgbackupctl trigger "
        f"{prefix}), then drill again (tgbackupctl drill {prefix}); to watch a restore from the chat step "
        f"by step: tgbackupctl verify --from-telegram latest --database {prefix}\n"
        "Details: journalctl -u tgbackupd -p warning",
        MESSAGE_LIMIT,
    )
