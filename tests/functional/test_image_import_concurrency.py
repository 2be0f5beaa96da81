"""Per-copy admission under concurrency (issue 16) on real PostgreSQL: copies racing on one tenant's quota.

Several copy-image tasks of one tenant's images run at once on the app's import threads, each on its own
database connection; every copy is admitted by the conditional UPDATE of the tenant's usage row before its
data moves. With room for exactly k more copies, exactly k land, the others fail alone (named in
os_glance_failed_import) and charge nothing; the stored total equals a recount and never passes the limit.
"""

import pytest
from click.testing import CliRunner

from locquota.cli import cli
from quota.models import MIB
from tests.conftest import identity, write_ini
from tests.functional.test_image_import import ADMIN, IMAGE, OCTET, files, import_settings, wait_for_tasks

pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]

TENANT = identity("tenant-a")
SIZE = 400 * 1024
IMAGES = 4
LIMIT_MIB = 4


def test_racing_copies_never_pass_the_limit_and_the_refused_charge_nothing(make_app, settings, tmp_path, usage_of):
    extra = {"locquota.quota.image_size_total": str(LIMIT_MIB), "locquota.import_workers": "8"}
    api = make_app(import_settings(settings, tmp_path, **extra))
    images = []
    for number in range(IMAGES):
        image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
        api.put(f"/v2/images/{image}/file", bytes([number]) * SIZE, headers={**TENANT, **OCTET}, status=204)
        images.append(image)
    room = (LIMIT_MIB * MIB - IMAGES * SIZE) // SIZE  # copies that fit: 6 of the 8 asked for

    body = {"method": {"name": "copy-image"}, "stores": ["cheap", "slow"], "all_stores_must_succeed": False}
    for image in images:
        api.post_json(f"/v2/images/{image}/import", body, headers=ADMIN, status=202)
    wait_for_tasks(api)

    shown = [api.get(f"/v2/images/{image}", headers=TENANT).json for image in images]
    landed = sum(len(image["locations"]) - 1 for image in shown)
    refused = [store for image in shown for store in image["os_glance_failed_import"].split(",") if store]
    assert (landed, len(refused)) == (room, 2 * IMAGES - room)
    assert usage_of("tenant-a")["totals"]["image_size_total"] == (IMAGES + room) * SIZE <= LIMIT_MIB * MIB
    assert len(files(tmp_path, "cheap")) + len(files(tmp_path, "slow")) == room  # the refused wrote nothing
    ini = write_ini(tmp_path / "reconcile.ini", import_settings(settings, tmp_path))
    reconciled = CliRunner().invoke(cli, ["--config", str(ini), "reconcile"])
    assert reconciled.exit_code == 0, reconciled.output
    assert "0 drifted figures" in reconciled.output
