"""GET /metrics through the app: the gauges equal what the API reports, the counters move with the events.

Instruments live in this process's default registry, shared by every test, so counters are compared
as before/after deltas. Scrapes are parsed with prometheus_client's own parser.
"""

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import port_for
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import Image, ImageStatus, Location, LocationStatus, Visibility, data_key_digest
from locations.scrubber import Scrubber
from locations.services.backlog import by_store_query
from locations.services.recount import reconcile_batches
from locations.services.scrubbing import due_filter
from locquota.clock import Clock
from quota.models import TenantUsage
from tests.conftest import T0, identity
from tests.database_gates import table_locked
from tests.fakes import (
    POLICY,
    SCRUB_TIME,
    FakeFailingStore,
    build_app_with_store,
    registry_of,
    scrub_settings,
    unit_of_work_on,
)

WAIT_SECONDS = 30  # a bound on waiting for another connection's lock, never a timing the test relies on


def scrape(app, **headers) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    res = app.get("/metrics", headers=headers, status=200)
    samples = {}
    for family in text_string_to_metric_families(res.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str, **labels: str) -> float:
    """The sum over every series of name whose labels include these."""
    return sum(
        sample
        for (sample_name, sample_labels), sample in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    )


# --- the endpoint ------------------------------------------------------------------------------------------


def test_metrics_needs_no_identity_and_speaks_the_text_format(app):
    res = app.get("/metrics", status=200)
    assert res.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE locquota_backlog_locations gauge" in res.text


def test_metrics_speaks_openmetrics_when_asked(app):
    res = app.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}, status=200)
    assert res.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert res.text.endswith("# EOF\n")


def test_every_collector_reports_up(app):
    samples = scrape(app)
    for collector in ("backlog", "quota", "reconcile", "data_keys", "uploads", "audit", "cache"):
        assert value(samples, "locquota_collector_up", collector=collector) == 1


# --- backlog -------------------------------------------------------------------------------------------------


@pytest.fixture
def store(store_root: Path) -> FakeFailingStore:
    return FakeFailingStore.at(store_root)


@pytest.fixture
def delayed_app(settings, store, clock):
    return TestApp(build_app_with_store(scrub_settings(settings, delayed_delete=True), store, clock))


