"""Any size reaches the chat in parts, and the database comes back from the chat alone."""

import gzip
import hashlib
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN, Fault
from tests.conftest import (
    POSTGRES_12,
    add_noise,
    backup_for,
    base_environment,
    database_url,
    fingerprint,
    psql,
    psql_refusing,
    run_tgbackupd,
    telegram_environment,
)
from tests.processes import child_environment
from tgbackupd.config import load_config

pytestmark = pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")
MB = 1024 * 1024


@pytest.fixture
def big_source(make_database):
    source = make_database(rows=2000)
    add_noise(source, 4)  # about 4 MB of random bytes: 4 to 5 parts of 1 MB once gzipped
    return source


def backup_in_parts(tmp_path: Path, source: str, bot_api, **overrides: str):
    environment = base_environment(
        tmp_path,
        source,
        **{**telegram_environment(bot_api), "TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1", **overrides},
    )
    return backup_for(load_config(None, environment)).run("scheduled")


def new_machine(tmp_path: Path, bot_api) -> dict[str, str]:
    """Nothing but the token and the chat id (and where the stand-in Bot API listens)."""
    home = tmp_path / "new-machine"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text("")
    return child_environment() | {
        "HOME": str(home),
        "TGBACKUPD_CONFIG": str(home / "config.toml"),
        "TGBACKUPD_BACKUP_DIRECTORY": str(home / "backups"),
        "TELEGRAM_BOT_TOKEN": FAKE_TOKEN,
        "TELEGRAM_CHAT_ID": CHAT_ID,
        "TGBACKUPD_TELEGRAM_API_URL": bot_api.url,
    }


def ctl(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_tgbackupd(environment, *args, module="tgbackupd.ctl")


def test_a_large_backup_goes_out_in_parts_and_comes_back_from_telegram_alone(
    tmp_path, big_source, make_database, bot_api
):
    result = backup_in_parts(tmp_path, big_source, bot_api)

    assert result.succeeded and result.delivery == "sent", result.error
    assert result.parts >= 3
    documents = bot_api.documents()
    parts, manifest_document = documents[:-1], documents[-1]
    assert [d.file_name for d in parts] == [f"{result.file}.{i:03d}" for i in range(1, result.parts + 1)]
    assert all(len(d.content) <= MB for d in parts) and all(len(d.content) == MB for d in parts[:-1])
    assert b"".join(d.content for d in parts) == Path(result.path).read_bytes()
    for index, document in enumerate(parts, start=1):
        assert f"part {index} of {result.parts}" in document.fields["caption"]
        assert result.sha256 in document.fields["caption"]
    manifest = json.loads(manifest_document.content)
    assert manifest["name"] == result.file and manifest["sha256"] == result.sha256
    assert [p["message_id"] for p in manifest["parts"]] == list(range(1, result.parts + 1))
    assert bot_api.state.pinned[CHAT_ID]["document"]["file_name"] == manifest_document.file_name

    target = make_database(empty=True)
    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--dbname", database_url(target)
    )

    assert restored.returncode == 0, restored.stderr
    assert f"Restored {result.file} into {target}" in restored.stderr
    assert fingerprint(target) == fingerprint(big_source)
    assert psql(target, "SELECT count(*) FROM noise") == psql(big_source, "SELECT count(*) FROM noise")
    assert FAKE_TOKEN not in restored.stdout + restored.stderr


def test_a_corrupt_part_is_named_and_nothing_touches_the_database(
    tmp_path, big_source, make_database, bot_api
):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    damaged = bytearray(bot_api.state.files["doc2"])
    damaged[1000] ^= 0xFF
    bot_api.state.files["doc2"] = bytes(damaged)
    target = make_database(empty=True)

    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--dbname", database_url(target)
    )

    assert restored.returncode == 65
    assert f"part 2 of {result.parts} ({result.file}.002) could not be downloaded intact" in restored.stderr
    assert "SHA-256" in restored.stderr and "Nothing was restored" in restored.stderr
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


