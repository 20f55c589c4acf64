"""Stages a dump's bytes flow through on their way to disk. Each stage writes to the next, so another
(encrypt, split) slots in by wrapping one more; none holds more than one chunk at a time."""

import collections
import concurrent.futures
import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol

import zstandard


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _CompressObject(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Compressor:
    """Compress on the caller's thread through a compress object (zlib's, zstandard's), which lets go
    of the GIL while it works."""

    def __init__(self, compressor: _CompressObject, downstream: Sink) -> None:
        self._compressor = compressor
        self._downstream = downstream

    def write(self, data: bytes) -> None:
        compressed = self._compressor.compress(data)
        if compressed:
            self._downstream.write(compressed)

    def close(self) -> None:
        self._downstream.write(self._compressor.flush())
        self._downstream.close()


def gzip_compressor(level: int, downstream: Sink) -> Compressor:
    """The gzip format, so that `gunzip` and `zcat` read the result."""
    return Compressor(zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS), downstream)


def zstd_compressor(level: int, threads: int, downstream: Sink) -> Compressor:
    """One zstd frame (`zstd -d` reads it); with `threads` above 1, on that many threads of libzstd's."""
    options = zstandard.ZstdCompressor(level=level, threads=threads if threads > 1 else 0)
    return Compressor(options.compressobj(), downstream)


def _gzip_member(block: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(block) + compressor.flush()


class ParallelGzipCompressor:
    """Deflate blocks on several threads (zlib lets go of the GIL while it works), each block its own
    gzip member. Members concatenated are one valid gzip file (RFC 1952) that `gunzip` reads whole, as
    with pigz. At most two blocks per thread are in flight, so memory stays flat."""

    BLOCK_BYTES = 1024 * 1024

    def __init__(self, level: int, threads: int, downstream: Sink) -> None:
        self._level = level
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="deflate")
        self._in_flight: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
        self._limit = 2 * threads
        self._buffer = bytearray()
        self._submitted = False
        self._downstream = downstream

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self.BLOCK_BYTES:
            self._submit(bytes(self._buffer[: self.BLOCK_BYTES]))
            del self._buffer[: self.BLOCK_BYTES]

    def _submit(self, block: bytes) -> None:
        self._in_flight.append(self._pool.submit(_gzip_member, block, self._level))
        self._submitted = True
        while len(self._in_flight) > self._limit:
            self._downstream.write(self._in_flight.popleft().result())

    def close(self) -> None:
        try:
            if self._buffer or not self._submitted:
                self._submit(bytes(self._buffer))
            while self._in_flight:
                self._downstream.write(self._in_flight.popleft().result())
        finally:
            self._pool.shutdown(cancel_futures=True)
        self._downstream.close()


class Count:
    """Count the bytes that pass (the SQL's size, which the shrink warning compares; not hashed, which
    would cost as much CPU as a fast compressor)."""

    def __init__(self, downstream: Sink) -> None:
        self.size = 0
        self._downstream = downstream

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._downstream.write(data)

    def close(self) -> None:
        self._downstream.close()


class Digest:
    """Count and hash the bytes that pass, on their way downstream."""

    def __init__(self, downstream: Sink) -> None:
        self._hash = hashlib.sha256()
        self.size = 0
        self._downstream = downstream

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        self._downstream.write(data)

    def close(self) -> None:
        self._downstream.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class PartSink(Sink, Protocol):
    def end_part(self) -> None:
        """The bytes written so far end a part: make them readable as one (flush, or seal a file)."""


class PartDigests:
    """Hash the stream in parts of `part_size` bytes as it passes, so the parts a backup is sent in are
    known (offset, size, SHA-256) the moment the file is complete, without reading it again. A part is
    finished when the first byte after it arrives: only then is it known not to be the only one (a
    backup of one part keeps its plain name), so `on_part` hears of every part but the last."""

    def __init__(
        self, part_size: int, downstream: PartSink, on_part: Callable[[int, int, str], None] | None = None
    ) -> None:
        self._part_size = part_size
        self._downstream = downstream
        self._on_part = on_part  # (index, size, sha256) of each finished part that is not the last
        self._current = hashlib.sha256()
        self._current_size = 0
        self.parts: list[tuple[int, str]] = []  # (size, sha256) of each finished part

    def write(self, data: bytes) -> None:
        while data:
            if self._current_size == self._part_size:
                self._finish_part()
                self._downstream.end_part()
                if self._on_part is not None:
                    self._on_part(len(self.parts), *self.parts[-1])
            take = self._part_size - self._current_size
            piece, data = data[:take], data[take:]  # no copy unless a part ends inside this chunk
            self._current.update(piece)
            self._downstream.write(piece)
            self._current_size += len(piece)

    def _finish_part(self) -> None:
        self.parts.append((self._current_size, self._current.hexdigest()))
        self._current = hashlib.sha256()
        self._current_size = 0

    def close(self) -> None:
        if self._current_size or not self.parts:
            self._finish_part()
        self._downstream.close()
