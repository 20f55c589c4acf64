"""The control socket's transport: a Unix stream socket speaking one JSON object per line each way.

What the commands mean lives in commands.py; this module only frames, bounds and authenticates:
a request must arrive within REQUEST_TIMEOUT_S and fit in MAX_REQUEST_BYTES, at most MAX_CLIENTS
are served at once, and each is told who its peer is (SO_PEERCRED), never trusting what it claims.
"""

import contextlib
import errno
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .errors import TgbackupdError

MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 5.0
MAX_CLIENTS = 64
BUSY_RETRY_S = 5.0
_FIRST_BUSY_PAUSE_S = 0.05
_LAST_BUSY_PAUSE_S = 0.5
SOCKET_MODE = 0o660
_ACCEPT_POLL_S = 0.5

log = structlog.stdlib.get_logger("tgbackupd.control")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def error_reply(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


Handler = Callable[[dict[str, Any], Peer], dict[str, Any]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler, group: int | None = None) -> None:
        self.path = path
        self._handler = handler
        self._group = group
        self._listener: socket.socket | None = None
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on the socket path; remove a stale socket left by a crash, never steal a live one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _is_live(self.path):
                raise TgbackupdError(
                    f"another tgbackupd is already listening on {self.path}: stop it first, "
                    "or give this one another daemon.socket"
                )
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            self._give_rights()
            listener.listen(socket.SOMAXCONN)  # a crowd waits to be accepted (or told to come back)
            listener.settimeout(_ACCEPT_POLL_S)
        except OSError as error:
            listener.close()
            raise TgbackupdError(
                f"cannot listen on the control socket {self.path}: {error.strerror or error}"
            ) from None
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()

    def _give_rights(self) -> None:
        """Mode 0660, owned by the control group when there is one (else the daemon's primary group)."""
        os.chmod(self.path, SOCKET_MODE)
        group = os.getegid() if self._group is None else self._group
        if os.stat(self.path).st_gid == group:
            return
        try:
            os.chown(self.path, -1, group)
        except PermissionError:
            log.warning(
                "Cannot give the control socket to the control group: make the tgbackupd user a member of it",
                socket=str(self.path),
                gid=group,
            )

    def change_group(self, group: int | None) -> None:
        """Give the listening socket to another control group (a reload): who may open it follows at once.
        Raise TgbackupdError if the socket's rights cannot be changed."""
        previous, self._group = self._group, group
        try:
            self._give_rights()
        except OSError as error:
            self._group = previous  # the reload fails whole: the running configuration's group stays
            raise TgbackupdError(
                f"cannot change the rights of the control socket {self.path}: {error.strerror or error}"
            ) from None

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("Cannot accept control connections for now", error=error.strerror)
                    self._stopping.wait(_ACCEPT_POLL_S)
                    continue
                raise
            if not self._clients.acquire(blocking=False):
                self._refuse_busy(connection)
                continue
            threading.Thread(
                target=self._serve, args=(connection,), name="control-client", daemon=True
            ).start()

    @staticmethod
    def _refuse_busy(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(1.0)
            with contextlib.suppress(OSError):
                connection.sendall(
                    _encode(
                        error_reply(
                            "too_many_clients",
                            f"tgbackupd is serving {MAX_CLIENTS} clients already; try again shortly",
                        )
                    )
                )

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                connection.settimeout(REQUEST_TIMEOUT_S)
                reply = self._reply_to(connection)
                connection.settimeout(REQUEST_TIMEOUT_S)
                with contextlib.suppress(OSError):
                    connection.sendall(_encode(reply))
        finally:
            self._clients.release()

    def _reply_to(self, connection: socket.socket) -> dict[str, Any]:
        try:
            line = _read_line(connection)
        except TimeoutError:
            return error_reply("timeout", f"no complete request within {REQUEST_TIMEOUT_S:g} s")
        except _TooLarge:
            return error_reply("request_too_large", f"a request must fit in {MAX_REQUEST_BYTES} bytes")
        except OSError as error:
            return error_reply("bad_request", f"could not read the request: {error.strerror or error}")
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return error_reply("bad_request", 'the request is not JSON; send e.g. {"command": "status"}')
        if not isinstance(request, dict):
            return error_reply("bad_request", 'the request must be a JSON object, e.g. {"command": "status"}')
        peer = _peer_of(connection)
        try:
            return self._handler(request, peer)
        except Exception as error:  # one bad request must not take the server down
            log.exception("Control request failed unexpectedly", error=type(error).__name__)
            return error_reply("internal_error", "tgbackupd failed to handle the request; see its log")


class _TooLarge(Exception):
    pass


def _read_line(connection: socket.socket) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = connection.recv(4096)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > MAX_REQUEST_BYTES:
            raise _TooLarge
    return bytes(buffer.split(b"\n", 1)[0])


def _peer_of(connection: socket.socket) -> Peer:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", credentials)
    return Peer(pid, uid, gid)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlClientError(TgbackupdError):
    exit_code = os.EX_UNAVAILABLE


class DaemonNotRunning(ControlClientError):
    exit_code = os.EX_UNAVAILABLE


class ControlPermissionDenied(ControlClientError):
    exit_code = os.EX_NOPERM


class ControlTimeout(ControlClientError):
    exit_code = os.EX_TEMPFAIL


def request(path: Path, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Send a request to the daemon and return its reply. A `too_many_clients` reply (it did not read the
    request) is asked again, after short growing pauses, for up to BUSY_RETRY_S: a burst of clients then
    waits its turn. Raise DaemonNotRunning, ControlPermissionDenied or ControlTimeout, each saying what to
    do."""
    deadline = time.monotonic() + BUSY_RETRY_S
    pause = _FIRST_BUSY_PAUSE_S
    while True:
        answer = _request_once(path, message, timeout)
        error = answer.get("error")
        busy = isinstance(error, dict) and error.get("code") == "too_many_clients"
        if not busy or time.monotonic() + pause > deadline:
            return answer
        time.sleep(pause * random.uniform(1.0, 2.0))  # spread out, so that the crowd does not return at once
        pause = min(pause * 2, _LAST_BUSY_PAUSE_S)


def _request_once(path: Path, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(str(path))
        except FileNotFoundError:
            raise DaemonNotRunning(
                f"tgbackupd is not running: there is no control socket at {path}. Start it with "
                "`systemctl start tgbackupd`, or point --socket at the socket it uses"
            ) from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(
                f"tgbackupd is not running: nothing listens on {path} (it may have stopped or crashed; "
                "see `systemctl status tgbackupd`)"
            ) from None
        except PermissionError:
            raise ControlPermissionDenied(
                f"permission denied on {path}: run this as root, or as a member of tgbackupd's control "
                "group (`usermod -aG tgbackupd $USER`, then log in again)"
            ) from None
        # A busy daemon answers and closes without reading the request: sending may then fail, and
        # reading on to the end meet ECONNRESET, while its one-line answer waits to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.sendall(_encode(message))
        reply = bytearray()
        while b"\n" not in reply and (chunk := client.recv(65536)):
            reply += chunk
    except TimeoutError:
        raise ControlTimeout(f"tgbackupd did not answer within {timeout:g} s on {path}") from None
    except OSError as error:
        raise ControlClientError(
            f"talking to tgbackupd on {path} failed: {error.strerror or error}"
        ) from None
    finally:
        client.close()
    if not reply:
        raise ControlClientError(
            f"tgbackupd closed the connection on {path} without answering: see its log "
            "(journalctl -u tgbackupd)"
        )
    try:
        answer = json.loads(reply)
    except ValueError:
        raise ControlClientError(f"tgbackupd sent a reply that is not JSON on {path}") from None
    if not isinstance(answer, dict):
        raise ControlClientError(f"tgbackupd sent an unexpected reply on {path}")
    return answer
