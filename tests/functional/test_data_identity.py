"""One identity per piece of data, whatever the URL spelling (SPEC section 6).

Every spelling in ALIASES reaches one tenant's uploaded file. Another tenant can add none of them (403,
nothing changed); the same tenant may, on a second image, and then the data is shared: deleting and
scrubbing either image leaves it while the other is live, and it is deleted once (each of its names
once) when both are gone. A symlink swapped after the add is never served nor followed by the scrubber.
"""

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, LocationStatus
from locations.scrubber import Scrubber
from tests.fakes import (
    POLICY,
    SCRUB_TIME,
    FakeFailingStore,
    build_app_with_store,
    registry_of,
    scrub_settings,
    unit_of_work_on,
)

DATA = b"tenant a's image \x00\xff" * 64
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def encoded(text: str) -> str:
    """Every byte percent-encoded."""
    return "".join(f"%{byte:02X}" for byte in os.fsencode(text))


def via_symlink(root: Path, name: str, _outside: Path) -> str:
    (root / f"{name}.symlink").symlink_to(root / name)
    return f"file://{root}/{name}.symlink"


def via_relative_symlink(root: Path, name: str, _outside: Path) -> str:
    (root / "nested").mkdir()
    (root / "nested" / "alias").symlink_to(Path("..") / name)
    return f"file://{root}/nested/alias"


def via_symlinked_directory(root: Path, name: str, _outside: Path) -> str:
    (root / "dir-link").symlink_to(root, target_is_directory=True)
    return f"file://{root}/dir-link/{name}"


def via_root_reached_through_a_symlink(root: Path, name: str, outside: Path) -> str:
    (outside / "root-link").symlink_to(root, target_is_directory=True)
    return f"file://{outside}/root-link/{name}"


def via_hard_link(root: Path, name: str, _outside: Path) -> str:
    os.link(root / name, root / f"{name}.hardlink")
    return f"file://{root}/{name}.hardlink"


def via_subdirectory_and_dotdot(root: Path, name: str, _outside: Path) -> str:
    (root / "sub").mkdir()
    return f"file://{root}/sub/../{name}"


def spelled(template: str) -> Callable[[Path, str, Path], str]:
    """An alias written from the root and the file's name alone."""
    return lambda root, name, _outside: template.format(root=root, name=name, bare=str(root).lstrip("/"))


# Each builds, from the store root and the file's name (and a directory outside the root), a URL of the same file.
ALIASES: dict[str, Callable[[Path, str, Path], str]] = {
    "localhost-host": spelled("file://localhost{root}/{name}"),
    "localhost-host-uppercase": spelled("file://LOCALHOST{root}/{name}"),
    "no-authority": spelled("file:{root}/{name}"),
    "four-slashes": spelled("file:////{bare}/{name}"),
    "scheme-uppercase": spelled("FILE://{root}/{name}"),
    "scheme-mixed-case": spelled("File://{root}/{name}"),
    "percent-encoded-name": lambda root, name, _outside: f"file://{root}/%{ord(name[0]):02x}{name[1:]}",
    "percent-encoded-name-fully": lambda root, name, _outside: f"file://{root}/{encoded(name)}",
    "percent-encoded-slashes": lambda root, name, _outside: "file:///" + str(root / name)[1:].replace("/", "%2F"),
    "percent-encoded-slash": spelled("file://{root}%2F{name}"),
    "dot-segment": spelled("file://{root}/./{name}"),
    "dot-segments-repeated": spelled("file://{root}/././{name}"),
    "dotdot-through-missing-directory": spelled("file://{root}/missing/../{name}"),
    "dotdot-through-subdirectory": via_subdirectory_and_dotdot,
    "percent-encoded-dotdot": spelled("file://{root}/x/%2e%2E/{name}"),
    "empty-segment": spelled("file://{root}//{name}"),
    "empty-segments": spelled("file://{root}///{name}"),
    "trailing-slash": spelled("file://{root}/{name}/"),
    "symlink-to-the-file": via_symlink,
    "relative-symlink": via_relative_symlink,
    "symlinked-directory": via_symlinked_directory,
    "root-through-an-outside-symlink": via_root_reached_through_a_symlink,
    "hard-link": via_hard_link,
}
NAMES = {"hard-link": 2}  # how many names the data has in the store (a hard link is a second one)


