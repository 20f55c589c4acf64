"""`tgbackupctl check` and `tgbackupd --check`: one line per check, ✓ or ✗ with the fix."""

import socket

from tests.conftest import base_environment, run_tgbackupd, telegram_environment


def test_a_working_setup_passes_every_check_through_the_daemon(
    tmp_path, make_database, bot_api, start_daemon
):
    source = make_database(empty=True)
    daemon = start_daemon(base_environment(tmp_path, source, **telegram_environment(bot_api)))
    daemon.notify.wait_for("READY=1")

    checked = daemon.ctl("check")

    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "✓ configuration",
        "✓ pg_dump",
        "✓ database",
        "✓ pg_dump version",
        "✓ backup directory",
        "✓ state file",
        "✓ bot token",
        "✓ chat",
        "✓ bot rights",
    ]
    assert "bot @backup_test_bot" in checked.stdout and "PostgreSQL 15" in checked.stdout
    assert daemon.stop() == 0


def test_each_problem_is_a_cross_with_its_fix(tmp_path, bot_api):
    bot_api.state.can_pin = False
    environment = base_environment(tmp_path, "no_such_database_here", **telegram_environment(bot_api))

    checked = run_tgbackupd(environment, "--check")

    assert checked.returncode == 1
    assert "✗ database: cannot connect to no_such_database_here on 127.0.0.1:5432" in checked.stdout
    assert "✗ pinning: the bot may not pin the newest manifest" in checked.stdout
    assert "    fix: give it the right to edit messages" in checked.stdout
    assert "✓ bot token" in checked.stdout


def test_a_removed_bot_and_a_wrong_token_are_named(tmp_path, make_database, bot_api):
    source = make_database(empty=True)
    bot_api.state.kicked_from.add("-100123456789")
    kicked = run_tgbackupd(base_environment(tmp_path, source, **telegram_environment(bot_api)), "--check")
    wrong = run_tgbackupd(
        base_environment(
            tmp_path,
            source,
            **{
                **telegram_environment(bot_api),
                "TELEGRAM_BOT_TOKEN": "987654321:another-fake-token-for-tests",
            },
        ),
        "--check",
    )

    assert kicked.returncode == 1 and "✗ chat:" in kicked.stdout and "administrator" in kicked.stdout
    assert wrong.returncode == 1 and "✗ bot token: Telegram rejected the bot token (401" in wrong.stdout
    assert "another-fake-token" not in wrong.stdout


def test_a_bot_api_that_cannot_be_reached_is_a_network_problem_and_a_401_a_wrong_token(
    tmp_path, make_database, bot_api
):
    source = make_database(empty=True)
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        down_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        down = run_tgbackupd(
            base_environment(
                tmp_path, source, **{**telegram_environment(bot_api), "TGBACKUPD_TELEGRAM_API_URL": down_url}
            ),
            "--check",
        )
    rejected = run_tgbackupd(
        base_environment(
            tmp_path,
            source,
            **{**telegram_environment(bot_api), "TELEGRAM_BOT_TOKEN": "987654321:revoked-token-for-tests"},
        ),
        "--check",
    )

    assert down.returncode == 1
    assert f"✗ Bot API: cannot reach the Bot API at {down_url}: could not connect to" in down.stdout
    assert "    fix: check the network, a proxy, or telegram.api_url" in down.stdout
    assert "bot token" not in down.stdout and "BotFather" not in down.stdout
    assert rejected.returncode == 1
    assert "✗ bot token: Telegram rejected the bot token (401" in rejected.stdout
    assert "cannot reach" not in rejected.stdout and "revoked-token" not in rejected.stdout


def test_with_chat_commands_a_webhook_on_the_token_is_a_cross(tmp_path, make_database, bot_api):
    source = make_database(empty=True)
    environment = base_environment(
        tmp_path,
        source,
        **telegram_environment(bot_api),
        TGBACKUPD_TELEGRAM_COMMANDS="true",
        TGBACKUPD_TELEGRAM_ADMIN_USER_IDS="111",
    )
    passed = run_tgbackupd(environment, "--check")
    bot_api.set_webhook("https://example.invalid/hook-with-a-secret")
    failed = run_tgbackupd(environment, "--check")

    assert passed.returncode == 0, passed.stdout
    assert "✓ chat commands: no webhook set" in passed.stdout
    assert failed.returncode == 1
    assert "✗ chat commands: the bot token has a webhook set" in failed.stdout
    assert "deleteWebhook" in failed.stdout and "hook-with-a-secret" not in failed.stdout


def test_with_delete_old_the_right_to_delete_old_messages_is_checked(tmp_path, make_database, bot_api):
    source = make_database(empty=True)
    environment = base_environment(
        tmp_path, source, **telegram_environment(bot_api), TGBACKUPD_TELEGRAM_DELETE_OLD="true"
    )

    allowed = run_tgbackupd(environment, "--check")
    bot_api.state.can_delete_messages = False
    refused = run_tgbackupd(environment, "--check")

    assert allowed.returncode == 0, allowed.stdout
    assert "✓ deleting old backups: the bot may delete messages of any age" in allowed.stdout
    assert refused.returncode == 1
    assert "✗ deleting old backups: telegram.delete_old is on, but without the right" in refused.stdout
    assert "within 48 hours" in refused.stdout and "Delete messages of others" in refused.stdout
