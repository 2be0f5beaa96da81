"""The `locquota` command: one click group; each package adds its own commands.

The app is bootstrapped lazily from the .ini on first use, so `--help` stays instant and a typo in
a setting fails with the key's name before any command runs.
"""

from datetime import timedelta

import click

from locations.audit_cli import audit
from locations.cli import REKEY_BATCH, import_glance, locations, purge, reap, reconcile, rekey_all, restore, scrub
from locquota.clock import Clock
from locquota.config_cli import config
from locquota.db import make_engine
from locquota.schema_state import (
    DatabaseNotReadyError,
    head_revision,
    migrations,
    revision_at,
    schema_problem,
    upgrade,
)
from locquota.scripting import LazyApp
from locquota.tokens import TokenService
from quota.cli import limits


@click.group()
@click.version_option(package_name="locquota", prog_name="locquota", message="%(prog)s %(version)s")
@click.option(
    "--config",
    "config_uri",
    default="development.ini",
    envvar="LOCQUOTA_CONFIG",
    show_default=True,
    help="The PasteDeploy .ini of the deployment.",
)
@click.pass_context
def cli(ctx: click.Context, config_uri: str) -> None:
    """Operate a locquota deployment."""
    ctx.obj = LazyApp(config_uri)
    ctx.call_on_close(ctx.obj.close)


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(app: LazyApp) -> None:
    """Apply every pending migration, then key the locations not keyed yet by their stores' canonical keys.

    PostgreSQL deployments run this on each release; the re-keying is `locquota locations rekey`.
    """
    database_url = app.settings.database_url
    _revision_or_fail(database_url)  # it answers, or one line says why
    engine = make_engine(database_url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"the database is already at the newest revision, {after}")
    else:
        click.echo(f"upgraded the database from {before or 'nothing'} to {after}, the newest revision")
    rekey_all(app, REKEY_BATCH, everything=False)


@db.command("current")
@click.pass_obj
def db_current(app: LazyApp) -> None:
    """The revision the database is at, and whether it is the newest this locquota knows."""
    database_url = app.settings.database_url
    revision = _revision_or_fail(database_url)
    if revision is None:
        raise click.ClickException(str(schema_problem(database_url, revision)))
    head = head_revision()
    if revision == head:
        click.echo(f"{revision} (the newest revision)")
    elif revision in {known.id for known in migrations()}:
        click.echo(f"{revision} (the newest is {head}: run `locquota db upgrade`)")
    else:
        click.echo(f"{revision} (not a revision this locquota knows: a newer release migrated the database)")


@db.command("history")
def db_history() -> None:
    """Every migration this locquota carries, newest first: revision, then what it changes."""
    for revision in migrations():
        click.echo(f"{revision.id}\t{revision.title}{' (newest)' if revision.is_head else ''}")


def _revision_or_fail(database_url: str) -> str | None:
    try:
        return revision_at(database_url)
    except DatabaseNotReadyError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.group()
def tokens() -> None:
    """API tokens for the `tokens` identity strategy."""


@tokens.command("create")
@click.option("--project", required=True, help="The project (tenant) the token acts as.")
@click.option("--roles", default="member", show_default=True, help="Comma-separated roles, e.g. admin,member.")
@click.option("--description", default="", help="A note on who holds the token.")
@click.option("--expires-in-days", type=click.IntRange(min=1), default=None, help="Expiry; none by default.")
@click.pass_obj
def tokens_create(app: LazyApp, project: str, roles: str, description: str, expires_in_days: int | None) -> None:
    """Print a new token once; only its hash is stored, so it cannot be shown again."""
    if not project.strip() or len(project) > 255:
        raise click.BadParameter("must be 1 to 255 characters", param_hint="--project")
    with app.request() as request, request.tm:
        clock = request.find_service(Clock)
        expires_at = clock.now() + timedelta(days=expires_in_days) if expires_in_days else None
        role_list = [role.strip() for role in roles.split(",") if role.strip()]
        token = TokenService(request.db, clock).issue(project.strip(), role_list, description, expires_at)
    click.echo(token)


@tokens.command("list")
@click.option("--project", default=None, help="Only this project's tokens.")
@click.pass_obj
def tokens_list(app: LazyApp, project: str | None) -> None:
    """Every token: id, project, roles, expiry and description (the tokens themselves are never stored)."""
    with app.request() as request, request.tm:
        clock = request.find_service(Clock)
        now = clock.now()
        for token in TokenService(request.db, clock).listed(project):
            expiry = token.expires_at.isoformat(sep=" ", timespec="seconds") if token.expires_at else "never"
            if token.expires_at is not None and token.expires_at <= now:
                expiry += " (expired)"
            click.echo(f"{token.id}\t{token.project_id}\t{token.roles}\texpires {expiry}\t{token.description}")


@tokens.command("revoke")
@click.argument("token_ids", nargs=-1, required=True, type=click.IntRange(min=1))
@click.pass_obj
def tokens_revoke(app: LazyApp, token_ids: tuple[int, ...]) -> None:
    """Revoke tokens by the ids `tokens list` shows; the next request with one of them gets 401."""
    with app.request() as request, request.tm:
        revoked = TokenService(request.db, request.find_service(Clock)).revoke(list(token_ids))
    missing = sorted(set(token_ids) - set(revoked))
    if revoked:
        click.echo(f"revoked {', '.join(map(str, revoked))}")
    if missing:
        raise click.ClickException(f"no token with id {', '.join(map(str, missing))}")


for command in (config, scrub, reap, restore, purge, reconcile, audit, import_glance, locations, limits):
    cli.add_command(command)
