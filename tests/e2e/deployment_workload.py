"""The clients of the two-node deployment test: one thread per tenant, plain HTTP to both nodes in turn.

Each client owns its tenant, so it knows exactly what the tenant holds at every moment (its images, their
active bytes, what it deleted); only the scrubbers change the tenant's usage behind its back, and only by
moving pending_delete bytes to nothing. Every 2xx body is checked against that knowledge as it arrives.

A usage read from the cache may be older than the client's last change: Redis is a cache, and a copy
whose drop was lost in the failover (the drop failed while Redis was down, and only the process that lost
it knows; or the promoted replica never got the DEL) lives until its TTL ends. So does the copy a delayed
delete leaves (it moves bytes from active to pending_delete, totals unchanged, and drops nothing). Such a
read is right only if it is a cached copy and its figures are those of a moment within the TTL (plus a
slack for the request's own time) before it arrived; the client counts them.
"""

import hashlib
import http.client
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from tests.conftest import identity

REQUEST_TIMEOUT_SECONDS = 10  # a request answered later than this is stuck: a failure, never waited out
IMAGE_SIZES = (1024, 4096, 700, 16384, 9000)  # small data; different sizes make a wrong sum visible
KEPT_EVERY = 3  # every third image is kept to the end, the others deleted in their cycle
STALE_SLACK_SECONDS = 2  # a cached copy's figures are read at most this long before it is written


