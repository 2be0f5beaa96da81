"""The OpenAPI document of locquota's own routes: valid 3.1, the app's routes both ways, and what it promises.

The route comparison reads Pyramid's introspector (every route and view the app registered), so a route
added without a document entry fails here, and so does an entry whose route went away. Glance's routes
(`/`, `/versions`, `/v2/...`) stay out: they are Glance's contract. SQLite only: nothing here depends on
the database engine.
"""

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from pyramid.registry import Registry
from pyramid.security import NO_PERMISSION_REQUIRED
from webtest import TestApp, TestResponse

from locquota.app import configure
from locquota.openapi.document import document
from tests.conftest import identity, random_id
from tests.fakes import scrub_settings

pytestmark = pytest.mark.engines("sqlite")

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
Operations = dict[tuple[str, str], str]  # (path pattern, METHOD) -> the permission its view requires


def is_glance_pattern(pattern: str) -> bool:
    """Glance's API, described by Glance: version discovery and everything under /v2."""
    return pattern in ("/", "/versions") or pattern.startswith("/v2/")


def served_routes(registry: Registry) -> set[str]:
    return {
        route["introspectable"]["pattern"]
        for route in registry.introspector.get_category("routes")
        if not is_glance_pattern(route["introspectable"]["pattern"])
    }


def served_operations(registry: Registry) -> Operations:
    """Every (pattern, method) a view answers outside Glance's API; a view taking any method shows as `*`."""
    introspector = registry.introspector
    patterns = {
        route["introspectable"]["name"]: route["introspectable"]["pattern"]
        for route in introspector.get_category("routes")
    }
    served: Operations = {}
    for view in introspector.get_category("views"):
        route_name = view["introspectable"]["route_name"]
        if route_name is None or is_glance_pattern(patterns[route_name]):
            continue  # exception and not-found views, and Glance's
        methods = view["introspectable"]["request_methods"] or ("*",)
        permission = next(
            (str(related["value"]) for related in view["related"] if related.category_name == "permissions"), ""
        )
        for method in {methods} if isinstance(methods, str) else set(methods) - {"HEAD"}:
            served[(patterns[route_name], method)] = permission
    return served


def documented_operations(doc: dict[str, Any]) -> Operations:
    """Every (path, method) of the document, with its policy rule (no security: no permission required)."""
    documented: Operations = {}
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                public = operation.get("security") == []
                documented[(path, method.upper())] = (
                    NO_PERMISSION_REQUIRED if public else operation.get("x-policy-rule", "")
                )
    return documented


