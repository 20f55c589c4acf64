"""Decompression in bounded pieces: a few kilobytes of input can stand for gigabytes of output (a table of
one repeated row, or a crafted file), and memory must stay flat whatever the ratio."""

import gzip
import zlib

import pytest
import zstandard

from tgbackupd.errors import RestoreError
from tgbackupd.formats import OUTPUT_BYTES
from tgbackupd.restore import CheckedBackup, Piece, read_sql

SIZE = 300 * 1024 * 1024  # of zeros: some 300 KB of gzip, some 10 KB of zstd


def _backup(tmp_path, data: bytes) -> CheckedBackup:
    path = tmp_path / "backup"
    path.write_bytes(data)
    return CheckedBackup("backup", (Piece(path, 0, len(data), "backup", None),), None)


def chunk_sizes(backup: CheckedBackup) -> list[int]:
    """The sizes of the pieces the SQL comes out in."""
    return read_sql(backup, None, lambda chunks: [len(chunk) for chunk in chunks])


def sql_of(backup: CheckedBackup) -> bytes:
    return read_sql(backup, None, b"".join)


def _zeros_gzip() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    return b"".join(compressor.compress(block) for _ in range(SIZE // len(block))) + compressor.flush()


def _zeros_zstd() -> bytes:
    compressor = zstandard.ZstdCompressor(level=19).compressobj()
    block = bytes(1024 * 1024)
    return b"".join(compressor.compress(block) for _ in range(SIZE // len(block))) + compressor.flush()


@pytest.mark.parametrize("make", [_zeros_gzip, _zeros_zstd], ids=["gzip", "zstd"])
def test_a_stream_that_expands_a_thousandfold_comes_out_in_bounded_pieces(tmp_path, make):
    compressed = make()
    assert len(compressed) < SIZE // 500
    total, largest = 0, 0
    for size in chunk_sizes(_backup(tmp_path, compressed)):
        total += size
        largest = max(largest, size)
    assert total == SIZE
    assert largest <= 40 * 1024 * 1024  # zstd's first slice: at most 32 MB; then about OUTPUT_BYTES


def test_members_and_frames_in_a_row_are_all_read_and_a_cut_one_is_refused(tmp_path):
    two_members = gzip.compress(b"one;\n") + gzip.compress(b"two;\n")
    assert sql_of(_backup(tmp_path, two_members)) == b"one;\ntwo;\n"
    frames = zstandard.ZstdCompressor().compress(b"one;\n") + zstandard.ZstdCompressor().compress(b"two;\n")
    assert sql_of(_backup(tmp_path, frames)) == b"one;\ntwo;\n"
    big = zstandard.ZstdCompressor().compress(bytes(range(256)) * 40_000)
    with pytest.raises(RestoreError, match="ends in the middle of its zstd stream"):
        sql_of(_backup(tmp_path, big[: len(big) // 2]))
    assert OUTPUT_BYTES <= 8 * 1024 * 1024
