"""Settings.from_ini: typed defaults, and every bad value fails the boot with its key's name."""

import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from locquota.app import configure
from locquota.settings import AuthStrategy, Settings, SettingsError


def test_defaults_are_the_embedded_deployment():
    settings = Settings.from_ini({})

    assert settings == Settings()
    assert settings.database_url == "sqlite:///locquota.sqlite"
    assert settings.auto_migrate is False
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.redis_timeout_seconds == 0.25
    assert settings.auth_strategy is AuthStrategy.TOKENS
    assert settings.allow_insecure_noauth is False
    assert settings.enabled_stores == ("file",)
    assert settings.default_store == "file"
    assert settings.store_options == {}
    assert settings.show_multiple_locations is False
    assert settings.show_image_direct_url is False
    assert settings.max_request_body_bytes == 65536
    assert settings.image_size_cap_bytes == 1024**4
    assert settings.upload_chunk_bytes == 65536
    assert settings.limit_param_default == 25
    assert settings.api_limit_max == 1000


def test_values_are_parsed_to_their_types():
    settings = Settings.from_ini(
        {
            "locquota.database_url": "  postgresql://db/locquota  ",
            "locquota.auto_migrate": " Yes ",
            "locquota.redis_url": "",
            "locquota.redis_timeout_seconds": "0.5",
            "locquota.auth_strategy": " keystone ",
            "locquota.enabled_stores": "file\nother",
            "locquota.default_store": "other",
            "locquota.show_multiple_locations": "on",
            "locquota.show_image_direct_url": "1",
            "locquota.max_request_body_bytes": "1024",
            "locquota.image_size_cap_bytes": "2048",
            "locquota.upload_chunk_bytes": "512",
            "locquota.limit_param_default": "10",
            "locquota.api_limit_max": "10",
        }
    )

    assert settings.database_url == "postgresql://db/locquota"
    assert settings.auto_migrate is True
    assert settings.redis_url == ""
    assert settings.redis_timeout_seconds == 0.5
    assert settings.auth_strategy is AuthStrategy.KEYSTONE
    assert settings.enabled_stores == ("file", "other")
    assert settings.default_store == "other"
    assert settings.show_multiple_locations is True
    assert settings.show_image_direct_url is True
    assert settings.max_request_body_bytes == 1024
    assert settings.image_size_cap_bytes == 2048
    assert settings.upload_chunk_bytes == 512
    assert settings.limit_param_default == 10
    assert settings.api_limit_max == 10


def test_noauth_runs_when_explicitly_allowed():
    settings = Settings.from_ini({"locquota.auth_strategy": "noauth", "locquota.allow_insecure_noauth": "true"})

    assert settings.auth_strategy is AuthStrategy.NOAUTH
    assert settings.allow_insecure_noauth is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("locquota.auto_migrate", "maybe"),
        ("locquota.allow_insecure_noauth", "si"),
        ("locquota.show_multiple_locations", ""),
        ("locquota.show_image_direct_url", "truthy"),
        ("locquota.max_request_body_bytes", "lots"),
        ("locquota.image_size_cap_bytes", "1.5"),
        ("locquota.upload_chunk_bytes", "64k"),
        ("locquota.limit_param_default", ""),
        ("locquota.api_limit_max", "ten"),
        ("locquota.redis_timeout_seconds", "fast"),
        ("locquota.auth_strategy", "ldap"),
        ("locquota.auth_strategy", ""),
    ],
)
def test_unparsable_value_names_its_key(key, value):
    with pytest.raises(SettingsError, match=re.escape(key)):
        Settings.from_ini({key: value})


