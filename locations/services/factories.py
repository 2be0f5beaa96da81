"""Service factories: the only code that looks at the request to build the locations services."""

from datetime import timedelta

from pyramid.request import Request

from locations.services.backlog import BacklogService
from locations.services.catalog import ImageCatalog
from locations.services.deletion import DeletionService
from locations.services.images import ImageService
from locations.services.location_api import LocationApi
from locations.services.location_changes import LocationChanges
from locations.services.scrubbing import ScrubPolicy
from locations.services.upload import ImageDataService
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.crypto import UrlVault
from locquota.db import commit_and_begin
from locquota.leases import LeaseTerms
from locquota.settings import Settings
from quota.services.limits import LimitService


def _location_changes(request: Request) -> LocationChanges:
    """Location changes in this request's session, with the location rules of this deployment."""
    settings = request.settings
    return LocationChanges(
        request.db,
        request.find_service(StoreRegistry),
        request.find_service(Clock),
        lambda: commit_and_begin(request.tm),
        scrub_policy(settings),
        request.find_service(LimitService),
        delayed_delete=settings.delayed_delete,
        scrub_delay=timedelta(seconds=settings.scrub_time_seconds),
        multi_store=settings.is_multi_store,
        vault=request.find_service(UrlVault),
    )


def image_service_factory(_context: object, request: Request) -> ImageService:
    """The image service for this request's session."""
    clock = request.find_service(Clock)
    return ImageService(request.db, clock, _location_changes(request), request.find_service(LimitService))


def location_api_factory(_context: object, request: Request) -> LocationApi:
    """The v2.17 locations API for this request."""
    return LocationApi(
        request.find_service(ImageService),
        _location_changes(request),
        request.find_service(StoreRegistry),
        request.settings.upload_chunk_bytes,
        vault=request.find_service(UrlVault),
    )


def scrub_policy(settings: Settings) -> ScrubPolicy:
    """The scrubber's lease and retry backoff, from the settings."""
    return ScrubPolicy(
        lease=timedelta(seconds=settings.scrub_lease_seconds),
        retry_base=timedelta(seconds=settings.scrub_retry_base_seconds),
        retry_max=timedelta(seconds=settings.scrub_retry_max_seconds),
    )


def upload_lease_terms(settings: Settings) -> LeaseTerms:
    """How long an upload's lease lasts without a renewal."""
    return LeaseTerms(timedelta(seconds=settings.upload_lease_seconds))


def deletion_service_factory(_context: object, request: Request) -> DeletionService:
    """Deletion and restore; immediate deletes commit pending_delete through this request's checkpoint."""
    settings = request.settings
    return DeletionService(
        request.db,
        request.find_service(ImageService),
        request.find_service(StoreRegistry),
        request.find_service(Clock),
        lambda: commit_and_begin(request.tm),
        scrub_policy(settings),
        delayed_delete=settings.delayed_delete,
        scrub_delay=timedelta(seconds=settings.scrub_time_seconds),
        vault=request.find_service(UrlVault),
    )


def backlog_service_factory(_context: object, request: Request) -> BacklogService:
    """The backlog reads for this request."""
    return BacklogService(request.db, request.find_service(Clock))


def image_catalog_factory(_context: object, request: Request) -> ImageCatalog:
    """The read path; it aggregates locations only when the deployment shows them."""
    settings = request.settings
    with_locations = settings.show_multiple_locations or settings.show_image_direct_url
    return ImageCatalog(
        request.db,
        with_locations=with_locations,
        with_stores=settings.is_multi_store,
        vault=request.find_service(UrlVault),
    )


def image_data_service_factory(_context: object, request: Request) -> ImageDataService:
    """The data service; its checkpoint commits this request's unit of work and begins the next."""
    settings = request.settings
    return ImageDataService(
        request.db,
        request.find_service(ImageService),
        request.find_service(StoreRegistry),
        request.find_service(Clock),
        request.tm,
        request.find_service(LimitService),
        chunk_bytes=settings.upload_chunk_bytes,
        size_cap_bytes=settings.image_size_cap_bytes,
        lease=upload_lease_terms(settings),
        scrub_policy=scrub_policy(settings),
        multi_store=settings.is_multi_store,
        vault=request.find_service(UrlVault),
    )
