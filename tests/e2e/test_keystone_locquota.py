"""locquota behind its shipped pipeline against a real Keystone (issue 14).

The suite's Keystone (tests/keystone.py: projects p1, p2, service; users with member, reader, admin,
service and no role; registered and project limits) validates real tokens in keystonemiddleware's
auth_token, loaded from a PasteDeploy .ini shaped like production.ini (`pipeline = authtoken locquota`).
Tokens come from keystoneauth1 password logins, as python-glanceclient and openstacksdk get them, and
both clients are driven through the catalog against a real HTTP server.
"""

import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import glanceclient
import openstack
import pytest
import waitress
from keystoneauth1 import loading, session
from paste.deploy import loadapp
from waitress import wasyncore
from webtest import TestApp

from tests.functional.test_authorization_matrix import ROUTES, expected, prepare
from tests.keystone import KeystoneServer

IMAGE = {"name": "ks", "disk_format": "raw", "container_format": "bare"}
# The matrix's personas, as users of the real Keystone: (user, project); "bogus" and None as there.
PERSONAS = {
    "owner-member": ("p1-member", "p1"),
    "owner-reader": ("p1-reader", "p1"),
    "other-member": ("p2-member", "p2"),
    "admin": ("cloud-admin", "p1"),
    "service": ("nova", "service"),
    "no-token": None,
    "bogus-token": "bogus",
}


def write_pipeline_ini(path: Path, settings: dict[str, str], keystone: KeystoneServer, **extra: str) -> Path:
    authtoken = {**keystone.authtoken_options(), "delay_auth_decision": "true", "interface": "public"}
    app = {**settings, "locquota.auth_strategy": "keystone", **extra}
    lines = [
        "[pipeline:main]",
        "pipeline = authtoken locquota",
        "",
        "[filter:authtoken]",
        "use = egg:locquota#auth_token",
    ]
    lines += [f"{key} = {value}" for key, value in authtoken.items()]
    lines += ["", "[app:locquota]", "use = egg:locquota", *(f"{key} = {value}" for key, value in app.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def pipeline_ini(settings, keystone, tmp_path) -> Path:
    return write_pipeline_ini(tmp_path / "keystone.ini", settings, keystone, **{"locquota.delayed_delete": "true"})


@pytest.fixture
def app(pipeline_ini) -> TestApp:
    return TestApp(loadapp(f"config:{pipeline_ini}"))


def auth(keystone: KeystoneServer, user: str, project: str | None = None, *, system: bool = False) -> dict[str, str]:
    return {"X-Auth-Token": keystone.token(user, project, system=system)}


def test_real_tokens_act_as_their_project_with_their_roles(app, keystone):
    member, reader, other = auth(keystone, "p1-member"), auth(keystone, "p1-reader"), auth(keystone, "p2-member")

    image = app.post_json("/v2/images", IMAGE, headers=member, status=201).json
    refused = app.post_json("/v2/images", IMAGE, headers=reader, status=403).json

    assert image["owner"] == keystone.project_ids["p1"]
    assert refused["error"]["details"] == {"rule": "add_image"}
    assert [listed["id"] for listed in app.get("/v2/images", headers=reader).json["images"]] == [image["id"]]
    app.get(f"/v2/images/{image['id']}", headers=other, status=404)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Identity-Status": "Confirmed", "X-Project-Id": "p1", "X-Roles": "admin"},
        {"X-Auth-Token": "gAAAAAB" + "x" * 180},
        {"X-Auth-Token": "not-a-token", "X-Identity-Status": "Confirmed", "X-Roles": "admin", "X-Project-Id": "p1"},
        {},
    ],
    ids=["forged-headers", "bogus-token", "bogus-token-and-forged-headers", "nothing"],
)
def test_forged_identity_and_bogus_tokens_are_401_and_change_nothing(app, keystone, headers):
    assert app.get("/v1/scrubber/backlog", headers=headers, status=401).json["error"]["code"] == "unauthorized"
    app.put_json("/v1/tenants/p1/limits", {"limits": {"image_count_total": 1}}, headers=headers, status=401)
    app.post_json("/v2/images", IMAGE, headers=headers, status=401)
    admin = auth(keystone, "cloud-admin")
    assert app.get("/v1/tenants/p1/limits", headers=admin).json["overrides"] == {}


def test_discovery_and_health_need_no_token(app):
    app.get("/", status=300)
    app.get("/versions", status=200)
    app.get("/healthz", status=200)


@pytest.mark.parametrize(
    ("user", "project", "system"),
    [("cloud-admin", None, True), ("p1-norole", None, False)],
    ids=["system-scoped-admin", "unscoped"],
)
def test_tokens_not_scoped_to_a_project_get_no_tenant(app, keystone, user, project, system):
    headers = {"X-Auth-Token": keystone.token(user, project, system=system)}

    for path in ("/v2/images", "/v2/info/usage", "/v1/scrubber/backlog"):
        assert app.get(path, headers=headers, status=403).json["error"]["code"] == "forbidden"
    app.post_json("/v2/images", IMAGE, headers=headers, status=403)


