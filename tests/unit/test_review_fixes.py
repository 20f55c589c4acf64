"""Findings of the review of the monitoring and packaging work, each held by a test: the metrics file's
temporary file is never one another user planted, two writers never mix their files, a count in the store
that is not one is read as none, a reload whose socket rights fail leaves the old ones, and the source
package holds only what git tracks."""

import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from tgbackupd.control import ControlServer
from tgbackupd.errors import TgbackupdError
from tgbackupd.figures import FAILURES_KEY, gather
from tgbackupd.files import write_atomically
from tgbackupd.metrics import MetricsFile
from tgbackupd.statefile import open_store

REPO = Path(__file__).parents[2]


def test_a_link_planted_where_the_temporary_file_was_named_is_never_written_through(tmp_path):
    victim = tmp_path / "backup.sql.gz"
    victim.write_bytes(b"precious")
    victim.chmod(0o600)
    shared = tmp_path / "node-exporter"
    shared.mkdir()
    # The name 0.2.0's first metrics file used, and what a guess at a pattern would try.
    for planted in (".tgbackupd.prom.tmp", ".tgbackupd.prom.0.tmp"):
        (shared / planted).symlink_to(victim)

    write_atomically(shared / "tgbackupd.prom", b"tgbackupd_x 1\n", 0o644)

    assert victim.read_bytes() == b"precious" and victim.stat().st_mode & 0o777 == 0o600
    assert not (shared / "tgbackupd.prom").is_symlink()
    assert (shared / "tgbackupd.prom").read_bytes() == b"tgbackupd_x 1\n"


def test_two_writers_at_once_leave_one_whole_file_or_the_other(tmp_path):
    target = tmp_path / "tgbackupd.prom"
    contents = (b"short 1\n", b"a much longer metrics text\n" * 50)
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    done = threading.Event()

    def writer(data: bytes) -> None:
        try:
            for _ in range(150):
                write_atomically(target, data, 0o644)
        except BaseException as error:
            errors.append(error)

    def reader() -> None:
        while not done.is_set():
            if target.exists():
                seen.add(target.read_bytes())

    threads = [threading.Thread(target=writer, args=(data,)) for data in contents]
    watching = threading.Thread(target=reader)
    watching.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    watching.join(10)
    assert errors == []
    assert seen <= set(contents) and seen
    assert [name for name in os.listdir(tmp_path) if name != "tgbackupd.prom"] == []


def test_a_failure_count_in_the_store_that_is_no_number_counts_as_none_and_the_metrics_are_written(tmp_path):
    store = open_store(tmp_path / "state.db").store
    store.set_meta(FAILURES_KEY + "shop", "²")
    assert gather(store, ["shop"])["shop"].backup_failures_total == 0
    MetricsFile(tmp_path / "tgbackupd.prom", store, ["shop"])
    assert "tgbackupd_backup_failures_total" in (tmp_path / "tgbackupd.prom").read_text()


def test_socket_rights_that_cannot_be_changed_leave_the_old_group(tmp_path, monkeypatch):
    server = ControlServer(tmp_path / "control.sock", lambda request, peer: {"data": {}}, None)
    server.start()
    try:

        def refuse() -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(server, "_give_rights", refuse)
        with pytest.raises(TgbackupdError, match="cannot change the rights of the control socket"):
            server.change_group(os.getgid())
        assert server._group is None
    finally:
        server.close()


@pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None, reason="needs dpkg-buildpackage")
def test_the_source_package_holds_only_what_git_tracks(tmp_path):
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(checkout)], check=True, timeout=120)
    for tracked in subprocess.run(
        ["git", "diff", "--name-only", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split():  # the work in progress too, so that the test builds what is being changed
        if (REPO / tracked).exists():
            shutil.copy2(REPO / tracked, checkout / tracked)
    (checkout / "config.toml").write_text('[telegram]\nbot_token = "123:fake-token-for-tests-only"\n')
    built = subprocess.run(
        ["bash", "packaging/build-deb.sh", str(tmp_path / "out")],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (source,) = (tmp_path / "out").glob("*.tar.xz")
    with tarfile.open(source) as archive:
        names = [Path(name).name for name in archive.getnames()]
    assert "config.toml" not in names and "build-deb.sh" in names
