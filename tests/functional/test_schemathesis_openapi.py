"""schemathesis against the WSGI app, generating requests from the app's own OpenAPI document.

Every check schemathesis has runs (no 5xx, status codes, content types, headers and bodies as documented,
invalid input refused, a call without the token refused, ...) except one, for the reason given below.
The caller holds a `tokens` strategy token, as an admin (the operator routes answer 200 as well as their
errors) or as a member (they answer 403); schemathesis also sends tokens of its own, which are 401.

SQLite only (the embedded default): the contract is the same on every engine, and one engine keeps the
module within a minute on two busy cores. Each operation gets one app and database for all its examples.
"""

import hypothesis
import pytest
import schemathesis
from pyramid.router import Router
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy.orm import Session

from locquota.clock import FrozenClock
from locquota.db import make_engine
from locquota.openapi.document import document
from locquota.tokens import TokenService

pytestmark = pytest.mark.engines("sqlite")

EXCLUDED_CHECKS = [
    # A schema-valid request may still be refused: a backlog `marker` that names no location in the backlog
    # is 400 invalid_marker (as Glance's markers), and a tenant id must be printable, which JSON Schema's
    # regular expressions cannot say.
    positive_data_acceptance,
]

# Loaded from the document the app serves (test_openapi.py checks that they are the same), not with
# schemathesis.pytest.from_fixture: its lazy loader reads `request.node._nodeid`, which pytest 9 removed.
schema = schemathesis.openapi.from_dict(document())


@pytest.fixture
def settings_under_tokens(settings: dict[str, str]) -> dict[str, str]:
    return {**settings, "locquota.auth_strategy": "tokens"}


@pytest.fixture(params=["admin", "member"])
def token(request: pytest.FixtureRequest, settings_under_tokens: dict[str, str], clock: FrozenClock) -> str:
    engine = make_engine(settings_under_tokens["locquota.database_url"])
    with Session(engine) as session:
        issued = TokenService(session, clock).issue("operators", [request.param], "schemathesis")
        session.commit()
    engine.dispose()
    return issued


@pytest.fixture
def api(settings_under_tokens: dict[str, str], build_wsgi_app) -> Router:
    return build_wsgi_app(settings_under_tokens)


@schema.parametrize()
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    # One app and database per operation, shared by its examples on purpose.
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)
def test_api_answers_as_documented(case, api, token):
    case.operation.schema.app = api  # the checks that send requests of their own (ignored_auth) use it too
    case.call_and_validate(app=api, headers={"X-Auth-Token": token}, excluded_checks=EXCLUDED_CHECKS)
