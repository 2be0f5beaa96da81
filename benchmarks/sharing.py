"""The sharing benchmark (issue 17, part 5): a tenant's GET /v2/images as the public and shared images it sees grow.

One viewer tenant sees 1k, then 100k, then 1M public and accepted shared images among as many it must skip
(benchmarks.sharing_dataset), on PostgreSQL and on SQLite at once: each step is loaded into both, then each
engine's app (locquota.app.configure, served by waitress on 127.0.0.1) is timed: the first page, a page
after a marker at a random depth, and the constant and SELECT 1 views of the same server as references.
At the largest size the first page's statement, captured as the app sends it, is explained on each engine.
"""

import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
from pyramid.router import Router
from sqlalchemy import Engine, event

from benchmarks import report, sharing_dataset
from benchmarks.deployment import fresh_database
from benchmarks.server import CONSTANT_PATH, DB_FLOOR_PATH, build_app, serving, settings
from benchmarks.sharing_dataset import OWN_IMAGES, VIEWER, SharingDataset, Writer, writer_for
from benchmarks.timing import Client, Endpoint, measure
from locquota.db import make_engine, upgrade_to_head

FULL_SIZES, SMOKE_SIZES = (1_000, 100_000, 1_000_000), (1_000,)
FULL_ROUNDS, FULL_WARMUP = 300, 50
SMOKE_ROUNDS, SMOKE_WARMUP = 30, 5
PAGE_LIMIT = 20
DATABASE = "locquota_sharing_bench"
FIRST_PAGE = f"/v2/images?limit={PAGE_LIMIT}"

LABELS = {
    "constant": f"constant  GET {CONSTANT_PATH}",
    "db_floor": f"db floor  GET {DB_FLOOR_PATH} (SELECT 1)",
    "list": f"list      GET {FIRST_PAGE}",
    "list_deep": f"list deep GET {FIRST_PAGE}&marker=",
}
TARGETED = {"list", "list_deep"}
EXPLAIN_RUNS = 5


@dataclass
class Statements:
    """The page statements the app sends while `capturing` (SQL and DBAPI parameters), for EXPLAIN."""

    capturing: bool = False
    seen: list[tuple[str, object]] = field(default_factory=list)

    def __call__(self, _conn: object, _cursor: object, statement: str, parameters: object, *_args: object) -> None:
        """before_cursor_execute: keep the one statement of a page (on images, with LIMIT)."""
        if self.capturing and "FROM images" in statement and "LIMIT" in statement:
            self.seen.append((statement, parameters))


@dataclass
class Target:
    """One engine under test: its database, its app and what was measured on it."""

    name: str
    url: str
    engine: Engine
    app: Router
    statements: Statements
    results: list[report.SizeResult] = field(default_factory=list)
    port: int = 0

    @contextmanager
    def client(self) -> Iterator[Client]:
        """A fresh keep-alive connection: waitress closes one left idle while a step loads (channel_timeout)."""
        client = Client(self.port, VIEWER)
        try:
            yield client
        finally:
            client.close()


def benchmark(admin_url: str, *, smoke: bool, sizes: Sequence[int] | None = None) -> None:
    """Grow both engines' data to every size, time the listing on each, explain the first page at the largest."""
    sizes = tuple(sizes or (SMOKE_SIZES if smoke else FULL_SIZES))
    rounds, warmup = (SMOKE_ROUNDS, SMOKE_WARMUP) if smoke else (FULL_ROUNDS, FULL_WARMUP)
    rng = random.Random(0)  # noqa: S311 - a reproducible request order, not a secret
    _print_workload(sizes, rounds, warmup)
    with tempfile.TemporaryDirectory(prefix="locquota-sharing-bench-") as workdir:
        urls = {
            "PostgreSQL": fresh_database(admin_url, DATABASE),
            "SQLite": f"sqlite:///{Path(workdir) / 'sharing.sqlite'}",
        }
        dataset = SharingDataset()  # the same rows go into both engines
        with _targets(urls, Path(workdir)) as targets:
            for size in sizes:
                _load(targets, dataset, size)
                for target in targets:
                    # New connections: SQLite reads the fresh statistics when a connection opens.
                    target.app.registry["locquota.engine"].dispose()
                    started = time.perf_counter()
                    with target.client() as client:
                        summaries = measure(client, _endpoints(dataset, rng), rounds, warmup, rng)
                    click.echo(f"{target.name}: measured {size} images in {time.perf_counter() - started:.1f} s")
                    target.results.append(report.SizeResult(size, {summary.endpoint: summary for summary in summaries}))
            plans = {target.name: _explain_first_page(target) for target in targets}
            rows = sharing_dataset.count_rows(targets[0].engine)
        for target in targets:
            print()
            print(f"{target.name}:")
            report.print_table(target.results, LABELS, TARGETED)
            print()
            report.print_targets(target.results, LABELS, TARGETED)
    for name, plan in plans.items():
        print()
        print(f"{name}: plan of the first page at {sizes[-1]} images, as the app sends it:")
        print("\n".join(f"  {line}" for line in plan))
    print()
    print("rows at the end (each engine): " + ", ".join(f"{table} {count}" for table, count in rows.items()))
    print(f"load avg at the end: {report.load_average()}")