def downloaded_folder(tmp_path: Path, bot_api) -> Path:
    """Every document of the chat (the parts and the manifest) in a folder, as a person downloads them."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    for document in bot_api.documents():
        (folder / document.file_name).write_bytes(document.content)
    return folder


def target_with_old_contents(make_database) -> str:
    target = make_database(empty=True)
    psql(target, "CREATE SCHEMA keep_me; CREATE TABLE keep_me.t (x int); INSERT INTO keep_me.t VALUES (1)")
    return target


def assert_untouched(target: str, clean: bool) -> None:
    if clean:
        assert psql(target, "SELECT x FROM keep_me.t") == "1"
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


@pytest.mark.parametrize(
    ("where", "clean"),
    [("middle", False), ("crc", True)],
    ids=["middle-into-an-empty-target", "crc-with-clean-on-old-contents"],
)
def test_a_last_part_corrupted_with_its_size_kept_is_named_and_the_restore_rolled_back(
    tmp_path, big_source, make_database, bot_api, where, clean
):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    folder = downloaded_folder(tmp_path, bot_api)
    last = folder / f"{result.file}.{result.parts:03d}"
    damaged = bytearray(last.read_bytes())
    # The size check passes, and the earlier parts restore meanwhile. In the middle, garbage reaches
    # psql; in gzip's CRC-32 at the end, the SQL is good, and only gzip's check at its end fails.
    damaged[len(damaged) // 2 if where == "middle" else -5] ^= 0xFF
    last.write_bytes(bytes(damaged))
    target = target_with_old_contents(make_database) if clean else make_database(empty=True)

    restored = ctl(
        new_machine(tmp_path, bot_api),
        "restore",
        str(folder),
        "--dbname",
        database_url(target),
        *(["--clean"] if clean else []),
    )

    assert restored.returncode == 65, restored.stderr
    named = f"part {result.parts} of {result.parts} ({result.file}.{result.parts:03d}) is corrupt"
    assert named in restored.stderr and "Nothing was restored" in restored.stderr
    assert_untouched(target, clean)


def test_a_whole_that_does_not_match_while_every_part_does_is_rolled_back(
    tmp_path, big_source, make_database, bot_api
):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    folder = downloaded_folder(tmp_path, bot_api)
    (manifest_file,) = folder.glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = hashlib.sha256(b"another backup").hexdigest()  # the parts' hashes still match
    manifest_file.write_text(json.dumps(manifest))
    target = target_with_old_contents(make_database)

    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", str(folder), "--dbname", database_url(target), "--clean"
    )

    assert restored.returncode == 65, restored.stderr
    assert f"{result.file} as a whole does not match its SHA-256" in restored.stderr
    assert "Nothing was restored" in restored.stderr
    assert_untouched(target, clean=True)


def test_a_bare_gzip_file_cut_short_restores_nothing(tmp_path, big_source, make_database, bot_api):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    cut = tmp_path / "cut" / result.file  # no manifest beside it: no hash to check, only the gzip stream
    cut.parent.mkdir()
    cut.write_bytes(Path(result.path).read_bytes()[:-4])  # all the SQL, but not gzip's end
    target = make_database(empty=True)

    restored = ctl(new_machine(tmp_path, bot_api), "restore", str(cut), "--dbname", database_url(target))

    assert restored.returncode == 65, restored.stderr
    assert "ends in the middle of its gzip stream" in restored.stderr
    assert_untouched(target, clean=False)


def test_parts_download_while_the_earlier_ones_restore_and_at_most_a_few_are_on_disk(
    tmp_path, big_source, make_database, bot_api
):
    from tgbackupd.restore import PARTS_AHEAD

    result = backup_in_parts(tmp_path, big_source, bot_api)
    assert result.parts > PARTS_AHEAD + 1, result.parts
    last_file_id = f"doc{result.parts}"
    work = tmp_path / "work"
    work.mkdir()
    target = make_database(empty=True)
    on_disk: list[int] = []
    restoring_before_the_last_part: list[bool] = []

    def on_download(file_id: str) -> None:
        on_disk.append(len(list(work.rglob(f"{result.file}.*"))))  # this part's file already made
        if file_id == last_file_id:  # has psql run SQL of the earlier parts yet? Wait for it a while
            deadline = time.monotonic() + 60
            seen = False
            while not seen and time.monotonic() < deadline:
                seen = (
                    psql(
                        "postgres",
                        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{target}' "
                        "AND backend_xid IS NOT NULL",
                    )
                    != "0"
                )
                time.sleep(0.05)
            restoring_before_the_last_part.append(seen)

    bot_api.state.on_download = on_download
    # The second part arrives damaged once: it is downloaded again, and the restore goes on.
    bot_api.fail_next(*[Fault(action="pass")] * (3 + result.parts + 1), Fault(action="damage"))

    restored = ctl(
        new_machine(tmp_path, bot_api),
        "restore",
        "--from-telegram",
        "--dbname",
        database_url(target),
        "--work-dir",
        str(work),
    )

    assert restored.returncode == 0, restored.stderr
    assert f"Downloaded part 2 of {result.parts} ({result.file}.002) again: its SHA-256" in restored.stderr
    assert restoring_before_the_last_part == [True]
    assert len(on_disk) == result.parts + 2  # the manifest, every part, the second one twice
    assert max(on_disk) <= PARTS_AHEAD + 1
    assert fingerprint(target) == fingerprint(big_source)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "ending", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["SIGTERM", "SIGHUP", "SIGKILL"]
)
def test_a_restore_ended_by_a_signal_rolls_back_and_leaves_no_part_on_disk(
    tmp_path, big_source, make_database, bot_api, ending
):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    assert result.parts >= 3, result.parts
    work = tmp_path / "work"
    work.mkdir()
    target = make_database(empty=True)
    in_target = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{target}'"
    held = threading.Event()
    released = threading.Event()

    def on_download(file_id: str) -> None:
        if file_id == f"doc{result.parts}":  # the last part waits: the earlier ones are in psql
            held.set()
            released.wait(60)

    bot_api.state.on_download = on_download
    command = ["restore", "--from-telegram", "--dbname", database_url(target), "--work-dir", str(work)]
    restoring = subprocess.Popen(
        [sys.executable, "-m", "tgbackupd.ctl", *command],
        env=new_machine(tmp_path, bot_api),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.wait(60)
        deadline = time.monotonic() + 60
        while psql("postgres", f"{in_target} AND backend_xid IS NOT NULL") == "0":
            assert time.monotonic() < deadline, "psql never began to restore"
            time.sleep(0.05)
        assert list(work.rglob(f"{result.file}.*"))  # parts are on disk

        restoring.send_signal(ending)
        released.set()  # the download under way ends (the stand-in would hold it for a minute)
        _, stderr = restoring.communicate(timeout=60)
    finally:
        released.set()
        restoring.kill()

    if ending == signal.SIGKILL:
        # Nothing of tgbackupctl runs to clean up, and psql's input simply ends: without the COMMIT that
        # only comes after every check, the server rolls back (psql --single-transaction committed here).
        assert restoring.returncode == -ending
    else:
        assert restoring.returncode == 128 + ending, stderr
        assert f"ended by {ending.name} (a restore in progress was rolled back)" in stderr
        assert list(work.iterdir()) == []
    deadline = time.monotonic() + 10
    while psql("postgres", in_target) != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


def test_a_backup_whose_sql_quits_psql_early_restores_nothing_and_says_so(tmp_path, make_database):
    forged = tmp_path / "shop_backup_20251203_030000.sql.gz"
    forged.write_bytes(gzip.compress(b"CREATE TABLE first (x int);\n\\q\nCREATE TABLE second (x int);\n"))
    target = make_database(empty=True)

    restored = ctl(child_environment(), "restore", str(forged), "--dbname", database_url(target))

    assert restored.returncode == 65, restored.stderr
    assert "psql ended before the end of the backup" in restored.stderr
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


def test_a_last_part_that_cannot_be_downloaded_intact_rolls_back_what_was_restored(
    tmp_path, big_source, make_database, bot_api
):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    last = f"doc{result.parts}"
    damaged = bytearray(bot_api.state.files[last])
    damaged[-1] ^= 0xFF
    bot_api.state.files[last] = bytes(damaged)
    target = target_with_old_contents(make_database)

    restored = ctl(
        new_machine(tmp_path, bot_api),
        "restore",
        "--from-telegram",
        "--dbname",
        database_url(target),
        "--clean",
    )

    assert restored.returncode == 65, restored.stderr
    named = f"part {result.parts} of {result.parts} ({result.file}.{result.parts:03d})"
    assert f"{named} could not be downloaded intact" in restored.stderr
    assert "Nothing was restored" in restored.stderr
    assert_untouched(target, clean=True)


def test_a_missing_part_is_named(tmp_path, big_source, make_database, bot_api):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    del bot_api.state.files["doc3"]

    restored = ctl(new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--dbname", "whatever")

    assert restored.returncode == 65
    assert f"part 3 of {result.parts} ({result.file}.003) is missing from Telegram" in restored.stderr


def test_a_download_cut_short_is_downloaded_again(tmp_path, big_source, bot_api):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    output = tmp_path / "restored.sql"
    # getChat, getFile and the download of the manifest pass, then getFile of every part (each is asked
    # for before the restore begins); the first part's download is cut in half.
    bot_api.fail_next(*[Fault(action="pass")] * (3 + result.parts), Fault(action="truncate"))

    restored = ctl(new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--output", str(output))

    assert restored.returncode == 0, restored.stderr
    assert f"Downloaded part 1 of {result.parts} ({result.file}.001) again" in restored.stderr
    assert [r for r in bot_api.state.requests if r.endswith("/documents/doc1")] == [
        f"/file/bot{FAKE_TOKEN}/documents/doc1"
    ] * 2
    assert output.read_bytes() == subprocess.run(["gzip", "-dc", result.path], capture_output=True).stdout


def test_429_during_the_parts_is_waited_out_and_the_parts_stay_in_order(tmp_path, big_source, bot_api):
    bot_api.fail_next(Fault(action="pass"), Fault(429, "Too Many Requests: retry after 1", retry_after=1))

    began = time.monotonic()
    result = backup_in_parts(tmp_path, big_source, bot_api)

    assert result.delivery == "sent", result.error
    assert time.monotonic() - began >= 1.0
    names = [d.file_name for d in bot_api.documents()]
    assert names[:-1] == [f"{result.file}.{i:03d}" for i in range(1, result.parts + 1)]
    assert names[-1].endswith(".manifest.json")


def test_parts_in_the_wrong_order_in_a_folder_are_caught(tmp_path, big_source, bot_api):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    folder = tmp_path / "downloads"
    folder.mkdir()
    for document in bot_api.documents():
        (folder / document.file_name).write_bytes(document.content)
    first, second = folder / f"{result.file}.001", folder / f"{result.file}.002"
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)

    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", str(folder), "--output", str(tmp_path / "x.sql")
    )

    assert restored.returncode == 65
    assert f"part 1 of {result.parts} ({result.file}.001) is corrupt" in restored.stderr


def test_a_folder_of_parts_without_a_manifest_restores_as_cat_would(tmp_path, big_source, bot_api):
    result = backup_in_parts(tmp_path, big_source, bot_api)
    folder = tmp_path / "downloads"
    folder.mkdir()
    for document in bot_api.documents()[:-1]:
        (folder / document.file_name).write_bytes(document.content)
    output = tmp_path / "x.sql"

    restored = ctl(new_machine(tmp_path, bot_api), "restore", str(folder), "--output", str(output))

    assert restored.returncode == 0, restored.stderr
    assert output.read_bytes() == subprocess.run(["gzip", "-dc", result.path], capture_output=True).stdout
    (folder / f"{result.file}.002").unlink()
    missing = ctl(new_machine(tmp_path, bot_api), "restore", str(folder), "--output", str(tmp_path / "y.sql"))
    assert missing.returncode == 65 and "part(s) 002 are missing" in missing.stderr


def test_the_history_is_walked_from_the_pinned_manifest(tmp_path, make_database, bot_api):
    source = make_database(rows=50)
    environment = base_environment(tmp_path, source, **telegram_environment(bot_api))
    first = backup_for(load_config(None, environment)).run("scheduled")
    psql(source, "DELETE FROM orders")
    time.sleep(1)  # a new second, so a new name
    second = backup_for(load_config(None, environment)).run("scheduled")
    machine = new_machine(tmp_path, bot_api)

    listing = ctl(machine, "list", "--remote", "--json")
    restored_first = make_database(empty=True)
    restore = ctl(machine, "restore", "--from-telegram", first.file, "--dbname", database_url(restored_first))

    assert listing.returncode == 0, listing.stderr
    assert [row["name"] for row in json.loads(listing.stdout)] == [second.file, first.file]
    assert restore.returncode == 0, restore.stderr
    assert int(psql(restored_first, "SELECT count(*) FROM orders")) == 100


def test_restore_refuses_a_database_that_is_not_empty_unless_clean(tmp_path, make_database):
    source = make_database(rows=30)
    environment = base_environment(tmp_path, source)
    result = backup_for(load_config(None, environment)).run("manual")
    before = fingerprint(source)
    psql(source, "DELETE FROM orders; CREATE TABLE extra (x int)")

    refused = ctl(environment, "restore", result.path)
    cleaned = ctl(environment, "restore", result.path, "--clean")

    assert refused.returncode == 65 and "is not empty" in refused.stderr and "--clean" in refused.stderr
    assert cleaned.returncode == 0, cleaned.stderr
    assert fingerprint(source) == before
    assert psql(source, "SELECT count(*) FROM pg_tables WHERE tablename = 'extra'") == "0"


def test_a_failing_restore_is_rolled_back_whole_clean_included(tmp_path, make_database):
    source = make_database(rows=30)
    environment = base_environment(tmp_path, source)
    result = backup_for(load_config(None, environment)).run("manual")
    failing = tmp_path / "failing_backup_20251203_030000.sql.gz"
    failing.write_bytes(gzip.compress(gzip.decompress(Path(result.path).read_bytes()) + b"\nSELECT 1/0;\n"))
    target = make_database(empty=True)
    psql(target, "CREATE SCHEMA keep_me; CREATE TABLE keep_me.t (x int); INSERT INTO keep_me.t VALUES (1)")

    failed = ctl({**environment, "DATABASE_URL": database_url(target)}, "restore", str(failing), "--clean")

    assert failed.returncode == 65
    assert "failed and was rolled back" in failed.stderr and "division by zero" in failed.stderr
    assert psql(target, "SELECT x FROM keep_me.t") == "1"
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE tablename = 'customers'") == "0"


def test_restore_by_name_from_the_catalogue_downloads_what_is_no_longer_local(
    tmp_path, make_database, bot_api
):
    source = make_database(rows=30)
    environment = base_environment(tmp_path, source, **telegram_environment(bot_api))
    result = backup_for(load_config(None, environment)).run("manual")
    Path(result.path).unlink()
    target = make_database(empty=True)

    restored = ctl({**environment, "DATABASE_URL": database_url(target)}, "restore", result.file)

    assert restored.returncode == 0, restored.stderr
    assert "not on this machine any more: downloading it from Telegram" in restored.stderr
    assert fingerprint(target) == fingerprint(source)


def test_verify_restores_into_a_scratch_database_and_drops_it(tmp_path, make_database):
    source = make_database(rows=40)
    environment = base_environment(tmp_path, source)
    result = backup_for(load_config(None, environment)).run("manual")

    verified = ctl(environment, "verify", "latest")

    assert verified.returncode == 0, verified.stderr
    assert "public.customers" in verified.stdout and "40" in verified.stdout
    assert f"{result.file}: verified: restored into a scratch database, 2 tables, 120 rows" in verified.stdout
    assert psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'tgbackupd_verify_%'") == "0"


NO_POSTGRES_DATABASE = {"dbname=postgres ": 'FATAL:  database "postgres" does not exist'}


@pytest.mark.parametrize(
    ("refusals", "settings"),
    [(POSTGRES_12, {}), (NO_POSTGRES_DATABASE, {"TGBACKUPD_DATABASE_MAINTENANCE_DB": "template1"})],
    ids=["postgresql-12-without-drop-force", "no-postgres-database-and-maintenance_db-set"],
)
def test_verify_drops_its_scratch_database_on_an_old_server_and_through_the_configured_maintenance_db(
    tmp_path, make_database, refusals, settings
):
    source = make_database(rows=40)
    environment = base_environment(tmp_path, source, **settings)
    backup_for(load_config(None, environment)).run("manual")
    old_server = {**environment, "PATH": psql_refusing(tmp_path / "old-server", refusals)}

    verified = ctl(old_server, "verify", "latest")

    assert verified.returncode == 0, verified.stderr
    assert "verified: restored into a scratch database, 2 tables, 120 rows" in verified.stdout
    scratch = re.search(r"scratch database (tgbackupd_verify_[0-9a-f]+)", verified.stderr)[1]
    assert psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{scratch}'") == "0"


def test_a_scratch_database_that_cannot_be_dropped_is_reported_beside_the_real_error(tmp_path, make_database):
    broken = tmp_path / "broken.sql.gz"
    broken.write_bytes(gzip.compress(b"SELECT no_such_function();\n"))
    environment = base_environment(tmp_path, make_database(empty=True))
    refusing = {"DROP DATABASE": "ERROR:  must be owner of database"}

    verified = ctl({**environment, "PATH": psql_refusing(tmp_path / "bin", refusing)}, "verify", str(broken))

    left = re.search(
        r"the scratch database (tgbackupd_verify_[0-9a-f]+) could not be dropped", verified.stderr
    )
    assert left, verified.stderr
    psql("postgres", f"DROP DATABASE {left[1]}")  # as the message says to, by hand
    assert verified.returncode == 65
    assert "function no_such_function() does not exist" in verified.stderr  # the real error
    assert "must be owner of database" in verified.stderr and "drop it by hand" in verified.stderr


def test_verify_after_makes_every_backup_say_verified(tmp_path, make_database, bot_api):
    source = make_database(rows=20)
    environment = base_environment(
        tmp_path, source, **telegram_environment(bot_api), TGBACKUPD_BACKUP_VERIFY_AFTER="true"
    )

    result = backup_for(load_config(None, environment)).run("scheduled")

    assert result.succeeded and result.verified is True, result.error
    document, manifest = bot_api.documents()
    assert "✅ Verified: restored into a scratch database, 2 tables, 60 rows" in document.fields["caption"]
    assert json.loads(manifest.content)["verified"] is True


def test_without_the_right_to_pin_the_backup_is_still_delivered_and_the_reason_given(
    tmp_path, make_database, bot_api
):
    source = make_database(rows=10)
    bot_api.state.can_pin = False

    result = backup_for(
        load_config(None, base_environment(tmp_path, source, **telegram_environment(bot_api)))
    ).run("scheduled")

    assert result.succeeded and result.delivery == "sent"
    assert "may not pin messages" in result.pin_error
    machine = ctl(
        new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--output", str(tmp_path / "x")
    )
    assert machine.returncode == 65 and "no tgbackupd manifest is pinned" in machine.stderr


def test_a_backup_compressed_on_several_threads_restores_both_ways(
    tmp_path, big_source, make_database, bot_api
):
    result = backup_in_parts(tmp_path, big_source, bot_api, TGBACKUPD_BACKUP_COMPRESSION_THREADS="2")
    assert result.succeeded and result.parts >= 3, result.error

    by_gunzip = subprocess.run(["gzip", "-dc", result.path], capture_output=True, check=True).stdout
    target = make_database(empty=True)
    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--dbname", database_url(target)
    )

    assert by_gunzip.startswith(b"--\n-- PostgreSQL database dump") and b"COPY public.noise" in by_gunzip
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(big_source)


def test_parts_go_out_while_the_dump_still_runs_and_their_captions_are_completed(
    tmp_path, big_source, bot_api
):
    import structlog

    with structlog.testing.capture_logs() as logs:
        result = backup_in_parts(tmp_path, big_source, bot_api)

    events = [entry["event"] for entry in logs]
    created = events.index(next(e for e in events if e.startswith("Backup created successfully")))
    early = [
        i for i, event in enumerate(events) if event.startswith("Sent part ") and "while the dump" in event
    ]
    assert result.succeeded and result.parts >= 3, result.error
    assert early and all(i < created for i in early)  # sent before the dump had finished
    documents = bot_api.documents()
    assert [d.file_name for d in documents[:-1]] == [
        f"{result.file}.{i:03d}" for i in range(1, result.parts + 1)
    ]
    for index, document in enumerate(documents[:-1], start=1):
        assert f"part {index} of {result.parts}" in document.fields["caption"]  # completed after the dump
        assert result.sha256 in document.fields["caption"]


def test_no_part_goes_out_early_while_an_older_backup_waits(tmp_path, make_database, big_source, bot_api):
    import structlog

    environment = base_environment(
        tmp_path,
        big_source,
        **{
            **telegram_environment(bot_api),
            "TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1",
            "TGBACKUPD_TELEGRAM_RETRIES": "0",
        },
    )
    bot_api.state.kicked_from.add(CHAT_ID)
    first = backup_for(load_config(None, environment)).run("scheduled")
    bot_api.state.kicked_from.clear()
    time.sleep(1)

    with structlog.testing.capture_logs() as logs:
        second = backup_for(load_config(None, environment)).run("scheduled")

    assert first.delivery == "pending" and second.delivery == "sent", second.error
    assert not any("while the dump" in entry["event"] for entry in logs)
    manifests = [json.loads(d.content)["name"] for d in bot_api.documents() if d.file_name.endswith(".json")]
    assert manifests == [first.file, second.file]


class SpoolWatcher:
    """Looks at the backup directory every few milliseconds while a backup runs, and remembers the most
    part files (finished or being written) it ever held at once."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.most = 0
        self.most_finished = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            names = [p.name for p in self._directory.glob("*.sql.gz.*")] if self._directory.is_dir() else []
            finished = [name for name in names if not name.startswith(".")]
            self.most = max(self.most, len(names))
            self.most_finished = max(self.most_finished, len(finished))
            time.sleep(0.005)

    def __enter__(self) -> "SpoolWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("spool_parts", [1, 2])
