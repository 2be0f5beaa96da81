"""The keystone strategy refuses to start without keystonemiddleware's auth_token in front (issue 14).

The service is started as operators start it: gunicorn --paste on an .ini (a real process, which must
exit non-zero with the reason), and the app factory through PasteDeploy's loader. The shipped
production.ini's pipeline is checked to pass, and its CLI loads the app behind the pipeline.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from paste.deploy import loadapp

from locquota.pipeline import app_section_of, require_auth_token
from locquota.settings import SettingsError

REPOSITORY = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AUTHTOKEN = """
[filter:authtoken]
use = egg:keystonemiddleware#auth_token
delay_auth_decision = true
www_authenticate_uri = http://127.0.0.1:1
auth_url = http://127.0.0.1:1
"""


def app_section(settings: dict[str, str], name: str = "locquota") -> str:
    lines = [f"[app:{name}]", "use = egg:locquota", *(f"{key} = {value}" for key, value in settings.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture
def keystone_settings(settings: dict[str, str]) -> dict[str, str]:
    return {**settings, "locquota.auth_strategy": "keystone"}


def test_without_the_filter_the_app_refuses_to_load(keystone_settings, tmp_path, capsys):
    ini = tmp_path / "bare.ini"
    ini.write_text(app_section(keystone_settings, "main"))

    with pytest.raises(SystemExit) as stopped:
        loadapp(f"config:{ini}")

    assert stopped.value.code == 3  # gunicorn's "worker failed to boot": its master stops too
    assert "auth_token" in capsys.readouterr().err


@pytest.mark.parametrize(
    "pipeline",
    ["locquota", "authtoken", "locquota authtoken", "nosuchfilter locquota"],
    ids=["app-only", "filter-only", "filter-behind-the-app", "another-filter"],
)
def test_a_pipeline_without_auth_token_in_front_is_refused(keystone_settings, tmp_path, pipeline):
    ini = tmp_path / "wrong.ini"
    ini.write_text(f"[pipeline:main]\npipeline = {pipeline}\n{AUTHTOKEN}\n{app_section(keystone_settings)}")

    with pytest.raises(SettingsError, match="auth_token"):
        require_auth_token({"__file__": str(ini)})


@pytest.mark.parametrize(
    ("use", "module"),
    [("egg:locquota#auth_token", "locquota.keystone"), ("egg:keystonemiddleware#auth_token", "keystonemiddleware")],
)
def test_the_app_loads_behind_auth_token_and_the_cli_finds_it(keystone_settings, tmp_path, use, module):
    ini = tmp_path / "good.ini"
    filter_section = AUTHTOKEN.replace("egg:keystonemiddleware#auth_token", use)
    ini.write_text(
        f"[pipeline:main]\npipeline = authtoken locquota\n{filter_section}\n{app_section(keystone_settings)}"
    )

    app = loadapp(f"config:{ini}")

    assert type(app).__module__.startswith(module)
    assert app_section_of(str(ini)) == f"{ini}#locquota"
    assert app_section_of(f"{ini}#other") == f"{ini}#other"


def test_gunicorn_exits_non_zero_with_the_reason(keystone_settings, tmp_path):
    ini = tmp_path / "bare.ini"
    ini.write_text(app_section(keystone_settings, "main"))

    finished = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "--paste", str(ini), "--bind", "127.0.0.1:0", "--workers", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert finished.returncode != 0
    assert "auth_token" in finished.stderr


def test_the_shipped_production_pipeline_passes_the_check():
    require_auth_token({"__file__": str(REPOSITORY / "production.ini")})
    assert app_section_of(str(REPOSITORY / "production.ini")).endswith("#locquota")
    assert app_section_of(str(REPOSITORY / "development.ini")) == str(REPOSITORY / "development.ini")
