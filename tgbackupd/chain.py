"""The chain of manifests in the chat: the pinned manifest is the newest backup's, and each manifest names
the one before it; each is followed only if the owner's key signed it (signing.py). Restore and
`list --remote` walk it to find backups from the chat alone; the state store's recovery walks it to learn
which backups reached the chat."""

import io
from collections.abc import Iterator

from .errors import RestoreError
from .formats import stem
from .manifest import MAX_MANIFEST_BYTES, SUFFIX, Manifest, ManifestError, ManifestRef, is_backup_name
from .signing import Keyring
from .telegram import BotApi, TelegramError, TelegramRejected

HISTORY_LIMIT = 10000


class ChainError(RestoreError):
    """The chain could not be read: a manifest could not be downloaded, or is not one. `broken` when
    asking again cannot help (the message is gone, the document is not a manifest): the chain ends there."""

    def __init__(self, message: str, broken: bool) -> None:
        super().__init__(message)
        self.broken = broken


def pinned_manifest_ref(bot: BotApi, chat_id: str) -> ManifestRef | None:
    """Return the manifest pinned in the chat, if the pinned message is one of ours. Raise TelegramError
    if the chat cannot be read."""
    pinned = bot.get_chat(chat_id).get("pinned_message")
    if not isinstance(pinned, dict):
        return None
    document = pinned.get("document")
    if not isinstance(document, dict) or not isinstance(document.get("file_name"), str):
        return None
    name = document["file_name"].removesuffix(SUFFIX)  # the backup's name but for its format
    message_id, file_id = pinned.get("message_id"), document.get("file_id")
    if not is_backup_name(name, stem_only=True) or not isinstance(file_id, str):
        return None
    return ManifestRef(name, message_id if isinstance(message_id, int) else None, file_id)


def download_manifest(bot: BotApi, reference: ManifestRef, keyring: Keyring) -> Manifest:
    """Fetch one manifest document, parse it, and check that a key of `keyring` signed it. Raise ChainError
    saying why it cannot be used."""
    assert reference.file_id is not None
    buffer = io.BytesIO()
    try:
        file = bot.get_file(reference.file_id)
        if int(file.get("file_size") or 0) > MAX_MANIFEST_BYTES:
            raise ChainError(
                f"the manifest of {reference.name} is implausibly large; is it ours?", broken=True
            )
        if bot.download(file["file_path"], buffer, limit=MAX_MANIFEST_BYTES) > MAX_MANIFEST_BYTES:
            raise ChainError(
                f"the manifest of {reference.name} is implausibly large; is it ours?", broken=True
            )
    except TelegramError as error:
        raise ChainError(
            f"cannot download the manifest of {reference.name}: {error}",
            broken=isinstance(error, TelegramRejected),
        ) from None
    what = f"the manifest of {reference.name} in the chat"
    try:
        manifest = Manifest.from_json(buffer.getvalue())
        keyring.check(buffer.getvalue(), what)
    except ManifestError as error:
        raise ChainError(f"{what}: {error}", broken=True) from None
    if stem(manifest.name) != stem(reference.name):
        raise ChainError(
            f"the manifest of {reference.name} in the chat describes another backup ({manifest.name})",
            broken=True,
        )
    return manifest


def walk(
    bot: BotApi, newest: ManifestRef | None, keyring: Keyring, limit: int = HISTORY_LIMIT
) -> Iterator[tuple[Manifest, ManifestRef]]:
    """The manifests from `newest` back, each with where it is in the chat, each checked against
    `keyring`; at most `limit` of them, and a loop (a manifest naming a later one as its previous) ends
    the walk."""
    reference = newest
    seen: set[str] = set()
    while reference is not None and reference.file_id and len(seen) < limit:
        if reference.file_id in seen:
            return
        seen.add(reference.file_id)
        manifest = download_manifest(bot, reference, keyring)
        yield manifest, reference
        reference = manifest.previous
