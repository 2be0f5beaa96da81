"""Uploads that stream: the saving state is committed while bytes arrive, and failures store nothing."""

import io
import shutil
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session
from webob import Request

from locations.models import Image, ImageStatus, Location
from tests.uploading import ObservingBody, send_upload


def image_status(engine, image_id):
    with Session(engine) as session:
        return session.scalar(select(Image.status).where(Image.id == uuid.UUID(image_id)))


def test_saving_is_committed_before_the_bytes_arrive(wsgi_app, engine, tenant, new_image):
    image = new_image()
    seen = []
    body = ObservingBody(b"a" * 10_000, lambda: seen.append(image_status(engine, image["id"])))
    response = send_upload(wsgi_app, image["id"], tenant, body, None)
    assert response.status_int == 204
    assert seen == [ImageStatus.SAVING]
    assert image_status(engine, image["id"]) is ImageStatus.ACTIVE


def test_chunked_upload_without_content_length_records_the_true_size(app, wsgi_app, tenant, new_image):
    image = new_image()
    response = send_upload(wsgi_app, image["id"], tenant, ObservingBody(b"b" * 12_345, None), None)
    assert response.status_int == 204
    assert app.get(f"/v2/images/{image['id']}", headers=tenant).json["size"] == 12_345


def test_client_disconnect_returns_the_image_to_queued_and_stores_nothing(
    wsgi_app, engine, tenant, new_image, db, store_root
):
    image = new_image()
    body = ObservingBody(b"c" * 20_000, None, fail_after=8192)
    response = send_upload(wsgi_app, image["id"], tenant, body, 20_000)
    assert response.status_int == 400
    assert response.json["error"]["code"] == "incomplete_upload"
    assert image_status(engine, image["id"]) is ImageStatus.QUEUED
    assert list(store_root.iterdir()) == []
    assert db.scalars(select(Location)).all() == []


def test_body_shorter_than_content_length_is_an_incomplete_upload(wsgi_app, engine, tenant, new_image, store_root):
    image = new_image()
    response = send_upload(wsgi_app, image["id"], tenant, ObservingBody(b"d" * 100, None), 5000)
    assert response.status_int == 400
    assert response.json["error"]["code"] == "incomplete_upload"
    assert image_status(engine, image["id"]) is ImageStatus.QUEUED
    assert list(store_root.iterdir()) == []


def test_store_failure_kills_the_image_and_answers_503(wsgi_app, engine, tenant, new_image, store_root):
    image = new_image()
    body = ObservingBody(b"e" * 100, lambda: shutil.rmtree(store_root))  # the store vanishes mid-upload
    response = send_upload(wsgi_app, image["id"], tenant, body, 100)
    assert response.status_int == 503
    assert response.json["error"]["code"] == "store_unavailable"
    assert response.headers["Retry-After"]
    assert image_status(engine, image["id"]) is ImageStatus.KILLED


def test_upload_with_no_length_and_no_decoded_chunking_is_refused(wsgi_app, engine, tenant, new_image):
    image = new_image()
    request = Request.blank(
        f"/v2/images/{image['id']}/file",
        environ={"REQUEST_METHOD": "PUT", "CONTENT_TYPE": "application/octet-stream", "wsgi.input": io.BytesIO(b"x")},
        headers=tenant,
    )
    request.environ.pop("CONTENT_LENGTH", None)
    response = request.get_response(wsgi_app)
    assert response.status_int == 411
    assert response.json["error"]["code"] == "length_required"
    assert image_status(engine, image["id"]) is ImageStatus.QUEUED
