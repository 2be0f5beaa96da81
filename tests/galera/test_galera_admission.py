"""Exact admission for one tenant with API nodes attached to the three Galera nodes at once (issue 19).

Two workers per node, each a process with its own app (tests/galera/api_workers.py), send requests for one
tenant under a limit that only some fit. Galera does not lock rows across nodes: two nodes' admission UPDATEs of
the usage row both succeed locally, and the later one to commit fails certification with MySQL error 1213 (or
is brute-force aborted by the replicated winner, its next statement failing with 1213). The app runs it again
(pyramid_retry for a request, run_and_commit for an upload's landing) against the winner's total. What must
hold: no total above its limit, the stored usage equal to a recount, every answer a success or the documented
413 quota refusal (a 503 or a 500 fails the test), and a refused upload's image queued again.
"""

from collections import Counter

import pytest
from sqlalchemy import Engine, func, select

from locations.models import Image, ImageStatus, Location, LocationStatus
from quota.models import MIB, Resource, TenantUsage
from tests.conftest import identity
from tests.functional.test_scrubber_processes_aliases import usage_drift
from tests.galera.api_workers import Outcome, Request, run_workers
from tests.galera.tenant_requests import (
    NODES,
    OCTET_STREAM,
    OWNER,
    WORKERS,
    create_image,
    image_data,
    image_of,
    node_of,
    set_limit,
)

pytestmark = pytest.mark.galera


def assert_refusals(outcomes: list[Outcome], resource: Resource) -> None:
    refused = [outcome.body for outcome in outcomes if outcome.status == 413]
    assert {body["error"]["code"] for body in refused} <= {"quota_exceeded"}, refused
    assert {body["error"]["details"]["resource"] for body in refused} <= {resource.value}, refused


def stored_total(engine: Engine, resource: Resource) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(getattr(TenantUsage, resource.value)).where(TenantUsage.tenant_id == OWNER))


def test_image_creations_through_three_nodes_admit_exactly_the_count_limit(
    galera, galera_engine, node_settings, node_app
):
    existing, fitting, per_worker = 2, 10, 5
    app = node_app(0)
    for n in range(existing):
        create_image(app, f"seed-{n}")  # the usage row exists: the race is on its admission UPDATE
    set_limit(app, Resource.IMAGE_COUNT_TOTAL, existing + fitting)
    galera.wait_until_applied()
    plans = [
        [
            Request("POST", "/v2/images", identity(OWNER), f'{{"name": "racer-{w}-{n}"}}'.encode(), "application/json")
            for n in range(per_worker)
        ]
        for w in range(WORKERS)
    ]
    before = galera.conflicts()

    outcomes = run_workers([node_settings(node_of(w)) for w in range(WORKERS)], plans)

    statuses = Counter(outcome.status for outcome in outcomes)
    print(f"creations: {dict(statuses)}; {galera.conflicts() - before} transactions lost to another node's write")
    unexpected = [outcome for outcome in outcomes if outcome.status not in (201, 413)]
    assert statuses == Counter({201: fitting, 413: WORKERS * per_worker - fitting}), unexpected
    assert_refusals(outcomes, Resource.IMAGE_COUNT_TOTAL)
    created = {outcome.body["id"] for outcome in outcomes if outcome.status == 201}
    with galera_engine.connect() as connection:
        racers = set(connection.scalars(select(Image.id).where(Image.name.like("racer-%"))))
        counted = connection.scalar(select(func.count()).select_from(Image).where(Image.owner == OWNER))
    assert {str(image_id) for image_id in racers} == created
    assert counted == existing + fitting
    assert stored_total(galera_engine, Resource.IMAGE_COUNT_TOTAL) == existing + fitting
    assert usage_drift(galera_engine, fix=False, owners=(OWNER,)) == []
    galera.wait_until_applied()
    for node in range(NODES):  # every node answers the same usage
        usage = node_app(node).get("/v2/info/usage", headers=identity(OWNER), status=200).json["usage"]
        assert usage["image_count_total"] == {"limit": existing + fitting, "usage": existing + fitting}


def test_uploads_through_three_nodes_never_overrun_image_size_total(galera, galera_engine, node_settings, node_app):
    size, limit_mib, per_worker = 100_000, 1, 4
    fitting = limit_mib * MIB // size  # 10 of the 24 uploads fit
    app = node_app(0)
    images = [create_image(app, f"upload-{n}") for n in range(WORKERS * per_worker)]
    set_limit(app, Resource.IMAGE_SIZE_TOTAL, limit_mib)
    galera.wait_until_applied()
    data = image_data(size)
    plans = [
        [
            Request("PUT", f"/v2/images/{image_id}/file", identity(OWNER), data, OCTET_STREAM)
            for image_id in images[w * per_worker : (w + 1) * per_worker]
        ]
        for w in range(WORKERS)
    ]
    before = galera.conflicts()

    outcomes = run_workers([node_settings(node_of(w)) for w in range(WORKERS)], plans)

    statuses = Counter(outcome.status for outcome in outcomes)
    print(f"uploads: {dict(statuses)}; {galera.conflicts() - before} transactions lost to another node's write")
    assert set(statuses) <= {204, 413}, [outcome for outcome in outcomes if outcome.status not in (204, 413)]
    assert sum(statuses.values()) == WORKERS * per_worker
    # Data refused at its landing waits for the scrubber meanwhile, charged (as Glance counts pending_delete):
    # a concurrent upload may be refused for it, so fewer than `fitting` may land; never more.
    assert 0 < statuses[204] <= fitting, statuses
    assert_refusals(outcomes, Resource.IMAGE_SIZE_TOTAL)
    landed = {image_of(plans[o.worker][o.number].path) for o in outcomes if o.status == 204}
    with galera_engine.connect() as connection:
        status_of = dict(connection.execute(select(Image.id, Image.status).where(Image.name.like("upload-%"))).all())
        live = connection.execute(
            select(Location.image_id, Location.status, Location.size_bytes).where(
                Location.status.in_((LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE))
            )
        ).all()
    assert {str(image_id) for image_id, status in status_of.items() if status == ImageStatus.ACTIVE} == landed
    # A refused upload gives its image back (queued) at once; one left saving waits for its lease to run out.
    refused = {str(image_id): status for image_id, status in status_of.items() if str(image_id) not in landed}
    assert set(refused.values()) == {ImageStatus.QUEUED}, refused
    active = [row for row in live if row.status == LocationStatus.ACTIVE]
    assert sorted(str(row.image_id) for row in active) == sorted(landed)  # one location each
    assert sum(row.size_bytes for row in active) == len(landed) * size <= limit_mib * MIB  # no overrun
    assert stored_total(galera_engine, Resource.IMAGE_SIZE_TOTAL) == sum(row.size_bytes for row in live)
    assert usage_drift(galera_engine, fix=False, owners=(OWNER,)) == []
