"""What is in the chat is input from whoever may post and pin there: a manifest is parsed and checked, and
followed only if the owner's key signed it (or the owner said to follow an unsigned one), and downloads
stay inside the work directory."""

import gzip
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests import release_0_1
from tests.botapi import CHAT_ID, FAKE_TOKEN
from tests.conftest import backup_for, base_environment, database_url, fingerprint, psql, telegram_environment
from tests.integration.test_parts_and_restore import ctl, new_machine
from tgbackupd import chain
from tgbackupd.config import load_config
from tgbackupd.errors import RestoreError
from tgbackupd.files import FileSlice
from tgbackupd.manifest import Manifest, ManifestRef, Part, manifest_name, plan_parts
from tgbackupd.progress import Progress
from tgbackupd.restore import TelegramSource, read_sql
from tgbackupd.signing import Keyring, ManifestKey, signed_json
from tgbackupd.statefile import open_reader
from tgbackupd.telegram import BotApi

NAME = "shop_backup_20251203_030000.sql.gz"
HOSTILE_SQL = b"CREATE TABLE pwned (x int);\n"
NEW_TOKEN = "123456789:the-token-after-revoke-in-botfather"


@pytest.fixture
def bot(bot_api):
    client = BotApi(bot_api.url, FAKE_TOKEN, timeout_s=10, retries=0)
    yield client
    client.close()


def post(bot: BotApi, tmp_path: Path, file_name: str, content: bytes) -> tuple[int, str]:
    """A document posted in the chat, as anyone who may post there can; its (message id, file id)."""
    local = tmp_path / "to-post"
    local.write_bytes(content)
    sent = bot.send_document(CHAT_ID, FileSlice.whole(local), file_name, "")
    return sent.message_id, sent.file_id


def shop_manifest(name: str, sha256: str, parts: tuple[Part, ...]) -> Manifest:
    """A manifest of a backup of `shop`, made at the same time in every test, of `parts`."""
    return Manifest(
        name=name,
        database="shop",
        host="shop on db",
        server="web1",
        created_at="2025-12-03T03:00:00+00:00",
        size_bytes=sum(part.size_bytes for part in parts),
        sha256=sha256,
        parts=parts,
    )


def manifest_of_parts(bot: BotApi, tmp_path: Path, name: str, contents: list[bytes]) -> Manifest:
    """A well-formed manifest for `contents`, each posted in the chat as one part."""
    parts = plan_parts(name, [(len(content), hashlib.sha256(content).hexdigest()) for content in contents])
    posted = [post(bot, tmp_path, part.file_name, data) for part, data in zip(parts, contents, strict=True)]
    whole = b"".join(contents)
    return shop_manifest(
        name,
        hashlib.sha256(whole).hexdigest(),
        tuple(
            replace(part, message_id=message_id, file_id=file_id)
            for part, (message_id, file_id) in zip(parts, posted, strict=True)
        ),
    )


def fetched_sql(bot: BotApi, manifest: Manifest, workdir: Path) -> bytes:
    """The backup's SQL from the chat, its parts downloaded while it is read, as a restore does."""
    source = TelegramSource(bot, CHAT_ID, Keyring((ManifestKey.from_token(FAKE_TOKEN),)), Progress())
    return read_sql(source.fetch(manifest, workdir), None, b"".join)


def test_a_download_never_writes_through_a_link_or_over_a_file_in_the_work_directory(tmp_path, bot):
    manifest = manifest_of_parts(bot, tmp_path, NAME, [gzip.compress(HOSTILE_SQL)])
    workdir = tmp_path / "work"
    workdir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (workdir / NAME).symlink_to(victim)

    with pytest.raises(RestoreError, match=f"cannot create {NAME} in the work directory {workdir}"):
        fetched_sql(bot, manifest, workdir)

    assert victim.read_text() == "keep me"


def test_a_manifest_in_a_folder_naming_a_file_outside_it_is_refused_and_nothing_is_read_from_there(
    tmp_path, bot_api
):
    outside = tmp_path / "elsewhere" / "secret.sql.gz"
    outside.parent.mkdir()
    outside.write_bytes(gzip.compress(HOSTILE_SQL))
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    (part,) = plan_parts(NAME, [(outside.stat().st_size, digest)])
    manifest = shop_manifest(NAME, digest, (replace(part, file_name=str(outside)),))
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / manifest.file_name).write_bytes(manifest.to_json())
    output = tmp_path / "restored.sql"

    restored = ctl(new_machine(tmp_path, bot_api), "restore", str(folder), "--output", str(output))

    assert restored.returncode == 65, restored.stderr
    assert 'part 1 of the manifest has the "file_name" "/tmp/' in restored.stderr
    assert f"not {NAME} as the backup's name and its 1 part(s) make it" in restored.stderr
    assert not output.exists()


