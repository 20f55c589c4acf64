"""The outside integrations a configuration asks for, as listeners of the backup's events: built at start
(the daemon and `tgbackupd --once`) and again from the new configuration at each reload."""

from .config import Config
from .events import Listener
from .figures import Tally
from .metrics import MetricsFile
from .pings import Pings, configured_series, urls_of
from .state import StateStore


def listeners(config: Config, store: StateStore) -> list[Listener]:
    """Each integration the configuration turns on, in the order they hear an event."""
    found: list[Listener] = [Tally(store)]  # always, and first: status and the metrics read what it keeps
    if config.monitoring.pings or any(target.pings for target in config.databases):
        found.append(Pings(urls_of(config), store, config.secrets(), configured=configured_series(config)))
    if config.monitoring.metrics_file is not None:
        found.append(MetricsFile(config.monitoring.metrics_file, store, config.fixed_prefixes()))
    return found
