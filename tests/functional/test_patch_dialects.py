"""PATCH in Glance's two json-patch dialects, as Glance's RequestDeserializer reads them.

v2.1 (`application/openstack-images-v2.1-json-patch`, glanceclient) is RFC 6902: `{"op": "replace", "path": "/name"}`.
v2.0 (`application/openstack-images-v2.0-json-patch`, OpenStack's integration tests) names the operation by its key:
`{"replace": "/name", "value": "x"}`, exactly one such key, and its `add` only creates (409 for a property the image
has; base attributes always are). Paths are read the same way in both.
"""

import pytest

V2_0 = "application/openstack-images-v2.0-json-patch"
V2_1 = "application/openstack-images-v2.1-json-patch"


def patch(app, image_id, operations, headers, content_type, status=200):
    return app.patch_json(
        f"/v2/images/{image_id}", operations, headers={**headers, "Content-Type": content_type}, status=status
    )


def show(app, image_id, headers):
    return app.get(f"/v2/images/{image_id}", headers=headers, status=200).json


def assert_refused(app, image, headers, body, content_type, status, code):
    """The status and error code, and the image exactly as it was."""
    res = patch(app, image["id"], body, headers, content_type, status=status)
    assert res.json["error"]["code"] == code, res.text
    assert show(app, image["id"], headers) == image
    return res


@pytest.fixture
def image(new_image):
    """A queued image of `tenant` with a custom property and a tag."""
    return new_image(foo="bar", tags=["t1"])


# --- v2.0: the operation is the key ----------------------------------------------------------------------------------


def test_v2_0_replace_add_and_remove_are_applied(app, tenant, image):
    body = [
        {"replace": "/name", "value": "renamed"},
        {"add": "/ding", "value": "dong"},
        {"remove": "/foo"},
        {"replace": "/tags", "value": ["a", "b"]},
    ]
    res = patch(app, image["id"], body, tenant, V2_0)
    assert (res.json["name"], res.json["ding"], "foo" in res.json, sorted(res.json["tags"])) == (
        "renamed",
        "dong",
        False,
        ["a", "b"],
    )
    assert show(app, image["id"], tenant) == res.json


def test_v2_0_add_of_an_existing_property_is_a_conflict(app, tenant, image):
    res = assert_refused(app, image, tenant, [{"add": "/foo", "value": "baz"}], V2_0, 409, "property_exists")
    assert res.json["error"]["message"] == "Property foo already present."


@pytest.mark.parametrize(("name", "value"), [("name", "x"), ("tags", ["x"]), ("min_ram", 1), ("visibility", "private")])
def test_v2_0_add_of_a_base_attribute_is_a_conflict(app, tenant, image, name, value):
    """Glance's v2.0 add refuses any attribute the image object has, and base attributes always exist."""
    assert_refused(app, image, tenant, [{"add": f"/{name}", "value": value}], V2_0, 409, "property_exists")


def test_v2_1_add_of_an_existing_property_replaces_it(app, tenant, image):
    res = patch(
        app,
        image["id"],
        [{"op": "add", "path": "/foo", "value": "baz"}, {"op": "add", "path": "/name", "value": "n"}],
        tenant,
        V2_1,
    )
    assert (res.json["foo"], res.json["name"]) == ("baz", "n")


def test_v2_0_changes_apply_in_order_so_a_second_add_conflicts_with_the_first(app, tenant, image):
    body = [{"add": "/new", "value": "1"}, {"add": "/new", "value": "2"}]
    assert_refused(app, image, tenant, body, V2_0, 409, "property_exists")


def test_v2_0_add_after_remove_of_the_same_property_is_applied(app, tenant, image):
    res = patch(app, image["id"], [{"remove": "/foo"}, {"add": "/foo", "value": "again"}], tenant, V2_0)
    assert res.json["foo"] == "again"


def test_v2_0_replace_or_remove_of_a_missing_property_is_a_conflict(app, tenant, image):
    assert_refused(app, image, tenant, [{"replace": "/nope", "value": "x"}], V2_0, 409, "property_not_found")
    assert_refused(app, image, tenant, [{"remove": "/nope"}], V2_0, 409, "property_not_found")


# --- one dialect's body under the other's media type -----------------------------------------------------------------


def test_a_v2_1_body_under_v2_0_is_400_naming_the_operation_members(app, tenant, image):
    body = [{"op": "replace", "path": "/name", "value": "x"}]
    res = assert_refused(app, image, tenant, body, V2_0, 400, "invalid_patch")
    assert res.json["error"]["message"] == (
        'Operation objects must contain exactly one member named "add", "remove", or "replace".'
    )


