"""The one error type clients see, its stable codes, and the views that render every error as JSON.

Codes are API: they are listed in docs/errors.md and never renamed or reused.
"""

import logging
import time
from collections.abc import Callable
from typing import ClassVar

from pyramid.config import Configurator
from pyramid.exceptions import URLDecodeError
from pyramid.httpexceptions import HTTPException
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import exception_view_config, forbidden_view_config, notfound_view_config
from pyramid_retry import IBeforeRetry, mark_error_retryable
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from locquota.write_conflicts import backoff_seconds, is_write_conflict

log = logging.getLogger(__name__)


class LocquotaError(Exception):
    """Every error a client may see. The exception view renders it; pyramid_tm aborts the transaction."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    headers: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message, self.details = message, details


class MalformedJSON(LocquotaError):
    code = "malformed_json"


class InvalidBody(LocquotaError):
    code = "invalid_body"


class InvalidQueryParameter(LocquotaError):
    code = "invalid_query_parameter"


class InvalidMarker(LocquotaError):
    code = "invalid_marker"


class InvalidPatch(LocquotaError):
    code = "invalid_patch"


class InvalidPatchPath(LocquotaError):
    code = "invalid_patch_path"


class LocationOutsideStore(LocquotaError):
    code = "location_outside_store"


class LocationNotAFile(LocquotaError):
    code = "location_not_a_file"


class LocationUndecidable(LocquotaError):
    code = "location_undecidable"


class UnsupportedScheme(LocquotaError):
    code = "unsupported_scheme"


class DuplicateLocation(LocquotaError):
    code = "duplicate_location"


class LocationDataMissing(LocquotaError):
    code = "location_data_missing"


class UnknownStore(LocquotaError):
    code = "unknown_store"


class StoreNotEnabled(LocquotaError):
    status, code = 409, "store_not_enabled"  # Glance's 409 for a store not enabled on this node


class InvalidTenantId(LocquotaError):
    code = "invalid_tenant_id"


class Unauthorized(LocquotaError):
    status, code = 401, "unauthorized"


class Forbidden(LocquotaError):
    status, code = 403, "forbidden"


class ReadOnlyAttribute(LocquotaError):
    status, code = 403, "read_only_attribute"


class ReservedAttribute(LocquotaError):
    status, code = 403, "reserved_attribute"


class LocationInUse(LocquotaError):
    status, code = 403, "location_in_use"


class ImageProtected(LocquotaError):
    status, code = 403, "image_protected"


class ImageNotFound(LocquotaError):
    status, code = 404, "image_not_found"


class TagNotFound(LocquotaError):
    status, code = 404, "tag_not_found"


class NotFound(LocquotaError):
    status, code = 404, "not_found"


class MethodNotAllowed(LocquotaError):
    status, code = 405, "method_not_allowed"


class StoreReadOnly(LocquotaError):
    status, code = 410, "store_read_only"


class ImageConflict(LocquotaError):
    status, code = 409, "image_conflict"


class InvalidImageStatus(LocquotaError):
    status, code = 409, "invalid_image_status"


class InvalidLocationTransition(LocquotaError):
    status, code = 409, "invalid_location_transition"


class LocationDataChanged(LocquotaError):
    status, code = 409, "location_data_changed"


class UploadInterrupted(LocquotaError):
    """The upload's lease was taken over (it stalled longer than the lease, or the reaper ran): nothing kept."""

    status, code = 409, "upload_interrupted"


class ScrubInProgress(LocquotaError):
    status, code = 409, "scrub_in_progress"


class LocationPendingDelete(LocquotaError):
    status, code = 409, "location_pending_delete"


class PropertyNotFound(LocquotaError):
    status, code = 409, "property_not_found"


class PropertyExists(LocquotaError):
    status, code = 409, "property_exists"  # a v2.0 json-patch add of a property the image already has


class LengthRequired(LocquotaError):
    status, code = 411, "length_required"


class RequestTooLarge(LocquotaError):
    status, code = 413, "request_too_large"


class ImageTooLarge(LocquotaError):
    status, code = 413, "image_too_large"


