"""GET /v2/images?checksum=, os_hash_value=, min_ram=, virtual_size_min=, ...: Glance's filters on image columns.

Glance (glance/db/sqlalchemy/api.py, _make_conditions_from_filters) compares checksum and os_hash_value with their
columns, any other parameter that names an image column (min_ram, min_disk, virtual_size, os_hash_algo) by
equality, and `<column>_min` / `<column>_max` as inclusive ranges after int(); only the rest filter on
properties. Before this, locquota took all of these as property filters, and they matched nothing.
"""

import hashlib

import pytest

MAX_INT32 = 2**31 - 1


@pytest.fixture
def images(app, tenant, new_image, upload, clock):
    """Three images of `tenant`, oldest first, with their own min_ram, min_disk, virtual_size and data."""
    made = {}
    for name, min_ram, min_disk, data in (("small", 0, 1, b"abc"), ("mid", 512, 10, b"defgh"), ("big", 2048, 40, b"")):
        image = new_image(name=name, min_ram=min_ram, min_disk=min_disk)
        upload(image["id"], data)
        made[name] = app.get(f"/v2/images/{image['id']}", headers=tenant).json
        clock.advance(seconds=1)
    return made


def names(app, query, headers, status=200):
    response = app.get(f"/v2/images?{query}", headers=headers, status=status)
    return [image["name"] for image in response.json["images"]] if status == 200 else response.json


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("min_ram=512", ["mid"]),
        ("min_ram=0", ["small"]),
        ("min_ram=1", []),
        ("min_ram_min=512", ["big", "mid"]),
        ("min_ram_max=512", ["mid", "small"]),
        ("min_ram_min=1&min_ram_max=2047", ["mid"]),
        ("min_disk=40", ["big"]),
        ("min_disk_min=10&min_disk_max=40", ["big", "mid"]),
        (f"min_ram_max={MAX_INT32}", ["big", "mid", "small"]),
        ("min_ram=512&name=mid", ["mid"]),
        ("min_ram=512&name=small", []),
        ("os_hash_algo=sha512", ["big", "mid", "small"]),
        ("virtual_size_min=0", []),  # no image has a virtual size: null never matches, as in Glance
    ],
)
def test_column_filters_compare_the_image_columns(app, tenant, images, query, expected):
    assert names(app, query, tenant) == expected


def test_checksum_and_os_hash_value_find_the_image_with_that_data(app, tenant, images):
    md5 = hashlib.md5(b"defgh").hexdigest()  # noqa: S324 - Glance's checksum is MD5
    sha512 = hashlib.sha512(b"defgh").hexdigest()
    assert images["mid"]["checksum"] == md5

    assert names(app, f"checksum={md5}", tenant) == ["mid"]
    assert names(app, f"os_hash_value={sha512}", tenant) == ["mid"]
    assert names(app, f"checksum={md5}&os_hash_value={sha512}", tenant) == ["mid"]
    assert names(app, f"checksum={'0' * 32}", tenant) == []
    assert names(app, f"checksum={md5}x", tenant) == []  # longer than the column: no match, no error


def test_a_column_name_is_no_longer_a_property_filter(app, tenant, new_image):
    new_image(name="with-a-property", min_ram_note="x")  # a property whose name merely starts with a column's
    new_image(name="plain")

    assert names(app, "min_ram_note=x", tenant) == ["with-a-property"]
    assert sorted(names(app, "min_ram=0", tenant)) == ["plain", "with-a-property"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("min_ram=abc", "min_ram must be a whole number."),
        ("min_ram=-1", "min_ram must be a whole number."),
        ("min_ram_min=abc", "Unable to filter on a range with a non-numeric value."),
        ("virtual_size_max=1.5", "Unable to filter on a range with a non-numeric value."),
        (f"min_ram={MAX_INT32 + 1}", f"min_ram is out of range: at most {MAX_INT32}."),
        (f"min_disk_max={10**30}", f"min_disk_max is out of range: at most {MAX_INT32}."),
        (f"virtual_size={2**63}", f"virtual_size is out of range: at most {2**63 - 1}."),
        ("min_ram=1&min_ram=2", "The parameter min_ram may be given only once."),
    ],
)
def test_bad_column_filter_values_are_400_not_a_database_error(app, tenant, images, query, message):
    error = names(app, query, tenant, status=400)["error"]
    assert error["code"] == "invalid_query_parameter"
    assert error["message"] == message


@pytest.fixture
def dated(app, tenant, new_image, clock):
    """Images created a day apart (the frozen clock), oldest first: their created_at instants by name."""
    made = {}
    for name in ("monday", "tuesday", "wednesday"):
        image = new_image(name=name)
        made[name] = image["created_at"]
        clock.advance(days=1)
    return made


def test_created_at_and_updated_at_take_glances_operators(app, tenant, dated):
    tuesday = dated["tuesday"]  # ISO 8601 with a Z, as the API shows it
    assert names(app, f"created_at={tuesday}", tenant) == ["tuesday"]
    assert names(app, f"created_at=eq:{tuesday}", tenant) == ["tuesday"]
    assert names(app, f"created_at=gte:{tuesday}", tenant) == ["wednesday", "tuesday"]
    assert names(app, f"created_at=gt:{tuesday}", tenant) == ["wednesday"]
    assert names(app, f"created_at=lt:{tuesday}", tenant) == ["monday"]
    assert names(app, f"created_at=lte:{tuesday}", tenant) == ["tuesday", "monday"]
    assert names(app, f"created_at=neq:{tuesday}", tenant) == ["wednesday", "monday"]
    assert names(app, f"updated_at=gt:{dated['monday']}&created_at=lt:{dated['wednesday']}", tenant) == ["tuesday"]
    same_instant = tuesday.replace("Z", "+00:00")
    assert names(app, f"created_at={same_instant.replace('+', '%2B')}", tenant) == ["tuesday"]


@pytest.mark.parametrize("value", ["yesterday", "gte:", "gte:2024-13-01T00:00:00Z", "between:2024-01-01"])
def test_a_time_filter_that_is_not_iso_8601_is_400(app, tenant, dated, value):
    error = names(app, f"created_at={value}", tenant, status=400)["error"]
    assert error["message"] == 'Bad "created_at" query filter format. Use ISO 8601 DateTime notation.'