def pin(bot: BotApi, tmp_path: Path, data: bytes, file_name: str) -> None:
    """A manifest document posted and pinned by someone who may do both in the chat."""
    message_id, _ = post(bot, tmp_path, file_name, data)
    bot.pin_chat_message(CHAT_ID, message_id)


def no_table_named_pwned(dbname: str) -> bool:
    return psql(dbname, "SELECT count(*) FROM pg_tables WHERE tablename = 'pwned'") == "0"


def test_a_pinned_manifest_naming_a_part_outside_the_work_directory_writes_nothing_there(
    tmp_path, bot_api, bot, make_database
):
    manifest = manifest_of_parts(bot, tmp_path, NAME, [gzip.compress(HOSTILE_SQL)])
    hostile = replace(manifest, parts=(replace(manifest.parts[0], file_name="../../outside"),))
    # Signed with the owner's key: the check of its names holds even against a token that leaked.
    pin(bot, tmp_path, signed_json(hostile, ManifestKey.from_token(FAKE_TOKEN)), hostile.file_name)
    target = make_database(empty=True)
    work = tmp_path / "work"
    work.mkdir()

    restored = ctl(
        new_machine(tmp_path, bot_api),
        *("restore", "--from-telegram", "--work-dir", str(work), "--dbname", database_url(target)),
    )

    assert restored.returncode == 65, restored.stderr
    assert 'part 1 of the manifest has the "file_name" "../../outside", not ' + NAME in restored.stderr
    assert [path for path in tmp_path.rglob("outside*")] == []
    assert list(work.iterdir()) == []
    assert no_table_named_pwned(target)


def _unsigned(manifest: Manifest) -> bytes:
    return manifest.to_json()


def _signed_with_another_key(manifest: Manifest) -> bytes:
    return signed_json(manifest, ManifestKey.from_token("987654321:someone-elses-bot-token"))


def _claiming_the_owners_key(manifest: Manifest) -> bytes:
    document = json.loads(signed_json(manifest, ManifestKey.from_token(FAKE_TOKEN)))
    document["signature"]["value"] = hashlib.sha256(b"a guess").hexdigest()
    return json.dumps(document).encode()


def _with_a_lone_surrogate(manifest: Manifest) -> bytes:
    """The owner's signature, and a field added that no text can hold (once, a crash instead of a refusal)."""
    document = json.loads(signed_json(manifest, ManifestKey.from_token(FAKE_TOKEN)))
    document["note"] = "\ud800"
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("forge", "refusal"),
    [
        (_unsigned, "it is not signed"),
        (_signed_with_another_key, "it is signed with another key"),
        (_claiming_the_owners_key, "it does not match its signature"),
        (_with_a_lone_surrogate, "it does not match its signature"),
    ],
    ids=["unsigned", "another-key", "owners-key-id-guessed", "lone-surrogate"],
)
def test_a_forged_manifest_pinned_over_the_owners_is_refused_by_restore_verify_and_list(
    tmp_path, bot_api, bot, make_database, forge, refusal
):
    source = make_database(rows=10)
    made = backup_for(
        load_config(None, base_environment(tmp_path, source, **telegram_environment(bot_api)))
    ).run("scheduled")
    assert made.delivery == "sent", made.error
    forged_name = f"{source}_backup_20991231_000000.sql.gz"
    forged = manifest_of_parts(bot, tmp_path, forged_name, [gzip.compress(HOSTILE_SQL)])
    forged = replace(forged, previous=ManifestRef(made.file, *pinned_reference(bot_api)))
    pin(bot, tmp_path, forge(forged), forged.file_name)
    machine = new_machine(tmp_path, bot_api)
    target = make_database(empty=True)

    restored = ctl(machine, "restore", "--from-telegram", "--dbname", database_url(target))
    verified = ctl(machine, "verify", "--from-telegram", "--dbname", database_url(target))
    listed = ctl(machine, "list", "--remote")

    for refused in (restored, verified, listed):
        assert refused.returncode == 65, refused.stderr
        assert (
            f"the manifest of {forged_name.removesuffix('.sql.gz')} in the chat: {refusal}" in refused.stderr
        )
        assert "Not following it" in refused.stderr
    assert listed.stdout == ""
    assert "scratch database" not in verified.stderr  # refused before one was made
    assert no_table_named_pwned(target)


