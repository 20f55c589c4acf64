from pathlib import Path

import pytest

from tgbackupd.config import (
    DEFAULT_API_URL,
    KEYS,
    effective_config,
    load_client_config,
    load_config,
    secrets_in_environment,
)
from tgbackupd.errors import ConfigError

TOKEN = "123456789:fake-token-for-tests-only"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def problems(tmp_path: Path, text: str = "", **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), environ)
    assert raised.value.exit_code == 78
    return raised.value.problems


def test_the_original_env_names_alone_make_a_complete_configuration(tmp_path):
    config = load_config(
        write(tmp_path, ""),
        {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_CHAT_ID": "-100123456789",
            "BACKUP_ENABLED": "true",
            "BACKUP_HOUR": "3",
            "DATABASE_URL": "postgresql://app:secret@localhost:5432/bunyodkor",
        },
    )
    assert config.telegram.configured and config.telegram.chat_id == "-100123456789"
    assert config.telegram.api_url == DEFAULT_API_URL and config.telegram.max_upload_mb == 50
    assert config.backup.enabled and config.backup.hour == 3 and config.backup.minute == 0
    assert config.backup.keep == 7 and config.backup.prefix == "bunyodkor"
    assert config.database.name == "bunyodkor" and config.database.password == "secret"
    assert config.backup.directory == Path("/var/lib/tgbackupd/backups")
    assert config.daemon.socket == Path("/run/tgbackupd/control.sock")
    assert {TOKEN, "secret"} <= set(config.secrets())


def test_inline_comments_copied_from_the_original_env_example_are_accepted(tmp_path):
    config = load_config(
        write(tmp_path, ""),
        {
            "DATABASE_URL": "postgresql://localhost/db",
            "BACKUP_HOUR": "3  # Hour of day to run backup (0-23, default is 3 AM)",
            "BACKUP_ENABLED": "true  # on",
        },
    )
    assert config.backup.hour == 3 and config.backup.enabled


def test_environment_wins_over_the_file_and_the_tgbackupd_name_over_the_legacy_one(tmp_path):
    path = write(tmp_path, '[backup]\nhour = 5\nkeep = 2\n[database]\nname = "shop"\n')
    config = load_config(path, {"BACKUP_HOUR": "6", "TGBACKUPD_BACKUP_HOUR": "7"})
    assert config.backup.hour == 7 and config.backup.keep == 2
    assert config.sources["backup.hour"] == "environment variable TGBACKUPD_BACKUP_HOUR"
    assert config.sources["backup.keep"] == path


def test_each_problem_names_the_key_where_it_came_from_and_what_is_expected(tmp_path):
    found = problems(
        tmp_path,
        '[backup]\nhour = 24\nkeep = "seven"\nkep = 3\n[telegram]\nchat_id = "my chat"\n',
        DATABASE_URL="postgresql://localhost/db",
        BACKUP_ENABLED="maybe",
    )
    path = str(tmp_path / "config.toml")
    assert f"backup.hour = 24 (from {path}): expected an hour from 0 to 23, got 24" in found
    assert any(
        p.startswith(f"backup.keep = 'seven' (from {path}): expected a number of backups") for p in found
    )
    assert f"{path}: unknown key backup.kep (did you mean keep?)" in found
    assert any(p.startswith("telegram.chat_id = 'my chat'") and "@channelname" in p for p in found)
    assert any(
        p.startswith("backup.enabled = 'maybe' (from environment variable BACKUP_ENABLED)") for p in found
    )
    assert len(found) == 5


def test_hour_24_from_the_environment_is_refused(tmp_path):
    (problem,) = problems(tmp_path, DATABASE_URL="postgresql://localhost/db", BACKUP_HOUR="24")
    assert (
        problem
        == "backup.hour = '24' (from environment variable BACKUP_HOUR): expected an hour from 0 to 23, got 24"
    )


@pytest.mark.parametrize(
    "chat_id, expected",
    [
        ("-100123456789", "-100123456789"),
        ("123456789", "123456789"),
        ("@backup_channel", "@backup_channel"),
    ],
)
def test_chat_ids_are_integers_or_channel_names(tmp_path, chat_id, expected):
    config = load_config(
        write(tmp_path, ""), {"DATABASE_URL": "postgresql://h/db", "TELEGRAM_CHAT_ID": chat_id}
    )
    assert config.telegram.chat_id == expected


