"""The metrics file: the figures (figures.py) as a Prometheus text file for node_exporter's textfile
collector, written whole (a temporary file renamed over it) when tgbackupd starts and after each backup,
delivery and restore drill, so that a scrape never reads half a file."""

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import Delivered, Drilled, Finished, Listener
from .figures import SeriesFigures, gather
from .files import write_atomically
from .state import StateError, StateStore

# node_exporter runs as another user: it must be able to read the file.
METRICS_FILE_MODE = 0o644
# Each metric: its name (`tgbackupd_` and the figure's), whether it is a counter, and what it means.
METRICS = (
    ("last_backup_timestamp_seconds", False, "When the last backup of the database started, success or not"),
    ("last_backup_success", False, "1 if the last backup was made and delivered, 0 if it failed"),
    ("last_backup_duration_seconds", False, "How long the last backup took"),
    ("last_success_timestamp_seconds", False, "When the last successful backup started"),
    ("last_success_size_bytes", False, "The size of the last successful backup, as sent (compressed)"),
    ("last_success_parts", False, "How many parts the last successful backup was sent in"),
    ("pending_deliveries", False, "Backups made but not yet in the chat (the outbox)"),
    ("backup_failures_total", True, "Backups that failed, or were made but not delivered"),
    ("last_drill_timestamp_seconds", False, "When the last restore drill from the chat ended"),
    ("last_drill_success", False, "1 if the last restore drill restored the backup, 0 if it failed"),
)

log = structlog.stdlib.get_logger("tgbackupd.metrics")


class _Figures(Collector):
    def __init__(self, figures: dict[str, SeriesFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        for name, counter, meaning in METRICS:
            family: GaugeMetricFamily | CounterMetricFamily
            if counter:
                family = CounterMetricFamily(f"tgbackupd_{name}", meaning, labels=["database"])
            else:
                family = GaugeMetricFamily(f"tgbackupd_{name}", meaning, labels=["database"])
            for prefix, figures in self._figures.items():
                value = getattr(figures, name)
                if value is not None:
                    family.add_metric([prefix], value)
            yield family


def render(figures: dict[str, SeriesFigures]) -> bytes:
    """The figures in Prometheus' text format, by prometheus_client's own writer."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(figures))
    return generate_latest(registry)


class MetricsFile(Listener):
    """Writes the metrics file at once (tgbackupd starting, or its configuration reloaded), then after
    each backup, delivery and restore drill. A file that cannot be written is logged, never fails a
    backup; the next event tries again."""

    name = "metrics file"

    def __init__(self, path: Path, store: StateStore, prefixes: Iterable[str] = ()) -> None:
        self._path = path
        self._store = store
        self._prefixes = tuple(prefixes)
        # One writer at a time in this process (a backup's thread, and the main thread at a reload): the
        # figures written last are the newest.
        self._writing = threading.Lock()
        self.write()

    def write(self) -> None:
        try:
            with self._writing:
                write_atomically(self._path, render(gather(self._store, self._prefixes)), METRICS_FILE_MODE)
        except (StateError, ValueError) as error:  # ValueError: a figure the store holds is not one
            log.error("Metrics file not written: the state file cannot be read", error=str(error))
        except OSError as error:
            log.error(
                "Metrics file not written",
                path=str(self._path),
                error=f"{error.strerror or error}; check that its directory exists and tgbackupd may write "
                "there (monitoring.metrics_file)",
            )

    def succeeded(self, event: Finished) -> None:
        self.write()

    def failed(self, event: Finished) -> None:
        self.write()

    def delivered(self, event: Delivered) -> None:
        self.write()

    def drilled(self, event: Drilled) -> None:
        self.write()
