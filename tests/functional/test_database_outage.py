"""Every route while PostgreSQL is down: a JSON 503 with Retry-After (or the 4xx decided before the database),
never a 500, whatever the identity strategy and credentials. The database is a real closed port."""

import uuid

import pytest
from pyramid.interfaces import ITweens
from pyramid.request import Request
from sqlalchemy.exc import OperationalError
from webtest import TestApp

from locquota.errors import database_outage_tween_factory
from tests.conftest import identity

# Routes that answer without the database (the metrics scrape reports its failed parts as collector_up 0).
# Answered from configuration alone: no database needed, so no 503 (under an identity that needs none).
DATABASE_FREE = {
    "versions.root", "versions.list", "schemas.image", "schemas.images", "health.live", "metrics", "openapi",
    "info.stores", "info.stores.detail",
    "stores.image",  # this deployment has one store: Glance's multi-store routes are 404 without several
    "schemas.task", "schemas.tasks", "schemas.member", "schemas.members", "info.import",
    "images.stage",  # no staging area here: 404 before the database
    "images.import",  # its body ({} here) is refused before the database
}  # fmt: skip
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PLACEHOLDERS = {
    "image_id": str(uuid.uuid4()),
    "tenant_id": "tenant-a",
    "tag": "blue",
    "store_id": "file",
    "task_id": str(uuid.uuid4()),
    "action": "deactivate",
    "member_id": "tenant-b",
}
BODIES = {"POST": b"{}", "PUT": b"{}", "PATCH": b"[]"}
CONTENT_TYPES = {
    "POST": "application/json",
    "PUT": "application/json",
    "PATCH": "application/openstack-images-v2.1-json-patch",
}


def routes(app: TestApp) -> dict[str, str]:
    """Every route the app serves, by name, with its placeholders filled in."""
    introspector = app.app.registry.introspector
    return {
        item["name"]: item["pattern"].format(**PLACEHOLDERS)
        for item in (entry["introspectable"] for entry in introspector.get_category("routes"))
    }


def send(app: TestApp, method: str, path: str, headers: dict[str, str]):
    body = BODIES.get(method)
    extra = {"Content-Type": CONTENT_TYPES[method]} if body is not None else {}
    return app.request(path, method=method, body=body or b"", headers={**headers, **extra}, expect_errors=True)


@pytest.mark.parametrize(
    ("strategy", "headers"),
    [
        ("noauth", identity("tenant-a", "admin", "member")),
        ("tokens", {"X-Auth-Token": "lq_" + "x" * 43}),
    ],
    ids=["identity-headers", "token"],
)
def test_every_route_answers_json_503_or_a_4xx_while_the_database_is_down(
    make_app, database_down_settings, strategy, headers
):
    app = make_app({**database_down_settings, "locquota.auth_strategy": strategy})
    reached_the_database = set()

    for name, path in sorted(routes(app).items()):
        for method in METHODS:
            res = send(app, method, path, headers)
            assert res.status_int != 500, (method, path, res.body)
            if res.status_int >= 400:
                assert res.content_type == "application/json", (method, path, res.body)
            if res.status_int >= 500:
                assert res.status_int == 503, (method, path, res.body)
                assert res.json["error"]["code"] == "service_unavailable"
                assert int(res.headers["Retry-After"]) > 0
                reached_the_database.add(name)

    assert set(routes(app)) - DATABASE_FREE <= reached_the_database


def test_a_token_request_while_the_database_is_down_is_503_not_401(make_app, database_down_settings):
    app = make_app({**database_down_settings, "locquota.auth_strategy": "tokens"})

    res = app.get("/v2/images", headers={"X-Auth-Token": "lq_" + "x" * 43}, status=503)

    assert res.json["error"]["details"] == {"database": "down"}


def test_an_outage_outside_any_view_is_a_json_503_too(app):
    """The commit runs in pyramid_tm, above the exception views: the outage tween sits above pyramid_tm."""

    order = [name for name, _factory in app.app.registry.queryUtility(ITweens).implicit()]
    assert order.index("locquota.errors.database_outage_tween_factory") < order.index("pyramid_tm.tm_tween_factory")

    def commit_fails(_request):
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    res = database_outage_tween_factory(commit_fails, app.app.registry)(Request.blank("/v2/images"))

    assert res.status_int == 503
    assert res.json["error"]["code"] == "service_unavailable"
    assert int(res.headers["Retry-After"]) > 0