def test_a_chat_id_may_be_a_toml_integer(tmp_path):
    config = load_config(
        write(tmp_path, '[telegram]\nchat_id = -100123456789\n[database]\nname = "db"\n'), {}
    )
    assert config.telegram.chat_id == "-100123456789"


def test_a_malformed_token_is_refused_without_being_echoed(tmp_path):
    (problem,) = problems(tmp_path, DATABASE_URL="postgresql://h/db", TELEGRAM_BOT_TOKEN="oops-my-password")
    assert "TELEGRAM_BOT_TOKEN" in problem and "oops-my-password" not in problem


def test_unknown_sections_and_tgbackupd_variables_are_named(tmp_path):
    found = problems(
        tmp_path, "[telegarm]\nchat_id = 1\n", DATABASE_URL="postgresql://h/db", TGBACKUPD_BACKUP_KEPP="3"
    )
    assert any("unknown section [telegarm] (did you mean telegram?)" in p for p in found)
    assert "unknown environment variable TGBACKUPD_BACKUP_KEPP (did you mean TGBACKUPD_BACKUP_KEEP?)" in found


def test_invalid_toml_and_a_missing_explicit_file_are_reported(tmp_path):
    assert any("is not valid TOML" in p for p in problems(tmp_path, "[backup\nhour = 3"))
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path / "absent.toml"), {"DATABASE_URL": "postgresql://h/db"})
    assert f"configuration file {tmp_path / 'absent.toml'} does not exist" in raised.value.problems


def test_config_path_comes_from_tgbackupd_config(tmp_path):
    path = write(tmp_path, '[database]\nname = "from_file"\n')
    assert load_config(None, {"TGBACKUPD_CONFIG": path}).database.name == "from_file"


def test_token_comes_from_a_file_and_then_from_the_systemd_credential(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "telegram-bot-token").write_text("987654321:credential-token-fake\n")
    base = {"DATABASE_URL": "postgresql://h/db", "CREDENTIALS_DIRECTORY": str(credentials)}

    from_file = load_config(
        write(tmp_path, ""), {**base, "TGBACKUPD_TELEGRAM_BOT_TOKEN_FILE": str(token_file)}
    )
    from_credential = load_config(write(tmp_path, ""), base)

    assert from_file.telegram.bot_token == TOKEN
    assert from_credential.telegram.bot_token == "987654321:credential-token-fake"
    assert from_credential.telegram.bot_token_source == "systemd credential telegram-bot-token"


def test_an_unreadable_or_garbage_token_file_is_a_clear_problem(tmp_path):
    (missing,) = problems(
        tmp_path, DATABASE_URL="postgresql://h/db", TGBACKUPD_TELEGRAM_BOT_TOKEN_FILE=str(tmp_path / "nope")
    )
    assert f"cannot read the bot token file {tmp_path / 'nope'}: No such file or directory" in missing
    garbage = tmp_path / "garbage"
    garbage.write_text("hunter2 is my password")
    (bad,) = problems(
        tmp_path, DATABASE_URL="postgresql://h/db", TGBACKUPD_TELEGRAM_BOT_TOKEN_FILE=str(garbage)
    )
    assert "does not hold a bot token" in bad and "hunter2" not in bad


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "postgresql://app:p%40ss@db.example:6432/shop?sslmode=require",
            ("shop", "db.example", 6432, "app", "p@ss", (("sslmode", "require"),)),
        ),
        ("postgresql+asyncpg://app:pw@localhost/shop", ("shop", "localhost", None, "app", "pw", ())),
        (
            "postgresql://app@db/shop?password=pw&sslmode=require&passfile=/etc/pgpass",
            ("shop", "db", None, "app", "pw", (("passfile", "/etc/pgpass"), ("sslmode", "require"))),
        ),
        ("postgresql://app:old@db/shop?password=new", ("shop", "db", None, "app", "new", ())),
        ("postgres:///shop?host=/var/run/postgresql", ("shop", "/var/run/postgresql", None, None, None, ())),
    ],
)
def test_database_urls_as_applications_write_them(tmp_path, url, expected):
    database = load_config(write(tmp_path, ""), {"DATABASE_URL": url}).database
    assert (
        database.name,
        database.host,
        database.port,
        database.user,
        database.password,
        database.options,
    ) == expected