@dataclass(frozen=True, slots=True)
class Answer:
    """One request and its answer, as the client saw them."""

    node: int
    method: str
    path: str
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class Nodes:
    """The API nodes' addresses; every answer is recorded (list.append is atomic across threads)."""

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.addresses = addresses
        self.answers: list[Answer] = []

    def call(self, node: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Answer:
        """One request on its own connection (the next may reach another worker); times out as stuck."""
        connection = http.client.HTTPConnection(*self.addresses[node], timeout=REQUEST_TIMEOUT_SECONDS)
        started = time.monotonic()
        try:
            connection.request(method, path, body=body, headers={**headers, "Connection": "close"})
            response = connection.getresponse()
            answer = Answer(node, method, path, response.status, response.read(), time.monotonic() - started)
        finally:
            connection.close()
        self.answers.append(answer)
        return answer


class Progress:
    """Requests answered so far, across every client; the test waits on it to act mid-run."""

    def __init__(self, clients: int) -> None:
        self._condition = threading.Condition()
        self.count = 0
        self._running = clients

    def add(self) -> None:
        with self._condition:
            self.count += 1
            self._condition.notify_all()

    def finish(self) -> None:
        """A client stopped (done, or failed): nobody waits for its requests any more."""
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def wait_for(self, count: int, timeout_seconds: float) -> bool:
        """Whether count requests were answered before the timeout (False at once when every client stopped)."""
        with self._condition:
            return self._condition.wait_for(lambda: self.count >= count or self._running == 0, timeout_seconds) and (
                self.count >= count
            )


class WrongAnswerError(AssertionError):
    """An answer that contradicts what the client knows: the run's failure."""


@dataclass(frozen=True, slots=True)
class Holdings:
    """What a tenant holds at one moment, as its client knows it."""

    images: int = 0  # not deleted (queued or active)
    active_bytes: int = 0
    active_locations: int = 0
    deleted_images: int = 0  # deleted so far: their data may still be pending_delete
    deleted_bytes: int = 0


def explained_by(holdings: Holdings, usage: dict[str, Any], *, torn_allowed: bool = False) -> bool:
    """Whether a usage document is what this tenant held, some of its deleted data not scrubbed yet.

    torn_allowed: the totals need not be the sum of the split by status (each right on its own), as a read that
    took them in two snapshots shows them (a known product bug: tests/functional/test_usage_read_consistency.py).
    """
    active, pending = usage["by_status"]["active"], usage["by_status"]["pending_delete"]
    split_is_right = (
        active["size_bytes"] == holdings.active_bytes
        and active["locations"] == holdings.active_locations
        and 0 <= pending["size_bytes"] <= holdings.deleted_bytes
        and 0 <= pending["locations"] <= holdings.deleted_images
    )
    adds_up = usage["resources"]["image_size_total"]["usage"] == active["size_bytes"] + pending["size_bytes"]
    return split_is_right and totals_explained_by(holdings, usage) and (adds_up or torn_allowed)


def totals_explained_by(holdings: Holdings, usage: dict[str, Any]) -> bool:
    """Whether a usage document's totals (not its split by status) are what this tenant holds."""
    resources = usage["resources"]
    return (
        holdings.active_bytes
        <= resources["image_size_total"]["usage"]
        <= holdings.active_bytes + holdings.deleted_bytes
        and holdings.images <= resources["image_count_total"]["usage"] <= holdings.images + holdings.deleted_images
        and resources["image_count_uploading"]["usage"] == 0
    )


@dataclass
class TenantClient:
    """One tenant's client: cycles of create, upload, show, download, usage, delete, over both nodes in turn."""

    index: int
    nodes: Nodes
    progress: Progress
    cache_ttl_seconds: int
    tenant: str = ""
    live: dict[str, int] = field(default_factory=dict)  # image id -> size, kept so far
    deleted: dict[str, int] = field(default_factory=dict)  # image id -> size
    holdings: Holdings = field(default_factory=Holdings)
    superseded: list[tuple[float, Holdings]] = field(default_factory=list)  # (when it stopped being true, what)
    torn_reads_tolerated: bool = False
    usage_reads: dict[str, int] = field(default_factory=lambda: {"database": 0, "cache": 0, "stale": 0, "torn": 0})
    # When each stale copy arrived (monotonic), and whether its totals were the tenant's current ones anyway.
    stale_reads: list[tuple[float, bool]] = field(default_factory=list)
    failure: BaseException | None = None
    _requests: int = 0

    def __post_init__(self) -> None:
        self.tenant = f"deploy-tenant-{self.index}"

    def run(self, stop: threading.Event, max_cycles: int) -> None:
        """Thread body: cycles until stop is set or max_cycles ran; a wrong answer or a stuck request ends it."""
        try:
            for cycle in range(max_cycles):
                if stop.is_set():
                    return
                self.cycle(cycle)
        except BaseException as exc:  # noqa: BLE001  (the test reports it; a thread cannot raise to pytest)
            self.failure = exc

    def call(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Answer:
        node = (self.index + self._requests) % len(self.nodes.addresses)
        self._requests += 1
        answer = self.nodes.call(node, method, path, {**identity(self.tenant), **headers}, body)
        self.progress.add()
        return answer

    def expect(self, answer: Answer, status: int) -> Answer:
        if answer.status != status:
            raise WrongAnswerError(f"{answer.method} {answer.path} on node {answer.node}: {answer.status} "
                                   f"{answer.body[:300]!r}, expected {status}")  # fmt: skip
        return answer

    def change(self, **deltas: int) -> None:
        """A change the client's last request made: the holdings before it stop being true now."""
        self.superseded.append((time.monotonic(), self.holdings))
        values = {name: getattr(self.holdings, name) + delta for name, delta in deltas.items()}
        self.holdings = replace(self.holdings, **values)

    def cycle(self, number: int) -> None:
        data = os.urandom(IMAGE_SIZES[(self.index + number) % len(IMAGE_SIZES)])
        name = f"{self.tenant}-{number}"
        body = json.dumps({"name": name, "disk_format": "raw", "container_format": "bare"}).encode()
        created = self.expect(self.call("POST", "/v2/images", body, **{"Content-Type": "application/json"}), 201)
        image = created.json()
        self.check(created, image["name"] == name and image["status"] == "queued" and image["owner"] == self.tenant)
        image_id = image["id"]
        self.change(images=1)

        self.expect(
            self.call("PUT", f"/v2/images/{image_id}/file", data, **{"Content-Type": "application/octet-stream"}), 204
        )
        self.live[image_id] = len(data)
        self.change(active_bytes=len(data), active_locations=1)

        shown = self.expect(self.call("GET", f"/v2/images/{image_id}"), 200)
        self.check(shown, is_image_of(shown.json(), image_id, data))
        downloaded = self.expect(self.call("GET", f"/v2/images/{image_id}/file"), 200)
        self.check(downloaded, downloaded.body == data)
        self.read_usage()
        self.read_usage()  # from the other node: the copy the first read left, unless a scrubber changed the usage

        if number % KEPT_EVERY == KEPT_EVERY - 1:
            return
        self.expect(self.call("DELETE", f"/v2/images/{image_id}"), 204)
        self.deleted[image_id] = self.live.pop(image_id)
        self.change(images=-1, active_bytes=-len(data), active_locations=-1, deleted_images=1, deleted_bytes=len(data))
        self.expect(self.call("GET", f"/v2/images/{image_id}"), 404)
        self.read_usage()

    def check(self, answer: Answer, is_right: bool) -> None:
        if not is_right:
            raise WrongAnswerError(
                f"{answer.method} {answer.path} on node {answer.node}: wrong body {answer.body[:500]!r}"
            )

    def read_usage(self) -> None:
        """GET /v1/usage: the figures of now, or a cached copy's of a moment within its TTL."""
        answer = self.expect(self.call("GET", "/v1/usage"), 200)
        usage = answer.json()
        source = usage["freshness"]["source"]
        now = time.monotonic()
        oldest_allowed = now - answer.seconds - self.cache_ttl_seconds - STALE_SLACK_SECONDS
        recent = [holdings for until, holdings in self.superseded if until >= oldest_allowed]
        for torn_allowed in (False, True) if self.torn_reads_tolerated else (False,):
            if usage["tenant_id"] == self.tenant and explained_by(self.holdings, usage, torn_allowed=torn_allowed):
                kind = source
            elif source == "cache" and any(explained_by(held, usage, torn_allowed=torn_allowed) for held in recent):
                kind = "stale"
                self.stale_reads.append((now, totals_explained_by(self.holdings, usage)))
            else:
                continue
            self.usage_reads[kind] += 1
            self.usage_reads["torn"] += torn_allowed
            return
        raise WrongAnswerError(
            f"usage of {self.tenant} on node {answer.node} ({source}): {usage}; the tenant holds {self.holdings}"
        )


def is_image_of(image: dict[str, Any], image_id: str, data: bytes) -> bool:
    """Whether a shown image is this one, active with exactly this data."""
    return (
        image["id"] == image_id
        and image["status"] == "active"
        and image["size"] == len(data)
        and image["checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
        and image["os_hash_value"] == hashlib.new(image["os_hash_algo"], data).hexdigest()
    )