def test_with_keep_0_the_spool_holds_only_the_parts_not_sent_yet_and_empties(
    tmp_path, big_source, make_database, bot_api, spool_parts
):
    bot_api.state.uplink_bytes_per_s = 2 * MB  # slower than the dump, so that parts would pile up
    with SpoolWatcher(tmp_path / "backups") as watcher:
        result = backup_in_parts(
            tmp_path,
            big_source,
            bot_api,
            TGBACKUPD_BACKUP_KEEP="0",
            TGBACKUPD_BACKUP_SPOOL_PARTS=str(spool_parts),
        )

    assert result.succeeded and result.delivery == "sent", result.error
    assert result.parts >= 4 and result.path is None
    # Queued (spool_parts) + being uploaded + just finished while the dump waits: never the whole backup.
    assert 2 <= watcher.most <= spool_parts + 2 < result.parts
    left = [p.name for p in (tmp_path / "backups").iterdir()]
    # No backup file, no part, no manifest: the lock, and where the newest manifest is in the chat.
    assert sorted(left) == [".tgbackupd-newest-manifest", ".tgbackupd.lock"]
    documents = bot_api.documents()
    assert [d.file_name for d in documents[:-1]] == [
        f"{result.file}.{i:03d}" for i in range(1, result.parts + 1)
    ]
    assert hashlib.sha256(b"".join(d.content for d in documents[:-1])).hexdigest() == result.sha256

    target = make_database(empty=True)
    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--dbname", database_url(target)
    )
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(big_source)


