"""Gauges computed at scrape time, once per scrape, from one indexed query each.

Each part (backlog, quota, reconcile, data keys, uploads, audit, cache) runs in its own short read-only
transaction with a statement timeout: a slow or failing database makes that part report
`locquota_collector_up 0` instead of hanging the scrape, and the other parts still answer.
"""

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection, event, text
from sqlalchemy.orm import Session, sessionmaker

from locations.services.audit import Finding
from locations.services.audit_runs import last_audit
from locations.services.backlog import BacklogService
from locations.services.data_rekey import collision_count
from locations.services.image_import.tasks import imports_in_flight
from locations.services.upload_leases import uploads_in_flight
from locquota.cache import Cache
from locquota.clock import Clock
from quota.services.limits import LimitService
from quota.services.reconcile import last_run
from quota.services.unified_limits import UnifiedLimits
from quota.services.usage import largest_tenants

log = logging.getLogger(__name__)


def _seconds_since_epoch(moment: datetime) -> float:
    return (moment - datetime(1970, 1, 1)).total_seconds()


class ScrapeCollector:
    """A prometheus_client collector over the database and the cache; register it in a scrape's registry."""

    def __init__(
        self,
        sessions: sessionmaker,
        clock: Clock,
        cache: Cache,
        default_limits: dict[str, int],
        *,
        unified: UnifiedLimits | None = None,
        top_tenants: int,
        timeout_seconds: float,
    ) -> None:
        self._sessions, self._clock, self._cache, self._defaults = sessions, clock, cache, default_limits
        self._top_tenants, self._timeout, self._unified = top_tenants, timeout_seconds, unified

    def collect(self) -> Iterator[Metric]:
        """Every part's families, then each part's health and duration."""
        up = GaugeMetricFamily("locquota_collector_up", "1 if this part of the scrape succeeded.", labels=["collector"])
        took = GaugeMetricFamily(
            "locquota_collector_duration_seconds", "Time this part of the scrape took.", labels=["collector"]
        )
        parts: dict[str, Callable[[], Iterable[Metric]]] = {
            "backlog": lambda: self._in_session(self._backlog),
            "quota": lambda: self._in_session(self._quota),
            "reconcile": lambda: self._in_session(self._reconcile),
            "data_keys": lambda: self._in_session(self._data_keys),
            "uploads": lambda: self._in_session(self._uploads),
            "audit": lambda: self._in_session(self._audit),
            "cache": self._cache_up,
        }
        for name, part in parts.items():
            started = time.perf_counter()
            try:
                families = list(part())
            except Exception:
                # Whatever failed (a timeout, a lost connection), the scrape must still answer.
                log.exception("metrics: the %s collector failed", name)
                families, is_up = [], 0
            else:
                is_up = 1
            yield from families
            up.add_metric([name], is_up)
            took.add_metric([name], time.perf_counter() - started)
        yield up
        yield took

    def _in_session(self, part: Callable[[Session], Iterable[Metric]]) -> list[Metric]:
        with self._sessions() as session:
            dialect = session.get_bind().dialect.name
            limited = session.connection() if dialect in ("mysql", "mariadb") else None
            try:
                if dialect == "postgresql":
                    timeout_ms = int(self._timeout * 1000)
                    session.execute(text(f"SET LOCAL statement_timeout = {timeout_ms}"))
                elif limited is not None:
                    # MariaDB's timeout is per session or per statement; per statement, so that the pooled
                    # connection goes back to requests without it.
                    event.listen(limited, "before_cursor_execute", self._time_limited, retval=True)
                return list(part(session))
            finally:
                if limited is not None:
                    event.remove(limited, "before_cursor_execute", self._time_limited)
                session.rollback()  # read only: nothing to commit, and nothing to wake the cache listener

    def _time_limited(
        self, _connection: Connection, _cursor: object, statement: str, parameters: object, *_rest: object
    ) -> tuple[str, object]:
        """A MariaDB statement run under the scrape's timeout (max_statement_time, in seconds)."""
        return f"SET STATEMENT max_statement_time = {self._timeout:.3f} FOR {statement}", parameters

    def _backlog(self, session: Session) -> Iterator[Metric]:
        labels = ["store"]
        locations = GaugeMetricFamily("locquota_backlog_locations", "Pending_delete locations.", labels=labels)
        size = GaugeMetricFamily("locquota_backlog_bytes", "Bytes of pending_delete locations.", labels=labels)
        overdue = GaugeMetricFamily(
            "locquota_backlog_overdue_locations", "Pending_delete locations past their scrub time.", labels=labels
        )
        failing = GaugeMetricFamily(
            "locquota_backlog_failing_locations", "Pending_delete locations that failed at least once.", labels=labels
        )
        now = self._clock.now()
        oldest = None
        for store in BacklogService(session, self._clock).by_store():
            locations.add_metric([store.store], store.locations)
            size.add_metric([store.store], store.size_bytes)
            overdue.add_metric([store.store], store.overdue)
            failing.add_metric([store.store], store.failing)
            oldest = store.oldest_since if oldest is None else min(oldest, store.oldest_since)
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        yield from (locations, size, overdue, failing)
        yield GaugeMetricFamily(
            "locquota_backlog_oldest_age_seconds", "Age of the oldest pending_delete location (0: none).", value=age
        )

    def _quota(self, session: Session) -> Iterator[Metric]:
        usage = GaugeMetricFamily(
            "locquota_quota_usage",
            "Usage of the tenants holding the most bytes, by resource (bytes for sizes).",
            labels=["tenant", "resource"],
        )
        limit = GaugeMetricFamily(
            "locquota_quota_limit",
            "Limits of the same tenants, by resource (bytes for sizes); absent when unlimited.",
            labels=["tenant", "resource"],
        )
        if self._top_tenants:
            tenants = largest_tenants(session, self._top_tenants)
            service = LimitService(session, self._clock, self._defaults, self._unified)
            limits = service.for_tenants([tenant for tenant, _ in tenants])
            for tenant_id, totals in tenants:
                for resource, value in totals.items():
                    usage.add_metric([tenant_id, resource.value], value)
                    cap = limits[tenant_id].cap(resource)
                    if cap is not None:
                        limit.add_metric([tenant_id, resource.value], cap)
        yield usage
        yield limit

    def _reconcile(self, session: Session) -> Iterator[Metric]:
        run = last_run(session)
        yield GaugeMetricFamily(
            "locquota_reconcile_drift_figures", "Figures the last reconcile found drifted.", value=run.drifted_figures
        )
        yield GaugeMetricFamily(
            "locquota_reconcile_drifted_tenants", "Tenants with drift in the last reconcile.", value=run.drifted_tenants
        )
        finished = _seconds_since_epoch(run.finished_at) if run.finished_at else 0.0
        yield GaugeMetricFamily(
            "locquota_reconcile_last_run_timestamp_seconds",
            "Unix time the last reconcile finished (0: never).",
            value=finished,
        )

    def _data_keys(self, session: Session) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "locquota_location_data_collisions",
            "Pieces of data that live locations of more than one tenant reference (the last locations rekey).",
            value=collision_count(session),
        )

    def _uploads(self, session: Session) -> Iterator[Metric]:
        in_flight, expired = uploads_in_flight(session, self._clock.now())
        yield GaugeMetricFamily(
            "locquota_uploads_in_flight", "Uploads holding a lease (images in saving).", value=in_flight
        )
        yield GaugeMetricFamily(
            "locquota_uploads_expired",
            "Uploads whose lease ran out and that no reaper has ended yet (is the scrubber daemon running?).",
            value=expired,
        )
        tasks, dead = imports_in_flight(session, self._clock.now())
        yield GaugeMetricFamily(
            "locquota_imports_in_flight", "Import tasks not ended yet (pending or processing).", value=tasks
        )
        yield GaugeMetricFamily(
            "locquota_imports_expired",
            "Import tasks whose worker stopped renewing their lease and that no reaper has ended yet.",
            value=dead,
        )

    def _audit(self, session: Session) -> Iterator[Metric]:
        run = last_audit(session)
        findings = GaugeMetricFamily(
            "locquota_audit_findings",
            "What the last locquota audit found, by kind (with --fix, also what it repaired); 0 if none ran.",
            labels=["kind"],
        )
        for kind in Finding:
            findings.add_metric([kind.value], run.findings[kind])
        yield findings
        finished = _seconds_since_epoch(run.finished_at) if run.finished_at else 0.0
        yield GaugeMetricFamily(
            "locquota_audit_last_run_timestamp_seconds", "Unix time the last audit finished (0: never).", value=finished
        )

    def _cache_up(self) -> Iterator[Metric]:
        if not self._cache.is_enabled:
            return  # no Redis configured: "down" would be a false alarm
        yield GaugeMetricFamily(
            "locquota_cache_up", "1 if Redis answered a ping during this scrape.", value=int(self._cache.ping())
        )