@pytest.mark.parametrize(
    "key",
    [
        "locquota.max_request_body_bytes",
        "locquota.image_size_cap_bytes",
        "locquota.upload_chunk_bytes",
        "locquota.limit_param_default",
        "locquota.api_limit_max",
        "locquota.redis_timeout_seconds",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_zero_or_negative_where_positive_required_names_its_key(key, value):
    with pytest.raises(SettingsError, match=re.escape(key)):
        Settings.from_ini({key: value})


def test_redis_timeout_that_is_not_a_number_names_its_key():
    # float("nan") parses, but a NaN socket timeout makes redis-py raise ValueError (not RedisError) on use.
    with pytest.raises(SettingsError, match=re.escape("locquota.redis_timeout_seconds")):
        Settings.from_ini({"locquota.redis_timeout_seconds": "nan"})


@pytest.mark.parametrize("key", ["locquota.delayed_delet", "locquota.Database_URL", "locquota.store"])
def test_unknown_locquota_key_names_it(key):
    with pytest.raises(SettingsError, match=re.escape(f"{key}: unknown setting")):
        Settings.from_ini({key: "1"})


def test_default_store_not_enabled_names_it():
    with pytest.raises(SettingsError, match=re.escape("locquota.default_store")):
        Settings.from_ini({"locquota.enabled_stores": "file", "locquota.default_store": "swift"})


@pytest.mark.parametrize("allow", [None, "false"])
def test_noauth_without_explicit_permission_is_refused(allow):
    raw = {"locquota.auth_strategy": "noauth"}
    if allow is not None:
        raw["locquota.allow_insecure_noauth"] = allow

    with pytest.raises(SettingsError, match=re.escape("locquota.auth_strategy")) as refused:
        Settings.from_ini(raw)
    assert "locquota.allow_insecure_noauth" in str(refused.value)


def test_limit_default_above_limit_max_names_it():
    with pytest.raises(SettingsError, match=re.escape("locquota.limit_param_default")):
        Settings.from_ini({"locquota.limit_param_default": "1001"})


def test_blank_database_url_names_it():
    with pytest.raises(SettingsError, match=re.escape("locquota.database_url")):
        Settings.from_ini({"locquota.database_url": "   "})


@pytest.mark.parametrize("key", ["locquota.store.file", "locquota.store..datadir", "locquota.store.file."])
def test_malformed_store_key_names_it(key):
    with pytest.raises(SettingsError, match=re.escape(f"{key}: expected locquota.store.<store>.<option>")):
        Settings.from_ini({key: "/srv/images"})


def test_keys_outside_locquota_are_ignored():
    settings = Settings.from_ini(
        {
            "pyramid.reload_templates": "maybe",
            "sqlalchemy.url": "",
            "locquotax.bogus": "1",
            "tm.manager_hook": "pyramid_tm.explicit_manager",
        }
    )

    assert settings == Settings()


def test_store_options_are_grouped_by_store():
    settings = Settings.from_ini(
        {
            "locquota.enabled_stores": "file archive",
            "locquota.store.file.datadir": "/srv/images",
            "locquota.store.archive.datadir": "/srv/archive",
            "locquota.store.archive.chunk.size": "4096",
        }
    )

    assert settings.store_options == {
        "file": {"datadir": "/srv/images"},
        "archive": {"datadir": "/srv/archive", "chunk.size": "4096"},
    }


@pytest.fixture
def app_settings(tmp_path: Path) -> dict[str, str]:
    """Enough for configure() to get as far as the stores, without any server."""
    return {
        "locquota.database_url": f"sqlite:///{tmp_path / 'locquota.sqlite'}",
        "locquota.redis_url": "",
        "locquota.enabled_stores": "file",
        "locquota.default_store": "file",
        "locquota.store.file.datadir": str(tmp_path / "images"),
    }


def test_configure_refuses_unknown_store_option(app_settings):
    with pytest.raises(ValueError, match=re.escape("locquota.store.file.bogus")):
        configure({**app_settings, "locquota.store.file.bogus": "1"})


def test_configure_refuses_options_of_a_store_not_enabled(app_settings):
    with pytest.raises(ValueError, match=r"locquota\.store\.archive\b"):
        configure({**app_settings, "locquota.store.archive.datadir": "/srv/archive"})


def test_configure_refuses_enabled_store_without_plugin(app_settings):
    with pytest.raises(ValueError, match=re.escape("locquota.enabled_stores")):
        configure({**app_settings, "locquota.enabled_stores": "file nosuchstore"})


def test_configure_refuses_file_store_without_datadir(app_settings):
    del app_settings["locquota.store.file.datadir"]

    with pytest.raises(ValueError, match=re.escape("locquota.store.file.filesystem_store_datadir: required")):
        configure(app_settings)


def test_configure_refuses_bad_setting_with_its_key(app_settings):
    with pytest.raises(SettingsError, match=re.escape("locquota.upload_chunk_bytes")):
        configure({**app_settings, "locquota.upload_chunk_bytes": "0"})


def test_an_environment_variable_overrides_the_ini():
    settings = Settings.from_ini(
        {"locquota.database_url": "sqlite:///ini.sqlite", "locquota.scrub_time": "5"},
        {"LOCQUOTA_DATABASE_URL": "postgresql://db/env", "LOCQUOTA_SCRUB_TIME": "7", "LOCQUOTA_CONFIG": "x.ini"},
    )
    assert settings.database_url == "postgresql://db/env"
    assert settings.scrub_time_seconds == 7


def test_a_bad_environment_value_names_the_key():
    with pytest.raises(SettingsError, match=r"locquota\.delayed_delete"):
        Settings.from_ini({}, {"LOCQUOTA_DELAYED_DELETE": "maybe"})


def test_production_ini_boots_from_the_environment_and_refuses_without_it(monkeypatch, tmp_path):
    from pyramid.paster import get_appsettings  # noqa: PLC0415

    raw = get_appsettings(str(Path(__file__).parents[2] / "production.ini"), name="locquota")
    with pytest.raises(SettingsError, match=r"locquota\.database_url: empty"):
        Settings.from_ini(raw, {})
    settings = Settings.from_ini(raw, {"LOCQUOTA_DATABASE_URL": f"sqlite:///{tmp_path}/p.sqlite"})
    assert settings.delayed_delete is True
    assert settings.default_limits["image_count_total"] == 1000


# --- location encryption keys (docs/encryption.md) ---------------------------------------------------------


def test_encryption_keys_come_from_the_environment_primary_first():
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = Settings.from_ini({}, {"LOCQUOTA_LOCATION_ENCRYPTION_KEYS": f"{new}, {old}"})
    assert settings.location_encryption_keys == (new, old)
    assert new not in repr(settings)


def test_a_bad_encryption_key_names_the_setting_but_never_the_value():
    secret = "not-a-key-but-maybe-a-password"  # noqa: S105 - a value the error must not echo
    with pytest.raises(SettingsError, match=re.escape("locquota.location_encryption_keys")) as caught:
        Settings.from_ini({"locquota.location_encryption_keys": secret})
    assert secret not in str(caught.value)
    assert caught.value.__cause__ is None


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "keys"
    path.write_text(Fernet.generate_key().decode() + "\n")
    path.chmod(0o644)
    with pytest.raises(SettingsError, match="group or others"):
        Settings.from_ini({"locquota.location_encryption_key_file": str(path)})


def test_a_key_file_only_the_service_reads_gives_the_ring(tmp_path):
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    path = tmp_path / "keys"
    path.write_text(f"# primary first\n{new}\n\n{old}  # the previous one, until rotate-key is done\n")
    path.chmod(0o600)
    settings = Settings.from_ini({"locquota.location_encryption_key_file": str(path)})
    assert settings.location_encryption_keys == (new, old)


def test_keys_and_a_key_file_together_are_refused(tmp_path):
    path = tmp_path / "keys"
    path.write_text(Fernet.generate_key().decode())
    path.chmod(0o600)
    raw = {
        "locquota.location_encryption_key_file": str(path),
        "locquota.location_encryption_keys": Fernet.generate_key().decode(),
    }
    with pytest.raises(SettingsError, match="not both"):
        Settings.from_ini(raw)
