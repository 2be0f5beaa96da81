"""Per-request latency over one keep-alive HTTP connection, endpoints interleaved so drift hits all alike."""

import http.client
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.server import engine_serving
from tests.statement_counter import counting

HEADERS = {"X-Identity-Status": "Confirmed", "X-Roles": "member", "Connection": "keep-alive"}


@dataclass(frozen=True)
class Endpoint:
    """A named request; `path` is called for every request so GET can address a different image each time."""

    name: str
    path: Callable[[], str]


@dataclass(frozen=True)
class Summary:
    """The latencies of one endpoint at one size, in seconds."""

    endpoint: str
    samples: int
    median: float
    p95: float
    requests_per_second: float
    # What one request sent to the database (tests/statement_counter.py): statements and COMMITs; None if not counted.
    statements: int | None = None
    commits: int | None = None

    @classmethod
    def of(
        cls, endpoint: str, latencies: list[float], statements: int | None = None, commits: int | None = None
    ) -> "Summary":
        """Median and p95 (nearest rank) resist the odd GC pause; req/s is the serial client's throughput."""
        ordered = sorted(latencies)
        p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
        return cls(
            endpoint, len(ordered), statistics.median(ordered), p95, len(ordered) / sum(ordered), statements, commits
        )


class Client:
    """One persistent connection, as a Glance client with keep-alive would hold."""

    def __init__(self, port: int, project_id: str) -> None:
        self.port = port
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._headers = {**HEADERS, "X-Project-Id": project_id}

    def get(self, path: str) -> float:
        """Time one GET including reading the whole body; anything but 200 is a broken benchmark."""
        started = time.perf_counter()
        self._connection.request("GET", path, headers=self._headers)
        response = self._connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:300]!r}")
        return elapsed

    def close(self) -> None:
        """Close the connection so the server can shut down."""
        self._connection.close()


def measure(
    client: Client, endpoints: list[Endpoint], rounds: int, warmup_rounds: int, rng: random.Random
) -> list[Summary]:
    """Warm up (pool, caches, lazy imports), then `rounds` rounds of one request per endpoint in shuffled order.

    Then one more request per endpoint, untimed, counts what it sends to the database (when the app is
    one that benchmarks.server serves in this process).
    """
    latencies: dict[str, list[float]] = {endpoint.name: [] for endpoint in endpoints}
    order = list(endpoints)
    for round_number in range(warmup_rounds + rounds):
        rng.shuffle(order)
        for endpoint in order:
            elapsed = client.get(endpoint.path())
            if round_number >= warmup_rounds:
                latencies[endpoint.name].append(elapsed)
    summaries = []
    engine = engine_serving(client.port)
    for endpoint in endpoints:
        if engine is None:
            summaries.append(Summary.of(endpoint.name, latencies[endpoint.name]))
            continue
        with counting(engine) as counts:
            client.get(endpoint.path())
        summaries.append(Summary.of(endpoint.name, latencies[endpoint.name], len(counts.statements), counts.commits))
    return summaries
