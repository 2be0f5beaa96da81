"""Hostile location URLs at the store level: the file store refuses anything that is not strictly inside its root.

Nothing outside the root may ever be read or deleted, whatever a URL (or the database) says: `..` in any encoding,
symlinks that leave the root, other hosts, queries, fragments, NUL bytes and absurd lengths are all refused.
"""

import os
from pathlib import Path

import pytest

from locations.stores.base import StoreError, StoreRegistry
from locations.stores.file import MAX_URL_CHARS, FileStore
from locquota.errors import LocationNotAFile, LocationOutsideStore, LocationUndecidable, UnsupportedScheme


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, holding a file an attacker would like to reach."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret").write_bytes(b"secret")
    return directory


@pytest.fixture
def store(tmp_path: Path, outside: Path) -> FileStore:
    """A file store whose root holds one image, a symlink to a file outside, and one to a directory outside."""
    file_store = FileStore("file", {"datadir": str(tmp_path / "root")})
    (file_store.root / "image").write_bytes(b"data")
    (file_store.root / "sub").mkdir()
    (file_store.root / "link-to-file").symlink_to(outside / "secret")
    (file_store.root / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (file_store.root / "link-to-root").symlink_to(file_store.root, target_is_directory=True)
    (file_store.root / "link-up").symlink_to("..", target_is_directory=True)
    (file_store.root / "link-to-image").symlink_to(file_store.root / "image")
    return file_store


# Each URL is a template: {root} is the store root, {outside} the directory next to it.
REFUSED = {
    "etc-passwd": "file:///etc/passwd",
    "outside-sibling": "file://{outside}/secret",
    "root-name-as-prefix": "file://{root}2/image",
    "dotdot": "file://{root}/../outside/secret",
    "dotdot-at-end": "file://{root}/sub/..",
    "dotdot-after-subdir": "file://{root}/sub/../../outside/secret",
    "dotdot-only": "file://{root}/..",
    "percent-dotdot": "file://{root}/%2e%2e/outside/secret",
    "percent-dotdot-upper": "file://{root}/%2E%2E/outside/secret",
    "percent-dotdot-mixed": "file://{root}/.%2e/outside/secret",
    "percent-slash-dotdot": "file://{root}/..%2foutside%2fsecret",
    "percent-encoded-slash-dotdot": "file://{root}/sub%2f..%2f..%2foutside/secret",
    "double-encoded-dotdot-root": "file://{root}/%2e%2e",
    "symlink-to-file-outside": "file://{root}/link-to-file",
    "symlink-to-dir-outside": "file://{root}/link-to-dir/secret",
    "symlink-up": "file://{root}/link-up/outside/secret",
    "symlink-to-root": "file://{root}/link-to-root",
    "root-itself": "file://{root}",
    "root-itself-slash": "file://{root}/",
    "root-itself-dot": "file://{root}/.",
    "root-itself-encoded-slash": "file://{root}%2f",
    "nul-byte": "file://{root}/image\x00.txt",
    "nul-percent": "file://{root}/image%00.txt",
    "nul-percent-prefix": "file://{root}/%00/../image",
    "other-host": "file://evil.example.com{root}/image",
    "ip-host": "file://127.0.0.1{root}/image",
    "host-with-userinfo": "file://user:pass@localhost{root}/image",
    "host-with-port": "file://localhost:80{root}/image",
    "unc-like-host": "file:////evil.example.com/share{root}/image",
    "query": "file://{root}/image?x=1",
    "query-traversal": "file://{root}/image?../../etc/passwd",
    "fragment": "file://{root}/image#frag",
    "fragment-empty-query": "file://{root}/image?#x",
    "scheme-http": "http://localhost{root}/image",
    "scheme-swift": "swift://container/image",
    "scheme-s3": "s3://bucket{root}/image",
    "scheme-missing": "{root}/image",
    "scheme-relative": "//{root}/image",
    "relative-path": "file:image",
    "relative-path-dotdot": "file:../outside/secret",
    "empty": "",
    "over-long": "file://{root}/" + "a" * (MAX_URL_CHARS + 1),
    "over-long-dotdots": "file://{root}/" + "../" * 2000,
}


def fill(template: str, store: FileStore, outside: Path) -> str:
    root = str(store.root)
    return template.replace("{root}", root).replace("{bare}", root.lstrip("/")).replace("{outside}", str(outside))


@pytest.mark.parametrize("template", REFUSED.values(), ids=REFUSED.keys())
def test_file_store_refuses_url_outside_its_root(store, outside, template):
    url = fill(template, store, outside)
    with pytest.raises(LocationOutsideStore) as refused:
        store.validate_url(url)
    assert refused.value.code == "location_outside_store"
    assert refused.value.status == 400
    assert (outside / "secret").read_bytes() == b"secret"


@pytest.mark.parametrize("template", ["file://{root}/link-to-file", "file://{root}/../outside/secret"])
def test_file_store_never_reads_or_deletes_outside_its_root(store, outside, template):
    """get and delete go through the same check: a refused URL is never opened nor unlinked."""
    url = fill(template, store, outside)
    with pytest.raises(LocationOutsideStore):
        store.get(url, 4096)
    with pytest.raises(LocationOutsideStore):
        store.delete(url)
    assert (outside / "secret").read_bytes() == b"secret"


ACCEPTED = {
    "plain": ("file://{root}/image", "image"),
    "localhost": ("file://localhost{root}/image", "image"),
    "no-authority": ("file:{root}/image", "image"),
    "scheme-uppercase": ("FILE://{root}/image", "image"),
    "not-yet-written": ("file://{root}/does-not-exist-yet", "does-not-exist-yet"),
    "nested": ("file://{root}/sub/image", "sub/image"),
    "percent-encoded-name": ("file://{root}/a%20b", "a b"),
    "dot-segment": ("file://{root}/./image", "image"),
    "double-slash": ("file://{root}//image", "image"),
    "dots-in-name": ("file://{root}/...", "..."),
    "dotdot-inside-name": ("file://{root}/a..b", "a..b"),
    "symlink-to-root-then-file": ("file://{root}/link-to-root/image", "image"),
    "four-slashes": ("file:////{bare}/image", "image"),
    "localhost-uppercase": ("file://LOCALHOST{root}/image", "image"),
    "dotdot-back-into-the-root": ("file://{root}/sub/../image", "image"),
    "percent-dotdot-back-into-the-root": ("file://{root}/sub/%2E%2e/image", "image"),
    "dotdot-through-a-missing-directory": ("file://{root}/missing/../image", "image"),
    "trailing-slash": ("file://{root}/image/", "image"),
    "percent-encoded-slash": ("file://{root}%2Fimage", "image"),
    "symlink-to-a-file-inside": ("file://{root}/link-to-image", "image"),
}


@pytest.mark.parametrize(("template", "relative"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_file_store_accepts_url_inside_its_root(store, outside, template, relative):
    url = fill(template, store, outside)
    store.validate_url(url)
    assert store.path_for(url) == store.root / relative


def test_every_spelling_of_one_file_has_one_identity(store, outside):
    """The data key is the canonical URL, whatever the spelling; device and inode are the file's."""
    status = (store.root / "image").stat()
    expected = (store.url_for(store.root / "image"), f"{status.st_dev}:{status.st_ino}", 1)
    identities = {
        name: store.identify(fill(template, store, outside))
        for name, (template, relative) in ACCEPTED.items()
        if relative == "image"
    }
    assert len(identities) >= 12
    assert {name: (i.key, i.inode, i.links) for name, i in identities.items()} == dict.fromkeys(identities, expected)


def test_a_hard_link_has_its_own_key_and_the_same_inode(store):
    os.link(store.root / "image", store.root / "hard")
    image, hard = (
        store.identify(store.url_for(store.root / "image")),
        store.identify(store.url_for(store.root / "hard")),
    )
    assert image.key != hard.key
    assert image.inode == hard.inode
    assert image.links == hard.links == 2


def test_data_not_yet_written_has_a_key_and_no_inode(store):
    identity = store.identify(f"file://localhost{store.root}/./later")
    assert (identity.key, identity.inode) == (store.url_for(store.root / "later"), None)


def loop(root: Path) -> None:
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    (root / "self").symlink_to(root / "self")


UNDECIDABLE = {
    "symlink-loop": "file://{root}/loop-a",
    "symlink-loop-in-the-middle": "file://{root}/loop-b/image",
    "self-loop": "file://{root}/self",
    "name-too-long": "file://{root}/" + "n" * 300,
    "name-too-long-encoded": "file://{root}/" + "%6E" * 300,
}


@pytest.mark.parametrize("template", UNDECIDABLE.values(), ids=UNDECIDABLE.keys())
def test_a_url_whose_data_cannot_be_decided_is_refused(store, outside, template):
    loop(store.root)
    with pytest.raises(LocationUndecidable) as refused:
        store.identify(fill(template, store, outside))
    assert (refused.value.status, refused.value.code) == (400, "location_undecidable")


NOT_A_FILE = {
    "directory": "file://{root}/sub",
    "directory-trailing-slash": "file://{root}/sub/",
    "directory-dot": "file://{root}/sub/.",
    "fifo": "file://{root}/fifo",
    "symlink-to-a-directory-inside": "file://{root}/link-to-sub",
}


@pytest.mark.parametrize("template", NOT_A_FILE.values(), ids=NOT_A_FILE.keys())
def test_a_url_naming_a_directory_or_a_special_file_is_refused(store, outside, template):
    os.mkfifo(store.root / "fifo")
    (store.root / "link-to-sub").symlink_to(store.root / "sub", target_is_directory=True)
    url = fill(template, store, outside)
    for act in (store.identify, store.validate_url, store.delete, lambda url: store.get(url, 4096)):
        with pytest.raises(LocationNotAFile) as refused:
            act(url)
        assert (refused.value.status, refused.value.code) == (400, "location_not_a_file")
    assert (store.root / "sub").is_dir()


def swapping_after_resolve(store: FileStore, monkeypatch: pytest.MonkeyPatch, swap) -> None:
    """Make the store's check pass, then change the filesystem under it before it acts (a race, made certain)."""
    resolve = store._resolve

    def resolve_then_swap(url):
        resolved = resolve(url)
        swap()
        return resolved

    monkeypatch.setattr(store, "_resolve", resolve_then_swap)


def test_delete_of_a_file_swapped_for_a_symlink_removes_only_the_link(store, outside, monkeypatch):
    (store.root / "victim").write_bytes(b"v")

    def swap():
        (store.root / "victim").unlink()
        (store.root / "victim").symlink_to(outside / "secret")

    swapping_after_resolve(store, monkeypatch, swap)
    store.delete(store.url_for(store.root / "victim"))

    assert not (store.root / "victim").is_symlink()
    assert (outside / "secret").read_bytes() == b"secret"


def test_get_of_a_file_swapped_for_a_symlink_out_is_refused(store, outside, monkeypatch):
    def swap():
        (store.root / "image").unlink()
        (store.root / "image").symlink_to(outside / "secret")

    swapping_after_resolve(store, monkeypatch, swap)
    with pytest.raises(StoreError):
        store.get(store.url_for(store.root / "image"), 4096)


@pytest.mark.parametrize(
    ("act", "refusal"),
    [
        (lambda store, url: store.get(url, 4096), LocationOutsideStore),  # lands outside: /proc tells
        (lambda store, url: store.delete(url), StoreError),  # the parent is opened without following it
    ],
    ids=["get", "delete"],
)
def test_a_directory_swapped_for_a_symlink_out_after_the_check_is_refused(store, outside, monkeypatch, act, refusal):
    (store.root / "sub" / "image").write_bytes(b"data")
    (outside / "image").write_bytes(b"outside")

    def swap():
        (store.root / "sub").rename(store.root / "sub-moved")
        (store.root / "sub").symlink_to(outside, target_is_directory=True)

    swapping_after_resolve(store, monkeypatch, swap)
    with pytest.raises(refusal):
        act(store, store.url_for(store.root / "sub" / "image"))

    assert (outside / "image").read_bytes() == b"outside"


def test_file_store_accepts_the_urls_it_writes(store):
    url = store.url_for(store.root / "name with spaces & %signs")
    store.validate_url(url)
    assert store.path_for(url) == store.root / "name with spaces & %signs"


@pytest.fixture
def registry(store: FileStore) -> StoreRegistry:
    return StoreRegistry({"file": store}, "file")


@pytest.mark.parametrize(
    "url",
    [
        "swift://container/object",
        "http://example.com/image",
        "https://example.com/image",
        "rbd://fsid/pool/image/snap",
        "s3://bucket/key",
        "ftp://localhost/etc/passwd",
        "",
        "no-scheme",
        "/etc/passwd",
        "//host/path",
        ":/nothing-before-the-colon",
        "fil://etc/passwd",
        "files:///etc/passwd",
        " file:///etc/passwd",
        "\x00file:///etc/passwd",
    ],
)
def test_registry_refuses_a_scheme_that_is_not_enabled(registry, url):
    with pytest.raises(UnsupportedScheme) as refused:
        registry.for_url(url)
    assert refused.value.code == "unsupported_scheme"
    assert refused.value.status == 400
    assert len(str(refused.value.details.get("scheme", ""))) <= 32


def test_registry_refuses_an_over_long_scheme_without_echoing_it(registry):
    with pytest.raises(UnsupportedScheme) as refused:
        registry.for_url("x" * 10_000 + "://host/path")
    assert len(str(refused.value.details.get("scheme", ""))) <= 32


@pytest.mark.parametrize(
    "template", ["file:///etc/passwd", "file://{root}/link-to-file", "file://{root}/%2e%2e/outside/secret"]
)
def test_registry_passes_on_the_stores_refusal(registry, store, outside, template):
    with pytest.raises(LocationOutsideStore):
        registry.for_url(fill(template, store, outside))


@pytest.mark.parametrize("template", ["file://{root}/image", "FILE://localhost{root}/sub/x"])
def test_registry_finds_the_store_of_a_url_inside_it(registry, store, outside, template):
    assert registry.for_url(fill(template, store, outside)) is store
