"""Scrubbers as real processes over data that locations reach by different spellings (SPEC section 6).

Every file in the store is named by several URLs spelled differently: the canonical one, the host and scheme
spellings, dot and empty segments, `..` through a directory, percent-encoding, a symlink (test_data_identity's
ALIASES). Each row carries what the application writes for it: the hash of the store's canonical data key and
the file's inode. Several `locquota scrub` processes, released at once, must agree through that key alone: no
file loses its data while a live location reaches it, and each file is deleted exactly once, when its last
location goes. Nothing waits on time: the processes are held at a table lock until all of them queue on it.
"""

from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from locations.models import DATA_KEY_VERSION, Image, ImageStatus, Location, LocationStatus, data_key_digest
from locations.services.recount import recount
from locations.stores.base import DataIdentity
from locations.stores.file import FileStore
from locquota.clock import Clock
from quota.models import TenantUsage
from quota.services.reconcile import Drift, Reconciler
from tests.conftest import write_ini
from tests.functional import test_scrubber_processes
from tests.functional.test_data_identity import ALIASES, spelled
from tests.functional.test_scrubber_processes import (
    DATA,
    OWNER,
    PROCESSES,
    file_url,
    locations_by_url,
    make_store_files,
    plant_backlog,
    run_scrubbers_together,
    scrub_settings,
    wall_now,
)

pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]
engine, store_root = test_scrubber_processes.engine, test_scrubber_processes.store_root  # its fixtures, here too

# The ALIASES that name the file itself (not a second name of it, like a hard link) and that can be made for
# every file of one root (the others create a fixed directory or link once per root).
ALIASES_PER_FILE = (
    "localhost-host",
    "localhost-host-uppercase",
    "no-authority",
    "four-slashes",
    "scheme-uppercase",
    "scheme-mixed-case",
    "percent-encoded-name",
    "percent-encoded-name-fully",
    "percent-encoded-slashes",
    "dot-segment",
    "dot-segments-repeated",
    "dotdot-through-missing-directory",
    "percent-encoded-dotdot",
    "empty-segment",
    "empty-segments",
    "trailing-slash",
    "symlink-to-the-file",
)
# `..` out of a directory that exists (made once, in spell_files), where realpath resolves it on disk.
THROUGH_SUBDIRECTORY = spelled("file://{root}/sub/../{name}")
# Files two tenants both reach (one scrubber batch each), and the second tenant.
SHARED_FILES = 20
OTHER_OWNER = "scrub-tenant-2"


def spell_files(root: Path, files: list[Path]) -> list[list[str]]:
    """Per file, every URL of it this module uses, the canonical one first; a different rotation for each."""
    (root / "sub").mkdir()
    spellings = []
    for n, path in enumerate(files):
        urls = [
            file_url(path),
            THROUGH_SUBDIRECTORY(root, path.name, root),
            *(ALIASES[alias](root, path.name, root) for alias in ALIASES_PER_FILE),
        ]
        spellings.append(urls[n % len(urls) :] + urls[: n % len(urls)])
    return spellings


def identities(root: Path, spellings: list[list[str]]) -> dict[str, DataIdentity]:
    """What the store says each URL reaches; each file's spellings must reach one key, or nothing is aliased."""
    store = FileStore("file", {"datadir": str(root)})
    found = {url: store.identify(url) for urls in spellings for url in urls}
    for urls in spellings:
        assert len(set(urls)) == len(urls)
        assert {found[url].key for url in urls} == {found[urls[0]].key}, urls
        assert {found[url].inode for url in urls} == {found[urls[0]].inode} != {None}, urls
    assert len({found[urls[0]].key for urls in spellings}) == len(spellings)
    return found


