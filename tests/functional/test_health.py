"""Liveness and readiness: a real closed port for a dead Redis or a dead database, never a mock."""

from collections.abc import Callable

from webtest import TestApp

from tests.conftest import closed_port_url

MakeApp = Callable[[dict[str, str]], TestApp]


def test_healthz_is_200(app):
    res = app.get("/healthz", status=200)

    assert res.json == {"status": "ok"}


def test_healthz_needs_no_identity_under_tokens(make_app, settings):
    app = make_app({**settings, "locquota.auth_strategy": "tokens"})

    res = app.get("/healthz", status=200)

    assert res.json == {"status": "ok"}


def test_readyz_with_database_and_cache_up(app):
    res = app.get("/readyz", status=200)

    assert res.json == {"status": "ok", "database": "up", "cache": "up"}


def test_readyz_needs_no_identity_under_tokens(make_app, settings):
    app = make_app({**settings, "locquota.auth_strategy": "tokens"})

    res = app.get("/readyz", status=200)

    assert res.json["database"] == "up"


def test_readyz_with_redis_down_is_ready_and_reports_the_cache_down(make_app, settings):
    app = make_app({**settings, "locquota.redis_url": closed_port_url("redis://", "0")})

    res = app.get("/readyz", status=200)

    assert res.json == {"status": "ok", "database": "up", "cache": "down"}


def test_readyz_without_redis_url_reports_the_cache_disabled(make_app, settings):
    app = make_app({**settings, "locquota.redis_url": ""})

    res = app.get("/readyz", status=200)

    assert res.json == {"status": "ok", "database": "up", "cache": "disabled"}


def test_readyz_with_database_down_is_503_with_retry_after(make_app, database_down_settings):
    app = make_app(database_down_settings)

    res = app.get("/readyz", status=503)

    assert res.json["error"]["code"] == "service_unavailable"
    assert res.json["error"]["details"] == {"database": "down"}
    assert int(res.headers["Retry-After"]) > 0


def test_healthz_with_database_down_is_still_200(make_app, database_down_settings):
    app = make_app(database_down_settings)
    app.get("/readyz", status=503)

    res = app.get("/healthz", status=200)

    assert res.json == {"status": "ok"}
