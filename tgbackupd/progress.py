"""Progress for people: a bar redrawn in place on a terminal, plain lines otherwise (logs, pipes). Notes
may come from another thread (a restore's downloads) while the bar is drawn: each goes on a line of its
own, and the bar is drawn again below it."""

import sys
import threading
import time
from typing import TextIO

from .messages import human_size

_REDRAW_EVERY_S = 0.2


class Progress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._terminal = self._stream.isatty()
        self._label = ""
        self._total = 0
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def note(self, text: str) -> None:
        with self._lock:
            if self._terminal:
                self._stream.write("\r\033[K")
            print(text, file=self._stream, flush=True)
            self._last_draw = 0.0

    def start(self, label: str, total: int) -> None:
        self._label, self._total = label, total
        self._last_draw = 0.0
        if not self._terminal:
            self.note(f"{label} ({human_size(total)})…" if total else f"{label}…")

    def update(self, done: int) -> None:
        if not self._terminal or time.monotonic() - self._last_draw < _REDRAW_EVERY_S:
            return
        self._last_draw = time.monotonic()
        if self._total:
            fraction = min(1.0, done / self._total)
            bar = "#" * int(fraction * 30)
            text = f"\r{self._label} [{bar:<30}] {fraction:4.0%} {human_size(done)}"
        else:
            text = f"\r{self._label} {human_size(done)}"
        with self._lock:
            self._stream.write(text)
            self._stream.flush()

    def finish(self, text: str) -> None:
        self.note(text)
