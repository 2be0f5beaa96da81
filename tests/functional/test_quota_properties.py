"""A stateful property test of usage accounting: after any sequence of operations, stored usage is exact.

Hypothesis drives create / upload / add location / remove location / delete (delayed) / scrub / restore
/ limit changes for two tenants through WebTest on the real app, with a store whose deletes fail on
demand. After every step each tenant's stored totals and per-store split must equal both the recount
`locquota reconcile` uses and an independent count made here in Python from the rows; every 413 must
have changed nothing.
"""

import itertools
import shutil
import uuid
from collections import Counter
from pathlib import Path

import redis
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import HIDDEN_IMAGE_STATUSES, Image, ImageProperty, ImageStatus, ImageTag, Location
from locations.models import LocationStatus as Loc
from locations.scrubber import Scrubber
from locations.services.factories import scrub_policy
from locations.services.recount import recount
from locquota.clock import FrozenClock
from locquota.settings import Settings
from quota.models import StoreUsage, TenantLimit, TenantUsage
from tests.conftest import T0, identity
from tests.fakes import FakeFailingStore, build_app_with_store, registry_of, unit_of_work_on

TENANTS = ("tenant-a", "tenant-b")
ADMIN = identity("operators", "admin")
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
MACHINE_SETTINGS = settings(
    max_examples=12,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LIVE = (Loc.ACTIVE, Loc.PENDING_DELETE)


def reset(engine: object, store_root: Path) -> None:
    """An empty database and store for the next example."""
    with Session(engine) as session:  # type: ignore[arg-type]
        for model in (Location, ImageTag, ImageProperty, Image, StoreUsage, TenantUsage, TenantLimit):
            session.execute(delete(model))
        session.commit()
    shutil.rmtree(store_root, ignore_errors=True)
    store_root.mkdir(parents=True)


def stored_usage(engine: object, tenant_id: str) -> tuple[dict[str, int], dict[tuple[str, str], tuple[int, int]]]:
    """A tenant's stored totals and its non-zero store split."""
    with Session(engine) as session:  # type: ignore[arg-type]
        row = session.get(TenantUsage, tenant_id)
        names = ("image_size_total", "image_count_total", "image_count_uploading", "image_stage_total")
        totals = {name: getattr(row, name) if row else 0 for name in names}
        space = {
            (usage.store, usage.state): (usage.size_bytes, usage.locations)
            for usage in session.scalars(select(StoreUsage).where(StoreUsage.tenant_id == tenant_id))
            if usage.size_bytes or usage.locations
        }
    return totals, space


def counted_here(engine: object, tenant_id: str) -> tuple[dict[str, int], dict[tuple[str, str], tuple[int, int]]]:
    """The same figures, counted in Python from every row (independent of the recount's SQL)."""
    with Session(engine) as session:  # type: ignore[arg-type]
        images = session.scalars(select(Image).where(Image.owner == tenant_id)).all()
        space: Counter[tuple[str, str]] = Counter()
        locations: Counter[tuple[str, str]] = Counter()
        for image in images:
            for location in image.locations:
                if location.status in LIVE:
                    space[(location.store, location.status.value)] += location.size_bytes or 0
                    locations[(location.store, location.status.value)] += 1
        totals = {
            "image_size_total": sum(space.values()),
            "image_count_total": sum(image.status not in (ImageStatus.DELETED, ImageStatus.KILLED) for image in images),
            "image_count_uploading": sum(image.status is ImageStatus.SAVING for image in images),
            "image_stage_total": 0,
        }
    return totals, {key: (space[key], locations[key]) for key in locations}


def test_stored_usage_equals_a_recount_after_any_operations(settings, store_root):
    app_settings = {
        **settings,
        "locquota.delayed_delete": "true",
        "locquota.scrub_time": "60",
        "locquota.scrub_retry_base_seconds": "30",
        "locquota.scrub_retry_max_seconds": "120",
        "locquota.show_multiple_locations": "true",
        "locquota.quota.locations_per_image": "3",
    }
    policy = scrub_policy(Settings.from_ini(app_settings))
    file_names = itertools.count()

    class UsageMachine(RuleBasedStateMachine):
        images = Bundle("images")

        def __init__(self) -> None:
            super().__init__()
            self.clock = FrozenClock(T0)
            self.store = FakeFailingStore.at(store_root)
            self.wsgi = build_app_with_store(app_settings, self.store, self.clock)
            self.engine = self.wsgi.registry["locquota.engine"]
            reset(self.engine, store_root)
            redis.Redis.from_url(app_settings["locquota.redis_url"]).flushall()
            self.app = TestApp(self.wsgi)
            self.scrubber = Scrubber(
                unit_of_work_on(self.wsgi.registry["locquota.session_factory"]),
                registry_of(self.store),
                self.clock,
                policy,
                batch_size=3,
                pool_size=1,
            )
            self.owner: dict[str, str] = {}

        def teardown(self) -> None:
            self.engine.dispose()

        def status_of(self, image_id: str) -> ImageStatus:
            with Session(self.engine) as session:
                return session.get_one(Image, uuid.UUID(image_id)).status

        def act(self, tenant_id: str, call, allowed: set[int]) -> object:
            """Make one request; a 413 must leave the tenant's stored usage exactly as it was."""
            before = stored_usage(self.engine, tenant_id)
            res = call()
            assert res.status_int in allowed, (res.status, res.body[:300])
            event(f"{res.request.method} {res.status_int}")
            if res.status_int == 413:
                assert res.json["error"]["code"] in {"quota_exceeded", "location_limit_exceeded"}
                assert stored_usage(self.engine, tenant_id) == before, "a refused request changed usage"
            return res

        # --- operations ---------------------------------------------------------------------------

        @rule(target=images, tenant_id=st.sampled_from(TENANTS))
        def create(self, tenant_id: str) -> str:
            body = {"name": "prop", "disk_format": "raw", "container_format": "bare"}
            res = self.act(
                tenant_id,
                lambda: self.app.post_json("/v2/images", body, headers=identity(tenant_id), expect_errors=True),
                {201, 413},
            )
            if res.status_int != 201:
                return str(uuid.UUID(int=0))  # a refused create: later rules on it meet a 404
            self.owner[res.json["id"]] = tenant_id
            return res.json["id"]

        @rule(target=images, tenant_id=st.sampled_from(TENANTS), data=st.binary(min_size=1, max_size=64))
        def create_with_data(self, tenant_id: str, data: bytes) -> str:
            image_id = self.create(tenant_id)
            self.upload(image_id, data)
            return image_id

        @rule(image_id=images, data=st.binary(min_size=1, max_size=64))
        def upload(self, image_id: str, data: bytes) -> None:
            tenant_id = self.owner.get(image_id, TENANTS[0])
            headers = {**identity(tenant_id), "Content-Type": "application/octet-stream"}
            self.act(
                tenant_id,
                lambda: self.app.put(f"/v2/images/{image_id}/file", data, headers=headers, expect_errors=True),
                {204, 404, 409, 413},
            )

        @rule(image_id=images, size=st.integers(min_value=1, max_value=64))
        def add_location(self, image_id: str, size: int) -> None:
            tenant_id = self.owner.get(image_id, TENANTS[0])
            path = store_root / f"extra-{next(file_names)}"
            path.write_bytes(b"l" * size)
            operations = [{"op": "add", "path": "/locations/-", "value": {"url": f"file://{path}", "metadata": {}}}]
            headers = {**identity(tenant_id), "Content-Type": PATCH_TYPE}
            self.act(
                tenant_id,
                lambda: self.app.patch_json(f"/v2/images/{image_id}", operations, headers=headers, expect_errors=True),
                {200, 404, 409, 413},
            )

        @rule(image_id=images)
        def remove_a_location(self, image_id: str) -> None:
            tenant_id = self.owner.get(image_id, TENANTS[0])
            operations = [{"op": "remove", "path": "/locations/0"}]
            headers = {**ADMIN, "Content-Type": PATCH_TYPE}
            self.act(
                tenant_id,
                lambda: self.app.patch_json(f"/v2/images/{image_id}", operations, headers=headers, expect_errors=True),
                {200, 400, 403, 404, 409},
            )

        @rule(image_id=images)
        def delete(self, image_id: str) -> None:
            tenant_id = self.owner.get(image_id, TENANTS[0])
            self.act(
                tenant_id,
                lambda: self.app.delete(f"/v2/images/{image_id}", headers=identity(tenant_id), expect_errors=True),
                {204, 404},
            )

        @rule()
        def fail_next_delete(self) -> None:
            self.store.fail_deletes = 1

        @rule(seconds=st.sampled_from([0, 31, 61, 200]))
        def scrub(self, seconds: int) -> None:
            self.clock.advance(seconds=seconds)
            for outcome in self.scrubber.run_once().outcomes:
                event(f"scrub {outcome}")

        @rule(image_id=images)
        def restore(self, image_id: str) -> None:
            tenant_id = self.owner.get(image_id, TENANTS[0])
            res = self.act(
                tenant_id,
                lambda: self.app.post(f"/v1/images/{image_id}/restore", headers=ADMIN, expect_errors=True),
                {200, 404, 409},
            )
            if res.status_int == 200:
                assert self.status_of(image_id) is ImageStatus.ACTIVE

        @rule(
            tenant_id=st.sampled_from(TENANTS),
            images=st.sampled_from([None, 1, 3]),
            size_mib=st.sampled_from([None, 0, 1]),
        )
        def set_limits(self, tenant_id: str, images: int | None, size_mib: int | None) -> None:
            body = {"limits": {"image_count_total": images, "image_size_total": size_mib}}
            self.app.put_json(f"/v1/tenants/{tenant_id}/limits", body, headers=ADMIN, status=200)

        # --- invariants ---------------------------------------------------------------------------

        @invariant()
        def stored_usage_is_exact(self) -> None:
            with Session(self.engine) as session:
                recounted = {totals.tenant_id: totals for totals in recount(session, list(TENANTS))}
            for tenant_id in TENANTS:
                totals, space = stored_usage(self.engine, tenant_id)
                assert (totals, space) == counted_here(self.engine, tenant_id), tenant_id
                actual = recounted[tenant_id]
                assert totals == {resource.value: value for resource, value in actual.totals.items()}, tenant_id
                assert space == {
                    (store, state.value): (value.size_bytes, value.locations)
                    for (store, state), value in actual.space.items()
                }, tenant_id

        @invariant()
        def the_usage_api_agrees_with_the_database(self) -> None:
            for tenant_id in TENANTS:
                body = self.app.get("/v1/usage", headers=identity(tenant_id), status=200).json
                totals, _space = stored_usage(self.engine, tenant_id)
                assert {name: body["resources"][name]["usage"] for name in totals} == totals

        @invariant()
        def hidden_images_are_not_listed(self) -> None:
            for tenant_id in TENANTS:
                listed = self.app.get("/v2/images", headers=identity(tenant_id), status=200).json["images"]
                assert not {image["status"] for image in listed} & {str(s) for s in HIDDEN_IMAGE_STATUSES}

    run_state_machine_as_test(UsageMachine, settings=MACHINE_SETTINGS)
