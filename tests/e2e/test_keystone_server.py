"""The real Keystone of tests/keystone.py gives each test user the tokens, roles and limits the suite relies on.

Also the two ways locquota meets it: oslo.limit reading the glance service's limits as the locquota service
user, and keystonemiddleware's auth_token (in a PasteDeploy pipeline) turning tokens into identity headers.
"""

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from keystoneauth1 import exceptions as ksa_exceptions
from keystoneauth1 import loading as ksa_loading
from oslo_config import cfg
from oslo_limit import exception as limit_exceptions
from oslo_limit import limit
from paste.deploy import loadapp
from webtest import TestApp

from tests.keystone import REGISTERED_LIMITS, KeystoneServer

IDENTITY_HEADERS = (
    "X_IDENTITY_STATUS",
    "X_PROJECT_ID",
    "X_PROJECT_NAME",
    "X_ROLES",
    "X_USER_NAME",
    "OPENSTACK_SYSTEM_SCOPE",
)


def role_names(token: dict[str, Any]) -> set[str]:
    return {role["name"] for role in token.get("roles", [])}


@pytest.mark.parametrize(
    ("user", "project", "roles"),
    [
        ("p1-member", "p1", {"member", "reader"}),
        ("p1-reader", "p1", {"reader"}),
        ("p2-member", "p2", {"member", "reader"}),
        ("cloud-admin", "p1", {"admin", "manager", "member", "reader"}),
        ("nova", "service", {"service"}),
        ("locquota", "service", {"service"}),
    ],
)
def test_project_token_carries_the_users_roles_on_its_project(keystone, user, project, roles):
    token = keystone.validate(keystone.token(user, project))
    assert token["user"]["name"] == user
    assert token["project"]["id"] == keystone.project_ids[project]
    assert role_names(token) == roles


@pytest.mark.parametrize(("user", "roles"), [("cloud-admin", {"admin", "manager", "member", "reader"}),
                                             ("locquota", {"reader"})])  # fmt: skip
def test_system_token_carries_the_users_system_roles(keystone, user, roles):
    token = keystone.validate(keystone.token(user, system=True))
    assert token["system"] == {"all": True}
    assert "project" not in token
    assert role_names(token) == roles


@pytest.mark.parametrize(
    ("user", "project", "system"),
    [("p1-norole", "p1", False), ("p1-member", "p2", False), ("p1-reader", "p2", False), ("p1-member", None, True),
     ("nova", None, True), ("p1-member", "no-such-project", False)],
)  # fmt: skip
def test_keystone_refuses_a_scope_the_user_has_no_role_on(keystone, user, project, system):
    with pytest.raises(ksa_exceptions.Unauthorized):
        keystone.token(user, project, system=system)


def test_p1_norole_gets_an_unscoped_token_only(keystone):
    token = keystone.validate(keystone.token("p1-norole"))
    assert token["user"]["name"] == "p1-norole"
    assert "project" not in token
    assert "system" not in token
    assert role_names(token) == set()


def test_another_users_password_is_refused(keystone):
    options = {**keystone.auth_options("p1-member"), "password": keystone.password("p1-reader")}
    auth = ksa_loading.get_plugin_loader("password").load_from_options(**options)
    with pytest.raises(ksa_exceptions.Unauthorized):
        auth.get_token(keystone.session("p1-reader"))


def test_auth_options_log_in_as_the_user(keystone):
    options = keystone.auth_options("p2-member")
    auth = ksa_loading.get_plugin_loader("password").load_from_options(**options)
    token = keystone.validate(auth.get_token(keystone.session("p2-member")))
    assert token["project"]["id"] == keystone.project_ids["p2"]


def image_endpoint(keystone: KeystoneServer) -> str:
    session = keystone.session("p1-member")
    catalog = session.auth.get_access(session).service_catalog
    return catalog.url_for(service_type="image", interface="public", region_name="RegionOne")


