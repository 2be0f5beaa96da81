"""The import benchmark: `locquota import-glance` of a synthetic Glance database into PostgreSQL.

The Glance side is a SQLite file with Glance 33's schema (the four tables the import reads, with their
indexes), filled inside SQLite by INSERT ... SELECT over a recursive CTE: two locations per image (a file one
and an http one), one live and one soft-deleted property, and one tag per image; 94% of the images active,
3% pending_delete and 3% deleted, with location statuses to match; 100 images per tenant. Each import is the
real command, `locquota --config <ini> import-glance sqlite:///...`, in a child process of its own; its peak
RSS is its own ru_maxrss (os.wait4), as in the scrubber part. After every run the benchmark checks the rows
and that the stored usage equals the tables (otherwise it fails).
"""

# The SQL below is put together from this module's own constants, never from input.
# ruff: noqa: S608

import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import click
from sqlalchemy import Engine, text

from benchmarks.deployment import fresh_database, write_ini
from benchmarks.report import load_average, print_rows
from benchmarks.server import settings
from locquota.db import make_engine, upgrade_to_head

DATABASE = "locquota_import_bench"
LOCQUOTA = str(Path(sys.executable).with_name("locquota"))
FULL_SIZES = (10_000, 100_000)
SMOKE_SIZES = (1_000, 5_000)
IMAGES_PER_TENANT = 100
LOCATIONS_PER_IMAGE = 2
RSS_TARGET = 1.3  # issue 7: peak RSS at 100k images within 1.3 x its value at 10k
RUN_DEADLINE_SECONDS = 3600
TABLES = "images, image_properties, image_tags, locations, tenant_usage, store_usage, usage_drift"

