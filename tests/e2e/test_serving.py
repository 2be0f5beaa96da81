"""Serving that fits uploads of any length (issue 13): the shipped gunicorn configuration, for real.

gunicorn runs with deploy/gunicorn.conf.py (gthread workers) and a worker timeout far shorter than the
upload, one worker with few threads, and a short client idle timeout. The client paces its upload to
last longer than the worker timeout (the pauses are the workload, not a synchronisation); stalled
clients are real sockets that stop sending. Every wait is bounded by a socket timeout that fails the test.
"""

import http.client
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import gunicorn

REPOSITORY = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT = 2  # seconds: the master's heartbeat deadline for a worker
IDLE_SECONDS = 1  # locquota.client_idle_timeout_seconds in these tests
THREADS = 4
ANSWER_WITHIN = 15  # a bound on every answer awaited here; reaching it fails the test
CHUNK = b"x" * 4096
CHUNKS, PAUSE = 12, 0.4  # 12 chunks 0.4 s apart: about 4.8 s, more than twice the worker timeout


@pytest.fixture
def live_settings(settings: dict[str, str]) -> dict[str, str]:
    return {
        **settings,
        "locquota.auth_strategy": "tokens",
        "locquota.client_idle_timeout_seconds": str(IDLE_SECONDS),
    }


@pytest.fixture
def server(deployment_ini: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    config = str(REPOSITORY / "deploy" / "gunicorn.conf.py")
    environment = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus-multiproc"),
        "LOCQUOTA_WORKERS": "1",
        "LOCQUOTA_THREADS": str(THREADS),
        "LOCQUOTA_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
    }
    with gunicorn(deployment_ini, tmp_path, "--config", config, env=environment) as address:
        yield address


def request(address, method: str, path: str, token: str | None = None, body: bytes | None = None):
    connection = http.client.HTTPConnection(*address, timeout=ANSWER_WITHIN)
    try:
        headers = {"X-Auth-Token": token} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def create_image(address, token: str) -> str:
    body = json.dumps({"name": "slow", "disk_format": "raw", "container_format": "bare"}).encode()
    status, answer = request(address, "POST", "/v2/images", token, body)
    assert status == 201, answer
    return json.loads(answer)["id"]


def paced_chunks() -> Iterator[bytes]:
    for _ in range(CHUNKS):
        yield CHUNK
        time.sleep(PAUSE)  # the client's pace: the workload under test


def test_an_upload_longer_than_the_worker_timeout_succeeds_while_bytes_flow(server, token):
    image_id = create_image(server, token)
    connection = http.client.HTTPConnection(*server, timeout=ANSWER_WITHIN)
    started = time.monotonic()
    try:
        connection.request(
            "PUT",
            f"/v2/images/{image_id}/file",
            body=paced_chunks(),
            headers={"X-Auth-Token": token, "Content-Type": "application/octet-stream"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        status, answer = response.status, response.read()
    finally:
        connection.close()

    assert time.monotonic() - started > 2 * WORKER_TIMEOUT  # it did outlive the worker timeout
    assert status == 204, answer
    status, answer = request(server, "GET", f"/v2/images/{image_id}", token)
    assert (status, json.loads(answer)["status"], json.loads(answer)["size"]) == (200, "active", CHUNKS * len(CHUNK))


def test_a_body_shorter_than_its_content_length_gets_a_prompt_json_400(server, token):
    with socket.create_connection(server, timeout=ANSWER_WITHIN) as client:
        client.sendall(
            b"POST /v2/images HTTP/1.1\r\nHost: localhost\r\nX-Auth-Token: " + token.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name": "x"}'
        )
        answer = read_response(client)

    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b'"incomplete_body"' in answer


def test_an_upload_that_stalls_is_given_back_and_the_image_can_be_uploaded_again(server, token):
    image_id = create_image(server, token)
    with socket.create_connection(server, timeout=ANSWER_WITHIN) as client:
        client.sendall(
            f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: localhost\r\nX-Auth-Token: {token}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".encode()
            + CHUNK
        )
        answer = read_response(client)

    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b'"incomplete_upload"' in answer
    _status, document = request(server, "GET", f"/v2/images/{image_id}", token)
    assert json.loads(document)["status"] == "queued"
    connection = http.client.HTTPConnection(*server, timeout=ANSWER_WITHIN)
    try:
        connection.request(
            "PUT",
            f"/v2/images/{image_id}/file",
            body=CHUNK,
            headers={"X-Auth-Token": token, "Content-Type": "application/octet-stream"},
        )
        assert connection.getresponse().status == 204
    finally:
        connection.close()


def test_stalled_uploads_do_not_stop_health_checks_or_other_requests(server, token):
    """More stalled uploads than the worker has threads: each is bounded by the idle timeout, never the worker."""
    image_ids = [create_image(server, token) for _ in range(THREADS * 2)]
    stalled = []
    try:
        for image_id in image_ids:  # a whole request line and headers, part of the body, then silence
            client = socket.create_connection(server, timeout=ANSWER_WITHIN)
            client.sendall(
                f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: localhost\r\nX-Auth-Token: {token}"
                "\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".encode()
                + CHUNK
            )
            stalled.append(client)

        health = [request(server, "GET", "/healthz") for _ in range(3)]
        listing = request(server, "GET", "/v2/images", token)
        answers = [read_response(client) for client in stalled]
    finally:
        for client in stalled:
            client.close()

    assert [status for status, _ in health] == [200, 200, 200]
    assert listing[0] == 200
    assert all(answer.startswith(b"HTTP/1.1 400") for answer in answers), answers


def read_response(client: socket.socket) -> bytes:
    """Everything the server sends until it closes or a whole response (headers and body) has arrived."""
    received = b""
    while chunk := client.recv(65536):
        received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if length and len(body) >= int(length[0].split(b":")[1]):
            break
    return received
