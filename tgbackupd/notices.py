"""What the chat is told when something goes wrong, and what happens when even that fails: logged as a
warning, never raised, so a notice can never fail the backup it is about."""

from collections.abc import Callable
from typing import Any

from . import messages
from .errors import Cancelled
from .telegram import BotApi, TelegramError


class ChatNotices:
    def __init__(self, chat_id: str | None, server: str, text: Callable[[BaseException | str], str]) -> None:
        """`text` makes an error fit for the log (secrets scrubbed)."""
        self._chat_id = chat_id
        self._server = server
        self._text = text

    def failure(self, bot: BotApi | None, database: str, reason: str, bound: Any, retry: bool = True) -> None:
        """A backup of `database` (as described to people) failed because of `reason`."""
        self.send(
            bot, messages.failure_notice(database=database, server=self._server, reason=reason), bound, retry
        )

    def problem(self, bot: BotApi | None, problem: str, bound: Any) -> None:
        """A problem found outside a backup (at start, say): one attempt, Telegram may be down too."""
        self.send(bot, messages.problem_notice(server=self._server, problem=problem), bound, retry=False)

    def send(self, bot: BotApi | None, text: str, bound: Any, retry: bool = True) -> None:
        if bot is None or self._chat_id is None:
            return
        try:
            bot.send_message(self._chat_id, text, retry=retry)
        except (TelegramError, Cancelled) as error:
            bound.warning("Could not tell the Telegram chat", chat_id=self._chat_id, error=self._text(error))
