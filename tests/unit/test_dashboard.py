"""The Grafana dashboard and the Prometheus alert rules name only metrics the code exports.

Metric names are parsed out of every PromQL expression (panel targets and rule ``expr``) and
compared with the names the plugin's registry really serves, including the ``_total`` /
``_bucket`` / ``_count`` / ``_sum`` suffixes the exposition format adds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from litellm_credits.observe import metrics, monitoring

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "config" / "grafana-dashboard.json"
RULES = REPO / "config" / "prometheus-alerts.yml"

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "le",
}


def exported_names() -> set[str]:
    """Every sample name the registry serves, as Prometheus will see it."""
    assert monitoring.SETTLEMENTS is not None  # its metrics are registered on import
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum", "_created")}
        elif family.type == "summary":
            names |= {family.name, family.name + "_count", family.name + "_sum"}
        else:
            names.add(family.name)
        names |= {s.name for s in family.samples}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                    # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                   # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)                  # Grafana variables
    text = re.sub(r"(?<![\w:])(?:(?:\d+(?:ms|[smhdwy]))+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)",
                  " ", text)                                  # durations and numbers
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if word.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        found.add(word)
    return found


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels") or [])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return data


def test_parser_finds_metric_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, provider) (rate(credits_pre_call_hook_seconds_'
            'bucket{job="x", le!="1"}[5m] offset 1h))) / on (instance) group_left '
            'clamp_min(sum(up), 1e-9) > bool 3')
    assert metric_names(expr) == {"credits_pre_call_hook_seconds_bucket", "up"}
    assert metric_names("sum(increase(credits_debited_total[$__range]))") == {
        "credits_debited_total"}
    # A misspelt or never-exported name is caught by the comparison below.
    assert metric_names("rate(credits_debit_total[5m])") - exported_names() == {
        "credits_debit_total"}
    assert "credits_debited" not in exported_names()  # a counter is only served as _total


def test_every_panel_query_names_an_exported_metric(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    seen: set[str] = set()
    queried = [p for p in panels(dashboard["panels"]) if p.get("type") != "row"]
    assert len(queried) >= 20
    for panel in queried:
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries unknown metrics {unknown}"
            seen |= names
    # Everything the plugin exports that matters is on the dashboard somewhere.
    for wanted in ("credits_debited_total", "credits_granted_total",
                   "credits_purchase_revenue_usd_total", "credits_requests_total",
                   "credits_byok_requests_total", "credits_holds_total",
                   "credits_writer_queue_depth", "credits_writer_batch_size_bucket",
                   "credits_writer_batch_seconds_bucket", "credits_spool_depth",
                   "credits_pre_call_hook_seconds_bucket", "credits_users_below_threshold"):
        assert wanted in seen, wanted


def test_the_dashboard_has_the_panels_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(dashboard["panels"])}

    def exprs(fragment: str) -> list[str]:
        matching = [p for t, p in by_title.items() if fragment.lower() in t.lower()]
        assert matching, f"no panel titled like {fragment!r}"
        return [t["expr"] for p in matching for t in p["targets"]]

    assert any("credits_debited_total[1h]" in e for e in exprs("credits used per hour"))
    assert any("credits_purchase_revenue_usd_total" in e for e in exprs("revenue"))
    assert any("rejected_" in e for e in exprs("rejected requests"))
    mix = exprs("provider mix per power level")
    assert any("power_level" in e and "provider" in e for e in mix)
    assert any('key_source="byok"' in e for e in exprs("BYOK share"))
    latency = exprs("hook latency p50 / p99")
    assert any("histogram_quantile(0.5," in e for e in latency)
    assert any("histogram_quantile(0.99," in e for e in latency)


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["refId"] and target["datasource"]["uid"] == "${datasource}"


def test_alert_rules_name_exported_metrics_and_cover_the_issue() -> None:
    doc = yaml.safe_load(RULES.read_text("utf-8"))
    rules = [r for group in doc["groups"] for r in group["rules"]]
    exported = exported_names()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        names = metric_names(rule["expr"])
        assert names and not names - exported, (rule["alert"], names - exported)
    alerts = {r["alert"]: r["expr"] for r in rules}
    # The four the issue names: spool backing up, writer failing, 402 spike, holds expiring.
    assert "credits_spool_depth" in alerts["CreditsSpoolBackingUp"]
    assert "credits_writer_failures_total" in alerts["CreditsWriterFailing"]
    assert 'outcome="rejected_402"' in alerts["CreditsRejections402Spike"]
    assert 'event="expired"' in alerts["CreditsHoldsExpiring"]


def test_no_metric_is_labelled_by_user() -> None:
    for family in metrics.REGISTRY.collect():
        collector = metrics.REGISTRY._names_to_collectors.get(family.name)  # noqa: SLF001
        labels = getattr(collector, "_labelnames", ())
        assert not {"user", "user_id", "end_user", "key", "api_key"} & set(labels), family.name
