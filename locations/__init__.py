import uuid
from collections.abc import Callable

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.scripting import prepare
from sqlalchemy import event

from locations.services.backlog import BacklogService
from locations.services.catalog import ImageCatalog
from locations.services.deletion import DeletionService
from locations.services.factories import (
    backlog_service_factory,
    deletion_service_factory,
    image_catalog_factory,
    image_data_service_factory,
    image_service_factory,
    import_service_factory,
    import_tools,
    location_api_factory,
    member_service_factory,
    staging_service_factory,
    url_filter,
)
from locations.services.image_import.runner import ImportRun
from locations.services.image_import.staging import StagingService
from locations.services.image_import.starting import ImportService
from locations.services.image_import.tasks import renew_waiting
from locations.services.image_import.workers import ImportWorkers
from locations.services.images import ImageService
from locations.services.location_api import LocationApi
from locations.services.members import MemberService
from locations.services.upload import ImageDataService
from locations.services.url_encryption import check_key_ring, refuse_plaintext
from locations.stores.base import StoreRegistry, load_stores
from locations.stores.staging import staging_store
from locquota.clock import Clock
from locquota.settings import SettingsError


def includeme(config: Configurator) -> None:
    """Glance image routes, the image and store services, and their views."""
    settings = config.registry["locquota.settings"]
    setting = "enabled_backends" if settings.is_multi_store else "enabled_stores"
    enabled = load_stores(settings.backends, settings.store_options, setting)
    stores = StoreRegistry(enabled, settings.default_backend_name, staging=staging_store(settings, enabled.values()))
    vault, session_factory = config.registry["locquota.url_vault"], config.registry["locquota.session_factory"]
    check_key_ring(session_factory, vault)  # a wrong or missing key refuses to start, naming the setting
    if vault.is_enabled:
        event.listen(session_factory, "before_flush", refuse_plaintext)
    config.include(".routes")
    config.register_service(stores, iface=StoreRegistry)
    config.register_service_factory(image_service_factory, iface=ImageService)
    config.register_service_factory(location_api_factory, iface=LocationApi)
    config.register_service_factory(member_service_factory, iface=MemberService)
    config.register_service_factory(image_catalog_factory, iface=ImageCatalog)
    config.register_service_factory(deletion_service_factory, iface=DeletionService)
    config.register_service_factory(backlog_service_factory, iface=BacklogService)
    config.register_service_factory(image_data_service_factory, iface=ImageDataService)
    try:
        url_filter(settings)  # a bad host or port in the import filter stops the start, not every import
    except ValueError as exc:
        raise SettingsError(f"locquota.import_allowed_hosts / import_disallowed_hosts: {exc}") from exc
    config.register_service_factory(import_service_factory, iface=ImportService)
    config.register_service_factory(staging_service_factory, iface=StagingService)
    config.registry["locquota.import_workers"] = ImportWorkers(
        _import_runner(config.registry),
        settings.import_workers,
        keep_queued=waiting_tasks_keeper(config.registry),
        every_seconds=settings.import_lease_seconds / 3,
    )
    config.scan(".views")


def _import_runner(registry: Registry) -> Callable[[uuid.UUID, str], None]:
    """Run one import task in a request of its own (its own session and transactions), off the request thread."""

    def run(task_id: uuid.UUID, holder: str) -> None:
        env = prepare(registry=registry)
        try:
            request = env["request"]
            ImportRun(request, import_tools(request), task_id, holder).run()
        finally:
            env["closer"]()

    return run


def waiting_tasks_keeper(registry: Registry) -> Callable[[set[uuid.UUID], str], None]:
    """Renew the leases of tasks waiting for one of this process's import threads (one short transaction)."""

    def keep(task_ids: set[uuid.UUID], holder: str) -> None:
        env = prepare(registry=registry)
        try:
            request = env["request"]
            with request.tm:
                until = import_tools(request).terms.until(request.find_service(Clock).now())
                renew_waiting(request.db, task_ids, holder, until)
        finally:
            env["closer"]()

    return keep
