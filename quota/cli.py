"""Operator commands of the quota package: `locquota limits show|set|reset`."""

import click

from locquota.errors import LocquotaError
from locquota.scripting import LazyApp
from locquota.settings import MAX_LIMIT
from quota.models import Resource
from quota.schemas import parse_tenant_id
from quota.services.limits import Limits, LimitService

RESOURCE_NAMES = [resource.value for resource in Resource]


def _echo_limits(tenant_id: str, limits: Limits) -> None:
    for resource in Resource:
        unit = " MiB" if resource.is_in_mib and limits[resource] != -1 else ""
        source = "tenant" if resource in limits.overridden else "default"
        click.echo(f"{tenant_id}\t{resource}\t{limits[resource]}{unit}\t({source})")


def _tenant_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return parse_tenant_id(value)
    except LocquotaError as exc:
        raise click.BadParameter(exc.message) from exc


def _assignment(text: str) -> tuple[Resource, int]:
    name, sep, raw = text.partition("=")
    if not sep or name not in RESOURCE_NAMES:
        raise click.BadParameter(f"{text!r}: expected RESOURCE=VALUE with RESOURCE one of {', '.join(RESOURCE_NAMES)}")
    try:
        value = int(raw)
    except ValueError:
        raise click.BadParameter(f"{text!r}: the value must be an integer (-1 for unlimited)") from None
    if not -1 <= value <= MAX_LIMIT:
        raise click.BadParameter(f"{text!r}: the value must be from -1 (unlimited) to {MAX_LIMIT}")
    return Resource(name), value


@click.group()
def limits() -> None:
    """Per-tenant limits (sizes in MiB; -1 for unlimited)."""


@limits.command("show")
@click.argument("tenant_id", callback=_tenant_id)
@click.pass_obj
def show(app: LazyApp, tenant_id: str) -> None:
    """The limits that apply to TENANT_ID, and whether each is its own or the default."""
    with app.request() as request, request.tm:
        _echo_limits(tenant_id, request.find_service(LimitService).for_tenant(tenant_id))


@limits.command("set")
@click.argument("tenant_id", callback=_tenant_id)
@click.argument("assignments", nargs=-1, required=True)
@click.pass_obj
def set_limits(app: LazyApp, tenant_id: str, assignments: tuple[str, ...]) -> None:
    """Override limits of TENANT_ID: RESOURCE=VALUE ... (the tenant's other overrides stay)."""
    changes = dict(_assignment(text) for text in assignments)
    _echo_limits(tenant_id, _update(app, tenant_id, changes))


@limits.command("reset")
@click.argument("tenant_id", callback=_tenant_id)
@click.argument("resources", nargs=-1, type=click.Choice(RESOURCE_NAMES))
@click.pass_obj
def reset(app: LazyApp, tenant_id: str, resources: tuple[str, ...]) -> None:
    """Return RESOURCES of TENANT_ID (all, if none named) to the defaults."""
    names = resources or tuple(RESOURCE_NAMES)
    _echo_limits(tenant_id, _update(app, tenant_id, dict.fromkeys(map(Resource, names))))


def _update(app: LazyApp, tenant_id: str, changes: dict[Resource, int | None]) -> Limits:
    """Change overrides in one transaction; a refusal (limits kept in Keystone) is one clean line."""
    try:
        with app.request() as request, request.tm:
            return request.find_service(LimitService).update(tenant_id, changes)
    except LocquotaError as exc:
        raise click.ClickException(exc.message) from exc
