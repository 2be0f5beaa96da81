"""limits_source = keystone when Keystone cannot be reached (issue 14): a clear 503, never "unlimited".

oslo.limit is pointed at a port on 127.0.0.1 where nothing listens (a real refused connection). The
real Keystone, with registered and project limits honoured exactly, is tests/e2e/test_keystone_limits.py.
"""

from pathlib import Path

import pytest
from click.testing import CliRunner

from locquota.cli import cli
from locquota.settings import Settings, SettingsError
from tests.conftest import closed_port_url, identity, write_ini

IMAGE = {"name": "limited", "disk_format": "raw", "container_format": "bare"}


def oslo_limit_file(path: Path, auth_url: str) -> Path:
    path.write_text(
        "[oslo_limit]\n"
        f"auth_url = {auth_url}\n"
        "auth_type = password\nusername = locquota\npassword = secret\nuser_domain_name = Default\n"
        "system_scope = all\nendpoint_id = 0123456789abcdef\n"
    )
    return path


@pytest.fixture
def keystone_down_settings(settings, tmp_path) -> dict[str, str]:
    config = oslo_limit_file(tmp_path / "oslo_limit.conf", closed_port_url("http://", "v3"))
    return {
        **settings,
        "locquota.limits_source": "keystone",
        "locquota.unified_limits_config_file": str(config),
    }


def test_admission_and_usage_answer_503_while_keystone_is_down(make_app, keystone_down_settings, usage_of):
    app = make_app(keystone_down_settings)
    tenant = identity("tenant-a")

    refused = app.post_json("/v2/images", IMAGE, headers=tenant, status=503)
    usage = app.get("/v2/info/usage", headers=tenant, status=503)

    for answer in (refused, usage):
        assert answer.json["error"]["code"] == "keystone_unavailable"
        assert int(answer.headers["Retry-After"]) > 0
    assert app.get("/v2/images", headers=tenant, status=200).json["images"] == []  # reads need no limits
    assert usage_of("tenant-a")["totals"]["image_count_total"] == 0  # nothing was admitted


def test_limits_cannot_be_set_in_locquota_when_keystone_holds_them(make_app, keystone_down_settings, tmp_path):
    app = make_app(keystone_down_settings)
    admin = identity("operators", "admin")

    refused = app.put_json("/v1/tenants/t/limits", {"limits": {"image_count_total": 5}}, headers=admin, status="*")
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(write_ini(tmp_path / "k.ini", keystone_down_settings)),
            "limits",
            "set",
            "t",
            "image_count_total=5",
        ],
    )

    assert (refused.status_int, refused.json["error"]["code"]) == (409, "limits_in_keystone")
    assert result.exit_code == 1
    assert "Keystone" in result.output


def test_keystone_limits_need_their_oslo_limit_configuration():
    with pytest.raises(SettingsError, match="unified_limits_config_file"):
        Settings.from_ini({"locquota.limits_source": "keystone"})
    with pytest.raises(SettingsError, match="limits_source"):
        Settings.from_ini({"locquota.limits_source": "both"})
