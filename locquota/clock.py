"""Time as a service, so tests can freeze it instead of sleeping."""

from datetime import UTC, datetime, timedelta

from pyramid.config import Configurator


class Clock:
    """The wall clock. Every timestamp locquota writes comes from here (naive UTC)."""

    def now(self) -> datetime:
        """Return the current time as naive UTC, the form stored in the database."""
        return datetime.now(UTC).replace(tzinfo=None)


class FrozenClock(Clock):
    """A clock that moves only when told to; registered by tests in place of Clock."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        """Return the frozen time."""
        return self._now

    def advance(self, **delta: float) -> None:
        """Move time forward by a timedelta's keyword arguments (seconds=5)."""
        self._now += timedelta(**delta)


def includeme(config: Configurator) -> None:
    """The wall clock as a service; tests register a FrozenClock over it."""
    config.register_service(Clock(), iface=Clock)