@pytest.fixture
def settings(settings):
    return {**scrub_settings(settings, delayed_delete=True), "locquota.show_multiple_locations": "true"}


@pytest.fixture
def store(store_root: Path) -> FakeFailingStore:
    return FakeFailingStore.at(store_root)


@pytest.fixture
def wsgi_app(settings, store, clock):
    router = build_app_with_store(settings, store, clock)
    yield router
    router.registry["locquota.engine"].dispose()


@pytest.fixture
def scrubber(engine, store, clock) -> Scrubber:
    return Scrubber(unit_of_work_on(engine), registry_of(store), clock, POLICY, batch_size=10, pool_size=2)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    return directory


def create(app, headers) -> str:
    body = {"name": "img", "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=headers, status=201).json["id"]


def uploaded(app, headers, data: bytes = DATA) -> str:
    image_id = create(app, headers)
    app.put(f"/v2/images/{image_id}/file", data, headers={**headers, "Content-Type": "application/octet-stream"})
    return image_id


def add_location(app, image_id: str, url: str, headers, status: int = 200):
    operations = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}]
    return app.patch_json(
        f"/v2/images/{image_id}", operations, headers={**headers, "Content-Type": PATCH_TYPE}, status=status
    )


def location_rows(db: Session) -> list[tuple[object, ...]]:
    db.rollback()
    return [tuple(row) for row in db.execute(select(Location.id, Location.status, Location.image_id))]


def image_status(db: Session, image_id: str) -> ImageStatus:
    db.rollback()
    return db.get_one(Image, uuid.UUID(image_id)).status


