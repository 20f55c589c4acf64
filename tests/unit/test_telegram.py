"""The Bot API client against every reply the real API gives, with `responses` standing in for it."""

import threading

import pytest
import requests
import responses

from tests.conftest import SteppingClock
from tgbackupd.errors import Cancelled
from tgbackupd.files import FileSlice
from tgbackupd.telegram import (
    BotApi,
    ChatPacer,
    MultipartBody,
    TelegramError,
    TelegramRejected,
    TelegramTooLarge,
    TelegramUnreachable,
)

TOKEN = "123456789:fake-token-for-tests-only"
API = "https://api.telegram.example"
SEND_DOCUMENT = f"{API}/bot{TOKEN}/sendDocument"
SEND_MESSAGE = f"{API}/bot{TOKEN}/sendMessage"
CHAT = "-100123456789"


def ok(message_id: int = 7) -> dict:
    return {"ok": True, "result": {"message_id": message_id, "chat": {"id": int(CHAT)}}}


def failure(code: int, description: str, retry_after: int | None = None) -> dict:
    body = {"ok": False, "error_code": code, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return body


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def bot(waits) -> BotApi:
    return BotApi(API, TOKEN, timeout_s=30, retries=3, wait=lambda delay: waits.append(delay) or False)


@pytest.fixture
def backup_file(tmp_path):
    path = tmp_path / "shop_backup_20251203_030000.sql.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4000)
    return path


@responses.activate
def test_document_is_streamed_as_multipart_with_its_caption(bot, backup_file):
    responses.add(responses.POST, SEND_DOCUMENT, json=ok(42))

    sent = bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "✅ Backup caption")

    assert sent.message_id == 42
    request = responses.calls[0].request
    assert isinstance(request.body, MultipartBody)
    assert int(request.headers["Content-Length"]) == len(request.body)
    body = b"".join(request.body)
    assert len(body) == len(request.body)
    assert f'filename="{backup_file.name}"'.encode() in body
    assert backup_file.read_bytes() in body
    assert "✅ Backup caption".encode() in body and CHAT.encode() in body
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")


@responses.activate
def test_message_is_sent_as_a_form(bot):
    responses.add(responses.POST, SEND_MESSAGE, json=ok(3))
    assert bot.send_message(CHAT, "hello").message_id == 3
    assert "text=hello" in responses.calls[0].request.body


@pytest.mark.parametrize(
    "status, description, expected",
    [
        (401, "Unauthorized", "rejected the bot token (401 Unauthorized)"),
        (404, "Not Found", "the bot token is malformed"),
        (400, "Bad Request: chat not found", f"chat {CHAT} was not found"),
        (
            403,
            "Forbidden: bot is not a member of the channel chat",
            "add the bot to the channel as an administrator",
        ),
        (
            403,
            "Forbidden: bot was kicked from the channel chat",
            "add the bot to the channel as an administrator",
        ),
        (
            400,
            "Bad Request: message caption is too long",
            "refused the request (400 Bad Request: message caption",
        ),
    ],
)
@responses.activate
def test_client_errors_are_not_retried_and_say_what_to_fix(
    bot, backup_file, waits, status, description, expected
):
    responses.add(responses.POST, SEND_DOCUMENT, json=failure(status, description), status=status)

    with pytest.raises(TelegramRejected) as raised:
        bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption")

    assert expected in str(raised.value)
    assert len(responses.calls) == 1 and waits == []
    assert TOKEN not in str(raised.value)


@responses.activate
def test_413_is_its_own_error(bot, backup_file):
    responses.add(responses.POST, SEND_DOCUMENT, json=failure(413, "Request Entity Too Large"), status=413)
    with pytest.raises(TelegramTooLarge, match=r"telegram\.part_size_mb"):
        bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption")


@responses.activate
def test_429_waits_exactly_retry_after_then_succeeds(bot, backup_file, waits):
    responses.add(
        responses.POST, SEND_DOCUMENT, json=failure(429, "Too Many Requests: retry after 17", 17), status=429
    )
    responses.add(responses.POST, SEND_DOCUMENT, json=ok())

    assert bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption").message_id == 7
    assert waits == [17.0]
    assert b"".join(responses.calls[1].request.body).count(backup_file.read_bytes()) == 1


