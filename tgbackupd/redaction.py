"""Keep secrets out of every text a person or a log will see."""

import re
import urllib.parse
from collections.abc import Iterable

REDACTED = "<redacted>"
# A bot token is <bot id>:<secret>; it travels inside Bot API URLs, so texts that quote a URL carry it.
_TOKEN_SHAPE = re.compile(r"[0-9]{3,}:[A-Za-z0-9_-]{10,}")
# A URL's path (or query) shorter than this is a name (`/ping`), not a key: scrubbing it would mangle
# other texts.
_SHORTEST_SECRET_PATH = 8


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Return the text with each secret, and anything shaped like a bot token, replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _TOKEN_SHAPE.sub(REDACTED, text)


def url_for_logs(url: str) -> str:
    """A URL that may carry a secret (a healthchecks.io check's UUID in its path, a key in its query, a
    password) as logs and errors may show it: its scheme and host, the rest redacted."""
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    host = parsed.hostname or ""
    return f"{parsed.scheme}://{host}{f':{port}' if port else ''}/{REDACTED}"


def url_secrets(urls: Iterable[str]) -> list[str]:
    """What of these URLs is secret, for scrubbing texts that may quote them (an HTTP library's errors
    do): each URL, its path when it is long enough to be a key (`/ping/<uuid>`), its query, its password."""
    found: list[str] = []
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        found.append(url)
        if len(parsed.path.strip("/")) >= _SHORTEST_SECRET_PATH:
            found.append(parsed.path.rstrip("/"))
        if len(parsed.query) >= _SHORTEST_SECRET_PATH:
            found.append(parsed.query)
        if parsed.password:
            found.append(parsed.password)
    return found
