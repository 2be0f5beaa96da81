"""Quota tables: usage totals per tenant, the same space split by store and state, limits, and found drift.

quota knows tenants, resources and numbers; what a location or an image is stays in `locations`.
"""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from locquota.db import Base

MIB = 1024 * 1024
UNLIMITED = -1


class Resource(StrEnum):
    """What a limit applies to (SPEC section 5); names as Glance's unified limits spell them."""

    IMAGE_SIZE_TOTAL = "image_size_total"
    IMAGE_COUNT_TOTAL = "image_count_total"
    IMAGE_COUNT_UPLOADING = "image_count_uploading"
    IMAGE_STAGE_TOTAL = "image_stage_total"
    LOCATIONS_PER_IMAGE = "locations_per_image"

    @property
    def is_in_mib(self) -> bool:
        """Size limits are set in MiB and admitted exactly in bytes."""
        return self in (Resource.IMAGE_SIZE_TOTAL, Resource.IMAGE_STAGE_TOTAL)


# The resources a tenant's usage row totals; locations_per_image is counted per image when it is admitted.
TENANT_RESOURCES = (
    Resource.IMAGE_SIZE_TOTAL,
    Resource.IMAGE_COUNT_TOTAL,
    Resource.IMAGE_COUNT_UPLOADING,
    Resource.IMAGE_STAGE_TOTAL,
)


class SpaceState(StrEnum):
    """The states of data that take space in a store, and so are charged (a deleted location is not)."""

    ACTIVE = "active"
    PENDING_DELETE = "pending_delete"


class TenantUsage(Base):
    """A tenant's exact totals, changed in the transaction of the status change that moves them.

    Admission is a conditional UPDATE of this row: it passes only if the new total stays within the
    limit, and the row lock it takes serializes concurrent admissions of one tenant until commit.
    `version` grows with every change, so a cached copy can tell how old it is.
    """

    __tablename__ = "tenant_usage"
    tenant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    image_size_total: Mapped[int] = mapped_column(BigInteger, default=0)
    image_count_total: Mapped[int] = mapped_column(BigInteger, default=0)
    image_count_uploading: Mapped[int] = mapped_column(BigInteger, default=0)
    image_stage_total: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime]


class StoreUsage(Base):
    """The charged space of a tenant split by store and state: `/v1/usage` shows it, reconcile checks it."""

    __tablename__ = "store_usage"
    tenant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(32), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    locations: Mapped[int] = mapped_column(BigInteger, default=0)


class TenantLimit(Base):
    """A tenant's override of one resource's default limit (the .ini holds the defaults)."""

    __tablename__ = "tenant_limits"
    tenant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class UsageDrift(Base):
    """A difference the last `locquota reconcile` found between a stored total and a recount.

    Each run replaces the rows of the previous one, so they always describe the latest run.
    """

    __tablename__ = "usage_drift"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255), index=True)
    resource: Mapped[str] = mapped_column(String(200))
    recorded: Mapped[int] = mapped_column(BigInteger)
    actual: Mapped[int] = mapped_column(BigInteger)
    found_at: Mapped[datetime]
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)


class ReconcileRun(Base):
    """One `locquota reconcile` run: when, how many tenants it checked, how many had drift."""

    __tablename__ = "reconcile_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    tenants: Mapped[int] = mapped_column(BigInteger, default=0)
    drifted_tenants: Mapped[int] = mapped_column(BigInteger, default=0)
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)
