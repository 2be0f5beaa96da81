"""Running the app outside a web server: the CLI and the scrubber build it from the .ini.

Every failure before a command's work starts is one line (click.ClickException): a missing .ini, a bad
setting or LOCQUOTA_* variable, a database that does not answer or was never migrated.
"""

import configparser
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import click
from pyramid.paster import get_appsettings, setup_logging
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.scripting import prepare
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from locquota.app import configure
from locquota.db import UnitOfWork
from locquota.masking import mask_url
from locquota.pipeline import app_section_of, require_auth_token
from locquota.schema_state import DatabaseNotReadyError, first_line, require_schema, revision_at
from locquota.settings import AuthStrategy, Settings, SettingsError

AppSettings = dict[str, str]


class DatabaseFailedError(click.ClickException):
    """The database failed while the app was built (auto_migrate, the encryption key check)."""


class LazyApp:
    """The application built from --config when a command first needs it."""

    def __init__(self, config_uri: str) -> None:
        try:
            self.config_uri = app_section_of(config_uri)
        except configparser.Error:  # not an .ini at all: raw_settings says so, in one line, when it is needed
            self.config_uri = config_uri
        self._raw: AppSettings | None = None
        self._global_config: dict[str, str] = {}
        self._settings: Settings | None = None
        self._registry: Registry | None = None

    @property
    def raw_settings(self) -> AppSettings:
        """The app section's keys as the .ini writes them (before LOCQUOTA_* variables override them)."""
        if self._raw is None:
            try:
                section = get_appsettings(self.config_uri)
            except FileNotFoundError as exc:
                raise click.ClickException(f"{self.config_uri}: no such configuration file") from exc
            except (LookupError, ValueError, configparser.Error) as exc:  # no such section, no .ini, bad interpolation
                raise click.ClickException(f"{self.config_uri}: {' '.join(str(exc).split())}") from exc
            self._raw, self._global_config = dict(section), dict(section.global_conf)
        return self._raw

    @property
    def settings(self) -> Settings:
        """The parsed settings alone, without building the app (no store, no database connection)."""
        if self._settings is None:
            try:
                self._settings = Settings.from_ini(self.raw_settings, os.environ)
            except SettingsError as exc:
                raise click.ClickException(f"{self.config_uri}: {exc}") from exc
        return self._settings

    @property
    def registry(self) -> Registry:
        """The app's registry, built on first use once the database answers at the newest revision."""
        if self._registry is None:
            settings = self.settings
            try:
                if settings.auto_migrate:
                    revision_at(settings.database_url)  # it must answer; building the app migrates it
                else:
                    require_schema(settings.database_url)
            except DatabaseNotReadyError as exc:
                raise click.ClickException(str(exc)) from exc
            setup_logging(self.config_uri)
            self._registry = self.build()
        return self._registry

    def build(self, overrides: Mapping[str, str] | None = None) -> Registry:
        """Build the app as locquota.app:main does (with these .ini keys replaced), errors as one-line ClickExceptions.

        Not through main(): main ends the process on a bad setting, as a server must; a command says why
        in click's way, and `config check` goes on to its other checks.
        """
        try:
            router = configure({**self.raw_settings, **(overrides or {})}).make_wsgi_app()
            if router.registry["locquota.settings"].auth_strategy is AuthStrategy.KEYSTONE:
                require_auth_token(self._global_config)
        except (SettingsError, ValueError) as exc:
            raise click.ClickException(f"{self.config_uri}: {exc}") from exc
        except DBAPIError as exc:
            where = mask_url(self.settings.database_url)
            raise DatabaseFailedError(
                f"the database at {where} failed while the app was built: {first_line(exc)}"
            ) from exc
        return router.registry

    def close(self) -> None:
        """Release the database connections a command opened (matters when commands run in-process)."""
        if self._registry is not None:
            self._registry["locquota.engine"].dispose()

    @contextmanager
    def request(self) -> Iterator[Request]:
        """A request to run one command's work with; `with request.tm:` makes it one transaction."""
        env = prepare(registry=self.registry)
        try:
            yield env["request"]
        finally:
            env["closer"]()

    def unit_of_work(self) -> UnitOfWork:
        """A factory of transactions on the app's database: each `with` yields a session and commits on exit."""

        @contextmanager
        def unit() -> Iterator[Session]:
            with self.request() as request, request.tm:
                yield request.db

        return unit

    def rolled_back_unit_of_work(self) -> UnitOfWork:
        """Like unit_of_work, but each transaction is rolled back at the end: for work that must change nothing."""

        @contextmanager
        def unit() -> Iterator[Session]:
            with self.request() as request:
                request.tm.begin()
                try:
                    yield request.db
                finally:
                    request.tm.abort()

        return unit
