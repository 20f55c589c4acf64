"""Recipients are checked before age ever runs, each bad one named where it was written; the names and the
manifest of an encrypted backup say so and agree."""

import base64
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tgbackupd.checks import _encryption
from tgbackupd.config import effective_config, load_config
from tgbackupd.encryption import AgeEncryptor, EncryptionError, recipient_problem
from tgbackupd.errors import ConfigError
from tgbackupd.formats import GZIP, ZSTD, by_name, stem
from tgbackupd.manifest import PART_FILE, Manifest, ManifestError, is_backup_name, plan_parts
from tgbackupd.messages import BackupFacts, backup_caption
from tgbackupd.storage import BackupDirectory

# Made with age-keygen (the public keys of identities nobody keeps).
AGE_KEY = "age1ymkygj5xv2f78jsg5e875xz77z9f2x3cam033cn5fqs3tfts4e5sluxdnr"
OTHER_AGE_KEY = "age10lrpp9vujftnzlands3p70409lwemetrgtz23msefvmc90d9zgzsq4aka7"
DATABASE = {"DATABASE_URL": "postgresql://h/shop"}


def _ssh_line(kind: str, embedded: str, key_bytes: bytes) -> str:
    blob = len(embedded).to_bytes(4, "big") + embedded.encode()
    blob += len(key_bytes).to_bytes(4, "big") + key_bytes
    return f"{kind} {base64.b64encode(blob).decode()} admin@laptop"


ED25519 = _ssh_line("ssh-ed25519", "ssh-ed25519", bytes(range(32)))


@pytest.mark.parametrize("recipient", [AGE_KEY, OTHER_AGE_KEY, ED25519, ED25519.rsplit(" ", 1)[0]])
def test_age_and_ssh_public_keys_are_recipients(recipient):
    assert recipient_problem(recipient) is None


@pytest.mark.parametrize(
    "recipient, expected",
    [
        ("age1xyz", "holds only the letters and digits of bech32"),
        (AGE_KEY[:-1] + ("q" if AGE_KEY[-1] != "q" else "p"), "its checksum does not match"),
        (AGE_KEY[:20] + AGE_KEY[21:], "its checksum does not match"),
        (AGE_KEY.upper(), "not an age recipient"),
        ("AGE-SECRET-KEY-1QQQ", "expected an age public key (age1…"),
        ("ssh-ed25519", "is followed by the key itself"),
        ("ssh-ed25519 not*base64", "not base64"),
        (_ssh_line("ssh-ed25519", "ssh-rsa", bytes(32)), "does not say it is an ssh-ed25519 key"),
        (_ssh_line("ssh-rsa", "ssh-ed25519", bytes(32)), "does not say it is an ssh-rsa key"),
        (_ssh_line("ssh-ed25519", "ssh-ed25519", bytes(31)), "not the 32 bytes of an Ed25519 public key"),
        ("ecdsa-sha2-nistp256 AAAA", "not an age recipient"),
    ],
)
def test_a_bad_recipient_is_told_apart_from_a_good_one(recipient, expected):
    problem = recipient_problem(recipient)
    assert problem is not None and problem.startswith("not an age recipient") and expected in problem


def _problems(tmp_path: Path, text: str = "", **environ: str) -> list[str]:
    config_file = tmp_path / "config.toml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(config_file), {**DATABASE, **environ})
    assert raised.value.exit_code == 78
    return raised.value.problems


def test_each_bad_recipient_in_the_file_is_named_by_its_place_and_where_it_came_from(tmp_path):
    problems = _problems(tmp_path, f'[encryption]\nrecipients = ["{AGE_KEY}", "age1xyz", "ssh-rsa x"]\n')

    config_file = tmp_path / "config.toml"
    assert len(problems) == 2
    assert problems[0].startswith(
        f"encryption.recipients[1] = 'age1xyz' (from {config_file}): not an age recipient"
    )
    assert problems[1].startswith(f"encryption.recipients[2] = 'ssh-rsa x' (from {config_file}): not an age")


