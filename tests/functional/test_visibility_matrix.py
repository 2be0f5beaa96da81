"""Who may do what to an image, by visibility and caller: Glance 33's answers (secure RBAC) as one table.

Each cell is (visibility, caller): the image is made shared, shared with three projects that answer
pending, accepted and rejected, then given its visibility (so on a private, community or public image the
"members" hold memberships that must no longer matter), and the caller tries every operation on it, the
destructive ones last. Expected answers come from Glance's rules (../shared/GLANCE_COMPAT.md, sharing
table): seeing an image is 200 or 404; a write by a caller who sees the image but does not own it is 403.
A consumer's refused write changes nothing, and no consumer is ever charged.
"""

from dataclasses import astuple, dataclass, fields

import pytest

from tests.conftest import identity, multi_store
from tests.web_server import DATA as WEB_DATA
from tests.web_server import base, web_fixture  # noqa: F401  (web_fixture: the `web` fixture)

CALLERS = {
    "owner": identity("owner-p"),
    "pending": identity("pending-p"),
    "accepted": identity("accepted-p"),
    "rejected": identity("rejected-p"),
    "other": identity("other-p"),
    "admin": identity("operators", "admin"),
}
OWNER, ADMIN = CALLERS["owner"], CALLERS["admin"]
ANSWERS = {"pending": None, "accepted": "accepted", "rejected": "rejected"}  # None: the member never answers
CONSUMERS = ("pending-p", "accepted-p", "rejected-p", "other-p", "operators")
IMAGE = {"name": "golden", "disk_format": "raw", "container_format": "bare", "visibility": "shared"}
DATA = b"matrix bytes" * 100
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


@dataclass(frozen=True)
class Cell:
    """What Glance answers one caller for one image: a status per operation; list: in its default list."""

    post_location: int  # POST /v2/images/{id}/locations (v2.17) on the queued image, an http URL
    show: int
    listed: bool
    download: int
    update: int  # PATCH replace /name
    add_location: int  # PATCH add /locations/- (show_multiple_locations on), a file in the store
    delete: int


OWNS = Cell(202, 200, True, 200, 200, 200, 204)
OWNS_UNLISTED = Cell(202, 200, False, 200, 200, 200, 204)  # an admin and another project's community image
SEES_LISTED = Cell(403, 200, True, 200, 403, 403, 403)
SEES = Cell(403, 200, False, 200, 403, 403, 403)  # sees it, may not touch it, and its default list leaves it out
BLIND = Cell(404, 404, False, 404, 404, 404, 404)

# fmt: off
GRID = {  # callers in the order of CALLERS
    #             owner  pending      accepted     rejected     other        admin
    "private":   (OWNS,  BLIND,       BLIND,       BLIND,       BLIND,       OWNS),
    "shared":    (OWNS,  SEES,        SEES_LISTED, SEES,        BLIND,       OWNS),
    "community": (OWNS,  SEES,        SEES,        SEES,        SEES,        OWNS_UNLISTED),
    "public":    (OWNS,  SEES_LISTED, SEES_LISTED, SEES_LISTED, SEES_LISTED, OWNS),
}
# fmt: on
EXPECTED = {
    (visibility, caller): cell for visibility, row in GRID.items() for caller, cell in zip(CALLERS, row, strict=True)
}


@pytest.fixture
def api(make_app, settings, tmp_path, web):
    """A file store for uploads and PATCHed locations, and an http store for the v2.17 POST."""
    stores = {
        "local": ("file", {"filesystem_store_datadir": str(tmp_path / "local")}),
        "web": ("http", {"http_store_allowed_hosts": f"127.0.0.1:{web.server_port}"}),
    }
    return make_app({**multi_store(settings, "local", stores), "locquota.show_multiple_locations": "true"})


def patch(api, image: str, operations: list[dict[str, object]], who: dict[str, str], status: str | int = "*"):
    return api.patch_json(f"/v2/images/{image}", operations, headers={**who, "Content-Type": PATCH_TYPE}, status=status)


def image_with(api, visibility: str) -> str:
    """A queued image, shared with the three members (each answered), then given its visibility."""
    image = api.post_json("/v2/images", IMAGE, headers=OWNER, status=201).json["id"]
    for caller, answer in ANSWERS.items():
        member = CALLERS[caller]["X-Project-Id"]
        api.post_json(f"/v2/images/{image}/members", {"member": member}, headers=OWNER, status=200)
        if answer:
            api.put_json(f"/v2/images/{image}/members/{member}", {"status": answer}, headers=CALLERS[caller])
    if visibility != "shared":  # only an admin may publicize
        who = ADMIN if visibility == "public" else OWNER
        patch(api, image, [{"op": "replace", "path": "/visibility", "value": visibility}], who, status=200)
    return image


