"""What the chat reads: captions and notices, as plain text (no parse mode, so nothing needs escaping)."""

CAPTION_LIMIT = 1024
MESSAGE_LIMIT = 4096


def human_size(size_bytes: int) -> str:
    """Sizes as the original logs show them: `15.43 MB` (MB of 1024 * 1024 bytes, like the upload limit)."""
    if size_bytes >= 1024 * 1024:
        return f"{size_bytes / (1024 * 1024):.2f} MB"
    if size_bytes >= 1024:
        return f"{size_bytes / 1024:.2f} KB"
    return f"{size_bytes} bytes"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def backup_caption(
    *, file: str, database: str, server: str, size_bytes: int, sha256: str, duration_s: float
) -> str:
    return _clip(
        f"✅ Backup {file}\n"
        f"Database: {database}\n"
        f"Server: {server}\n"
        f"Size: {human_size(size_bytes)} ({size_bytes} bytes)\n"
        f"SHA-256: {sha256}\n"
        f"Took: {duration_s:.1f} s\n"
        f"Restore: gunzip {file} && psql -d DATABASE < {file.removesuffix('.gz')}",
        CAPTION_LIMIT,
    )


def too_large_notice(
    *, file: str, database: str, server: str, path: str, size_bytes: int, limit_mb: int
) -> str:
    return _clip(
        f"⚠️ Backup {file} of {database} was not sent: it is {human_size(size_bytes)}, over the "
        f"{limit_mb} MB upload limit of the Bot API.\n"
        f"It is kept on {server} at {path}.\n"
        "With a self-hosted Bot API server, raise telegram.max_upload_mb (up to 2000).",
        MESSAGE_LIMIT,
    )


def failure_notice(*, database: str, server: str, reason: str) -> str:
    return _clip(
        f"❌ Backup of {database} on {server} failed.\n"
        f"Reason: {reason}\n"
        "Details: journalctl -u tgbackupd -p warning",
        MESSAGE_LIMIT,
    )
