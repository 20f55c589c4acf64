"""Keep secrets out of every text a person or a log will see."""

import re
from collections.abc import Iterable

REDACTED = "<redacted>"
# A bot token is <bot id>:<secret>; it travels inside Bot API URLs, so texts that quote a URL carry it.
_TOKEN_SHAPE = re.compile(r"[0-9]{3,}:[A-Za-z0-9_-]{10,}")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Return the text with each secret, and anything shaped like a bot token, replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _TOKEN_SHAPE.sub(REDACTED, text)
