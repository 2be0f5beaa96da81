"""What a write costs the database, and the floor under an upload, measured in the same run as the requests.

- Counts: each admitting request is sent once more, untimed, with tests.statement_counter's hook on the
  app's engine (the one the write-path tests pin), for the statements and transactions beside its time.
- Floor: what no 1-byte upload can avoid, sent without the app: the byte written to a new file and that
  file fsynced (the store's durability), then the ledger's conditional UPDATE of a tenant's usage row and
  its COMMIT (the admission, durable as the server's synchronous_commit says). The upload's server time
  over this floor is the issue's "PUT within 2x the floor".
"""

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy import Engine

from benchmarks.quota.concurrency import RAW_ADMISSION
from benchmarks.timing import Summary
from tests.statement_counter import Counts, counting

FLOOR_TENANT = "bench-floor-tenant"
FLOOR_LIMIT = 10**12


def measure_floor(database_url: str, directory: Path, repeats: int) -> Summary:
    """The median (and p95) of one durable 1-byte file plus one committed admission, repeats times."""
    directory.mkdir(parents=True, exist_ok=True)
    times = []
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        connection.execute(
            "INSERT INTO tenant_usage (tenant_id, version, updated_at, image_size_total, image_count_total,"
            " image_count_uploading, image_stage_total) VALUES (%s, 0, now(), 0, 0, 0, 0) ON CONFLICT DO NOTHING",
            (FLOOR_TENANT,),
        )
        connection.commit()
        for _ in range(repeats):
            path = directory / uuid.uuid4().hex
            started = time.perf_counter()
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(descriptor, b"x")
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            connection.execute(RAW_ADMISSION, (FLOOR_TENANT, FLOOR_LIMIT))
            connection.commit()
            times.append(time.perf_counter() - started)
            path.unlink()
    return Summary.of("floor", times)


def count_each(engine: Engine, requests: dict[str, Callable[[], object]]) -> dict[str, Counts]:
    """Send each request once, in order, counting what it sends through engine."""
    counted = {}
    for name, send in requests.items():
        with counting(engine) as counts:
            send()
        counted[name] = counts
    return counted


def shown(counts: Counts | None) -> str:
    """Statements/transactions, as the tables print them."""
    return "-" if counts is None else f"{len(counts.statements)}/{counts.commits}"
