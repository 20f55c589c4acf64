"""The outside integrations a configuration asks for, as listeners of the backup's events: built at start
(the daemon and `tgbackupd --once`) and again from the new configuration at each reload."""

from .config import Config
from .events import Listener
from .state import StateStore


def listeners(config: Config, store: StateStore) -> list[Listener]:
    """Each integration the configuration turns on, in the order they hear an event."""
    found: list[Listener] = []
    return found
