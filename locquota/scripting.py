"""Running the app outside a web server: the CLI and the scrubber bootstrap it from the .ini."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import click
from pyramid.paster import bootstrap, setup_logging
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.scripting import prepare
from sqlalchemy.orm import Session

from locquota.pipeline import app_section_of
from locquota.settings import SettingsError

UnitOfWork = Callable[[], AbstractContextManager[Session]]


class LazyApp:
    """The application built from --config when a command first needs it."""

    def __init__(self, config_uri: str) -> None:
        self.config_uri = app_section_of(config_uri)
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """The app's registry, bootstrapping on first use."""
        if self._registry is None:
            try:
                setup_logging(self.config_uri)
                env = bootstrap(self.config_uri)
            except FileNotFoundError as exc:
                raise click.ClickException(f"{self.config_uri}: no such configuration file") from exc
            except (SettingsError, ValueError) as exc:
                raise click.ClickException(f"{self.config_uri}: {exc}") from exc
            env["closer"]()
            self._registry = env["registry"]
        return self._registry

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
