"""What the WSGI server cannot bound by itself: how long a client may stay silent in the middle of a request.

gunicorn's gthread workers (deploy/gunicorn.conf.py) keep the worker alive however long a request runs, so an
upload may take hours while its bytes flow. What must not hold a thread is a client that stops sending: a
stalled upload, or a body shorter than its Content-Length. gunicorn hands the app its client socket
(`gunicorn.socket`): a timeout on it makes a read that waits longer than `client_idle_timeout_seconds` for
the next bytes fail, and the body readers turn that into a prompt 400 (incomplete_body, incomplete_upload).
It bounds each wait, never the whole request. A client that went silent is not read from again: its
socket's read side is shut, so gunicorn's closing linger (up to 2 s on its event loop) ends at once.
Other servers (waitress, in development) receive the whole body before calling the app.
"""

import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SilenceBoundInput:
    """wsgi.input whose reads give up after the socket's idle timeout, shutting the client's read side."""

    def __init__(self, body: BinaryIO, client: socket.socket) -> None:
        self._body, self._client = body, client

    def read(self, size: int = -1) -> bytes:
        """Up to size bytes of the body; TimeoutError after the idle timeout without any."""
        return self._guarded(self._body.read, size)

    def readline(self, size: int = -1) -> bytes:
        """One line of the body; TimeoutError after the idle timeout without any byte."""
        return self._guarded(self._body.readline, size)

    def __iter__(self) -> "SilenceBoundInput":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _guarded(self, read: Callable[[int], bytes], size: int) -> bytes:
        try:
            return read(size)
        except TimeoutError:
            with contextlib.suppress(OSError):  # already gone: nothing left to linger on
                self._client.shutdown(socket.SHUT_RD)
            raise


def bound_client_silence(app: WsgiApp, idle_seconds: float) -> WsgiApp:
    """The app, with every read from (and write to) a gunicorn client socket bounded to idle_seconds of silence."""

    def bounded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        client = environ.get("gunicorn.socket")
        if client is not None:
            client.settimeout(idle_seconds)  # gthread sets it back for the next request on this connection
            environ["wsgi.input"] = SilenceBoundInput(environ["wsgi.input"], client)
        return app(environ, start_response)

    return bounded
