"""Image members (issue 17, part 2) as Glance 33 answers them (../shared/GLANCE_COMPAT.md, sharing table).

The owner shares, the member answers, the default list follows the answer; members never change the
image; nobody else learns the image exists; sharing moves no charge.
"""

import pytest
from sqlalchemy import func, select

from locations.models import ImageMember
from tests.conftest import identity

OWNER = identity("owner-p")
OWNER_READER = identity("owner-p", "reader")
MEMBER = identity("member-p")
SECOND = identity("second-p")
THIRD = identity("third-p")
ADMIN = identity("operators", "admin")
IMAGE = {"name": "golden", "disk_format": "raw", "container_format": "bare"}
OCTET = {"Content-Type": "application/octet-stream"}
DATA = b"shared bytes" * 100
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def shared_image(app, visibility: str = "shared") -> str:
    image = app.post_json("/v2/images", {**IMAGE, "visibility": visibility}, headers=OWNER, status=201).json["id"]
    app.put(f"/v2/images/{image}/file", DATA, headers={**OWNER, **OCTET}, status=204)
    return image


def listed(app, who: dict[str, str], query: str = "") -> set[str]:
    return {image["id"] for image in app.get(f"/v2/images{query}", headers=who).json["images"]}


def test_the_member_lifecycle(app, usage_of):
    image = shared_image(app)
    before = {tenant: usage_of(tenant) for tenant in ("owner-p", "member-p")}

    added = app.post_json(f"/v2/images/{image}/members", {"member": "member-p"}, headers=OWNER, status=200).json
    shown = {key: added[key] for key in ("member_id", "image_id", "status", "schema")}
    assert shown == {"member_id": "member-p", "image_id": image, "status": "pending", "schema": "/v2/schemas/member"}
    app.post_json(f"/v2/images/{image}/members", {"member": "member-p"}, headers=OWNER, status=409)

    # pending: seen and downloadable, not listed by default
    assert app.get(f"/v2/images/{image}", headers=MEMBER).json["id"] == image
    assert app.get(f"/v2/images/{image}/file", headers=MEMBER).body == DATA
    assert image not in listed(app, MEMBER)
    assert image in listed(app, MEMBER, "?member_status=pending")
    assert image in listed(app, MEMBER, "?member_status=all")

    answered = app.put_json(f"/v2/images/{image}/members/member-p", {"status": "accepted"}, headers=MEMBER).json
    assert answered["status"] == "accepted"
    assert image in listed(app, MEMBER)
    assert image in listed(app, MEMBER, "?visibility=shared")
    assert image not in listed(app, MEMBER, "?member_status=pending")

    app.put_json(f"/v2/images/{image}/members/member-p", {"status": "rejected"}, headers=MEMBER)
    assert image not in listed(app, MEMBER)
    assert image in listed(app, MEMBER, "?member_status=rejected")
    assert app.get(f"/v2/images/{image}/file", headers=MEMBER).body == DATA

    assert {tenant: usage_of(tenant) for tenant in ("owner-p", "member-p")} == before

    app.delete(f"/v2/images/{image}/members/member-p", headers=OWNER, status=204)
    app.delete(f"/v2/images/{image}/members/member-p", headers=OWNER, status=404)
    app.get(f"/v2/images/{image}", headers=MEMBER, status=404)


def test_members_see_only_their_own_entry_and_may_not_manage_the_share(app):
    image = shared_image(app)
    for member in ("member-p", "second-p"):
        app.post_json(f"/v2/images/{image}/members", {"member": member}, headers=OWNER, status=200)

    assert [m["member_id"] for m in app.get(f"/v2/images/{image}/members", headers=OWNER).json["members"]] == [
        "member-p",
        "second-p",
    ]
    assert [m["member_id"] for m in app.get(f"/v2/images/{image}/members", headers=MEMBER).json["members"]] == [
        "member-p"
    ]
    app.get(f"/v2/images/{image}/members/second-p", headers=MEMBER, status=404)
    app.get(f"/v2/images/{image}/members/member-p", headers=MEMBER, status=200)
    app.put_json(f"/v2/images/{image}/members/member-p", {"status": "accepted"}, headers=OWNER, status=403)
    app.put_json(f"/v2/images/{image}/members/member-p", {"status": "accepted"}, headers=ADMIN, status=200)
    app.post_json(f"/v2/images/{image}/members", {"member": "third-p"}, headers=MEMBER, status=403)
    app.delete(f"/v2/images/{image}/members/member-p", headers=MEMBER, status=403)
    app.delete(f"/v2/images/{image}/members/second-p", headers=MEMBER, status=404)
    app.patch_json(f"/v2/images/{image}", [], headers={**MEMBER, "Content-Type": PATCH_TYPE}, status=403)
    app.delete(f"/v2/images/{image}", headers=MEMBER, status=403)
    for call in (app.get, app.delete):
        call(f"/v2/images/{image}/members/member-p", headers=THIRD, status=404)
    app.get(f"/v2/images/{image}/members", headers=THIRD, status=404)
    app.post_json(f"/v2/images/{image}/members", {"member": "third-p"}, headers=THIRD, status=404)


@pytest.mark.parametrize("visibility", ["private", "community"])
def test_only_shared_images_have_members(app, visibility):
    image = shared_image(app, visibility)
    app.post_json(f"/v2/images/{image}/members", {"member": "member-p"}, headers=OWNER, status=403)
    app.get(f"/v2/images/{image}/members", headers=OWNER, status=403)
    app.get(f"/v2/images/{image}/members/member-p", headers=OWNER, status=404)


def test_going_private_hides_the_image_and_back_to_shared_keeps_the_members(app):
    image = shared_image(app)
    app.post_json(f"/v2/images/{image}/members", {"member": "member-p"}, headers=OWNER, status=200)
    patch = {**OWNER, "Content-Type": PATCH_TYPE}
    app.patch_json(f"/v2/images/{image}", [{"op": "replace", "path": "/visibility", "value": "private"}], headers=patch)
    app.get(f"/v2/images/{image}", headers=MEMBER, status=404)
    app.patch_json(f"/v2/images/{image}", [{"op": "replace", "path": "/visibility", "value": "shared"}], headers=patch)
    assert app.get(f"/v2/images/{image}/members/member-p", headers=OWNER).json["status"] == "pending"
    app.get(f"/v2/images/{image}", headers=MEMBER, status=200)


def test_the_member_quota(make_app, settings):
    app = make_app({**settings, "locquota.image_member_quota": "2"})
    image = shared_image(app)
    for member in ("a", "b"):
        app.post_json(f"/v2/images/{image}/members", {"member": member}, headers=OWNER, status=200)
    refused = app.post_json(f"/v2/images/{image}/members", {"member": "c"}, headers=OWNER, status=413)
    assert refused.json["error"]["code"] == "member_limit_exceeded"
    assert len(app.get(f"/v2/images/{image}/members", headers=OWNER).json["members"]) == 2


def test_deleting_the_image_ends_its_memberships(app, db):
    image = shared_image(app)
    app.post_json(f"/v2/images/{image}/members", {"member": "member-p"}, headers=OWNER, status=200)
    app.put_json(f"/v2/images/{image}/members/member-p", {"status": "accepted"}, headers=MEMBER)

    app.delete(f"/v2/images/{image}", headers=OWNER, status=204)

    app.get(f"/v2/images/{image}", headers=MEMBER, status=404)
    assert image not in listed(app, MEMBER, "?member_status=all")
    assert db.scalar(select(func.count()).select_from(ImageMember)) == 0
