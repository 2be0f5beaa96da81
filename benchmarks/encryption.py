"""The encryption benchmark (`--only encryption`): what sealing location URLs costs, and how fast rotation runs.

Two apps in this process on two PostgreSQL databases, identical but for locquota.location_encryption_keys:
each holds 20 images of one tenant with 3 locations each (show_multiple_locations on, so every listing
opens 60 URLs). Requests go through WebTest, in-process (no HTTP), interleaved off/on in random order so
drift hits both alike: PATCH adding a location to a fresh image (the image's creation is not timed), and
GET /v2/images?limit=20. The ratio on/off of the medians is reported against the target (< 1.2).
Rotation: N rows sealed under an old key are re-sealed under a new primary by the batches
`locquota locations rotate-key` runs (locations.services.url_encryption.reseal_batches), timed as rows/s.
"""

import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet
from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import sessionmaker
from webtest import TestApp

from benchmarks.report import load_average, print_rows
from locations.models import Image, ImageStatus, Location, LocationStatus, Visibility
from locations.services.data_references import DataKeys
from locations.services.url_encryption import reseal_batches
from locations.stores.base import StoreRegistry
from locations.stores.file import FileStore
from locquota.app import configure
from locquota.crypto import UrlVault
from locquota.db import make_engine, upgrade_to_head

TENANT = "bench-tenant"
HEADERS = {"X-Identity-Status": "Confirmed", "X-Roles": "member", "X-Project-Id": TENANT}
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
IMAGES, LOCATIONS_PER_IMAGE, PAGE = 20, 3, 20
FULL_ROUNDS, SMOKE_ROUNDS, WARMUP = 300, 40, 10
FULL_ROTATION_ROWS, SMOKE_ROTATION_ROWS = 100_000, 5_000
ROTATION_BATCH = 1000
TARGET_RATIO = 1.2
TABLES = "images, image_properties, image_tags, locations, tenant_usage, store_usage, usage_drift"


def benchmark(admin_url: str, *, smoke: bool) -> None:
    """Both parts; prints tables and the ratio against its target."""
    rounds = SMOKE_ROUNDS if smoke else FULL_ROUNDS
    rows = SMOKE_ROTATION_ROWS if smoke else FULL_ROTATION_ROWS
    print(f"encryption  {rounds} timed + {WARMUP} warm-up requests per workload, off/on interleaved, in-process")
    print(f"            {IMAGES} images x {LOCATIONS_PER_IMAGE} locations; rotation of {rows} rows", flush=True)
    key = Fernet.generate_key().decode()
    with tempfile.TemporaryDirectory(prefix="locquota-enc-bench-") as root:
        with _database(admin_url, "locquota_enc_off") as off_url, _database(admin_url, "locquota_enc_on") as on_url:
            apps = {
                "off": _app(off_url, Path(root) / "off", None),
                "on": _app(on_url, Path(root) / "on", key),
            }
            try:
                for name, app in apps.items():
                    _seed(app, Path(root) / name)
                latencies = _measure(apps, Path(root), rounds)
            finally:
                for app in apps.values():
                    app.app.registry["locquota.engine"].dispose()
        with _database(admin_url, "locquota_enc_rotate") as rotate_url:
            rate, seconds = _rotation(rotate_url, rows)
    table = []
    ratios = {}
    for workload in ("patch", "list"):
        off, on = (statistics.median(latencies[workload, mode]) for mode in ("off", "on"))
        ratios[workload] = on / off
        table.append((workload, f"{off * 1000:.2f} ms", f"{on * 1000:.2f} ms", f"{on / off:.2f}", f"< {TARGET_RATIO}"))
    print()
    print_rows(("workload", "median off", "median on", "on/off", "target"), table, {0})
    print()
    print(f"rotation: {rows} rows re-sealed in {seconds:.1f} s = {rate:,.0f} rows/s (batches of {ROTATION_BATCH})")
    for workload, ratio in ratios.items():
        verdict = "met" if ratio < TARGET_RATIO else "MISSED"
        print(f"target {workload}: on/off {ratio:.2f} < {TARGET_RATIO}: {verdict}")
    print(f"load avg at the end: {load_average()}")


@contextmanager
def _database(admin_url: str, name: str):  # noqa: ANN202
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name}")
        connection.execute(f"CREATE DATABASE {name}")
    url = f"{admin_url}/{name}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    yield url


