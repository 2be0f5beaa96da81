"""python -m benchmarks [--smoke] [--only api|scrubber|quota|...|engines|split].

Starts a throwaway PostgreSQL (tests.servers). The API part loads one tenant's images in steps, serves the
app with waitress on 127.0.0.1 and times GET /v2/images/{id} and GET /v2/images?limit=20 against a constant
view on the same server. The scrubber part (benchmarks.scrubber) times 1, 2 and 4 `locquota scrub`
processes on a pending_delete backlog and compares one scrubber's peak RSS at two backlog sizes. The quota
part (benchmarks.quota) times usage reads against a recount and admissions as one tenant grows to 1M
locations, and concurrent admissions on one tenant against the raw conditional UPDATE. The scrape part
(benchmarks.scrape) times GET /metrics with a fixed pending_delete backlog as active locations grow to 1M.
The import part
(benchmarks.import_glance, `--only import`) times `locquota import-glance` of a synthetic Glance database
and compares its peak RSS at 10k and 100k images. The encryption part (benchmarks.encryption) compares adding
a location and listing with location URLs sealed and not, and times key rotation. The stores part
(benchmarks.stores) starts the test suite's Ceph, Keystone and Swift and times upload, download and peak RSS of
file, rbd, s3 and swift images of 1 to 512 MiB, and the scrubber's deletions/s on each. The copy part
(benchmarks.copy_image) times copy-image to 2 and 4 file stores against the same copy done the file store's
way, and compares the API worker's peak RSS at 64 and 256 MiB. The sharing part (benchmarks.sharing) times a
tenant's GET /v2/images on PostgreSQL and SQLite as the public and shared images it sees grow to 1M. The engines
part (benchmarks.engines) starts MariaDB and a three-node Galera cluster beside PostgreSQL and compares one
tenant's admissions/s and the scrubber's deletions/s on the three. The split part (benchmarks.request_split)
says where the server time of a get, a list, a create, an add-location and an upload goes: waiting for the
database, or the app's own work. All run by default.
Run it from the repository root (it imports `tests.servers`).
"""

import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import psycopg
from sqlalchemy import Engine

from benchmarks import (
    copy_image,
    encryption,
    engines,
    import_glance,
    quota,
    report,
    request_split,
    scrape,
    scrubber,
    sharing,
    stores,
)
from benchmarks.dataset import OTHERS_PER_TENANT_IMAGE, TENANT, Dataset, count_rows
from benchmarks.deployment import fresh_database
from benchmarks.server import CONSTANT_PATH, DB_FLOOR_PATH, build_app, serving, settings
from benchmarks.timing import Client, Endpoint, measure
from locquota.db import make_engine, upgrade_to_head
from tests.servers import postgresql_server

FULL_SIZES = (1000, 10000, 100000)
SMOKE_SIZES = (1000,)
FULL_ROUNDS, FULL_WARMUP = 300, 50
SMOKE_ROUNDS, SMOKE_WARMUP = 50, 10
PAGE_LIMIT = 20
DATABASE = "locquota_bench"

LABELS = {
    "constant": f"constant  GET {CONSTANT_PATH}",
    "db_floor": f"db floor  GET {DB_FLOOR_PATH} (SELECT 1)",
    "get": "get       GET /v2/images/{id}",
    "list": f"list      GET /v2/images?limit={PAGE_LIMIT}",
    "list_deep": f"list deep GET /v2/images?limit={PAGE_LIMIT}&marker=",
}

# The endpoints the targets apply to; constant and db floor are references that explain the ratios.
TARGETED = {"get", "list", "list_deep"}


