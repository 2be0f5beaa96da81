"""Reading a JSON request body: bounded in size, and only text both databases can store."""

import json

from pyramid.request import Request

from locquota.errors import IncompleteBody, InvalidBody, MalformedJSON, RequestTooLarge


def is_storable_text(text: str) -> bool:
    """Whether both databases can store the text: no NUL (PostgreSQL refuses it) and valid UTF-8."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" from a JSON escape
        return False
    return True


def _check_storable(document: object) -> None:
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and not is_storable_text(item):
            raise InvalidBody("Text may not contain NUL characters or unpaired surrogates.")
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def read_json_body(request: Request, max_bytes: int) -> object:
    """Read and parse a JSON body of bounded size."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestTooLarge(f"The request body is larger than {max_bytes} bytes.")
    if request.is_body_seekable:  # buffered for pyramid_retry: a request run again reads it from the start again
        request.body_file.seek(0)
    try:
        raw = request.body_file.read(max_bytes + 1)
    except OSError as exc:  # WebOb's DisconnectionError: fewer bytes than Content-Length
        raise IncompleteBody("The request body ended before Content-Length bytes arrived.") from exc
    if len(raw) > max_bytes:
        raise RequestTooLarge(f"The request body is larger than {max_bytes} bytes.")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedJSON("The request body is not valid JSON.") from exc
    _check_storable(document)
    return document
