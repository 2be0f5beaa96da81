"""A Galera node killed (SIGKILL) while uploads or scrubbers work through all three (issue 19).

What is reasonable when a database node dies: the two others hold a majority, so they evict it within the
failure-detection timeouts (tests/galera/cluster.py) and go on as a Primary component of two; their writers
stall meanwhile, then continue. The API and scrubber processes attached to the dead node cannot fail over by
themselves (a URL names one server; a load balancer in front of the nodes is what moves clients), so they
must fail cleanly: an API worker gets the 503 of a database that is down (Retry-After), never a 500, and
stops; a scrubber's pass ends with the lost connection, and the claims it held are left to their lease,
which a scrubber on a live node takes over once it runs out. Nothing is lost: every upload answered 204 is
active with its bytes stored and counted, usage equals a recount, every pending location ends deleted, and
only what the dead scrubber was deleting when it died may be asked of the store a second time.
"""

import os
import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from locations.models import Image, ImageStatus, Location, LocationStatus
from locations.scrubber import Scrubber
from locations.services.factories import scrub_policy
from locations.stores.base import StoreRegistry
from locations.stores.file import FileStore
from locquota.clock import FrozenClock
from locquota.scripting import LazyApp
from quota.models import Resource
from tests.conftest import identity
from tests.functional.test_scrubber_processes_aliases import assert_all_scrubbed, usage_drift
from tests.galera.api_workers import Request, run_workers
from tests.galera.cluster import GaleraCluster
from tests.galera.recording_scrubber import RecordingStore
from tests.galera.scrub_backlog import BATCH, OWNERS, Backlog, scrubber_inis
from tests.galera.scrubber_processes import deletions_by_worker, run_scrubbers
from tests.galera.tenant_requests import (
    NODES,
    OCTET_STREAM,
    OWNER,
    WORKERS,
    WORKERS_PER_NODE,
    create_image,
    image_data,
    image_of,
    node_of,
    set_limit,
)

pytestmark = pytest.mark.galera

KILLED = 0  # node 1
SURVIVORS = [node for node in range(NODES) if node != KILLED]
# What a client of the dead node's API node is told (locquota.errors.database_unavailable).
DATABASE_DOWN = {
    "code": "service_unavailable",
    "message": "The database is unreachable.",
    "details": {"database": "down"},
}
FILES = 150
# The last exception of a traceback, and the MySQL client errors of a server gone: lost, gone away, refused.
LAST_ERROR = re.compile(r"^[\w.]+(?:Error|Exception): .*$", re.MULTILINE)
SERVER_GONE = re.compile(r"\((2013|2006|2003),")


def kill_node_1(galera: GaleraCluster) -> None:
    """SIGKILL node 1 and return once the two others are a Synced Primary component of two."""
    galera.nodes[KILLED].kill()
    galera.wait_until_synced([galera.nodes[node] for node in SURVIVORS], size=len(SURVIVORS))


def test_uploads_go_on_through_two_nodes_when_the_third_is_killed(galera, node_settings, node_app, node_engine):
    size, per_worker = 50_000, 6
    app = node_app(KILLED)
    images = [create_image(app, f"upload-{n}") for n in range(WORKERS * per_worker)]
    set_limit(app, Resource.IMAGE_SIZE_TOTAL, 100)  # MiB: everything fits, this test is about the node
    galera.wait_until_applied()
    data = image_data(size)
    plans = [
        [
            Request("PUT", f"/v2/images/{image_id}/file", identity(OWNER), data, OCTET_STREAM)
            for image_id in images[w * per_worker : (w + 1) * per_worker]
        ]
        for w in range(WORKERS)
    ]

    # Killed once each worker has had about one answer: every worker is mid-plan.
    outcomes = run_workers(
        [node_settings(node_of(w)) for w in range(WORKERS)], plans, after=WORKERS, action=lambda: kill_node_1(galera)
    )

    print(f"uploads with node 1 killed: {Counter((node_of(o.worker) + 1, o.status) for o in outcomes)}")
    on_dead = [outcome for outcome in outcomes if node_of(outcome.worker) == KILLED]
    on_live = [outcome for outcome in outcomes if node_of(outcome.worker) != KILLED]
    # The survivors' workers went through their whole plans; the dead node's failed cleanly, and stopped.
    assert Counter(o.status for o in on_live) == Counter({204: len(SURVIVORS) * WORKERS_PER_NODE * per_worker}), [
        outcome for outcome in on_live if outcome.status != 204
    ]
    assert {outcome.status for outcome in on_dead} <= {204, 503}, on_dead
    failed = [outcome for outcome in on_dead if outcome.status == 503]
    assert failed, "no worker of the dead node noticed it was gone"
    assert all(outcome.body["error"] == DATABASE_DOWN for outcome in failed), failed
    landed = {image_of(plans[o.worker][o.number].path) for o in outcomes if o.status == 204}
    cut_off = {image_of(plans[o.worker][o.number].path) for o in failed}
    engine = node_engine(SURVIVORS[0])
    with engine.connect() as connection:
        status_of = {str(image_id): status for image_id, status in connection.execute(select(Image.id, Image.status))}
        active = connection.execute(
            select(Location.image_id, Location.url, Location.size_bytes).where(Location.status == LocationStatus.ACTIVE)
        ).all()
    # Nothing answered 204 is lost. An upload cut off at its commit may have landed all the same (its write set
    # reached the others before the node died): that, and only that, is active without its client knowing.
    active_images = {str(row.image_id) for row in active}
    assert landed <= active_images
    assert active_images - landed <= cut_off
    assert {image for image, status in status_of.items() if status == ImageStatus.ACTIVE} == active_images
    store = FileStore("file", {"datadir": node_settings(0)["locquota.store.file.datadir"]})
    assert all(store.get_size(row.url) == row.size_bytes == size for row in active)
    # The others are queued (not sent), or saving if cut off mid-stream: their lease runs out, the reaper ends them.
    others = {image: status_of[image] for image in set(images) - active_images}
    assert set(others.values()) <= {ImageStatus.QUEUED, ImageStatus.SAVING}, others
    assert {image for image, status in others.items() if status == ImageStatus.SAVING} <= cut_off
    assert usage_drift(engine, fix=False, owners=(OWNER,)) == []