def _print_workload(sizes: Sequence[int], rounds: int, warmup: int) -> None:
    lines = [
        f"viewer {VIEWER!r} owns {OWN_IMAGES} images and sees {', '.join(map(str, sizes))} public and",
        "accepted shared images of other tenants (half each), among as many it must skip (private, shared with",
        "others, pending, rejected, deleted); PostgreSQL and SQLite hold the same rows. At each size and engine:",
        f"{rounds} timed + {warmup} warm-up rounds of every request, shuffled, over one keep-alive connection",
    ]
    for number, line in enumerate(lines):
        print(f"{'sharing' if number == 0 else '':<10}  {line}")
    print(flush=True)


@contextmanager
def _targets(urls: dict[str, str], workdir: Path) -> Iterator[list[Target]]:
    """Each engine migrated and its app served, with the page statements captured; all closed afterwards."""
    with ExitStack() as stack:
        targets = []
        for name, url in urls.items():
            engine = make_engine(url)
            stack.callback(engine.dispose)
            upgrade_to_head(engine)
            store_root = workdir / f"store-{name.lower()}"
            store_root.mkdir()
            app = build_app(settings(url, store_root))
            stack.callback(app.registry["locquota.engine"].dispose)
            statements = Statements()
            event.listen(app.registry["locquota.engine"], "before_cursor_execute", statements)
            targets.append(Target(name, url, engine, app, statements, port=stack.enter_context(serving(app))))
        yield targets


def _load(targets: list[Target], dataset: SharingDataset, size: int) -> None:
    """Grow every engine to `size` visible images, batch by batch, then ANALYZE each (timed apart)."""
    label = f"loading {dataset.visible} -> {size} visible images (x{len(targets)} engines)"
    started = time.perf_counter()
    with ExitStack() as stack:
        writers: list[Writer] = [stack.enter_context(writer_for(target.engine, target.url)) for target in targets]
        with click.progressbar(length=dataset.images_to_add(size), label=label, file=sys.stderr) as bar:
            rows = dataset.grow_to(writers, size, progress=bar.update)
        loaded = time.perf_counter() - started
        analyzed = []
        for target, writer in zip(targets, writers, strict=True):
            begun = time.perf_counter()
            writer.analyze()
            analyzed.append(f"{target.name} {time.perf_counter() - begun:.1f} s")
    click.echo(
        f"loaded {rows} rows into each engine in {loaded:.1f} s ({rows * len(targets) / loaded:.0f} rows/s in all);"
        f" ANALYZE: {', '.join(analyzed)}"
    )


def _endpoints(dataset: SharingDataset, rng: random.Random) -> list[Endpoint]:
    return [
        Endpoint("constant", lambda: CONSTANT_PATH),
        Endpoint("db_floor", lambda: DB_FLOOR_PATH),
        Endpoint("list", lambda: FIRST_PAGE),
        Endpoint("list_deep", lambda: f"{FIRST_PAGE}&marker={dataset.random_visible_id(rng)}"),
    ]


def _explain_first_page(target: Target) -> list[str]:
    """The first page's statement as the app sent it, explained: EXPLAIN ANALYZE on PostgreSQL, QUERY PLAN on SQLite."""
    target.statements.capturing = True
    try:
        with target.client() as client:
            client.get(FIRST_PAGE)
    finally:
        target.statements.capturing = False
    if len(target.statements.seen) != 1:
        raise RuntimeError(f"{target.name}: expected one page statement, captured {len(target.statements.seen)}")
    statement, parameters = target.statements.seen.pop()
    with target.engine.connect() as connection:
        if target.engine.dialect.name != "postgresql":
            return _sqlite_tree(connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all())
        # The fastest of a few: one run is one sample, and a time slice lost to another process shows in it.
        runs = [
            [row[0] for row in connection.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)]
            for _ in range(EXPLAIN_RUNS)
        ]
    return min(runs, key=_execution_ms)


def _execution_ms(plan: list[str]) -> float:
    """The "Execution Time: N ms" line of an EXPLAIN ANALYZE."""
    return next(float(line.split()[2]) for line in plan if line.startswith("Execution Time:"))


def _sqlite_tree(rows: Sequence[object]) -> list[str]:
    """EXPLAIN QUERY PLAN's (id, parent, notused, detail) rows as the sqlite3 shell indents them."""
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _unused, detail in rows:  # type: ignore[misc]
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + str(detail))
    return lines
