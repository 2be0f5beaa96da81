"""The one contract every store plug-in keeps (STYLE section 14), as a test class each backend subclasses.

A backend's test module defines a `store` fixture returning a fresh, empty store of that backend on its
real server (a file directory, Ceph RBD, RGW S3, Swift) and subclasses StoreContract; every test below
then runs against it. What is checked is what the rest of locquota relies on: data written under the
names planned before the first byte, read back byte for byte in bounded chunks, sized, never
overwritten, deleted idempotently, named by a canonical key whatever the spelling, and listed.
"""

import hashlib
import uuid
from collections.abc import Iterator

import pytest

from locations.stores.base import Store, StoreDuplicateError, StoreError, StoreNotFoundError

CHUNK = 64 * 1024


def chunks(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def payload(size: int) -> bytes:
    """Deterministic, not repetitive: a truncated or shifted copy would not compare equal."""
    blocks = (hashlib.sha256(counter.to_bytes(8, "big")).digest() for counter in range(size // 32 + 1))
    return b"".join(blocks)[:size]


class StoreContract:
    """Subclass with a `store` fixture; no test here may depend on another's data."""

    def put(self, store: Store, data: bytes) -> tuple[uuid.UUID, str]:
        image_id = uuid.uuid4()
        return image_id, store.add(store.plan_upload(image_id), chunks(data))

    def test_data_comes_back_byte_for_byte_in_bounded_chunks(self, store):
        data = payload(3 * CHUNK + 123)
        _, url = self.put(store, data)

        read = list(store.get(url, CHUNK))

        assert b"".join(read) == data
        assert max(map(len, read)) <= CHUNK
        assert store.get_size(url) == len(data)

    def test_the_url_is_the_one_planned_before_the_first_byte(self, store):
        image_id = uuid.uuid4()
        target = store.plan_upload(image_id)

        url = store.add(target, chunks(b"planned"))

        assert url == target.url
        assert str(image_id) in url
        assert target.scratch_url != target.url

    def test_an_empty_image_is_data_too(self, store):
        _, url = self.put(store, b"")

        assert store.get_size(url) == 0
        assert b"".join(store.get(url, CHUNK)) == b""

    def test_data_is_never_overwritten(self, store):
        image_id, url = self.put(store, b"first")

        with pytest.raises(StoreDuplicateError):
            store.add(store.plan_upload(image_id), chunks(b"second"))

        assert b"".join(store.get(url, CHUNK)) == b"first"

    def test_a_failed_write_leaves_nothing_behind(self, store):
        image_id = uuid.uuid4()
        target = store.plan_upload(image_id)

        def failing() -> Iterator[bytes]:
            yield b"half of it"
            raise ConnectionResetError("the client went away")

        with pytest.raises(ConnectionResetError):
            store.add(target, failing())

        with pytest.raises(StoreError):
            store.get_size(target.url)
        assert target.url not in {item.url for item in store.inventory()}
        assert target.scratch_url not in {item.url for item in store.inventory()}

    def test_a_write_refused_just_before_it_lands_leaves_nothing(self, store):
        target = store.plan_upload(uuid.uuid4())

        def refuse() -> None:
            raise RuntimeError("the lease was taken over")

        with pytest.raises(RuntimeError):
            store.add(target, chunks(b"not to be kept"), ready=refuse)

        assert {item.url for item in store.inventory()} & {target.url, target.scratch_url} == set()

    def test_deleting_twice_is_harmless(self, store):
        _, url = self.put(store, b"to delete")

        store.delete(url)
        store.delete(url)

        with pytest.raises(StoreNotFoundError):  # "not there", never a store error that proves nothing
            store.get_size(url)

    def test_deleting_data_that_never_was_is_harmless(self, store):
        store.delete(store.plan_upload(uuid.uuid4()).url)

    def test_the_data_key_is_stable_and_names_this_data(self, store):
        _, first = self.put(store, b"one")
        _, second = self.put(store, b"two")

        assert store.identify(first).key == store.identify(first).key
        assert store.identify(first).key != store.identify(second).key
        assert store.identify(first).key in {item.url for item in store.inventory()}

    def test_the_inventory_lists_each_piece_of_data_once_with_its_size(self, store):
        written = {self.put(store, payload(size))[1]: size for size in (10, 2000, 70_000)}

        listed = {item.url: item for item in store.inventory()}

        for url, size in written.items():
            key = store.identify(url).key
            assert listed[key].size_bytes == size
            assert not listed[key].is_scratch

    def test_it_describes_itself(self, store):
        assert isinstance(store.name, str)
        assert isinstance(store.scheme, str)
        assert store.name
        assert store.scheme
        assert isinstance(store.description, str)
        assert store.is_read_only is False
