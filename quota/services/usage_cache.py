"""The Redis copy of usage documents, dropped after every commit that changes a tenant's usage or limits.

A transaction notes the tenants it changed in its session (`mark_changed`); once the database has
committed, a session event drops their cached documents. Redis is never written inside a transaction,
so a rolled-back change never reaches it. A drop that fails (Redis down) or loses a race with a reader
that read before the commit leaves a stale copy for at most the TTL: that is the staleness bound.
"""

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from locquota.cache import Cache

CHANGED_TENANTS = "locquota.quota.changed_tenants"
KEY_PREFIX = "locquota:usage:v1:"


def mark_changed(db: Session, tenant_id: str) -> None:
    """Note that this transaction changes the tenant's usage (or limits)."""
    db.info.setdefault(CHANGED_TENANTS, set()).add(tenant_id)


class UsageCache:
    """Usage documents in Redis for ttl_seconds at most."""

    def __init__(self, cache: Cache, ttl_seconds: int) -> None:
        self._cache, self.ttl_seconds = cache, ttl_seconds

    def get(self, tenant_id: str) -> dict[str, object] | None:
        """The cached document, or None (miss, Redis down, or a value this version cannot read)."""
        value = self._cache.get_json(KEY_PREFIX + tenant_id)
        return value if isinstance(value, dict) else None

    def put(self, tenant_id: str, document: dict[str, object]) -> None:
        """Cache a document read from the database."""
        self._cache.set_json(KEY_PREFIX + tenant_id, document, self.ttl_seconds)

    def forget(self, tenant_ids: set[str]) -> None:
        """Drop these tenants' documents."""
        self._cache.forget(*(KEY_PREFIX + tenant_id for tenant_id in sorted(tenant_ids)))

    def forget_after_commit(self, sessions: sessionmaker) -> None:
        """Drop the documents of the tenants each committed transaction changed."""

        @event.listens_for(sessions, "after_commit")
        def _committed(session: Session) -> None:
            changed = session.info.pop(CHANGED_TENANTS, None)
            if changed:
                self.forget(changed)

        @event.listens_for(sessions, "after_rollback")
        def _rolled_back(session: Session) -> None:
            session.info.pop(CHANGED_TENANTS, None)
