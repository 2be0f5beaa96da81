"""Deactivate and reactivate (issue 17, part 3), as Glance 33 answers them (../shared/GLANCE_COMPAT.md, sharing table).

Owner or admin: 204, idempotent; a queued image 403; downloads of a deactivated image 403 except for admins;
the data stays where it is and stays charged; nothing a location change does (the scrubber settling the image)
reactivates it.
"""

import pytest
from click.testing import CliRunner

from locquota.cli import cli
from tests.conftest import identity, write_ini
from tests.fakes import scrub_settings

TENANT = identity("tenant-a")
READER = identity("tenant-a", "reader")
OTHER = identity("tenant-b")
ADMIN = identity("operators", "admin")
IMAGE = {"name": "switch", "disk_format": "raw", "container_format": "bare"}
OCTET = {"Content-Type": "application/octet-stream"}
DATA = b"deactivated data" * 64
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def active_image(app) -> str:
    image = app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    app.put(f"/v2/images/{image}/file", DATA, headers={**TENANT, **OCTET}, status=204)
    return image


def test_deactivate_refuses_downloads_but_to_admins_and_reactivate_restores_them(app, usage_of):
    image = active_image(app)
    before = usage_of("tenant-a")

    app.post(f"/v2/images/{image}/actions/deactivate", headers=TENANT, status=204)
    app.post(f"/v2/images/{image}/actions/deactivate", headers=TENANT, status=204)  # idempotent

    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "deactivated"
    refused = app.get(f"/v2/images/{image}/file", headers=TENANT, status=403)
    assert "deactivated" in refused.json["error"]["message"]
    assert app.get(f"/v2/images/{image}/file", headers=ADMIN).body == DATA
    assert usage_of("tenant-a") == before  # still stored, still charged

    app.post(f"/v2/images/{image}/actions/reactivate", headers=TENANT, status=204)
    app.post(f"/v2/images/{image}/actions/reactivate", headers=TENANT, status=204)  # idempotent
    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "active"
    assert app.get(f"/v2/images/{image}/file", headers=TENANT).body == DATA
    assert usage_of("tenant-a") == before


def test_an_admin_may_switch_another_projects_image(app):
    image = active_image(app)
    app.post(f"/v2/images/{image}/actions/deactivate", headers=ADMIN, status=204)
    app.post(f"/v2/images/{image}/actions/reactivate", headers=ADMIN, status=204)
    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "active"


@pytest.mark.parametrize(
    ("action", "caller", "status"),
    [
        ("deactivate", READER, 403),  # readers read
        ("reactivate", READER, 403),
        ("deactivate", OTHER, 404),  # another project's private image is missing to it
        ("reactivate", OTHER, 404),
        ("bogus", TENANT, 404),
    ],
)
def test_refusals_change_nothing(app, action, caller, status):
    image = active_image(app)
    app.post(f"/v2/images/{image}/actions/{action}", headers=caller, status=status)
    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "active"


@pytest.mark.parametrize("action", ["deactivate", "reactivate"])
def test_a_queued_image_is_forbidden(app, action):
    image = app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    refused = app.post(f"/v2/images/{image}/actions/{action}", headers=TENANT, status=403)
    assert action in refused.json["error"]["message"]
    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "queued"


def test_reactivating_an_active_image_is_a_no_op_and_other_methods_are_405(app):
    image = active_image(app)
    app.post(f"/v2/images/{image}/actions/reactivate", headers=TENANT, status=204)
    app.get(f"/v2/images/{image}/actions/deactivate", headers=TENANT, status=405)
    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "active"


def test_uploading_to_a_deactivated_image_is_a_conflict_and_it_can_be_deleted(app, usage_of):
    image = active_image(app)
    app.post(f"/v2/images/{image}/actions/deactivate", headers=TENANT, status=204)

    app.put(f"/v2/images/{image}/file", DATA, headers={**TENANT, **OCTET}, status=409)
    app.delete(f"/v2/images/{image}", headers=TENANT, status=204)

    app.get(f"/v2/images/{image}", headers=TENANT, status=404)
    totals = usage_of("tenant-a")["totals"]
    assert (totals["image_size_total"], totals["image_count_total"]) == (0, 0)


def test_the_scrubber_settling_the_image_never_reactivates_it(make_app, settings, store_root, tmp_path):
    delayed = {**scrub_settings(settings, delayed_delete=True), "locquota.show_multiple_locations": "true"}
    app = make_app(delayed)
    image = active_image(app)
    copy = store_root / "second-copy"
    copy.write_bytes(DATA)
    add = [{"op": "add", "path": "/locations/-", "value": {"url": f"file://{copy}", "metadata": {}}}]
    app.patch_json(f"/v2/images/{image}", add, headers={**TENANT, "Content-Type": PATCH_TYPE}, status=200)
    remove = [{"op": "remove", "path": "/locations/1"}]
    app.patch_json(f"/v2/images/{image}", remove, headers={**ADMIN, "Content-Type": PATCH_TYPE}, status=200)
    app.post(f"/v2/images/{image}/actions/deactivate", headers=TENANT, status=204)

    scrubbed = CliRunner().invoke(cli, ["--config", str(write_ini(tmp_path / "scrub.ini", delayed)), "scrub"])

    assert scrubbed.exit_code == 0, scrubbed.output
    assert "deleted 1" in scrubbed.output
    assert not copy.exists()
    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "deactivated"