def test_backlog_gauges_equal_the_backlog_api_after_deletes_scrubs_and_failures(
    delayed_app, store, clock, tenant, other_tenant, admin
):
    app = delayed_app
    images = []
    for headers, size in ((tenant, 100), (tenant, 200), (other_tenant, 300), (other_tenant, 400)):
        image = app.post_json("/v2/images", {"name": "b", "disk_format": "raw", "container_format": "bare"},
                              headers=headers, status=201).json  # fmt: skip
        app.put(f"/v2/images/{image['id']}/file", b"x" * size,
                headers={**headers, "Content-Type": "application/octet-stream"})  # fmt: skip
        images.append((image["id"], headers))
    for image_id, headers in images:
        app.delete(f"/v2/images/{image_id}", headers=headers, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    store.fail_deletes = 2
    scrubber = Scrubber(
        unit_of_work_on(app.app.registry["locquota.session_factory"]), registry_of(store), clock, POLICY,
        batch_size=3, pool_size=1,
    )  # fmt: skip
    scrubber.run_once()  # one batch of 3: two fail, one is deleted; then the 4th is deleted
    clock.advance(seconds=5)

    api = app.get("/v1/scrubber/backlog", headers=admin, status=200).json
    samples = scrape(app)

    assert len(api["locations"]) == 2
    for store_total in api["totals"]:
        assert value(samples, "locquota_backlog_locations", store=store_total["store"]) == store_total["locations"]
        assert value(samples, "locquota_backlog_bytes", store=store_total["store"]) == store_total["size_bytes"]
    assert total(samples, "locquota_backlog_locations") == len(api["locations"])
    assert total(samples, "locquota_backlog_failing_locations") == sum(
        entry["attempts"] > 0 for entry in api["locations"]
    )
    assert total(samples, "locquota_backlog_overdue_locations") == sum(entry["due"] for entry in api["locations"])
    oldest = max(entry["age_seconds"] for entry in api["locations"])
    assert value(samples, "locquota_backlog_oldest_age_seconds") == pytest.approx(oldest)


def test_an_empty_backlog_reads_zero(app):
    samples = scrape(app)
    assert total(samples, "locquota_backlog_locations") == 0
    assert value(samples, "locquota_backlog_oldest_age_seconds") == 0


@pytest.mark.postgresql
def test_the_backlog_query_uses_the_partial_index(db, engine):
    """With many active locations and few pending ones, PostgreSQL reads the pending ones off the index."""
    image_rows = [
        {"id": f"00000000-0000-0000-0000-{n:012d}", "name": "e", "status": ImageStatus.ACTIVE,
         "visibility": Visibility.SHARED, "owner": "explain", "min_disk": 0, "min_ram": 0, "protected": False,
         "os_hidden": False, "created_at": T0, "updated_at": T0}
        for n in range(2000)
    ]  # fmt: skip
    db.execute(insert(Image), image_rows)
    location_rows = []
    for n in range(20000):
        url = f"file:///srv/images/{n}"
        pending = n % 400 == 0
        location_rows.append(
            {"image_id": image_rows[n % 2000]["id"], "url": url, "data_key_hash": data_key_digest(url), "store": "file",
             "location_metadata": {}, "status": LocationStatus.PENDING_DELETE if pending else LocationStatus.ACTIVE,
             "size_bytes": 1, "created_at": T0, "updated_at": T0, "attempts": 0,
             "pending_since": T0 if pending else None, "scrub_after": T0 if pending else None}
        )  # fmt: skip
    db.execute(insert(Location), location_rows)
    db.commit()
    db.execute(text("ANALYZE locations"))
    statement = by_store_query(T0).compile(engine, compile_kwargs={"literal_binds": True})
    plan = "\n".join(row[0] for row in db.execute(text(f"EXPLAIN {statement}")))
    assert "Index Only Scan using ix_locations_pending_backlog" in plan, plan  # the covering index alone
    assert "Seq Scan on locations" not in plan, plan


@pytest.mark.mariadb
def test_mariadb_reads_the_backlog_from_the_pending_rows_alone(db, engine):
    """MariaDB has no partial indexes: the status-led ones start at the pending rows, among many others.

    20,000 locations of which 50 are pending_delete and half the rest deleted (with the scrub columns they
    kept): the backlog summary, the backlog list and the scrubber's due rows each read the pending rows
    off their index (EXPLAIN's `key` and `rows`), never the table or the other rows.
    """
    image_rows = [
        {"id": uuid.UUID(int=n), "name": "e", "status": ImageStatus.ACTIVE, "visibility": Visibility.SHARED,
         "owner": "explain", "min_disk": 0, "min_ram": 0, "protected": False, "os_hidden": False,
         "created_at": T0, "updated_at": T0}
        for n in range(1, 2001)
    ]  # fmt: skip
    db.execute(insert(Image), image_rows)
    location_rows = []
    for n in range(20000):
        url = f"file:///srv/images/{n}"
        status = (
            LocationStatus.PENDING_DELETE if n % 400 == 0
            else LocationStatus.DELETED if n % 2 else LocationStatus.ACTIVE
        )  # fmt: skip
        scrubbed = status is not LocationStatus.ACTIVE  # deleted rows keep pending_since and scrub_after
        location_rows.append(
            {"image_id": image_rows[n % 2000]["id"], "url": url, "data_key_hash": data_key_digest(url), "store": "file",
             "location_metadata": {}, "status": status, "size_bytes": 1, "created_at": T0, "updated_at": T0,
             "attempts": 0, "pending_since": T0 if scrubbed else None, "scrub_after": T0 if scrubbed else None}
        )  # fmt: skip
    db.execute(insert(Location), location_rows)
    db.commit()
    db.execute(text("ANALYZE TABLE locations"))
    due = (
        select(Location.id)
        .where(*due_filter(T0 + timedelta(days=1)))
        .order_by(Location.scrub_after, Location.id)
        .limit(500)
    )
    oldest = (
        select(Location.id, Location.pending_since)
        .where(Location.status == LocationStatus.PENDING_DELETE)
        .order_by(Location.pending_since, Location.id)
        .limit(100)
    )
    for query, index in [
        (by_store_query(T0), "ix_locations_pending_backlog"),
        (due, "ix_locations_pending_delete"),
        (oldest, "ix_locations_pending_since"),
    ]:
        statement = query.compile(engine, compile_kwargs={"literal_binds": True})
        [plan] = [row._mapping for row in db.execute(text(f"EXPLAIN {statement}"))]
        assert plan["key"] == index, plan
        assert int(plan["rows"]) <= 100, plan  # the 50 pending rows (an estimate), not 20,000


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_a_slow_database_fails_the_backlog_part_not_the_scrape(make_app, settings, database_url):
    """Another session holds the locations table: the backlog query hits its timeout, and says so."""
    app = make_app({**settings, "locquota.metrics_query_timeout_seconds": "0.2"})
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with table_locked(database_url, "locations"):
            locked.set()
            release.wait(WAIT_SECONDS)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(WAIT_SECONDS)
        samples = scrape(app)
    finally:
        release.set()
        holder.join(WAIT_SECONDS)
    assert value(samples, "locquota_collector_up", collector="backlog") == 0
    assert value(samples, "locquota_collector_up", collector="quota") == 1
    assert value(samples, "locquota_collector_up", collector="cache") == 1
    assert value(scrape(app), "locquota_collector_up", collector="backlog") == 1  # and it recovers


# --- quota -----------------------------------------------------------------------------------------------------


def uploaded(app, headers, size):
    image = app.post_json("/v2/images", {"name": "q", "disk_format": "raw", "container_format": "bare"},
                          headers=headers, status=201).json  # fmt: skip
    app.put(f"/v2/images/{image['id']}/file", b"q" * size,
            headers={**headers, "Content-Type": "application/octet-stream"})  # fmt: skip


def test_quota_series_cover_only_the_largest_tenants(make_app, settings, admin):
    app = make_app({**settings, "locquota.metrics_top_tenants": "2"})
    for tenant_id, size in (("small", 10), ("large", 1000), ("medium", 100)):
        uploaded(app, identity(tenant_id), size)
    app.put_json("/v1/tenants/large/limits", {"limits": {"image_size_total": 5}}, headers=admin)
    samples = scrape(app)
    tenants = {dict(labels)["tenant"] for name, labels in samples if name == "locquota_quota_usage"}
    assert tenants == {"large", "medium"}
    assert value(samples, "locquota_quota_usage", tenant="large", resource="image_size_total") == 1000
    assert value(samples, "locquota_quota_usage", tenant="large", resource="image_count_total") == 1
    assert value(samples, "locquota_quota_limit", tenant="large", resource="image_size_total") == 5 * 1024 * 1024
    assert ("locquota_quota_limit", (("resource", "image_size_total"), ("tenant", "medium"))) not in samples


def test_per_tenant_series_can_be_switched_off(make_app, settings, tenant):
    app = make_app({**settings, "locquota.metrics_top_tenants": "0"})
    uploaded(app, tenant, 10)
    samples = scrape(app)
    assert not [name for name, _labels in samples if name in ("locquota_quota_usage", "locquota_quota_limit")]


def test_refused_admissions_are_counted_by_resource(app, tenant, admin):
    app.put_json("/v1/tenants/tenant-a/limits", {"limits": {"image_count_total": 0}}, headers=admin)
    before = value(scrape(app), "locquota_quota_admissions_refused_total", resource="image_count_total")
    app.post_json("/v2/images", {"name": "x"}, headers=tenant, status=413)
    after = value(scrape(app), "locquota_quota_admissions_refused_total", resource="image_count_total")
    assert after == before + 1


# --- cache, reconcile --------------------------------------------------------------------------------------------


def test_usage_cache_hits_and_misses_are_counted(app, tenant):
    before = scrape(app)
    app.get("/v1/usage", headers=tenant)
    app.get("/v1/usage", headers=tenant)
    after = scrape(app)
    assert value(after, "locquota_usage_cache_misses_total") == value(before, "locquota_usage_cache_misses_total") + 1
    assert value(after, "locquota_usage_cache_hits_total") == value(before, "locquota_usage_cache_hits_total") + 1


def test_a_dead_redis_reads_as_cache_down_and_counts_errors(make_app, settings, tenant):
    app = make_app({**settings, "locquota.redis_url": f"redis://127.0.0.1:{port_for.select_random()}/0"})
    before = total(scrape(app), "locquota_cache_errors_total")
    app.get("/v1/usage", headers=tenant)
    samples = scrape(app)
    assert value(samples, "locquota_cache_up") == 0
    assert value(samples, "locquota_collector_up", collector="cache") == 1  # the part ran; the cache is down
    assert total(samples, "locquota_cache_errors_total") > before


def test_reconcile_drift_is_exported(app, engine, tenant):
    uploaded(app, tenant, 10)
    with Session(engine) as session, session.begin():
        session.query(TenantUsage).update({"image_size_total": 7})
    batches = list(reconcile_batches(unit_of_work_on(engine), Clock(), 100, fix=False))
    assert sum(len(batch.drift) for batch in batches) == 1
    samples = scrape(app)
    assert value(samples, "locquota_reconcile_drift_figures") == 1
    assert value(samples, "locquota_reconcile_drifted_tenants") == 1


# --- HTTP -----------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD:Warning")
def test_requests_are_timed_by_route_name_never_by_path(app, tenant):
    before = scrape(app)
    app.get("/v2/images", headers=tenant, status=200)
    for n in range(3):
        app.get(f"/no/such/path/{n}", headers=tenant, status=404)
    app.request("/v2/images", method="BREW", headers=tenant, status="*")
    after = scrape(app)

    def count(**labels):
        name = "locquota_http_request_duration_seconds_count"
        return value(after, name, **labels) - value(before, name, **labels)

    assert count(route="images.collection", method="GET", status="200") == 1
    assert count(route="unmatched", method="GET", status="404") == 3
    assert total(after, "locquota_http_request_duration_seconds_count", method="other") >= 1
    paths = [labels for name, labels in after if name.startswith("locquota_http") and "/no/such" in str(labels)]
    assert paths == []


# --- scrubber -----------------------------------------------------------------------------------------------------


def test_scrubber_counts_deletions_failures_and_its_last_success(delayed_app, store, clock, tenant):
    app = delayed_app
    for size in (10, 20):
        image = app.post_json("/v2/images", {"name": "s", "disk_format": "raw", "container_format": "bare"},
                              headers=tenant, status=201).json  # fmt: skip
        app.put(f"/v2/images/{image['id']}/file", b"s" * size,
                headers={**tenant, "Content-Type": "application/octet-stream"})  # fmt: skip
        app.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    store.fail_deletes = 1
    before = scrape(app)
    Scrubber(unit_of_work_on(app.app.registry["locquota.session_factory"]), registry_of(store), clock, POLICY,
             batch_size=10, pool_size=1).run_once()  # fmt: skip
    after = scrape(app)
    deleted = "locquota_scrubber_deletions_total"
    failed = "locquota_scrubber_failures_total"
    assert value(after, deleted, store="file") == value(before, deleted, store="file") + 1
    assert (
        value(after, failed, store="file", reason="StoreError")
        == value(before, failed, store="file", reason="StoreError") + 1
    )
    assert (
        value(after, "locquota_scrubber_batch_duration_seconds_count")
        == value(before, "locquota_scrubber_batch_duration_seconds_count") + 1
    )
    assert value(after, "locquota_scrubber_last_success_timestamp_seconds") > 0
