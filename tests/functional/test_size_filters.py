"""GET /v2/images?size=, size_min=, size_max=: Glance's filters on the image size, in the one list statement.

Glance (glance/db/sqlalchemy/api.py, _make_conditions_from_filters) compares size_min/size_max inclusively with the
size column, after int() of the value (400 "Unable to filter on a range with a non-numeric value."), and size, as
any parameter naming an image column, by equality. An image without data (size null) never matches any of them.
"""

import pytest

from tests.conftest import identity
from tests.statement_counter import counting

MAX_BIGINT = 2**63 - 1


@pytest.fixture
def sized(app, tenant, new_image, upload, clock):
    """Images of `tenant` by size in bytes, oldest first: none (queued, size null), 0, 5, 5, 10."""
    images = {}
    for label, data in (("none", None), ("0", b""), ("5a", b"12345"), ("5b", b"abcde"), ("10", b"0123456789")):
        image = new_image(name=label)
        if data is not None:
            upload(image["id"], data)
        images[label] = image["id"]
        clock.advance(seconds=1)
    return images


def names(app, query, headers):
    return [image["name"] for image in app.get(f"/v2/images?{query}", headers=headers, status=200).json["images"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("size_min=5", ["10", "5b", "5a"]),
        ("size_max=5", ["5b", "5a", "0"]),
        ("size_min=5&size_max=5", ["5b", "5a"]),
        ("size_min=6&size_max=10", ["10"]),
        ("size_min=0", ["10", "5b", "5a", "0"]),
        ("size_max=0", ["0"]),
        ("size_min=11", []),
        ("size_min=10&size_max=5", []),
        ("size=5", ["5b", "5a"]),
        ("size=0", ["0"]),
        ("size=4", []),
        ("size=0005", ["5b", "5a"]),
        ("size=%205%20", ["5b", "5a"]),
        ("size=5&size_min=5&size_max=5", ["5b", "5a"]),
        ("size=10&size_max=5", []),
        (f"size_max={MAX_BIGINT}", ["10", "5b", "5a", "0"]),
        (f"size_min={MAX_BIGINT}", []),
        (f"size={MAX_BIGINT}", []),
    ],
)
def test_size_filters_are_inclusive_and_never_match_an_image_without_data(app, tenant, sized, query, expected):
    assert names(app, query, tenant) == expected


def test_size_filters_combine_with_sorting_and_paging(app, tenant, sized):
    """Every page of a sorted, filtered list, followed through its next links, is the filtered list in that order."""
    query = "size_min=1&sort_key=size&sort_dir=asc&limit=1"
    seen, url = [], f"/v2/images?{query}"
    while url:
        body = app.get(url, headers=tenant, status=200).json
        seen.extend(image["name"] for image in body["images"])
        url = body.get("next")
    assert seen == ["5a", "5b", "10"]  # created_at then id break the tie between the two 5-byte images, ascending
    assert names(app, "size_max=5&sort=size:desc,name:asc", tenant) == ["5a", "5b", "0"]
    assert names(app, f"size=5&limit=1&marker={sized['5b']}", tenant) == ["5a"]


def test_size_filters_apply_to_every_source_of_a_tenants_list(app, tenant, admin, new_image, upload, sized):
    """A tenant's page is a union of walks (own, public, shared); the filter holds in each."""
    public = new_image(headers=admin, name="public", visibility="public")
    upload(public["id"], b"12345", headers=admin)
    shared = new_image(headers=identity("tenant-b"), name="shared")
    upload(shared["id"], b"12345", headers=identity("tenant-b"))
    app.post_json(f"/v2/images/{shared['id']}/members", {"member": "tenant-a"}, headers=identity("tenant-b"))
    app.put_json(f"/v2/images/{shared['id']}/members/tenant-a", {"status": "accepted"}, headers=tenant)
    new_image(headers=admin, name="public-empty", visibility="public")

    assert sorted(names(app, "size=5", tenant)) == ["5a", "5b", "public", "shared"]
    assert sorted(names(app, "size_min=6", tenant)) == ["10"]
    assert sorted(names(app, "size_max=5&visibility=public", tenant)) == ["public"]
    assert sorted(names(app, "size=5", admin)) == ["5a", "5b", "public", "shared"]


def test_a_filtered_list_is_one_statement(app, engine, tenant, sized):
    with counting(engine) as counts:
        assert names(app, "size_min=1&size_max=10&size=5&sort=size:asc", tenant) == ["5a", "5b"]
    assert len(counts.statements) == 1, counts.show()


def test_statements_built_for_one_filter_shape_never_serve_another(app, tenant, sized):
    """Each of these is a different shape; a statement kept for one must not answer another (nor its values)."""
    assert len(names(app, "", tenant)) == 5
    assert names(app, "size=5", tenant) == ["5b", "5a"]
    assert names(app, "size=10", tenant) == ["10"]
    assert names(app, "size_min=5", tenant) == ["10", "5b", "5a"]
    assert names(app, "size_max=5", tenant) == ["5b", "5a", "0"]
    assert names(app, "size_min=10", tenant) == ["10"]
    assert len(names(app, "", tenant)) == 5


BAD_SIZES = ["abc", "1e3", "-1", "", " ", "1.5", "0x10", "+5", "1_000", "5,6", "in:5,6", "٣",
             "9223372036854775808", "9999999999999999999999", "9" * 5000]  # fmt: skip


@pytest.mark.parametrize("value", BAD_SIZES, ids=lambda value: value[:24] or "empty")
@pytest.mark.parametrize("name", ["size", "size_min", "size_max"])
def test_a_size_that_is_not_a_byte_count_is_400(app, tenant, sized, name, value):
    res = app.get("/v2/images", {name: value}, headers=tenant, status=400)
    assert res.json["error"]["code"] == "invalid_query_parameter", res.text


def test_a_non_numeric_bound_is_refused_with_glances_message(app, tenant):
    res = app.get("/v2/images?size_min=1e3", headers=tenant, status=400)
    assert res.json["error"]["message"] == "Unable to filter on a range with a non-numeric value."


@pytest.mark.parametrize("query", ["size=1&size=2", "size_min=1&size_min=2", "size_max=1&size_max=2"])
def test_a_repeated_size_filter_is_400(app, tenant, query):
    res = app.get(f"/v2/images?{query}", headers=tenant, status=400)
    assert res.json["error"]["code"] == "invalid_query_parameter"
