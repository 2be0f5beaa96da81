"""Identity strategies (keystone, tokens, noauth) through WebTest, tenancy, and what needs no identity."""

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session
from webtest import TestApp, TestResponse

from locquota.app import configure
from locquota.clock import FrozenClock
from locquota.db import make_engine
from locquota.settings import SettingsError
from locquota.tokens import TokenService
from tests.conftest import identity, random_id

IMAGE = {"name": "cirros", "disk_format": "qcow2", "container_format": "bare"}
STRATEGY_SETTINGS = {
    "keystone": {"locquota.auth_strategy": "keystone"},
    "tokens": {"locquota.auth_strategy": "tokens"},
    "noauth": {"locquota.auth_strategy": "noauth", "locquota.allow_insecure_noauth": "true"},
}

MakeApp = Callable[..., TestApp]


@pytest.fixture
def app_for(settings: dict[str, str], make_app: Callable[[dict[str, str]], TestApp]) -> MakeApp:
    """A TestApp for one strategy on the test database."""
    return lambda strategy, **extra: make_app({**settings, **STRATEGY_SETTINGS[strategy], **extra})


@pytest.fixture
def issue_token(settings: dict[str, str], clock: FrozenClock) -> Iterator[Callable[..., str]]:
    """Issue a token straight through TokenService on its own committed Session."""
    engine = make_engine(settings["locquota.database_url"])

    def issue(project: str, *roles: str, expires_at: datetime | None = None) -> str:
        with Session(engine) as session:
            token = TokenService(session, clock).issue(project, list(roles or ("member",)), "test", expires_at)
            session.commit()
        return token

    yield issue
    engine.dispose()


def assert_unauthorized(res: TestResponse) -> None:
    assert res.status_int == 401
    assert res.json["error"]["code"] == "unauthorized"


# keystone: identity only from what keystonemiddleware's auth_token left in the environ


@pytest.mark.parametrize(
    "headers",
    [
        identity("tenant-a", "admin"),
        {"X-Identity-Status": "Confirmed", "X-Project-Id": "tenant-a", "X-Roles": "admin", "X-Auth-Token": "x"},
        {"X-Project-Id": "tenant-a", "X-Roles": "member"},
        {"X-Identity-Status": "Invalid", "X-Project-Id": "tenant-a", "X-Roles": "member"},
    ],
    ids=["forged-confirmed-admin", "forged-with-a-token", "no-identity-status", "identity-status-invalid"],
)
def test_keystone_never_trusts_identity_headers_that_auth_token_did_not_set(app_for, headers):
    """Without auth_token in front nothing sets keystone.token_auth: forged headers are nobody."""
    app = app_for("keystone")

    assert_unauthorized(app.get("/v2/images", headers=headers, status=401))
    assert_unauthorized(app.get("/v1/scrubber/backlog", headers=headers, status=401))
    assert_unauthorized(app.put_json("/v1/tenants/t/limits", {"limits": {}}, headers=headers, status=401))


def test_keystone_ignores_a_locquota_token(app_for, issue_token):
    app = app_for("keystone")
    token = issue_token("tenant-a", "admin")

    assert_unauthorized(app.get("/v2/images", headers={"X-Auth-Token": token}, status=401))


# noauth: headers as auth_token would set them


def test_noauth_percent_encoded_roles_are_decoded(app_for):
    app = app_for("noauth")
    image = app.post_json("/v2/images", IMAGE, headers=identity("tenant-b"), status=201).json
    encoded_admin = {**identity("tenant-a"), "X-Roles": "member%2Cadmin"}

    res = app.get(f"/v2/images/{image['id']}", headers=encoded_admin, status=200)

    assert res.json["owner"] == "tenant-b"


def test_noauth_percent_encoded_roles_without_admin_stay_tenant_scoped(app_for):
    app = app_for("noauth")
    image = app.post_json("/v2/images", IMAGE, headers=identity("tenant-b"), status=201).json
    encoded_member = {**identity("tenant-a"), "X-Roles": "member%2Creader"}

    res = app.get(f"/v2/images/{image['id']}", headers=encoded_member, status=404)

    assert res.json["error"]["code"] == "image_not_found"


# tokens


