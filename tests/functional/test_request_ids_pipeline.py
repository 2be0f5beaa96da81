"""The request_id paste filter in front of keystonemiddleware's auth_token: auth_token's own 401s carry the id.

The pipeline is loaded by PasteDeploy as gunicorn --paste loads production.ini; a request without a token
is refused by auth_token itself (delay_auth_decision = false), before the app, with no Keystone to ask.
"""

import configparser
import logging
import uuid
from importlib.metadata import distribution
from pathlib import Path

import pytest
from paste.deploy import loadapp
from pyramid.config import global_registries
from webtest import TestApp

from locquota.request_ids import filter_factory

pytestmark = pytest.mark.engines("sqlite")

REPOSITORY = Path(__file__).resolve().parents[2]
PIPELINE = """
[pipeline:main]
pipeline = request_id authtoken locquota

[filter:request_id]
paste.filter_factory = locquota.request_ids:filter_factory

[filter:authtoken]
use = egg:locquota#auth_token
delay_auth_decision = false
www_authenticate_uri = http://127.0.0.1:1
auth_url = http://127.0.0.1:1

[app:locquota]
use = egg:locquota
"""


@pytest.fixture
def pipeline(settings, tmp_path) -> TestApp:
    ini = tmp_path / "pipeline.ini"
    keystone = {**settings, "locquota.auth_strategy": "keystone"}
    ini.write_text(PIPELINE + "".join(f"{key} = {value}\n" for key, value in keystone.items()))
    app = loadapp(f"config:{ini}")
    registry = global_registries.last  # the app's, behind request_id and auth_token
    yield TestApp(app)
    registry["locquota.engine"].dispose()


def test_auth_tokens_own_401_carries_the_callers_id(pipeline):
    mine = f"req-{uuid.uuid4()}"

    res = pipeline.get("/v2/images", headers={"X-Openstack-Request-Id": mine}, status=401)

    assert "WWW-Authenticate" in res.headers  # auth_token's answer, not the app's
    assert res.headers.getall("x-openstack-request-id") == [mine]


def test_auth_tokens_own_401_gets_one_access_line(pipeline, caplog):
    caplog.set_level(logging.INFO, logger="locquota.access")

    res = pipeline.get("/v2/images", status=401)

    [line] = [record for record in caplog.records if record.name == "locquota.access"]
    assert (line.status, line.request_id) == (401, res.headers["x-openstack-request-id"])


def test_the_shipped_production_pipeline_puts_the_request_id_filter_first():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPOSITORY / "production.ini")

    first, *_ = parser.get("pipeline:main", "pipeline").split()

    assert parser.get(f"filter:{first}", "use") == "egg:locquota#request_id"


def test_the_request_id_entry_point_is_the_filter_factory():
    """What `use = egg:locquota#request_id` loads (pyproject's paste.filter_factory entry points)."""
    [point] = distribution("locquota").entry_points.select(group="paste.filter_factory", name="request_id")

    assert point.load() is filter_factory
