import json

import pytest

from tests.unit.test_parts_and_manifest import manifest
from tgbackupd.manifest import Manifest
from tgbackupd.signing import Forged, Keyring, ManifestKey, Unauthenticated, signed_json

TOKEN = "123456789:owner-secret-AAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OLD_TOKEN = "123456789:revoked-secret-BBBBBBBBBBBBBBBBBBBBBBBBB"
WHAT = "the manifest of shop_backup_20251203_030000 in the chat"


def keyring(*tokens: str, trust_unsigned=None) -> Keyring:
    return Keyring(tuple(ManifestKey.from_token(token) for token in tokens), trust_unsigned)


def test_a_manifest_signed_with_the_tokens_key_is_followed_and_still_parses():
    data = signed_json(manifest(), ManifestKey.from_token(TOKEN))

    keyring(TOKEN).check(data, WHAT)

    assert Manifest.from_json(data) == manifest()
    assert json.loads(data)["signature"]["key_id"] == ManifestKey.from_token(TOKEN).key_id


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["parts"][1].update(file_id="someone-elses-upload"),
        lambda d: d.update(sha256="e" * 64),
        lambda d: d.update(previous={"name": "shop_backup_20251202_030000", "message_id": 1, "file_id": "x"}),
        lambda d: d.update(added="a field added after signing"),
        lambda d: d["signature"].update(value="0" * 64),
    ],
    ids=["a-part", "the-hash", "the-previous-link", "an-added-field", "the-value"],
)
def test_a_signed_manifest_changed_afterwards_is_refused_even_when_trusting_unsigned_ones(change):
    document = json.loads(signed_json(manifest(), ManifestKey.from_token(TOKEN)))
    change(document)
    heard = []

    with pytest.raises(Forged, match="does not match its signature"):
        keyring(TOKEN, trust_unsigned=heard.append).check(json.dumps(document).encode(), WHAT)
    assert heard == []


@pytest.mark.parametrize(
    "signature",
    ["x", {"algorithm": "md5", "key_id": "0" * 16, "value": "0" * 64}, {"algorithm": "hmac-sha256"}],
)
def test_a_malformed_signature_is_refused_as_forged(signature):
    document = json.loads(manifest().to_json())
    document["signature"] = signature
    with pytest.raises(Forged, match="forged or damaged"):
        keyring(TOKEN, trust_unsigned=print).check(json.dumps(document).encode(), WHAT)


def test_an_unsigned_manifest_is_refused_unless_trusted_and_then_heard_of():
    data = manifest().to_json()
    heard: list[str] = []

    with pytest.raises(Unauthenticated, match=r"it is not signed\..*--trust-unsigned"):
        keyring(TOKEN).check(data, WHAT)
    keyring(TOKEN, trust_unsigned=heard.append).check(data, WHAT)

    assert heard == [f"{WHAT}: it is not signed"]


def test_a_manifest_signed_before_the_token_changed_says_so_and_is_followed_with_the_old_token():
    data = signed_json(manifest(), ManifestKey.from_token(OLD_TOKEN))

    with pytest.raises(Unauthenticated) as refused:
        keyring(TOKEN).check(data, WHAT)
    keyring(TOKEN, OLD_TOKEN).check(data, WHAT)

    old_id, new_id = ManifestKey.from_token(OLD_TOKEN).key_id, ManifestKey.from_token(TOKEN).key_id
    assert old_id != new_id
    assert f"signed with another key (key id {old_id}; the bot token here gives {new_id})" in str(
        refused.value
    )
    assert "/revoke in @BotFather" in str(refused.value)
    assert "--manifest-key-from-token-file" in str(refused.value)


def test_neither_the_token_nor_the_key_shows_in_a_signed_manifest_nor_in_the_keys_repr():
    key = ManifestKey.from_token(TOKEN)
    data = signed_json(manifest(), key)
    secret = TOKEN.split(":")[1]
    for text in (data.decode(), repr(key)):
        assert secret not in text and key.secret.hex() not in text