def test_scrubbers_on_two_nodes_finish_the_backlog_when_the_third_is_killed(
    galera, galera_urls, node_engine, store_root, tmp_path
):
    backlog = Backlog(node_engine(KILLED), store_root, FILES)
    galera.wait_until_applied()
    deletions = tmp_path / "deletions.log"
    inis = scrubber_inis(tmp_path, galera_urls, store_root)

    runs = run_scrubbers(inis, deletions, tmp_path, after_batches=3, action=lambda: kill_node_1(galera))

    print(f"scrubbers with node 1 killed: {[(run.returncode, dict(run.outcomes)) for run in runs]}")
    dead = runs[KILLED]
    for run in (runs[node] for node in SURVIVORS):
        assert run.returncode == 0, run.stderr[-5000:]
        assert run.finished, run.stderr[-5000:]
    # The dead node's scrubber failed cleanly: its pass ended with the lost server, and nothing was recorded after.
    assert dead.returncode == 1, dead.stderr[-5000:]
    assert not dead.finished
    last_error = (LAST_ERROR.findall(dead.stderr) or [""])[-1]
    assert SERVER_GONE.search(last_error), dead.stderr[-5000:]
    engine = node_engine(SURVIVORS[0])
    with engine.connect() as connection:
        held = connection.execute(
            select(Location.claimed_by, Location.claim_expires_at).where(Location.claimed_by.is_not(None))
        ).all()
    assert {row.claimed_by for row in held} <= {dead.worker}
    if held:  # the dead worker's claims, taken over once their lease runs out
        finish_after_the_lease(inis[SURVIVORS[0]], store_root, deletions, max(row.claim_expires_at for row in held))

    backlog.assert_nothing_kept_was_touched()
    asked = Counter(backlog.key_of(url) for _worker, url in deletions_by_worker(deletions))
    assert set(asked) == backlog.gone_keys
    by_dead = {backlog.key_of(url) for worker, url in deletions_by_worker(deletions) if worker == dead.worker}
    assert {key for key, times in asked.items() if times > 1} <= by_dead  # asked twice: only what it was deleting
    assert_all_scrubbed(engine, backlog.pending)
    assert usage_drift(engine, fix=False, owners=OWNERS) == []


def finish_after_the_lease(ini: Path, store_root: Path, deletions: Path, expires_at: datetime) -> None:
    """One more pass through a live node at a clock past the dead worker's lease, as a later wake-up would be."""
    app = LazyApp(str(ini))
    log_fd = os.open(deletions, os.O_WRONLY | os.O_APPEND)
    try:
        store = RecordingStore(FileStore("file", {"datadir": str(store_root)}), log_fd, "after-the-lease")
        scrubber = Scrubber(
            app.unit_of_work(), StoreRegistry({"file": store}, "file"), FrozenClock(expires_at + timedelta(seconds=1)),
            scrub_policy(app.registry["locquota.settings"]), batch_size=BATCH, pool_size=2,
        )  # fmt: skip
        report = scrubber.run_once()
        assert report.outcomes["failed"] == report.outcomes["expired"] == 0, report
    finally:
        os.close(log_fd)
        app.close()
