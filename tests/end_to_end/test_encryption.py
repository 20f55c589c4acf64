"""Encrypted backups: the real daemon encrypts with the real `age` before anything reaches the disk or
the chat; `age` alone decrypts them, and tgbackupctl restores them with the identity, and with nothing
else."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    add_noise,
    backup_for,
    base_environment,
    database_url,
    fingerprint,
    psql,
    run_tgbackupd,
)
from tests.integration.test_parts_and_restore import ctl, new_machine
from tgbackupd.config import load_config
from tgbackupd.encryption import MAGIC
from tgbackupd.pgdump import build_command

pytestmark = pytest.mark.skipif(
    shutil.which("pg_dump") is None or shutil.which("age") is None, reason="needs pg_dump and age"
)


def age_key(directory: Path, name: str = "key.txt") -> tuple[Path, str]:
    """A new age identity file and its public key, as `age-keygen -o key.txt` makes them."""
    identity = directory / name
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True)
    return identity, public.stdout.strip()


def without_restrict_keys(sql: bytes) -> bytes:
    """pg_dump (15.14 on) guards its output with a \\restrict key that is new on every run."""
    return re.sub(rb"(?m)^\\(un)?restrict .*\n", b"", sql)


def plain_dump(source: str, tmp_path: Path) -> bytes:
    """The SQL pg_dump makes of `source` with tgbackupd's own command line."""
    database = load_config(None, base_environment(tmp_path, source)).database
    return subprocess.run(build_command(database), check=True, capture_output=True).stdout


def only_backup(directory: Path, ending: str) -> Path:
    (found,) = (path for path in directory.iterdir() if path.name.endswith(ending))
    return found


def test_the_daemon_encrypts_before_the_disk_and_age_alone_gives_back_the_plain_dump(
    tmp_path, make_database, daemon_for, bot_api
):
    source = make_database(rows=500)
    psql(source, "CREATE TABLE secrets (word text); INSERT INTO secrets VALUES ('hunter2-plaintext-marker')")
    identity, recipient = age_key(tmp_path)
    daemon = daemon_for(source, TGBACKUPD_ENCRYPTION_RECIPIENTS=recipient)

    triggered = daemon.ctl("trigger")

    assert triggered.returncode == 0, triggered.stderr
    backup = only_backup(tmp_path / "backups", ".sql.gz.age")
    encrypted = backup.read_bytes()
    assert encrypted.startswith(MAGIC + b"\n")
    assert b"hunter2-plaintext-marker" not in encrypted and b"CREATE TABLE" not in encrypted
    decrypted = subprocess.run(
        f"age -d -i {identity} {backup} | gunzip", shell=True, check=True, capture_output=True
    ).stdout
    assert without_restrict_keys(decrypted) == without_restrict_keys(plain_dump(source, tmp_path))
    manifest = json.loads(only_backup(tmp_path / "backups", ".manifest.json").read_bytes())
    assert manifest["name"] == backup.name
    assert manifest["encrypted"] is True and manifest["recipients"] == [recipient]
    (document, _) = bot_api.documents()
    assert (
        f"Restore: age -d -i key.txt {backup.name} | gunzip | psql -d DATABASE" in document.fields["caption"]
    )


def test_an_encrypted_backup_in_parts_restores_from_telegram_with_its_identity_and_only_with_it(
    tmp_path, make_database, daemon_for, bot_api
):
    source = make_database(rows=2000)
    add_noise(source, 3)  # some 3 MB that do not compress: several parts of 1 MB
    identity, recipient = age_key(tmp_path)
    other, _ = age_key(tmp_path, "other.txt")
    daemon = daemon_for(
        source, TGBACKUPD_ENCRYPTION_RECIPIENTS=recipient, TGBACKUPD_TELEGRAM_PART_SIZE_MB="1"
    )
    assert daemon.ctl("trigger").returncode == 0
    documents = bot_api.documents()
    parts, manifest = documents[:-1], json.loads(documents[-1].content)
    assert len(parts) >= 3 and parts[0].file_name.endswith(".sql.gz.age.001")
    assert "age -d -i key.txt" not in parts[0].fields["caption"]  # a part's caption says how to join them
    assert manifest["encrypted"] is True and manifest["recipients"] == [recipient]
    target = make_database(empty=True)
    machine = new_machine(tmp_path, bot_api)

    nothing = ctl(machine, "restore", "--from-telegram", "latest", "--dbname", database_url(target))
    wrong = ctl(machine, "restore", "--from-telegram", "latest", "--identity", str(other), "--dbname", target)

    assert nothing.returncode == 64, nothing.stderr
    assert f"this backup is encrypted for {recipient}; pass --identity FILE" in nothing.stderr
    assert wrong.returncode == 65, wrong.stderr
    assert f"none of the identities given ({other}) can decrypt this backup" in wrong.stderr
    assert recipient in wrong.stderr and "Nothing was restored" in wrong.stderr
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"

    restored = ctl(
        machine, "restore", "--from-telegram", "latest", "--identity", str(identity), "--dbname", target
    )

    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(source)
    assert psql(target, "SELECT count(*) FROM noise") == psql(source, "SELECT count(*) FROM noise")


