"""Every counted family in a process's first scrape: the label values known at start created at zero.

A labelled counter has no series until its first event, and under gunicorn's multiprocess mode a family
without a series has no file, so it is missing from /metrics altogether: dashboards and alerts read "no data"
where the truth is 0. Creating the known series when the app starts (in every worker, and in a scrubber
daemon) writes them, at zero, in every process. Label values seen only later (a store error's class) add
their series when they happen.
"""

from collections.abc import Iterable

from pyramid.config import Configurator

from locquota.crypto import UrlNotReadableError
from metrics.instruments import (
    ADMISSIONS_REFUSED,
    CACHE_ERRORS,
    HTTP_REQUEST_DURATION,
    IDENTITY_MISMATCHES,
    LOCATION_DECRYPT_ERRORS,
    SCRUB_DELETIONS,
    SCRUB_FAILURES,
)
from quota.models import Resource

CACHE_OPERATIONS = ("ping", "get", "set", "delete")  # every call locquota.cache.Cache counts a failure of
DECRYPT_READERS = ("api", "download", "scrubber")
IDENTITY_READERS = ("download", "scrubber")
# A failure every store can have: a sealed URL that no key opens. One series per store is enough to be seen.
STORE_FAILURE_REASON = UrlNotReadableError.__name__
SCRAPE_SERIES = ("metrics", "GET", "200")  # the route that is certain to be served: /metrics itself


def includeme(config: Configurator) -> None:
    """Create the known series for this deployment's stores, as the app starts."""
    create_known_series(name for name, _type in config.registry["locquota.settings"].backends)


def create_known_series(store_names: Iterable[str]) -> None:
    """Create, at zero, each series whose labels are known now: resources, cache calls, readers, stores."""
    for resource in Resource:
        ADMISSIONS_REFUSED.labels(resource.value)
    for operation in CACHE_OPERATIONS:
        CACHE_ERRORS.labels(operation)
    for reader in DECRYPT_READERS:
        LOCATION_DECRYPT_ERRORS.labels(reader)
    for reader in IDENTITY_READERS:
        IDENTITY_MISMATCHES.labels(reader)
    for store in store_names:
        SCRUB_DELETIONS.labels(store)
        SCRUB_FAILURES.labels(store, STORE_FAILURE_REASON)
    HTTP_REQUEST_DURATION.labels(*SCRAPE_SERIES)
