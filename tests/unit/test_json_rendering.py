"""The JSON renderer (orjson): the same JSON the standard library wrote, and as strict about what it sends."""

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from pyramid import testing
from pyramid.renderers import render

from locquota.json_rendering import dumps


def test_the_body_is_the_json_the_standard_library_would_write():
    document = {"name": "snow ☃ café", "size": 2**62, "tags": [], "min_ram": 0, "checksum": None, "ok": True}

    assert json.loads(dumps(document)) == json.loads(json.dumps(document)) == document
    assert "☃".encode() in dumps(document)  # UTF-8, not a \u escape


def test_integer_keys_become_strings_as_json_dumps_makes_them():
    assert json.loads(dumps({1: "a"})) == json.loads(json.dumps({1: "a"})) == {"1": "a"}


@dataclasses.dataclass
class Unmeant:
    value: int


@pytest.mark.parametrize("value", [datetime(2026, 12, 7, tzinfo=UTC), Unmeant(1), object()])
def test_a_value_no_view_meant_to_send_fails_loudly(value):
    with pytest.raises(TypeError):
        dumps({"value": value})


def test_the_json_renderer_of_the_app_is_this_one():
    with testing.testConfig() as config:
        config.include("locquota.json_rendering")
        body = render("json", {"name": "☃"}, request=testing.DummyRequest())

    assert body == dumps({"name": "☃"})
