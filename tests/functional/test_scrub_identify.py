"""The file store's identify, which the scrubber's claim runs for every location, on a real directory.

identify takes a short way for a URL already spelled canonically (one O_PATH open, where /proc says it
landed): whatever the spelling, it must decide exactly what realpath and stat decide, the rule of SPEC
section 6. Each spelling here is checked against that rule computed independently, and a URL that
leaves the root, loops or names a directory is refused as before.
"""

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from locations.stores.base import DataIdentity
from locations.stores.file import FileStore
from locquota.errors import LocationNotAFile, LocationOutsideStore, LocationUndecidable


@pytest.fixture
def tree(tmp_path: Path) -> tuple[FileStore, Path, Path]:
    """A store root with a file, a second name of it, symlinks inside and out, a directory and a loop."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the store's")
    data = root / "sub" / "data"
    data.write_bytes(b"image bytes")
    os.link(data, root / "hard-link")
    (root / "link-to-data").symlink_to(data)
    (root / "relative-link").symlink_to("sub/data")
    (root / "link-out").symlink_to(outside)
    (root / "dir-link").symlink_to(root / "sub")
    (root / "loop").symlink_to(root / "loop")
    (root / ".scratch.partial").write_bytes(b"partial")
    return FileStore("file", {"filesystem_store_datadir": str(root)}), root, data


def expected(store: FileStore, path: str) -> DataIdentity:
    """The rule, computed the long way: the real path's URL, and device and inode where the file exists."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return DataIdentity(store.url_for(Path(real)))
    status = os.stat(real)
    return DataIdentity(store.url_for(Path(real)), f"{status.st_dev}:{status.st_ino}", status.st_nlink)


@pytest.mark.parametrize(
    "spelling",
    [
        "{root}/sub/data",  # canonical: the short way
        "{root}/hard-link",  # a second name: its own key, the same inode
        "{root}/.scratch.partial",  # a dot file is not a dot segment
        "{root}/link-to-data",  # symlinks, absolute and relative: the target's key
        "{root}/relative-link",
        "{root}/dir-link/data",  # a symlinked directory on the way
        "{root}/sub/../sub/data",  # dot segments and doubled slashes
        "{root}/./sub//data",
        "{root}/sub/data/",  # a trailing slash on a file
        "{root}/sub/missing",  # no data (yet): the name it would have
    ],
)
def test_identify_decides_what_realpath_decides(tree, spelling):
    store, root, _data = tree
    path = spelling.format(root=root)
    url = "file://" + quote(path)

    assert store.identify(url) == expected(store, path.rstrip("/"))
    assert store.path_for(url) == Path(os.path.realpath(path.rstrip("/")))


def test_spellings_of_one_file_share_its_key_and_a_second_name_shares_only_its_inode(tree):
    store, root, data = tree
    canonical = store.identify("file://" + quote(str(data)))
    by_link = store.identify(f"file://localhost{quote(str(root))}/link-to-data")
    hard_link = store.identify("file://" + quote(str(root / "hard-link")))

    assert by_link == canonical
    assert hard_link.key != canonical.key
    assert hard_link.inode == canonical.inode
    assert canonical.links == 2


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("link-out", LocationOutsideStore),  # a symlink leading out of the root
        ("sub", LocationNotAFile),  # a directory
        ("dir-link", LocationNotAFile),  # a symlink to a directory
        ("loop", LocationUndecidable),  # a symlink loop
    ],
)
def test_identify_refuses_what_it_refused_before(tree, name, error):
    store, root, _data = tree
    with pytest.raises(error):
        store.identify("file://" + quote(str(root / name)))


def test_a_symlink_swapped_in_for_the_file_is_seen_at_once(tree, tmp_path):
    """The scrubber's check that a URL still reaches its data: no answer is remembered between calls."""
    store, root, data = tree
    url = "file://" + quote(str(data))
    before = store.identify(url)
    other = root / "other"
    other.write_bytes(b"other data")
    data.unlink()
    data.symlink_to(other)

    after = store.identify(url)

    assert after.key == store.url_for(other) != before.key
    data.unlink()
    data.symlink_to(tmp_path / "outside")
    with pytest.raises(LocationOutsideStore):
        store.identify(url)
