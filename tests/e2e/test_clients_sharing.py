"""Image sharing through the real clients (issue 17): glanceclient, the `glance` CLI and openstacksdk.

The owner shares, the member answers, the lists follow the answer, the member reads but never changes
the image, a third project never learns it exists, and nobody's usage moves (GLANCE_COMPAT.md, sharing).
"""

import io
from collections.abc import Callable
from dataclasses import dataclass

import glanceclient
import openstack
import pytest
import requests
from glanceclient import exc
from openstack import exceptions

from tests.e2e.conftest import LiveServer
from tests.e2e.test_glance_cli import list_table, run_glance
from tests.e2e.test_openstacksdk import connect

OWNER, MEMBER, THIRD = "owner-p", "member-p", "third-p"
DATA = bytes(range(256)) * 40
IMAGE = {"disk_format": "raw", "container_format": "bare"}
POLICY = "Policy does not allow %s to be performed."
NOT_FOUND = "No image found with this id."


@dataclass(frozen=True, slots=True)
class Tokens:
    """One member token per project in the story, and an admin's."""

    owner: str
    member: str
    third: str
    admin: str


@pytest.fixture
def tokens(issue_token: Callable[..., str]) -> Tokens:
    return Tokens(issue_token(OWNER), issue_token(MEMBER), issue_token(THIRD), issue_token("operators", "admin,member"))


def client(url: str, token: str) -> object:
    return glanceclient.Client(endpoint=f"{url}/v2", token=token)


def uploaded(glance: object, visibility: str, data: bytes = DATA) -> str:
    """An active image with these bytes and this visibility; its id."""
    image = glance.images.create(name=f"{visibility}-image", visibility=visibility, **IMAGE)
    glance.images.upload(image.id, io.BytesIO(data))
    return image.id


def listed(glance: object, **filters: str) -> set[str]:
    return {image.id for image in glance.images.list(filters=filters)}


def assert_hidden(glance: object, image: str) -> None:
    """The project neither sees the image nor reads its data: 404, as for an image that does not exist."""
    with pytest.raises(exc.HTTPNotFound):
        glance.images.get(image)
    with pytest.raises(exc.HTTPNotFound):
        b"".join(glance.images.data(image))