# Glance 33.0.0's own DDL for the tables the import reads (`glance-manage db_sync` on SQLite), indexes included:
# the import's batch reads use ix_image_locations_image_id and friends, as on a real Glance database.
GLANCE_SCHEMA = """
CREATE TABLE images (
    id VARCHAR(36) NOT NULL, name VARCHAR(255), size INTEGER, status VARCHAR(30) NOT NULL,
    created_at DATETIME NOT NULL, updated_at DATETIME, deleted_at DATETIME, deleted BOOLEAN NOT NULL,
    disk_format VARCHAR(20), container_format VARCHAR(20), checksum VARCHAR(32), owner VARCHAR(255),
    min_disk INTEGER NOT NULL, min_ram INTEGER NOT NULL, protected BOOLEAN DEFAULT 0 NOT NULL,
    virtual_size INTEGER, visibility VARCHAR(9) DEFAULT 'shared' NOT NULL, os_hidden BOOLEAN DEFAULT 0 NOT NULL,
    os_hash_algo VARCHAR(64), os_hash_value VARCHAR(128), PRIMARY KEY (id)
);
CREATE INDEX owner_image_idx ON images (owner);
CREATE INDEX ix_images_deleted ON images (deleted);
CREATE TABLE image_locations (
    id INTEGER NOT NULL, image_id VARCHAR(36) NOT NULL, value TEXT NOT NULL, created_at DATETIME NOT NULL,
    updated_at DATETIME, deleted_at DATETIME, deleted BOOLEAN NOT NULL, meta_data TEXT,
    status VARCHAR(30) DEFAULT 'active' NOT NULL, PRIMARY KEY (id), FOREIGN KEY(image_id) REFERENCES images (id)
);
CREATE INDEX ix_image_locations_deleted ON image_locations (deleted);
CREATE INDEX ix_image_locations_image_id ON image_locations (image_id);
CREATE TABLE image_properties (
    id INTEGER NOT NULL, image_id VARCHAR(36) NOT NULL, name VARCHAR(255) NOT NULL, value TEXT,
    created_at DATETIME NOT NULL, updated_at DATETIME, deleted_at DATETIME, deleted BOOLEAN NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(image_id) REFERENCES images (id),
    CONSTRAINT ix_image_properties_image_id_name UNIQUE (image_id, name)
);
CREATE INDEX ix_image_properties_image_id ON image_properties (image_id);
CREATE TABLE image_tags (
    id INTEGER NOT NULL, image_id VARCHAR(36) NOT NULL, value VARCHAR(255) NOT NULL, created_at DATETIME NOT NULL,
    updated_at DATETIME, deleted_at DATETIME, deleted BOOLEAN NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(image_id) REFERENCES images (id)
);
CREATE INDEX ix_image_tags_image_id ON image_tags (image_id);
"""
# n = 1..:images; image n's id is a valid UUID made of n, its status by n % 100 (94 active, 3 pending, 3 deleted).
SEQUENCE = "WITH RECURSIVE seq(n) AS (SELECT 1 WHERE :images > 0 UNION ALL SELECT n + 1 FROM seq WHERE n < :images)"
IMAGE_ID = "printf('00000000-0000-4000-8000-%012x', n)"
STATUS = "CASE WHEN n % 100 < 94 THEN 'active' WHEN n % 100 < 97 THEN 'pending_delete' ELSE 'deleted' END"
FILL = [
    f"""INSERT INTO images (id, name, size, status, created_at, updated_at, deleted_at, deleted, disk_format,
        container_format, checksum, owner, min_disk, min_ram, protected, virtual_size, visibility, os_hidden,
        os_hash_algo, os_hash_value)
    {SEQUENCE} SELECT {IMAGE_ID}, 'image-' || n, 1024 + n % 4096, {STATUS}, '2026-01-01 00:00:00',
        '2026-01-02 00:00:00', CASE WHEN n % 100 >= 94 THEN '2026-01-03 00:00:00' END, n % 100 >= 94, 'qcow2',
        'bare', printf('%032x', n), printf('tenant-%06d', n / {IMAGES_PER_TENANT}), 0, 0, 0, NULL, 'private', 0,
        'sha512', printf('%0128x', n)
    FROM seq""",
    f"""INSERT INTO image_locations (id, image_id, value, created_at, updated_at, deleted_at, deleted, meta_data,
        status)
    {SEQUENCE}, copies(c) AS (VALUES (0), (1))
    SELECT 2 * n - 1 + c, {IMAGE_ID},
        CASE c WHEN 0 THEN 'file:///var/lib/glance/images/' || {IMAGE_ID}
               ELSE 'http://web.example:9495/blob/' || {IMAGE_ID} || '/0' END,
        '2026-01-01 00:00:00', '2026-01-02 00:00:00', CASE WHEN n % 100 >= 94 THEN '2026-01-03 00:00:00' END,
        n % 100 >= 94, CASE c WHEN 0 THEN '{{"store": "fs"}}' ELSE '{{"store": "web"}}' END, {STATUS}
    FROM seq CROSS JOIN copies""",
    f"""INSERT INTO image_properties (id, image_id, name, value, created_at, deleted, deleted_at)
    {SEQUENCE}, kinds(k) AS (VALUES (0), (1))
    SELECT 2 * n - 1 + k, {IMAGE_ID}, CASE k WHEN 0 THEN 'os_distro' ELSE 'build_id' END, printf('v%d', n),
        '2026-01-01 00:00:00', k, CASE k WHEN 1 THEN '2026-01-02 00:00:00' END
    FROM seq CROSS JOIN kinds""",
    f"""INSERT INTO image_tags (id, image_id, value, created_at, deleted)
    {SEQUENCE} SELECT n, {IMAGE_ID}, 'tag-' || (n % 10), '2026-01-01 00:00:00', 0 FROM seq""",
]
TOOK = re.compile(r"^took ([\d.]+) s \((\d+) images/s\)$", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    """One `locquota import-glance` process."""

    label: str
    images: int
    wall_seconds: float
    own_seconds: float  # what the command itself reports (after Python start-up and the app's bootstrap)
    cpu_seconds: float  # the importer's user + system time
    max_rss_kib: int


def benchmark(admin_url: str, *, smoke: bool, sizes: tuple[int, ...] | None = None) -> None:
    """Run the import benchmark on the PostgreSQL server at admin_url and print the results."""
    sizes = sizes or (SMOKE_SIZES if smoke else FULL_SIZES)
    url = fresh_database(admin_url, DATABASE)
    engine = make_engine(url)
    upgrade_to_head(engine)
    with tempfile.TemporaryDirectory(prefix="locquota-import-bench-") as workdir:
        work = Path(workdir)
        ini = write_ini(
            work / "import.ini",
            {**settings(url, work / "store"), "locquota.scrub_time": "3600"},  # the import does not read the cache
        )
        _print_workload(sizes)
        runs = [_run(engine, ini, _glance(work, 0), "start-up (empty Glance)", 0)]
        for size in sizes:
            runs.append(_run(engine, ini, _glance(work, size), "import", size))
        runs.append(_run(engine, ini, _glance(work, sizes[-1]), "re-run (nothing changed)", sizes[-1], fresh=False))
    engine.dispose()
    print()
    _print_table(runs)
    print()
    _print_targets(runs, sizes)
    print(f"load avg at the end: {load_average()}")


def _glance(work: Path, images: int) -> Path:
    """The synthetic Glance database of this size (made once, reused by the re-run)."""
    path = work / f"glance-{images}.sqlite"
    if path.exists():
        return path
    started = time.perf_counter()
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(GLANCE_SCHEMA)
        for statement in FILL:
            connection.execute(statement, {"images": images})
    size_mib = path.stat().st_size / 2**20
    click.echo(
        f"built a Glance database of {images} images in {time.perf_counter() - started:.1f} s ({size_mib:.0f} MiB)"
    )
    return path


def _print_workload(sizes: tuple[int, ...]) -> None:
    print(f"{'import':<10}  `locquota import-glance sqlite:///...` into PostgreSQL, one process per run, at")
    print(
        f"{'':<10}  {', '.join(map(str, sizes))} images ({LOCATIONS_PER_IMAGE} locations, 2 properties (1 soft-deleted)"
    )
    print(
        f"{'':<10}  and 1 tag each; {IMAGES_PER_TENANT} images per tenant; 94% active, 3% pending_delete, 3% deleted);"
    )
    print(f"{'':<10}  default --batch-size; a fresh locquota database per import, then a re-run of the largest")
    print(flush=True)


def _run(engine: Engine, ini: Path, glance: Path, label: str, images: int, *, fresh: bool = True) -> Run:
    if fresh:
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    log = glance.with_suffix(f".{label.split(maxsplit=1)[0]}.log")
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(
            [LOCQUOTA, "--config", str(ini), "import-glance", f"sqlite:///{glance}"],
            stdout=handle,
            stderr=subprocess.DEVNULL,  # the progress bar
        )
        try:
            _pid, status, rusage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    output = log.read_text()
    if child.returncode != 0:
        raise click.ClickException(f"import-glance exited with {child.returncode}:\n{output[-4000:]}")
    _check(engine, output, images, unchanged=not fresh)
    took = TOOK.search(output)
    run = Run(
        label,
        images,
        wall,
        float(took[1]) if took else float("nan"),
        rusage.ru_utime + rusage.ru_stime,
        rusage.ru_maxrss,
    )
    click.echo(f"{label}: {images} images in {wall:.2f} s, peak RSS {run.max_rss_kib / 1024:.1f} MiB")
    return run


def _check(engine: Engine, output: str, images: int, *, unchanged: bool) -> None:
    """The rows are all there, a re-run changed nothing, and the stored usage is what the tables give."""
    outcome = f"(0 new, 0 updated, {images} unchanged)" if unchanged else f"({images} new, 0 updated, 0 unchanged)"
    expected = f"images\t{images} read, {images} imported {outcome}, 0 skipped"
    with engine.connect() as connection:
        counts = connection.execute(
            text("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM locations)")
        ).one()
        stored, actual = connection.execute(
            text(
                "SELECT (SELECT coalesce(sum(image_size_total), 0) FROM tenant_usage),"
                " (SELECT coalesce(sum(size_bytes), 0) FROM locations WHERE status IN ('active', 'pending_delete'))"
            )
        ).one()
    if expected not in output or tuple(counts) != (images, LOCATIONS_PER_IMAGE * images) or stored != actual:
        problem = f"rows {tuple(counts)}, usage {stored} vs {actual}"
        raise click.ClickException(f"the import of {images} images went wrong: {problem}\n{output[-4000:]}")


def _print_table(runs: list[Run]) -> None:
    start_up = runs[0].wall_seconds
    headers = (
        "run",
        "images",
        "locations",
        "wall s",
        "images/s",
        "images/s after start-up",
        "import's own s",
        "CPU s",
        "peak RSS MiB",
    )
    rows = [
        (
            run.label,
            str(run.images),
            str(run.images * LOCATIONS_PER_IMAGE),
            f"{run.wall_seconds:.2f}",
            f"{run.images / run.wall_seconds:.0f}" if run.images else "-",
            f"{run.images / max(run.wall_seconds - start_up, 1e-9):.0f}" if run.images else "-",
            f"{run.own_seconds:.2f}",
            f"{run.cpu_seconds:.2f}",
            f"{run.max_rss_kib / 1024:.1f}",
        )
        for run in runs
    ]
    print_rows(headers, rows, {0})
    print(f"(start-up = one import of an empty Glance database: {start_up:.2f} s, taken off in column 6;")
    print(" `import's own s` is the time the command reports, from its first read of Glance to its summary)")


def _print_targets(runs: list[Run], sizes: tuple[int, ...]) -> None:
    peaks = {run.images: run.max_rss_kib for run in runs if run.label == "import"}
    small, large = sizes[0], sizes[-1]
    ratio = peaks[large] / peaks[small]
    verdict = "met" if ratio <= RSS_TARGET else "MISS"
    print("targets")
    mib = f"{peaks[large] / 1024:.1f} / {peaks[small] / 1024:.1f} MiB"
    print(
        f"  flat memory: peak RSS at {large} images / at {small} = {mib} = {ratio:.2f}"
        f" (target <= {RSS_TARGET}) {verdict}"
    )
