"""The scrape benchmark's data: a fixed pending_delete backlog among a growing number of active locations.

Everything is made inside PostgreSQL by INSERT ... SELECT generate_series (as benchmarks.quota.dataset does),
BATCH_LOCATIONS active locations a transaction, nothing held in Python. Every row is a function of its number
n and of the moment the dataset was made (`now`), so the backlog is the same rows, with the same values, at
every size, and `expected()` computes what the backlog gauges must read.

- Pending location p (0 <= p < PENDING_LOCATIONS) has the id p + 1, belongs to its own pending_delete image
  (owner TENANTS[p % 5]) in store STORES[p % 2], became pending (2 days + p minutes) before `now`; three in
  ten (p % 10 < 3) are past their scrub time (scrub_after one day after pending_since), the others are due a
  day from `now`; every 25th has failed 1 to 3 times (attempts, last_error). size_bytes 1 MiB + p % 4096.
- Active location n has the id PENDING_LOCATIONS + 1 + n and its own active image (owner TENANTS[n % 5]),
  store STORES[n % 2], size 1 MiB + n % 4096.

Where the pending rows sit in the heap decides how many table pages the backlog query visits. In production
they are spread among the active ones (a location turns pending when its image is deleted, at any age), so at
each growth step the pending rows are deleted and inserted again, same ids and values, interleaved evenly
among that step's new active rows (one ORDER BY per batch): at 1M, one pending row every ~90 active rows,
not a block of 10k rows at the start of the table that the query would read on a few hundred pages.
`VACUUM ANALYZE images, locations` and a CHECKPOINT follow every step, then the reconcile repair brings the
tenants' usage rows (which the scrape's quota part reads) to a recount.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from locations.services.recount import recount
from locquota.clock import Clock
from quota.services.reconcile import Drift, Reconciler

PENDING_LOCATIONS = 10_000
STORES = ("file", "rbd")
TENANTS = tuple(f"bench-scrape-tenant-{number}" for number in range(5))
BATCH_LOCATIONS = 100_000
SIZE_BYTES = 1 << 20  # plus n % 4096
OVERDUE_TENTHS = 3  # p % 10 < 3: past the scrub time
FAILING_EVERY = 25  # p % 25 == 0: failed at least once (odd, so in both stores)
PENDING_SINCE_BEFORE_NOW = timedelta(days=2)  # plus p minutes
SCRUB_DELAY = timedelta(days=1)

ProgressCallback = Callable[[int], None]

# The owners (t0..t4), stores (s0, s1) and base size the statements pick from by row number.
_PARAMS_OF = {"s0": STORES[0], "s1": STORES[1], "size": SIZE_BYTES, **{f"t{i}": t for i, t in enumerate(TENANTS)}}

PENDING_IMAGES = text(
    """
    INSERT INTO images (id, name, status, visibility, owner, size, disk_format, container_format,
                        min_disk, min_ram, protected, os_hidden, created_at, updated_at)
    SELECT md5('bench-scrape-pending:' || p)::uuid, 'scrape-pending-' || p, 'pending_delete', 'private',
           (ARRAY[:t0, :t1, :t2, :t3, :t4])[p % 5 + 1], :size + p % 4096, 'raw', 'bare', 0, 0, false, false,
           CAST(:now AS timestamp) - interval '30 days',
           CAST(:now AS timestamp) - :since_days * interval '1 day' - p * interval '1 minute'
    FROM generate_series(0, :pending - 1) AS p
    """
)
ACTIVE_IMAGES = text(
    """
    INSERT INTO images (id, name, status, visibility, owner, size, disk_format, container_format,
                        min_disk, min_ram, protected, os_hidden, created_at, updated_at)
    SELECT md5('bench-scrape-active:' || n)::uuid, 'scrape-' || n, 'active', 'private',
           (ARRAY[:t0, :t1, :t2, :t3, :t4])[n % 5 + 1], :size + n % 4096, 'raw', 'bare', 0, 0, false, false,
           timestamp '2025-01-01' + n * interval '1 second', timestamp '2025-01-01' + n * interval '1 second'
    FROM generate_series(:start, :stop - 1) AS n
    """
)
# One batch of a growth step: its active locations, and the pending ones whose even share of the step's
# positions falls in the batch, inserted in position order so each pending row lands among active ones.
LOCATIONS = text(
    """
    INSERT INTO locations (id, image_id, url, data_key_hash, store, metadata, status, size_bytes, created_at,
                           updated_at, deleted_at, pending_since, scrub_after, attempts, last_error)
    SELECT id, image_id, url, encode(sha256(convert_to(url, 'UTF8')), 'hex'), store, '{}', status, size_bytes,
           created_at, updated_at, NULL, pending_since, scrub_after, attempts, last_error
    FROM (
        SELECT :pending + 1 + n AS id, image_id, 'file:///var/lib/glance/images/' || image_id AS url,
               (ARRAY[:s0, :s1])[n % 2 + 1] AS store, 'active' AS status, :size + n % 4096 AS size_bytes,
               timestamp '2025-01-01' + n * interval '1 second' AS created_at,
               timestamp '2025-01-01' + n * interval '1 second' AS updated_at,
               NULL::timestamp AS pending_since, NULL::timestamp AS scrub_after, 0 AS attempts,
               NULL::text AS last_error, n::float8 AS position
        FROM generate_series(:start, :stop - 1) AS n,
             LATERAL (SELECT md5('bench-scrape-active:' || n)::uuid AS image_id) AS active
        UNION ALL
        SELECT 1 + p, image_id, 'file:///var/lib/glance/images/' || image_id,
               (ARRAY[:s0, :s1])[p % 2 + 1], 'pending_delete', :size + p % 4096,
               CAST(:now AS timestamp) - interval '30 days', since, since,
               CASE WHEN p % 10 < :overdue_tenths THEN since + :delay_days * interval '1 day'
                    ELSE CAST(:now AS timestamp) + :delay_days * interval '1 day' + p * interval '1 second' END,
               CASE WHEN p % :failing_every = 0 THEN 1 + (p / :failing_every) % 3 ELSE 0 END,
               CASE WHEN p % :failing_every = 0 THEN 'bench: simulated store failure' END,
               position
        FROM generate_series(0, :pending - 1) AS p,
             LATERAL (
                 SELECT md5('bench-scrape-pending:' || p)::uuid AS image_id,
                        CAST(:now AS timestamp) - :since_days * interval '1 day' - p * interval '1 minute' AS since,
                        CAST(:loaded + (p + 0.5) * (:target - :loaded) / :pending AS float8) AS position
             ) AS pending
        WHERE position >= :start AND position < :stop
    ) AS batch
    ORDER BY position
    """
)


@dataclass(frozen=True)
class StoreExpectation:
    """What the backlog gauges of one store must read."""

    locations: int
    size_bytes: int
    overdue: int
    failing: int


@dataclass(frozen=True)
class Spread:
    """Where the pending rows sit in the locations table."""

    pending_pages: int
    table_pages: int


class ScrapeDataset:
    """The fixed backlog, made once, and the active locations, grown in steps."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Whole seconds: the database stores microseconds, and the expectations are computed from this value.
        self.now = Clock().now().replace(microsecond=0)
        self.active = 0

    def create(self) -> None:
        """The pending images (their locations come with the first growth step)."""
        with self._engine.begin() as connection:
            connection.execute(PENDING_IMAGES, self._params())

    def grow_to(self, size: int, progress: ProgressCallback | None = None) -> None:
        """Add active locations up to `size`, re-spread the pending ones among them, VACUUM ANALYZE."""
        with self._engine.begin() as connection:
            connection.execute(text("DELETE FROM locations WHERE status = 'pending_delete'"))
        for start in range(self.active, size, BATCH_LOCATIONS):
            bounds = {**self._params(), "start": start, "stop": min(start + BATCH_LOCATIONS, size)}
            bounds |= {"loaded": self.active, "target": size}
            with self._engine.begin() as connection:
                connection.execute(ACTIVE_IMAGES, bounds)
                connection.execute(LOCATIONS, bounds)
            if progress is not None:
                progress(bounds["stop"] - start)
        self.active = size
        with self._engine.begin() as connection:
            connection.execute(text("SELECT setval(pg_get_serial_sequence('locations', 'id'), max(id)) FROM locations"))
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            # A table that grew over months has been vacuumed and analyzed by autovacuum; the checkpoint writes
            # the load's dirty pages now, not while the scrapes are timed.
            connection.execute(text("VACUUM ANALYZE images, locations"))
            connection.execute(text("CHECKPOINT"))

    def repair_usage(self) -> list[Drift]:
        """The reconcile repair of every tenant (lock, recount, compare with fix), so the quota gauges are true."""
        with Session(self._engine) as db, db.begin():
            reconciler = Reconciler(db, Clock())
            reconciler.lock(list(TENANTS))
            return reconciler.compare(recount(db, list(TENANTS)), fix=True)

    def expected(self) -> dict[str, StoreExpectation]:
        """The backlog gauges by store, from the same formulas the loader runs in SQL."""
        figures: dict[str, list[int]] = {store: [0, 0, 0, 0] for store in STORES}
        for p in range(PENDING_LOCATIONS):
            figure = figures[STORES[p % 2]]
            figure[0] += 1
            figure[1] += SIZE_BYTES + p % 4096
            figure[2] += p % 10 < OVERDUE_TENTHS
            figure[3] += p % FAILING_EVERY == 0
        return {store: StoreExpectation(*figure) for store, figure in figures.items()}

    def oldest_pending_since(self) -> datetime:
        """The pending_since of the oldest pending location (p = PENDING_LOCATIONS - 1)."""
        return self.now - PENDING_SINCE_BEFORE_NOW - timedelta(minutes=PENDING_LOCATIONS - 1)

    def spread(self) -> Spread:
        """Heap pages holding pending rows, and the table's pages: how scattered the backlog is."""
        with self._engine.connect() as connection:
            pending = connection.execute(
                text("SELECT count(DISTINCT (ctid::text::point)[0]) FROM locations WHERE status = 'pending_delete'")
            ).scalar_one()
            pages = connection.execute(text("SELECT relpages FROM pg_class WHERE relname = 'locations'")).scalar_one()
        return Spread(int(pending), int(pages))

    def count_rows(self) -> dict[str, int]:
        """Locations by status, to show what the database held."""
        with self._engine.connect() as connection:
            rows = connection.execute(text("SELECT status, count(*) FROM locations GROUP BY status ORDER BY status"))
            return {str(status): int(count) for status, count in rows}

    def _params(self) -> dict[str, object]:
        return {
            **_PARAMS_OF,
            "now": self.now,
            "pending": PENDING_LOCATIONS,
            "since_days": PENDING_SINCE_BEFORE_NOW.days,
            "delay_days": SCRUB_DELAY.days,
            "overdue_tenths": OVERDUE_TENTHS,
            "failing_every": FAILING_EVERY,
        }
