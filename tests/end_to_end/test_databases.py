"""Several databases in one daemon, against the real server and the Bot API stand-in: `[[databases]]`
entries backed up one after the other, one failing without stopping the others, a server's globals, and
every database of a server (`all = true`)."""

import json
import uuid

from tests.conftest import PG_HOST, PG_PORT, PG_USER, base_environment, fingerprint, psql, run_tgbackupd
from tests.end_to_end.conftest import events, status
from tgbackupd.statefile import open_store


def write_config(tmp_path, text: str) -> None:
    (tmp_path / "config.toml").write_text(text)


def test_two_databases_and_the_globals_are_delivered_and_one_failing_is_reported_on_its_own(
    tmp_path, make_database, bot_api, daemon_for
):
    first, second = make_database(rows=50), make_database(rows=80)
    missing = f"tgb_missing_{uuid.uuid4().hex[:8]}"
    write_config(
        tmp_path,
        f"""
[[databases]]
name = "{first}"
prefix = "first"
globals = true

[[databases]]
name = "{missing}"

[[databases]]
name = "{second}"
compression = "zstd"
""",
    )
    daemon = daemon_for(first)  # DATABASE_URL gives the host, port and user every entry inherits

    triggered = daemon.ctl("trigger")

    assert triggered.returncode == 1, triggered.stdout + triggered.stderr
    assert "Manual backup failed for 1 of 4 databases" in triggered.stderr
    assert (
        f"{missing}: FAILED" in triggered.stderr
        and f'database "{missing}" does not exist' in triggered.stderr
    )
    assert f"{first}: backed up" in triggered.stderr and f"{second}: backed up" in triggered.stderr
    sent = [
        document.file_name for document in bot_api.documents() if not document.file_name.endswith(".json")
    ]
    assert [name.split("_backup_")[0] for name in sent] == ["first", "first_globals", second]
    assert sent[1].endswith(".sql.gz") and sent[2].endswith(".sql.zst")
    captions = {d.file_name: d.fields.get("caption", "") for d in bot_api.documents()}
    assert f"Database: {first} on " in captions[sent[0]] and f"Database: {second} on " in captions[sent[2]]
    assert "Database: globals (roles, tablespaces) of " in captions[sent[1]]
    globals_sql = next(d for d in bot_api.documents() if d.file_name == sent[1]).content
    assert globals_sql is not None and len(globals_sql) > 0
    notices = [message.fields["text"] for message in bot_api.messages()]
    assert len(notices) == 1 and missing in notices[0], notices

    data = status(daemon)
    assert list(data["databases"]) == ["first", "first_globals", missing, second]
    assert data["databases"][missing]["last_backup"]["error"]
    assert data["databases"]["first"]["last_backup"]["delivery"] == "sent"
    assert data["databases"]["first_globals"]["database"].startswith("globals (roles, tablespaces) of ")
    assert all(each["next_run"] for each in data["databases"].values())
    assert data["backups_stored"] == 3  # each database's series, in the one directory
    assert data["last_backup"]["file"] == sent[2] and data["database"].startswith(f"{first} on ")
    shown = daemon.ctl("status").stdout
    assert f"  {missing} ({missing} on " in shown and "last: FAILED" in shown and f"  {second} (" in shown
    failures = [event for event in events(daemon.log_text()) if event["event"] == "Backup routine failed"]
    assert [event["database"] for event in failures] == [missing]
    listed = daemon.ctl("list").stdout
    assert "DATABASE" in listed and second in listed.split(sent[2])[1].splitlines()[0]

    target = make_database(empty=True)
    for where in (("latest",), ("--from-telegram", "latest")):
        ambiguous = run_tgbackupd(
            daemon.environment, "restore", *where, "--dbname", target, module="tgbackupd.ctl"
        )
        assert ambiguous.returncode == 78 and "--database NAME" in ambiguous.stderr, ambiguous.stderr
    restored = run_tgbackupd(
        daemon.environment,
        "restore",
        "latest",
        "--database",
        "first",
        "--dbname",
        target,
        module="tgbackupd.ctl",
    )
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(first)

    only = daemon.ctl("trigger", second, "--json")
    assert only.returncode == 0, only.stderr
    assert json.loads(only.stdout)["data"]["backup"]["database"] == second
    unknown = daemon.ctl("trigger", "no_such_database")
    assert unknown.returncode == 64 and "no database named 'no_such_database'" in unknown.stderr


