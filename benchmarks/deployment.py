"""What every benchmark part sets up the same way: its own database on the throwaway server, and an .ini."""

from pathlib import Path

import psycopg


def fresh_database(admin_url: str, name: str) -> str:
    """An empty database of this name (dropped first if a previous run left it); its URL."""
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name}")
        connection.execute(f"CREATE DATABASE {name}")
    return f"{admin_url}/{name}"


def write_ini(path: Path, settings: dict[str, str]) -> Path:
    """A PasteDeploy .ini for the `locquota` command (the CLI parts run it as a real process)."""
    lines = ["[app:main]", "use = egg:locquota", *(f"{key} = {value}" for key, value in settings.items())]
    path.write_text("\n".join(lines) + "\n")
    return path
