"""A viewer tenant that sees N public and shared images among as many it must not list, grown in steps.

Other tenants' images come in a fixed pattern by their number n, oldest first, one second apart: n % 4 == 0
is public and n % 4 == 1 shared with the viewer, who accepted (the N it sees, half each); n % 4 == 2 and 3 are
noise the list must skip, in turns: private, shared with another project only, shared with the viewer
pending or rejected, accepted but the image deleted, public but deleted. Every shared image the viewer
accepted also has another project as member, so the viewer's rows are a part of the membership index,
not all of it. The viewer owns OWN_IMAGES private images, the oldest of all. Images a page can show
carry a property, a tag and an active location, so the page's JSON subqueries do real work.

Ids and times follow from n, so both engines hold the same rows and the client can name any visible
image without reading it back. Rows are written as the app would store them (each column's SQLAlchemy
bind processor): PostgreSQL through COPY, a transaction per batch of BATCH_IMAGES images; SQLite through
executemany, a transaction per SQLITE_COMMIT_ROWS rows. Each engine is written by its own thread.
"""

import hashlib
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import psycopg
from sqlalchemy import Dialect, Engine, Table, func, select

from locations.models import (
    Image,
    ImageMember,
    ImageProperty,
    ImageStatus,
    ImageTag,
    Location,
    LocationStatus,
    MemberStatus,
    Visibility,
    data_key_digest,
)

VIEWER = "bench-viewer"
OWNERS = tuple(f"sharer-{n:02d}" for n in range(20))
OTHER_MEMBERS = tuple(f"project-{n:02d}" for n in range(50))
OWN_IMAGES = 100
BATCH_IMAGES = 20_000
SQLITE_COMMIT_ROWS = 1_000_000
EPOCH = datetime(2025, 1, 1)
TABLES: tuple[Table, ...] = tuple(
    model.__table__  # type: ignore[misc]
    for model in (Image, ImageProperty, ImageTag, Location, ImageMember)
)

Row = tuple[object, ...]
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Kind:
    """What one of the other tenants' images is to the viewer."""

    visibility: Visibility
    status: ImageStatus
    viewer_answer: MemberStatus | None  # the viewer's membership, if it is one
    other_member: bool  # another project is a member too
    is_visible: bool  # in the viewer's default list


PUBLIC = Kind(Visibility.PUBLIC, ImageStatus.ACTIVE, None, other_member=False, is_visible=True)
ACCEPTED = Kind(Visibility.SHARED, ImageStatus.ACTIVE, MemberStatus.ACCEPTED, other_member=True, is_visible=True)
OWN = Kind(Visibility.PRIVATE, ImageStatus.ACTIVE, None, other_member=False, is_visible=True)
NOISE_EVEN = (
    Kind(Visibility.PRIVATE, ImageStatus.ACTIVE, None, other_member=False, is_visible=False),
    Kind(Visibility.SHARED, ImageStatus.ACTIVE, None, other_member=True, is_visible=False),
)
NOISE_ODD = (
    Kind(Visibility.SHARED, ImageStatus.ACTIVE, MemberStatus.PENDING, other_member=False, is_visible=False),
    Kind(Visibility.SHARED, ImageStatus.ACTIVE, MemberStatus.REJECTED, other_member=False, is_visible=False),
    Kind(Visibility.SHARED, ImageStatus.DELETED, MemberStatus.ACCEPTED, other_member=False, is_visible=False),
    Kind(Visibility.PUBLIC, ImageStatus.DELETED, None, other_member=False, is_visible=False),
)


def kind_of(n: int) -> Kind:
    """The kind of other tenants' image n (see the module docstring)."""
    slot, turn = n % 4, n // 4
    if slot == 0:
        return PUBLIC
    if slot == 1:
        return ACCEPTED
    return NOISE_EVEN[turn % 2] if slot == 2 else NOISE_ODD[turn % 4]


def image_id(namespace: str, n: int) -> uuid.UUID:
    """Image n of a namespace ("own" or "other"): random-looking, so id order is not time order."""
    return uuid.UUID(bytes=hashlib.md5(f"{namespace}:{n}".encode(), usedforsecurity=False).digest(), version=4)


class Writer(Protocol):
    """Where the rows go: one engine's tables, on one connection used by one thread at a time."""

    def write(self, table: Table, columns: tuple[str, ...], rows: list[Row]) -> None:
        """Add rows (Python values, as the models take them) to the table."""

    def end_batch(self) -> None:
        """The batch's rows are written; commit now or with a later batch."""

    def analyze(self) -> None:
        """Commit what is left, then fresh statistics, as a production database gathers them."""


