"""The URL vault: sealing, opening, tamper detection, keyed hashes and rotation, without a database."""

import hashlib

import pytest
from cryptography.fernet import Fernet

from locquota.crypto import SEALED_PREFIX, UrlNotReadableError, UrlVault, parse_key

URL = "swift://user:s3cret@swift.example.com/v1/AUTH_x/glance/0d4f"
OLD, NEW = Fernet.generate_key(), Fernet.generate_key()


def flip_one_byte(sealed: str, position: int = 40) -> str:
    replacement = "A" if sealed[position] != "A" else "B"
    return sealed[:position] + replacement + sealed[position + 1 :]


def test_seal_then_open_gives_the_url_back():
    vault = UrlVault([NEW])
    sealed = vault.seal(URL)
    assert sealed.startswith(SEALED_PREFIX)
    assert "s3cret" not in sealed
    assert "swift" not in sealed
    assert vault.open(sealed) == URL


def test_sealing_twice_gives_different_tokens():
    vault = UrlVault([NEW])
    assert vault.seal(URL) != vault.seal(URL)


def test_without_keys_urls_pass_through_and_hash_as_sha256():
    vault = UrlVault()
    assert vault.seal(URL) == URL
    assert vault.open(URL) == URL
    assert vault.digest(URL) == hashlib.sha256(URL.encode()).hexdigest()
    assert not vault.is_enabled


def test_plaintext_rows_open_as_they_are_with_keys():
    assert UrlVault([NEW]).open(URL) == URL


@pytest.mark.parametrize("position", [4, 10, 40, 80, -2])
def test_a_flipped_byte_is_detected(position):
    vault = UrlVault([NEW])
    sealed = vault.seal(URL)
    with pytest.raises(UrlNotReadableError) as caught:
        vault.open(flip_one_byte(sealed, position % len(sealed) if position < 0 else position))
    assert URL not in str(caught.value)


def test_a_sealed_url_without_keys_is_not_readable():
    with pytest.raises(UrlNotReadableError):
        UrlVault().open(UrlVault([NEW]).seal(URL))


def test_a_wrong_key_does_not_open():
    with pytest.raises(UrlNotReadableError):
        UrlVault([NEW]).open(UrlVault([OLD]).seal(URL))


def test_the_keyed_digest_is_not_the_plain_sha256_and_depends_on_the_key():
    digest = UrlVault([NEW]).digest(URL)
    assert len(digest) == 64
    assert digest != hashlib.sha256(URL.encode()).hexdigest()
    assert digest != UrlVault([OLD]).digest(URL)
    assert digest == UrlVault([NEW, OLD]).digest(URL)


def test_digests_cover_every_key_of_the_ring_and_the_plain_hash():
    ring = UrlVault([NEW, OLD])
    assert set(ring.digests(URL)) == {
        UrlVault([NEW]).digest(URL),
        UrlVault([OLD]).digest(URL),
        UrlVault().digest(URL),
    }


def test_a_ring_opens_tokens_of_its_older_keys():
    assert UrlVault([NEW, OLD]).open(UrlVault([OLD]).seal(URL)) == URL


def test_resealed_moves_an_old_keys_token_to_the_primary_key():
    ring = UrlVault([NEW, OLD])
    old_token = UrlVault([OLD]).seal(URL)
    assert ring.needs_rotation(old_token)
    sealed, url = ring.resealed(old_token)
    assert UrlVault([NEW]).open(sealed) == url == URL
    assert not ring.needs_rotation(sealed)
    assert ring.resealed(sealed) is None


def test_resealed_seals_plaintext():
    sealed, url = UrlVault([NEW]).resealed(URL)
    assert UrlVault([NEW]).open(sealed) == url == URL


def test_resealed_refuses_a_token_no_key_opens():
    with pytest.raises(UrlNotReadableError):
        UrlVault([NEW]).resealed(UrlVault([OLD]).seal(URL))


@pytest.mark.parametrize("text", ["", "short", "x" * 44, Fernet.generate_key().decode()[:-2]])
def test_parse_key_refuses_what_is_not_a_fernet_key_without_echoing_it(text):
    with pytest.raises(ValueError, match="not a Fernet key") as caught:
        parse_key(text)
    assert not text or text not in str(caught.value)
