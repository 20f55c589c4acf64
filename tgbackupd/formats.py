"""The compressed formats a backup can be written in: their file names, levels and how each is read
back. gzip is the default (the original setup guide restores with `gunzip`); zstd keeps up with
pg_dump and makes smaller files. What is compressed is a dump in one of pg_dump's formats, which the
file name says too: `.sql` (plain SQL, for psql) or `.dump` (a custom-format archive, for pg_restore)."""

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import zstandard

from .pipeline import ParallelGzipCompressor, Sink, gzip_compressor, zstd_compressor

# Decompressed output comes in pieces of about this size at most, however well the input compressed: a
# few kilobytes of zstd or gzip can stand for gigabytes of a repeated row (or of a crafted file).
OUTPUT_BYTES = 4 * 1024 * 1024


class Decompressor(Protocol):
    """One compressed stream (a gzip member, a zstd frame); `unused_data` is what follows its end."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decompress `data` (up to the stream's end), in pieces of at most about OUTPUT_BYTES."""
        ...


class GzipMember:
    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def eof(self) -> bool:
        return self._inflate.eof

    @property
    def unused_data(self) -> bytes:
        return self._inflate.unused_data

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            out = self._inflate.decompress(data, OUTPUT_BYTES)
            if out:
                yield out
            data = self._inflate.unconsumed_tail
            if self._inflate.eof or (not data and len(out) < OUTPUT_BYTES):
                return


class ZstdFrame:
    """libzstd's decompress object has no bound on its output, so the input is given in slices sized by
    how much the last one produced: large for ordinary data, tiny for data that expands a thousandfold."""

    _FIRST_SLICE = 1024  # at most some 32 MB of output, zstd's worst case of a kilobyte

    def __init__(self) -> None:
        self._decompress = zstandard.ZstdDecompressor().decompressobj()
        self._slice = self._FIRST_SLICE
        self._unused = b""

    @property
    def eof(self) -> bool:
        return bool(self._decompress.eof)

    @property
    def unused_data(self) -> bytes:
        return self._unused

    def feed(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        while view:
            piece, view = view[: self._slice], view[self._slice :]
            out = self._decompress.decompress(piece.tobytes())
            if out:
                yield out
            self._slice = max(64, min(1024 * 1024, OUTPUT_BYTES * len(piece) // max(len(out), 1)))
            if self._decompress.eof:
                self._unused = self._decompress.unused_data + view.tobytes()
                return


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    magic: bytes
    lowest: int
    highest: int
    default_level: int

    def compressor(self, level: int, threads: int, downstream: Sink) -> Sink:
        if self.name == "zstd":
            return zstd_compressor(level, threads, downstream)
        if threads > 1:
            return ParallelGzipCompressor(level, threads, downstream)
        return gzip_compressor(level, downstream)

    def decompressor(self) -> Decompressor:
        return ZstdFrame() if self.name == "zstd" else GzipMember()


GZIP = Format("gzip", ".gz", b"\x1f\x8b", 1, 9, 6)
# Level 1, from bench/speed.py: it keeps pace with pg_dump beside the server on two cores, where level 3
# (zstd's own default) takes twice the CPU; level 3 is some 10% smaller on ordinary text.
ZSTD = Format("zstd", ".zst", b"\x28\xb5\x2f\xfd", 1, 19, 1)
FORMATS = {GZIP.name: GZIP, ZSTD.name: ZSTD}
# pg_dump's formats a backup may hold, and the ending each puts before the compression's.
DUMP_EXTENSIONS = {"plain": ".sql", "custom": ".dump"}
# age-encrypted backups end in this after the compression's suffix (see encryption.py).
ENCRYPTED_SUFFIX = ".age"
# A backup file name's ending, whatever its formats (a series may change format and stays one series),
# encrypted or not (the same: turning encryption on or off keeps the series).
SUFFIX_PATTERN = r"\.(?:sql|dump)\.(?:gz|zst)(?:\.age)?"
_SUFFIX = re.compile(SUFFIX_PATTERN + "$")


def stem(name: str) -> str:
    """`shop_backup_20251203_030000.sql.zst` → `shop_backup_20251203_030000`."""
    return _SUFFIX.sub("", name)


def backup_suffix(dump_format: str, compression: Format) -> str:
    """The ending of a backup's file name: `.sql.gz`, `.dump.zst`, …"""
    return DUMP_EXTENSIONS[dump_format] + compression.suffix


def dump_format_by_name(name: str) -> str:
    """The dump format a backup holds, from its file name (plain SQL for names that do not say)."""
    ending = name[len(stem(name)) :]
    return next(
        (known for known, extension in DUMP_EXTENSIONS.items() if ending.startswith(extension + ".")), "plain"
    )


def by_magic(head: bytes) -> Format | None:
    """The format a file is in, from its first bytes."""
    return next((known for known in FORMATS.values() if head.startswith(known.magic)), None)


def by_name(name: str) -> Format:
    """The format a backup is in, from its file name (gzip for names that do not say), encrypted or not."""
    name = name.removesuffix(ENCRYPTED_SUFFIX)
    return next((known for known in FORMATS.values() if name.endswith(known.suffix)), GZIP)


def restore_hint(file: str) -> str:
    """The restore steps with nothing but the compression's own tool and psql, or pg_restore for a
    custom-format archive (without owners and privileges, as tgbackupctl restores: the original roles
    may not exist on the new machine)."""
    compression = by_name(file)
    custom = dump_format_by_name(file) == "custom"
    if file.endswith(ENCRYPTED_SUFFIX):  # the identity's file name is the one `age-keygen -o key.txt` makes
        tool = "zstd -d" if compression is ZSTD else "gunzip"  # from a pipe to a pipe
        consumer = "pg_restore --no-owner -d DATABASE" if custom else "psql -d DATABASE"
        return f"age -d -i key.txt {file} | {tool} | {consumer}"
    if custom:
        tool = "zstd -dc" if compression is ZSTD else "gunzip -c"
        return f"{tool} {file} | pg_restore --no-owner -d DATABASE"
    tool = "zstd -d" if compression is ZSTD else "gunzip"
    return f"{tool} {file} && psql -d DATABASE < {file.removesuffix(compression.suffix)}"
