"""The reapers as the commands run them: dead uploads first, then dead imports (scrub, reap, audit --fix)."""

from locations.services.factories import import_tools, upload_lease_terms
from locations.services.image_import.reaper import ImportReaper, Reapers
from locations.services.upload_reaper import UploadReaper
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.scripting import LazyApp


def reapers(app: LazyApp) -> Reapers:
    """Both reapers on the app's database, stores and clock."""
    settings = app.registry["locquota.settings"]
    with app.request() as request:
        stores, clock, tools = request.find_service(StoreRegistry), request.find_service(Clock), import_tools(request)
    uploads = UploadReaper(
        app.unit_of_work(), stores, clock, upload_lease_terms(settings),
        batch_size=settings.scrub_batch_size, vault=app.registry["locquota.url_vault"],
    )  # fmt: skip
    return Reapers(uploads, ImportReaper(app.request, tools, batch_size=settings.scrub_batch_size))
