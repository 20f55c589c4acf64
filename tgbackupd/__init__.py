"""tgbackupd: nightly PostgreSQL backups delivered to a private Telegram chat."""

__version__ = "0.2.0"