def test_recipients_from_the_environment_are_comma_separated_and_checked_the_same(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text("")
    environment = {**DATABASE, "TGBACKUPD_ENCRYPTION_RECIPIENTS": f" {AGE_KEY} ,{ED25519},"}

    config = load_config(str(config_file), environment)
    problems = _problems(tmp_path, TGBACKUPD_ENCRYPTION_RECIPIENTS=f"{AGE_KEY},age1nope")

    assert config.encryption.recipients == (AGE_KEY, ED25519)
    assert config.backup_suffix == ".sql.gz.age"
    assert effective_config(config)["encryption"]["recipients"] == [AGE_KEY, ED25519]
    assert problems == [
        "encryption.recipients[1] = 'age1nope' (from environment variable TGBACKUPD_ENCRYPTION_RECIPIENTS): "
        + str(recipient_problem("age1nope"))
    ]


def test_a_recipients_file_is_read_as_age_reads_it_and_its_bad_lines_named(tmp_path):
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the admins\n{AGE_KEY}\n\n{ED25519}\n")
    config = load_config(None, {**DATABASE, "TGBACKUPD_ENCRYPTION_RECIPIENTS_FILE": str(recipients)})
    assert config.encryption.recipients == (AGE_KEY, ED25519)

    recipients.write_text(f"{AGE_KEY}\nage1xyz\n")
    (bad,) = _problems(tmp_path, TGBACKUPD_ENCRYPTION_RECIPIENTS_FILE=str(recipients))
    (unreadable,) = _problems(tmp_path, TGBACKUPD_ENCRYPTION_RECIPIENTS_FILE=str(tmp_path / "absent"))
    recipients.write_text("# nobody yet\n")
    (empty,) = _problems(tmp_path, TGBACKUPD_ENCRYPTION_RECIPIENTS_FILE=str(recipients))

    assert bad.startswith(f"encryption.recipients_file = '{recipients}' (from environment variable")
    assert "line 2 ('age1xyz') is not an age recipient" in bad
    assert "cannot read the recipients file: No such file or directory" in unreadable
    assert "names no recipient" in empty


def test_verify_after_on_encrypted_backups_needs_an_identity_the_credential_will_do(tmp_path):
    settings = {"TGBACKUPD_ENCRYPTION_RECIPIENTS": AGE_KEY, "TGBACKUPD_BACKUP_VERIFY_AFTER": "true"}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "age-identity").write_text("AGE-SECRET-KEY-1…\n")

    (problem,) = _problems(tmp_path, **settings)
    config = load_config(None, {**DATABASE, **settings, "CREDENTIALS_DIRECTORY": str(credentials)})
    (missing,) = _problems(tmp_path, **settings, TGBACKUPD_ENCRYPTION_IDENTITY_FILE=str(tmp_path / "no"))

    assert "set encryption.identity_file" in problem and "systemd credential age-identity" in problem
    assert config.encryption.identity == credentials / "age-identity"
    assert "the identity file does not exist or cannot be read" in missing


def test_encrypted_names_end_in_age_and_belong_to_the_same_series(tmp_path):
    encrypted = "shop_backup_20251203_030000.sql.zst.age"
    assert is_backup_name(encrypted) and stem(encrypted) == "shop_backup_20251203_030000"
    assert by_name(encrypted) == ZSTD and by_name("x_backup_20251203_030000.sql.gz.age") == GZIP
    assert PART_FILE.match(f"{encrypted}.001")["name"] == encrypted
    directory = BackupDirectory(tmp_path, "shop", ".sql.gz.age")
    for name in ("shop_backup_20251201_030000.sql.gz", encrypted, "shop_backup_20251204_030000.sql.gz.age"):
        (tmp_path / name).write_bytes(b"x")
    removed = directory.remove([backup.name for backup in directory.backups()[2:]])

    assert removed == ["shop_backup_20251201_030000.sql.gz"]  # the oldest of the one series
    assert [backup.name for backup in directory.backups()] == [
        "shop_backup_20251204_030000.sql.gz.age",
        encrypted,
    ]


