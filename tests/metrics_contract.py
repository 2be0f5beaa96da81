"""The metric families the contract names (SPEC section 7, spelled as docs/metrics.md does), and a scrape check.

A family must be in every scrape from the first one, whatever has happened yet, with at least one series:
Prometheus stores series, not families, so a family that is only declared reads as "no data" on a dashboard.
The gauges read per tenant, and the backlog's per store, are the exception: they have a series for each
tenant with usage and each store with a backlog, so none while there is none.
"""

from prometheus_client.parser import text_string_to_metric_families

# SPEC section 7, part by part.
BACKLOG_BY_STORE = (
    "locquota_backlog_locations",
    "locquota_backlog_bytes",
    "locquota_backlog_overdue_locations",
    "locquota_backlog_failing_locations",
)
BACKLOG = (*BACKLOG_BY_STORE, "locquota_backlog_oldest_age_seconds")
SCRUBBER = (
    "locquota_scrubber_deletions_total",
    "locquota_scrubber_failures_total",
    "locquota_scrubber_batch_duration_seconds",
    "locquota_scrubber_last_success_timestamp_seconds",
)
QUOTA_BY_TENANT = ("locquota_quota_usage", "locquota_quota_limit")
QUOTA = (*QUOTA_BY_TENANT, "locquota_quota_admissions_refused_total")
CACHE = (
    "locquota_usage_cache_hits_total",
    "locquota_usage_cache_misses_total",
    "locquota_cache_errors_total",
    "locquota_reconcile_drift_figures",
)
HTTP = ("locquota_http_request_duration_seconds",)
# Counted as things happen, beyond SPEC's list: docs/metrics.md names them, and alerts read them too.
OTHER_COUNTERS = (
    "locquota_location_decrypt_errors_total",
    "locquota_location_identity_mismatches_total",
    "locquota_uploads_reaped_total",
)
API_FAMILIES = (*BACKLOG, *SCRUBBER, *QUOTA, *CACHE, *HTTP, *OTHER_COUNTERS)
# What a scrubber daemon's own port serves: its process's instruments (no scrape-time gauges).
COUNTED_FAMILIES = (
    *SCRUBBER,
    "locquota_quota_admissions_refused_total",
    "locquota_usage_cache_hits_total",
    "locquota_usage_cache_misses_total",
    "locquota_cache_errors_total",
    *HTTP,
    *OTHER_COUNTERS,
)
PER_ROW = frozenset({*BACKLOG_BY_STORE, *QUOTA_BY_TENANT})


def series_by_family(body: str) -> dict[str, int]:
    """How many samples each family of a text-format scrape has, by the name it is exposed under."""
    counts = {}
    for family in text_string_to_metric_families(body):
        # The parser names a counter's family without its _total, which its samples (and the docs) carry.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        counts[name] = len(family.samples)
    return counts


def missing_families(body: str, required: tuple[str, ...]) -> list[str]:
    """The required families absent from the scrape, or present without any series (PER_ROW's aside)."""
    counts = series_by_family(body)
    return [name for name in required if name not in counts or (counts[name] == 0 and name not in PER_ROW)]
