"""The set-based scrubber record step (scrub_recording.record_batch) against the per-row reference.

One random backlog is built twice on the same database and store directory: several tenants, images in
several statuses with 1-3 locations, some pending_delete and some active, data shared across images and
tenants by different spellings of one file (and hard links, and rows not re-keyed yet), deletions that
fail for real (a store no longer configured, a file replaced by a directory, a symlink swapped to other
data), claims lost between claim and record (taken over, or finished by another worker), leases that ran
out before deletion. It is scrubbed batch by batch, once recorded by scrubbing.record row by row and once
by record_batch; every row of locations, images, tenant_usage and store_usage, and the store directory,
must come out identical. A second test pins the statement count of a batch: the same for 10 and 100.
"""

import os
import random
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, event, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from locations.models import (
    TEXT_KEY_VERSION,
    Image,
    ImageProperty,
    ImageStatus,
    ImageTag,
    Location,
    LocationStatus,
    Visibility,
)
from locations.services.data_references import DataKeys, DataReferences
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrub_recording import record_batch
from locations.services.scrubbing import Claim, Deletion, claim, delete_data, lock_for_recording, record
from locations.stores.base import DataIdentity, StoreRegistry
from locations.stores.file import FileStore
from locquota.clock import FrozenClock
from locquota.crypto import PLAINTEXT
from locquota.db import make_engine
from quota.models import StoreUsage, TenantUsage
from quota.services.usage_cache import CHANGED_TENANTS
from tests.conftest import T0, TABLES, empty_mariadb
from tests.fakes import POLICY

WORKER = "scrubber:test:1:recording"
THIEF = "scrubber:test:2:took-over"
GONE_STORE = "retired-store"  # a store that held data once and is no longer configured here
TENANTS = ("tenant-a", "tenant-b", "tenant-c")
BUILT_AT, SCRUB_AT = T0, T0 + timedelta(minutes=5)
NOT_DUE = timedelta(hours=1)
LATE = POLICY.lease - POLICY.safety_margin / 2  # a deletion starting this long after its claim: too late
MAX_BATCHES = 40

# How a location's URL names its file: ways of spelling one file's canonical path (one piece of data,
# shared), and names of their own (a hard link: other data by name, same inode; a symlink later swapped).
SHARED_SPELLINGS = ("canonical", "localhost", "no-authority", "dot-segment", "empty-segment", "percent", "symlink")
OWN_NAMES = ("hard-link", "swapped-symlink")
SCENARIOS = ("image-deleted", "locations-removed", "deactivated", "importing", "queued", "deleted-with-pending")
# What happens to a claimed location between its claim and its record (the first time it is claimed).
INTERVENTIONS = ("none", "taken-over", "finished-elsewhere", "late")


@dataclass(frozen=True)
class LocationPlan:
    file: int  # which file its URL reaches
    spelling: str
    retired: bool  # pending_delete (else active)
    due: bool  # its scrub time has passed at SCRUB_AT
    store_gone: bool  # recorded in a store no longer configured
    legacy: bool  # not re-keyed yet: data_key_hash of its URL's text
    intervention: str


@dataclass(frozen=True)
class ImagePlan:
    tenant: str
    scenario: str
    locations: tuple[LocationPlan, ...]


@dataclass(frozen=True)
class Plan:
    images: tuple[ImagePlan, ...]
    files: int
    directories: frozenset[int]  # files replaced by a directory once built: their deletion fails
    batch_size: int


def random_plan(rnd: random.Random) -> Plan:
    """A backlog drawn from rnd (Hypothesis drives it, so a failure shrinks towards plain pending data)."""
    files, images = 0, []
    for _ in range(rnd.randint(1, 12)):
        scenario = rnd.choice(SCENARIOS)
        locations = []
        for _ in range(rnd.randint(1, 3)):
            reuse = files > 0 and chance(rnd, 0.45)
            file = rnd.randrange(max(files - 3, 0), files) if reuse else files  # recent files: groups grow
            files += not reuse
            locations.append(
                LocationPlan(
                    file=file,
                    spelling=rnd.choice(OWN_NAMES if chance(rnd, 0.25) else SHARED_SPELLINGS),
                    retired=not chance(rnd, 0.25),
                    due=not chance(rnd, 0.15),
                    store_gone=chance(rnd, 0.08),
                    legacy=chance(rnd, 0.1),
                    intervention=rnd.choice(INTERVENTIONS[1:]) if chance(rnd, 0.3) else "none",
                )
            )
        images.append(ImagePlan(rnd.choice(TENANTS), scenario, tuple(locations)))
    directories = frozenset(file for file in range(files) if chance(rnd, 0.08))
    return Plan(tuple(images), files, directories, rnd.randint(1, 12))


