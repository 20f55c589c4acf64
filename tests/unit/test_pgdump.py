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
        "--format=plain",
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "--lock-wait-timeout=300000",
        "--dbname=dbname=shop host=db.internal port=6432 user=app sslmode=require application_name=tgbackupd",
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
