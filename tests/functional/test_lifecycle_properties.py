"""A stateful property test of the location lifecycle: random API operations, invariants after every step.

Hypothesis drives create / upload / delete (delayed_delete on) / scrub (after the clock moves) / restore /
download through WebTest on the real app, with a store whose deletes fail on demand. After every step the
database and the store directory are read back and the SPEC section 2 invariants checked.
"""

import shutil
import uuid
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import HIDDEN_IMAGE_STATUSES, Image, ImageProperty, ImageStatus, ImageTag, Location
from locations.models import LocationStatus as Loc
from locations.scrubber import Scrubber
from locations.services.factories import scrub_policy
from locations.services.lifecycle import ALLOWED_TRANSITIONS
from locquota.clock import FrozenClock
from locquota.settings import Settings
from quota.models import StoreUsage, TenantLimit, TenantUsage
from tests.conftest import T0
from tests.fakes import FakeFailingStore, build_app_with_store, registry_of, unit_of_work_on

# An index into the images in some status, drawn independently of that state so replays stay consistent.
PICK = st.integers(min_value=0, max_value=63)
MACHINE_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def reset(engine: object, store_root: Path) -> None:
    """An empty database and store for the next example."""
    with Session(engine) as session:  # type: ignore[arg-type]
        for model in (Location, ImageTag, ImageProperty, Image, StoreUsage, TenantUsage, TenantLimit):
            session.execute(delete(model))
        session.commit()
    for path in store_root.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def test_lifecycle_invariants_hold_under_random_api_operations(settings, store_root, tenant, admin):
    app_settings = {
        **settings,
        "locquota.delayed_delete": "true",
        "locquota.scrub_time": "60",
        "locquota.scrub_retry_base_seconds": "30",
        "locquota.scrub_retry_max_seconds": "120",
        "locquota.scrub_lease_seconds": "300",
    }
    policy = scrub_policy(Settings.from_ini(app_settings))

    class LifecycleMachine(RuleBasedStateMachine):
        images = Bundle("images")

        def __init__(self) -> None:
            super().__init__()
            self.clock = FrozenClock(T0)
            self.store = FakeFailingStore.at(store_root)
            self.wsgi = build_app_with_store(app_settings, self.store, self.clock)
            self.engine = self.wsgi.registry["locquota.engine"]
            reset(self.engine, self.store.root)
            self.app = TestApp(self.wsgi)
            # One deletion in flight: which delete an injected failure hits must not depend on thread scheduling.
            self.scrubber = Scrubber(
                unit_of_work_on(self.engine), registry_of(self.store), self.clock, policy, batch_size=3, pool_size=1
            )
            self.seen: dict[int, Loc] = {}  # the last status observed per location
            self.data: dict[str, bytes] = {}  # what was uploaded, per image
            self.created = 0

        def teardown(self) -> None:
            self.engine.dispose()

        def images_in(self, status: ImageStatus) -> list[str]:
            """The images in status, oldest first (ids are random; the order must not be)."""
            with Session(self.engine) as session:
                query = select(Image.id).where(Image.status == status).order_by(Image.created_at, Image.name)
                return [str(image_id) for image_id in session.scalars(query)]

        def image_status(self, image_id: str) -> ImageStatus:
            with Session(self.engine) as session:
                return session.get_one(Image, uuid.UUID(image_id)).status

        # --- operations ---------------------------------------------------------------------------

        @rule(target=images)
        def create(self) -> str:
            self.created += 1
            body = {"name": f"prop-{self.created:03d}", "disk_format": "raw", "container_format": "bare"}
            return self.app.post_json("/v2/images", body, headers=tenant, status=201).json["id"]

        @rule(target=images, data=st.binary(min_size=1, max_size=64))
        def create_with_data(self, data: bytes) -> str:
            image_id = self.create()
            self.upload(image_id, data)
            return image_id

        @rule(image_id=images, data=st.binary(min_size=1, max_size=64))
        def upload(self, image_id: str, data: bytes) -> None:
            status = self.image_status(image_id)
            expected = 204 if status is ImageStatus.QUEUED else 404 if status in HIDDEN_IMAGE_STATUSES else 409
            self.app.put(
                f"/v2/images/{image_id}/file",
                data,
                headers={**tenant, "Content-Type": "application/octet-stream"},
                status=expected,
            )
            event(f"upload {expected}")
            if expected == 204:
                self.data[image_id] = data

        @rule(image_id=images)
        def delete(self, image_id: str) -> None:
            expected = 404 if self.image_status(image_id) in HIDDEN_IMAGE_STATUSES else 204
            self.app.delete(f"/v2/images/{image_id}", headers=tenant, status=expected)
            event(f"delete {expected}")

        @precondition(lambda self: self.images_in(ImageStatus.ACTIVE))
        @rule(pick=PICK)
        def delete_an_active_image(self, pick: int) -> None:
            candidates = self.images_in(ImageStatus.ACTIVE)
            self.delete(candidates[pick % len(candidates)])

        @rule()
        def fail_next_delete(self) -> None:
            self.store.fail_deletes = 1

        @rule(seconds=st.sampled_from([0, 31, 61, 200]))
        def scrub(self, seconds: int) -> None:
            self.clock.advance(seconds=seconds)
            report = self.scrubber.run_once()
            for outcome in report.outcomes:
                event(f"scrub {outcome}")

        @rule(image_id=images)
        def restore(self, image_id: str) -> None:
            expected = 200 if self.image_status(image_id) is ImageStatus.PENDING_DELETE else 409
            res = self.app.post(f"/v1/images/{image_id}/restore", headers=admin, status=expected)
            event(f"restore {expected}")
            if expected == 200:
                assert res.json["status"] == "active"
                downloaded = self.app.get(f"/v2/images/{image_id}/file", headers=tenant, status=200).body
                assert downloaded == self.data[image_id]

        @precondition(lambda self: self.images_in(ImageStatus.PENDING_DELETE))
        @rule(pick=PICK)
        def restore_a_pending_image(self, pick: int) -> None:
            candidates = self.images_in(ImageStatus.PENDING_DELETE)
            self.restore(candidates[pick % len(candidates)])

        @rule(image_id=images)
        def download(self, image_id: str) -> None:
            status = self.image_status(image_id)
            if status is ImageStatus.ACTIVE:
                body = self.app.get(f"/v2/images/{image_id}/file", headers=tenant, status=200).body
                assert body == self.data[image_id]
            elif status in HIDDEN_IMAGE_STATUSES:
                self.app.get(f"/v2/images/{image_id}/file", headers=tenant, status=404)

        # --- invariants ---------------------------------------------------------------------------

        @invariant()
        def statuses_follow_the_dag(self) -> None:
            with Session(self.engine) as session:
                rows = session.execute(select(Location.id, Location.status)).all()
            current = dict(rows)
            assert set(self.seen) <= set(current), "a location row disappeared"
            for location_id, status in current.items():
                assert status in set(Loc)
                previous = self.seen.get(location_id)
                if previous != status:
                    # Covers "deleted is final": no pair leaves deleted.
                    assert (previous, status) in ALLOWED_TRANSITIONS, (location_id, previous, status)
                self.seen[location_id] = status

        @invariant()
        def data_matches_status(self) -> None:
            with Session(self.engine) as session:
                images = dict(session.execute(select(Image.id, Image.status)).all())
                locations = session.execute(select(Location.image_id, Location.status, Location.url)).all()
            active_by_image: dict[uuid.UUID, int] = {}
            for image_id, status, url in locations:
                exists = self.store.path_for(url).exists()
                if status is Loc.ACTIVE:
                    active_by_image[image_id] = active_by_image.get(image_id, 0) + 1
                    assert exists, "an active location without its data"
                elif status is Loc.DELETED:
                    assert not exists, "a location marked deleted whose data is still there (nothing is shared)"
                else:
                    assert exists, "pending_delete data vanished before the scrubber recorded it"
            for image_id, status in images.items():
                if status is ImageStatus.ACTIVE:
                    assert active_by_image.get(image_id, 0) >= 1, "an active image without an active location"
                if status is ImageStatus.PENDING_DELETE:
                    assert active_by_image.get(image_id, 0) == 0, "a pending_delete image still serving data"

        @invariant()
        def the_api_never_shows_hidden_images(self) -> None:
            with Session(self.engine) as session:
                images = {str(image_id): status for image_id, status in session.execute(select(Image.id, Image.status))}
            shown = {image_id for image_id, status in images.items() if status not in HIDDEN_IMAGE_STATUSES}
            for headers in (tenant, admin):
                listed = self.app.get("/v2/images", headers=headers, status=200).json["images"]
                assert {image["id"] for image in listed} == shown
                assert not {image["status"] for image in listed} & {"pending_delete", "deleted"}
            for image_id, status in images.items():
                if status in HIDDEN_IMAGE_STATUSES:
                    self.app.get(f"/v2/images/{image_id}", headers=admin, status=404)

    run_state_machine_as_test(LifecycleMachine, settings=MACHINE_SETTINGS)
