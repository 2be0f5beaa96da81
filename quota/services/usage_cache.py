"""The Redis copy of usage documents, dropped after every commit that changes a tenant's usage or limits.

A transaction notes the tenants it changed in its session (`mark_changed`); once the database has
committed, a session event drops their cached documents. Redis is never written inside a transaction,
so a rolled-back change never reaches it.

A drop that fails (Redis unreachable) is remembered and retried at this process's next use of the
cache; until it succeeds, those tenants are read from the database. A copy can still be stale for at
most the TTL when the process that lost the drop exits first, or when a reader that read before a
commit writes its copy after the drop: the TTL is the staleness bound.
"""

import threading

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from locquota.cache import Cache

CHANGED_TENANTS = "locquota.quota.changed_tenants"
KEY_PREFIX = "locquota:usage:v1:"
MAX_UNDROPPED = 100_000  # beyond this many tenants awaiting a retry, the TTL alone bounds staleness


def mark_changed(db: Session, tenant_id: str) -> None:
    """Note that this transaction changes the tenant's usage (or limits)."""
    db.info.setdefault(CHANGED_TENANTS, set()).add(tenant_id)


class UsageCache:
    """Usage documents in Redis for ttl_seconds at most."""

    def __init__(self, cache: Cache, ttl_seconds: int) -> None:
        self._cache, self.ttl_seconds = cache, ttl_seconds
        self._undropped: set[str] = set()  # tenants whose drop failed; their copies may be stale
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> dict[str, object] | None:
        """The cached document, or None (miss, Redis down, a copy that may be stale, or a foreign value)."""
        if self._undropped and not self._retry_drops() and tenant_id in self._undropped:
            return None
        value = self._cache.get_json(KEY_PREFIX + tenant_id)
        return value if isinstance(value, dict) else None

    def put(self, tenant_id: str, document: dict[str, object]) -> None:
        """Cache a document read from the database."""
        self._cache.set_json(KEY_PREFIX + tenant_id, document, self.ttl_seconds)

    def forget(self, tenant_ids: set[str]) -> None:
        """Drop these tenants' documents; on failure, remember them for a retry."""
        if not self._cache.forget(*(KEY_PREFIX + tenant_id for tenant_id in sorted(tenant_ids))):
            with self._lock:
                if len(self._undropped) + len(tenant_ids) <= MAX_UNDROPPED:
                    self._undropped |= tenant_ids
            return
        if self._undropped:
            self._retry_drops()

    def _retry_drops(self) -> bool:
        """Drop the copies a failed drop left; True once none is left to drop."""
        with self._lock:
            pending, self._undropped = self._undropped, set()
        if not pending or self._cache.forget(*(KEY_PREFIX + tenant_id for tenant_id in sorted(pending))):
            return True
        with self._lock:
            self._undropped |= pending
        return False

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
