import hashlib
import json

import pytest

from tgbackupd.manifest import Manifest, ManifestError, ManifestRef, manifest_name, part_name, plan_parts
from tgbackupd.pipeline import PartDigests


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.part_ends: list[int] = []

    def write(self, data: bytes) -> None:
        self.data += data

    def end_part(self) -> None:
        self.part_ends.append(len(self.data))

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("chunks", [[b"x" * 25], [b"x" * 7] * 3 + [b"x" * 4], [b"x"] * 25])
def test_parts_are_cut_at_the_part_size_however_the_stream_arrives(chunks):
    sink = Collect()
    parts = PartDigests(10, sink)
    for chunk in chunks:
        parts.write(chunk)
    parts.close()
    assert bytes(sink.data) == b"x" * 25 and sink.closed
    assert sink.part_ends == [10, 20]  # the writer learnt where each part ends before the next began
    assert parts.parts == [
        (10, hashlib.sha256(b"x" * 10).hexdigest()),
        (10, hashlib.sha256(b"x" * 10).hexdigest()),
        (5, hashlib.sha256(b"x" * 5).hexdigest()),
    ]


def test_an_exact_multiple_makes_no_empty_last_part_and_an_empty_stream_one_empty_part():
    exact = PartDigests(10, Collect())
    exact.write(b"y" * 20)
    exact.close()
    assert [size for size, _ in exact.parts] == [10, 10]
    empty = PartDigests(10, Collect())
    empty.close()
    assert empty.parts == [(0, hashlib.sha256(b"").hexdigest())]


def test_names_rebuild_with_cat_and_one_part_keeps_the_plain_name():
    assert part_name("db_backup_20251203_030000.sql.gz", 1, 1) == "db_backup_20251203_030000.sql.gz"
    assert part_name("db_backup_20251203_030000.sql.gz", 2, 12) == "db_backup_20251203_030000.sql.gz.002"
    assert manifest_name("db_backup_20251203_030000.sql.gz") == "db_backup_20251203_030000.manifest.json"
    planned = plan_parts("b.sql.gz", [(10, "a"), (10, "b"), (3, "c")])
    assert [(p.index, p.file_name, p.offset, p.size_bytes) for p in planned] == [
        (1, "b.sql.gz.001", 0, 10),
        (2, "b.sql.gz.002", 10, 10),
        (3, "b.sql.gz.003", 20, 3),
    ]


def manifest() -> Manifest:
    return Manifest(
        name="b.sql.gz",
        database="shop",
        host="shop on db",
        server="web1",
        created_at="2025-12-03T03:00:00+00:00",
        size_bytes=23,
        sha256="f" * 64,
        parts=plan_parts("b.sql.gz", [(10, "a"), (10, "b"), (3, "c")]),
        previous=ManifestRef("a.sql.gz", 41, "file-41"),
    )


def test_numbers_are_as_wide_as_the_count_so_the_names_sort_in_the_order_cat_must_join_them():
    for count, first in [(2, "001"), (999, "001"), (1000, "0001"), (1200, "0001"), (10000, "00001")]:
        names = [part_name("db.sql.gz", index, count) for index in range(1, count + 1)]
        assert names[0] == f"db.sql.gz.{first}"
        assert sorted(names) == names and len({len(name) for name in names}) == 1


def test_a_manifest_survives_its_round_trip():
    assert Manifest.from_json(manifest().to_json()) == manifest()


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.update(format="other"), "not a tgbackupd manifest"),
        (lambda d: d.update(version=99), "manifest version 99"),
        (lambda d: d["parts"].pop(1), "not numbered 1, 2, 3"),
        (lambda d: d.update(size_bytes=24), "do not add up"),
        (lambda d: d.pop("sha256"), "incomplete or malformed"),
    ],
)
def test_a_damaged_manifest_says_what_is_wrong(change, expected):
    document = json.loads(manifest().to_json())
    change(document)
    with pytest.raises(ManifestError, match=expected):
        Manifest.from_json(json.dumps(document).encode())


def test_parallel_gzip_writes_members_that_gunzip_reads_as_one_file(tmp_path):
    import gzip
    import os
    import subprocess

    from tgbackupd.pipeline import ParallelGzipCompressor

    payload = os.urandom(300_000) + b"SELECT 1;\n" * 400_000 + os.urandom(10)
    sink = Collect()
    stage = ParallelGzipCompressor(6, 3, sink)
    for offset in range(0, len(payload), 100_000):
        stage.write(payload[offset : offset + 100_000])
    stage.close()
    assert sink.closed and gzip.decompress(bytes(sink.data)) == payload
    assert bytes(sink.data).count(b"\x1f\x8b\x08") >= len(payload) // ParallelGzipCompressor.BLOCK_BYTES
    (tmp_path / "x.sql.gz").write_bytes(bytes(sink.data))
    assert subprocess.run(["gunzip", "-c", str(tmp_path / "x.sql.gz")], capture_output=True).stdout == payload


def test_parallel_gzip_of_nothing_is_still_a_gzip_file():
    import gzip

    from tgbackupd.pipeline import ParallelGzipCompressor

    sink = Collect()
    ParallelGzipCompressor(1, 2, sink).close()
    assert gzip.decompress(bytes(sink.data)) == b""


@pytest.mark.parametrize(("length", "heard"), [(25, [1, 2]), (20, [1]), (10, []), (11, [1])])
def test_a_part_is_handed_on_once_the_next_one_begins_so_never_the_last(length, heard):
    sink = Collect()
    calls = []

    def on_part(index: int, size: int, sha256: str) -> None:
        # Handed on with its bytes written and its end marked, and the next part already begun.
        calls.append(index)
        assert sink.part_ends[-1] == index * 10 and size == 10
        assert sha256 == hashlib.sha256(b"z" * 10).hexdigest()

    parts = PartDigests(10, sink, on_part)
    for _ in range(length):
        parts.write(b"z")
    assert calls == heard  # before close: a part is heard of as soon as one byte of the next arrives
    parts.close()
    assert calls == heard and len(parts.parts) == -(-length // 10)


def test_an_upload_that_fails_locally_never_leaves_the_dump_waiting(tmp_path):
    import threading

    import structlog

    from tgbackupd.delivery import EarlyUploader, Sending
    from tgbackupd.files import FileSlice
    from tgbackupd.telegram import ChatPacer

    class BotThatCannotRead:
        def send_document(self, *args, **kwargs):
            raise FileNotFoundError(2, "No such file or directory")

    uploader = EarlyUploader(
        BotThatCannotRead(),
        "-100123",
        "db.sql.gz",
        "db",
        structlog.get_logger(),
        4,
        Sending(ChatPacer(20)),
        max_waiting=1,
    )
    handed = threading.Thread(
        target=lambda: [
            uploader.part_ready(i, "00", FileSlice(tmp_path / "gone", 0, 1)) for i in (1, 2, 3, 4)
        ]
    )
    handed.start()
    handed.join(5)
    assert not handed.is_alive()  # with a bounded queue and a dead uploader, this would hang
    assert uploader.finish() == {} and "No such file or directory" in (uploader.error or "")
