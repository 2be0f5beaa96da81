"""Service factories: the only code that looks at the request to build the locations services."""

from pyramid.request import Request

from locations.services.catalog import ImageCatalog
from locations.services.images import ImageService
from locations.services.upload import ImageDataService
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.db import commit_and_begin


def image_service_factory(_context: object, request: Request) -> ImageService:
    """The image service for this request's session."""
    return ImageService(request.db, request.find_service(StoreRegistry), request.find_service(Clock))


def image_catalog_factory(_context: object, request: Request) -> ImageCatalog:
    """The read path; it aggregates locations only when the deployment shows them."""
    settings = request.settings
    with_locations = settings.show_multiple_locations or settings.show_image_direct_url
    return ImageCatalog(request.db, with_locations=with_locations)


def image_data_service_factory(_context: object, request: Request) -> ImageDataService:
    """The data service; its checkpoint commits this request's unit of work and begins the next."""
    settings = request.settings
    return ImageDataService(
        request.db,
        request.find_service(ImageService),
        request.find_service(StoreRegistry),
        request.find_service(Clock),
        lambda: commit_and_begin(request.tm),
        chunk_bytes=settings.upload_chunk_bytes,
        size_cap_bytes=settings.image_size_cap_bytes,
    )
