"""python-glanceclient's size filters (`images.list(filters={"size_min": ...})`) against a real locquota server."""

import io

import glanceclient


def test_glanceclient_lists_by_size_bounds_and_exact_size(live_url, token):
    glance = glanceclient.Client(endpoint=f"{live_url}/v2", token=token)
    for name, data in (("empty", None), ("five", b"12345"), ("ten", b"0123456789")):
        image = glance.images.create(name=name, disk_format="raw", container_format="bare")
        if data is not None:
            glance.images.upload(image.id, io.BytesIO(data))

    def listed(**filters):
        return sorted(image["name"] for image in glance.images.list(filters=filters))

    assert listed(size_min=5) == ["five", "ten"]
    assert listed(size_max=5) == ["five"]
    assert listed(size_min=6, size_max=10) == ["ten"]
    assert listed(size=10) == ["ten"]
