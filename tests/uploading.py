"""Upload requests through the WSGI app with a body that lets a test act between the client's chunks."""

import io
from collections.abc import Callable

from webob import Request


class ObservingBody(io.RawIOBase):
    """A request body that runs a callback before handing out its first byte (a slow client's view).

    on_read, if given, runs before every read with the number of bytes served so far: a test acts there
    while the upload is in flight (advance the clock, run the reaper, stop a server). fail_after: the
    client disconnects once that many bytes are served.
    """

    def __init__(
        self,
        data: bytes,
        on_first_read: Callable[[], None] | None,
        fail_after: int | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self._data, self._on_first_read, self._fail_after = io.BytesIO(data), on_first_read, fail_after
        self._on_read = on_read
        self._served = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._on_first_read is not None:
            self._on_first_read()
            self._on_first_read = None
        if self._on_read is not None:
            self._on_read(self._served)
        if self._fail_after is not None and self._served >= self._fail_after:
            raise ConnectionResetError("client went away")
        chunk = self._data.read(size)
        self._served += len(chunk)
        return chunk


def send_upload(wsgi_app, image_id, headers, body, content_length):
    """PUT body to the image's file; content_length None sends it as a terminated (chunked) input."""
    environ = {"wsgi.input": body, "REQUEST_METHOD": "PUT", "CONTENT_TYPE": "application/octet-stream"}
    if content_length is None:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    request = Request.blank(f"/v2/images/{image_id}/file", environ=environ, headers=headers)
    return request.get_response(wsgi_app)