def snapshot(api, image: str, usage_of) -> tuple[dict[str, object], dict[str, object]]:
    """The image as an admin sees it (name, status, locations...) and its owner's usage."""
    return api.get(f"/v2/images/{image}", headers=ADMIN).json, usage_of("owner-p")


class Trial:
    """Runs a caller's operations on one image, noting each answer and every refused write that changed something."""

    def __init__(self, api, image: str, usage_of) -> None:
        self.api, self.image, self.usage_of = api, image, usage_of
        self.changed_by_refusal: list[str] = []

    def write(self, operation: str, call) -> int:
        before = snapshot(self.api, self.image, self.usage_of)
        status = call().status_int
        if status >= 400 and snapshot(self.api, self.image, self.usage_of) != before:
            self.changed_by_refusal.append(operation)
        return status


def run_cell(api, visibility: str, caller: str, web, store_root, usage_of) -> tuple[Cell, Trial]:
    """Every operation of the matrix as the caller, in an order that keeps the image alive until delete."""
    image, who = image_with(api, visibility), CALLERS[caller]
    trial = Trial(api, image, usage_of)
    post_location = trial.write(
        "post_location",
        lambda: api.post_json(f"/v2/images/{image}/locations", {"url": f"{base(web)}/image"}, headers=who, status="*"),
    )
    data = WEB_DATA
    if post_location != 202:  # still queued: the owner uploads, so there is something to download
        api.put(f"/v2/images/{image}/file", DATA, headers={**OWNER, "Content-Type": "application/octet-stream"})
        data = DATA
    show = api.get(f"/v2/images/{image}", headers=who, status="*").status_int
    listed = image in {entry["id"] for entry in api.get("/v2/images", headers=who).json["images"]}
    downloaded = api.get(f"/v2/images/{image}/file", headers=who, status="*")
    assert downloaded.status_int != 200 or downloaded.body == data, f"{visibility}/{caller}: download body"
    store_root.mkdir(parents=True, exist_ok=True)
    extra = store_root / f"copy-of-{image}"
    extra.write_bytes(b"another copy")
    rename = [{"op": "replace", "path": "/name", "value": f"renamed by {caller}"}]
    add = [{"op": "add", "path": "/locations/-", "value": {"url": f"file://{extra}", "metadata": {}}}]
    cell = Cell(
        post_location=post_location,
        show=show,
        listed=listed,
        download=downloaded.status_int,
        update=trial.write("update", lambda: patch(api, image, rename, who)),
        add_location=trial.write("add_location", lambda: patch(api, image, add, who)),
        delete=trial.write("delete", lambda: api.delete(f"/v2/images/{image}", headers=who, status="*")),
    )
    return cell, trial


@pytest.mark.parametrize(("visibility", "caller"), list(EXPECTED))
def test_each_caller_gets_glances_answer_for_each_operation(api, web, tmp_path, usage_of, visibility, caller):
    consumers_before = {tenant: usage_of(tenant) for tenant in CONSUMERS}

    cell, trial = run_cell(api, visibility, caller, web, tmp_path / "local", usage_of)

    expected = EXPECTED[visibility, caller]
    wrong = [
        f"{visibility}/{caller}/{field.name}: expected {want}, got {got}"
        for field, want, got in zip(fields(Cell), astuple(expected), astuple(cell), strict=True)
        if want != got
    ]
    assert not wrong, "\n".join(wrong)
    assert not trial.changed_by_refusal, f"{visibility}/{caller}: refused yet changed: {trial.changed_by_refusal}"
    assert {tenant: usage_of(tenant) for tenant in CONSUMERS} == consumers_before, f"{visibility}/{caller}: usage"


@pytest.mark.parametrize("visibility", ["private", "shared", "community", "public"])
def test_a_deactivated_image_is_downloaded_by_admins_only(api, visibility):
    image = image_with(api, visibility)
    api.put(f"/v2/images/{image}/file", DATA, headers={**OWNER, "Content-Type": "application/octet-stream"})
    api.post(f"/v2/images/{image}/actions/deactivate", headers=OWNER, status=204)

    answers = {
        caller: api.get(f"/v2/images/{image}/file", headers=who, status="*").status_int
        for caller, who in CALLERS.items()
    }

    # Those who see the image are refused (403), those who do not still find nothing (404).
    expected = {
        caller: 200 if caller == "admin" else 403 if EXPECTED[visibility, caller].show == 200 else 404
        for caller in CALLERS
    }
    assert answers == expected
