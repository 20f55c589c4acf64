"""Release 0.1.0, the one in use before the state store, run from its own source (tests/fixtures), so that
what it writes is what people's machines hold, not a file made by hand for a test."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

ARCHIVE = Path(__file__).parent / "fixtures" / "tgbackupd-0.1.0.tar.gz"


def extract(destination: Path) -> Path:
    """Unpack release 0.1.0 under `destination`; return its source tree (holding its `tgbackupd/`)."""
    with tarfile.open(ARCHIVE) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later; Debian 12's 3.11.2 has none
            archive.extractall(destination, filter="data")
        else:
            archive.extractall(destination)  # our own archive, made by git archive
    return destination / "tgbackupd-0.1.0"


def command(tree: Path, module: str, *args: str) -> list[str]:
    """The command line that runs `python -m MODULE ARGS` with 0.1.0's package, not this checkout's."""
    return [
        sys.executable,
        "-c",
        f"import sys, runpy; sys.path.insert(0, {str(tree)!r}); "
        f"sys.argv = [{module!r}, *sys.argv[1:]]; runpy.run_module({module!r}, run_name='__main__')",
        *args,
    ]


# Keys added since 0.1.0, which refuses a TGBACKUPD_* variable it does not know.
NEWER_KEYS = (
    "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE",
    "TGBACKUPD_BACKUP_TIMEOUT",
    "TGBACKUPD_DATABASE_LOCK_WAIT_TIMEOUT",
    "TGBACKUPD_DATABASE_MAINTENANCE_DB",
)


def environment(tree: Path, base: dict[str, str]) -> dict[str, str]:
    known = {name: value for name, value in base.items() if name not in NEWER_KEYS}
    return {**known, "PYTHONPATH": str(tree) + os.pathsep + base.get("PYTHONPATH", "")}


def run(
    tree: Path, base: dict[str, str], *args: str, module: str = "tgbackupd"
) -> subprocess.CompletedProcess[str]:
    """Run 0.1.0's `tgbackupd ARGS` (or `tgbackupd.ctl`) to completion."""
    return subprocess.run(
        command(tree, module, *args),
        env=environment(tree, base),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
