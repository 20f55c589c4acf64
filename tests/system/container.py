"""A real systemd as PID 1 in systemd-nspawn over a small Debian root (shared/notes/real-systemd-in-ci.md).

The root is made once with debootstrap and cached as a tarball; each boot unpacks it into a fresh
directory (about a second) so that nothing of one run leaks into the next. The container shares the
host's network, so the service inside reaches the host's PostgreSQL and a Bot API stand-in on 127.0.0.1.
"""

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]  # this checkout
CACHE = Path(os.environ.get("TEST_SYSTEMD_ROOT_CACHE", "/var/cache/tgbackupd-ci"))
# The name changes with PACKAGES, so that a root cached for an older list is not used.
ROOT_TARBALL = CACHE / "bookworm-root-v6.tar.zst"
PACKAGES = (
    "systemd,systemd-sysv,dbus,adduser,python3,python3-prometheus-client,python3-requests,python3-structlog,python3-schedule,"
    "python3-sdnotify,python3-tomli-w,python3-zstandard,postgresql-client,age,"
    # man-db, so that `man tgbackupctl` is tried as an administrator would.
    "man-db,"
    # python3-zstandard needs the virtual python3-cffi-backend-api-*, which debootstrap cannot resolve.
    "python3-cffi-backend"
)
BOOT_TIMEOUT_S = 60
# What building the package, booting a container and installing it take; a test module's `pytestmark`.
NEEDS_CONTAINER = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(
        shutil.which(tool) for tool in ("systemd-nspawn", "nsenter", "dpkg-deb", "dpkg-buildpackage", "zstd")
    )
    or not (ROOT_TARBALL.exists() or shutil.which("debootstrap")),
    reason="needs root, systemd-nspawn, nsenter, dpkg-buildpackage, zstd, debootstrap (or the cached root)",
)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the only registry reachable here)."""
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if source.is_file():
            text = source.read_text()
            match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s", text, re.M
            )
            if match:
                return match[1]
    return "http://deb.debian.org/debian"


def ensure_root_tarball() -> Path:
    """Build the cached Debian root on first use (debootstrap, about a minute)."""
    if ROOT_TARBALL.exists():
        return ROOT_TARBALL
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f"{ROOT_TARBALL.name}.building"  # each version its own: two may be built at once
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            "bookworm",
            str(building),
            debian_mirror(),
        ],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    partial = ROOT_TARBALL.with_suffix(".partial")
    subprocess.run(["tar", "--zstd", "-C", str(building), "-cf", str(partial), "."], check=True, timeout=600)
    partial.rename(ROOT_TARBALL)
    shutil.rmtree(building, ignore_errors=True)
    return ROOT_TARBALL


class Container:
    def __init__(self, workdir: Path, binds: dict[Path, str]) -> None:
        self.root = workdir / "root"
        self.root.mkdir()
        subprocess.run(["tar", "--zstd", "-C", str(self.root), "-xf", str(ensure_root_tarball())], check=True)
        self.console = (workdir / "console.log").open("wb")
        arguments = [
            "systemd-nspawn",
            "-q",
            "-D",
            str(self.root),
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--capability=CAP_BPF",
            "--system-call-filter=bpf",
            *[f"--bind-ro={host}:{inside}" for host, inside in binds.items()],
        ]
        environment = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        self.nspawn = subprocess.Popen(
            arguments, stdout=self.console, stderr=subprocess.STDOUT, env=environment
        )
        self.leader = self._find_leader()
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:  # until systemd answers on its bus and says it has booted
            state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT_S)
            if state.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot: {state.stdout} {state.stderr}")
            time.sleep(0.2)

    def _find_leader(self) -> int:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.1)
        raise RuntimeError("systemd-nspawn started no container")

    def run(
        self, *command: str, check: bool = True, timeout: float = 120, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (as `user`, through runuser, when given)."""
        if user is not None:
            command = ("runuser", "-u", user, "--", *command)
        clean = (
            "env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8",
        )
        completed = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *clean, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"{command} exited {completed.returncode}: {completed.stdout}{completed.stderr}"
            )
        return completed

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.run("sh", "-c", f"umask 077; cat > {path} <<'__END__'\n{text}\n__END__\nchmod {mode:o} {path}")

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.3)

    def shutdown(self) -> None:
        if self.nspawn.poll() is None:
            self.run("systemctl", "poweroff", check=False, timeout=30)
            try:
                self.nspawn.wait(60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        self.console.close()
        shutil.rmtree(self.root, ignore_errors=True)


def build_package(source: Path, directory: Path) -> Path:
    """Build the .deb of the tree at `source` into `directory` with that tree's own
    packaging/build-deb.sh (a release's package with the release's script); return the .deb's path."""
    built = subprocess.run(
        ["bash", str(source / "packaging" / "build-deb.sh"), str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if built.returncode != 0:
        raise AssertionError(f"{source}/packaging/build-deb.sh failed: {built.stderr[-4000:]}")
    return Path(built.stdout.strip().splitlines()[-1])
