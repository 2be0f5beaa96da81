"""The one place that changes a location's status, and derives its image's status from it (SPEC §2).

    data uploaded / location added  -> active
    active          -> deleted          the store confirmed the data is gone (immediate delete)
    active          -> pending_delete   delayed_delete, or an immediate delete that failed
    pending_delete  -> deleted          the scrubber deleted the data
    pending_delete  -> active           an operator restored the image before it was scrubbed

Anything else is refused (409) and changes nothing. Every status change of a location passes through
`LocationLifecycle.move`, so whatever must follow a change (the usage ledger, later) hooks in here once.
"""

from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from locations.models import LIVE_LOCATION_STATUSES, Image, ImageStatus, Location, LocationStatus, url_digest
from locquota.clock import Clock
from locquota.errors import InvalidLocationTransition

ALLOWED_TRANSITIONS = frozenset(
    {
        (None, LocationStatus.ACTIVE),
        (LocationStatus.ACTIVE, LocationStatus.DELETED),
        (LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE),
        (LocationStatus.PENDING_DELETE, LocationStatus.DELETED),
        (LocationStatus.PENDING_DELETE, LocationStatus.ACTIVE),
    }
)


def check_transition(source: LocationStatus | None, target: LocationStatus) -> None:
    """Raise InvalidLocationTransition (409) unless the DAG allows source -> target."""
    if (source, target) not in ALLOWED_TRANSITIONS:
        raise InvalidLocationTransition(
            f"A location cannot go from {source or 'nothing'} to {target}.", source=str(source), target=str(target)
        )


class LocationLifecycle:
    """Status changes of locations and the image status they imply, in the caller's transaction."""

    def __init__(self, db: Session, clock: Clock) -> None:
        self._db, self._clock = db, clock

    def add(self, image: Image, url: str, store: str, metadata: dict[str, object], size_bytes: int | None) -> Location:
        """A new active location: data that is there to serve."""
        check_transition(None, LocationStatus.ACTIVE)
        now = self._clock.now()
        location = Location(
            url=url,
            store=store,
            location_metadata=metadata,
            status=LocationStatus.ACTIVE,
            size_bytes=size_bytes,
            created_at=now,
            updated_at=now,
            attempts=0,
        )
        image.locations.append(location)
        return location

    def move(self, location: Location, target: LocationStatus, *, scrub_after: datetime | None = None) -> None:
        """Change one location's status along the DAG; the scrubber's bookkeeping follows the status."""
        check_transition(location.status, target)
        now = self._clock.now()
        location.status, location.updated_at = target, now
        location.claimed_by = location.claim_expires_at = None
        if target is LocationStatus.PENDING_DELETE:
            location.pending_since, location.scrub_after = now, scrub_after or now
            location.attempts, location.last_error = 0, None
        elif target is LocationStatus.DELETED:
            location.deleted_at = now
        else:
            location.pending_since = location.scrub_after = location.last_error = None

    def retire(self, location: Location, *, delay: timedelta) -> None:
        """Take a location out of service: pending_delete, to be scrubbed once delay has passed."""
        self.move(location, LocationStatus.PENDING_DELETE, scrub_after=self._clock.now() + delay)

    def settle(self, image: Image) -> None:
        """Derive the image's status from its locations after they moved.

        A pending_delete image becomes deleted when its last live location is gone; an image whose
        locations were all retired becomes pending_delete, or deleted when none holds data any more.
        """
        statuses = {location.status for location in image.locations}
        if image.status in (ImageStatus.PENDING_DELETE, ImageStatus.DELETED):
            target = ImageStatus.PENDING_DELETE if LocationStatus.PENDING_DELETE in statuses else ImageStatus.DELETED
        elif LocationStatus.ACTIVE in statuses:
            target = ImageStatus.ACTIVE
        else:
            return
        if target is not image.status:
            image.status, image.updated_at = target, self._clock.now()

    def lock_references(self, url: str) -> None:
        """Lock every location of this data, in id order, so concurrent decisions about it serialize."""
        self._db.execute(
            select(Location.id)
            .where(Location.url_hash == url_digest(url), Location.url == url)
            .order_by(Location.id)
            .with_for_update()
        ).all()

    def is_data_shared(self, location: Location) -> bool:
        """Whether another live location (any image, any tenant) references the same data."""
        return bool(
            self._db.scalar(
                select(
                    exists().where(
                        Location.url_hash == url_digest(location.url),
                        Location.url == location.url,
                        Location.id != location.id,
                        Location.status.in_(LIVE_LOCATION_STATUSES),
                    )
                )
            )
        )