def chance(rnd: random.Random, probability: float) -> bool:
    """True with this probability; False for the smallest draw, to which Hypothesis shrinks and leans."""
    return rnd.random() >= 1 - probability


def pending(
    file: int, spelling: str = "canonical", intervention: str = "none", *, retired: bool = True
) -> LocationPlan:
    return LocationPlan(file, spelling, retired, True, False, False, intervention)


# Backlogs the random test reaches only rarely, each run through the same comparison.
HAND_BUILT = {
    # Two names of one file are scrubbed together and a hard link stays: the second is released, not
    # kept, because a hard link holds the file but not the name the location reaches.
    "shared-names-and-a-live-hard-link": Plan(
        (
            ImagePlan("tenant-a", "image-deleted", (pending(0), pending(0, "localhost"))),
            ImagePlan("tenant-b", "locations-removed", (pending(0, "hard-link", retired=False),)),
        ),
        1,
        frozenset(),
        10,
    ),
    # A deleted image whose two pending locations go in one batch: back to pending_delete, then deleted.
    "deleted-image-with-two-pending": Plan(
        (ImagePlan("tenant-a", "deleted-with-pending", (pending(0), pending(1))),), 2, frozenset(), 10
    ),
    # Shared data whose other reference is lost to another worker: the claim lost keeps it live.
    "shared-with-a-lost-claim": Plan(
        (
            ImagePlan("tenant-a", "image-deleted", (pending(0, intervention="taken-over"),)),
            ImagePlan("tenant-b", "image-deleted", (pending(0, "symlink"),)),
            ImagePlan("tenant-c", "image-deleted", (pending(0, "dot-segment", "finished-elsewhere"),)),
        ),
        1,
        frozenset(),
        10,
    ),
}


def plain_plan(size: int) -> Plan:
    """size deleted images of one pending location each: the common backlog, every deletion recorded."""
    images = tuple(ImagePlan(TENANTS[n % 3], "image-deleted", (pending(n),)) for n in range(size))
    return Plan(images, size, frozenset(), size)


