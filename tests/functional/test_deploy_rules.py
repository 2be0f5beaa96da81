"""deploy/: promtool accepts and unit-tests the alert rules, and every query names a metric the service exports.

promtool comes from Debian's prometheus package (scripts/bootstrap --test installs it). It is required, not
optional: a missing promtool fails these tests instead of skipping them, so CI cannot pass without running them.
"""

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
RULES = Path("deploy/prometheus/locquota-rules.yml")
RULES_TESTS = Path("deploy/prometheus/locquota-rules.test.yml")
DASHBOARD = ROOT / "deploy/grafana/locquota-dashboard.json"
METRICS_DOC = ROOT / "docs/metrics.md"

METRIC_NAME = re.compile(r"locquota_[a-z_]+")
# A recording rule's name (level:metric:operations); the metric part is caught by METRIC_NAME.
RECORDED_NAME = re.compile(r"(?<![\w.])[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]*[a-zA-Z0-9_]")
# Grafana's variables, replaced by values that make a panel's query plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$store": ".*"}


def metric_names_in(expr: str) -> set[str]:
    """The locquota series names an expression (or annotation template) reads, as written: a histogram's
    `_bucket`/`_sum`/`_count` series keep their suffix; `exposed_series` gives the names they are checked against.
    """
    return set(METRIC_NAME.findall(expr))


def exposed_series(metrics: Mapping[str, str]) -> set[str]:
    """The series names a scrape exposes for these metrics (name -> type): a histogram's _bucket, _sum and _count;
    a counter's name ending in _total (prometheus_client's parser names a counter's family without it).
    """
    series = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            series |= {name, f"{name}_sum", f"{name}_count"}
        elif kind == "counter" and not name.endswith("_total"):
            series.add(f"{name}_total")
        else:
            series.add(name)
    return series


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool from the checkout's root; a missing promtool fails the test with how to install it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/bootstrap --test (it installs Debian's prometheus package)")
    return subprocess.run([path, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((ROOT / RULES).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel that queries, including those inside rows (a collapsed row holds its panels)."""
    for panel in panels:
        if panel["type"] == "row":
            yield from dashboard_panels(panel.get("panels", []))
        else:
            yield panel


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [target["expr"] for panel in dashboard_panels(board["panels"]) for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query or "")
    return exprs


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('max by (store) (locquota_backlog_locations{store=~"$store"})', {"locquota_backlog_locations"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(locquota_scrubber_batch_duration_seconds_bucket[5m])))",
            {"locquota_scrubber_batch_duration_seconds_bucket"},
        ),
        ("deriv(store:locquota_backlog_locations:max[1h]) > 0", {"locquota_backlog_locations"}),
        ("time() - max(up)", set()),
    ],
)
def test_metric_names_in_finds_the_series_an_expression_reads(expr, names):
    assert metric_names_in(expr) == names


def test_exposed_series_names_a_histogram_by_its_series_and_a_counter_with_total():
    series = exposed_series({"a_seconds": "histogram", "b": "counter", "c_total": "counter", "d": "gauge"})

    assert series == {"a_seconds_bucket", "a_seconds_sum", "a_seconds_count", "b_total", "c_total", "d"}


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, f"promtool check rules {RULES}:\n{result.stdout}{result.stderr}"


def test_promtool_unit_tests_of_the_rules_pass():
    result = promtool("test", "rules", str(RULES_TESTS))

    assert result.returncode == 0, f"promtool test rules {RULES_TESTS}:\n{result.stdout}{result.stderr}"


def test_every_alert_is_tested_firing_and_not_firing():
    cases = [
        case for test in yaml.safe_load((ROOT / RULES_TESTS).read_text())["tests"] for case in test["alert_rule_test"]
    ]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {alert["alert"] for alert in alerts()}

    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def test_every_alert_waits_has_a_severity_and_explains_itself():
    for alert in alerts():
        assert alert.get("for"), alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys(), alert["alert"]


def test_every_runbook_is_a_section_of_the_metrics_doc():
    anchors = {github_anchor(line.lstrip("#")) for line in METRICS_DOC.read_text().splitlines() if line.startswith("#")}
    for alert in alerts():
        page, _, anchor = alert["annotations"]["runbook_url"].partition("#")
        assert page == "docs/metrics.md", alert["alert"]
        assert anchor in anchors, f"{alert['alert']}: no heading in docs/metrics.md has the anchor #{anchor}"


@pytest.fixture
def exported(app) -> dict[str, str]:
    """What the service really exports: the metric families of a scrape of the app, name -> type.

    A labelled metric nothing has counted yet still appears, as a family without samples.
    """
    body = app.get("/metrics", status=200).text
    return {family.name: family.type for family in text_string_to_metric_families(body)}


def test_rules_read_only_exported_metrics(exported):
    series = exposed_series(exported)
    for rule in rules():
        texts = [rule["expr"], *rule.get("annotations", {}).values()]
        unknown = set().union(*(metric_names_in(text) for text in texts)) - series
        assert unknown == set(), f"{rule.get('alert') or rule.get('record')} reads metrics nobody exports"


def test_rules_read_only_recording_rules_they_define():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        texts = [rule["expr"], *rule.get("annotations", {}).values()]
        used = set().union(*(RECORDED_NAME.findall(text) for text in texts))
        assert used <= recorded, f"{rule.get('alert') or rule.get('record')} reads undefined recording rules"


def test_dashboard_panels_have_a_title_a_datasource_and_queries():
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert [source["name"] for source in board["__inputs"]] == ["DS_PROMETHEUS"]
    for panel in dashboard_panels(board["panels"]):
        assert panel.get("title"), panel["id"]
        assert panel.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}", panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr"), panel["title"]
            assert metric_names_in(target["expr"]), f"{panel['title']}: a query that reads no locquota metric"


def test_dashboard_reads_only_exported_metrics(exported):
    series = exposed_series(exported)
    for expr in dashboard_exprs():
        assert metric_names_in(expr) <= series, f"reads metrics nobody exports: {expr}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    queries = [expr for expr in dashboard_exprs() if not expr.startswith("label_values(")]
    for variable, value in GRAFANA_VARIABLES.items():
        queries = [query.replace(variable, value) for query in queries]
    check = tmp_path / "dashboard-queries.yml"
    check.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [{"record": f"panel:q{i}", "expr": q} for i, q in enumerate(queries)],
                    }
                ]
            }
        )
    )

    result = promtool("check", "rules", str(check))

    assert result.returncode == 0, f"a dashboard query is not valid PromQL:\n{result.stdout}{result.stderr}"


def test_metrics_doc_lists_every_exported_metric(exported):
    doc = METRICS_DOC.read_text()
    # As an operator queries it: a counter with _total, a histogram by its own name.
    names = [
        f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
        for name, kind in exported.items()
        if name.startswith("locquota_")
    ]
    assert len(names) >= 20
    assert [name for name in names if f"`{name}`" not in doc] == []