def test_pg_variables_override_the_parts_of_the_url(tmp_path):
    database = load_config(
        write(tmp_path, ""),
        {
            "DATABASE_URL": "postgresql://app:pw@localhost/shop",
            "PGHOST": "replica",
            "PGPASSWORD": "other",
        },
    ).database
    assert (database.host, database.password, database.user, database.name) == (
        "replica",
        "other",
        "app",
        "shop",
    )


def test_an_ssl_key_passphrase_in_the_url_is_refused_without_being_echoed(tmp_path):
    (problem,) = problems(tmp_path, DATABASE_URL="postgresql://app@db/shop?sslpassword=k3y-phrase")
    assert "sslpassword" in problem and "PGSERVICEFILE" in problem and "k3y-phrase" not in problem


@pytest.mark.parametrize(
    "query",
    [
        "dbname=postgresql://postgres:INNERPW@db/shop",
        "dbname=shop",
        "service=x&application_name=password%3DINNERPW",
    ],
)
def test_a_connection_string_nested_in_the_url_is_refused_without_being_echoed(tmp_path, query):
    (problem,) = problems(tmp_path, DATABASE_URL=f"postgresql://app@db/shop?{query}")
    assert "hold a connection string of their own" in problem and "INNERPW" not in problem


def test_secrets_include_the_password_as_a_url_spells_it(tmp_path):
    config = load_config(write(tmp_path, ""), {"DATABASE_URL": "postgresql://app:p%40ss%20w@db/shop"})
    assert config.database.password == "p@ss w"
    assert {"p@ss w", "p%40ss%20w", "p%40ss+w"} <= set(config.secrets())


def test_no_configuration_object_shows_a_secret_in_its_repr(tmp_path):
    environment = {"DATABASE_URL": "postgresql://app:pa55-word@db/shop", "TELEGRAM_BOT_TOKEN": TOKEN}
    config = load_config(write(tmp_path, ""), environment)
    client = load_client_config(write(tmp_path, ""), environment)
    for shown in (config, config.telegram, config.database, client, client.database):
        assert "pa55-word" not in repr(shown) and TOKEN not in repr(shown)
    assert "db" in repr(config.database)  # the rest is still there to read


def test_a_bad_url_or_no_database_at_all_is_reported(tmp_path):
    (bad,) = problems(tmp_path, DATABASE_URL="mysql://h/db")
    assert bad.startswith("database.url (from environment variable DATABASE_URL): expected a URL of the form")
    (none,) = problems(tmp_path)
    assert none.startswith("no database to back up: set DATABASE_URL")


def test_systemd_directories_set_the_defaults(tmp_path):
    config = load_config(
        write(tmp_path, ""),
        {
            "DATABASE_URL": "postgresql://h/db",
            "STATE_DIRECTORY": "/var/lib/tgbackupd",
            "RUNTIME_DIRECTORY": "/run/custom",
        },
    )
    assert config.daemon.socket == Path("/run/custom/control.sock")
    assert config.daemon.state_file == Path("/var/lib/tgbackupd/backups/.tgbackupd-state.db")


def test_a_control_group_that_does_not_exist_is_reported(tmp_path):
    (problem,) = problems(
        tmp_path, DATABASE_URL="postgresql://h/db", TGBACKUPD_DAEMON_CONTROL_GROUP="no-such-grp"
    )
    assert "there is no group named 'no-such-grp'" in problem


def test_effective_configuration_redacts_the_secrets(tmp_path):
    config = load_config(
        write(tmp_path, ""), {"DATABASE_URL": "postgresql://app:pw@h/db", "TELEGRAM_BOT_TOKEN": TOKEN}
    )
    effective = effective_config(config)
    assert (
        effective["telegram"]["bot_token"] == "<redacted>"
        and effective["database"]["password"] == "<redacted>"
    )
    assert TOKEN not in repr(effective) and "'pw'" not in repr(effective)