def plant_aliased(
    engine: Engine, pending: list[str], active: list[str], found: dict[str, DataIdentity], now: datetime
) -> None:
    """Rows keyed as the application keys them: pending ones due (one pending_delete image each), active ones on
    active images; and the tenant's usage charged for all of it."""
    ids = plant_backlog(engine, pending + active, now)
    with Session(engine) as session, session.begin():
        for url, location_id in ids.items():
            session.execute(
                update(Location)
                .where(Location.id == location_id)
                .values(
                    data_key_hash=data_key_digest(found[url].key),
                    data_key_version=DATA_KEY_VERSION,
                    data_inode=found[url].inode,
                )
            )
        active_ids = [ids[url] for url in active]
        session.execute(
            update(Location)
            .where(Location.id.in_(active_ids))
            .values(status=LocationStatus.ACTIVE, pending_since=None, scrub_after=None)
        )
        session.execute(
            update(Image)
            .where(Image.id.in_(select(Location.image_id).where(Location.id.in_(active_ids))))
            .values(status=ImageStatus.ACTIVE)
        )
    # Charged as every write path charges it. The tenant needs its usage row: the scrubber locks that row before
    # any data key, and without one it is created mid-batch, after them (two scrubbers then deadlock).
    assert usage_drift(engine, fix=True)


def usage_drift(engine: Engine, *, fix: bool, owners: tuple[str, ...] = (OWNER,)) -> list[Drift]:
    """Where the tenants' stored usage differs from a recount of their images and locations (fix: repair it)."""
    with Session(engine) as session, session.begin():
        return Reconciler(session, Clock()).compare(recount(session, list(owners)), fix=fix)


def scrub_together(database_url: str, store_root: Path, tmp_path: Path, batch_size: int) -> Counter[str]:
    """PROCESSES `locquota scrub` processes released at once; their outcomes summed."""
    settings = scrub_settings(database_url, store_root, scrub_batch_size=str(batch_size), scrub_pool_size="2")
    outcomes = run_scrubbers_together(database_url, write_ini(tmp_path / "scrub.ini", settings), PROCESSES)
    total = sum(outcomes, Counter())
    print(f"outcomes of {PROCESSES} scrubbers: {dict(total)}")
    assert total["failed"] == total["expired"] == 0, outcomes
    return total


def claimed_order(engine: Engine) -> list[str]:
    """The URLs of the due locations in the order the scrubbers claim them (scrubbing.claim's order)."""
    with engine.connect() as connection:
        return list(connection.scalars(select(Location.url).order_by(Location.scrub_after, Location.id)))


def assert_all_scrubbed(engine: Engine, pending: list[str]) -> None:
    """Every pending location is deleted, recorded once, its claim let go; its image deleted with it."""
    rows = locations_by_url(engine)
    for url in pending:
        row = rows[url]
        assert row.status == LocationStatus.DELETED, (url, row.status, row.last_error)
        assert row.deleted_at is not None, url
        assert (row.attempts, row.last_error) == (0, None), url
    assert all(row.claimed_by is None and row.claim_expires_at is None for row in rows.values())
    with engine.connect() as connection:
        image_of = dict(connection.execute(select(Location.url, Image.status).join(Location.image)).all())
    assert all(image_of[url] == ImageStatus.DELETED for url in pending)
    assert usage_drift(engine, fix=False) == []  # each deletion charged once: usage equals the recount


def test_scrubber_processes_keep_aliased_data_while_an_active_location_reaches_it(
    database_url, engine, store_root, tmp_path
):
    """A file with an active location keeps its bytes whatever its pending spellings; the others go, once each."""
    files = make_store_files(store_root, 40)
    spellings = spell_files(store_root, files)
    found = identities(store_root, spellings)
    # File n: 1 to 4 pending spellings; every third file also has an active location, spelled yet otherwise.
    pending_of = [urls[: 1 + n % 4] for n, urls in enumerate(spellings)]
    active_of = {n: urls[1 + n % 4] for n, urls in enumerate(spellings) if n % 3 == 0}
    # Planted round by round (every file's first spelling, then every second one, ...): a file's locations lie
    # far apart in the claim order, so different scrubbers claim them.
    pending = [urls[r] for r in range(4) for urls in pending_of if r < len(urls)]
    active = list(active_of.values())
    plant_aliased(engine, pending, active, found, wall_now())
    active_rows = {url: locations_by_url(engine)[url] for url in active}

    total = scrub_together(database_url, store_root, tmp_path, batch_size=8)

    kept = [path for n, path in enumerate(files) if n in active_of]
    gone = [path for n, path in enumerate(files) if n not in active_of]
    assert all(path.read_bytes() == DATA for path in kept)
    assert not any(path.exists() for path in gone)
    # The store deleted each unreferenced file once (the last of its locations); every other pending
    # location was recorded as sharing its data.
    assert total["deleted"] == len(gone)
    assert total["deleted"] + total["shared"] == len(pending)
    assert_all_scrubbed(engine, pending)
    assert {url: locations_by_url(engine)[url] for url in active} == active_rows
    with engine.connect() as connection:
        statuses = Counter(connection.scalars(select(Image.status)))
    assert statuses == Counter({ImageStatus.DELETED: len(pending), ImageStatus.ACTIVE: len(active)})