def test_a_v2_0_body_under_v2_1_is_400_for_the_missing_op(app, tenant, image):
    res = assert_refused(app, image, tenant, [{"replace": "/name", "value": "x"}], V2_1, 400, "invalid_patch")
    assert res.json["error"]["message"].startswith("Unable to find `op` in JSON Schema change.")


def test_v2_0_with_two_operation_members_is_400(app, tenant, image):
    body = [{"replace": "/foo", "add": "/bar", "value": "snore"}]
    res = assert_refused(app, image, tenant, body, V2_0, 400, "invalid_patch")
    assert res.json["error"]["message"] == (
        'Operation objects must contain only one member named "add", "remove", or "replace".'
    )


def test_a_change_spelled_both_ways_is_read_in_the_dialect_of_its_media_type(app, tenant, new_image):
    """As Glance: v2.0 reads only the operation key, v2.1 only op and path; the other spelling is ignored."""
    both = [{"op": "add", "path": "/extra", "replace": "/name", "value": "x"}]
    first, second = new_image(), new_image()
    as_v2_0 = patch(app, first["id"], both, tenant, V2_0).json
    as_v2_1 = patch(app, second["id"], both, tenant, V2_1).json
    assert (as_v2_0["name"], "extra" in as_v2_0) == ("x", False)
    assert (as_v2_1["name"], as_v2_1["extra"]) == ("cirros", "x")


# --- paths: the same json pointers in both dialects ------------------------------------------------------------------


def _change(content_type, op, path, value=None):
    change = {"op": op, "path": path} if content_type == V2_1 else {op: path}
    if op != "remove":
        change["value"] = value
    return change


@pytest.mark.parametrize("content_type", [V2_0, V2_1])
@pytest.mark.parametrize(
    ("path", "name"),
    [("/keywith~1slash", "keywith/slash"), ("/keywith~0tilde", "keywith~tilde"), ("/tricky~01", "tricky~1"),
     ("/ spaced ", "spaced")],
)  # fmt: skip
def test_pointer_escapes_decode_the_same_in_both_dialects(app, tenant, image, content_type, path, name):
    res = patch(app, image["id"], [_change(content_type, "add", path, "v")], tenant, content_type)
    assert res.json[name] == "v"


@pytest.mark.parametrize("content_type", [V2_0, V2_1])
@pytest.mark.parametrize(
    "path",
    ["noslash", "", "/", "/   ", "///twoslash", "/two/   /slash", "/trailingslash/", "/lone~tilde", "/trailingtilde~",
     "/name/x", 7, None, ["/name"]],
)  # fmt: skip
def test_malformed_pointers_are_400_in_both_dialects(app, tenant, image, content_type, path):
    body = [_change(content_type, "replace", path, "dummy")]
    assert_refused(app, image, tenant, body, content_type, 400, "invalid_patch_path")


# --- malformed and hostile v2.0 bodies -------------------------------------------------------------------------------

V2_0_HOSTILE = [
    # (id, body, status, code)
    ("not-a-list", {"replace": "/name", "value": "x"}, 400, "invalid_patch"),
    ("string", "replace", 400, "invalid_patch"),
    ("change-not-an-object", ["replace", "/name"], 400, "invalid_patch"),
    ("change-null", [None], 400, "invalid_patch"),
    ("no-operation", [{"value": "x"}], 400, "invalid_patch"),
    ("unknown-operation-key", [{"move": "/name", "value": "x"}], 400, "invalid_patch"),
    ("test-operation-key", [{"test": "/name", "value": "cirros"}], 400, "invalid_patch"),
    ("uppercase-operation-key", [{"REPLACE": "/name", "value": "x"}], 400, "invalid_patch"),
    ("three-operation-keys", [{"add": "/a", "remove": "/b", "replace": "/c", "value": "x"}], 400, "invalid_patch"),
    ("replace-without-value", [{"replace": "/name"}], 400, "invalid_patch"),
    ("add-without-value", [{"add": "/new"}], 400, "invalid_patch"),
    ("remove-base-attribute", [{"remove": "/name"}], 403, "forbidden"),
    ("read-only", [{"replace": "/status", "value": "active"}], 403, "read_only_attribute"),
    ("read-only-id", [{"replace": "/id", "value": "x"}], 403, "read_only_attribute"),
    ("reserved", [{"add": "/os_glance_x", "value": "x"}], 403, "reserved_attribute"),
    ("deep-path", [{"replace": "/locations/1/2", "value": []}], 400, "invalid_patch_path"),
    ("name-too-long", [{"replace": "/name", "value": "x" * 256}], 400, "invalid_body"),
    ("property-not-a-string", [{"add": "/new", "value": {"a": "b"}}], 400, "invalid_body"),
    ("property-name-too-long", [{"add": "/" + "p" * 256, "value": "x"}], 400, "invalid_body"),
    (
        "locations-while-hidden",
        [{"add": "/locations/-", "value": {"url": "file:///x", "metadata": {}}}],
        403,
        "forbidden",
    ),
    ("huge-value", [{"add": "/new", "value": "a" * 70_000}], 413, "request_too_large"),
    (
        "good-then-bad",
        [{"replace": "/name", "value": "changed"}, {"add": "/new", "value": "x"}, {"replace": "/size", "value": 1}],
        403,
        "read_only_attribute",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), [row[1:] for row in V2_0_HOSTILE], ids=[row[0] for row in V2_0_HOSTILE]
)
def test_v2_0_refuses_hostile_body(app, tenant, image, body, status, code):
    assert_refused(app, image, tenant, body, V2_0, status, code)


