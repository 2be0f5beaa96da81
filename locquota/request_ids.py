"""Request ids: every response carries x-openstack-request-id, and every log line of its request names it.

The id is the caller's X-Openstack-Request-Id when it has Glance's form (`req-` and a lowercase UUID), else a
new `req-<uuid4>`: nothing else a client sends reaches a header or a log. (oslo.middleware keeps a caller's id
apart, as the global request id, and always answers with a new local one; locquota answers with the caller's.)
It is in the environ under oslo.middleware's key, and in locquota.logs' contextvar while the request is served.

One middleware, RequestIds, sits over everything, and also writes the access line (locquota.access_log).
It is there twice over: production's paste pipeline puts the `request_id` filter in front of
keystonemiddleware's auth_token (whose own 401s then carry the id too), and `includeme` wraps the app's
execution policy (pyramid_retry's), so the app answers with ids however it is served: pserve, gunicorn, a
test. The outer one does the work; the inner one sees the environ key and stands aside.
"""

import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from pyramid.config import Configurator
from pyramid.interfaces import PHASE3_CONFIG, IExecutionPolicy
from pyramid.router import Router, default_execution_policy

from locquota.access_log import Exchange, LoggedBody, logged_target, noting_project, printable
from locquota.logs import REQUEST_ID
from locquota.serving import WsgiApp

HEADER = "x-openstack-request-id"
INBOUND = "HTTP_X_OPENSTACK_REQUEST_ID"
REQUEST_ID_ENVIRON = "openstack.request_id"  # oslo.middleware's key
WELL_FORMED = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

StartResponse = Callable[..., Callable[[bytes], object]]
ExecutionPolicy = Callable[[dict[str, Any], Router], Any]

log = logging.getLogger(__name__)


def request_id_for(environ: dict[str, Any]) -> str:
    """The caller's id when it is well-formed, else a new one."""
    offered = environ.get(INBOUND, "")
    return offered if WELL_FORMED.fullmatch(offered) else f"req-{uuid.uuid4()}"


class RequestIds:
    """WSGI middleware: the request id in the environ, the log context and the response; the access line."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve the request with its id; the body returned logs the access line when the server closes it."""
        if REQUEST_ID_ENVIRON in environ:  # a RequestIds further out serves this request
            return self._app(environ, start_response)
        request_id = environ[REQUEST_ID_ENVIRON] = request_id_for(environ)
        exchange = Exchange(environ, request_id)
        start = _answering_with_id(start_response, exchange)
        token = REQUEST_ID.set(request_id)
        try:
            body = self._app(environ, start)
        except Exception:  # noqa: BLE001 - a bug escaped the app's error views: still a JSON 500 with the id
            body = _internal_error(environ, start)
        finally:
            REQUEST_ID.reset(token)
        return LoggedBody(body, exchange)


def _answering_with_id(start_response: StartResponse, exchange: Exchange) -> StartResponse:
    """The server's start_response, with the id added (any the app set is replaced) and status and bytes kept."""

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
        exchange.status = int(status.split(" ", 1)[0])
        kept = [(name, value) for name, value in headers if name.lower() != HEADER]
        write = start_response(status, [*kept, (HEADER, exchange.request_id)], exc_info)

        def counted_write(data: bytes) -> object:
            exchange.sent_bytes += len(data)
            return write(data)

        return counted_write

    return start


def _internal_error(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """The error views' 500, for an exception that escaped them; logged with its traceback."""
    log.exception("internal error on %s %s", printable(environ.get("REQUEST_METHOD", "-")), logged_target(environ))
    body = json.dumps(
        {"error": {"code": "internal_error", "message": "The server failed to handle this request.", "details": {}}}
    ).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("500 Internal Server Error", headers, sys.exc_info())
    return [body]


def filter_factory(_global_conf: dict[str, str], **_local_conf: str) -> Callable[[WsgiApp], RequestIds]:
    """The PasteDeploy filter (entry point `request_id` of locquota): put it first in a pipeline."""
    return RequestIds


def with_request_ids(policy: ExecutionPolicy) -> ExecutionPolicy:
    """An execution policy answering as `policy` does, inside RequestIds (Router calls what a policy returns)."""

    def policy_with_request_ids(environ: dict[str, Any], router: Router) -> RequestIds:
        return RequestIds(lambda env, start_response: policy(env, router)(env, start_response))

    return policy_with_request_ids


def includeme(config: Configurator) -> None:
    """Serve every request inside RequestIds, over pyramid_retry and every tween; note callers' projects."""
    config.add_view_deriver(noting_project)

    def wrap_execution_policy() -> None:
        policy = config.registry.queryUtility(IExecutionPolicy, default=default_execution_policy)
        config.registry.registerUtility(with_request_ids(policy), IExecutionPolicy)

    # After every action of the default order, pyramid_retry's set_execution_policy among them.
    config.action(None, wrap_execution_policy, order=PHASE3_CONFIG + 1)
