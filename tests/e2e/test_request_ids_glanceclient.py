"""python-glanceclient sees locquota's request ids (issue 20), as it sees Glance's: on every call's result
(`request_ids`), the id it sent as global_request_id coming back, and in the `glance --debug` output.

Against the real waitress server of tests/e2e/conftest.py, on SQLite (the id does not depend on the engine).
"""

import io
import re
import uuid

import glanceclient
import pytest

from tests.e2e.conftest import LiveServer
from tests.e2e.test_glance_cli import run_glance

pytestmark = pytest.mark.engines("sqlite")

GENERATED = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
DATA = bytes(range(256)) * 40


def test_the_id_glanceclient_sends_comes_back_on_every_result(live_url: str, token: str):
    mine = f"req-{uuid.uuid4()}"
    glance = glanceclient.Client(endpoint=f"{live_url}/v2", token=token, global_request_id=mine)

    created = glance.images.create(name="traced", disk_format="raw", container_format="bare")
    uploaded = glance.images.upload(created.id, io.BytesIO(DATA))
    data = glance.images.data(created.id)
    read = b"".join(data)
    shown = glance.images.get(created.id)

    assert read == DATA
    assert [created.request_ids, uploaded.request_ids, data.request_ids, shown.request_ids] == [[mine]] * 4


def test_without_one_each_call_gets_a_new_id(live_url: str, token: str):
    glance = glanceclient.Client(endpoint=f"{live_url}/v2", token=token)
    created = glance.images.create(name="untraced", disk_format="raw", container_format="bare")

    [first] = glance.images.get(created.id).request_ids
    [second] = glance.images.get(created.id).request_ids

    assert GENERATED.fullmatch(first)
    assert GENERATED.fullmatch(second)
    assert first != second


def test_glance_debug_output_shows_the_request_id(live_server: LiveServer, token: str):
    finished = run_glance(live_server.url, token, "--debug", "image-list")

    assert finished.returncode == 0, finished.stderr
    # glanceclient logs each line twice (its own handler and the root's): the same id both times.
    [used] = set(re.findall(r"GET call to image for \S+/v2/images\S* used request id (\S+)", finished.stderr))
    [answered] = set(re.findall(r"x-openstack-request-id: (\S+)", finished.stderr, re.IGNORECASE))
    assert GENERATED.fullmatch(used)
    assert used == answered
