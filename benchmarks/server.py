"""The app under test, served by waitress on 127.0.0.1 in a background thread of this process.

A constant JSON view is added to the same Configurator, so the baseline pays for the same WSGI server,
tweens (pyramid_tm, pyramid_retry) and JSON renderer as the image views, and the ratio shows only what
the image endpoints add: identity, database round trips, ORM loading and presenting. A second added view
runs one SELECT 1 through request.db: the floor of any view that touches the database.
"""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyramid.request import Request
from pyramid.router import Router
from pyramid.security import NO_PERMISSION_REQUIRED
from sqlalchemy import Engine, text
from waitress.server import TcpWSGIServer, create_server

from locquota.app import configure

CONSTANT_PATH = "/bench/constant"
DB_FLOOR_PATH = "/bench/db"
SERVER_THREADS = 4
# The engine of the app served on each port, so a client can count what one of its requests sends.
_ENGINES: dict[int, Engine] = {}


def constant_view(_request: Request) -> dict[str, bool]:
    """The baseline: no identity, no database, the smallest JSON body."""
    return {"ok": True}


def db_floor_view(request: Request) -> dict[str, bool]:
    """One SELECT 1 through request.db: session, pyramid_tm transaction (BEGIN, ROLLBACK), one round trip.

    The least any database-backed view pays; the gap between it and get/list is the endpoints' own work.
    """
    return {"ok": request.db.execute(text("SELECT 1")).scalar_one() == 1}


def settings(database_url: str, store_root: Path) -> dict[str, str]:
    """The deployment the test suite uses (identity headers, noauth), with the Redis cache switched off.

    The image endpoints do not read the cache; leaving Redis out keeps one moving part out of the numbers.
    """
    return {
        "locquota.database_url": database_url,
        "locquota.redis_url": "",
        # Identity from headers, as auth_token sets them, with the policy asked as in production.
        "locquota.auth_strategy": "noauth",
        "locquota.allow_insecure_noauth": "true",
        "locquota.enabled_stores": "file",
        "locquota.default_store": "file",
        "locquota.store.file.datadir": str(store_root),
    }


def build_app(raw_settings: dict[str, str]) -> Router:
    """The product app plus the constant route, built from locquota.app.configure like production."""
    config = configure(raw_settings)
    config.add_route("bench.constant", CONSTANT_PATH)
    config.add_view(
        constant_view,
        route_name="bench.constant",
        request_method="GET",
        renderer="json",
        permission=NO_PERMISSION_REQUIRED,
    )
    config.add_route("bench.db_floor", DB_FLOOR_PATH)
    config.add_view(
        db_floor_view,
        route_name="bench.db_floor",
        request_method="GET",
        renderer="json",
        permission=NO_PERMISSION_REQUIRED,
    )
    return config.make_wsgi_app()


def engine_serving(port: int) -> Engine | None:
    """The engine of the locquota app that serving() runs on this port (None for another app or port)."""
    return _ENGINES.get(port)


@contextmanager
def serving(app: Router) -> Iterator[int]:
    """Serve the app on a free port of 127.0.0.1; yield the port; stop the server afterwards."""
    server = create_server(app, host="127.0.0.1", port=0, threads=SERVER_THREADS)
    assert isinstance(server, TcpWSGIServer)
    stopping = threading.Event()
    thread = threading.Thread(target=_run, args=(server, stopping), name="waitress", daemon=True)
    thread.start()
    port = server.socket.getsockname()[1]
    registry = getattr(app, "registry", None)  # a wrapping middleware has none: its requests are not counted
    if registry is not None:
        _ENGINES[port] = registry["locquota.engine"]
    try:
        yield port
    finally:
        _ENGINES.pop(port, None)
        stopping.set()
        _shutdown(server)
        thread.join(timeout=5)


def _run(server: TcpWSGIServer, stopping: threading.Event) -> None:
    try:
        server.run()
    except OSError:
        # Closing the sockets under a running select() raises EBADF in the loop: expected when stopping.
        if not stopping.is_set():
            raise


def _shutdown(server: TcpWSGIServer) -> None:
    # waitress has no stop(): closing every dispatcher empties its map, which ends the asyncore loop
    # (the same approach as webtest.http.StopableWSGIServer).
    logging.getLogger("waitress").setLevel(logging.CRITICAL)
    while server._map:
        for dispatcher in list(server._map.values()):
            dispatcher.handle_close()
    server.task_dispatcher.shutdown()
