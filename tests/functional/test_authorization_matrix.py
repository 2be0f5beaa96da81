"""Every route against every kind of caller (issue 14): Glance's secure-RBAC defaults through oslo.policy.

Callers hold locquota API tokens (the tokens strategy; tokens carry roles, implied roles expanded as
Keystone's bootstrap defines them); tests/e2e/test_keystone_authorization.py asks the same table of a
real Keystone behind auth_token. The image under test belongs to project p1. Each route gets a fresh
image in the state it needs, so no row depends on another. Expected: a reader reads, a member writes
in its project, admin operates, another project sees nothing (404 for an image, 403 for operator
routes), no role may do nothing, and no or a bogus token is 401.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session
from webtest import TestApp

from locquota.clock import FrozenClock
from locquota.db import make_engine
from locquota.tokens import TokenService

IMAGE = {"name": "matrix", "disk_format": "raw", "container_format": "bare"}
PATCH = [{"op": "replace", "path": "/name", "value": "renamed"}]
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"

# Personas: (project, roles). None: no token at all; "bogus": a token nobody issued.
PERSONAS = {
    "owner-member": ("p1", "member"),
    "owner-reader": ("p1", "reader"),
    "owner-no-role": ("p1", ""),
    "other-member": ("p2", "member"),
    "admin": ("operators", "admin"),
    "service": ("service", "service"),
    "no-token": None,
    "bogus-token": "bogus",
}


@dataclass(frozen=True)
class Route:
    """One route: how to call it on a prepared image (state), and the status when it is allowed."""

    name: str
    method: str
    path: str  # {id}: the image's id
    state: str | None  # None: no image; "queued", "active" or "pending_delete"
    allowed: int
    body: object = None
    content_type: str | None = None


ROUTES = [
    Route("list images", "GET", "/v2/images", None, 200),
    Route("create image", "POST", "/v2/images", None, 201, IMAGE),
    Route("show image", "GET", "/v2/images/{id}", "active", 200),
    Route("update image", "PATCH", "/v2/images/{id}", "active", 200, PATCH, PATCH_TYPE),
    Route("delete image", "DELETE", "/v2/images/{id}", "active", 204),
    Route("add tag", "PUT", "/v2/images/{id}/tags/blue", "active", 204),
    Route("remove tag", "DELETE", "/v2/images/{id}/tags/red", "active", 204),
    Route("upload", "PUT", "/v2/images/{id}/file", "queued", 204, b"bytes", "application/octet-stream"),
    Route("download", "GET", "/v2/images/{id}/file", "active", 200),
    Route("schema", "GET", "/v2/schemas/image", None, 200),
    Route("glance usage", "GET", "/v2/info/usage", None, 200),
    Route("own usage", "GET", "/v1/usage", None, 200),
    Route("any usage", "GET", "/v1/tenants/p1/usage", None, 200),
    Route("get limits", "GET", "/v1/tenants/p1/limits", None, 200),
    Route("set limits", "PUT", "/v1/tenants/p1/limits", None, 200, {"limits": {"image_count_total": 50}}),
    Route("backlog", "GET", "/v1/scrubber/backlog", None, 200),
    Route("restore", "POST", "/v1/images/{id}/restore", "pending_delete", 200),
]
OPEN_ROUTES = [("GET", "/"), ("GET", "/versions"), ("GET", "/healthz"), ("GET", "/metrics")]

READS = {"list images", "show image", "schema", "glance usage", "own usage"}
OWN_WRITES = {"create image", "update image", "delete image", "add tag", "remove tag", "upload", "download"}
OPERATOR = {"any usage", "get limits", "set limits", "backlog", "restore"}
ON_AN_IMAGE = {route.name for route in ROUTES if route.state is not None} - OPERATOR


def expected(persona: str, route: Route) -> int:  # noqa: PLR0911 - one line per row of the table
    """The status each persona gets: the table the policy defaults must produce."""
    if persona in ("no-token", "bogus-token"):
        return 401
    if persona == "admin":
        return route.allowed
    if route.name in OPERATOR:
        return 403
    if route.name == "schema":
        return route.allowed  # any project-scoped caller
    if persona == "owner-member":
        return route.allowed
    if persona == "owner-reader":
        return route.allowed if route.name in READS else 403
    if persona == "other-member":
        return 404 if route.name in ON_AN_IMAGE else route.allowed
    # no role, or only the service role: no image rule passes. An image it may not even see is missing.
    return 404 if route.name in ON_AN_IMAGE else 403


@pytest.fixture
def matrix_app(settings, make_app) -> TestApp:
    return make_app({**settings, "locquota.auth_strategy": "tokens", "locquota.delayed_delete": "true"})


@pytest.fixture
def token_for(settings, clock: FrozenClock, matrix_app) -> Callable[[str], dict[str, str]]:
    engine = make_engine(settings["locquota.database_url"])
    issued: dict[str, dict[str, str]] = {}

    def headers(persona: str) -> dict[str, str]:
        if persona not in issued:
            spec = PERSONAS[persona]
            if spec is None:
                issued[persona] = {}
            elif spec == "bogus":
                issued[persona] = {"X-Auth-Token": "lq_" + uuid.uuid4().hex}
            else:
                project, roles = spec
                with Session(engine) as session:
                    token = TokenService(session, clock).issue(project, [roles] if roles else [], "matrix")
                    session.commit()
                issued[persona] = {"X-Auth-Token": token}
        return issued[persona]

    yield headers
    engine.dispose()


def prepare(app: TestApp, owner: dict[str, str], admin: dict[str, str], state: str | None) -> str | None:
    """An image of p1 in the state a route needs."""
    if state is None:
        return None
    image = app.post_json("/v2/images", IMAGE, headers=owner, status=201).json["id"]
    if state == "queued":
        return image
    app.put(f"/v2/images/{image}/tags/red", headers=owner, status=204)
    app.put(f"/v2/images/{image}/file", b"data", headers={**owner, "Content-Type": "application/octet-stream"})
    if state == "pending_delete":
        app.delete(f"/v2/images/{image}", headers=owner, status=204)
    return image


@pytest.mark.parametrize("persona", list(PERSONAS))
def test_every_route_answers_each_caller_as_the_policy_defaults_say(matrix_app, token_for, persona):
    owner, admin = token_for("owner-member"), token_for("admin")
    caller = token_for(persona)
    answers = {}
    for route in ROUTES:
        image = prepare(matrix_app, owner, admin, route.state)
        path = route.path.format(id=image)
        headers = {**caller, **({"Content-Type": route.content_type} if route.content_type else {})}
        if isinstance(route.body, bytes | str):
            response = matrix_app.request(
                path, method=route.method, body=route.body, headers=headers, expect_errors=True
            )
        elif route.body is not None:
            response = matrix_app.request(
                path, method=route.method, json=route.body, headers=headers, expect_errors=True
            )
        else:
            response = matrix_app.request(path, method=route.method, headers=headers, expect_errors=True)
        answers[route.name] = response.status_int
        if response.status_int >= 400:
            assert response.json["error"]["code"] in ("unauthorized", "forbidden", "image_not_found"), response.text

    assert answers == {route.name: expected(persona, route) for route in ROUTES}


@pytest.mark.parametrize("persona", ["no-token", "bogus-token", "owner-no-role"])
@pytest.mark.parametrize(("method", "path"), OPEN_ROUTES)
def test_discovery_health_and_metrics_need_no_caller(matrix_app, token_for, persona, method, path):
    response = matrix_app.request(path, method=method, headers=token_for(persona), expect_errors=True)

    assert response.status_int in (200, 300)


def test_a_refused_write_changes_nothing(matrix_app, token_for):
    owner, reader = token_for("owner-member"), token_for("owner-reader")
    image = prepare(matrix_app, owner, token_for("admin"), "active")
    before = matrix_app.get(f"/v2/images/{image}", headers=owner).json

    matrix_app.patch_json(f"/v2/images/{image}", PATCH, headers={**reader, "Content-Type": PATCH_TYPE}, status=403)
    matrix_app.delete(f"/v2/images/{image}", headers=reader, status=403)
    matrix_app.put(f"/v2/images/{image}/tags/green", headers=reader, status=403)

    assert matrix_app.get(f"/v2/images/{image}", headers=owner).json == before


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("GET", "/v1/tenants/p1/limits", "locquota:limits:get"),
        ("GET", "/v1/tenants/p1/usage", "locquota:usage:get_any"),
    ],
)
def test_a_route_refused_by_its_policy_rule_names_the_rule(matrix_app, token_for, method, path, rule):
    refused = matrix_app.request(path, method=method, headers=token_for("owner-member"), status=403).json

    assert refused["error"] == {
        "code": "forbidden",
        "message": "You are not authorized to do this.",
        "details": {"rule": rule},
    }
