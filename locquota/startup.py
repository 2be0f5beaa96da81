"""Starting under pserve or gunicorn: a bad configuration stops the process with one line, not a traceback.

Both servers call locquota.app:main. A SettingsError, a store refusing its options, or a database that
fails while the app is built (auto_migrate, the encryption key check) becomes one line on stderr and exit
status 3, gunicorn's WORKER_BOOT_ERROR: its master then stops instead of starting the failing worker again
and again.
"""

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NoReturn

from sqlalchemy.exc import DBAPIError

from locquota.schema_state import first_line

BOOT_FAILED = 3


@contextmanager
def refusing_to_start(global_config: Mapping[str, str]) -> Iterator[None]:
    """Around building the app: turn a configuration error into one line and a non-zero exit."""
    where = global_config.get("__file__") or "locquota"
    try:
        yield
    except ValueError as exc:  # a SettingsError, or a store plug-in refusing its options (as the CLI reports them)
        stop(f"{where}: {exc}")
    except DBAPIError as exc:
        stop(f"{where}: the database failed while the app was built: {first_line(exc)}")


def stop(message: str) -> NoReturn:
    """Print the one line and end the process (SystemExit, so no traceback follows)."""
    sys.stderr.write(f"locquota: {message}\n")
    sys.stderr.flush()
    raise SystemExit(BOOT_FAILED)
