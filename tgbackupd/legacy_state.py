"""The state file of tgbackupd 0.1 (`.tgbackupd-state.json`: the last result and a catalogue of entries with
their manifests and outbox fields), read once to be imported into the state store. Every field is checked;
an entry that does not hold together is skipped and named, never guessed at."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .manifest import Manifest, ManifestError, ManifestRef, is_backup_name
from .messages import BackupFacts
from .state import Damaged, Entry, Foreign
from .states import DeliveryState

LEGACY_STATE_FILE_NAME = ".tgbackupd-state.json"


@dataclass(frozen=True)
class LegacyState:
    entries: list[Entry]
    last_result: dict[str, Any] | None
    skipped: list[str]  # why each entry that could not be imported was left out


def looks_like_legacy(head: bytes) -> bool:
    """0.1 wrote a JSON object: its first non-blank byte is `{`."""
    return head.lstrip()[:1] == b"{"


def read_legacy(data: bytes) -> LegacyState:
    """Parse 0.1's state file. Raise Damaged if it is not a JSON object at all."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise Damaged(f"it is a state file of tgbackupd 0.1 that is not valid JSON ({error})") from None
    if not isinstance(document, dict) or not {"catalogue", "last_backup"} & document.keys():
        raise Foreign("JSON without the catalogue or the last backup a state file of tgbackupd 0.1 holds")
    last = document.get("last_backup")
    catalogue = document.get("catalogue", [])
    if not isinstance(catalogue, list):
        raise Damaged('its "catalogue" is not a list')
    entries: list[Entry] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for position, item in enumerate(catalogue, start=1):
        try:
            entry = _entry(item)
        except _Unusable as problem:
            skipped.append(f"entry {position}: {problem}")
            continue
        if entry.manifest.name not in seen:  # 0.1 kept the newest first
            seen.add(entry.manifest.name)
            entries.append(entry)
    return LegacyState(entries, last if isinstance(last, dict) else None, skipped)


class _Unusable(Exception):
    pass


def _entry(item: Any) -> Entry:
    if not isinstance(item, dict):
        raise _Unusable("not an object")
    try:
        manifest = Manifest.from_json(json.dumps(item.get("manifest")).encode())
    except ManifestError as error:
        raise _Unusable(f"its manifest: {error}") from None
    if not is_backup_name(manifest.name):
        raise _Unusable(f"{manifest.name!r} is not the name of a tgbackupd backup")
    try:
        delivery = DeliveryState(str(item.get("delivery")))
    except ValueError:
        raise _Unusable(f"{manifest.name}: unknown delivery state {item.get('delivery')!r}") from None
    facts = item.get("facts")
    if isinstance(facts, dict):
        try:
            facts = BackupFacts(**facts).__dict__
        except TypeError:
            facts = None
    else:
        facts = None
    return Entry(
        manifest=manifest,
        delivery=delivery,
        facts=facts,
        sql_bytes=_optional(item, "sql_bytes", int),
        warning=_optional(item, "warning", str),
        spooled=item.get("spooled") is True,
        captions_to_complete=frozenset(
            index for index in _list(item, "captions_to_complete") if isinstance(index, int)
        ),
        manifest_ref=_reference(item.get("manifest_ref")),
        pin_error=_optional(item, "pin_error", str),
        lost_reason=_optional(item, "last_error", str) if delivery == DeliveryState.LOST else None,
        attempts=max(0, _optional(item, "attempts", int) or 0),
        next_attempt_at=_moment(item.get("next_attempt_at")),
        last_error=_optional(item, "last_error", str),
    )


def _optional(item: dict[str, Any], key: str, kind: type) -> Any:
    value = item.get(key)
    if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    raise _Unusable(f"{key} is {type(value).__name__}, not {kind.__name__}")


def _list(item: dict[str, Any], key: str) -> list[Any]:
    value = item.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Unusable(f"{key} is {type(value).__name__}, not a list")
    return value


def _reference(value: Any) -> ManifestRef | None:
    if not isinstance(value, dict) or not isinstance(value.get("file_id"), str):
        return None
    message_id = value.get("message_id")
    return ManifestRef(
        name=str(value.get("name") or ""),
        message_id=message_id if isinstance(message_id, int) else None,
        file_id=value["file_id"],
    )


def _moment(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).isoformat(timespec="seconds")
    except ValueError:
        return None