def test_v2_0_control_row_is_accepted(app, tenant, image):
    """The request shape of the rows above with a good body succeeds, so they fail for the reason they name."""
    res = patch(
        app, image["id"], [{"replace": "/name", "value": "changed"}, {"add": "/new", "value": "x"}], tenant, V2_0
    )
    assert (res.json["name"], res.json["new"]) == ("changed", "x")


def test_other_media_types_name_both_dialects(app, tenant, image):
    res = assert_refused(app, image, tenant, [{"replace": "/name", "value": "x"}], "application/json", 415,
                         "unsupported_media_type")  # fmt: skip
    assert res.json["error"]["details"]["accepted"] == [V2_0, V2_1]
    assert V2_0 in res.json["error"]["message"]
    assert V2_1 in res.json["error"]["message"]


# --- /locations under v2.0 -------------------------------------------------------------------------------------------


@pytest.fixture
def api(make_app, settings):
    return make_app({**settings, "locquota.show_multiple_locations": "true"})


def file_in_store(store_root, name, data):
    store_root.mkdir(parents=True, exist_ok=True)
    (store_root / name).write_bytes(data)
    return f"file://{store_root / name}"


def test_v2_0_adds_removes_and_replaces_locations_as_v2_1_does(api, tenant, admin, store_root):
    """The same paths and depths as v2.1 (removing a location is admin-only by default, as in Glance)."""
    image = api.post_json("/v2/images", {"name": "i", "disk_format": "raw", "container_format": "bare"},
                          headers=tenant, status=201).json  # fmt: skip
    first, second, third = (file_in_store(store_root, name, b"12345") for name in ("a", "b", "c"))
    added = patch(api, image["id"], [{"add": "/locations/-", "value": {"url": first, "metadata": {}}}], tenant, V2_0)
    assert (added.json["status"], added.json["size"]) == ("active", 5)
    body = [{"add": "/locations/1", "value": {"url": second, "metadata": {"k": "v"}}}]
    both = patch(api, image["id"], body, tenant, V2_0).json
    assert both["locations"] == [{"url": first, "metadata": {}}, {"url": second, "metadata": {"k": "v"}}]
    removed = patch(api, image["id"], [{"remove": "/locations/0"}], admin, V2_0).json
    assert removed["locations"] == [{"url": second, "metadata": {"k": "v"}}]
    replaced = patch(api, image["id"], [{"replace": "/locations", "value": [{"url": third, "metadata": {}}]}],
                     admin, V2_0).json  # fmt: skip
    assert replaced["locations"] == [{"url": third, "metadata": {}}]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ([{"remove": "/locations"}], 400, "invalid_patch_path"),
        ([{"add": "/locations", "value": []}], 400, "invalid_patch_path"),
        ([{"replace": "/locations/0", "value": {"url": "file:///x", "metadata": {}}}], 400, "invalid_patch_path"),
        ([{"add": "/locations/x", "value": {"url": "file:///x", "metadata": {}}}], 400, "invalid_patch_path"),
        ([{"add": "/locations/-", "value": {"url": "file:///x"}}], 400, "invalid_body"),
        ([{"add": "/locations/-"}], 400, "invalid_patch"),
    ],
)
def test_v2_0_location_paths_are_checked_as_in_v2_1(api, tenant, body, status, code):
    image = api.post_json("/v2/images", {"name": "i"}, headers=tenant, status=201).json
    assert_refused(api, image, tenant, body, V2_0, status, code)
