import dataclasses
import hashlib
import json
import re

import pytest

from tgbackupd.manifest import (
    PART_FILE,
    Manifest,
    ManifestError,
    ManifestRef,
    is_backup_name,
    manifest_name,
    part_name,
    plan_parts,
)
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


NAME = "shop_backup_20251203_030000.sql.gz"


def manifest() -> Manifest:
    return Manifest(
        name=NAME,
        database="shop",
        host="shop on db",
        server="web1",
        created_at="2025-12-03T03:00:00+00:00",
        size_bytes=23,
        sha256="f" * 64,
        parts=plan_parts(NAME, [(10, "a" * 64), (10, "b" * 64), (3, "c" * 64)]),
        previous=ManifestRef("shop_backup_20251202_030000.sql.gz", 41, "file-41"),
    )


def test_numbers_are_as_wide_as_the_count_so_the_names_sort_in_the_order_cat_must_join_them():
    for count, first in [(2, "001"), (999, "001"), (1000, "0001"), (1200, "0001"), (10000, "00001")]:
        names = [part_name("db.sql.gz", index, count) for index in range(1, count + 1)]
        assert names[0] == f"db.sql.gz.{first}"
        assert sorted(names) == names and len({len(name) for name in names}) == 1


def test_a_manifest_survives_its_round_trip():
    assert Manifest.from_json(manifest().to_json()) == manifest()


@pytest.mark.parametrize("series", ["shop_globals", "globals"])
def test_a_globals_series_may_say_its_dump_is_globals(series):
    name = f"{series}_backup_20251203_030000.sql.gz"
    globals_manifest = dataclasses.replace(
        manifest(), name=name, dump_format="globals", parts=plan_parts(name, [(23, "a" * 64)]), previous=None
    )

    assert Manifest.from_json(globals_manifest.to_json()).dump_format == "globals"


def test_a_manifest_from_0_1_and_one_with_fields_added_later_are_read():
    document = json.loads(manifest().to_json())
    for key in ("dump_format", "compression", "verified"):
        del document[key]  # the oldest manifests had none of these
    document["signature"] = {"algorithm": "hmac-sha256"}  # left to the signature check
    document["parts"][0]["added_later"] = 1
    document["previous"] = {"name": "shop_backup_20251202_030000", "message_id": None, "file_id": "f"}

    parsed = Manifest.from_json(json.dumps(document).encode())

    assert parsed.compression == "gzip" and parsed.dump_format == "plain" and parsed.verified is None
    assert parsed.previous == ManifestRef("shop_backup_20251202_030000", None, "f")  # as pinned ones say


def _set(*path_and_value):
    *path, key, value = path_and_value

    def change(document):
        for step in path:
            document = document[step]
        document[key] = value

    return change


def _drop(*path):
    *path, key = path

    def change(document):
        for step in path:
            document = document[step]
        del document[key]

    return change


@pytest.mark.parametrize(
    "change, expected",
    [
        (_set("format", "other"), "not a tgbackupd manifest"),
        (_set("version", 99), "manifest version 99"),
        (lambda d: d["parts"].pop(1), "not numbered 1, 2, 3"),
        (_set("size_bytes", 24), "do not add up"),
        (_drop("sha256"), 'incomplete: it has no "sha256"'),
        (_set("size_bytes", "23"), '"size_bytes" is "23", not a whole number from 0 to'),
        (_set("size_bytes", True), '"size_bytes" is true, not a whole number'),
        (_set("size_bytes", -1), '"size_bytes" is -1, not a whole number from 0'),
        (_set("size_bytes", 23.0), '"size_bytes" is 23.0, not a whole number'),
        (_set("size_bytes", 2**60), "not a whole number from 0 to 9007199254740992"),
        (_set("sha256", "F" * 64), '"sha256" is "FFFF'),
        (_set("sha256", "f" * 63), "64 lowercase hexadecimal digits"),
        (_set("sha256", None), '"sha256" is null, not a SHA-256'),
        (_set("database", 5), '"database" is 5, not text'),
        (_set("host", ""), '"host" is "", not text'),
        (_set("server", "web\x1b[2J"), '"server" is "web\\u001b[2J", not text of 1 to 1000 printable'),
        (_set("database", "x" * 1001), '"database" is "xxx'),
        (_set("created_at", "yesterday"), '"created_at" is "yesterday", not a date and time'),
        (_set("compression", "lz4"), '"compression" is "lz4", not one of gzip, zstd'),
        (_set("compression", "zstd"), '"compression" is zstd, but shop_backup_20251203_030000.sql.gz is not'),
        (_set("dump_format", "directory"), '"dump_format" is "directory", not one of plain, custom'),
        (
            _set("dump_format", "custom"),
            '"dump_format" is custom, but shop_backup_20251203_030000.sql.gz is not',
        ),
        (
            _set("dump_format", "globals"),
            '"dump_format" is globals, but shop_backup_20251203_030000.sql.gz is not a globals backup',
        ),
        (_set("verified", "yes"), '"verified" is "yes", not true, false or null'),
        (_set("parts", []), '"parts" is [], not a list of 1 to 100000 items'),
        (_set("parts", {"1": {}}), "not a list of 1 to 100000 items"),
        (_set("parts", 1, "not a part"), 'part 2 of the manifest is "not a part", not a JSON object'),
        (_set("parts", 0, "index", "1"), 'part 1 of the manifest\'s "index" is "1", not a whole number'),
        (_set("parts", 0, "offset", 1), "part 1 of the manifest starts at byte 1, not at 0"),
        (_set("parts", 1, "offset", 0), "part 2 of the manifest starts at byte 0, not at 10"),
        (_set("parts", 2, "size_bytes", -3), 'part 3 of the manifest\'s "size_bytes" is -3'),
        (_set("parts", 0, "sha256", "a" * 65), 'part 1 of the manifest\'s "sha256"'),
        (_set("parts", 0, "message_id", "7"), '"message_id" is "7", not a whole number from 1'),
        (_set("parts", 0, "message_id", 0), '"message_id" is 0, not a whole number from 1'),
        (_set("parts", 0, "file_id", 7), '"file_id" is 7, not a Telegram file id'),
        (_set("parts", 0, "file_id", "x" * 513), "not a Telegram file id (1 to 512 printable ASCII"),
        (_set("parts", 0, "file_id", "a b"), '"file_id" is "a b", not a Telegram file id'),
        (_set("previous", "x"), 'the manifest\'s "previous" is "x", not a JSON object'),
        (_set("previous", "message_id", -4), '"previous"\'s "message_id" is -4'),
        (_set("previous", "name", "../x"), '"previous" has the "name" "../x", which is not a backup'),
    ],
)
def test_a_damaged_manifest_says_what_is_wrong(change, expected):
    document = json.loads(manifest().to_json())
    change(document)
    with pytest.raises(ManifestError) as raised:
        Manifest.from_json(json.dumps(document).encode())
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    "name",
    [
        "../../root/.bashrc",
        "/etc/cron.d/x",
        "shop_backup_20251203_030000.sql",
        "shop_backup_20251203_030000.sql.gz/../../x",
        "sh/op_backup_20251203_030000.sql.gz",
        "shop_backup_20251303_030000.sql.gz",  # month 13
        "shop_backup_20251203_246000.sql.gz",
        "shop_backup_20251203_030000.manifest.json",
        "_backup_20251203_030000.sql.gz",
        "x" * 201 + "_backup_20251203_030000.sql.gz",
    ],
)
def test_a_backup_name_that_is_not_one_is_refused(name):
    document = json.loads(manifest().to_json())
    document["name"] = name
    with pytest.raises(ManifestError, match=r'"name" is .*, not a backup\'s name'):
        Manifest.from_json(json.dumps(document).encode())