def scrub_after_delete(app, scrubber: Scrubber, clock, image_id: str, headers) -> None:
    app.delete(f"/v2/images/{image_id}", headers=headers, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    scrubber.run_once()


@pytest.mark.parametrize("alias", ALIASES.values(), ids=ALIASES.keys())
def test_another_tenant_cannot_add_any_spelling_of_a_tenants_file(
    app, db, store, outside, tenant, other_tenant, usage_of, alias
):
    victim = uploaded(app, tenant)
    url = alias(store.root, victim, outside)
    intruder = create(app, other_tenant)
    before = (usage_of("tenant-a"), usage_of("tenant-b"), location_rows(db))

    res = add_location(app, intruder, url, other_tenant, status=403)

    assert res.json["error"]["code"] == "location_in_use"
    assert (usage_of("tenant-a"), usage_of("tenant-b"), location_rows(db)) == before
    assert image_status(db, intruder) is ImageStatus.QUEUED
    assert app.get(f"/v2/images/{victim}/file", headers=tenant, status=200).body == DATA


@pytest.mark.parametrize("first", ["original-first", "alias-first"])
@pytest.mark.parametrize("alias", ALIASES.keys())
def test_a_second_spelling_on_the_same_tenants_image_is_shared_data(
    app, db, store, outside, tenant, clock, scrubber, alias, first
):
    original = uploaded(app, tenant)
    url = ALIASES[alias](store.root, original, outside)
    second = create(app, tenant)
    add_location(app, second, url, tenant)
    assert app.get(f"/v2/images/{second}/file", headers=tenant, status=200).body == DATA
    gone, kept = (original, second) if first == "original-first" else (second, original)

    scrub_after_delete(app, scrubber, clock, gone, tenant)

    assert image_status(db, gone) is ImageStatus.DELETED
    assert app.get(f"/v2/images/{kept}/file", headers=tenant, status=200).body == DATA

    scrub_after_delete(app, scrubber, clock, kept, tenant)

    assert image_status(db, kept) is ImageStatus.DELETED
    assert {status for _id, status, _image in location_rows(db)} == {LocationStatus.DELETED}
    assert len(store.delete_calls) == NAMES.get(alias, 1)  # each name of the data deleted exactly once
    assert not any(path.is_file() for path in store.root.rglob("*"))  # no name of the data is left


@pytest.mark.parametrize("alias", ["localhost-host", "percent-encoded-name-fully", "symlink-to-the-file", "hard-link"])
def test_a_second_spelling_of_data_the_image_has_is_a_duplicate(app, db, store, outside, tenant, usage_of, alias):
    image = uploaded(app, tenant)
    url = ALIASES[alias](store.root, image, outside)
    before = (usage_of("tenant-a"), location_rows(db))

    res = add_location(app, image, url, tenant, status=400)

    assert res.json["error"]["code"] == "duplicate_location"
    assert (usage_of("tenant-a"), location_rows(db)) == before


# --- a symlink swapped after the add ---------------------------------------------------------------------


@pytest.fixture
def linked_image(app, store, tenant) -> tuple[str, Path]:
    """An image of tenant a whose only location is a symlink in the root to tenant a's own uploaded file."""
    own = uploaded(app, tenant, b"tenant a's own")
    link = store.root / "swappable"
    link.symlink_to(store.root / own)
    image = create(app, tenant)
    add_location(app, image, f"file://{link}", tenant)
    assert app.get(f"/v2/images/{image}/file", headers=tenant, status=200).body == b"tenant a's own"
    return image, link


def swap(link: Path, target: Path) -> None:
    link.unlink()
    link.symlink_to(target)


def test_a_symlink_swapped_to_another_tenants_file_is_not_served(app, store, tenant, other_tenant, linked_image):
    image, link = linked_image
    victim = uploaded(app, other_tenant)
    swap(link, store.root / victim)

    res = app.get(f"/v2/images/{image}/file", headers=tenant, status=409)

    assert res.json["error"]["code"] == "location_data_changed"
    assert DATA not in res.body


def test_a_symlink_swapped_out_of_the_root_is_not_served(app, tenant, outside, linked_image):
    image, link = linked_image
    (outside / "secret").write_bytes(b"secret")
    swap(link, outside / "secret")

    res = app.get(f"/v2/images/{image}/file", headers=tenant, status=409)

    assert res.json["error"]["code"] == "location_data_changed"
    assert b"secret" not in res.body


@pytest.mark.parametrize("target", ["another-tenants-file", "outside-the-root"])
def test_the_scrubber_deletes_nothing_through_a_swapped_symlink(
    app, db, store, tenant, other_tenant, outside, clock, scrubber, linked_image, target
):
    image, link = linked_image
    victim = store.root / uploaded(app, other_tenant)
    (outside / "secret").write_bytes(b"secret")
    swap(link, victim if target == "another-tenants-file" else outside / "secret")

    scrub_after_delete(app, scrubber, clock, image, tenant)

    assert victim.read_bytes() == DATA
    assert (outside / "secret").read_bytes() == b"secret"
    assert store.delete_calls == []
    db.rollback()
    [location] = db.scalars(select(Location).where(Location.image_id == uuid.UUID(image))).all()
    assert location.status is LocationStatus.PENDING_DELETE
    assert location.attempts == 1
    expected = "other data than when it was added" if target == "another-tenants-file" else "LocationOutsideStore"
    assert expected in (location.last_error or "")


# --- hostile spellings: a clear 4xx, nothing changed -----------------------------------------------------


def symlink_loop(root: Path, _outside: Path) -> str:
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    return f"file://{root}/loop-a"


def self_loop(root: Path, _outside: Path) -> str:
    (root / "self").symlink_to(root / "self")
    return f"file://{root}/self/x"


def directory(root: Path, _outside: Path) -> str:
    (root / "dir").mkdir()
    return f"file://{root}/dir"


def fifo(root: Path, _outside: Path) -> str:
    os.mkfifo(root / "fifo")
    return f"file://{root}/fifo"


def symlink_out(root: Path, outside: Path) -> str:
    (outside / "secret").write_bytes(b"secret")
    (root / "out").symlink_to(outside / "secret")
    return f"file://{root}/out"


def fixed(template: str) -> Callable[[Path, Path], str]:
    return lambda root, outside: template.format(root=root, outside=outside, name="img")


HOSTILE: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    "symlink-loop": (symlink_loop, "location_undecidable"),
    "symlink-self-loop": (self_loop, "location_undecidable"),
    "directory": (directory, "location_not_a_file"),
    "directory-trailing-slash": (lambda root, outside: directory(root, outside) + "/", "location_not_a_file"),
    "fifo": (fifo, "location_not_a_file"),
    "the-root": (fixed("file://{root}"), "location_outside_store"),
    "the-root-dotted": (fixed("file://{root}/sub/.."), "location_outside_store"),
    "dotdot-out": (fixed("file://{root}/../outside/secret"), "location_outside_store"),
    "percent-dotdot-out": (fixed("file://{root}/%2e%2e/outside/secret"), "location_outside_store"),
    "symlink-out": (symlink_out, "location_outside_store"),
    "double-encoded-dotdot": (fixed("file://{root}/%252e%252e/outside/secret"), "location_data_missing"),
    "double-encoded-name": (fixed("file://{root}/%2569mg"), "location_data_missing"),
    "nul": (fixed("file://{root}/img%00.txt"), "location_outside_store"),
    "empty-query": (fixed("file://{root}/img?"), "location_outside_store"),
    "empty-fragment": (fixed("file://{root}/img#"), "location_outside_store"),
    "other-host": (fixed("file://example.com{root}/img"), "location_outside_store"),
}