def pinned_reference(bot_api) -> tuple[int, str]:
    pinned = bot_api.state.pinned[CHAT_ID]
    return pinned["message_id"], pinned["document"]["file_id"]


def test_after_the_token_was_changed_older_manifests_need_the_old_token_and_then_restore(
    tmp_path, bot_api, make_database
):
    source = make_database(rows=10)
    made = backup_for(
        load_config(None, base_environment(tmp_path, source, **telegram_environment(bot_api)))
    ).run("scheduled")
    assert made.delivery == "sent", made.error
    bot_api.state.token = NEW_TOKEN  # /revoke in @BotFather: the old token stops working
    old_token_file = tmp_path / "old-token"
    old_token_file.write_text(FAKE_TOKEN + "\n")
    machine = {**new_machine(tmp_path, bot_api), "TELEGRAM_BOT_TOKEN": NEW_TOKEN}
    target = make_database(empty=True)

    refused = ctl(machine, "restore", "--from-telegram", "--dbname", database_url(target))
    restored = ctl(
        machine,
        *("restore", "--from-telegram", "--dbname", database_url(target)),
        *("--manifest-key-from-token-file", str(old_token_file)),
    )

    old_id, new_id = ManifestKey.from_token(FAKE_TOKEN).key_id, ManifestKey.from_token(NEW_TOKEN).key_id
    assert refused.returncode == 65
    assert f"signed with another key (key id {old_id}; the bot token here gives {new_id})" in refused.stderr
    assert "--manifest-key-from-token-file FILE" in refused.stderr
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(source)
    for completed in (refused, restored):
        assert FAKE_TOKEN.split(":")[1] not in completed.stderr + completed.stdout
        assert NEW_TOKEN.split(":")[1] not in completed.stderr + completed.stdout


def test_backups_made_by_0_1_are_followed_only_with_trust_unsigned_and_a_warning(
    tmp_path, bot_api, make_database
):
    source = make_database(rows=10)
    tree = release_0_1.extract(tmp_path / "release")
    environment = base_environment(tmp_path, source, **telegram_environment(bot_api))
    assert release_0_1.run(tree, environment, "--once").returncode == 0
    old = json.loads(bot_api.documents()[-1].content)
    assert "signature" not in old
    machine = new_machine(tmp_path, bot_api)
    target = make_database(empty=True)

    refused = ctl(machine, "restore", "--from-telegram", "--dbname", database_url(target))
    trusted = ctl(machine, "restore", "--from-telegram", "--dbname", database_url(target), "--trust-unsigned")

    assert refused.returncode == 65
    assert "it is not signed. tgbackupd 0.1 made unsigned manifests" in refused.stderr
    assert "--trust-unsigned" in refused.stderr
    assert trusted.returncode == 0, trusted.stderr
    assert (
        f"tgbackupctl: WARNING: the manifest of {old['name'].removesuffix('.sql.gz')} in the chat: it is not "
        "signed; followed all the same (--trust-unsigned)" in trusted.stderr
    )
    assert fingerprint(target) == fingerprint(source)

    time.sleep(1)
    newer = backup_for(load_config(None, environment)).run("scheduled")  # the upgrade: signed from now on
    assert newer.delivery == "sent", newer.error

    listed = ctl(machine, "list", "--remote", "--json")
    listed_all = ctl(machine, "list", "--remote", "--json", "--trust-unsigned")
    latest = ctl(machine, "restore", "--from-telegram", "--output", str(tmp_path / "latest.sql"))

    assert listed.returncode == 65 and "it is not signed" in listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == [newer.file]  # those it could follow
    assert listed_all.returncode == 0, listed_all.stderr
    assert [row["name"] for row in json.loads(listed_all.stdout)] == [newer.file, old["name"]]
    assert "WARNING" in listed_all.stderr
    assert latest.returncode == 0 and "WARNING" not in latest.stderr, latest.stderr


