"""metrics.families: the series it creates at start exist at zero, and cover what the code counts.

The instruments live in this process's default registry, shared with every other test: the stores here
have names no other test uses, and the cache's failures are compared as before/after label sets.
"""

import socket

from prometheus_client import REGISTRY

from locquota.cache import make_cache
from metrics.families import CACHE_OPERATIONS, STORE_FAILURE_REASON, create_known_series
from quota.models import Resource


def labels_counted(name: str, label: str) -> dict[str, float]:
    """The current value of each series of a labelled counter, by that label's value."""
    return {
        sample.labels[label]: sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    }


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_each_store_gets_its_deletions_and_a_failure_series_at_zero():
    create_known_series(["families-a", "families-b"])

    for store in ("families-a", "families-b"):
        assert REGISTRY.get_sample_value("locquota_scrubber_deletions_total", {"store": store}) == 0
        labels = {"store": store, "reason": STORE_FAILURE_REASON}
        assert REGISTRY.get_sample_value("locquota_scrubber_failures_total", labels) == 0


def test_every_resource_has_a_refusal_series():
    create_known_series([])

    refused = labels_counted("locquota_quota_admissions_refused_total", "resource")
    assert {resource.value for resource in Resource} <= set(refused)


def test_every_cache_call_that_counts_a_failure_has_a_series_from_the_start():
    cache = make_cache(f"redis://127.0.0.1:{closed_port()}/0", timeout_seconds=1)
    before = labels_counted("locquota_cache_errors_total", "operation")

    cache.ping()
    cache.get_json("key")
    cache.set_json("key", 1, ttl_seconds=10)
    cache.forget("key")

    after = labels_counted("locquota_cache_errors_total", "operation")
    failed = {operation for operation, value in after.items() if value > before.get(operation, 0)}
    assert failed == set(CACHE_OPERATIONS)