class LocationLimitExceeded(LocquotaError):
    status, code = 413, "location_limit_exceeded"


class QuotaExceeded(LocquotaError):
    status, code = 413, "quota_exceeded"


class StoreFull(LocquotaError):
    status, code = 413, "store_full"


class TooManyTags(LocquotaError):
    status, code = 413, "tag_limit_exceeded"


class TooManyProperties(LocquotaError):
    status, code = 413, "property_limit_exceeded"


class TooManyMembers(LocquotaError):
    status, code = 413, "member_limit_exceeded"


class MemberNotFound(LocquotaError):
    status, code = 404, "member_not_found"


class MemberConflict(LocquotaError):
    status, code = 409, "member_conflict"


class UnsupportedMediaType(LocquotaError):
    status, code = 415, "unsupported_media_type"


class IncompleteUpload(LocquotaError):
    code = "incomplete_upload"


class IncompleteBody(LocquotaError):
    code = "incomplete_body"


class ServiceUnavailable(LocquotaError):
    status, code = 503, "service_unavailable"
    headers = (("Retry-After", "5"),)


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class KeystoneUnavailable(ServiceUnavailable):
    """Keystone did not answer: a token cannot be checked, or limits kept there cannot be read."""

    code = "keystone_unavailable"


class ImportMethodNotEnabled(LocquotaError):
    code = "import_method_not_enabled"


class WebDownloadRefused(LocquotaError):
    """A web-download URL (or a redirect it led to) that the import filter does not allow."""

    code = "web_download_refused"


class WebDownloadFailed(LocquotaError):
    """The web server did not deliver the data (an import task fails with this message; never an API answer)."""

    status, code = 502, "web_download_failed"


class ImportInProgress(LocquotaError):
    status, code = 409, "import_in_progress"


class NotStaged(LocquotaError):
    status, code = 409, "not_staged"


class TaskNotFound(LocquotaError):
    status, code = 404, "task_not_found"


def _render(request: Request, status: int, code: str, message: str, details: dict[str, object]) -> dict[str, object]:
    # One top-level key: glanceclient calls .get("message") on every top-level value of an error body.
    request.response.status_code = status
    return {"error": {"code": code, "message": message, "details": details}}


@exception_view_config(LocquotaError, renderer="json")
def render_locquota_error(exc: LocquotaError, request: Request) -> dict[str, object]:
    """Render a raised LocquotaError; its headers (Retry-After) go along."""
    request.response.headers.update(dict(exc.headers))
    return _render(request, exc.status, exc.code, exc.message, exc.details)


@forbidden_view_config(renderer="json")
def render_forbidden(exc: HTTPException, request: Request) -> dict[str, object]:
    """Pyramid's permission failure: 401 without an identity, 403 with one (naming the policy rule that refused)."""
    if request.identity is None:
        request.response.headers["WWW-Authenticate"] = 'Keystone uri="", Token'
        return _render(request, 401, Unauthorized.code, "Authentication required.", {})
    rule = getattr(getattr(exc, "result", None), "rule", None)
    details: dict[str, object] = {"rule": rule} if rule is not None else {}
    return _render(request, 403, Forbidden.code, "You are not authorized to do this.", details)


@notfound_view_config(renderer="json")
def render_not_found(_exc: HTTPException, request: Request) -> dict[str, object]:
    """An unknown URL, in the error shape; a known URL with the wrong method is a 405, as in Glance."""
    if request.matched_route is not None:
        request.response.headers["Allow"] = ", ".join(allowed_methods(request.registry, request.matched_route.name))
        return _render(request, 405, MethodNotAllowed.code, f"{request.method} is not allowed here.", {})
    return _render(request, 404, NotFound.code, "No resource at this URL.", {})


def allowed_methods(registry: Registry, route_name: str) -> list[str]:
    """The methods the route's views take, for a 405's Allow header (RFC 9110); read once per route."""
    known: dict[str, list[str]] = registry.setdefault("locquota.allowed_methods", {})
    if route_name not in known:
        route = registry.introspector.get("routes", route_name)
        methods: set[str] = set()
        for view in registry.introspector.related(route) if route is not None else []:
            if view.category_name == "views":
                taken = view["request_methods"]
                methods.update([taken] if isinstance(taken, str) else taken or ())
        if "GET" in methods:
            methods.add("HEAD")  # Pyramid answers HEAD with a GET view
        known[route_name] = sorted(methods)
    return known[route_name]


