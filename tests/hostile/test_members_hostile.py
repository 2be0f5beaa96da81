"""Hostile input to the image members API: a clear 4xx with a stable code, and no membership changed.

Glance 500s on a member given as a list or an object and stores any string; locquota answers 400 for
anything that cannot be a project id (../shared/GLANCE_COMPAT.md, sharing table).
"""

import json
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import ImageMember
from tests.conftest import identity
from tests.hostile.test_images_hostile import assert_error

OWNER = identity("owner-p")
MEMBER = identity("member-p")
THIRD = identity("third-p")
JSON = {"Content-Type": "application/json"}
UNKNOWN_ID = "0b7c8e46-6d55-4d1c-9a5e-3f0e4c1b2a99"


@pytest.fixture
def shared(app: TestApp) -> str:
    """A shared image of owner-p with one pending member, member-p."""
    image = app.post_json("/v2/images", {"name": "s", "visibility": "shared"}, headers=OWNER, status=201).json["id"]
    app.post_json(f"/v2/images/{image}/members", {"member": "member-p"}, headers=OWNER, status=200)
    return image


@pytest.fixture
def memberships(db: Session) -> Callable[[], list[tuple[object, ...]]]:
    """Every image_members row (and its status), to show a refused request changed nothing."""

    def take() -> list[tuple[object, ...]]:
        rows = db.execute(select(ImageMember.image_id, ImageMember.member, ImageMember.status, ImageMember.updated_at))
        found = sorted(tuple(row) for row in rows)
        db.rollback()
        return found

    return take


BAD_MEMBERS = [
    (b'{"member": ["member-p"]}', "a list (Glance 500s)"),
    (b'{"member": {"id": "member-p"}}', "an object (Glance 500s)"),
    (b'{"member": 42}', "a number"),
    (b'{"member": null}', "null"),
    (b'{"member": ""}', "empty"),
    (b'{"member": "   "}', "blank"),
    (b'{"member": " padded "}', "padded with spaces"),
    (json.dumps({"member": "x" * 256}).encode(), "longer than Glance's 255-character column"),
    (b'{"member": "tab\\there"}', "a control character"),
    (b'{"member": "nul\\u0000"}', "a NUL"),
    (b'{"members": "member-p"}', "the key misspelt"),
    (b'["member-p"]', "not an object"),
    (b'{"member": "member-p"', "malformed JSON"),
    (b"", "no body"),
]


@pytest.mark.parametrize(("body", "why"), BAD_MEMBERS, ids=[why for _, why in BAD_MEMBERS])
def test_a_member_that_cannot_be_a_project_is_refused(app, shared, memberships, body, why):
    before = memberships()
    res = app.post(f"/v2/images/{shared}/members", body, headers={**OWNER, **JSON}, expect_errors=True)
    assert res.status_int == 400, (why, res.text)
    assert memberships() == before


BAD_ANSWERS = [
    (b'{"status": "bogus"}', "not a status"),
    (b'{"status": "ACCEPTED"}', "upper case"),
    (b'{"status": null}', "null"),
    (b'{"status": ["accepted"]}', "a list"),
    (b"{}", "missing"),
    (b'"accepted"', "not an object"),
    (b"{", "malformed JSON"),
]


@pytest.mark.parametrize(("body", "why"), BAD_ANSWERS, ids=[why for _, why in BAD_ANSWERS])
def test_a_status_outside_the_three_is_refused(app, shared, memberships, body, why):
    before = memberships()
    res = app.put(f"/v2/images/{shared}/members/member-p", body, headers={**MEMBER, **JSON}, expect_errors=True)
    assert res.status_int == 400, (why, res.text)
    assert memberships() == before


@pytest.mark.parametrize(
    ("method", "path", "caller", "status", "code"),
    [
        ("GET", "/members/nobody", "owner", 404, "member_not_found"),
        ("PUT", "/members/nobody", "owner", 404, "member_not_found"),
        ("DELETE", "/members/nobody", "owner", 404, "member_not_found"),
        ("GET", "/members/" + "x" * 5000, "owner", 404, "member_not_found"),
        ("GET", "/members/member%2Dp", "owner", 200, None),  # a second spelling of the same project
        ("GET", "/members/MEMBER-P", "owner", 404, "member_not_found"),  # project ids are case-sensitive
        ("PUT", "/members/member-p", "owner", 403, "forbidden"),  # only the member answers
        ("PUT", "/members/member-p", "third", 404, "image_not_found"),
        ("DELETE", "/members/member-p", "member", 403, "forbidden"),
        ("POST", "/members", "member", 403, "forbidden"),
        ("POST", "/members", "third", 404, "image_not_found"),
        ("PATCH", "/members/member-p", "owner", 405, "method_not_allowed"),
        ("PUT", "/members", "owner", 405, "method_not_allowed"),
        ("DELETE", "/members", "owner", 405, "method_not_allowed"),
    ],
)
def test_calls_glance_refuses(app, shared, memberships, method, path, caller, status, code):
    who = {"owner": OWNER, "member": MEMBER, "third": THIRD}[caller]
    before = memberships()
    body = b'{"status": "accepted", "member": "third-p"}' if method in ("PUT", "POST", "PATCH") else None
    res = app.request(
        f"/v2/images/{shared}{path}", method=method, body=body, headers={**who, **JSON}, expect_errors=True
    )
    if code is None:
        assert res.status_int == status, res.text
    else:
        assert_error(res, status, code)
    assert memberships() == before


@pytest.mark.parametrize("image", [UNKNOWN_ID, "not-a-uuid", UNKNOWN_ID.upper()])
def test_members_of_an_image_that_is_not_there(app, image):
    assert_error(app.get(f"/v2/images/{image}/members", headers=OWNER, expect_errors=True), 404, "image_not_found")
    res = app.post_json(f"/v2/images/{image}/members", {"member": "m"}, headers=OWNER, expect_errors=True)
    assert_error(res, 404, "image_not_found")


def test_a_huge_member_list_stops_at_the_quota(make_app, settings, memberships):
    app = make_app({**settings, "locquota.image_member_quota": "3"})
    image = app.post_json("/v2/images", {"name": "s"}, headers=OWNER, status=201).json["id"]
    answers = [
        app.post_json(f"/v2/images/{image}/members", {"member": f"p{n}"}, headers=OWNER, expect_errors=True).status_int
        for n in range(6)
    ]
    assert answers == [200, 200, 200, 413, 413, 413]
    assert len(memberships()) == 3


@pytest.mark.parametrize("query", ["member_status=bogus", "member_status=ACCEPTED", "member_status=", "visibility=x"])
def test_list_filters_outside_glances_values(app, query):
    res = app.get(f"/v2/images?{query}", headers=MEMBER, expect_errors=True)
    assert_error(res, 400, "invalid_query_parameter")
