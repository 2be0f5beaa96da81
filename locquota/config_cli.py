"""`locquota config check|show`: what an operator runs before starting the service, and when it misbehaves."""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import click
import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

from locquota.environment import variable_of
from locquota.masking import mask_url
from locquota.schema_state import DatabaseNotReadyError, head_revision, revision_at, schema_problem
from locquota.scripting import DatabaseFailedError, LazyApp
from locquota.settings import Settings
from locquota.settings_listing import setting_lines

AUTO_MIGRATE_VARIABLE = variable_of("auto_migrate")


@click.group()
def config() -> None:
    """The effective configuration: check it, show it."""


@config.command("show")
@click.pass_obj
def show(app: LazyApp) -> None:
    """Every effective locquota setting and where it comes from (variable, .ini, default), secrets masked."""
    for line in setting_lines(app.raw_settings, app.settings, os.environ):
        click.echo(line)


@config.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the settings, build the app (stores, policy), reach the database and Redis; never migrates.

    One line per problem and exit 1, or one line saying all is well and exit 0.
    """
    app: LazyApp = ctx.obj
    try:
        settings = app.settings
    except click.ClickException as exc:
        click.echo(exc.message)
        ctx.exit(1)
    database_problem, database_note = _database_state(settings)
    problems = [database_problem] if database_problem else []
    try:
        with _never_migrating() as overrides, _quiet_logging():
            registry = app.build(overrides)
        registry["locquota.engine"].dispose()
    except DatabaseFailedError as exc:
        if not database_problem:  # else it is the same failure, already reported
            problems.append(exc.message)
    except click.ClickException as exc:
        problems.append(exc.message)
    redis_problem, redis_note = _redis_state(settings)
    problems += [redis_problem] if redis_problem else []
    for problem in problems:
        click.echo(problem)
    if problems:
        ctx.exit(1)
    click.echo(f"configuration ok: {app.config_uri}; {database_note}; {redis_note}")


def _database_state(settings: Settings) -> tuple[str | None, str]:
    """(a problem, or None; a note): the database reached, and its revision against this release's."""
    where = mask_url(settings.database_url)
    try:
        revision = revision_at(settings.database_url)
    except DatabaseNotReadyError as exc:
        return str(exc), ""
    problem = schema_problem(settings.database_url, revision)
    if problem and settings.auto_migrate:
        return None, f"the database at {where} is at {revision or 'no revision'}: auto_migrate upgrades it at start"
    if problem:
        return problem, ""
    if revision == head_revision():
        return None, f"the database at {where} is at the newest revision, {revision}"
    return None, f"the database at {where} is at {revision}, newer than this locquota knows"


@contextmanager
def _never_migrating() -> Iterator[dict[str, str]]:
    """Settings for building the app without migrating it: the .ini key, and the variable while it is built."""
    saved = os.environ.get(AUTO_MIGRATE_VARIABLE)
    if saved is not None:
        os.environ[AUTO_MIGRATE_VARIABLE] = "false"  # the variable would win over the .ini key
    try:
        yield {"locquota.auto_migrate": "false"}
    finally:
        if saved is not None:
            os.environ[AUTO_MIGRATE_VARIABLE] = saved


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """No log lines while the app is built for the check: what they would warn about is reported as a problem."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _redis_state(settings: Settings) -> tuple[str | None, str]:
    """(a problem, or None; a note): Redis pinged as the cache would reach it, with the same timeout."""
    if not settings.redis_url and not settings.redis_sentinels:
        return None, "Redis is off (no locquota.redis_url)"
    where = mask_url(settings.redis_url) if not settings.redis_sentinels else ", ".join(settings.redis_sentinels)
    timeouts = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
    }
    try:
        if settings.redis_sentinels:
            options = parse_url(settings.redis_url) if settings.redis_url else {}
            options.pop("host", None)
            options.pop("port", None)
            addresses = [(host, int(port)) for host, _, port in (a.rpartition(":") for a in settings.redis_sentinels)]
            sentinel = Sentinel(addresses, sentinel_kwargs=timeouts, **timeouts)
            client = sentinel.master_for(settings.redis_sentinel_service, retry=None, **options, **timeouts)
        else:
            client = redis.Redis.from_url(settings.redis_url, retry=None, **timeouts)
        client.ping()
    except redis.RedisError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot reach Redis at {where}: {reason}", ""
    return None, f"Redis at {where} answers"
