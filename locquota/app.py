"""The Pyramid application factory: settings first, then one include per concern."""

from collections.abc import Mapping

from pyramid.config import Configurator
from pyramid.request import Request

from locquota.pipeline import require_auth_token
from locquota.serving import WsgiApp, bound_client_silence
from locquota.settings import AuthStrategy
from locquota.write_conflicts import REQUEST_ATTEMPTS


def _retry_attempts(request: Request) -> int | None:
    """Retry only requests whose body is small enough to replay; None means the default number of attempts.

    pyramid_retry buffers the body to make it seekable, outside every exception view: a streamed upload
    or an oversized body would be read whole before any check could refuse it, and a body shorter than
    its Content-Length would escape as a 500. So the body is buffered here, where that can be caught,
    and a request whose body cannot be buffered runs once; the view then refuses it with a 4xx.
    """
    if request.method == "PUT":
        return 1  # image uploads stream into the store
    length = request.content_length
    if length is None:
        return 1 if request.is_body_readable else None  # a body of unknown length is never buffered
    if length > request.registry["locquota.settings"].max_request_body_bytes:
        return 1
    try:
        request.make_body_seekable()
    except OSError:  # WebOb's DisconnectionError (a short body), or a client silent past its idle timeout
        return 1
    return None


def configure(raw: Mapping[str, str]) -> Configurator:
    """Build the Configurator; tests call this and register fakes (a frozen clock) before making the app."""
    config = Configurator(
        settings={
            **raw,
            "tm.manager_hook": "pyramid_tm.explicit_manager",
            # pyramid_tm would resolve the identity (a token lookup: a query) before any view or error view runs.
            "tm.annotate_user": "false",
            "retry.activate_hook": _retry_attempts,
            "retry.attempts": raw.get("retry.attempts", str(REQUEST_ATTEMPTS)),  # write conflicts: docs/databases.md
        }
    )
    config.include("locquota.settings")
    for name in (
        "locquota.request_ids",  # request ids and the access log, over pyramid_retry and every tween
        "pyramid_services",
        "locquota.crypto",
        "pyramid_retry",
        "pyramid_tm",
        "locquota.clock",
        "locquota.json_rendering",
        "locquota.db",
        "locquota.cache",
        "locquota.identity",
        "locquota.errors",
        "locquota.health",
        "quota",
        "locations",
        "metrics",
    ):
        config.include(name)
    config.set_default_permission("authenticated")
    return config


def main(global_config: Mapping[str, str], **settings: str) -> WsgiApp:
    """The paste app factory named in development.ini and production.ini.

    With the keystone strategy it refuses to start unless the .ini runs auth_token in front of the app.
    A bad setting ends the process with one line on stderr (locquota.startup), under pserve and gunicorn alike.
    """
    from locquota.startup import refusing_to_start  # noqa: PLC0415  (see locquota.startup)

    with refusing_to_start(global_config):
        router = configure(settings).make_wsgi_app()
        if router.registry["locquota.settings"].auth_strategy is AuthStrategy.KEYSTONE:
            require_auth_token(global_config)
    return bound_client_silence(router, router.registry["locquota.settings"].client_idle_timeout_seconds)