def test_the_globals_restore_into_the_same_server_with_already_exists_as_notes(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    role = f"tgb_role_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE ROLE {role} NOLOGIN")
    try:
        write_config(tmp_path, f'[[databases]]\nname = "{source}"\nglobals = true\n')
        daemon = daemon_for(source)
        assert daemon.ctl("trigger").returncode == 0
        globals_name = status(daemon)["last_backup"]["file"]
        assert globals_name.startswith(f"{source}_globals_backup_")
        url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"

        restored = run_tgbackupd(
            daemon.environment, "restore", globals_name, "--dbname", url, module="tgbackupd.ctl"
        )

        assert restored.returncode == 0, restored.stderr
        assert f'role "{role}" already exists' in restored.stderr

        verified, cleaned = (
            run_tgbackupd(daemon.environment, *args, "--dbname", url, module="tgbackupd.ctl")
            for args in (("verify", globals_name), ("restore", globals_name, "--clean"))
        )

        assert verified.returncode == 64 and "not verified in a scratch database" in verified.stderr
        assert cleaned.returncode == 64 and "Leave --clean out" in cleaned.stderr
    finally:
        psql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_all_finds_the_databases_of_the_server_at_run_time_less_those_excluded(
    tmp_path, make_database, bot_api, daemon_for
):
    kept, excluded = make_database(rows=5), make_database(rows=5)
    write_config(tmp_path, f'[[databases]]\nall = true\nprefix = "srv_"\nexclude = ["{excluded}"]\n')
    daemon = daemon_for(kept)
    later = make_database(rows=5)  # made after the daemon started: found when its backup runs

    # One at a time by name: a trigger of all would dump every database of the shared test server.
    for name in (kept, later):
        triggered = daemon.ctl("trigger", name)
        assert triggered.returncode == 0, triggered.stderr
    refused = daemon.ctl("trigger", excluded)

    assert refused.returncode == 64 and f"no database named {excluded!r}" in refused.stderr
    sent = [d.file_name for d in bot_api.documents() if not d.file_name.endswith(".json")]
    assert [name.split("_backup_")[0] for name in sent] == [f"srv_{kept}", f"srv_{later}"]
    assert set(status(daemon)["databases"]) == {f"srv_{kept}", f"srv_{later}"}


def test_list_without_the_daemon_shows_every_databases_backups_not_in_the_catalogue(tmp_path, make_database):
    source = make_database(empty=True)
    write_config(
        tmp_path,
        f'[[databases]]\nname = "{source}"\nprefix = "shop"\nglobals = true\n\n'
        '[[databases]]\nall = true\nprefix = "srv_"\n',
    )
    environment = base_environment(tmp_path, source)
    open_store(tmp_path / "state.db").store.close()  # a catalogue that knows none of them
    backups = tmp_path / "backups"
    backups.mkdir()
    found = [
        "shop_backup_20251201_030000.sql.gz",
        "shop_globals_backup_20251202_030000.sql.gz",
        "srv_crm_backup_20251203_030000.dump.zst.age",
    ]
    for name in [*found, "notes_backup_manual.sql.gz", ".shop_backup_20251204_030000.sql.gz.partial"]:
        (backups / name).write_bytes(b"x")

    listed = run_tgbackupd(environment, "list", "--json", module="tgbackupd.ctl")

    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == found[::-1]


def test_the_first_entry_names_its_files_by_its_own_format_and_compression_not_the_sections(
    tmp_path, make_database
):
    source, target = make_database(rows=20), make_database(empty=True)
    write_config(
        tmp_path,
        f'[backup]\ncompression = "zstd"\n\n[[databases]]\nname = "{source}"\ncompression = "gzip"\n'
        'format = "custom"\n',
    )
    environment = base_environment(tmp_path, source)

    once = run_tgbackupd(environment, "--once")

    assert once.returncode == 0, once.stderr
    (made,) = (path for path in (tmp_path / "backups").glob(f"{source}_backup_*") if path.suffix != ".json")
    assert made.name.endswith(".dump.gz") and made.read_bytes()[:2] == b"\x1f\x8b", made.name
    restored = run_tgbackupd(environment, "restore", made.name, "--dbname", target, module="tgbackupd.ctl")
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(source)