@pytest.mark.parametrize(
    "file_name",
    [
        "../../outside",
        "/etc/cron.d/x",
        "shop_backup_20251203_030000.sql.gz.002",  # another part's name
        "shop_backup_20251203_030000.sql.gz.1",
        "../shop_backup_20251203_030000.sql.gz.001",
        "other_backup_20251203_030000.sql.gz.001",
        "shop_backup_20251203_030000.sql.gz",  # the whole's name, for one of three parts
    ],
)
def test_a_part_name_not_the_one_its_backup_makes_is_refused(file_name):
    document = json.loads(manifest().to_json())
    document["parts"][0]["file_name"] = file_name
    with pytest.raises(ManifestError) as raised:
        Manifest.from_json(json.dumps(document).encode())
    assert "not shop_backup_20251203_030000.sql.gz.001 as the backup's name and its 3 part(s) make it" in str(
        raised.value
    )


def test_part_names_are_those_part_name_makes_whatever_it_makes(monkeypatch):
    from tgbackupd import manifest as module

    made_here = json.loads(manifest().to_json())
    wider = json.loads(manifest().to_json())
    for part in wider["parts"]:
        part["file_name"] = f"{NAME}.{part['index']:04d}"
    monkeypatch.setattr(module, "part_name", lambda name, index, count: f"{name}.{index:04d}")

    assert Manifest.from_json(json.dumps(wider).encode()).parts[0].file_name == f"{NAME}.0001"
    with pytest.raises(ManifestError, match=rf"not {NAME}\.0001 as the backup's name"):
        Manifest.from_json(json.dumps(made_here).encode())


def test_json_nested_deeper_than_python_recurses_is_a_manifest_error_not_a_crash():
    with pytest.raises(ManifestError, match="not JSON"):
        Manifest.from_json(b"[" * 100_000 + b"]" * 100_000)


def test_more_parts_than_the_bound_are_refused_before_each_is_read():
    document = json.loads(manifest().to_json())
    document["parts"] = [None] * 100_001
    with pytest.raises(ManifestError, match="not a list of 1 to 100000 items"):
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


def test_a_custom_format_backups_manifest_says_so_and_survives_its_round_trip():
    name = "shop_backup_20251203_030000.dump.zst"
    custom = dataclasses.replace(
        manifest(),
        name=name,
        parts=plan_parts(name, [(10, "a" * 64), (10, "b" * 64), (3, "c" * 64)]),
        dump_format="custom",
        compression="zstd",
    )
    assert Manifest.from_json(custom.to_json()) == custom
    assert custom.file_name == "shop_backup_20251203_030000.manifest.json"
    assert is_backup_name("shop_backup_20251203_030000.dump.gz")
    assert PART_FILE.match("shop_backup_20251203_030000.dump.gz.001")
    mismatched = json.loads(custom.to_json())
    mismatched["dump_format"] = "plain"
    with pytest.raises(
        ManifestError, match=re.escape('"dump_format" is plain, but shop_backup_20251203_030000.dump.zst')
    ):
        Manifest.from_json(json.dumps(mismatched).encode())
