"""The read endpoints' queries: GET /v2/images (sorts, filters, paging, as Glance parses them), the backlog's.

Parsed and checked here, before any service runs: a bad query is a LocquotaError that changes nothing.
"""

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyramid.request import Request

from locations.schemas import MAX_INT32, UUID_PATTERN
from locquota.errors import (
    InvalidMarker,
    InvalidQueryParameter,
)
from locquota.json_body import is_storable_text
from locquota.settings import Settings

MAX_FILTER_VALUES = 100
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at")
LIST_FILTERS_WITH_IN = ("name", "status", "owner", "disk_format", "container_format", "id")
# Other image columns Glance's list compares exactly when named as a filter (not as a property), and the
# whole-number ones it also takes as ranges (`min_ram_min`, `virtual_size_max`, ...), with their column's largest value.
TEXT_COLUMN_FILTERS = ("checksum", "os_hash_algo", "os_hash_value")
TIME_COLUMN_FILTERS = ("created_at", "updated_at")  # each with Glance's operators: gte:2024-01-01T00:00:00Z
TIME_OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte")
NUMBER_COLUMN_FILTERS = {"min_ram": MAX_INT32, "min_disk": MAX_INT32, "virtual_size": 2**63 - 1}  # int, int, bigint
VISIBILITIES = ("public", "private", "shared", "community")
MEMBER_STATUSES = ("pending", "accepted", "rejected")


@dataclass(frozen=True, slots=True)
class SortKey:
    """One sort key and its direction."""

    name: str
    descending: bool


@dataclass(frozen=True, slots=True)
class ImageQuery:
    """A validated GET /v2/images query."""

    limit: int
    marker: uuid.UUID | None = None
    sort: tuple[SortKey, ...] = (SortKey("created_at", descending=True),)
    equal_filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    size: int | None = None  # bytes, exactly; the bounds are inclusive; each leaves out images without data
    size_min: int | None = None
    size_max: int | None = None
    protected: bool | None = None
    # (column, one of TIME_OPERATORS, value): the columns of TEXT_, NUMBER_ and TIME_COLUMN_FILTERS
    column_filters: tuple[tuple[str, str, str | int | datetime], ...] = ()
    os_hidden: bool = False
    # None: Glance's default list (own, public and accepted shared images); else the visibilities asked for.
    visibilities: frozenset[str] | None = None
    member_statuses: tuple[str, ...] = ("accepted",)  # of the shared images listed through a membership


def _sort_key(name: str) -> str:
    name = name.strip()
    if name not in SORT_KEYS:
        raise InvalidQueryParameter(f"Invalid sort key. It must be one of: {', '.join(SORT_KEYS)}.")
    return name


def _sort_dir(direction: str) -> bool:
    direction = direction.strip()
    if direction not in ("asc", "desc"):
        raise InvalidQueryParameter("Invalid sort direction: it must be asc or desc.")
    return direction == "desc"


def _sorting(params: dict[str, list[str]]) -> tuple[SortKey, ...]:
    """Both of Glance's syntaxes: sort=name:asc,size:desc, or repeated sort_key/sort_dir."""
    if "sort" in params:
        if "sort_key" in params or "sort_dir" in params:
            raise InvalidQueryParameter("Old and new sorting syntax cannot be combined.")
        keys = []
        for item in ",".join(params.pop("sort")).split(","):
            name, _, direction = item.partition(":")
            keys.append(SortKey(_sort_key(name), _sort_dir(direction or "desc")))
        return tuple(keys)
    names = [_sort_key(name) for name in params.pop("sort_key", [])] or ["created_at"]
    directions = [_sort_dir(direction) for direction in params.pop("sort_dir", [])] or [True]
    if len(directions) == 1:
        directions *= len(names)
    if len(directions) != len(names):
        raise InvalidQueryParameter("Number of sort dirs does not match the number of sort keys.")
    return tuple(SortKey(name, descending) for name, descending in zip(names, directions, strict=True))


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.pop(name, [])
    if len(values) > 1:
        raise InvalidQueryParameter(f"The parameter {name} may be given only once.")
    return values[0] if values else None