def test_with_keep_0_and_telegram_down_the_parts_wait_in_the_spool_restore_from_it_and_are_sent_later(
    tmp_path, big_source, make_database, bot_api
):
    environment = base_environment(
        tmp_path,
        big_source,
        **{
            **telegram_environment(bot_api),
            "TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1",
            "TGBACKUPD_TELEGRAM_RETRIES": "0",
            "TGBACKUPD_BACKUP_KEEP": "0",
            "TGBACKUPD_BACKUP_VERIFY_AFTER": "true",
        },
    )
    bot_api.state.kicked_from.add(CHAT_ID)
    backup = backup_for(load_config(None, environment))
    result = backup.run("scheduled")

    assert result.delivery == "pending" and result.verified is True  # verified from the spooled parts
    spooled = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz.*"))
    assert spooled == [f"{result.file}.{i:03d}" for i in range(1, result.parts + 1)]
    listed = ctl(environment, "list")
    assert f"{result.file}" in listed.stdout and "spool" in listed.stdout, listed.stdout

    target = make_database(empty=True)  # the server is lost before Telegram is back: the spool restores
    restored = ctl(environment, "restore", result.file, "--dbname", database_url(target))
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(big_source)

    bot_api.state.kicked_from.clear()
    backup.redeliver()
    assert backup.outbox.pending_count == 0
    assert list((tmp_path / "backups").glob("*.sql.gz*")) == []
    manifest = json.loads(bot_api.documents()[-1].content)
    assert manifest["name"] == result.file and manifest["verified"] is True


