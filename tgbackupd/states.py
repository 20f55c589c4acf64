"""The fixed sets of words that the state store, status replies and logs share. They are StrEnums, so
they read and serialize as the plain strings that `status --json` and the logs have always carried."""

from enum import StrEnum


class DeliveryState(StrEnum):
    """Where a backup stands with Telegram."""

    SENT = "sent"  # its parts and manifest are in the chat
    PENDING = "pending"  # waiting in the outbox, sent again later
    LOCAL_ONLY = "local_only"  # Telegram is not configured
    LOST = "lost"  # it can no longer be sent (its file went before it was)
    NOT_ATTEMPTED = "not_attempted"  # the backup failed before there was anything to send


class Trigger(StrEnum):
    """What started a job."""

    SCHEDULED = "scheduled"
    CATCH_UP = "catch-up"
    MANUAL = "manual"
    REDELIVERY = "redelivery"  # the job that sends backups waiting in the outbox
    DRILL = "drill"  # a restore drill from the chat (verify.schedule, `tgbackupctl drill`)
