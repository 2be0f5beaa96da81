"""Requests of the quota benchmark: a keep-alive client that also reads the server's own time, and rounds
of operations in shuffled order, so drift between operations hits all of them alike (as benchmarks.timing).

An operation may send untimed requests before its timed one (prime the cache, delete a key): only the
Answers it returns are recorded, each under its own name.
"""

import http.client
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.quota.server import SERVER_TIME_HEADER
from benchmarks.timing import HEADERS, Summary


@dataclass(frozen=True)
class Answer:
    """One response: status, body, the client's time (send to last body byte) and the server's own time."""

    status: int
    body: bytes
    elapsed: float
    server: float

    def json(self) -> dict[str, object]:
        """The body as a JSON object."""
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


class QuotaClient:
    """One persistent connection with the keystone identity headers of one project and role."""

    def __init__(self, port: int, project_id: str, roles: str = "member", timeout_seconds: float = 60) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_seconds)
        self._headers = {**HEADERS, "X-Project-Id": project_id, "X-Roles": roles}

    def send(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Answer:
        """Time one request, reading the whole body."""
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        started = time.perf_counter()
        self._connection.request(method, path, body=body, headers=headers)
        response = self._connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        return Answer(response.status, data, elapsed, float(response.getheader(SERVER_TIME_HEADER) or "nan"))

    def expect(
        self, method: str, path: str, status: int, body: bytes | None = None, content_type: str | None = None
    ) -> Answer:
        """Send; any other status than `status` is a broken benchmark, not a slow one."""
        answer = self.send(method, path, body, content_type)
        if answer.status != status:
            raise RuntimeError(f"{method} {path} answered {answer.status}, not {status}: {answer.body[:300]!r}")
        return answer

    def close(self) -> None:
        """Close the connection so the server can shut down."""
        self._connection.close()


Operation = Callable[[QuotaClient], dict[str, Answer]]


@dataclass(frozen=True)
class Measured:
    """One timed request kind at one size: the client's latencies and the median of the server's time."""

    summary: Summary
    server_median: float


def measure(
    client: QuotaClient, operations: list[Operation], rounds: int, warmup_rounds: int, rng: random.Random
) -> dict[str, Measured]:
    """Warm up, then `rounds` rounds of every operation once, in an order shuffled for each round."""
    client_times: dict[str, list[float]] = {}
    server_times: dict[str, list[float]] = {}
    order = list(operations)
    for round_number in range(warmup_rounds + rounds):
        rng.shuffle(order)
        for operation in order:
            answers = operation(client)
            if round_number < warmup_rounds:
                continue
            for name, answer in answers.items():
                client_times.setdefault(name, []).append(answer.elapsed)
                server_times.setdefault(name, []).append(answer.server)
    return {
        name: Measured(Summary.of(name, times), statistics.median(server_times[name]))
        for name, times in client_times.items()
    }