@dataclass
class Batch:
    """The rows of a batch of images, by table."""

    rows: dict[str, list[Row]] = field(default_factory=lambda: {table.name: [] for table in TABLES})

    def add_image(self, image: uuid.UUID, owner: str, kind: Kind, created: datetime, number: int) -> None:
        """The image row and, if the viewer can list it, a property, a tag and an active location."""
        digest = image.hex * 4
        size = (1 << 30) + number
        self.rows["images"].append((
            image, f"image-{number}", kind.status, kind.visibility, owner, size, digest[:32], "sha512", digest,
            "qcow2", "bare", 0, 0, False, False, created, created,
        ))  # fmt: skip
        if kind.is_visible:
            url = f"file:///var/lib/glance/images/{image}"
            self.rows["image_properties"].append((image, "os_distro", ("ubuntu", "debian", "fedora")[number % 3]))
            self.rows["image_tags"].append((image, "bench"))
            self.rows["locations"].append(
                (image, url, data_key_digest(url), "file", {}, LocationStatus.ACTIVE, size, created, created, 0)
            )

    def add_member(self, image: uuid.UUID, member: str, answer: MemberStatus, created: datetime) -> None:
        """A membership; image_created_at repeats the image's created_at, as the members service writes it."""
        self.rows["image_members"].append((image, member, answer, created, created, created))


COLUMNS = {
    "images": (
        "id", "name", "status", "visibility", "owner", "size", "checksum", "os_hash_algo", "os_hash_value",
        "disk_format", "container_format", "min_disk", "min_ram", "protected", "os_hidden", "created_at", "updated_at",
    ),
    "image_properties": ("image_id", "name", "value"),
    "image_tags": ("image_id", "value"),
    "locations": (
        "image_id", "url", "data_key_hash", "store", "metadata", "status", "size_bytes", "created_at", "updated_at",
        "attempts",
    ),
    "image_members": ("image_id", "member", "status", "image_created_at", "created_at", "updated_at"),
}  # fmt: skip


@dataclass
class SharingDataset:
    """How far one engine's data has grown; grow_to adds the next step."""

    others: int = 0  # other tenants' images loaded (a multiple of 4)

    @property
    def visible(self) -> int:
        """Public and accepted shared images the viewer sees (its own images apart)."""
        return self.others // 2

    def images_to_add(self, visible: int) -> int:
        """How many images growing to `visible` inserts (the viewer's own with the first step)."""
        return max(0, _others_for(visible) - self.others) + (OWN_IMAGES if self.others == 0 else 0)

    def grow_to(self, writers: Sequence[Writer], visible: int, progress: ProgressCallback | None = None) -> int:
        """Add images until the viewer sees `visible` public and shared ones, each batch to every writer.

        Returns the rows written to each. Statistics are the caller's: it times ANALYZE apart.
        """
        written = 0
        # A thread per writer, the next batch made while they write this one: the database servers' work
        # (and SQLite's, which runs without the GIL) overlaps the making of rows in Python.
        with ThreadPoolExecutor(max_workers=len(writers), thread_name_prefix="sharing-load") as pool:
            writing: list[Future[None]] = []
            for images, batch in _batches(self.others, _others_for(visible), first=self.others == 0):
                for future in writing:
                    future.result()
                writing = [pool.submit(_write, writer, batch) for writer in writers]
                written += sum(len(rows) for rows in batch.rows.values())
                if progress is not None:
                    progress(images)
            for future in writing:
                future.result()
        self.others = max(self.others, _others_for(visible))
        return written

    def random_visible_id(self, rng: random.Random) -> uuid.UUID:
        """A public or accepted shared image of any age, so deep pages start anywhere in the list."""
        n = rng.randrange(self.others)
        return image_id("other", n - n % 4 + rng.randrange(2))


