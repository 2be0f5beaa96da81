"""The access log: one INFO line per request on `locquota.access`, written when the server closes the body.

So a streamed download's line comes after its last byte, with its real duration, and a body the server
closed before its end (the client went away, a store read failed) is marked `ended early`. The line holds
method, path and query, status, bytes, duration and the caller's project; never a header, never the value
of a query parameter that looks like a credential, never a control character (the path is percent-encoded).
RequestIds (locquota.request_ids) makes one Exchange per request and hands the server a LoggedBody.
"""

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from pyramid.config.views import ViewDeriverInfo
from pyramid.interfaces import IDefaultPermission
from pyramid.request import Request
from pyramid.security import NO_PERMISSION_REQUIRED

from locquota.logs import REQUEST_ID

PROJECT_ENVIRON = "locquota.project_id"  # the caller's project, once a permission check resolved it
# Query parameters whose values are never logged (tokens, signatures of presigned URLs, passwords, keys), but
# for Glance's listing parameters that only look like one.
CREDENTIAL_LIKE = re.compile(r"token|pass|secret|key|sig|auth|credential|session|cookie", re.IGNORECASE)
NOT_CREDENTIALS = frozenset({"sort_key", "sort_dir", "sort"})
MASK = "***"
MAX_LOGGED_TARGET = 2048  # characters of path and query; a longer one is cut
MAX_LOGGED_NAME = 64  # characters of a method or a project id

View = Callable[[object, Request], Any]

access_log = logging.getLogger("locquota.access")


class Exchange:
    """One request's facts for its access line: gathered while it is served, logged once."""

    def __init__(self, environ: dict[str, Any], request_id: str) -> None:
        self.environ, self.request_id = environ, request_id
        self.started = time.perf_counter()
        self.status: int | None = None
        self.sent_bytes = 0
        self.complete = False
        self._logged = False

    def log(self) -> None:
        """The access line, once."""
        if self._logged:
            return
        self._logged = True
        duration_ms = (time.perf_counter() - self.started) * 1000
        method = printable(self.environ.get("REQUEST_METHOD", "-"))
        target = logged_target(self.environ)
        project = self.environ.get(PROJECT_ENVIRON)
        project_id = printable(project) if project else None
        access_log.info(
            "%s %s %s %sB %.1fms project=%s%s",
            method,
            target,
            self.status if self.status is not None else "-",
            self.sent_bytes,
            duration_ms,
            project_id or "-",
            "" if self.complete else " ended early",
            extra={  # separate fields for locquota.logs.JsonFormatter
                "request_id": self.request_id,
                "method": method,
                "path": target,
                "status": self.status,
                "bytes": self.sent_bytes,
                "duration_ms": round(duration_ms, 1),
                "project_id": project_id,
                "complete": self.complete,
            },
        )


class LoggedBody:
    """The response body as the server reads it: in the request's log context, counted, logged at close."""

    def __init__(self, body: Iterable[bytes], exchange: Exchange) -> None:
        self._body, self._exchange = body, exchange
        self._chunks: Iterator[bytes] = iter(body)

    def __iter__(self) -> "LoggedBody":
        return self

    def __next__(self) -> bytes:
        token = REQUEST_ID.set(self._exchange.request_id)
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._exchange.complete = True
            raise
        finally:
            REQUEST_ID.reset(token)
        self._exchange.sent_bytes += len(chunk)
        return chunk

    def close(self) -> None:
        """Close the app's body and log (WSGI servers call this after the last byte, or when the client left)."""
        token = REQUEST_ID.set(self._exchange.request_id)
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._exchange.log()
            REQUEST_ID.reset(token)


def logged_target(environ: dict[str, Any]) -> str:
    """Path and query as they may be logged: percent-encoded, credential-like values masked, capped."""
    raw_path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    target = quote(raw_path.encode("latin-1", "replace"), safe="/-._~!$&'()*+,;=:@")
    query = environ.get("QUERY_STRING", "")
    if query:
        pairs = [
            (name, MASK if CREDENTIAL_LIKE.search(name) and name not in NOT_CREDENTIALS else value)
            for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        target += "?" + urlencode(pairs, quote_via=quote, safe="*/:,")
    return target if len(target) <= MAX_LOGGED_TARGET else target[:MAX_LOGGED_TARGET] + "..."


def printable(text: str) -> str:
    """A short client-given name (a method, a project id) as it may be logged: percent-encoded, capped."""
    return quote(text, safe="-._~:@!$&'()*+,;=/")[:MAX_LOGGED_NAME]


def noting_project(view: View, info: ViewDeriverInfo) -> View:
    """A view deriver: behind a permission, the caller's project goes to the environ for the access line.

    It runs inside Pyramid's secured_view, whose permission check resolved the identity: reading it costs
    no second lookup. Views open to anyone (health, versions, metrics) and error views are left alone.
    """
    permission = info.options.get("permission")
    if permission is None and not info.exception_only:
        permission = info.registry.queryUtility(IDefaultPermission)
    if info.exception_only or permission in (None, NO_PERMISSION_REQUIRED):
        return view

    def view_noting_project(context: object, request: Request) -> Any:
        project = getattr(request.identity, "tenant_id", None)
        if project:
            request.environ[PROJECT_ENVIRON] = project
        return view(context, request)

    return view_noting_project
