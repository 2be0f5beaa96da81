"""Glance's image member documents: /v2/schemas/member(s), and the bodies that add a member or answer a share."""

from dataclasses import dataclass
from typing import Any

import jsonschema
from pyramid.request import Request

from locations.models import MemberStatus
from locations.schemas import UUID_PATTERN, checked_body, collection_schema
from locquota.errors import InvalidBody
from locquota.json_body import read_json_body

MAX_MEMBER_CHARS = 255  # Glance's image_members.member column


def member_schema() -> dict[str, Any]:
    """One membership, as Glance shows it."""
    return {
        "name": "member",
        "properties": {
            "member_id": {"description": "An identifier for the image member (tenantId)", "type": "string"},
            "image_id": {"description": "An identifier for the image", "pattern": UUID_PATTERN, "type": "string"},
            "created_at": {"description": "Date and time of image member creation", "type": "string"},
            "updated_at": {"description": "Date and time of last modification of image member", "type": "string"},
            "status": {
                "description": "The status of this image member",
                "enum": [status.value for status in MemberStatus],
                "type": "string",
            },
            "schema": {"readOnly": True, "type": "string"},
        },
        "additionalProperties": False,
    }


def members_schema() -> dict[str, Any]:
    """The member collection schema."""
    return collection_schema("members", member_schema())


# Other keys are ignored, as Glance ignores them; the one that matters is checked strictly (Glance 500s
# on a list or an object, and takes any string of any length into a 255-character column).
_MEMBER_ID = {"type": "string", "minLength": 1, "maxLength": MAX_MEMBER_CHARS, "pattern": r"^\S(.*\S)?$"}
_ADD_VALIDATOR = jsonschema.Draft202012Validator(
    {"type": "object", "required": ["member"], "properties": {"member": _MEMBER_ID}}
)
_ANSWER_VALIDATOR = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": [status.value for status in MemberStatus]}},
    }
)


@dataclass(frozen=True, slots=True)
class MemberAnswer:
    """A member's answer to a share."""

    status: MemberStatus


def member_to_add(request: Request, max_bytes: int) -> str:
    """The project named by POST .../members {"member": P}: a project id as a token could carry it."""
    body = checked_body(read_json_body(request, max_bytes), _ADD_VALIDATOR, "member")
    member = str(body["member"])
    if not member.isprintable():
        raise InvalidBody("Invalid member: a project id is printable text.")
    return member


def answer(request: Request, max_bytes: int) -> MemberAnswer:
    """The status asked for by PUT .../members/{member_id} {"status": S}; 400 unless one of Glance's three."""
    body = checked_body(read_json_body(request, max_bytes), _ANSWER_VALIDATOR, "member status")
    return MemberAnswer(MemberStatus(body["status"]))