def _encrypted_manifest(**changes) -> Manifest:
    name = "shop_backup_20251203_030000.sql.gz.age"
    manifest = Manifest(
        name=name,
        database="shop",
        host="shop on db",
        server="web1",
        created_at="2025-12-03T03:00:00+00:00",
        size_bytes=3,
        sha256="f" * 64,
        parts=plan_parts(name, [(3, "a" * 64)]),
        encrypted=True,
        recipients=(AGE_KEY, ED25519),
    )
    return dataclasses.replace(manifest, **changes)


def test_an_encrypted_manifest_round_trips_and_must_agree_with_its_name():
    manifest = _encrypted_manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest

    def refused(**changes) -> str:
        document = json.loads(_encrypted_manifest().to_json())
        document.update(changes)
        with pytest.raises(ManifestError) as raised:
            Manifest.from_json(json.dumps(document).encode())
        return str(raised.value)

    assert (
        'the manifest\'s "encrypted" is false, but shop_backup_20251203_030000.sql.gz.age ends in .age'
        in (refused(encrypted=False))
    )
    assert '"recipients" is ["x", 7], not a list of at most 100 texts' in refused(recipients=["x", 7])
    assert "not a list of at most 100 texts" in refused(recipients=[AGE_KEY] * 101)
    assert "not a list of at most 100 texts" in refused(recipients=["x" * 4001])


def test_the_caption_says_how_to_decrypt_and_no_more():
    facts = BackupFacts("shop_backup_20251203_030000.sql.gz.age", "shop on db", "web1", 3, "f" * 64, 1.0)
    caption = backup_caption(facts)
    assert (
        "Restore: age -d -i key.txt shop_backup_20251203_030000.sql.gz.age | gunzip | psql -d DATABASE"
        in caption
    )
    assert AGE_KEY not in caption


@pytest.mark.skipif(shutil.which("age") is None, reason="needs age")
def test_a_recipient_age_refuses_fails_the_stage_with_age_s_own_words():
    class Nowhere:
        def write(self, data: bytes) -> None:
            raise AssertionError("nothing may come out")

        def close(self) -> None:
            raise AssertionError("not closed after a failure")

    stage = AgeEncryptor(["age1xyz"], Nowhere())
    with pytest.raises(EncryptionError) as raised:
        for _ in range(100):
            stage.write(b"x" * 65536)
        stage.close()
    assert 'malformed recipient "age1xyz"' in str(raised.value)


@pytest.mark.skipif(shutil.which("age") is None, reason="needs age")
def test_a_sink_that_fails_ends_age_and_its_own_error_comes_back(tmp_path):
    identity = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)

    class Full:
        def write(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            raise AssertionError("not closed after a failure")

    stage = AgeEncryptor([AGE_KEY], Full())
    with pytest.raises(OSError, match="No space left"):
        for _ in range(1000):
            stage.write(b"x" * 65536)
        stage.close()


@pytest.mark.skipif(shutil.which("age") is None, reason="needs age")
def test_the_check_encrypts_as_a_backup_would_and_says_when_the_identity_is_not_a_recipient_s(tmp_path):
    identity, other = tmp_path / "key.txt", tmp_path / "other.txt"
    for path in (identity, other):
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True)
    settings = {**DATABASE, "TGBACKUPD_ENCRYPTION_RECIPIENTS": public.stdout.strip()}

    (matching,) = _encryption(
        load_config(None, {**settings, "TGBACKUPD_ENCRYPTION_IDENTITY_FILE": str(identity)})
    )
    (wrong,) = _encryption(load_config(None, {**settings, "TGBACKUPD_ENCRYPTION_IDENTITY_FILE": str(other)}))

    assert matching.ok and f"the identity {identity} decrypts" in matching.detail
    assert not wrong.ok and f"the identity {other} cannot decrypt" in wrong.detail
