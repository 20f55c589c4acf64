"""Logging: one JSON object per line on standard error, which journald (or a terminal) takes as it is.

Under journald (JOURNAL_STREAM set) each line starts with its syslog priority, `<3>` for an error,
so that `journalctl -p err` selects by level. requests'/urllib3's own records go through the same
chain, so they come out as JSON too, and every string is scrubbed of the secrets.
"""

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog

from .redaction import scrub

SYSLOG_PRIORITIES = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _scrub_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, list | tuple):
        return [_scrub_value(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: _scrub_value(item, secrets) for key, item in value.items()}
    return value


def _secret_scrubber(secrets: list[str]) -> structlog.types.Processor:
    def scrub_event(logger: Any, method_name: str, event_dict: Any) -> Any:
        return {key: _scrub_value(value, secrets) for key, value in event_dict.items()}

    return scrub_event


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _leading_keys_first(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Put what a person reads first at the start of the line; the context follows."""
    ordered = {key: event_dict[key] for key in _LEADING_KEYS if key in event_dict}
    ordered.update((key, value) for key, value in event_dict.items() if key not in ordered)
    return ordered


class _JournaldPrefixFormatter(structlog.stdlib.ProcessorFormatter):
    """Prefix each line with `<N>`, the priority journald reads from a stream (sd-daemon(3))."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITIES.get(record.levelname, 6)}>{super().format(record)}"


def under_journald(environ: dict[str, str] | os._Environ[str]) -> bool:
    return bool(environ.get("JOURNAL_STREAM"))


def configure_logging(
    level: str, secrets: Iterable[str] = (), stream: TextIO | None = None, journald: bool | None = None
) -> None:
    secret_list = [secret for secret in secrets if secret]
    shared: list[structlog.types.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        _secret_scrubber(secret_list),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    if journald is None:
        journald = under_journald(os.environ)
    formatter_class = _JournaldPrefixFormatter if journald else structlog.stdlib.ProcessorFormatter
    formatter = formatter_class(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _leading_keys_first,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs every request line, and the URL holds the token: keep it to its warnings.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
