"""Service factories: the only code that looks at the request to build the locations services."""

from collections.abc import Callable, Iterator
from datetime import timedelta

from pyramid.request import Request

from locations.services.backlog import BacklogService
from locations.services.catalog import ImageCatalog
from locations.services.deletion import DeletionService
from locations.services.image_import.staging import StagingService
from locations.services.image_import.starting import ImportService
from locations.services.image_import.units import ImportTools
from locations.services.image_import.web_source import open_url
from locations.services.image_import.web_source_filter import UrlFilter
from locations.services.images import ImageService
from locations.services.location_api import LocationApi
from locations.services.location_changes import LocationChanges
from locations.services.members import MemberService
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


def member_service_factory(_context: object, request: Request) -> MemberService:
    """Image members for this request."""
    images = request.find_service(ImageService)
    return MemberService(request.db, request.find_service(Clock), images, request.settings.image_member_quota)


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


def url_filter(settings: Settings) -> UrlFilter:
    """web-download's URL filter, from Glance's [import_filtering_opts] as locquota names them."""
    return UrlFilter(
        allowed_schemes=settings.import_allowed_schemes,
        disallowed_schemes=settings.import_disallowed_schemes,
        allowed_hosts=settings.import_allowed_hosts,
        disallowed_hosts=settings.import_disallowed_hosts,
        allowed_ports=settings.import_allowed_ports,
        disallowed_ports=settings.import_disallowed_ports,
    )


def import_lease_terms(settings: Settings) -> LeaseTerms:
    """How long an import task's lease lasts without a renewal."""
    return LeaseTerms(timedelta(seconds=settings.import_lease_seconds))


def import_service_factory(_context: object, request: Request) -> ImportService:
    """Import requests, checked and turned into tasks in this request's session."""
    settings = request.settings
    return ImportService(
        request.db,
        request.find_service(ImageService),
        request.find_service(StoreRegistry),
        request.find_service(Clock),
        request.find_service(LimitService),
        import_lease_terms(settings),
        check_url=url_filter(settings).check,
        multi_store=settings.is_multi_store,
    )


def staging_service_factory(_context: object, request: Request) -> StagingService:
    """The stage request, received as uploads are."""
    return StagingService(
        request.db,
        request.find_service(ImageService),
        request.find_service(ImageDataService),
        request.find_service(StoreRegistry),
        request.find_service(Clock),
    )


def _downloader(settings: Settings) -> Callable[[str, int], Iterator[bytes]]:
    """web-download's fetch: the URL filter on every hop, the timeout and chunk size of this deployment."""
    checked = url_filter(settings)

    def download(url: str, max_bytes: int) -> Iterator[bytes]:
        source = open_url(
            url,
            checked,
            timeout_seconds=settings.web_download_timeout_seconds,
            max_bytes=max_bytes,
            chunk_bytes=settings.upload_chunk_bytes,
        )
        try:
            yield from source.chunks()
        finally:
            source.close()

    return download


def import_tools(request: Request) -> ImportTools:
    """What an import task's worker works with, from a (scripting) request of the app."""
    settings = request.settings
    return ImportTools(
        stores=request.find_service(StoreRegistry),
        clock=request.find_service(Clock),
        vault=request.find_service(UrlVault),
        terms=import_lease_terms(settings),
        scrub_policy=scrub_policy(settings),
        chunk_bytes=settings.upload_chunk_bytes,
        size_cap_bytes=settings.image_size_cap_bytes,
        multi_store=settings.is_multi_store,
        download=_downloader(settings),
    )