def _integer(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not re.fullmatch(r"\d{1,18}", raw.strip()):
        raise InvalidQueryParameter(f"{name} must be a non-negative integer.")
    return int(raw)


MAX_BIGINT = 2**63 - 1  # the size column's largest value, on every database
MAX_BIGINT_DIGITS = len(str(MAX_BIGINT))


def _size_filter(name: str, raw: str | None) -> int | None:
    """A size in bytes to filter on: digits, at most the size column's largest value (a bigint); 400 otherwise.

    Glance takes size_min/size_max with Python's int() (400 "Unable to filter on a range with a non-numeric
    value.") and size as a column equality. Past a bigint, PostgreSQL fails the statement (bigint out of range)
    and SQLite cannot bind the value: both would be 500s.
    """
    if raw is None:
        return None
    digits = raw.strip()
    if not (digits.isascii() and digits.isdigit()):
        if re.fullmatch(r"-\d+", digits):
            raise InvalidQueryParameter(f"{name} must not be negative: it is a number of bytes.")
        if name == "size":
            raise InvalidQueryParameter("size must be a number of bytes.")
        raise InvalidQueryParameter("Unable to filter on a range with a non-numeric value.")  # Glance's words
    value = int(digits) if len(digits) <= MAX_BIGINT_DIGITS else MAX_BIGINT + 1
    if value > MAX_BIGINT:
        raise InvalidQueryParameter(f"{name} is out of range: at most {MAX_BIGINT} bytes.")
    return value


def _flag(name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise InvalidQueryParameter(f"Invalid value for {name}: it must be true or false.")
    return raw.lower() == "true"


BACKLOG_DEFAULT_LIMIT = 100
BACKLOG_MAX_LIMIT = 1000


def backlog_query(request: Request) -> tuple[int, int | None]:
    """GET /v1/scrubber/backlog parameters: limit (1..1000) and marker (a location id)."""
    params: dict[str, list[str]] = {}
    try:
        for key, value in request.GET.items():
            params.setdefault(key, []).append(value)
    except UnicodeDecodeError as exc:
        raise InvalidQueryParameter("The query string is not UTF-8.") from exc
    unknown = set(params) - {"limit", "marker"}
    if unknown:
        raise InvalidQueryParameter(f"Unknown parameter: {sorted(unknown)[0][:64]}.")
    limit = _integer("limit", _single(params, "limit"))
    if limit is not None and not 1 <= limit <= BACKLOG_MAX_LIMIT:
        raise InvalidQueryParameter(f"limit must be between 1 and {BACKLOG_MAX_LIMIT}.")
    marker = _integer("marker", _single(params, "marker"))
    if marker is not None and marker > MAX_INT32:
        raise InvalidMarker("The marker is not a location in the backlog.")
    return limit or BACKLOG_DEFAULT_LIMIT, marker


def image_list_query(request: Request, settings: Settings) -> ImageQuery:
    """Parse GET /v2/images parameters as Glance does; unknown parameters filter on properties."""
    params: dict[str, list[str]] = {}
    try:
        items = list(request.GET.items())
    except UnicodeDecodeError as exc:
        raise InvalidQueryParameter("The query string is not UTF-8.") from exc
    for key, value in items:
        if not (is_storable_text(key) and is_storable_text(value)):
            raise InvalidQueryParameter("Query parameters may not contain NUL characters.")
        params.setdefault(key, []).append(value)
    limit = _integer("limit", _single(params, "limit"))
    raw_marker = _single(params, "marker")
    if raw_marker is not None and not re.fullmatch(UUID_PATTERN, raw_marker):
        raise InvalidMarker("The marker is not an image id.")
    sort = _sorting(params)
    tags = tuple(tag.strip() for tag in params.pop("tag", []))
    if "changes-since" in params:
        raise InvalidQueryParameter('The "changes-since" filter is no longer available on v2.')
    member_statuses = _member_statuses(_single(params, "member_status"))
    visibilities = _visibilities(_single(params, "visibility"))
    size = _size_filter("size", _single(params, "size"))
    size_min = _size_filter("size_min", _single(params, "size_min"))
    size_max = _size_filter("size_max", _single(params, "size_max"))
    protected = _flag("protected", _single(params, "protected"))
    column_filters = _column_filters(params)
    os_hidden = _flag("os_hidden", _single(params, "os_hidden")) or False
    equal_filters: dict[str, tuple[str, ...]] = {}
    for name in LIST_FILTERS_WITH_IN:
        raw = _single(params, name)
        if raw is not None:
            equal_filters[name] = tuple(raw[3:].split(",")) if raw.startswith("in:") else (raw,)
    properties = {}
    for name, values in params.items():
        if len(values) > 1:
            raise InvalidQueryParameter(f"The filter {name[:255]} may be given only once.")
        properties[name] = values[0]
    filter_values = len(tags) + len(properties) + sum(len(values) for values in equal_filters.values())
    if filter_values > MAX_FILTER_VALUES:
        # Each value is a condition in the query; thousands would stall the planner (and overflow SQLite).
        raise InvalidQueryParameter(f"At most {MAX_FILTER_VALUES} filter values may be given at once.")
    return ImageQuery(
        limit=min(settings.api_limit_max, settings.limit_param_default if limit is None else limit),
        marker=uuid.UUID(raw_marker) if raw_marker else None,
        sort=sort,
        equal_filters=equal_filters,
        tags=tags,
        properties=properties,
        size=size,
        size_min=size_min,
        size_max=size_max,
        protected=protected,
        column_filters=column_filters,
        os_hidden=os_hidden,
        visibilities=visibilities,
        member_statuses=member_statuses,
    )


def _column_filters(params: dict[str, list[str]]) -> tuple[tuple[str, str, str | int | datetime], ...]:
    """Glance's filters on other image columns (taken out of params): checksum=, min_ram_min=, created_at=gte:..."""
    filters: list[tuple[str, str, str | int | datetime]] = []
    for name in TEXT_COLUMN_FILTERS:
        raw = _single(params, name)
        if raw is not None:
            filters.append((name, "eq", raw))
    for name, maximum in NUMBER_COLUMN_FILTERS.items():
        for key, operator in ((name, "eq"), (f"{name}_min", "gte"), (f"{name}_max", "lte")):
            raw = _single(params, key)
            if raw is not None:
                filters.append((name, operator, _whole_number_filter(key, raw, maximum)))
    for name in TIME_COLUMN_FILTERS:
        raw = _single(params, name)
        if raw is not None:
            filters.append((name, *_time_filter(name, raw)))
    return tuple(filters)


def _time_filter(name: str, raw: str) -> tuple[str, datetime]:
    """`[operator:]ISO 8601 time`, as Glance's split_filter_op reads it; the instant in UTC, as the columns hold it."""
    operator, _, rest = raw.partition(":")
    operator, text = (operator, rest) if operator in TIME_OPERATORS else ("eq", raw)
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError as exc:  # Glance's words
        raise InvalidQueryParameter(f'Bad "{name}" query filter format. Use ISO 8601 DateTime notation.') from exc
    if instant.tzinfo is not None:
        instant = instant.astimezone(UTC).replace(tzinfo=None)
    return operator, instant


def _whole_number_filter(name: str, raw: str, maximum: int) -> int:
    """A filter value on a whole-number column: digits up to the column's largest value; 400 otherwise.

    Glance takes ranges with int() (400 for a non-number) and an equality as the column's own comparison; past
    the column's range PostgreSQL would fail the statement (a 500), so that is a 400 here, as for size.
    """
    digits = raw.strip()
    if not (digits.isascii() and digits.isdigit()):
        if name.endswith(("_min", "_max")):
            raise InvalidQueryParameter("Unable to filter on a range with a non-numeric value.")  # Glance's words
        raise InvalidQueryParameter(f"{name} must be a whole number.")
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise InvalidQueryParameter(f"{name} is out of range: at most {maximum}.")
    return int(digits)


def _visibilities(raw: str | None) -> frozenset[str] | None:
    """visibility=public (one value, as Glance takes it) or =all (community included); None if not given."""
    if raw is None:
        return None
    if raw not in (*VISIBILITIES, "all"):
        raise InvalidQueryParameter("Invalid visibility value.")
    return frozenset(VISIBILITIES) if raw == "all" else frozenset((raw,))


def _member_statuses(raw: str | None) -> tuple[str, ...]:
    """member_status=pending|accepted|rejected|all, as Glance takes it (accepted when not given)."""
    if raw is None:
        return ("accepted",)
    if raw == "all":
        return MEMBER_STATUSES
    if raw not in MEMBER_STATUSES:
        raise InvalidQueryParameter("Invalid member_status value: it must be pending, accepted, rejected or all.")
    return (raw,)
