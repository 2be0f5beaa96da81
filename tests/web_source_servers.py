"""Real HTTP/1.1 servers on 127.0.0.1 for the web-download fetcher's tests (the standard library's, in a thread).

Routes: /image (DATA, sized), /chunked (DATA, no Content-Length), /gzip (compressed bytes, Content-Encoding gzip),
/short (half of a declared DATA, then the connection closes), /chunked-longer (a chunked DATA that also declares a
Content-Length of 100), /trailing (100 declared bytes, then garbage), /bad-length (two Content-Lengths), /endless
(chunks until the client goes away, at most ENDLESS_CAP bytes), /redirect-endless (a 302 to /image whose body is
as endless), /huge-declared (declares a terabyte), /status/<code>, /to?<quoted URL> (302
there), /loop (302 to itself), /hop/<n> (n redirects, then /image), /stall-headers and /stall-body (hold until the
test sets `release`; no sleeps). Each server counts the connections it accepted, in accept order, and records
every request line.
"""

import gzip
import http.server
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar
from urllib.parse import unquote, urlsplit

import pytest

DATA = bytes(range(256)) * 400  # 102 400 bytes
GZIPPED = gzip.compress(DATA)
ENDLESS_CHUNK = b"x" * 65536
ENDLESS_CAP = 128 << 20  # far more than a test lets a client read, so stopping early is plain to see


class WebSourceServer(http.server.ThreadingHTTPServer):
    """One server; `connections_seen` counts accepted connections, `requests_seen` holds request lines."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections_seen = 0
        self.requests_seen: list[str] = []
        self.release = threading.Event()
        self.endless_sent = 0  # bytes an endless body got into the socket before the client went away
        self.endless_done = threading.Event()

    def verify_request(self, request: object, client_address: object) -> bool:
        # Called in the accepting thread, in accept order: once a later connection was answered, every earlier
        # one is counted here.
        self.connections_seen += 1
        return True

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet about a client hanging up (a refusal, a size limit): what these tests make happen."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def quiet_point(self) -> int:
        """Connections accepted before this call: a request of its own orders it after every earlier connection."""
        with socket.create_connection(("127.0.0.1", self.server_port), timeout=10) as sock:
            sock.sendall(b"GET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while sock.recv(4096):
                pass
        return self.connections_seen - 1


class Handler(http.server.BaseHTTPRequestHandler):
    server: WebSourceServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.requests_seen.append(self.requestline)
        path, query = urlsplit(self.path).path, urlsplit(self.path).query
        route = self.ROUTES.get(path)
        if route is not None:
            route(self, query)
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"" if path.endswith("/204") else b"status body")
        elif path.startswith("/hop/"):
            remaining = int(path.rsplit("/", 1)[1])
            self._redirect("/image" if remaining == 0 else f"/hop/{remaining - 1}")
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, b"", (("Location", location),))

    def _image(self, _query: str) -> None:
        self._send(200, DATA)

    def _gzip(self, _query: str) -> None:
        self._send(200, GZIPPED, (("Content-Encoding", "gzip"),))

    def _chunked(self, _query: str, declared: str | None = None) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        if declared is not None:
            self.send_header("Content-Length", declared)
        self.end_headers()
        for start in range(0, len(DATA), 10000):
            piece = DATA[start : start + 10000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _chunked_longer(self, query: str) -> None:
        self._chunked(query, declared="100")

    def _short(self, _query: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(DATA[: len(DATA) // 2])
        self.close_connection = True

    def _trailing(self, _query: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(DATA[:100] + b"garbage past the declared length")
        self.close_connection = True

    def _bad_length(self, _query: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.send_header("Content-Length", "20")
        self.end_headers()
        self.wfile.write(DATA[:20])

    def _endless(self, _query: str, status: int = 200, location: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Transfer-Encoding", "chunked")
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()
        try:
            while self.server.endless_sent < ENDLESS_CAP and not self.server.release.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(ENDLESS_CHUNK), ENDLESS_CHUNK))
                self.server.endless_sent += len(ENDLESS_CHUNK)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client stopped reading and closed: what the test wants
        self.close_connection = True
        self.server.endless_done.set()

    def _redirect_endless(self, query: str) -> None:
        self._endless(query, status=302, location="/image")

    def _huge_declared(self, _query: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.close_connection = True

    def _to(self, query: str) -> None:
        self._redirect(unquote(query))

    def _loop(self, _query: str) -> None:
        self._redirect("/loop")

    def _stall_headers(self, _query: str) -> None:
        self.server.release.wait()
        self.close_connection = True

    def _stall_body(self, _query: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA[:1000])
        self.wfile.flush()
        self.server.release.wait()
        self.close_connection = True

    ROUTES: ClassVar[dict[str, Callable[["Handler", str], None]]] = {
        "/image": _image,
        "/gzip": _gzip,
        "/chunked": _chunked,
        "/chunked-longer": _chunked_longer,
        "/short": _short,
        "/trailing": _trailing,
        "/bad-length": _bad_length,
        "/endless": _endless,
        "/redirect-endless": _redirect_endless,
        "/huge-declared": _huge_declared,
        "/to": _to,
        "/loop": _loop,
        "/stall-headers": _stall_headers,
        "/stall-body": _stall_body,
    }

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read requests_seen instead."""


@pytest.fixture(name="serve")
def serve_fixture() -> Iterator[Callable[[], WebSourceServer]]:
    """Start as many servers as a test asks for; all are released and stopped at its end."""
    started: list[tuple[WebSourceServer, threading.Thread]] = []

    def start() -> WebSourceServer:
        server = WebSourceServer()
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()
