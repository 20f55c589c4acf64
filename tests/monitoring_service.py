"""A monitoring service on 127.0.0.1, as healthchecks.io is one: it records each ping (method, path,
body) in the order it came. `hanging` accepts connections and never answers; `refused_url` names a port
where nothing listens."""

import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    body: str


class MonitoringService:
    def __init__(self, hanging: bool = False) -> None:
        self.received: list[Received] = []
        self._hanging = hanging
        self._release = threading.Event()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                if service._hanging:
                    service._release.wait(60)
                    return
                service.received.append(Received(self.command, self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "MonitoringService":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def pings(self) -> list[tuple[str, str]]:
        return [(each.method, each.path) for each in self.received]


def refused_url() -> str:
    """A URL on 127.0.0.1 whose port nobody listens on (taken and let go at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