def test_verify_after_decrypts_with_the_identity_file_and_without_one_the_configuration_says_what_to_set(
    tmp_path, make_database, daemon_for
):
    source = make_database(rows=20)
    identity, recipient = age_key(tmp_path)
    settings = {"TGBACKUPD_ENCRYPTION_RECIPIENTS": recipient, "TGBACKUPD_BACKUP_VERIFY_AFTER": "true"}

    refused = run_tgbackupd(base_environment(tmp_path, source, **settings), "--check-config")

    assert refused.returncode == 78
    assert "set encryption.identity_file" in refused.stderr and "age-identity" in refused.stderr

    daemon = daemon_for(source, **settings, TGBACKUPD_ENCRYPTION_IDENTITY_FILE=str(identity))
    triggered = daemon.ctl("trigger", "--json")

    assert triggered.returncode == 0, triggered.stderr
    result = json.loads(triggered.stdout)["data"]["backup"]
    assert result["verified"] is True and result["file"].endswith(".sql.gz.age"), result


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_an_ssh_ed25519_key_is_a_recipient_and_its_private_key_the_identity(tmp_path, make_database):
    source = make_database(rows=50)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    recipient = key.with_suffix(".pub").read_text().strip()
    environment = base_environment(tmp_path, source, TGBACKUPD_ENCRYPTION_RECIPIENTS=recipient)
    result = backup_for(load_config(None, environment)).run("manual")
    assert result.succeeded, result.error
    output = tmp_path / "restored.sql"

    written = ctl(environment, "restore", result.path, "--identity", str(key), "--output", str(output))

    assert written.returncode == 0, written.stderr
    assert without_restrict_keys(output.read_bytes()) == without_restrict_keys(plain_dump(source, tmp_path))


@pytest.mark.parametrize("noise_megabytes", [0, 1], ids=["under-the-probe", "over-the-probe"])
def test_an_identity_file_age_cannot_use_is_refused_by_name_and_nothing_is_restored(
    tmp_path, make_database, noise_megabytes
):
    source = make_database(rows=20)
    if noise_megabytes:
        add_noise(source, noise_megabytes)
    identity, recipient = age_key(tmp_path)
    environment = base_environment(tmp_path, source, TGBACKUPD_ENCRYPTION_RECIPIENTS=recipient)
    result = backup_for(load_config(None, environment)).run("manual")
    assert result.succeeded, result.error
    assert (Path(result.path).stat().st_size > 256 * 1024) == bool(noise_megabytes)
    public = tmp_path / "key.pub"
    public.write_text(recipient + "\n")
    damaged = tmp_path / "damaged.txt"
    # One character of the key changed (to another one: a Q stays no Q), so its checksum fails.
    damaged.write_text(
        re.sub(
            r"AGE-SECRET-KEY-1(.)",
            lambda key: "AGE-SECRET-KEY-1" + ("P" if key.group(1) == "Q" else "Q"),
            identity.read_text(),
        )
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    target = make_database(empty=True)

    for unusable, words in (
        (public, "unknown identity type"),
        (damaged, "malformed secret key"),
        (empty, "no secret keys found"),
    ):
        refused = ctl(environment, "restore", result.path, "--identity", str(unusable), "--dbname", target)

        assert refused.returncode == 64, (unusable, refused.stderr)
        assert f'age cannot use the identity given: reading "{unusable}"' in refused.stderr
        assert words in refused.stderr and "Nothing was restored" in refused.stderr
        assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
