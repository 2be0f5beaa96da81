"""The Glance Images v2 image and image-data views: parse, one service call, present."""

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from locations import patch_schemas, presenters, query_schemas, schemas
from locations.services.catalog import ImageCatalog, ImageView
from locations.services.deletion import DeletionService
from locations.services.images import ImageService
from locations.services.upload import ImageDataService
from locations.stores.base import StoreRegistry
from locquota.errors import LengthRequired, UnknownStore, UnsupportedMediaType

UPLOAD_MEDIA_TYPE = "application/octet-stream"


def _shown_locations(request: Request) -> tuple[bool, bool]:
    """Whether locations and direct_url are shown: the deployment's switches, and the get_image_location rule."""
    settings = request.settings
    allowed = request.identity.may("get_image_location")
    return settings.show_multiple_locations and allowed, settings.show_image_direct_url and allowed


def _present(request: Request, view: ImageView) -> dict[str, object]:
    show_locations, show_direct_url = _shown_locations(request)
    return presenters.image(
        view,
        show_locations=show_locations,
        show_direct_url=show_direct_url,
        show_stores=request.settings.is_multi_store,
    )


@view_config(route_name="images.collection", request_method="GET", renderer="json")
def list_images(request: Request) -> dict[str, object]:
    """A page of the caller's images, newest first unless sorted otherwise."""
    query = query_schemas.image_list_query(request, request.settings)
    views, next_marker = request.find_service(ImageCatalog).page(request.identity, query)
    show_locations, show_direct_url = _shown_locations(request)
    return presenters.image_list(
        views,
        list(request.GET.items()),
        next_marker,
        show_locations=show_locations,
        show_direct_url=show_direct_url,
        show_stores=request.settings.is_multi_store,
    )


@view_config(route_name="images.collection", request_method="POST", renderer="json")
def create_image(request: Request) -> dict[str, object]:
    """A new queued image; 201 with its Location."""
    body = schemas.image_create(request, request.settings)
    image = request.find_service(ImageService).create(request.identity, body)
    request.response.status_code = 201
    request.response.location = request.route_url("images.item", image_id=str(image.id))
    # As Glance: openstacksdk learns from these whether it may import (use_import) and into which stores.
    settings = request.settings
    if settings.import_methods:
        request.response.headers["OpenStack-image-import-methods"] = ",".join(settings.import_methods)
    if settings.is_multi_store:
        request.response.headers["OpenStack-image-store-ids"] = ",".join(
            store.name for store in request.find_service(StoreRegistry)
        )
    return _present(request, request.find_service(ImageCatalog).view_of(image))


@view_config(route_name="images.item", request_method="GET", renderer="json")
def show_image(request: Request) -> dict[str, object]:
    """One image."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    return _present(request, request.find_service(ImageCatalog).show(request.identity, image_id))


@view_config(route_name="images.item", request_method="PATCH", renderer="json")
def patch_image(request: Request) -> dict[str, object]:
    """Glance json-patch on an image's attributes and properties."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    changes = patch_schemas.image_patch(request, request.settings)
    image = request.find_service(ImageService).apply_patch(request.identity, image_id, changes)
    return _present(request, request.find_service(ImageCatalog).view_of(image))


@view_config(route_name="images.item", request_method="DELETE")
def delete_image(request: Request) -> Response:
    """Delete an image; 204."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    request.find_service(DeletionService).delete_image(request.identity, image_id)
    return Response(status=204)


@view_config(route_name="images.tag", request_method="PUT")
def add_tag(request: Request) -> Response:
    """Tag an image; 204 (also when it already carries the tag)."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    tag = schemas.parse_tag(request.matchdict["tag"])
    request.find_service(ImageService).add_tag(request.identity, image_id, tag)
    return Response(status=204)


@view_config(route_name="images.tag", request_method="DELETE")
def remove_tag(request: Request) -> Response:
    """Untag an image; 204, or 404 if it has no such tag."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    tag = schemas.parse_tag(request.matchdict["tag"])
    request.find_service(ImageService).remove_tag(request.identity, image_id, tag)
    return Response(status=204)


@view_config(route_name="images.file", request_method="PUT")
def upload_image_data(request: Request) -> Response:
    """Stream the body into the default store, or the one X-Image-Meta-Store names (chunked or sized); 204."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    check_data_body(request)
    store = _requested_store(request)
    data = request.find_service(ImageDataService)
    data.upload(request.identity, image_id, request.body_file, request.content_length, store=store)
    return Response(status=204)


def check_data_body(request: Request) -> None:
    """415 unless the body is image data; 411 when its end cannot be known (uploads and staging alike)."""
    if request.content_type != UPLOAD_MEDIA_TYPE:
        raise UnsupportedMediaType(f"Image data must be sent as {UPLOAD_MEDIA_TYPE}.")
    if request.content_length is None and not request.environ.get("wsgi.input_terminated"):
        # Without a length or a server that ends the chunked body for us, the end of the data is unknowable.
        raise LengthRequired("Send Content-Length or Transfer-Encoding: chunked through a server that decodes it.")


def _requested_store(request: Request) -> str | None:
    """The store X-Image-Meta-Store names (multi-store only, as in Glance); 400 if it is not one."""
    name = request.headers.get("X-Image-Meta-Store")
    if name is None or not request.settings.is_multi_store:
        return None
    if request.find_service(StoreRegistry).get(name.strip()) is None:
        raise UnknownStore(f"Store {name.strip()[:64]!r} is not one of this deployment's stores.")
    return name.strip()


@view_config(route_name="images.file", request_method="GET")
def download_image_data(request: Request) -> Response:
    """Stream the data with Content-MD5; 204 with no body while the image has no data."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    image, chunks = request.find_service(ImageDataService).open(request.identity, image_id)
    if chunks is None:
        return Response(status=204)
    response = Response(app_iter=chunks, content_type=UPLOAD_MEDIA_TYPE, content_length=image.size)
    if image.checksum:
        response.headers["Content-MD5"] = image.checksum
    return response