def test_after_a_rebuild_a_forged_manifest_does_not_pass_for_a_backup_that_never_reached_the_chat(
    tmp_path, bot_api, bot, make_database
):
    source = make_database(rows=10)
    config = load_config(None, base_environment(tmp_path, source, **telegram_environment(bot_api)))
    bot_api.state.kicked_from.add(CHAT_ID)
    first = backup_for(config)
    waiting = first.run("scheduled")
    first.store.close()  # as the process that made it ends: a damaged store is moved aside only when unused
    assert waiting.delivery == "pending"
    bot_api.state.kicked_from.clear()
    ours = Manifest.from_json((tmp_path / "backups" / manifest_name(waiting.file)).read_bytes())
    # Someone who knows its name, size and hash says it is in the chat already, with parts of their own.
    theirs = manifest_of_parts(bot, tmp_path, waiting.file, [b"x" * ours.size_bytes])
    pin(bot, tmp_path, replace(theirs, sha256=ours.sha256).to_json(), ours.file_name)
    (tmp_path / "state.db").write_bytes(b"damaged" * 1000)

    backup_for(config).redeliver()

    sent = [d for d in bot_api.documents() if d.file_name == ours.file_name][-1]
    in_chat = json.loads(sent.content)
    assert "signature" in in_chat and in_chat["parts"][0]["file_id"] != theirs.parts[0].file_id
    assert bot_api.documents()[-2].content == (tmp_path / "backups" / waiting.file).read_bytes()
    entry = open_reader(tmp_path / "state.db").entry(waiting.file)
    assert entry.delivery == "sent" and entry.manifest_ref.message_id == sent.message_id


def test_the_manifest_of_a_backup_of_many_thousand_parts_is_followed_from_the_chat(tmp_path, bot):
    # 5000 parts of 19 MB (95 GB): some 2 MB of manifest, more than a manifest was once allowed to be.
    parts = tuple(
        replace(part, message_id=10_000 + part.index, file_id=f"BQACAgIAAxkBAAI{part.index:012d}")
        for part in plan_parts(NAME, [(19 * 1024 * 1024, "ab" * 32)] * 5000)
    )
    big = shop_manifest(NAME, "cd" * 32, parts)
    document = signed_json(big, ManifestKey.from_token(FAKE_TOKEN))
    assert len(document) > 1024 * 1024
    message_id, file_id = post(bot, tmp_path, big.file_name, document)

    found = chain.download_manifest(
        bot, ManifestRef(NAME, message_id, file_id), Keyring((ManifestKey.from_token(FAKE_TOKEN),))
    )

    assert found == big


def test_a_first_backup_does_not_link_its_manifest_to_a_pinned_one_the_owner_did_not_sign(
    tmp_path, bot_api, bot, make_database
):
    source = make_database(rows=10)
    # Pinned before this machine delivered anything: whoever follows our chain must not be led to it.
    theirs = manifest_of_parts(bot, tmp_path, f"{source}_backup_20250101_000000.sql.gz", [b"x"])
    pin(bot, tmp_path, theirs.to_json(), theirs.file_name)

    made = backup_for(
        load_config(None, base_environment(tmp_path, source, **telegram_environment(bot_api)))
    ).run("scheduled")

    assert made.delivery == "sent", made.error
    ours = [d for d in bot_api.documents() if d.file_name.endswith(".manifest.json")][-1]
    assert json.loads(ours.content)["previous"] is None
    assert bot_api.state.pinned[CHAT_ID]["message_id"] == ours.message_id


def test_a_part_larger_than_its_manifest_says_is_refused_without_being_taken_in_whole(tmp_path, bot_api, bot):
    manifest = manifest_of_parts(bot, tmp_path, NAME, [gzip.compress(b"SELECT 1;\n")])
    file_id = manifest.parts[0].file_id
    bot_api.state.files[file_id] = bytes(16 * 1024 * 1024)  # replaced in the chat by a far larger file
    workdir = tmp_path / "work"
    workdir.mkdir()

    with pytest.raises(RestoreError, match=f"larger than the {manifest.parts[0].size_bytes} bytes"):
        fetched_sql(bot, manifest, workdir)

    assert all(path.stat().st_size <= manifest.parts[0].size_bytes + 1 for path in workdir.iterdir())


def test_a_latest_that_is_old_is_restored_only_with_a_loud_warning_to_look_for_a_moved_pin(
    tmp_path, bot_api, bot
):
    # An old manifest of the owner's, pinned again: the signature holds, the date tells.
    old = manifest_of_parts(bot, tmp_path, NAME, [gzip.compress(b"SELECT 'old';\n")])
    pin(bot, tmp_path, signed_json(old, ManifestKey.from_token(FAKE_TOKEN)), old.file_name)

    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--output", str(tmp_path / "x")
    )

    assert restored.returncode == 0, restored.stderr
    assert f"the newest backup in the chat is {NAME}, made 2025-12-03T03:00:00+00:00" in restored.stderr
    assert "WARNING: that is" in restored.stderr and "the pinned message was moved" in restored.stderr
