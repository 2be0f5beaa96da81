"""The access log (issue 20): one INFO line per request on `locquota.access`, written when the server closes
the body (after a streamed download's last byte, or when the client went away), never a credential.

Through the app as configure() builds it; a download is read straight through WSGI so the test decides when
the "server" closes the body. SQLite only: nothing here depends on the engine.
"""

import io
import json
import logging
import uuid
from datetime import datetime

import pytest
from webob import Request

from locquota.logs import JsonFormatter

pytestmark = pytest.mark.engines("sqlite")

DATA = bytes(range(256)) * 64  # 16 KiB: several of the store's 4 KiB chunks


@pytest.fixture
def access(caplog):
    """The access lines logged so far for one method and path (path and query as logged)."""
    caplog.set_level(logging.INFO, logger="locquota.access")

    def lines(path: str, method: str = "GET") -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.name == "locquota.access" and (record.method, record.path) == (method, path)
        ]

    return lines


def offered_id() -> str:
    return f"req-{uuid.uuid4()}"


def test_a_request_gets_one_line_with_method_path_status_bytes_and_request_id(app, tenant, access):
    mine = offered_id()

    res = app.get("/v2/images?limit=5", headers={**tenant, "X-Openstack-Request-Id": mine}, status=200)

    [line] = access("/v2/images?limit=5")
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith(f"GET /v2/images?limit=5 200 {len(res.body)}B ")
    assert (line.method, line.status, line.bytes, line.request_id) == ("GET", 200, len(res.body), mine)
    assert line.duration_ms >= 0
    assert line.complete


def test_the_line_names_the_callers_project(app, tenant, access):
    app.get("/v2/images", headers=tenant, status=200)

    [line] = access("/v2/images")
    assert line.project_id == "tenant-a"
    assert "project=tenant-a" in line.getMessage()


def test_a_401_is_logged_without_a_project(make_app, settings, access):
    app = make_app({**settings, "locquota.auth_strategy": "tokens"})

    res = app.get("/v2/images", headers={"X-Auth-Token": "no-such-token"}, status=401)

    [line] = access("/v2/images")
    assert (line.status, line.project_id, line.request_id) == (401, None, res.headers["x-openstack-request-id"])
    assert "project=-" in line.getMessage()


def test_credential_like_query_values_and_headers_are_never_logged(app, tenant, access):
    query = "limit=1&token=s3cr3t&X-Amz-Signature=f00d&temp_url_sig=beef&password=hunter2&sort_key=name"

    app.get(f"/v2/images?{query}", headers={**tenant, "X-Auth-Token": "tok-in-a-header"}, status=200)

    logged = "/v2/images?limit=1&token=***&X-Amz-Signature=***&temp_url_sig=***&password=***&sort_key=name"
    [line] = access(logged)
    text = line.getMessage() + repr(vars(line))
    assert all(secret not in text for secret in ("s3cr3t", "f00d", "beef", "hunter2", "tok-in-a-header"))


def test_control_characters_in_a_path_are_escaped_not_written(app, tenant, access):
    app.get("/v2/images/%0D%0A2026-01-01%20INFO%20forged", headers=tenant, status=404)

    [line] = access("/v2/images/%0D%0A2026-01-01%20INFO%20forged")
    assert "\r" not in line.getMessage()
    assert "\n" not in line.getMessage()


def _start_download(wsgi_app, tenant, image_id):
    """Call the app as a WSGI server would, without reading the body yet."""
    environ = Request.blank(f"/v2/images/{image_id}/file", headers=tenant).environ
    statuses: list[str] = []
    body = wsgi_app(environ, lambda status, _headers, _exc_info=None: statuses.append(status))
    assert statuses == ["200 OK"]
    return body


def test_a_streamed_download_is_logged_after_its_last_byte(wsgi_app, tenant, new_image, upload, access):
    image_id = new_image()["id"]
    upload(image_id, DATA)
    path = f"/v2/images/{image_id}/file"
    body = _start_download(wsgi_app, tenant, image_id)

    read = b"".join(body)
    logged_before_close = access(path)
    body.close()

    assert read == DATA
    assert logged_before_close == []
    [line] = access(path)
    assert (line.status, line.bytes, line.complete) == (200, len(DATA), True)


def test_a_download_the_client_left_is_logged_when_the_server_closes_it(wsgi_app, tenant, new_image, upload, access):
    image_id = new_image()["id"]
    upload(image_id, DATA)
    body = _start_download(wsgi_app, tenant, image_id)

    first = next(iter(body))
    body.close()  # what a server does when the client went away mid-body

    [line] = access(f"/v2/images/{image_id}/file")
    assert 0 < len(first) < len(DATA)
    assert (line.status, line.bytes, line.complete) == (200, len(first), False)
    assert line.getMessage().endswith("ended early")


def test_the_json_formatter_writes_the_access_line_as_one_json_object(app, tenant, access):
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("locquota.access")
    logger.addHandler(handler)
    mine = offered_id()
    try:
        answer = app.get("/healthz", headers={"X-Openstack-Request-Id": mine}, status=200)
    finally:
        logger.removeHandler(handler)

    [entry] = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
    assert (entry["level"], entry["logger"], entry["request_id"]) == ("INFO", "locquota.access", mine)
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/healthz", 200)
    assert entry["message"].startswith(f"GET /healthz 200 {len(answer.body)}B ")