def missing_and_extra(registry: Registry, doc: dict[str, Any]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    served, documented = served_operations(registry), documented_operations(doc)
    return set(served) - set(documented), set(documented) - set(served)


@pytest.fixture
def settings(settings):
    """Delayed delete, so that deleted images wait in the scrubber backlog for the populated answers below."""
    return scrub_settings(settings, delayed_delete=True)


@pytest.fixture
def registry(wsgi_app) -> Registry:
    return wsgi_app.registry


def test_document_is_valid_openapi_3_1():
    OpenAPIV31SpecValidator(document()).validate()


def test_every_route_outside_glance_has_a_path_in_the_document(registry):
    assert served_routes(registry) == set(document()["paths"])


def test_every_served_operation_is_documented_and_every_documented_one_served(registry):
    missing, extra = missing_and_extra(registry, document())

    assert missing == set(), "routes with no document entry"
    assert extra == set(), "document entries with no route"


def test_each_operation_names_the_permission_its_view_requires(registry):
    assert documented_operations(document()) == served_operations(registry)


def test_a_route_without_a_document_entry_is_found(settings):
    config = configure(settings)
    config.add_route("test.extra", "/v1/extra")
    config.add_view(lambda request: {}, route_name="test.extra", request_method="POST", renderer="json")
    wsgi = config.make_wsgi_app()

    missing, extra = missing_and_extra(wsgi.registry, document())

    wsgi.registry["locquota.engine"].dispose()
    assert (missing, extra) == ({("/v1/extra", "POST")}, set())


def test_a_document_entry_without_a_route_is_found(registry):
    doc = document()
    doc["paths"]["/v1/usage"]["delete"] = doc["paths"]["/v1/usage"]["get"]

    assert missing_and_extra(registry, doc) == (set(), {("/v1/usage", "DELETE")})


def test_the_document_leaves_glance_api_out():
    doc = document()

    assert [path for path in doc["paths"] if is_glance_pattern(path)] == []
    assert "/v2" in doc["info"]["description"]


def test_the_document_is_served_without_identity_under_tokens(make_app, settings):
    app = make_app({**settings, "locquota.auth_strategy": "tokens"})

    res = app.get("/v1/openapi.json", status=200)

    assert res.content_type == "application/json"
    assert res.json == document()


def test_the_document_takes_only_get(app):
    res = app.post("/v1/openapi.json", status=405)

    assert res.json["error"]["code"] == "method_not_allowed"


# What populated answers look like: schemathesis sees an empty database, so these fill one first.

DATA = b"bytes in a store " * 32
LIMITS_PATH = "/v1/tenants/{tenant_id}/limits"


def assert_conforms(res: TestResponse, path: str, method: str) -> None:
    """The response has a status the document lists for the operation, and a JSON body its schema accepts."""
    doc = document()
    response = doc["paths"][path][method]["responses"][str(res.status_int)]
    schema = {**response["content"][res.content_type]["schema"], "components": doc["components"]}
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(res.json)


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return identity("operators", "admin")


@pytest.fixture
def pending_images(app: TestApp, new_image, upload, tenant) -> list[str]:
    """Two images deleted with delayed_delete: their locations wait in the scrubber backlog."""
    image_ids = []
    for _ in range(2):
        image_id = new_image()["id"]
        upload(image_id, DATA)
        app.delete(f"/v2/images/{image_id}", headers=tenant, status=204)
        image_ids.append(image_id)
    return image_ids


def test_usage_with_data_in_a_store_conforms(app, pending_images, tenant, admin_headers):
    own = app.get("/v1/usage", headers=tenant, status=200)
    any_tenant = app.get("/v1/tenants/tenant-a/usage", headers=admin_headers, status=200)

    assert own.json["by_store"]["file"]["pending_delete"]["locations"] == 2
    assert_conforms(own, "/v1/usage", "get")
    assert_conforms(any_tenant, "/v1/tenants/{tenant_id}/usage", "get")


def test_limits_with_overrides_conform(app, admin_headers):
    path = "/v1/tenants/tenant-a/limits"
    changed = app.put_json(path, {"limits": {"image_size_total": 10, "image_count_total": None}}, headers=admin_headers)
    read = app.get(path, headers=admin_headers, status=200)

    assert read.json["overrides"] == {"image_size_total": 10}
    assert_conforms(changed, "/v1/tenants/{tenant_id}/limits", "put")
    assert_conforms(read, "/v1/tenants/{tenant_id}/limits", "get")


def test_backlog_page_with_a_next_link_conforms(app, pending_images, admin_headers):
    res = app.get("/v1/scrubber/backlog", {"limit": "1"}, headers=admin_headers, status=200)

    assert len(res.json["locations"]) == 1
    assert "next" in res.json
    assert_conforms(res, "/v1/scrubber/backlog", "get")


def test_restored_image_conforms(app, pending_images, admin_headers):
    res = app.post(f"/v1/images/{pending_images[0]}/restore", headers=admin_headers, status=200)

    assert res.json["status"] == "active"
    assert_conforms(res, "/v1/images/{image_id}/restore", "post")


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "path"),
    [
        ("PUT", "/v1/tenants/tenant-a/limits", b'{"limits": {"image_size_total": "x"}}', 400, LIMITS_PATH),
        ("PUT", "/v1/tenants/tenant-a/limits", b"{not json", 400, LIMITS_PATH),
        ("PUT", "/v1/tenants/%20tenant-a/limits", b'{"limits": {}}', 400, LIMITS_PATH),
        ("POST", f"/v1/images/{random_id()}/restore", b"", 404, "/v1/images/{image_id}/restore"),
        ("POST", "/v1/images/not-an-id/restore", b"", 404, "/v1/images/{image_id}/restore"),
        ("GET", "/v1/scrubber/backlog?marker=7", b"", 400, "/v1/scrubber/backlog"),
        ("GET", "/v1/scrubber/backlog?limit=0", b"", 400, "/v1/scrubber/backlog"),
    ],
)
def test_errors_conform(app, admin_headers, method, url, body, status, path):
    res = app.request(url, method=method, body=body, headers=admin_headers, status=status)

    assert_conforms(res, path, method.lower())


def test_a_member_on_an_operator_route_gets_the_documented_403(app, tenant):
    res = app.get("/v1/tenants/tenant-a/limits", headers=tenant, status=403)

    assert_conforms(res, "/v1/tenants/{tenant_id}/limits", "get")
