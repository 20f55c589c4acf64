"""The compressed formats a backup can be written in: their file names, levels and how each is read
back. gzip is the default (the original setup guide restores with `gunzip`); zstd keeps up with
pg_dump and makes smaller files."""

import re
import zlib
from dataclasses import dataclass
from typing import Protocol

import zstandard

from .pipeline import ParallelGzipCompressor, Sink, gzip_compressor, zstd_compressor


class Decompressor(Protocol):
    """One compressed stream (a gzip member, a zstd frame); `unused_data` is what follows its end."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


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
        if self.name == "zstd":
            return zstandard.ZstdDecompressor().decompressobj()  # type: ignore[return-value]
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def restore_hint(self, file: str) -> str:
        """The restore steps with nothing but the format's own tool and psql."""
        plain = file.removesuffix(self.suffix.removeprefix(".sql"))
        tool = "zstd -d" if self.name == "zstd" else "gunzip"
        return f"{tool} {file} && psql -d DATABASE < {plain}"


GZIP = Format("gzip", ".sql.gz", b"\x1f\x8b", 1, 9, 6)
# Level 1, from bench/speed.py: it keeps pace with pg_dump beside the server on two cores, where level 3
# (zstd's own default) takes twice the CPU; level 3 is some 10% smaller on ordinary text.
ZSTD = Format("zstd", ".sql.zst", b"\x28\xb5\x2f\xfd", 1, 19, 1)
FORMATS = {GZIP.name: GZIP, ZSTD.name: ZSTD}
# A backup file name's ending, whatever its format (a series may change format and stays one series).
SUFFIX_PATTERN = r"\.sql\.(?:gz|zst)"
_SUFFIX = re.compile(SUFFIX_PATTERN + "$")


def stem(name: str) -> str:
    """`shop_backup_20251203_030000.sql.zst` → `shop_backup_20251203_030000`."""
    return _SUFFIX.sub("", name)


def by_magic(head: bytes) -> Format | None:
    """The format a file is in, from its first bytes."""
    return next((known for known in FORMATS.values() if head.startswith(known.magic)), None)


def by_name(name: str) -> Format:
    """The format a backup is in, from its file name (gzip for names that do not say)."""
    return next((known for known in FORMATS.values() if name.endswith(known.suffix)), GZIP)
