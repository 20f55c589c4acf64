"""The unit file, checked by systemd's own tools."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tgbackupd.config import TOKEN_CREDENTIAL

UNIT = Path(__file__).parents[2] / "systemd" / "tgbackupd.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def installed_daemon() -> str:
    path = shutil.which("tgbackupd") or str(Path(sys.executable).parent / "tgbackupd")
    assert Path(path).exists(), "install the package first (pip install -e '.[test]')"
    return path


def test_unit_verifies_without_a_single_warning(tmp_path):
    # verify insists that ExecStart and ExecReload exist: point them at this machine's installed commands.
    unit = tmp_path / "tgbackupd.service"
    unit.write_text(
        UNIT.read_text()
        .replace("ExecStart=/usr/bin/tgbackupd", f"ExecStart={installed_daemon()}")
        .replace(
            "ExecReload=/usr/bin/tgbackupctl",
            f"ExecReload={Path(installed_daemon()).with_name('tgbackupctl')}",
        )
    )
    completed = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    assert completed.returncode == 0 and completed.stderr == "" and completed.stdout == "", completed.stderr


def test_unit_exposure_is_at_most_1_5():
    completed = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=15", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    exposure = float(
        re.search(r"Overall exposure level for tgbackupd.service: ([0-9.]+)", completed.stdout)[1]
    )
    assert exposure <= 1.5 and completed.returncode == 0, completed.stdout[-2000:]


def test_unit_runs_the_daemon_as_the_daemon_expects():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(re.sub(r"^(\w+)=", r"\1 = ", UNIT.read_text(), flags=re.M))
    service = parser["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["RestartPreventExitStatus"].split() == ["78", "243"] and service["Restart"] == "on-failure"
    assert service["LoadCredential"].startswith(f"{TOKEN_CREDENTIAL}:")
    assert service["ExecStart"] == "/usr/bin/tgbackupd"
    # A reload that waits for its outcome, so that a bad configuration fails `systemctl reload`.
    assert service["ExecReload"] == "/usr/bin/tgbackupctl reload"