def _app(url: str, store_root: Path, key: str | None) -> TestApp:
    settings = {
        "locquota.database_url": url,
        "locquota.redis_url": "",  # the cache switched off, as in the API part: both apps alike
        "locquota.auth_strategy": "noauth",
        "locquota.allow_insecure_noauth": "true",
        "locquota.store.file.datadir": str(store_root),
        "locquota.show_multiple_locations": "true",
    }
    if key is not None:
        settings["locquota.location_encryption_keys"] = key
    return TestApp(configure(settings).make_wsgi_app())


def _file(store_root: Path) -> str:
    store_root.mkdir(parents=True, exist_ok=True)
    path = store_root / uuid.uuid4().hex
    path.write_bytes(b"data")
    return f"file://{path}"


def _new_image(app: TestApp) -> str:
    body = {"name": "bench", "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=HEADERS, status=201).json["id"]


def _add(app: TestApp, image_id: str, url: str) -> None:
    operations = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}]
    app.patch_json(f"/v2/images/{image_id}", operations, headers={**HEADERS, "Content-Type": PATCH_TYPE})


def _seed(app: TestApp, store_root: Path) -> None:
    for _ in range(IMAGES):
        image_id = _new_image(app)
        for _ in range(LOCATIONS_PER_IMAGE):
            _add(app, image_id, _file(store_root))


def _measure(apps: dict[str, TestApp], root: Path, rounds: int) -> dict[tuple[str, str], list[float]]:
    rng = random.Random(0)  # noqa: S311 - a reproducible order, not a secret
    latencies: dict[tuple[str, str], list[float]] = {(w, m): [] for w in ("patch", "list") for m in apps}
    steps: list[tuple[str, str]] = [(w, m) for w in ("patch", "list") for m in apps]
    for round_number in range(WARMUP + rounds):
        rng.shuffle(steps)
        for workload, mode in steps:
            app = apps[mode]
            if workload == "patch":
                image_id, url = _new_image(app), _file(root / mode)
                elapsed = _timed(lambda app=app, image_id=image_id, url=url: _add(app, image_id, url))
            else:
                elapsed = _timed(lambda app=app: app.get(f"/v2/images?limit={PAGE}", headers=HEADERS))
            if round_number >= WARMUP:
                latencies[workload, mode].append(elapsed)
    return latencies


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _rotation(url: str, rows: int) -> tuple[float, float]:
    """Load rows sealed under an old key, then time every batch of rotate-key under the ring (new, old)."""
    old, new = Fernet.generate_key(), Fernet.generate_key()
    engine = make_engine(url)
    try:
        _load_sealed(engine, UrlVault([old]), rows)
        vault = UrlVault([new, old])
        factory = sessionmaker(bind=engine)

        @contextmanager
        def unit():  # noqa: ANN202
            with factory.begin() as session:
                yield session

        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as root:
            # The rows are an imported Swift store's, not configured here: their data key is the URL's text.
            stores = StoreRegistry({"file": FileStore("file", {"datadir": root})}, "file")
            batches = reseal_batches(unit, DataKeys(stores, vault), ROTATION_BATCH, plaintext_only=False)
            resealed = sum(batch.resealed for batch in batches)
        seconds = time.perf_counter() - started
        if resealed != rows:
            raise RuntimeError(f"rotation re-sealed {resealed} rows of {rows}")
        return rows / seconds, seconds
    finally:
        engine.dispose()


def _load_sealed(engine: Engine, vault: UrlVault, rows: int) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    image_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        connection.execute(
            insert(Image),
            [{"id": image_id, "name": "rot", "status": ImageStatus.ACTIVE, "visibility": Visibility.SHARED,
              "owner": TENANT, "min_disk": 0, "min_ram": 0, "protected": False, "os_hidden": False,
              "created_at": now, "updated_at": now}],
        )  # fmt: skip
        for start in range(0, rows, 10_000):
            batch = []
            for n in range(start, min(rows, start + 10_000)):
                url = f"swift://glance:secret@swift.example.com/v1/AUTH_a/glance/{n}"
                batch.append(
                    {"image_id": image_id, "url": vault.seal(url), "data_key_hash": vault.digest(url),
                     "store": "glance:swift", "location_metadata": {}, "status": LocationStatus.DELETED,
                     "size_bytes": 1,
                     "created_at": now, "updated_at": now, "attempts": 0}
                )  # fmt: skip
            connection.execute(insert(Location), batch)
        connection.execute(text("ANALYZE locations"))