def exact_usage(url: str, token: str) -> dict[str, object]:
    """The caller's usage in exact bytes (/v1/usage), without the freshness block that changes on every read."""
    response = requests.get(f"{url}/v1/usage", headers={"X-Auth-Token": token}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    return {key: body[key] for key in ("resources", "by_status", "by_store")}


def test_glanceclient_member_lifecycle(live_server: LiveServer, tokens):
    owner, member, third = (client(live_server.url, token) for token in (tokens.owner, tokens.member, tokens.third))
    image = uploaded(owner, "shared")
    assert_hidden(member, image)

    added = owner.image_members.create(image, MEMBER)
    assert (added.member_id, added.image_id, added.status) == (MEMBER, image, "pending")
    owner.image_members.create(image, "second-p")
    assert [(m.member_id, m.status) for m in owner.image_members.list(image)] == [
        (MEMBER, "pending"),
        ("second-p", "pending"),
    ]
    assert [m.member_id for m in member.image_members.list(image)] == [MEMBER]
    assert member.images.get(image)["status"] == "active"
    assert image not in listed(member)
    assert image in listed(member, member_status="pending")
    assert any("member_status=pending" in seen.query for seen in live_server.log.requests("GET", "/v2/images"))
    assert_hidden(third, image)

    assert member.image_members.update(image, MEMBER, "accepted").status == "accepted"
    assert image in listed(member)
    assert image in listed(member, visibility="shared")
    assert image not in listed(member, member_status="pending")
    assert b"".join(member.images.data(image)) == DATA
    with pytest.raises(exc.HTTPForbidden):
        member.images.update(image, name="taken")
    with pytest.raises(exc.HTTPForbidden):
        member.images.delete(image)
    assert_hidden(third, image)
    with pytest.raises(exc.HTTPNotFound):
        list(third.image_members.list(image))
    assert image not in listed(third, member_status="all")

    owner.image_members.delete(image, MEMBER)
    assert_hidden(member, image)
    assert_hidden(third, image)
    assert owner.images.get(image)["name"] == "shared-image"
    assert [m.member_id for m in owner.image_members.list(image)] == ["second-p"]


def test_glanceclient_public_and_community_images_for_a_third_project(live_url, tokens):
    admin, owner, third = (client(live_url, token) for token in (tokens.admin, tokens.owner, tokens.third))
    public = uploaded(admin, "public", b"for everyone")
    community = uploaded(owner, "community", b"for anyone who asks")

    assert public in listed(third)
    assert b"".join(third.images.data(public)) == b"for everyone"
    assert third.images.get(community)["visibility"] == "community"
    assert b"".join(third.images.data(community)) == b"for anyone who asks"
    assert community not in listed(third)
    assert community in listed(third, visibility="community")
    with pytest.raises(exc.HTTPForbidden):
        owner.image_members.create(community, MEMBER)


def test_sharing_charges_neither_the_member_nor_the_owner_more(live_url, tokens):
    owner, member = client(live_url, tokens.owner), client(live_url, tokens.member)
    image = uploaded(owner, "shared")
    owner_before = exact_usage(live_url, tokens.owner)
    member_before = exact_usage(live_url, tokens.member)

    owner.image_members.create(image, MEMBER)
    member.image_members.update(image, MEMBER, "accepted")
    assert b"".join(member.images.data(image)) == DATA
    assert image in listed(member)

    assert exact_usage(live_url, tokens.owner) == owner_before
    assert exact_usage(live_url, tokens.member) == member_before
    assert {name: used["usage"] for name, used in member.info.get_usage().items()} == dict.fromkeys(
        ("image_size_total", "image_stage_total", "image_count_total", "image_count_uploading"), 0
    )
    assert owner_before["resources"]["image_size_total"]["usage"] == len(DATA)
    assert owner_before["resources"]["image_count_total"]["usage"] == 1


def cli(url: str, token: str, *args: str) -> str:
    """Run `glance` and return its stdout; the command must succeed."""
    result = run_glance(url, token, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def refused(url: str, token: str, *args: str) -> str:
    """Run `glance` expecting it to fail with exit code 1; what it printed (the server's message)."""
    result = run_glance(url, token, *args)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    return result.stderr.strip()


def test_glance_cli_member_commands(live_url, tokens):
    image = uploaded(client(live_url, tokens.owner), "shared")
    membership = {"Image ID": image, "Member ID": MEMBER}

    assert list_table(cli(live_url, tokens.owner, "member-create", image, MEMBER)) == [
        {**membership, "Status": "pending"}
    ]
    assert list_table(cli(live_url, tokens.member, "member-list", "--image-id", image)) == [
        {**membership, "Status": "pending"}
    ]
    pending = list_table(cli(live_url, tokens.member, "image-list", "--member-status", "pending"))
    assert [row["ID"] for row in pending] == [image]
    assert list_table(cli(live_url, tokens.member, "image-list", "--visibility", "shared")) == []

    accepted = list_table(cli(live_url, tokens.member, "member-update", image, MEMBER, "accepted"))
    assert accepted == [{**membership, "Status": "accepted"}]
    assert [row["ID"] for row in list_table(cli(live_url, tokens.member, "image-list", "--visibility", "shared"))] == [
        image
    ]
    assert refused(live_url, tokens.member, "member-delete", image, MEMBER) == f"HTTP {POLICY % 'delete_member'}"
    assert refused(live_url, tokens.third, "member-list", "--image-id", image) == f"HTTP {NOT_FOUND}"

    cli(live_url, tokens.owner, "member-delete", image, MEMBER)
    assert list_table(cli(live_url, tokens.owner, "member-list", "--image-id", image)) == []
    assert refused(live_url, tokens.member, "image-show", image) == f"HTTP {NOT_FOUND}"


def test_glance_cli_deactivate_is_refused_to_the_member_and_done_by_the_owner(live_url, tokens):
    owner, member = client(live_url, tokens.owner), client(live_url, tokens.member)
    image = uploaded(owner, "shared")
    owner.image_members.create(image, MEMBER)

    assert refused(live_url, tokens.member, "image-deactivate", image) == f"HTTP {POLICY % 'deactivate'}"
    assert owner.images.get(image)["status"] == "active"
    cli(live_url, tokens.owner, "image-deactivate", image)
    assert owner.images.get(image)["status"] == "deactivated"
    with pytest.raises(exc.HTTPForbidden):
        b"".join(member.images.data(image))

    assert refused(live_url, tokens.member, "image-reactivate", image) == f"HTTP {POLICY % 'reactivate'}"
    assert owner.images.get(image)["status"] == "deactivated"
    cli(live_url, tokens.owner, "image-reactivate", image)
    assert b"".join(member.images.data(image)) == DATA


def sdk_image(conn: openstack.connection.Connection, visibility: str) -> object:
    return conn.image.create_image(
        name=f"sdk-{visibility}", data=DATA, visibility=visibility, allow_duplicates=True, **IMAGE
    )


def sdk_listed(conn: openstack.connection.Connection, **query: str) -> set[str]:
    return {image.id for image in conn.image.images(**query)}


def test_openstacksdk_member_lifecycle(live_url, tokens):
    owner, member, third = (connect(live_url, token) for token in (tokens.owner, tokens.member, tokens.third))
    image = sdk_image(owner, "shared")

    added = owner.image.add_member(image, member_id=MEMBER)
    assert (added.member_id, added.status) == (MEMBER, "pending")
    assert [(m.member_id, m.status) for m in owner.image.members(image)] == [(MEMBER, "pending")]
    assert image.id not in sdk_listed(member)
    assert image.id in sdk_listed(member, member_status="pending")

    answered = member.image.update_member(MEMBER, image, status="accepted")
    assert answered.status == "accepted"
    assert member.image.get_member(MEMBER, image).status == "accepted"
    assert image.id in sdk_listed(member, visibility="shared")
    assert member.image.download_image(image.id).content == DATA
    with pytest.raises(exceptions.ForbiddenException):
        member.image.update_image(image.id, name="taken")
    with pytest.raises(exceptions.NotFoundException):
        third.image.get_member(MEMBER, image)

    owner.image.remove_member(MEMBER, image, ignore_missing=False)
    with pytest.raises(exceptions.NotFoundException):
        member.image.get_image(image.id)
    with pytest.raises(exceptions.NotFoundException):
        owner.image.remove_member(MEMBER, image, ignore_missing=False)
    assert list(owner.image.members(image)) == []


def test_openstacksdk_deactivate_is_refused_to_the_member_and_done_by_the_owner(live_server: LiveServer, tokens):
    owner, member = (connect(live_server.url, token) for token in (tokens.owner, tokens.member))
    image = sdk_image(owner, "shared")
    owner.image.add_member(image, member_id=MEMBER)
    action = f"/v2/images/{image.id}/actions/%s"

    # The SDK posts actions without checking the answer, so the refusal shows only in the server's log.
    member.image.deactivate_image(image.id)
    assert [seen.status for seen in live_server.log.requests("POST", action % "deactivate")] == [[403]]
    assert owner.image.get_image(image.id).status == "active"
    owner.image.deactivate_image(image.id)
    assert owner.image.get_image(image.id).status == "deactivated"

    member.image.reactivate_image(image.id)
    assert [seen.status for seen in live_server.log.requests("POST", action % "reactivate")] == [[403]]
    assert owner.image.get_image(image.id).status == "deactivated"
    owner.image.reactivate_image(image.id)
    assert member.image.get_image(image.id).status == "active"
    assert [seen.status for seen in live_server.log.requests("POST", action % "reactivate")] == [[403], [204]]
