from tgbackupd.config import DatabaseConfig
from tgbackupd.libpq import build_environment, conninfo
from tgbackupd.pgdump import build_command


def database(**overrides) -> DatabaseConfig:
    fields = {
        "name": "shop",
        "host": "db.internal",
        "port": 6432,
        "user": "app",
        "password": "s3cret",
        "options": (("sslmode", "require"),),
        "pg_dump": "/usr/lib/postgresql/16/bin/pg_dump",
    }
    fields.update(overrides)
    return DatabaseConfig(**fields)


def test_command_is_a_plain_sql_dump_without_the_password_that_waits_5_minutes_at_most_for_a_lock():
    assert build_command(database()) == (
        "/usr/lib/postgresql/16/bin/pg_dump",
        "--dbname=dbname=shop host=db.internal port=6432 user=app sslmode=require application_name=tgbackupd",
        "--format=plain",
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "--lock-wait-timeout=300000",
    )


def test_the_lock_wait_timeout_is_configured_in_seconds_and_given_in_milliseconds():
    assert "--lock-wait-timeout=2000" in build_command(database(lock_wait_timeout=2))


def test_conninfo_quotes_values_that_need_it():
    assert conninfo(database(name="my db", host=None, port=None, user="o'brien", options=())) == (
        "dbname='my db' user='o\\'brien' application_name=tgbackupd"
    )


def test_password_goes_in_pgpassword_and_an_inherited_one_is_dropped():
    environment = build_environment(database(), {"PATH": "/usr/bin", "PGPASSWORD": "inherited"})
    assert environment == {"PATH": "/usr/bin", "PGPASSWORD": "s3cret"}
    assert "PGPASSWORD" not in build_environment(database(password=None), {"PGPASSWORD": "inherited"})


def test_a_client_sees_only_what_libpq_needs_of_the_daemons_environment():
    daemon_environment = {
        "PATH": "/usr/bin",
        "HOME": "/var/lib/tgbackupd",
        "LANG": "C.UTF-8",
        "LC_MESSAGES": "de_DE.UTF-8",
        "TZ": "Europe/Berlin",
        "PGSSLMODE": "verify-full",
        "PGPASSFILE": "/etc/tgbackupd/pgpass",
        "KRB5CCNAME": "FILE:/tmp/krb5cc",
        "TELEGRAM_BOT_TOKEN": "123456789:secret-token",
        "DATABASE_URL": "postgresql://app:s3cret@db/shop",
        "TGBACKUPD_TELEGRAM_API_URL": "http://127.0.0.1:8081",
        "CREDENTIALS_DIRECTORY": "/run/credentials/tgbackupd.service",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "AWS_SECRET_ACCESS_KEY": "unrelated",
    }
    assert build_environment(database(), daemon_environment) == {
        "PATH": "/usr/bin",
        "HOME": "/var/lib/tgbackupd",
        "LANG": "C.UTF-8",
        "LC_MESSAGES": "de_DE.UTF-8",
        "TZ": "Europe/Berlin",
        "PGSSLMODE": "verify-full",
        "PGPASSFILE": "/etc/tgbackupd/pgpass",
        "KRB5CCNAME": "FILE:/tmp/krb5cc",
        "PGPASSWORD": "s3cret",
    }


def test_a_custom_format_dump_is_left_uncompressed_for_tgbackupds_own_compression():
    assert build_command(database(), "custom") == (
        "/usr/lib/postgresql/16/bin/pg_dump",
        "--dbname=dbname=shop host=db.internal port=6432 user=app sslmode=require application_name=tgbackupd",
        "--format=custom",
        "--compress=0",
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "--lock-wait-timeout=300000",
    )


def test_the_connection_comes_before_what_to_dump_and_extra_options():
    configured = database(
        schemas=("public", "app_*"),
        exclude_schemas=("audit",),
        tables=("public.orders",),
        exclude_tables=("public.log*", "tmp_*"),
        pg_dump_args=("--exclude-table-data=events", "--no-comments"),
    )
    assert build_command(configured) == (
        "/usr/lib/postgresql/16/bin/pg_dump",
        "--dbname=dbname=shop host=db.internal port=6432 user=app sslmode=require application_name=tgbackupd",
        "--format=plain",
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "--lock-wait-timeout=300000",
        "--schema=public",
        "--schema=app_*",
        "--exclude-schema=audit",
        "--table=public.orders",
        "--exclude-table=public.log*",
        "--exclude-table=tmp_*",
        "--exclude-table-data=events",
        "--no-comments",
    )
