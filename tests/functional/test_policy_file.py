"""An operator's policy file (issue 14): overrides Glance's defaults, and a broken one refuses to start.

The oslo.policy generators run for real on the `locquota` namespace (the entry points in pyproject.toml).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from locquota.app import configure
from locquota.policies import list_rules
from locquota.settings import SettingsError
from tests.conftest import identity

VENV_BIN = Path(sys.executable).parent
IMAGE = {"name": "p", "disk_format": "raw", "container_format": "bare"}


def with_policy(settings: dict[str, str], path: Path) -> dict[str, str]:
    return {**settings, "locquota.policy_file": str(path)}


def test_an_override_changes_what_a_role_may_do(settings, make_app, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text('"get_images": "role:admin"\n"add_image": "role:member and project_id:%(owner)s"\n')
    app = make_app(with_policy(settings, policy))

    app.post_json("/v2/images", IMAGE, headers=identity("tenant-a"), status=201)  # unchanged for members
    refused = app.get("/v2/images", headers=identity("tenant-a"), status=403).json
    app.get("/v2/images", headers=identity("operators", "admin"), status=200)

    assert refused["error"]["details"] == {"rule": "get_images"}


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('"get_images": "role:admin"\n"get_image": [unclosed\n', 3, "not valid YAML"),
        ('"get_images": "role:admin"\n\n"get_imgaes": "role:admin"\n', 3, "unknown rule 'get_imgaes'"),
    ],
    ids=["yaml-syntax", "unknown-rule"],
)
def test_a_broken_policy_file_refuses_to_start_naming_file_and_line(settings, tmp_path, text, line, reason):
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)

    with pytest.raises(SettingsError) as refused:
        configure(with_policy(settings, policy))

    assert str(refused.value).startswith(f"{policy}:{line}: ")
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    "text",
    ['"get_images": "rule:no_such_rule"\n', "- a list\n- of things\n", '"get_images": 3\n'],
    ids=["undefined-reference", "not-a-mapping", "not-a-check-string"],
)
def test_a_policy_file_that_cannot_mean_anything_is_refused(settings, tmp_path, text):
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)

    with pytest.raises(SettingsError, match="policy"):
        configure(with_policy(settings, policy))


def test_a_missing_policy_file_is_refused(settings, tmp_path):
    with pytest.raises(SettingsError, match="No such file"):
        configure(with_policy(settings, tmp_path / "absent.yaml"))


def test_the_sample_generator_lists_every_rule_with_its_default():
    sample = subprocess.run(
        [str(VENV_BIN / "oslopolicy-sample-generator"), "--namespace", "locquota"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    defaults = yaml.safe_load("\n".join(line[1:] for line in sample.splitlines() if line.startswith('#"')))

    assert defaults == {rule.name: rule.check_str for rule in list_rules()}
    assert "get_image" in defaults
    assert "locquota:limits:set" in defaults


def test_the_policy_generator_merges_the_operators_file(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text('"get_images": "role:admin"\n')
    effective = subprocess.run(
        [str(VENV_BIN / "oslopolicy-policy-generator"), "--namespace", "locquota"],
        check=True,
        capture_output=True,
        text=True,
        env={"LOCQUOTA_POLICY_FILE": str(policy), "PATH": ""},
    ).stdout

    rules = yaml.safe_load(effective)
    assert rules["get_images"] == "role:admin"
    assert rules["add_image"] == next(rule.check_str for rule in list_rules() if rule.name == "add_image")
