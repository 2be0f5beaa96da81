"""x-openstack-request-id on every response (issue 20): the caller's when well-formed, a new one otherwise.

Through WebTest on the app as configure() builds it (the id is the app's own, not only a paste filter's),
on successes, 4xx from the identity check and the router, a 503 from the database outage tween, health
and metrics. The id is engine-independent, so these run on SQLite only.
"""

import io
import logging
import re
import uuid

import pytest
from webtest import TestApp

from locquota.logs import Formatter
from locquota.request_ids import RequestIds

pytestmark = pytest.mark.engines("sqlite")

HEADER = "x-openstack-request-id"
GENERATED = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def offered_id() -> str:
    return f"req-{uuid.uuid4()}"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/versions"])
def test_a_route_without_identity_answers_with_a_new_id(app, path):
    first = app.get(path).headers[HEADER]
    second = app.get(path).headers[HEADER]

    assert GENERATED.fullmatch(first)
    assert GENERATED.fullmatch(second)
    assert first != second


def test_a_well_formed_id_from_the_caller_comes_back(app, tenant):
    mine = offered_id()

    res = app.get("/v2/images", headers={**tenant, "X-Openstack-Request-Id": mine}, status=200)

    assert res.headers.getall(HEADER) == [mine]


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(f"req-{uuid.uuid4()}{'0' * 4000}", id="too-long"),
        pytest.param(f"req-{uuid.uuid4()}\r\nSet-Cookie: session=stolen", id="crlf"),
        pytest.param(f"req-{uuid.uuid4()}\n", id="trailing-newline"),
        pytest.param("req-not-a-uuid", id="non-uuid"),
        pytest.param(str(uuid.uuid4()), id="no-prefix"),
        pytest.param(f"req-{str(uuid.uuid4()).upper()}", id="uppercase"),  # Glance's ids are lowercase
        pytest.param(f"req-{uuid.uuid4().hex}", id="no-dashes"),
        pytest.param(f"x req-{uuid.uuid4()}", id="embedded"),
        pytest.param("", id="empty"),
    ],
)
def test_a_malformed_id_is_replaced_by_a_new_one(app, hostile):
    res = app.get("/healthz", headers={"X-Openstack-Request-Id": hostile}, status=200)

    [answered] = res.headers.getall(HEADER)
    assert GENERATED.fullmatch(answered)
    assert "Set-Cookie" not in res.headers
    assert all(hostile not in value for value in res.headers.values() if hostile)


def test_a_401_from_the_identity_check_carries_the_id(make_app, settings):
    app = make_app({**settings, "locquota.auth_strategy": "tokens"})
    mine = offered_id()

    res = app.get("/v2/images", headers={"X-Auth-Token": "no-such-token", "X-Openstack-Request-Id": mine}, status=401)

    assert res.json["error"]["code"] == "unauthorized"
    assert res.headers[HEADER] == mine


@pytest.mark.parametrize(
    ("path", "code"), [("/no/such/route", "not_found"), (f"/v2/images/{uuid.uuid4()}", "image_not_found")]
)
def test_a_404_carries_the_id(app, tenant, path, code):
    mine = offered_id()

    res = app.get(path, headers={**tenant, "X-Openstack-Request-Id": mine}, status=404)

    assert res.json["error"]["code"] == code
    assert res.headers[HEADER] == mine


def test_a_503_while_the_database_is_down_carries_the_id(make_app, database_down_settings, tenant):
    app = make_app(database_down_settings)
    mine = offered_id()

    res = app.get("/v2/images", headers={**tenant, "X-Openstack-Request-Id": mine}, status=503)

    assert res.json["error"]["code"] == "service_unavailable"
    assert res.headers[HEADER] == mine


def test_a_log_line_written_during_a_request_names_its_id(make_app, database_down_settings, tenant):
    """The database outage warning (locquota.errors) is logged while the request is served."""
    app = make_app(database_down_settings)
    mine = offered_id()
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(Formatter("%(request_id)s %(name)s %(message)s"))
    logger = logging.getLogger("locquota.errors")
    logger.addHandler(handler)
    try:
        app.get("/v2/images", headers={**tenant, "X-Openstack-Request-Id": mine}, status=503)
        logger.warning("after the request")
    finally:
        logger.removeHandler(handler)

    during, after = lines.getvalue().splitlines()
    assert during.startswith(f"{mine} locquota.errors database unavailable on GET")
    assert after == "- locquota.errors after the request"


def test_an_exception_that_escapes_the_app_is_a_json_500_with_the_id(caplog):
    """Nothing in the app lets one escape today; the middleware is tested on the smallest WSGI app that does."""

    def failing_app(_environ, _start_response):
        raise RuntimeError("a bug outside every error view")

    app = TestApp(RequestIds(failing_app))
    mine = offered_id()

    res = app.get("/anything", headers={"X-Openstack-Request-Id": mine}, status=500)

    assert res.json == {
        "error": {"code": "internal_error", "message": "The server failed to handle this request.", "details": {}}
    }
    assert res.headers[HEADER] == mine
    [logged] = [record for record in caplog.records if record.name == "locquota.request_ids"]
    assert logged.exc_info is not None
    assert "a bug outside every error view" not in res.text


def test_an_outer_request_id_middleware_is_the_only_one_at_work(wsgi_app, caplog):
    """production.ini puts the filter in front of auth_token: the app's own then stands aside (one id, one line)."""
    caplog.set_level(logging.INFO, logger="locquota.access")
    app = TestApp(RequestIds(wsgi_app))

    res = app.get("/healthz", status=200)

    assert len(res.headers.getall(HEADER)) == 1
    assert len([record for record in caplog.records if record.name == "locquota.access"]) == 1