@pytest.mark.parametrize(("build", "code"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_spellings_are_refused_and_change_nothing(app, db, store, outside, tenant, usage_of, build, code):
    (store.root / "img").write_bytes(DATA)
    image = create(app, tenant)
    url = build(store.root, outside)
    before = (usage_of("tenant-a"), location_rows(db))

    res = add_location(app, image, url, tenant, status=400)

    assert res.json["error"]["code"] == code
    assert (usage_of("tenant-a"), location_rows(db)) == before
    assert image_status(db, image) is ImageStatus.QUEUED


def test_unreferenced_data_belongs_to_the_first_tenant_that_adds_it(app, db, store, tenant, other_tenant):
    """Data no location references yet goes to the first tenant that adds it; the second gets 403."""
    (store.root / "orphan").write_bytes(DATA)
    first, second = create(app, tenant), create(app, other_tenant)

    add_location(app, first, f"file://{store.root}/orphan", tenant)
    res = add_location(app, second, f"file://localhost{store.root}/./orphan", other_tenant, status=403)

    assert res.json["error"]["code"] == "location_in_use"
    db.rollback()
    assert db.scalar(select(func.count()).select_from(Location)) == 1


def test_an_upload_never_replaces_data_stored_under_its_name(app, db, store, tenant, other_tenant, usage_of):
    """Data another location reaches is never overwritten: the upload is refused and the image is queued again."""
    image_id = str(uuid.uuid4())
    (store.root / image_id).write_bytes(b"tenant b's data")
    theirs = create(app, other_tenant)
    add_location(app, theirs, f"file://{store.root}/{image_id}", other_tenant)
    body = {"id": image_id, "name": "img", "disk_format": "raw", "container_format": "bare"}
    app.post_json("/v2/images", body, headers=tenant, status=201)
    before = usage_of("tenant-a")

    res = app.put(
        f"/v2/images/{image_id}/file", DATA, headers={**tenant, "Content-Type": "application/octet-stream"}, status=409
    )

    assert res.json["error"]["code"] == "image_conflict"
    assert (store.root / image_id).read_bytes() == b"tenant b's data"
    assert app.get(f"/v2/images/{theirs}/file", headers=other_tenant, status=200).body == b"tenant b's data"
    assert image_status(db, image_id) is ImageStatus.QUEUED
    assert usage_of("tenant-a") == before
    assert not any(path.name.endswith(".partial") for path in store.root.iterdir())
