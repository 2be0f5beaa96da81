"""Log lines that name their request: the request id on every record, and JSON lines for log collectors.

The .ini's logging sections go through logging.config.fileConfig (pserve, gunicorn --paste, the CLI), which
builds formatters but no filters: so both formatters here stamp each record themselves, and RequestIdFilter
does the same for dictConfig or handlers made in code. The id comes from a contextvar that
locquota.request_ids sets for the length of a request; a line logged outside any request shows `-`.
"""

import contextvars
import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

OUTSIDE_REQUEST = "-"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("locquota_request_id", default=OUTSIDE_REQUEST)

# What the JSON lines hold when the .ini's formatter section gives no `format`, under the names they carry.
JSON_FIELDS = ("levelname", "name", "message", "request_id")
JSON_NAMES = {"levelname": "level", "name": "logger", "exc_info": "exception", "stack_info": "stack"}


def stamp_request_id(record: logging.LogRecord) -> None:
    """Give the record the id of the request being served (an explicit `extra={"request_id": ...}` stays)."""
    if not hasattr(record, "request_id"):
        record.request_id = REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record it sees, for handlers configured in code or with dictConfig."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drop it."""
        stamp_request_id(record)
        return True


class Formatter(logging.Formatter):
    """logging.Formatter whose format may use %(request_id)s: `class = locquota.logs.Formatter` in the .ini."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, stamped first."""
        stamp_request_id(record)
        return super().format(record)


class JsonFormatter(LibraryJsonFormatter):
    """One JSON object per line, for log collectors: `class = locquota.logs.JsonFormatter` in the .ini.

    It holds time (UTC, ISO 8601), level, logger, message, request_id (null outside a request), exception
    (the traceback's text) when there is one, and any `extra=` fields (the access log's); a `format` in the
    [formatter_*] section picks other record fields instead of the default ones.
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: str = "%",
        validate: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(
            fmt or list(JSON_FIELDS),
            datefmt,
            style,
            validate,
            rename_fields={**JSON_NAMES, **options.pop("rename_fields", {})},
            timestamp=options.pop("timestamp", "time"),
            **options,
        )

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, stamped first."""
        stamp_request_id(record)
        return super().format(record)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Time first, for people reading the lines too; no request is null, not `-`."""
        if log_data.get("request_id") == OUTSIDE_REQUEST:
            log_data["request_id"] = None
        time = log_data.pop("time", None)
        return {"time": time, **log_data} if time is not None else log_data
