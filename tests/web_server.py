"""A real HTTP server on 127.0.0.1 for the http store's tests: the standard library's, in a thread.

It serves DATA at /image, redirects at /hop/<n>, a redirect to another host name at /away, a body without a
Content-Length at /unsized, and 404 elsewhere; every request it saw is in requests_seen.
"""

import http.server
import threading
from collections.abc import Iterator

import pytest

DATA = bytes(range(256)) * 1000  # 256 000 bytes


class WebServer(http.server.ThreadingHTTPServer):
    """Serves DATA at /image, redirects at /hop/<n>, an unsized body at /unsized, 404 elsewhere."""

    daemon_threads = True
    elsewhere = ""  # where /away redirects to (a host the store may not read from)
    requests_seen: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    server: WebServer

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        self.server.requests_seen.append(f"{self.command} {self.path}")
        if self.path == "/image":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            if body:
                self.wfile.write(DATA)
        elif self.path.startswith("/hop/"):
            remaining = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/image" if remaining == 0 else f"/hop/{remaining - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/away":
            self.send_response(301)
            self.send_header("Location", self.server.elsewhere)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/unsized":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(b"no length given")
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads requests_seen instead."""


@pytest.fixture(name="web")
def web_fixture() -> Iterator[WebServer]:
    server = WebServer(("127.0.0.1", 0), Handler)
    server.requests_seen = []
    server.elsewhere = f"http://localhost:{server.server_port}/image"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def base(web: WebServer) -> str:
    return f"http://127.0.0.1:{web.server_port}"
