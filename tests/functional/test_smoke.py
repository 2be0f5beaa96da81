def test_create_upload_download(app, tenant, new_image, upload):
    image = new_image()
    assert image["status"] == "queued"
    upload(image["id"], b"hello world")
    shown = app.get(f"/v2/images/{image['id']}", headers=tenant).json
    assert shown["status"] == "active"
    assert shown["size"] == 11
    res = app.get(f"/v2/images/{image['id']}/file", headers=tenant)
    assert res.body == b"hello world"
    assert res.headers["Content-MD5"] == shown["checksum"]