def _others_for(visible: int) -> int:
    return -(-visible // 2) * 2 * 2  # two images of every four are visible; whole groups of four


def _batches(start: int, stop: int, *, first: bool) -> Iterator[tuple[int, Batch]]:
    """(images, rows) per batch: the viewer's own images with the first step, then others' start..stop-1."""
    if first:
        own = Batch()
        for number in range(OWN_IMAGES):
            own.add_image(image_id("own", number), VIEWER, OWN, EPOCH + timedelta(seconds=number), number)
        yield OWN_IMAGES, own
    for begin in range(start, stop, BATCH_IMAGES):
        end = min(begin + BATCH_IMAGES, stop)
        yield end - begin, _others_batch(begin, end)


def _others_batch(start: int, end: int) -> Batch:
    batch = Batch()
    for number in range(start, end):
        kind, image = kind_of(number), image_id("other", number)
        created = EPOCH + timedelta(seconds=OWN_IMAGES + number)
        batch.add_image(image, OWNERS[number // 4 % len(OWNERS)], kind, created, OWN_IMAGES + number)
        if kind.viewer_answer is not None:
            batch.add_member(image, VIEWER, kind.viewer_answer, created)
        if kind.other_member:
            batch.add_member(image, OTHER_MEMBERS[number // 4 % len(OTHER_MEMBERS)], MemberStatus.ACCEPTED, created)
    return batch


def _write(writer: Writer, batch: Batch) -> None:
    for table in TABLES:
        if rows := batch.rows[table.name]:
            writer.write(table, COLUMNS[table.name], rows)
    writer.end_batch()


def _processed(dialect: Dialect, table: Table, columns: tuple[str, ...], rows: list[Row]) -> list[Row]:
    """The rows as the app would bind them: each column through its type's bind processor for this dialect.

    Column by column (map over the transposed batch), only the columns whose type has a processor.
    """
    values = list(zip(*rows, strict=True))
    for index, name in enumerate(columns):
        column_type = table.c[name].type.dialect_impl(dialect)
        if (process := column_type.bind_processor(dialect)) is not None:
            values[index] = tuple(map(process, values[index]))
    return list(zip(*values, strict=True))


class PostgresqlWriter:
    """COPY into each table on one psycopg connection."""

    def __init__(self, connection: psycopg.Connection, dialect: Dialect) -> None:
        self._connection, self._dialect = connection, dialect

    def write(self, table: Table, columns: tuple[str, ...], rows: list[Row]) -> None:
        """COPY FROM STDIN in text format: the server parses each value as it would a literal."""
        with (
            self._connection.cursor() as cursor,
            cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in _processed(self._dialect, table, columns, rows):
                copy.write_row(row)

    def end_batch(self) -> None:
        """A transaction per batch."""
        self._connection.commit()

    def analyze(self) -> None:
        """VACUUM ANALYZE: the visibility map and hint bits autovacuum would have set on a table this old."""
        self._connection.commit()
        self._connection.autocommit = True
        try:
            self._connection.execute("VACUUM ANALYZE")
        finally:
            self._connection.autocommit = False


class SqliteWriter:
    """executemany on one sqlite3 connection, with a large page cache, committing every SQLITE_COMMIT_ROWS rows.

    Few large transactions: a commit writes every page it changed to the WAL, and a batch of random ids
    changes most leaf pages of the id indexes, so a commit per batch wrote each page once per batch.
    """

    def __init__(self, connection: sqlite3.Connection, dialect: Dialect) -> None:
        self._connection, self._dialect = connection, dialect
        self._uncommitted = 0

    def write(self, table: Table, columns: tuple[str, ...], rows: list[Row]) -> None:
        """One executemany of the batch's rows."""
        marks = ", ".join("?" for _ in columns)
        statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - our names
        self._connection.executemany(statement, _processed(self._dialect, table, columns, rows))
        self._uncommitted += len(rows)

    def end_batch(self) -> None:
        """Commit once enough rows are waiting."""
        if self._uncommitted >= SQLITE_COMMIT_ROWS:
            self._connection.commit()
            self._uncommitted = 0

    def analyze(self) -> None:
        """ANALYZE fills sqlite_stat1, which the planner reads to choose between the indexes."""
        self._connection.commit()
        self._connection.execute("ANALYZE")
        self._connection.commit()


@contextmanager
def writer_for(engine: Engine, url: str) -> Iterator[Writer]:
    """A writer on its own connection to the engine's database (PostgreSQL or a SQLite file)."""
    if engine.dialect.name == "postgresql":
        with psycopg.connect(url) as connection:
            yield PostgresqlWriter(connection, engine.dialect)
        return
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        assert isinstance(connection, sqlite3.Connection)
        connection.execute("PRAGMA cache_size = -2000000")  # 2 GB: the random-id indexes stay in memory
        connection.execute("PRAGMA synchronous = OFF")  # a benchmark's throwaway file; the WAL still applies
        yield SqliteWriter(connection, engine.dialect)
    finally:
        raw.close()


def count_rows(engine: Engine) -> dict[str, int]:
    """Rows per table, printed with the results so a reader sees what the database held."""
    with engine.connect() as connection:
        return {table.name: connection.scalar(select(func.count()).select_from(table)) or 0 for table in TABLES}