def _sizes(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError as exc:
        raise click.BadParameter("expected comma-separated numbers of images, e.g. 1000,10000") from exc
    if not sizes or sizes[0] <= 0:
        raise click.BadParameter("expected positive numbers of images")
    return sizes


@click.command()
@click.option(
    "--smoke",
    is_flag=True,
    help=f"API: size {SMOKE_SIZES[0]} only and {SMOKE_ROUNDS} requests; scrubber: a"
    f" {scrubber.SMOKE_BACKLOG}-location backlog; quota: {quota.SMOKE_SIZES[0]} locations, clients"
    f" {','.join(map(str, quota.SMOKE_CLIENTS))}; stores: {stores.SMOKE_SIZES[0] >> 20} MiB images and a"
    f" {stores.SMOKE_BACKLOG}-object backlog; sharing: {sharing.SMOKE_SIZES[0]} visible images; engines:"
    f" {engines.SMOKE_CLIENTS} clients for {engines.SMOKE_SECONDS:g} s, a {engines.SMOKE_BACKLOG}-location backlog"
    " (for CI).",
)
@click.option(
    "--only",
    type=click.Choice(
        ["api", "scrubber", "quota", "scrape", "import", "encryption", "stores", "copy", "sharing", "engines", "split"]
    ),
    help="Run one part only. [default: all]",
)
@click.option(
    "--sizes",
    callback=_sizes,
    help=f"API: tenant sizes in images, grown in this order. [default: {','.join(map(str, FULL_SIZES))}]",
)
@click.option("--requests", "rounds", type=click.IntRange(min=1), help="API: timed requests per endpoint and size.")
@click.option("--warmup", type=click.IntRange(min=0), help="API: untimed requests per endpoint and size, first.")
@click.option("--seed", type=int, default=0, show_default=True, help="API: seeds the data and the request order.")
@click.option(
    "--durable/--no-durable",
    default=True,
    show_default=True,
    help="PostgreSQL with fsync, synchronous_commit and full_page_writes on, as production runs it;"
    " --no-durable turns them off (faster, and it flatters every write figure). The header says which.",
)
@click.option(
    "--scrub-backlog",
    type=click.IntRange(min=10),
    help=f"Scrubber: backlog for throughput; peak RSS compares a tenth of it with it."
    f" [default: {scrubber.FULL_BACKLOG}; --smoke {scrubber.SMOKE_BACKLOG}]",
)
@click.option(
    "--quota-sizes",
    callback=_sizes,
    help=f"Quota: tenant sizes in locations, grown in this order."
    f" [default: {','.join(map(str, quota.FULL_SIZES))}; --smoke {quota.SMOKE_SIZES[0]}]",
)
@click.option(
    "--import-sizes",
    callback=_sizes,
    help=f"Import: Glance database sizes in images; peak RSS compares the first with the last."
    f" [default: {','.join(map(str, import_glance.FULL_SIZES))}; --smoke"
    f" {','.join(map(str, import_glance.SMOKE_SIZES))}]",
)
def main(  # keyword-only: click passes every option by name
    *,
    smoke: bool,
    only: str | None,
    sizes: tuple[int, ...] | None,
    rounds: int | None,
    warmup: int | None,
    seed: int,
    scrub_backlog: int | None,
    quota_sizes: tuple[int, ...] | None,
    import_sizes: tuple[int, ...] | None,
    durable: bool,
) -> None:
    """Time the read endpoints, the scrubber, quota accounting, the /metrics scrape, the Glance import and stores."""
    with postgresql_server(durable=durable) as admin_url:
        report.print_facts([*report.machine_facts(_server_version(admin_url)), _durability(admin_url)])
        parts: list[tuple[str, Callable[[], None]]] = [
            ("api", lambda: _api(admin_url, smoke, sizes, rounds, warmup, seed)),
            ("scrubber", lambda: scrubber.benchmark(admin_url, smoke=smoke, backlog_size=scrub_backlog)),
            ("quota", lambda: quota.benchmark(admin_url, smoke=smoke, sizes=quota_sizes)),
            ("scrape", lambda: scrape.benchmark(admin_url, smoke=smoke)),
            ("import", lambda: import_glance.benchmark(admin_url, smoke=smoke, sizes=import_sizes)),
            ("encryption", lambda: encryption.benchmark(admin_url, smoke=smoke)),
            ("stores", lambda: stores.benchmark(admin_url, smoke=smoke)),
            ("copy", lambda: copy_image.benchmark(admin_url, smoke=smoke)),
            ("sharing", lambda: sharing.benchmark(admin_url, smoke=smoke)),
            ("engines", lambda: engines.benchmark(admin_url, smoke=smoke, durable=durable)),
            ("split", lambda: request_split.benchmark(admin_url, smoke=smoke)),
        ]
        for number, (_name, run) in enumerate(part for part in parts if only in (None, part[0])):
            if number:
                print()
            run()


def _api(
    admin_url: str,
    smoke: bool,
    sizes: tuple[int, ...] | None,
    rounds: int | None,
    warmup: int | None,
    seed: int,
) -> None:
    """The API part: GET /v2/images/{id} and GET /v2/images against a constant view as one tenant grows."""
    sizes = sizes or (SMOKE_SIZES if smoke else FULL_SIZES)
    rounds = rounds or (SMOKE_ROUNDS if smoke else FULL_ROUNDS)
    warmup = (SMOKE_WARMUP if smoke else FULL_WARMUP) if warmup is None else warmup
    with tempfile.TemporaryDirectory(prefix="locquota-bench-") as store_root:
        url = fresh_database(admin_url, DATABASE)
        engine = make_engine(url)
        upgrade_to_head(engine)
        print(f"{'workload':<10}  {rounds} timed + {warmup} warm-up requests per endpoint and size, interleaved;")
        print(f"{'':<10}  tenant {TENANT!r} grown to {', '.join(map(str, sizes))} images; at each step other")
        print(f"{'':<10}  tenants add {OTHERS_PER_TENANT_IMAGE:g} image per new tenant image, newer than the tenant's")
        print(flush=True)
        results = _run(engine, url, Path(store_root), sizes, rounds, warmup, seed)
        rows = count_rows(engine)
        engine.dispose()
    print()
    report.print_table(results, LABELS, TARGETED)
    print()
    report.print_targets(results, LABELS, TARGETED)
    print()
    print("rows at the end: " + ", ".join(f"{table} {count}" for table, count in rows.items()))
    print(f"load avg at the end: {report.load_average()}")


def _run(
    engine: Engine, url: str, store_root: Path, sizes: tuple[int, ...], rounds: int, warmup: int, seed: int
) -> list[report.SizeResult]:
    dataset = Dataset(seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a reproducible request order, not a secret
    endpoints = [
        Endpoint("constant", lambda: CONSTANT_PATH),
        Endpoint("db_floor", lambda: DB_FLOOR_PATH),
        Endpoint("get", lambda: f"/v2/images/{dataset.random_visible_id()}"),
        Endpoint("list", lambda: f"/v2/images?limit={PAGE_LIMIT}"),
        Endpoint("list_deep", lambda: f"/v2/images?limit={PAGE_LIMIT}&marker={dataset.random_visible_id()}"),
    ]
    app = build_app(settings(url, store_root))
    results = []
    try:
        with serving(app) as port:
            client = Client(port, TENANT)
            try:
                for size in sizes:
                    _load(engine, dataset, size)
                    started = time.perf_counter()
                    summaries = measure(client, endpoints, rounds, warmup, rng)
                    click.echo(f"measured {size} images in {time.perf_counter() - started:.1f} s")
                    results.append(report.SizeResult(size, {summary.endpoint: summary for summary in summaries}))
            finally:
                client.close()
    finally:
        app.registry["locquota.engine"].dispose()
    return results


def _load(engine: Engine, dataset: Dataset, size: int) -> None:
    """Grow the tenant to `size` images, with a progress bar: the 100k step takes a while."""
    started = time.perf_counter()
    label = f"loading {dataset.tenant_images} -> {size} tenant images (+ other tenants')"
    with click.progressbar(length=dataset.images_to_add(size), label=label, file=sys.stderr) as bar:
        added = dataset.grow_to(engine, size, progress=bar.update)
    elapsed = time.perf_counter() - started
    click.echo(f"loaded {added} rows in {elapsed:.1f} s ({added / elapsed:.0f} rows/s), then ANALYZE")


def _durability(admin_url: str) -> tuple[str, str]:
    """What the server really runs with (asked, not assumed): write figures depend on it."""
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
        shown = [
            f"{name} {connection.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "full_page_writes")
        ]
    return "durability", ", ".join(shown)


def _server_version(admin_url: str) -> str:
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
        return str(connection.execute("SHOW server_version").fetchone()[0])


if __name__ == "__main__":
    main()
