"""What is in the chat is input from whoever may post there: a manifest is parsed and checked before it is
followed, and downloads stay inside the work directory."""

import gzip
import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN
from tests.integration.test_parts_and_restore import ctl, new_machine
from tgbackupd.errors import RestoreError
from tgbackupd.files import FileSlice
from tgbackupd.manifest import Manifest, plan_parts
from tgbackupd.progress import Progress
from tgbackupd.restore import TelegramSource
from tgbackupd.telegram import BotApi

NAME = "shop_backup_20251203_030000.sql.gz"
HOSTILE_SQL = b"CREATE TABLE pwned (x int);\n"


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


def manifest_of_parts(bot: BotApi, tmp_path: Path, name: str, contents: list[bytes]) -> Manifest:
    """A well-formed manifest for `contents`, each posted in the chat as one part."""
    parts = plan_parts(name, [(len(content), hashlib.sha256(content).hexdigest()) for content in contents])
    posted = [post(bot, tmp_path, part.file_name, data) for part, data in zip(parts, contents, strict=True)]
    whole = b"".join(contents)
    return Manifest(
        name=name,
        database="shop",
        host="shop on db",
        server="web1",
        created_at="2025-12-03T03:00:00+00:00",
        size_bytes=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        parts=tuple(
            replace(part, message_id=message_id, file_id=file_id)
            for part, (message_id, file_id) in zip(parts, posted, strict=True)
        ),
    )


def test_a_download_never_writes_through_a_link_or_over_a_file_in_the_work_directory(tmp_path, bot):
    manifest = manifest_of_parts(bot, tmp_path, NAME, [gzip.compress(HOSTILE_SQL)])
    workdir = tmp_path / "work"
    workdir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (workdir / NAME).symlink_to(victim)

    with pytest.raises(RestoreError, match=f"cannot create {NAME} in the work directory {workdir}"):
        TelegramSource(bot, CHAT_ID, Progress()).fetch(manifest, workdir)

    assert victim.read_text() == "keep me"


def test_a_manifest_in_a_folder_naming_a_file_outside_it_is_refused_and_nothing_is_read_from_there(
    tmp_path, bot_api
):
    outside = tmp_path / "elsewhere" / "secret.sql.gz"
    outside.parent.mkdir()
    outside.write_bytes(gzip.compress(HOSTILE_SQL))
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    (part,) = plan_parts(NAME, [(outside.stat().st_size, digest)])
    manifest = Manifest(
        name=NAME,
        database="shop",
        host="shop on db",
        server="web1",
        created_at="2025-12-03T03:00:00+00:00",
        size_bytes=part.size_bytes,
        sha256=digest,
        parts=(replace(part, file_name=str(outside)),),
    )
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / manifest.file_name).write_bytes(manifest.to_json())
    output = tmp_path / "restored.sql"

    restored = ctl(new_machine(tmp_path, bot_api), "restore", str(folder), "--output", str(output))

    assert restored.returncode == 65, restored.stderr
    assert 'part 1 of the manifest has the "file_name" "/tmp/' in restored.stderr
    assert f"not {NAME} as the backup's name and its 1 part(s) make it" in restored.stderr
    assert not output.exists()