@pytest.mark.parametrize("persona", list(PERSONAS))
def test_the_authorization_matrix_holds_for_real_keystone_tokens(app, keystone, persona):
    def headers_of(name: str) -> dict[str, str]:
        spec = PERSONAS[name]
        if spec is None:
            return {}
        if spec == "bogus":
            return {"X-Auth-Token": "gAAAAAB" + uuid.uuid4().hex * 4}
        return auth(keystone, *spec)

    owner, admin, caller = headers_of("owner-member"), headers_of("admin"), headers_of(persona)
    answers = {}
    for route in ROUTES:
        image = prepare(app, owner, admin, route.state)
        path = route.path.format(id=image).replace("/v1/tenants/p1/", f"/v1/tenants/{keystone.project_ids['p1']}/")
        headers = {**caller, **({"Content-Type": route.content_type} if route.content_type else {})}
        if route.body is None:
            response = app.request(path, method=route.method, headers=headers, expect_errors=True)
        elif isinstance(route.body, bytes):
            response = app.request(path, method=route.method, body=route.body, headers=headers, expect_errors=True)
        else:
            response = app.request(path, method=route.method, json=route.body, headers=headers, expect_errors=True)
        answers[route.name] = response.status_int

    assert answers == {route.name: expected(persona, route) for route in ROUTES}


def test_keystone_down_is_a_json_503_with_retry_after(app, keystone):
    headers = auth(keystone, "p1-member")  # never validated by auth_token yet: it must ask Keystone
    keystone.stop()
    try:
        down = app.get("/v2/images", headers=headers, status=503)
        open_route = app.get("/versions", status=200)
    finally:
        keystone.start()

    assert down.json["error"]["code"] == "keystone_unavailable"
    assert int(down.headers["Retry-After"]) > 0
    assert open_route.json["versions"]
    app.get("/v2/images", headers=headers, status=200)  # and back once Keystone is


# --- unified limits --------------------------------------------------------------------------------------------


@pytest.fixture
def limited_app(settings, keystone, tmp_path) -> TestApp:
    config = tmp_path / "oslo_limit.conf"
    config.write_text("[oslo_limit]\n" + "".join(f"{k} = {v}\n" for k, v in keystone.oslo_limit_options().items()))
    ini = write_pipeline_ini(
        tmp_path / "limited.ini",
        settings,
        keystone,
        **{"locquota.limits_source": "keystone", "locquota.unified_limits_config_file": str(config)},
    )
    return TestApp(loadapp(f"config:{ini}"))


def test_keystones_limits_are_shown_and_admitted_exactly(limited_app, keystone):
    p2, p1 = auth(keystone, "p2-member"), auth(keystone, "p1-member")

    usage = limited_app.get("/v2/info/usage", headers=p2).json["usage"]
    created = [limited_app.post_json("/v2/images", IMAGE, headers=p2, status="*").status_int for _ in range(4)]

    assert (usage["image_count_total"]["limit"], usage["image_size_total"]["limit"]) == (3, 5)  # p2's own
    assert limited_app.get("/v2/info/usage", headers=p1).json["usage"]["image_count_total"]["limit"] == 100
    assert created == [201, 201, 201, 413]
    admin = auth(keystone, "cloud-admin")
    refused = limited_app.put_json(
        f"/v1/tenants/{keystone.project_ids['p2']}/limits",
        {"limits": {"image_count_total": 9}},
        headers=admin,
        status=409,
    )
    assert refused.json["error"]["code"] == "limits_in_keystone"


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_keystones_limits_hold_under_concurrent_admissions(limited_app, keystone):
    p2 = auth(keystone, "p2-member")
    limited_app.get("/v2/info/usage", headers=p2)  # warm the limits cache: the race is on the ledger
    start = threading.Barrier(8)
    statuses = []

    def create() -> None:
        start.wait()
        statuses.append(limited_app.post_json("/v2/images", IMAGE, headers=p2, status="*").status_int)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] * 3 + [413] * 5
    assert limited_app.get("/v2/info/usage", headers=p2).json["usage"]["image_count_total"]["usage"] == 3


# --- the clients, with password logins and the catalog ------------------------------------------------------------


@pytest.fixture
def served(pipeline_ini, keystone) -> Iterator[str]:
    """The pipeline under waitress; the catalog's image endpoint points at it."""
    server = waitress.create_server(loadapp(f"config:{pipeline_ini}"), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url, previous = f"http://127.0.0.1:{server.effective_port}", keystone.glance_url
    keystone.set_glance_url(url)
    try:
        yield url
    finally:
        keystone.set_glance_url(previous)
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))
        except OSError:  # the trigger's pipe already closed (as tests/e2e/conftest.py's live_server meets it)
            wasyncore.close_all(server._map, ignore_all=True)
        thread.join(10)
        server.task_dispatcher.shutdown()


def test_glanceclient_with_a_password_login_finds_locquota_in_the_catalog(served, keystone):
    options = keystone.auth_options("p1-member")
    keystone_session = session.Session(auth=loading.get_plugin_loader("password").load_from_options(**options))
    glance = glanceclient.Client("2", session=keystone_session, region_name="RegionOne")

    image = glance.images.create(name="from-glanceclient", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(b"glance" * 100))

    assert glance.images.get(image.id).status == "active"
    assert image.id in [listed.id for listed in glance.images.list()]
    assert b"".join(glance.images.data(image.id)) == b"glance" * 100


def test_openstacksdk_with_a_password_login_finds_locquota_in_the_catalog(served, keystone):
    connection = openstack.connection.Connection(
        auth_type="password", auth=keystone.auth_options("p1-reader"), region_name="RegionOne"
    )

    assert list(connection.image.images()) == []
    with pytest.raises(openstack.exceptions.ForbiddenException):
        connection.image.create_image(name="reader", disk_format="raw", container_format="bare")
