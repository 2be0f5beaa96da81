"""import-glance with location encryption keys: every URL it writes is sealed, as docs/import.md says.

The import writes through its own batched statements, not the ORM flush that refuses plaintext, so what it
stores is checked here, row by row, on the Glance 33 fixture.
"""

from pathlib import Path

from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import select

from locations.models import Location
from locquota.cli import cli
from locquota.crypto import UrlVault
from locquota.db import make_engine
from tests.conftest import write_ini

GLANCE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "glance" / "glance-33.sqlite"
KEY = Fernet.generate_key().decode()


def test_imported_urls_are_stored_sealed_when_keys_are_set(settings, database_url, tmp_path):
    ini = write_ini(tmp_path / "sealed.ini", {**settings, "locquota.location_encryption_keys": KEY})

    result = CliRunner().invoke(cli, ["--config", str(ini), "import-glance", f"sqlite:///{GLANCE}"])

    assert result.exit_code == 0, (result.output, result.exception)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            stored = connection.scalars(select(Location.url)).all()
    finally:
        engine.dispose()
    assert stored
    vault = UrlVault([KEY.encode()])
    assert all(url.startswith("enc:") for url in stored)
    assert all("://" in vault.open(url) for url in stored)