def test_token_lists_only_its_projects_images(app_for, issue_token):
    app = app_for("tokens")
    mine, theirs = issue_token("project-p"), issue_token("project-q")
    own = app.post_json("/v2/images", IMAGE, headers={"X-Auth-Token": mine}, status=201).json
    app.post_json("/v2/images", IMAGE, headers={"X-Auth-Token": theirs}, status=201)

    res = app.get("/v2/images", headers={"X-Auth-Token": mine}, status=200)

    assert own["owner"] == "project-p"
    assert [(image["id"], image["owner"]) for image in res.json["images"]] == [(own["id"], "project-p")]


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Auth-Token": "not-a-token"}, {"X-Auth-Token": ""}, {"X-Auth-Token": "x" * 300}],
    ids=["none", "unknown", "empty", "oversized"],
)
def test_tokens_without_a_known_token_is_401(app_for, issue_token, headers):
    app = app_for("tokens")
    issue_token("project-p")

    assert_unauthorized(app.get("/v2/images", headers=headers, status=401))


def test_tokens_ignores_keystone_headers(app_for):
    app = app_for("tokens")

    assert_unauthorized(app.get("/v2/images", headers=identity("tenant-a", "admin"), status=401))


def test_expired_token_is_401(app_for, issue_token, clock):
    app = app_for("tokens")
    token = issue_token("project-p", expires_at=clock.now() + timedelta(hours=1))
    app.get("/v2/images", headers={"X-Auth-Token": token}, status=200)

    clock.advance(hours=1, seconds=1)

    assert_unauthorized(app.get("/v2/images", headers={"X-Auth-Token": token}, status=401))


def test_token_expiring_at_exactly_now_is_401(app_for, issue_token, clock):
    app = app_for("tokens")
    token = issue_token("project-p", expires_at=clock.now() + timedelta(minutes=5))

    clock.advance(minutes=5)

    assert_unauthorized(app.get("/v2/images", headers={"X-Auth-Token": token}, status=401))


def test_admin_token_sees_another_tenants_image(app_for, issue_token):
    app = app_for("tokens")
    image = app.post_json("/v2/images", IMAGE, headers={"X-Auth-Token": issue_token("project-q")}, status=201).json

    res = app.get(f"/v2/images/{image['id']}", headers={"X-Auth-Token": issue_token("ops", "admin")}, status=200)

    assert res.json["id"] == image["id"]
    assert res.json["owner"] == "project-q"


def test_member_token_gets_404_for_another_tenants_image(app_for, issue_token):
    app = app_for("tokens")
    image = app.post_json("/v2/images", IMAGE, headers={"X-Auth-Token": issue_token("project-q")}, status=201).json

    res = app.get(f"/v2/images/{image['id']}", headers={"X-Auth-Token": issue_token("project-p")}, status=404)

    assert res.json["error"]["code"] == "image_not_found"


# noauth


def test_noauth_refuses_to_start_without_explicit_permission(settings):
    with pytest.raises(SettingsError, match=re.escape("locquota.allow_insecure_noauth")):
        configure({**settings, "locquota.auth_strategy": "noauth", "locquota.allow_insecure_noauth": "false"})


def test_noauth_identity_comes_from_headers(app_for):
    app = app_for("noauth")

    headers = {"X-Project-Id": "dev-project", "X-Roles": "member"}
    created = app.post_json("/v2/images", IMAGE, headers=headers, status=201).json
    listed = app.get("/v2/images", headers=headers, status=200).json

    assert created["owner"] == "dev-project"
    assert [image["id"] for image in listed["images"]] == [created["id"]]


def test_noauth_without_a_role_is_authenticated_but_may_do_nothing(app_for):
    """Glance's secure RBAC: no role, no rule passes (403, not 401: the caller is known)."""
    app = app_for("noauth")
    headers = {"X-Project-Id": "dev-project"}

    assert app.post_json("/v2/images", IMAGE, headers=headers, status=403).json["error"]["code"] == "forbidden"
    assert app.get("/v2/images", headers=headers, status=403).json["error"]["details"] == {"rule": "get_images"}


