from tgbackupd import ctl
from tgbackupd.errors import RestoreError


def test_an_error_is_printed_without_any_password_the_command_line_or_environment_carries(
    monkeypatch, capsys
):
    def leaky_restore(args):
        raise RestoreError("psql said: env-pw, tg-pw, p@ss and p%40ss")

    monkeypatch.setattr(ctl, "_restore", leaky_restore)
    monkeypatch.setenv("TGBACKUPD_CONFIG", "/dev/null")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/shop?password=env-pw")
    monkeypatch.setenv("TGBACKUPD_DATABASE_PASSWORD", "tg-pw")

    exit_code = ctl.main(["restore", "backup.sql.gz", "--dbname", "postgresql://app:p%40ss@db/other"])

    assert exit_code == 65
    assert capsys.readouterr().err == (
        "tgbackupctl: psql said: <redacted>, <redacted>, <redacted> and <redacted>\n"
    )