def test_glance_is_in_the_catalog_with_its_public_endpoint(keystone):
    assert image_endpoint(keystone) == "http://127.0.0.1:9292"


def test_set_glance_url_moves_the_image_endpoint_for_new_tokens(keystone):
    try:
        keystone.set_glance_url("http://127.0.0.1:1234")
        moved = image_endpoint(keystone)
    finally:
        keystone.set_glance_url("http://127.0.0.1:9292")
    assert moved == "http://127.0.0.1:1234"
    assert image_endpoint(keystone) == "http://127.0.0.1:9292"


def test_locquota_reads_registered_and_project_limits_with_a_system_token(keystone):
    session = keystone.session("locquota", system=True)
    service, p2 = keystone.glance_service_id, keystone.project_ids["p2"]
    registered = session.get(f"{keystone.url}/registered_limits?service_id={service}").json()["registered_limits"]
    limits = session.get(f"{keystone.url}/limits?service_id={service}&project_id={p2}").json()["limits"]
    assert {item["resource_name"]: item["default_limit"] for item in registered} == REGISTERED_LIMITS
    assert {item["resource_name"]: item["resource_limit"] for item in limits} == {
        "image_size_total": 5,
        "image_count_total": 3,
    }


@pytest.fixture
def oslo_limit_config(keystone: KeystoneServer) -> Iterator[dict[str, str]]:
    """oslo.limit configured (in the process-wide cfg.CONF, as it reads it) with locquota's service user."""
    conf = cfg.CONF
    conf.register_opts(ksa_loading.get_auth_plugin_conf_options("password"), group="oslo_limit")
    options = keystone.oslo_limit_options()
    for name, value in options.items():
        conf.set_override(name, value, group="oslo_limit")
    # oslo.limit keeps the first Keystone connection it makes for the life of the process.
    limit._SDK_CONNECTION = None
    yield options
    limit._SDK_CONNECTION = None
    for name in options:
        conf.clear_override(name, group="oslo_limit")


def no_usage(project_id: str, resource_names: list[str]) -> dict[str, int]:
    return dict.fromkeys(resource_names, 0)


@pytest.mark.parametrize(
    ("project", "expected"),
    [
        ("p2", {"image_size_total": 5, "image_count_total": 3, "image_count_uploading": 10, "image_stage_total": 1000}),
        ("p1", REGISTERED_LIMITS),
    ],
)
def test_oslo_limit_gives_project_overrides_and_registered_defaults(keystone, oslo_limit_config, project, expected):
    enforcer = limit.Enforcer(no_usage)
    limits = enforcer.get_project_limits(keystone.project_ids[project], list(REGISTERED_LIMITS))
    assert dict(limits) == expected


def test_oslo_limit_refuses_a_delta_past_p2s_image_count(keystone, oslo_limit_config):
    def usage(project_id: str, resource_names: list[str]) -> dict[str, int]:
        return {name: 3 if name == "image_count_total" else 0 for name in resource_names}

    with pytest.raises(limit_exceptions.ProjectOverLimit) as refused:
        limit.Enforcer(usage).enforce(keystone.project_ids["p2"], {"image_count_total": 1})
    [over] = refused.value.over_limit_info_list
    assert (over.resource_name, over.limit, over.current_usage, over.delta) == ("image_count_total", 3, 3, 1)


def test_keystone_refuses_to_change_a_registered_limit_a_project_overrides(keystone):
    with pytest.raises(ksa_exceptions.Forbidden):
        keystone.set_registered_limit("image_size_total", 50)  # p2 has its own image_size_total


