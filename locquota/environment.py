"""The LOCQUOTA_* environment variables locquota knows, so a misspelt one stops the start instead of doing nothing.

A LOCQUOTA_<NAME> variable overrides the setting locquota.<name> (locquota.settings); the few below are read
by other parts of the deployment. Add a name here when something new reads one.
"""

import difflib
from collections.abc import Iterable, Mapping

PREFIX = "LOCQUOTA_"
# Variables that are not settings, and who reads them.
OTHER_VARIABLES = frozenset(
    {
        "LOCQUOTA_CONFIG",  # the CLI's --config
        "LOCQUOTA_BIND",  # deploy/gunicorn.conf.py
        "LOCQUOTA_WORKERS",  # deploy/gunicorn.conf.py
        "LOCQUOTA_THREADS",  # deploy/gunicorn.conf.py
        "LOCQUOTA_WORKER_TIMEOUT",  # deploy/gunicorn.conf.py
        "LOCQUOTA_BENCH_SETTINGS",  # benchmarks/quota/server.py
    }
)


def variable_of(setting: str) -> str:
    """The variable that overrides locquota.<setting>."""
    return PREFIX + setting.upper()


def unknown_variables(environ: Mapping[str, str], settings: Iterable[str]) -> str | None:
    """One line naming every LOCQUOTA_* variable nothing reads (with the known name it resembles), or None."""
    known = OTHER_VARIABLES | {variable_of(name) for name in settings}
    unknown = sorted(name for name in environ if name.startswith(PREFIX) and name not in known)
    if not unknown:
        return None
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    noun = "variable" if len(unknown) == 1 else "variables"
    return f"unknown environment {noun} {', '.join(described)}; LOCQUOTA_<NAME> sets locquota.<name>"