def mixed_plan(size: int) -> Plan:
    """size pending locations with every kind of outcome in the same proportions, in one batch."""
    images = []
    for n in range(0, size, 2):
        locations = tuple(
            LocationPlan(
                file=i - 2 * (i % 10 == 4),  # the fifth of every ten shares the third's file, on another image
                spelling=SHARED_SPELLINGS[i % len(SHARED_SPELLINGS)],
                retired=True,
                due=True,
                store_gone=i % 10 == 5,
                legacy=False,
                intervention={6: "late", 8: "taken-over", 9: "finished-elsewhere"}.get(i % 10, "none"),
            )
            for i in range(n, min(n + 2, size))
        )
        images.append(ImagePlan(TENANTS[n // 2 % 3], SCENARIOS[n // 2 % 2], locations))
    return Plan(tuple(images), size, frozenset(), size)


# --- building the backlog ------------------------------------------------------------------------


@dataclass
class Backlog:
    """What one build made: its location ids by (image, location) index, and each file's inode."""

    ids: dict[tuple[int, int], int] = field(default_factory=dict)
    inodes: dict[str, str] = field(default_factory=dict)  # "dev:ino" -> file name


def file_name(file: int) -> str:
    return f"data-{file:03d}"


def spell(root: Path, plan_file: int, spelling: str, label: str) -> str:
    """The URL of a location, making the link it goes through if it has one."""
    name, quoted_root = file_name(plan_file), quote(str(root))
    if spelling in ("symlink", "swapped-symlink", "hard-link"):
        link = root / f"{spelling}-{label}"
        if spelling == "hard-link":
            os.link(root / name, link)
        else:
            link.symlink_to(root / name)
        return f"file://{quote(str(link))}"
    return {
        "canonical": f"file://{quoted_root}/{name}",
        "localhost": f"file://localhost{quoted_root}/{name}",
        "no-authority": f"file:{quoted_root}/{name}",
        "dot-segment": f"file://{quoted_root}/./{name}",
        "empty-segment": f"file://{quoted_root}//{name}",
        "percent": f"file://{quoted_root}/{quote(name, safe='')}".replace("-", "%2D"),
    }[spelling]


def build(engine: Engine, root: Path, plan: Plan) -> Backlog:
    """Create the plan's files and rows through LocationLifecycle, as the API would have left them."""
    store = FileStore("file", {"datadir": str(root)})
    keys = DataKeys(StoreRegistry({"file": store}, "file"), PLAINTEXT)
    for file in range(plan.files):
        (root / file_name(file)).write_bytes(f"data of file {file}\n".encode() * (file % 4 + 1))
    (root / "decoy").write_bytes(b"other data\n")
    clock, backlog = FrozenClock(BUILT_AT), Backlog()
    with Session(engine) as db:
        lifecycle = LocationLifecycle(db, clock)
        for n, image_plan in enumerate(plan.images):
            image = new_image(db, lifecycle, n, image_plan)
            rows = [
                add_location(db, lifecycle, keys, root, image, f"{n}-{k}", location)
                for k, location in enumerate(image_plan.locations)
            ]
            retire(lifecycle, image, image_plan, rows)
            db.flush()
            backlog.ids.update({(n, k): row.id for k, row in enumerate(rows)})
        db.commit()
    for path in root.iterdir():
        if path.is_file() and not path.is_symlink():
            status = path.stat()
            backlog.inodes[f"{status.st_dev}:{status.st_ino}"] = file_name_of(root, path)
    for link in root.glob("swapped-symlink-*"):
        link.unlink()
        link.symlink_to(root / "decoy")  # the URL now reaches other data than when it was added
    for file in plan.directories:
        (root / file_name(file)).unlink()
        (root / file_name(file)).mkdir()
    return backlog


def file_name_of(root: Path, path: Path) -> str:
    """The data file a name reaches (a hard link's inode is its file's)."""
    status = path.stat()
    for candidate in sorted(root.glob("data-*")):
        if candidate.stat().st_ino == status.st_ino:
            return candidate.name
    return path.name


def new_image(db: Session, lifecycle: LocationLifecycle, n: int, plan: ImagePlan) -> Image:
    status = {"importing": ImageStatus.IMPORTING, "queued": ImageStatus.QUEUED}.get(plan.scenario, ImageStatus.ACTIVE)
    image = Image(
        id=uuid.UUID(int=n + 1),
        name=f"image-{n}",
        status=status,
        visibility=Visibility.PRIVATE,
        owner=plan.tenant,
        size=100,
        disk_format="raw",
        container_format="bare",
        min_disk=0,
        min_ram=0,
        protected=False,
        os_hidden=False,
        created_at=BUILT_AT,
        updated_at=BUILT_AT,
    )
    db.add(image)
    lifecycle.create_image(image, None)  # type: ignore[arg-type]
    return image


def add_location(
    db: Session,
    lifecycle: LocationLifecycle,
    keys: DataKeys,
    root: Path,
    image: Image,
    label: str,
    plan: LocationPlan,
) -> Location:
    url = spell(root, plan.file, plan.spelling, label)
    identity = keys.identify(url)
    if plan.store_gone:
        identity = DataIdentity(url)  # what a store not configured here is keyed by: the URL's text
    size = (root / file_name(plan.file)).stat().st_size
    location = lifecycle.add(image, url, identity, GONE_STORE if plan.store_gone else "file", {}, size, limits=None)
    if plan.legacy:
        location.data_key_version, location.data_inode = TEXT_KEY_VERSION, None
        location.data_key_hash = PLAINTEXT.digest(url)
    return location


def retire(lifecycle: LocationLifecycle, image: Image, plan: ImagePlan, rows: list[Location]) -> None:
    """Take the planned locations out of service the way each scenario does."""
    if plan.scenario == "image-deleted":
        lifecycle.set_image_status(image, ImageStatus.PENDING_DELETE)
    elif plan.scenario == "deactivated":
        lifecycle.set_image_status(image, ImageStatus.DEACTIVATED)
    elif plan.scenario == "deleted-with-pending":  # an import's staged data handed over after the image went
        lifecycle.set_image_status(image, ImageStatus.DELETED)
    everything = plan.scenario in ("image-deleted", "deleted-with-pending")
    for row, location in zip(rows, plan.locations, strict=True):
        if everything or location.retired:
            lifecycle.retire(row, delay=timedelta() if location.due else NOT_DUE)


# --- scrubbing it --------------------------------------------------------------------------------

Recorder = Callable[[Session, FrozenClock, DataKeys, list[Claim], list[Deletion]], list[bool]]


def record_per_row(
    db: Session, clock: FrozenClock, keys: DataKeys, claims: list[Claim], deletions: list[Deletion]
) -> list[bool]:
    """The reference: what Scrubber.run_once does today."""
    lifecycle, references = LocationLifecycle(db, clock), DataReferences(db, keys)
    lock_for_recording(lifecycle, references, claims)
    return [
        record(db, clock, lifecycle, references, WORKER, POLICY, item, deletion)
        for item, deletion in zip(claims, deletions, strict=True)
    ]


def record_set_based(
    db: Session, clock: FrozenClock, keys: DataKeys, claims: list[Claim], deletions: list[Deletion]
) -> list[bool]:
    lifecycle, references = LocationLifecycle(db, clock), DataReferences(db, keys)
    return record_batch(db, clock, lifecycle, references, WORKER, POLICY, claims, deletions)


@dataclass
class Scrubbed:
    """Per batch: what the recorder returned and which tenants' cached usage it marked changed."""

    batches: list[tuple[list[bool], set[str]]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # deletion outcome and whether it was recorded


def scrub(engine: Engine, root: Path, plan: Plan, backlog: Backlog, recorder: Recorder) -> Scrubbed:
    """Claim, delete and record batch after batch until nothing is due, with the plan's interventions."""
    stores = StoreRegistry({"file": FileStore("file", {"datadir": str(root)})}, "file")
    keys = DataKeys(stores, PLAINTEXT)
    interventions = {
        backlog.ids[n, k]: location.intervention
        for n, image in enumerate(plan.images)
        for k, location in enumerate(image.locations)
    }
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    clock, scrubbed, seen = FrozenClock(SCRUB_AT), Scrubbed(), set()
    for _ in range(MAX_BATCHES):
        with sessions.begin() as db:
            claims = claim(db, clock, DataReferences(db, keys), WORKER, POLICY, limit=plan.batch_size)
        if not claims:
            break
        first_time = {
            item.location_id: interventions[item.location_id] for item in claims if item.location_id not in seen
        }
        seen.update(first_time)
        intervene(sessions, clock, first_time)
        late = FrozenClock(clock.now() + LATE)
        deletions = [
            delete_data(stores, late if first_time.get(item.location_id) == "late" else clock, POLICY, item)
            for item in claims
        ]
        with sessions.begin() as db:
            recorded = recorder(db, clock, keys, claims, deletions)
            scrubbed.batches.append((recorded, set(db.info.get(CHANGED_TENANTS, ()))))
        scrubbed.outcomes.update(
            f"{deletion.outcome} {'recorded' if done else 'not recorded'}"
            for deletion, done in zip(deletions, recorded, strict=True)
        )
        clock.advance(seconds=7)
    else:
        pytest.fail("the backlog never drained")
    return scrubbed


def intervene(sessions: sessionmaker, clock: FrozenClock, interventions: dict[int, str]) -> None:
    """Another worker takes claims over (their lease ran out), or finishes a location meanwhile."""
    taken = sorted(location_id for location_id, what in interventions.items() if what == "taken-over")
    finished = sorted(location_id for location_id, what in interventions.items() if what == "finished-elsewhere")
    with sessions.begin() as db:
        if taken:
            db.execute(
                update(Location)
                .where(Location.id.in_(taken))
                .values(claimed_by=THIEF, claim_expires_at=clock.now() + POLICY.lease * 10)
            )
        lifecycle = LocationLifecycle(db, clock)
        for location_id in finished:
            location = db.get_one(Location, location_id)
            lifecycle.lock_usage([location.image.owner])
            lifecycle.move(location, LocationStatus.DELETED)
            lifecycle.settle(location.image)


# --- comparing -----------------------------------------------------------------------------------


def snapshot(engine: Engine, root: Path, backlog: Backlog) -> dict[str, object]:
    """Every row the scrubber may write, and every name in the store (inodes named by their file)."""
    tables = {}
    with engine.connect() as connection:
        for model, order in (
            (Location, Location.id),
            (Image, Image.id),
            (TenantUsage, TenantUsage.tenant_id),
            (StoreUsage, (StoreUsage.tenant_id, StoreUsage.store, StoreUsage.state)),
        ):
            order_by = order if isinstance(order, tuple) else (order,)
            rows = connection.execute(select(model.__table__).order_by(*order_by)).mappings().all()  # type: ignore[attr-defined]
            tables[model.__tablename__] = [dict(row) for row in rows]
    for row in tables["locations"]:
        inode = row["data_inode"]
        row["data_inode"] = None if inode is None else backlog.inodes.get(inode, f"unknown inode {inode}")
    return {"tables": tables, "store": store_listing(root)}


def store_listing(root: Path) -> dict[str, object]:
    listing: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            listing[name] = ("symlink", os.readlink(path))
        elif path.is_dir():
            listing[name] = ("directory",)
        else:
            listing[name] = ("file", path.read_bytes(), path.stat().st_nlink)
    return listing


def reset(engine: Engine, root: Path) -> None:
    """An empty database (ids start again at 1) and an empty store."""
    if engine.dialect.name in ("mysql", "mariadb"):
        empty_mariadb(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        elif engine.dialect.name == "sqlite":
            for model in (Location, ImageTag, ImageProperty, Image, StoreUsage, TenantUsage):
                connection.execute(delete(model))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()


def run(engine: Engine, root: Path, plan: Plan, recorder: Recorder) -> tuple[Scrubbed, dict[str, object]]:
    reset(engine, root)
    backlog = build(engine, root, plan)
    scrubbed = scrub(engine, root, plan, backlog, recorder)
    return scrubbed, snapshot(engine, root, backlog)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return (tmp_path / "store").resolve()


# --- the tests ------------------------------------------------------------------------------------


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rnd=st.randoms(use_true_random=False))
def test_set_based_recording_leaves_what_the_per_row_path_leaves(engine, root, rnd):
    plan = random_plan(rnd)

    reference, expected = run(engine, root, plan, record_per_row)
    batched, actual = run(engine, root, plan, record_set_based)

    for outcome in reference.outcomes:
        hypothesis.event(outcome)
    for n, image in enumerate(expected["tables"]["images"]):  # type: ignore[index]
        hypothesis.event(f"{plan.images[n].scenario} image ends {image['status']}")
    assert batched.batches == reference.batches
    assert actual["store"] == expected["store"]
    for table, rows in expected["tables"].items():  # type: ignore[attr-defined]
        assert actual["tables"][table] == rows, table  # type: ignore[index]


@pytest.mark.parametrize("plan", HAND_BUILT.values(), ids=HAND_BUILT.keys())
def test_set_based_recording_matches_on_hand_built_backlogs(engine, root, plan):
    reference, expected = run(engine, root, plan, record_per_row)
    batched, actual = run(engine, root, plan, record_set_based)

    assert batched.batches == reference.batches
    assert actual == expected


def count_statements(engine: Engine, root: Path, plan: Plan, recorder: Recorder) -> tuple[int, int]:
    """How many statements recording the plan's one batch costs, and how many locations it held."""
    reset(engine, root)
    backlog = build(engine, root, plan)
    counted: list[int] = []  # per batch

    def counting(db: Session, clock: FrozenClock, keys: DataKeys, claims: list[Claim], deletions: list[Deletion]):
        statements: list[str] = []

        def count(_connection: object, _cursor: object, statement: str, *_rest: object) -> None:
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            return recorder(db, clock, keys, claims, deletions)
        finally:
            event.remove(engine, "before_cursor_execute", count)
            counted.append(len(statements))

    scrubbed = scrub(engine, root, plan, backlog, counting)
    return counted[0], len(scrubbed.batches[0][0])


@pytest.mark.parametrize("backlog", [plain_plan, mixed_plan], ids=["plain", "mixed"])
def test_a_batch_costs_the_same_statements_whatever_its_size(engine, root, backlog, record_property, capsys):
    small, small_batch = count_statements(engine, root, backlog(10), record_set_based)
    large, large_batch = count_statements(engine, root, backlog(100), record_set_based)
    per_row, per_row_batch = count_statements(engine, root, backlog(100), record_per_row)

    assert (small_batch, large_batch, per_row_batch) == (10, 100, 100)
    assert small == large
    record_property("statements_per_batch", large)
    record_property("per_row_statements_per_location", per_row / per_row_batch)
    with capsys.disabled():
        print(
            f"\n[{engine.dialect.name}, {backlog.__name__}] record_batch: {small} statements for a batch of 10,"
            f" {large} for 100; per-row record: {per_row} for 100 ({per_row / per_row_batch:.2f} per location)"
        )