def test_changed_limits_reach_oslo_limit_and_reset_restores_them(keystone, oslo_limit_config):
    names = ["image_count_total", "image_size_total"]

    def limits_now() -> dict[str, dict[str, int]]:
        enforcer = limit.Enforcer(no_usage)
        return {name: dict(enforcer.get_project_limits(keystone.project_ids[name], names)) for name in ("p1", "p2")}

    try:
        keystone.set_project_limit("p1", "image_count_total", 7)
        keystone.set_project_limit("p2", "image_size_total", None)
        keystone.set_registered_limit("image_size_total", 50)
        changed = limits_now()
    finally:
        keystone.reset_limits()
    assert changed == {
        "p1": {"image_count_total": 7, "image_size_total": 50},
        "p2": {"image_count_total": 3, "image_size_total": 50},
    }
    assert limits_now() == {
        "p1": {"image_count_total": 100, "image_size_total": 1000},
        "p2": {"image_count_total": 3, "image_size_total": 5},
    }


def echo_identity(global_conf: dict[str, str], **local_conf: str) -> Callable[..., Iterable[bytes]]:
    """A PasteDeploy app that answers with the identity headers auth_token put in front of it."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = json.dumps({name: environ.get(f"HTTP_{name}") for name in IDENTITY_HEADERS}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.fixture
def authtoken_app(keystone: KeystoneServer, tmp_path: Path) -> TestApp:
    """auth_token in front of echo_identity, configured the way a Glance-style api-paste .ini does it."""
    options = "\n".join(f"{name} = {value}" for name, value in keystone.authtoken_options().items())
    ini = tmp_path / "paste.ini"
    ini.write_text(
        "[pipeline:main]\npipeline = authtoken echo\n\n"
        f"[filter:authtoken]\npaste.filter_factory = keystonemiddleware.auth_token:filter_factory\n{options}\n\n"
        f"[app:echo]\npaste.app_factory = {__name__}:echo_identity\n"
    )
    return TestApp(loadapp(f"config:{ini}"))


@pytest.mark.parametrize(
    ("user", "project", "roles"),
    [("p1-member", "p1", {"member", "reader"}), ("p1-reader", "p1", {"reader"}),
     ("p2-member", "p2", {"member", "reader"})],
)  # fmt: skip
def test_auth_token_passes_the_tokens_project_and_roles(keystone, authtoken_app, user, project, roles):
    seen = authtoken_app.get("/", headers={"X-Auth-Token": keystone.token(user)}).json
    assert seen["X_IDENTITY_STATUS"] == "Confirmed"
    assert seen["X_PROJECT_ID"] == keystone.project_ids[project]
    assert seen["X_USER_NAME"] == user
    assert set(seen["X_ROLES"].split(",")) == roles


def test_auth_token_passes_a_system_token_without_a_project(keystone, authtoken_app):
    seen = authtoken_app.get("/", headers={"X-Auth-Token": keystone.token("cloud-admin", system=True)}).json
    assert seen["OPENSTACK_SYSTEM_SCOPE"] == "all"
    assert seen["X_PROJECT_ID"] is None
    assert "admin" in seen["X_ROLES"].split(",")


def test_auth_token_passes_an_unscoped_token_without_project_or_roles(keystone, authtoken_app):
    seen = authtoken_app.get("/", headers={"X-Auth-Token": keystone.token("p1-norole")}).json
    assert seen["X_IDENTITY_STATUS"] == "Confirmed"
    assert seen["X_PROJECT_ID"] is None
    assert seen["X_ROLES"] == ""


@pytest.mark.parametrize("headers", [{}, {"X-Auth-Token": "not-a-token"}, {"X-Auth-Token": "gAAAAAB" + "x" * 180}])
def test_auth_token_refuses_a_missing_or_bogus_token(keystone, authtoken_app, headers):
    refused = authtoken_app.get("/", headers=headers, status=401)
    assert refused.headers["WWW-Authenticate"] == f'Keystone uri="{keystone.base_url}"'


def test_keystone_down_then_up_again_keeps_its_tokens(keystone):
    token = keystone.token("p1-member")
    keystone.stop()
    try:
        with pytest.raises(ksa_exceptions.ConnectFailure):
            keystone.token("p1-member")
    finally:
        keystone.start()
    assert keystone.validate(token)["project"]["id"] == keystone.project_ids["p1"]
