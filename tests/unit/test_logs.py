"""locquota.logs: the request id on every log line, the JSON formatter, and the shipped .ini's logging sections.

The .ini files are applied by logging.config.fileConfig in a child process, as pserve, gunicorn --paste and
the CLI apply them: fileConfig here would replace pytest's own log handlers.
"""

import json
import logging
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from locations import scrubber
from locations.services import upload_reaper
from locations.services.image_import import reaper as import_reaper
from locquota.access_log import access_log
from locquota.logs import REQUEST_ID, Formatter, JsonFormatter, RequestIdFilter

REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED = ("development.ini", "production.ini")
# The child logs one marker on each of these loggers (their names taken from the modules themselves), then a
# failure with its traceback: the scrubber's pass summaries, the reapers' lines, the access log, the errors.
CHILD = """
import logging, sys
from pyramid.paster import setup_logging
setup_logging(sys.argv[1])
for name in sys.argv[2:]:
    logging.getLogger(name).info("%s marker", name)
try:
    raise ValueError("the failure's own text")
except ValueError:
    logging.getLogger("locquota.errors").exception("failure marker")
"""
LOGGERS = (scrubber.log.name, upload_reaper.log.name, import_reaper.log.name, access_log.name)
MARKERS = (*(f"{name} marker" for name in LOGGERS), "failure marker")


def record(message: str = "a message", **attributes: object) -> logging.LogRecord:
    made = logging.LogRecord("locquota.test", logging.WARNING, __file__, 1, message, (), None)
    made.__dict__.update(attributes)
    return made


@pytest.fixture
def in_request():
    token = REQUEST_ID.set("req-00000000-0000-4000-8000-000000000001")
    yield "req-00000000-0000-4000-8000-000000000001"
    REQUEST_ID.reset(token)


def test_a_line_outside_a_request_shows_a_dash():
    assert Formatter("[%(request_id)s] %(message)s").format(record()) == "[-] a message"


def test_a_line_during_a_request_shows_its_id(in_request):
    assert Formatter("[%(request_id)s] %(message)s").format(record()) == f"[{in_request}] a message"


def test_the_filter_stamps_the_id_and_keeps_an_explicit_one(in_request):
    stamped, explicit = record(), record(request_id="req-given")

    kept = [RequestIdFilter().filter(stamped), RequestIdFilter().filter(explicit)]

    assert kept == [True, True]
    assert (stamped.request_id, explicit.request_id) == (in_request, "req-given")


def test_json_lines_hold_time_level_logger_message_and_request_id(in_request):
    entry = json.loads(JsonFormatter().format(record("%s bytes", args=(5,), status=200)))

    assert next(iter(entry)) == "time"
    assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
    assert {key: entry[key] for key in ("level", "logger", "message", "request_id", "status")} == {
        "level": "WARNING",
        "logger": "locquota.test",
        "message": "5 bytes",
        "request_id": in_request,
        "status": 200,
    }


def test_json_lines_outside_a_request_have_a_null_request_id():
    assert json.loads(JsonFormatter().format(record()))["request_id"] is None


def test_json_lines_carry_the_exception_text():
    try:
        raise ValueError("the failure's own text")
    except ValueError:
        failed = record(exc_info=sys.exc_info())

    entry = json.loads(JsonFormatter().format(failed))

    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: the failure's own text")


def test_a_json_line_is_one_line_whatever_the_message_holds():
    line = JsonFormatter().format(record("two\nlines", extra_object=object()))

    assert "\n" not in line
    assert json.loads(line)["message"] == "two\nlines"


def run_child(ini: Path, loggers: tuple[str, ...] = LOGGERS) -> list[str]:
    finished = subprocess.run(
        [sys.executable, "-c", CHILD, str(ini), *loggers],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPOSITORY,
    )
    return finished.stderr.splitlines()


@pytest.mark.parametrize("shipped", SHIPPED)
def test_the_shipped_configuration_shows_pass_summaries_and_request_ids(shipped):
    """INFO from the scrubber's and the reapers' loggers is shown, each line with `[-]` outside a request."""
    lines = run_child(REPOSITORY / shipped)

    for marker in MARKERS:
        [line] = [line for line in lines if line.endswith(marker)]
        assert "[-] " in line, line
    assert lines[-1] == "ValueError: the failure's own text"


@pytest.mark.parametrize("shipped", SHIPPED)
def test_the_shipped_json_formatter_writes_one_object_per_line(shipped, tmp_path):
    ini = tmp_path / shipped
    text = (REPOSITORY / shipped).read_text()
    assert text.count("formatter = generic") == 1
    ini.write_text(text.replace("formatter = generic", "formatter = json"))

    entries = [json.loads(line) for line in run_child(ini)]

    assert [entry["message"] for entry in entries] == list(MARKERS)
    assert {entry["request_id"] for entry in entries} == {None}
    assert entries[-1]["exception"].endswith("ValueError: the failure's own text")


def test_development_ini_shows_where_waitress_serves():
    """scripts/serve (pserve development.ini) names its URL: waitress's "Serving on" is an INFO line."""
    lines = run_child(REPOSITORY / "development.ini", ("waitress",))

    assert any(line.endswith("[waitress] [-] waitress marker") for line in lines), lines
