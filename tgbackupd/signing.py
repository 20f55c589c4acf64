"""Manifests are signed, so that restore, verify and `list --remote` follow only those the owner's own
tgbackupd made: anyone else who may post and pin in the chat (a channel's other administrators, a group's
members) could otherwise pin a well-formed manifest whose parts are their own SQL.

The key is derived from the secret part of the bot token, which only the owner has and which a new machine
needs anyway; a short key id beside the signature tells a manifest made before the token was changed
(`/revoke` in @BotFather) from one that was forged or changed."""

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .manifest import Manifest, ManifestError, load_json

ALGORITHM = "hmac-sha256"
_KEY_CONTEXT = b"tgbackupd manifest signing key 1"
_KEY_ID_CONTEXT = b"tgbackupd manifest key id"
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_MAC = re.compile(r"^[0-9a-f]{64}$")


class Unauthenticated(ManifestError):
    """No key here vouches for the manifest: it is not signed (tgbackupd 0.1 signed none), or it is
    signed with a key this machine does not have (an older bot token's, or someone else's)."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"{reason}. {advice}")
        self.reason = reason


class Forged(ManifestError):
    """Signed with a key here, but its content is not what that key signed: never followed."""


@dataclass(frozen=True)
class ManifestKey:
    secret: bytes = field(repr=False)
    key_id: str

    @classmethod
    def from_token(cls, token: str) -> "ManifestKey":
        """The key of a bot token (`<bot id>:<secret>`), from its secret part: the bot id is public."""
        secret = hmac.new(token.partition(":")[2].encode(), _KEY_CONTEXT, hashlib.sha256).digest()
        return cls(secret, hmac.new(secret, _KEY_ID_CONTEXT, hashlib.sha256).hexdigest()[:16])

    def mac(self, document: dict[str, Any]) -> str:
        """HMAC-SHA256 of the document's canonical JSON (keys sorted, no spaces, every character past
        ASCII escaped, so that any string JSON can hold, even a lone surrogate, has one form)."""
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hmac.new(self.secret, canonical.encode("ascii"), hashlib.sha256).hexdigest()


def signed_json(manifest: Manifest, key: ManifestKey) -> bytes:
    """The manifest as it is written and sent: its JSON with a `signature` over everything else in it."""
    signature = {"algorithm": ALGORITHM, "key_id": key.key_id, "value": key.mac(manifest.document())}
    return manifest.to_json(signature)


@dataclass(frozen=True)
class Keyring:
    """The keys whose manifests are followed, the current bot token's first. With `trust_unsigned` (the
    owner's explicit --trust-unsigned), a manifest that no key here vouches for is followed too, and
    `trust_unsigned` hears of each such one, to warn."""

    keys: tuple[ManifestKey, ...]
    trust_unsigned: Callable[[str], None] | None = None

    def check(self, data: bytes, what: str) -> None:
        """Return if a key here signed the manifest `data` (`what` names it for a warning). Raise Forged
        if it is not what a key here signed, Unauthenticated if no key here signed it."""
        try:
            self._authenticate(data)
        except (ValueError, TypeError, RecursionError) as error:  # ManifestError and anything else odd
            if isinstance(error, Unauthenticated):
                if self.trust_unsigned is None:
                    raise
                self.trust_unsigned(f"{what}: {error.reason}")
                return
            if isinstance(error, ManifestError):
                raise
            raise Forged(f"it cannot be checked against its signature ({error}): not following it") from None

    def _authenticate(self, data: bytes) -> None:
        document = load_json(data)
        if not isinstance(document, dict):
            raise ManifestError("not a tgbackupd manifest (not a JSON object)")
        signature = document.pop("signature", None)
        if signature is None:
            raise Unauthenticated(
                "it is not signed",
                "tgbackupd 0.1 made unsigned manifests, and anyone who may post and pin in the chat can make "
                "one. Not following it. If it is a backup of yours made before tgbackupd 0.2, tgbackupctl "
                "follows it with --trust-unsigned",
            )
        if (
            not isinstance(signature, dict)
            or signature.get("algorithm") != ALGORITHM
            or not isinstance(signature.get("key_id"), str)
            or not _KEY_ID.match(signature["key_id"])
            or not isinstance(signature.get("value"), str)
            or not _MAC.match(signature["value"])
        ):
            raise Forged(
                f'its "signature" is not an {ALGORITHM} signature tgbackupd makes: it was forged or damaged. '
                "Not following it"
            )
        key = next((key for key in self.keys if key.key_id == signature["key_id"]), None)
        if key is None:
            raise Unauthenticated(
                f"it is signed with another key (key id {signature['key_id']}; the bot token here gives "
                f"{self.keys[0].key_id})",
                "Either the bot token was changed (/revoke in @BotFather) after it was made, or someone else "
                "made it. Not following it. If the token was changed, tgbackupctl follows it with "
                "--manifest-key-from-token-file FILE, FILE holding the token it was made with (without that "
                "token: --trust-unsigned)",
            )
        if not hmac.compare_digest(key.mac(document), signature["value"]):
            raise Forged(
                f"it does not match its signature (key id {key.key_id}): it was changed after it was signed, "
                "or forged. Not following it"
            )