def test_the_example_configuration_is_valid_and_documents_every_key(tmp_path):
    example = Path(__file__).parents[2] / "config.example.toml"
    config = load_config(str(example), {"DATABASE_URL": "postgresql://h/db"})
    uncommented = "\n".join(line.lstrip("# ") for line in example.read_text().splitlines())
    for key in KEYS:
        assert f"\n{key.name} =" in uncommented, f"config.example.toml does not document {key.dotted}"
    assert config.backup.hour == 3 and config.backup.keep == 7


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, ("gzip", 6)),
        ({"TGBACKUPD_BACKUP_COMPRESSION": "zstd"}, ("zstd", 1)),
        ({"TGBACKUPD_BACKUP_COMPRESSION": "ZSTD", "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "19"}, ("zstd", 19)),
        ({"TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "1"}, ("gzip", 1)),
    ],
)
def test_each_format_has_its_own_default_level(tmp_path, environment, expected):
    config = load_config(write(tmp_path, ""), {"DATABASE_URL": "postgresql://h/db", **environment})
    assert (config.backup.compression.name, config.backup.compression_level) == expected


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (
            {"TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "10"},
            "is not a gzip level: gzip goes from 1 (fastest) to 9",
        ),
        ({"TGBACKUPD_BACKUP_COMPRESSION": "lz4"}, "expected one of gzip, zstd, got 'lz4'"),
    ],
)
def test_a_level_or_format_that_does_not_exist_is_refused(tmp_path, environment, expected):
    found = problems(tmp_path, DATABASE_URL="postgresql://h/db", **environment)
    assert any(expected in problem for problem in found), found


def test_the_environments_secrets_are_found_under_every_name_without_a_valid_configuration():
    environment = {
        "TGBACKUPD_DATABASE_URL": "postgresql://app@db/shop?password=in-query",
        "DATABASE_URL": "postgresql://app:in-user-info@db/shop",
        "TGBACKUPD_DATABASE_PASSWORD": "tg-pw",
        "PGPASSWORD": "pg-pw",
        "TGBACKUPD_TELEGRAM_BOT_TOKEN": TOKEN,
        "BACKUP_HOUR": "not even valid",
    }
    found = secrets_in_environment(environment)
    assert {"in-query", "in-user-info", "tg-pw", "pg-pw", TOKEN} <= set(found)
    assert not any("postgresql://" in secret for secret in found)


def test_the_bounds_of_a_backup_default_to_6_hours_and_5_minutes_and_refuse_zero(tmp_path):
    config = load_config(write(tmp_path, ""), {"DATABASE_URL": "postgresql://h/db"})
    assert (config.backup.timeout, config.database.lock_wait_timeout) == (21600, 300)
    assert config.database.maintenance_db == "postgres"
    found = problems(
        tmp_path,
        DATABASE_URL="postgresql://h/db",
        TGBACKUPD_BACKUP_TIMEOUT="0",
        TGBACKUPD_DATABASE_LOCK_WAIT_TIMEOUT="0",
    )
    assert [problem.split(" (from")[0] for problem in found] == [
        "database.lock_wait_timeout = '0'",
        "backup.timeout = '0'",
    ]
    assert all("expected a number of seconds from 1 to 86400, got 0" in problem for problem in found)


def test_a_part_size_above_what_the_public_bot_api_hands_back_is_a_problem_naming_the_fixes(tmp_path):
    found = problems(tmp_path, DATABASE_URL="postgresql://h/shop", TGBACKUPD_TELEGRAM_PART_SIZE_MB="21")
    assert len(found) == 1
    assert found[0].startswith(
        "telegram.part_size_mb = 21 (from environment variable TGBACKUPD_TELEGRAM_PART_SIZE_MB)"
    )
    assert "at most 20 MB" in found[0] and "telegram.api_url" in found[0] and "--local" in found[0]


def test_parts_of_20_mb_are_accepted_on_the_public_bot_api_and_larger_ones_only_self_hosted(tmp_path):
    database = {"DATABASE_URL": "postgresql://h/shop"}
    at_the_limit = load_config(write(tmp_path, "[telegram]\npart_size_mb = 20\n"), database)
    assert at_the_limit.telegram.part_size_bytes == 20 * 1024 * 1024
    assert problems(tmp_path, "[telegram]\npart_size_mb = 21\n", **database)
    self_hosted = load_config(
        write(
            tmp_path,
            '[telegram]\napi_url = "http://127.0.0.1:8081"\nmax_upload_mb = 2000\npart_size_mb = 500\n',
        ),
        database,
    )
    assert self_hosted.telegram.part_size_mb == 500


def test_the_dump_format_and_what_to_dump_come_from_the_file_or_the_environment(tmp_path):
    text = """
[database]
url = "postgresql://h/db"
schemas = ["public", "app_*"]
exclude_tables = ["public.log*"]
pg_dump_args = ["--exclude-table-data=events", "-nPUBLIC2", "--no-password", "--schema-only", "-xTlog"]
[backup]
format = "custom"
compression = "zstd"
"""
    config = load_config(write(tmp_path, text), {"TGBACKUPD_DATABASE_EXCLUDE_SCHEMAS": " audit , tmp,"})
    database = config.database
    assert (config.backup.dump_format, config.backup.suffix) == ("custom", ".dump.zst")
    assert database.schemas == ("public", "app_*") and database.exclude_tables == ("public.log*",)
    assert database.exclude_schemas == ("audit", "tmp") and database.tables == ()
    assert database.pg_dump_args == (
        "--exclude-table-data=events",
        "-nPUBLIC2",
        "--no-password",
        "--schema-only",
        "-xTlog",
    )
    effective = effective_config(config)
    assert effective["backup"]["format"] == "custom"
    assert effective["database"]["exclude_schemas"] == ["audit", "tmp"]
    plain = load_config(write(tmp_path, ""), {"DATABASE_URL": "postgresql://h/db"})
    assert (plain.backup.dump_format, plain.backup.suffix, plain.database.schemas) == ("plain", ".sql.gz", ())


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("--file=/tmp/x", "must write to its standard output"),
        ("-f/tmp/x", "must write to its standard output"),
        ("-Oxf", "must write to its standard output"),
        ("--form=directory", "the dump format is backup.format"),
        ("-Fc", "the dump format is backup.format"),
        ("--compress=9", "tgbackupd compresses the dump itself"),
        ("-j4", "directory format"),
        ("--dbname=postgresql://u:pw@h/other", "the database is database.url"),
        ("-hother", "the server is database.url"),
        ("--port=1", "the port is"),
        ("-Upostgres", "the user is"),
        ("--password", "would wait for a password typed in"),
        ("-W", "would wait for a password typed in"),
        ("--create", "in one transaction"),
        ("-c", "fails on an empty database"),
        ("public", "not an option: write each option with its value as one item"),
        ("--", "not an option"),
        ("-", "not an option"),
        ("--exclude-table-data", "needs its value in the same item"),
        ("--section", "needs its value in the same item"),
        ("--sect", "needs its value in the same item"),
        ("--schema", "needs its value in the same item"),
        ("-T", "needs its value in the same item"),
        ("-n", "needs its value in the same item"),
        ("-xN", "needs its value in the same item"),
    ],
)
def test_pg_dump_arguments_that_would_break_the_backup_are_refused_with_the_reason(
    tmp_path, argument, expected
):
    text = f'[database]\nurl = "postgresql://h/db"\npg_dump_args = ["--no-comments", {argument!r}]\n'
    found = problems(tmp_path, text.replace("'", '"'))
    assert any("database.pg_dump_args" in problem and expected in problem for problem in found), found


def test_a_list_key_that_is_not_a_list_of_strings_or_a_format_that_does_not_exist_is_refused(tmp_path):
    found = problems(
        tmp_path,
        '[database]\nurl = "postgresql://h/db"\nschemas = "public"\ntables = [1]\n',
        TGBACKUPD_BACKUP_FORMAT="directory",
    )
    assert any(p.startswith("database.schemas") and "expected a list of strings" in p for p in found), found
    assert any(p.startswith("database.tables") and "expected a list of strings" in p for p in found), found
    assert any("backup.format" in p and "expected one of plain, custom, got 'directory'" in p for p in found)
