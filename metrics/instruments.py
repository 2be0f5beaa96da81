"""Counters, histograms and gauges that code updates as things happen: a leaf module, importable by anyone.

In production (gunicorn with several workers) prometheus_client's multiprocess mode is on when
PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is first imported: every process writes its values to
files there, and /metrics sums them (deploy/gunicorn.conf.py sets it up). Gauges read from the
database are not here: metrics.collectors computes them at scrape time, once per scrape.
"""

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double every counter and histogram for a timestamp Prometheus does not use.
disable_created_metrics()

# Request durations in seconds: from a cache hit (~1 ms) to a large upload.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SCRUB_BATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUEST_DURATION = Histogram(
    "locquota_http_request_duration_seconds",
    "Time to answer a request, by route name (never the raw path), method and status.",
    ["route", "method", "status"],
    buckets=HTTP_BUCKETS,
)
SCRUB_DELETIONS = Counter(
    "locquota_scrubber_deletions_total",
    "Locations the scrubber marked deleted (their data deleted, or kept for another reference).",
    ["store"],
)
SCRUB_FAILURES = Counter(
    "locquota_scrubber_failures_total",
    "Deletions that failed and will be retried, by store and reason (the exception's class).",
    ["store", "reason"],
)
SCRUB_BATCH_DURATION = Histogram(
    "locquota_scrubber_batch_duration_seconds",
    "Time to delete and record one claimed batch.",
    buckets=SCRUB_BATCH_BUCKETS,
)
SCRUB_LAST_SUCCESS = Gauge(
    "locquota_scrubber_last_success_timestamp_seconds",
    "Unix time of the last scrubber pass that finished without an error.",
    multiprocess_mode="max",
)
ADMISSIONS_REFUSED = Counter(
    "locquota_quota_admissions_refused_total",
    "Requests refused because they would take a tenant past a limit, by resource.",
    ["resource"],
)
USAGE_CACHE_HITS = Counter("locquota_usage_cache_hits_total", "Usage reads served from Redis.")
USAGE_CACHE_MISSES = Counter("locquota_usage_cache_misses_total", "Usage reads that went to the database.")
CACHE_ERRORS = Counter(
    "locquota_cache_errors_total",
    "Redis calls that failed (the caller fell back to the database), by operation.",
    ["operation"],
)
LOCATION_DECRYPT_ERRORS = Counter(
    "locquota_location_decrypt_errors_total",
    "Sealed location URLs that no configured key opened (tampered, or a key missing), by where they were read.",
    ["reader"],
)
IDENTITY_MISMATCHES = Counter(
    "locquota_location_identity_mismatches_total",
    "Locations whose URL reached other data than when they were added (a symlink swapped), by reader; nothing"
    " was read or deleted through them.",
    ["reader"],
)
UPLOADS_REAPED = Counter(
    "locquota_uploads_reaped_total",
    "Uploads whose lease ran out (a killed worker, an outage) that the reaper ended: image back to queued, its"
    " data sent to the scrubber.",
)