@responses.activate
def test_a_retry_after_longer_than_ten_minutes_gives_up_with_a_reason(bot, backup_file):
    responses.add(
        responses.POST,
        SEND_DOCUMENT,
        json=failure(429, "Too Many Requests: retry after 3600", 3600),
        status=429,
    )
    with pytest.raises(TelegramError, match="asked to wait 3600 s"):
        bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption")


@responses.activate
def test_server_errors_are_retried_with_growing_delays_then_reported(bot, backup_file, waits):
    for _ in range(4):
        responses.add(responses.POST, SEND_DOCUMENT, body="<html>Bad Gateway</html>", status=502)

    with pytest.raises(TelegramError) as raised:
        bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption")

    assert waits == [1.0, 2.0, 4.0]
    assert "failed 4 time(s), last with: 502" in str(raised.value)


@responses.activate
def test_network_errors_are_retried_and_their_text_never_carries_the_token(bot, backup_file, waits):
    url_error = requests.ConnectionError(
        f"HTTPSConnectionPool: Max retries exceeded with url: /bot{TOKEN}/sendDocument"
    )
    for _ in range(3):
        responses.add(responses.POST, SEND_DOCUMENT, body=url_error)
    responses.add(responses.POST, SEND_DOCUMENT, json=ok(9))

    assert bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption").message_id == 9
    assert waits == [1.0, 2.0, 4.0]


@responses.activate
def test_an_unreachable_api_ends_in_one_error_without_the_token(backup_file):
    bot = BotApi(API, TOKEN, timeout_s=30, retries=1, wait=lambda delay: False)
    for _ in range(2):
        responses.add(
            responses.POST, SEND_DOCUMENT, body=requests.ConnectTimeout(f"timed out: {SEND_DOCUMENT}")
        )

    with pytest.raises(TelegramUnreachable) as raised:
        bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption")

    assert "timed out talking to api.telegram.example" in str(raised.value)
    assert raised.value.reason.startswith("timed out talking to api.telegram.example (ConnectTimeout")
    assert TOKEN not in str(raised.value) and TOKEN.split(":")[1] not in str(raised.value)


@responses.activate
def test_a_server_that_answered_last_is_not_called_unreachable(backup_file):
    bot = BotApi(API, TOKEN, timeout_s=30, retries=1, wait=lambda delay: False)
    responses.add(responses.POST, SEND_DOCUMENT, body=requests.ConnectionError("reset"))
    responses.add(responses.POST, SEND_DOCUMENT, status=502, body="Bad Gateway")

    with pytest.raises(TelegramError) as raised:
        bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption")

    assert not isinstance(raised.value, TelegramUnreachable)
    assert "last with: 502" in str(raised.value)


@responses.activate
def test_stopping_interrupts_the_wait_between_retries(backup_file):
    cancel = threading.Event()

    def wait(delay: float) -> bool:
        cancel.set()
        return True

    bot = BotApi(API, TOKEN, timeout_s=30, retries=5, cancel=cancel, wait=wait)
    responses.add(responses.POST, SEND_DOCUMENT, status=500, json=failure(500, "Internal Server Error"))
    with pytest.raises(Cancelled):
        bot.send_document(CHAT, FileSlice.whole(backup_file), backup_file.name, "caption")
    assert len(responses.calls) == 1


def test_stopping_interrupts_an_upload_in_progress(backup_file):
    cancel = threading.Event()
    body = MultipartBody(
        {"chat_id": CHAT},
        "document",
        FileSlice.whole(backup_file),
        backup_file.name,
        "application/gzip",
        cancel,
    )
    blocks = iter(body)
    next(blocks)
    cancel.set()
    with pytest.raises(Cancelled):
        list(blocks)


def test_messages_to_one_chat_go_a_second_apart_and_at_most_20_in_any_minute_another_chat_apart():
    clock, never = SteppingClock(), threading.Event()
    pacer = ChatPacer(20, clock)
    began = clock.monotonic()
    assert pacer.seconds_for(CHAT, 45) == 124  # what status tells before the first is sent
    sent = []
    for _ in range(45):
        clock.wait(never, pacer.reserve(CHAT))
        sent.append(clock.monotonic() - began)
    assert sent == [*range(20), *range(60, 80), *range(120, 125)]
    assert pacer.reserve("-100987654321") == 0  # another chat has limits of its own
    # Now (124 s): 15 more fit in the minute since 65 s, a second apart; the 16th waits for 120 + 60 s.
    assert pacer.seconds_for(CHAT, 15) == 15 and pacer.seconds_for(CHAT, 16) == 180 - 124