@exception_view_config(HTTPException, renderer="json")
def render_http_exception(exc: HTTPException, request: Request) -> dict[str, object]:
    """Pyramid's other HTTP exceptions (405 from predicate mismatch, 400 from WebOb) in the error shape."""
    code = {405: MethodNotAllowed.code, 400: LocquotaError.code}.get(
        exc.code or 500, exc.title.lower().replace(" ", "_")
    )
    return _render(request, exc.code or 500, code, exc.explanation or exc.title, {})


@exception_view_config(URLDecodeError, renderer="json")
def render_undecodable_url(_exc: URLDecodeError, request: Request) -> dict[str, object]:
    """A path that is not UTF-8 names no resource."""
    return _render(request, 404, NotFound.code, "No resource at this URL.", {})


# The database cannot be reached (refused, dropped, a pool with no connection to give): try again later.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)


def database_unavailable(exc: Exception, request: Request) -> Response:
    """The JSON 503 with Retry-After for a request the database could not serve."""
    log.warning(
        "database unavailable on %s %r: %s", request.method, request.path_info, type(exc.__cause__ or exc).__name__
    )
    return _database_503("The database is unreachable.", "down")


def _database_503(message: str, state: str) -> Response:
    """A JSON 503 `service_unavailable` with Retry-After: details.database says why (down, conflict)."""
    body = {"error": {"code": ServiceUnavailable.code, "message": message, "details": {"database": state}}}
    response = Response(json=body, status=503)
    response.headers.update(dict(ServiceUnavailable.headers))
    return response


def write_conflict(exc: Exception, request: Request) -> Response:
    """A concurrent writer won (a deadlock, a Galera certification failure): retried, then a 503 to try again.

    Marked retryable here, where pyramid_tm's commit errors also arrive: pyramid_retry then runs the
    request again while it has attempts left, and this response is only sent after the last one.
    """
    mark_error_retryable(exc)
    log.warning("write conflict on %s %r: %s", request.method, request.path_info, getattr(exc, "orig", exc))
    return _database_503("A concurrent request changed the same data; try again.", "conflict")


@exception_view_config(OperationalError)
@exception_view_config(InterfaceError)
@exception_view_config(PoolTimeoutError)
def render_database_unavailable(exc: Exception, request: Request) -> Response:
    """A view that needed the database while it is down: 503, never the 500 of a bug."""
    if is_write_conflict(exc):
        return write_conflict(exc, request)
    return database_unavailable(exc, request)


def database_outage_tween_factory(
    handler: Callable[[Request], Response], _registry: Registry
) -> Callable[[Request], Response]:
    """Above pyramid_tm: a database outage outside any view (the commit, a tween reading the identity) is a 503 too."""

    def tween(request: Request) -> Response:
        try:
            return handler(request)
        except DATABASE_UNAVAILABLE as exc:
            return database_unavailable(exc, request)

    return tween


@exception_view_config(Exception, renderer="json")
def render_internal_error(exc: Exception, request: Request) -> dict[str, object]:
    """A bug. Log it with its traceback; the client gets a stable code and no internals."""
    log.error("internal error on %s %r", request.method, request.environ.get("PATH_INFO"), exc_info=exc)
    return _render(request, 500, "internal_error", "The server failed to handle this request.", {})


def pause_before_retry(event: IBeforeRetry) -> None:
    """A short random wait before pyramid_retry runs a request again, so that the writers that collided spread out."""
    time.sleep(backoff_seconds(event.environ["retry.attempt"]))


def includeme(config: Configurator) -> None:
    """The exception views above, the pause between attempts, and the outage tween around pyramid_tm."""
    config.scan(__name__)
    config.add_subscriber(pause_before_retry, IBeforeRetry)
    config.add_tween("locquota.errors.database_outage_tween_factory", over="pyramid_tm.tm_tween_factory")
