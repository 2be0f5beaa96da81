"""The store contract (tests/store_contract.py) on the file store, in a real directory."""

import pytest

from locations.stores.file import FileStore
from tests.store_contract import StoreContract


class TestFileStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path) -> FileStore:
        return FileStore("file", {"filesystem_store_datadir": str(tmp_path / "images")})
