"""A store's `locquota.store.<name>.*` options, as the .ini gives them (strings), checked once at start.

Options are named as glance_store names them (`rbd_store_pool`, `s3_store_bucket`, ...), so a Glance
backend section moves over by renaming its keys' prefix. A typo is an error at start, never ignored.
"""

from collections.abc import Iterable, Mapping

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
COMMON_OPTIONS = frozenset({"store_description"})


class StoreOptions:
    """The options of one store; every lookup says which key was wrong and why."""

    def __init__(self, store: str, options: Mapping[str, str], known: Iterable[str]) -> None:
        self.store = store
        self._options = {key: value.strip() for key, value in options.items()}
        allowed = COMMON_OPTIONS | set(known)
        unknown = sorted(set(self._options) - allowed)
        if unknown:
            raise ValueError(f"{self.key(unknown[0])}: unknown option")

    def key(self, option: str) -> str:
        """The full .ini key of an option, for messages."""
        return f"locquota.store.{self.store}.{option}"

    @property
    def description(self) -> str:
        """Glance's store_description, shown by GET /v2/info/stores."""
        return self._options.get("store_description", "")

    def text(self, option: str, default: str | None = None) -> str:
        """A string option; required when there is no default."""
        value = self._options.get(option) or default
        if value is None:
            raise ValueError(f"{self.key(option)}: required")
        return value

    def integer(self, option: str, default: int, minimum: int = 0) -> int:
        """A whole number of at least minimum."""
        raw = self._options.get(option)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{self.key(option)} = {raw!r}: not a whole number") from None
        if value < minimum:
            raise ValueError(f"{self.key(option)} = {value}: must be at least {minimum}")
        return value

    def number(self, option: str, default: float, minimum: float = 0.0) -> float:
        """A number (seconds, say) of at least minimum."""
        raw = self._options.get(option)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{self.key(option)} = {raw!r}: not a number") from None
        if not value >= minimum:  # also refuses nan
            raise ValueError(f"{self.key(option)} = {raw}: must be at least {minimum}")
        return value

    def boolean(self, option: str, default: bool) -> bool:
        """true/false, yes/no, on/off, 1/0."""
        raw = self._options.get(option, "").lower()
        if not raw:
            return default
        if raw in TRUE_WORDS:
            return True
        if raw in FALSE_WORDS:
            return False
        raise ValueError(f"{self.key(option)} = {raw!r}: expected true or false")

    def words(self, option: str) -> tuple[str, ...]:
        """A comma-separated list, blanks dropped."""
        return tuple(word.strip() for word in self._options.get(option, "").split(",") if word.strip())