def test_scrubber_processes_delete_data_pending_under_two_spellings_once(database_url, engine, store_root, tmp_path):
    """Two pending locations of one file, claimed one at a time by racing scrubbers: the file is deleted once.

    Each scrubber sees the other location live when it claims; whichever records second finds its partner
    gone and releases its location, due at once, so the file is deleted rather than leaked.
    """
    files = make_store_files(store_root, 30)
    spellings = spell_files(store_root, files)
    found = identities(store_root, spellings)
    # Partners next to each other in the claim order, and one location per batch: concurrent claims of a pair.
    pending = [url for urls in spellings for url in urls[:2]]
    plant_aliased(engine, pending, [], found, wall_now())

    total = scrub_together(database_url, store_root, tmp_path, batch_size=1)

    assert not any(path.exists() for path in files)
    assert total["deleted"] == len(files)
    assert total["shared"] == len(files)
    assert_all_scrubbed(engine, pending)


def test_scrubber_processes_record_data_shared_by_two_tenants_without_deadlock(
    database_url, engine, store_root, tmp_path
):
    """Two tenants' pending locations of the same files, batched in opposite file orders: no scrubber deadlocks.

    Data shared across tenants predates canonical data keys (each tenant wrote its own spelling; rekey reports
    such rows as collisions). One scrubber's batch holds the first tenant's rows, another's the second's; each
    records every row as shared, locking its data key's group. Taken row by row, in each batch's own order,
    those locks cross and PostgreSQL kills one scrubber (DeadlockDetected): every batch must take them in one
    order (lock_for_recording: the owners' usage, then the shared data keys, sorted).
    """
    files = make_store_files(store_root, SHARED_FILES)
    spellings = spell_files(store_root, files)
    found = identities(store_root, spellings)
    first, second = [urls[0] for urls in spellings], [urls[1] for urls in spellings]
    # Claimed in this order, a batch a tenant: the first tenant's files 0 to n, then the second's n to 0.
    # plant_backlog makes later rows due earlier, so they are planted in reverse; ids follow the planting, and
    # a batch is recorded in id order: the first tenant's files n to 0, the second's 0 to n, crossing.
    claim_order = first + second[::-1]
    pending = claim_order[::-1]
    plant_aliased(engine, pending, [], found, wall_now())
    with Session(engine) as session, session.begin():
        images_of_second = select(Location.image_id).where(Location.url.in_(second))
        session.execute(update(Image).where(Image.id.in_(images_of_second)).values(owner=OTHER_OWNER))
    # Both tenants charged, each with its usage row (which the scrubber locks before any data key).
    assert usage_drift(engine, fix=True, owners=(OWNER, OTHER_OWNER))
    with engine.connect() as connection:
        assert set(connection.scalars(select(TenantUsage.tenant_id))) == {OWNER, OTHER_OWNER}
    assert claimed_order(engine) == claim_order

    total = scrub_together(database_url, store_root, tmp_path, batch_size=SHARED_FILES)

    # Every process exited 0 (run_scrubbers_together: a deadlock is a traceback and exit 1). Each file was
    # deleted once: its location recorded first as shared, the other released then, and claimed again.
    assert not any(path.exists() for path in files)
    assert total["deleted"] == len(files)
    assert total["deleted"] + total["shared"] == len(pending)
    assert_all_scrubbed(engine, pending)
    assert usage_drift(engine, fix=False, owners=(OWNER, OTHER_OWNER)) == []