def test_keep_0_without_telegram_is_refused_with_what_to_do(tmp_path, make_database):
    completed = run_tgbackupd(
        base_environment(tmp_path, make_database(rows=1), TGBACKUPD_BACKUP_KEEP="0"), "--check-config"
    )
    assert completed.returncode == 78
    assert "backup.keep = 0 keeps no backup on this machine" in completed.stderr
    assert "TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID" in completed.stderr


def test_a_zstd_backup_on_two_threads_in_parts_comes_back_from_telegram_and_from_the_file(
    tmp_path, big_source, make_database, bot_api
):
    result = backup_in_parts(
        tmp_path,
        big_source,
        bot_api,
        TGBACKUPD_BACKUP_COMPRESSION="zstd",
        TGBACKUPD_BACKUP_COMPRESSION_THREADS="2",
    )
    assert result.succeeded and result.parts >= 3 and result.file.endswith(".sql.zst"), result.error

    from_telegram = make_database(empty=True)
    restored = ctl(
        new_machine(tmp_path, bot_api), "restore", "--from-telegram", "--dbname", database_url(from_telegram)
    )
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(from_telegram) == fingerprint(big_source)

    from_file = make_database(empty=True)
    environment = base_environment(tmp_path, big_source)
    restored = ctl(environment, "restore", result.path, "--dbname", database_url(from_file))
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(from_file) == fingerprint(big_source)


