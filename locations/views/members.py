"""Glance's image members: /v2/images/{image_id}/members and /v2/images/{image_id}/members/{member_id}."""

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from locations import member_schemas, presenters, schemas
from locations.services.members import MemberService


@view_config(route_name="images.members", request_method="POST", renderer="json")
def add_member(request: Request) -> dict[str, object]:
    """Share the image with a project: 200 (as Glance answers) with the pending membership."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    member = member_schemas.member_to_add(request, request.settings.max_request_body_bytes)
    return presenters.member(request.find_service(MemberService).add(request.identity, image_id, member))


@view_config(route_name="images.members", request_method="GET", renderer="json")
def list_members(request: Request) -> dict[str, object]:
    """The image's members: all for its owner, a member's own entry for a member."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    return presenters.members(request.find_service(MemberService).members(request.identity, image_id))


@view_config(route_name="images.member", request_method="GET", renderer="json")
def show_member(request: Request) -> dict[str, object]:
    """One membership; 404 for whatever the caller may not see."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    found = request.find_service(MemberService).show(request.identity, image_id, request.matchdict["member_id"])
    return presenters.member(found)


@view_config(route_name="images.member", request_method="PUT", renderer="json")
def answer_share(request: Request) -> dict[str, object]:
    """A member accepts or rejects the share (or goes back to pending)."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    asked = member_schemas.answer(request, request.settings.max_request_body_bytes)
    members = request.find_service(MemberService)
    return presenters.member(members.answer(request.identity, image_id, request.matchdict["member_id"], asked.status))


@view_config(route_name="images.member", request_method="DELETE")
def remove_member(request: Request) -> Response:
    """Stop sharing the image with a project: 204."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    request.find_service(MemberService).remove(request.identity, image_id, request.matchdict["member_id"])
    return Response(status=204)