def test_noauth_roles_header_gives_admin(app_for):
    app = app_for("noauth")
    image = app.post_json("/v2/images", IMAGE, headers=identity("dev-project"), status=201).json

    as_member = app.get(f"/v2/images/{image['id']}", headers={"X-Project-Id": "other", "X-Roles": "member"}, status="*")
    as_admin = app.get(f"/v2/images/{image['id']}", headers={"X-Project-Id": "other", "X-Roles": "admin"}, status="*")

    assert as_member.status_int == 404
    assert as_admin.status_int == 200


def test_noauth_without_project_header_is_401(app_for):
    app = app_for("noauth")

    assert_unauthorized(app.get("/v2/images", headers={"X-Roles": "admin"}, status=401))


# tenancy


def test_another_tenants_image_is_indistinguishable_from_a_missing_one(app_for):
    app = app_for("noauth")
    image = app.post_json("/v2/images", IMAGE, headers=identity("tenant-b"), status=201).json

    other = app.get(f"/v2/images/{image['id']}", headers=identity("tenant-a"), status="*")
    missing = app.get(f"/v2/images/{random_id()}", headers=identity("tenant-a"), status="*")

    assert other.status_int == missing.status_int == 404
    assert other.json["error"]["code"] == missing.json["error"]["code"] == "image_not_found"


def test_another_tenants_image_is_not_listed(app_for):
    app = app_for("noauth")
    app.post_json("/v2/images", IMAGE, headers=identity("tenant-b"), status=201)

    res = app.get("/v2/images", headers=identity("tenant-a"), status=200)

    assert res.json["images"] == []


def test_another_tenants_image_cannot_be_deleted(app_for):
    app = app_for("noauth")
    image = app.post_json("/v2/images", IMAGE, headers=identity("tenant-b"), status=201).json

    res = app.delete(f"/v2/images/{image['id']}", headers=identity("tenant-a"), status=404)

    assert res.json["error"]["code"] == "image_not_found"
    app.get(f"/v2/images/{image['id']}", headers=identity("tenant-b"), status=200)


def test_admin_sees_another_tenants_image(app_for):
    app = app_for("noauth")
    image = app.post_json("/v2/images", IMAGE, headers=identity("tenant-b"), status=201).json

    res = app.get(f"/v2/images/{image['id']}", headers=identity("operators", "admin"), status=200)

    assert res.json["owner"] == "tenant-b"


# what needs no identity, and what does


def assert_version_document(body: dict[str, object]) -> None:
    versions = body["versions"]
    assert isinstance(versions, list)
    current = [version for version in versions if version["status"] == "CURRENT"]
    assert [version["id"] for version in current] == ["v2.17"]
    assert {version["status"] for version in versions} == {"CURRENT", "SUPPORTED"}
    assert "v2.0" in {version["id"] for version in versions}
    for version in versions:
        assert [link["rel"] for link in version["links"]] == ["self"]
        assert version["links"][0]["href"].endswith("/v2/")


@pytest.mark.parametrize("strategy", ["keystone", "tokens", "noauth"])
def test_version_root_needs_no_identity(app_for, strategy):
    app = app_for(strategy)

    res = app.get("/", status=300)

    assert_version_document(res.json)


@pytest.mark.parametrize("strategy", ["keystone", "tokens", "noauth"])
def test_version_list_needs_no_identity(app_for, strategy):
    app = app_for(strategy)

    res = app.get("/versions", status=200)

    assert_version_document(res.json)


def test_version_links_point_at_the_host_asked(app_for):
    app = app_for("keystone")

    res = app.get("/versions", extra_environ={"HTTP_HOST": "images.example.org:9292"}, status=200)

    assert res.json["versions"][0]["links"][0]["href"] == "http://images.example.org:9292/v2/"


@pytest.mark.parametrize("path", ["/v2/schemas/image", "/v2/schemas/images"])
def test_schemas_need_identity(app_for, path):
    app = app_for("noauth")

    assert_unauthorized(app.get(path, status=401))
    schema = app.get(path, headers=identity("tenant-a"), status=200).json

    assert "properties" in schema


def test_unauthenticated_401_carries_www_authenticate(app_for):
    app = app_for("tokens")

    res = app.get("/v2/images", status=401)

    assert "WWW-Authenticate" in res.headers