def test_a_cut_zstd_backup_is_refused_before_any_sql_runs(tmp_path, make_database):
    source = make_database(rows=2000)
    environment = base_environment(tmp_path, source, TGBACKUPD_BACKUP_COMPRESSION="zstd")
    result = backup_for(load_config(None, environment)).run("manual")
    assert result.succeeded, result.error
    cut = tmp_path / "cut" / result.file
    cut.parent.mkdir()
    cut.write_bytes(Path(result.path).read_bytes()[:-100])
    target = make_database(empty=True)

    restored = ctl(environment, "restore", str(cut), "--dbname", database_url(target))

    assert restored.returncode == 65, restored.stderr
    assert "ends in the middle of its zstd stream" in restored.stderr
    assert psql(target, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == "0"


def test_with_keep_0_two_backups_in_the_same_second_keep_their_own_names(tmp_path, make_database, bot_api):
    from datetime import UTC, datetime

    from tgbackupd.clock import Clock

    class Frozen(Clock):
        def now(self) -> datetime:
            return datetime(2025, 12, 3, 3, 0, 0, tzinfo=UTC)

    environment = base_environment(
        tmp_path, make_database(rows=10), TGBACKUPD_BACKUP_KEEP="0", **telegram_environment(bot_api)
    )
    first = backup_for(load_config(None, environment), clock=Frozen()).run("manual")
    second = backup_for(load_config(None, environment), clock=Frozen()).run("manual")

    assert first.delivery == second.delivery == "sent", (first.error, second.error)
    # The first left no file behind, but the catalogue and the chat know its name.
    assert first.file.endswith("_030000.sql.gz") and second.file.endswith("_030001.sql.gz")
    listed = ctl(environment, "list").stdout
    assert first.file in listed and second.file in listed


@pytest.fixture
def kilobyte_parts(monkeypatch):
    """Parts of 1 KB (the configuration's least is 1 MB): a backup of about a megabyte makes over a
    thousand of them, cheaply."""
    from tgbackupd.config import TelegramConfig

    monkeypatch.setattr(TelegramConfig, "part_size_bytes", property(lambda self: 1024))


def sent_parts(bot_api, manifest: dict) -> list[str]:
    """The names in the chat of the documents the manifest lists as the backup's parts, in its order."""
    by_message = {document.message_id: document.file_name for document in bot_api.documents()}
    return [by_message[part["message_id"]] for part in manifest["parts"]]


def test_over_999_parts_are_numbered_with_four_digits_even_those_sent_before_the_count_was_known(
    tmp_path, make_database, bot_api, kilobyte_parts
):
    import structlog

    source = make_database(rows=500)
    first = backup_in_parts(tmp_path, source, bot_api)  # a few hundred parts: the next is expected alike
    add_noise(source, 1)
    with structlog.testing.capture_logs() as logs:
        second = backup_in_parts(tmp_path, source, bot_api)
    third = backup_in_parts(tmp_path, source, bot_api)  # expected from the second: four digits at once

    assert first.parts < 1000 <= second.parts <= third.parts, (first.parts, second.parts, third.parts)
    resent = [
        entry for entry in logs if entry["event"].startswith("Parts sent during the dump are sent again")
    ]
    assert len(resent) == 1 and resent[0]["named_before"] == f"{second.file}.001 … {second.file}.999"
    manifests = [json.loads(d.content) for d in bot_api.documents() if d.file_name.endswith(".json")]
    for result, manifest in zip((second, third), manifests[1:], strict=True):
        names = sent_parts(bot_api, manifest)
        assert names == [f"{result.file}.{i:04d}" for i in range(1, result.parts + 1)]
        assert [part["file_name"] for part in manifest["parts"]] == names and sorted(names) == names
    third_documents = [d for d in bot_api.documents() if d.file_name.startswith(third.file + ".")]
    assert len(third_documents) == third.parts  # nothing sent twice when the count was expected right

    folder = tmp_path / "downloads"  # everything of the third backup, as a person downloads it
    folder.mkdir()
    for document in [*third_documents, bot_api.documents()[-1]]:
        (folder / document.file_name).write_bytes(document.content)
    output = tmp_path / "restored.sql"
    restored = ctl(new_machine(tmp_path, bot_api), "restore", str(folder), "--output", str(output))
    assert restored.returncode == 0, restored.stderr
    joined = subprocess.run(
        f"cat {third.file}.* | gzip -dc", shell=True, cwd=folder, capture_output=True, check=True
    ).stdout
    assert (
        output.read_bytes()
        == joined
        == subprocess.run(["gzip", "-dc", third.path], capture_output=True).stdout
    )


def test_with_keep_0_over_999_parts_wait_in_the_spool_with_four_digits_and_those_sent_early_keep_theirs(
    tmp_path, make_database, bot_api, kilobyte_parts
):
    import structlog

    source = make_database(rows=500)
    keep_0 = {"TGBACKUPD_BACKUP_KEEP": "0", "TGBACKUPD_TELEGRAM_RETRIES": "0"}
    first = backup_in_parts(tmp_path, source, bot_api, **keep_0)  # the next is expected alike: 3 digits
    add_noise(source, 1)
    refused = Fault(403, "Forbidden: bot is not a member of the channel chat")
    bot_api.fail_next(*[Fault(action="pass")] * 600, refused, refused, refused)  # then the outbox's try
    with structlog.testing.capture_logs() as logs:
        second = backup_in_parts(tmp_path, source, bot_api, **keep_0)
    bot_api.state.faults.clear()

    assert first.delivery == "sent" and second.delivery == "pending" and second.parts >= 1000
    kept = [entry for entry in logs if entry["event"].startswith("Parts sent during the dump keep names")]
    assert len(kept) == 1 and kept[0]["named_before"] == f"{second.file}.001 … {second.file}.600"
    spooled = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz.*"))
    assert spooled == [f"{second.file}.{i:04d}" for i in range(601, second.parts + 1)]
    environment = base_environment(tmp_path, source, **{**telegram_environment(bot_api), **keep_0})
    output = tmp_path / "restored.sql"  # 600 parts from the chat, the rest from the spool
    restored = ctl(environment, "restore", second.file, "--output", str(output))
    assert restored.returncode == 0, restored.stderr

    backup = backup_for(load_config(None, environment))
    backup.redeliver()
    assert backup.outbox.pending_count == 0 and list((tmp_path / "backups").glob("*.sql.gz.*")) == []
    manifest = json.loads(bot_api.documents()[-1].content)
    assert [part["file_name"] for part in manifest["parts"]] == [
        f"{second.file}.{i:04d}" for i in range(1, second.parts + 1)
    ]
    names = sent_parts(bot_api, manifest)
    assert names[:600] == [f"{second.file}.{i:03d}" for i in range(1, 601)]
    assert names[600:] == [f"{second.file}.{i:04d}" for i in range(601, second.parts + 1)]
    # cat would join .060, .0601 … .0609, .061 out of order: every caption says how to rebuild it instead.
    captions = {d.message_id: d.fields["caption"] for d in bot_api.documents()}
    rebuild = {captions[part["message_id"]].splitlines()[-1] for part in manifest["parts"]}
    assert rebuild == {
        f"Rebuild: tgbackupctl restore --from-telegram {second.file} (part numbers differ in width here: "
        "cat would join them out of order)"
    }
    by_message = {document.message_id: document.content for document in bot_api.documents()}
    chat = b"".join(by_message[part["message_id"]] for part in manifest["parts"])
    assert hashlib.sha256(chat).hexdigest() == second.sha256
    assert b"CREATE TABLE public.noise" in output.read_bytes()


def test_many_parts_pace_themselves_to_20_messages_a_minute_a_second_apart_instead_of_meeting_429(
    tmp_path, make_database, bot_api, kilobyte_parts
):
    from tests.conftest import SteppingClock
    from tgbackupd.telegram import PACED_METHODS

    clock = SteppingClock()
    bot_api.state.clock = clock.monotonic
    source = make_database(rows=500)  # some 30 parts of 1 KB
    environment = base_environment(
        tmp_path,
        source,
        **{**telegram_environment(bot_api), "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE": "20"},
    )
    began = time.monotonic()

    result = backup_for(load_config(None, environment), clock=clock).run("scheduled")

    assert result.delivery == "sent" and result.parts >= 25, result.error
    paced = [at for at, method in bot_api.state.posts if method in PACED_METHODS]
    assert len(paced) == 2 * result.parts + 1  # each part, all captions but the last one's, manifest, pin
    assert all(later - earlier >= 1 for earlier, later in itertools.pairwise(paced))
    assert all(paced[index + 20] - paced[index] >= 60 for index in range(len(paced) - 20))
    assert paced[-1] - paced[0] <= (len(paced) - 1) // 20 * 60 + 19  # and no slower than that
    assert time.monotonic() - began < 60  # minutes of pacing passed on the test's clock


def test_output_is_a_new_file_only_its_owner_reads_and_an_existing_one_or_a_link_is_refused(
    tmp_path, make_database
):
    environment = base_environment(tmp_path, make_database(rows=20))
    result = backup_for(load_config(None, environment)).run("manual")
    assert result.succeeded, result.error
    output = tmp_path / "shop.sql"
    victim = tmp_path / "victim"
    victim.write_text("kept")
    link = tmp_path / "link.sql"
    link.symlink_to(victim)

    written = ctl(environment, "restore", result.path, "--output", str(output))
    again = ctl(environment, "restore", result.path, "--output", str(output))
    through_link = ctl(environment, "restore", result.path, "--output", str(link))

    assert written.returncode == 0, written.stderr
    assert output.stat().st_mode & 0o777 == 0o600
    assert output.read_bytes() == gzip.decompress(Path(result.path).read_bytes())
    assert again.returncode == 64 and f"{output} exists already" in again.stderr
    assert through_link.returncode == 64 and f"{link} exists already" in through_link.stderr
    assert output.read_bytes() == gzip.decompress(Path(result.path).read_bytes())
    assert victim.read_text() == "kept"


def test_a_restore_whose_process_dies_between_statements_commits_nothing(make_database):
    """psql's input ending is no commit: only the COMMIT sent after every check is. The feeding process
    dies (os._exit: no clean-up runs) right after whole statements went in, where psql --single-transaction
    would have committed them."""
    target = make_database(empty=True)
    script = (
        "import os, time\n"
        "from tgbackupd import psql\n"
        "from tgbackupd.config import database_from_url\n"
        "def chunks():  # one chunk larger than any buffer, so that it reaches psql\n"
        "    yield b'CREATE TABLE restored_in_part (x int);\\n-- ' + b'x' * 65536 + b'\\n'\n"
        "    time.sleep(1)  # the statement reaches psql and runs\n"
        "    os._exit(9)\n"
        f"psql.restore(database_from_url({database_url(target)!r}), chunks())\n"
    )
    dying = subprocess.run(
        [sys.executable, "-c", script], env=child_environment(), capture_output=True, timeout=60
    )

    assert dying.returncode == 9, dying.stderr
    in_target = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{target}'"
    deadline = time.monotonic() + 10
    while psql("postgres", in_target) != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
