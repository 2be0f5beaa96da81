"""The scrubbers' backlog for the Galera tests: files shared across spellings and tenants, some kept by an active
location (tests/functional/test_scrubber_processes_aliases.py's rows, as the application keys them)."""

from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from locations.models import Image, Location
from locquota.clock import Clock
from tests.conftest import write_ini
from tests.functional.test_scrubber_processes import DATA, OWNER, make_store_files, scrub_settings
from tests.functional.test_scrubber_processes_aliases import (
    OTHER_OWNER,
    identities,
    plant_aliased,
    spell_files,
    usage_drift,
)

OWNERS = (OWNER, OTHER_OWNER)
BATCH = 6


class Backlog:
    """`files` files: file n pending under 1 to 3 spellings; every fourth also reached by an active location
    (kept); every fifth also pending for a second tenant under yet another spelling (data shared across
    tenants predates canonical data keys). Every pending location is due now; both tenants are charged."""

    def __init__(self, engine: Engine, store_root: Path, files: int) -> None:
        self.files = make_store_files(store_root, files)
        spellings = spell_files(store_root, self.files)
        self.found = identities(store_root, spellings)
        own = {n: urls[: 1 + n % 3] for n, urls in enumerate(spellings)}
        other = [urls[4] for n, urls in enumerate(spellings) if n % 5 == 0]
        active = {n: urls[3] for n, urls in enumerate(spellings) if n % 4 == 0}
        # Planted round by round: a file's locations lie far apart in the claim order, so different scrubbers
        # (on different nodes) claim them.
        self.pending = [urls[r] for r in range(3) for urls in own.values() if r < len(urls)] + other
        self.kept = [path for n, path in enumerate(self.files) if n in active]
        self.gone = [path for n, path in enumerate(self.files) if n not in active]
        self.gone_keys = {self.found[urls[0]].key for n, urls in enumerate(spellings) if n not in active}
        plant_aliased(engine, self.pending, list(active.values()), self.found, Clock().now())
        with Session(engine) as session, session.begin():
            images = select(Location.image_id).where(Location.url.in_(other))
            session.execute(update(Image).where(Image.id.in_(images)).values(owner=OTHER_OWNER))
        assert usage_drift(engine, fix=True, owners=OWNERS)

    def key_of(self, url: str) -> str:
        """The canonical data key a URL reaches (each file's spellings share one)."""
        return self.found[url].key

    def assert_nothing_kept_was_touched(self) -> None:
        """Kept files whole, every other file gone."""
        assert all(path.read_bytes() == DATA for path in self.kept)
        assert not any(path.exists() for path in self.gone)


def scrubber_inis(workdir: Path, urls: list[str], store_root: Path) -> list[Path]:
    """One .ini per node: test_scrubber_processes' scrubber deployment, on that node, in batches of BATCH."""
    return [
        write_ini(
            workdir / f"scrub-node{n + 1}.ini",
            scrub_settings(url, store_root, scrub_batch_size=str(BATCH), scrub_pool_size="2"),
        )
        for n, url in enumerate(urls)
    ]
