"""The Grafana dashboard and the Prometheus rules name only what the gateway exports.

The exported names come from `gateway.metrics.Metrics` itself (its registry's collectors, with
the suffixes the exposition adds), so renaming a metric breaks this test, not a dashboard in
production. Expressions are read by a small PromQL scanner (selectors, matchers, clauses); that
`promtool` parses them for real is tested in tests/integration/test_promtool.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics

DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "gateway.json"
RULES = DEPLOY / "prometheus" / "rules.yml"

# What the text exposition adds to a family's name, per type (prometheus_client also exports
# `_created` for counters and histograms).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# `up` is Prometheus' own, one per target: the only foreign series the rules and panels use.
PROMETHEUS_SERIES = {"up": frozenset({"job", "instance"})}

KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
RANGE = re.compile(r"\[[^\]]*\]")
OFFSET = re.compile(r"\boffset\s+-?\w+")
SELECTOR = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
GRAFANA_INTERVAL = re.compile(r"\$__(?:rate_interval|interval|range)")
TEMPLATE_QUERY = re.compile(r"printf\s+`([^`]*)`[^}|]*\|\s*query\b|\bquery\s+`([^`]*)`")
PRINTF_VERB = re.compile(r"%[qsvd]")


def exported() -> dict[str, frozenset[str]]:
    """Every series name the gateway can export, with the label names it carries."""
    metrics = Metrics()
    # prometheus_client has no public accessor for a labelled metric's label names.
    labels = {
        wrapper._name: frozenset(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    names: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        own = labels.get(family.name, labels.get(f"{family.name}_total", frozenset()))
        for suffix in SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = own | extra | TARGET_LABELS
    return names


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """The metric selectors of a PromQL expression: (metric name, label names matched)."""
    text = STRING.sub('""', GRAFANA_INTERVAL.sub("5m", expr))
    text = OFFSET.sub(" ", RANGE.sub(" ", CLAUSE.sub(" ", text)))
    for brace in re.finditer(r"\{", text):
        before = text[: brace.start()].rstrip()
        assert before and (before[-1].isalnum() or before[-1] in "_:"), (
            f"a selector without a metric name is not supported here: {expr}"
        )
    found = []
    for match in SELECTOR.finditer(text):
        name, braces = match.group(1), match.group(2)
        rest = text[match.end() :].lstrip()
        if name in KEYWORDS or (braces is None and rest.startswith("(")):
            continue  # an operator, an aggregation or a function
        found.append((name, set(MATCHER.findall(braces or ""))))
    return found


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every query of the dashboard, variables' included."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert inner, f"variable {variable['name']}: unexpected query {query}"
            found.append((f"variable {variable['name']}", inner.group(1)))
    return found


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every rule, and every query its annotations' templates run
    (a backquoted query after `query`, or a backquoted printf format piped into it; the printf
    verbs read as empty strings)."""
    found = []
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        found.append((name, rule["expr"]))
        for key, text in rule.get("annotations", {}).items():
            for match in TEMPLATE_QUERY.finditer(text):
                query = match.group(1) or match.group(2)
                found.append((f"{name} {key}", PRINTF_VERB.sub('""', query)))
    return found


def check_names(where: str, expr: str, known: dict[str, frozenset[str] | None]) -> list[str]:
    """Problems with the selectors of `expr`; a name known with None may match any label."""
    problems = []
    for name, matched in selectors(expr):
        labels = known.get(name, frozenset())
        if name not in known:
            problems.append(f"{where}: {name} is not exported by the gateway")
        elif labels is not None and matched - labels:
            problems.append(f"{where}: {name} has no label {sorted(matched - labels)}")
    return problems


def test_exported_names_carry_the_exposition_suffixes() -> None:
    names = exported()
    assert {"gateway_rows_written_total", "gateway_flush_duration_seconds_bucket"} <= set(names)
    assert {"gateway_batch_rows_sum", "gateway_batch_rows_count", "gateway_buffered_rows"} <= set(
        names
    )
    assert "gateway_rows_written" not in names
    assert names["gateway_pool_connections"] == {"role", "state", "job", "instance"}
    assert "le" in names["gateway_flush_duration_seconds_bucket"]


def test_the_scanner_finds_selectors_and_skips_functions_and_clauses() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, role) (rate(a_bucket{job=~"$job", x="}"}'
        "[$__rate_interval]))) / on (role) group_left sum without (x) (b offset 5m) "
        "unless absent(up{job='gateway'}) > bool 1e3"
    )
    assert selectors(expr) == [("a_bucket", {"job", "x"}), ("b", set()), ("up", {"job"})]


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_the_dashboard_shows_what_operators_need() -> None:
    exprs = " ".join(expr for _, expr in dashboard_expressions())
    for needed in [
        "sum by (role, table) (rate(gateway_rows_written_total",
        "sum by (source) (rate(gateway_messages_received_total",
        "sum by (reason) (rate(gateway_messages_rejected_total",
        "histogram_quantile(0.99, sum by (le, role, table) (rate(gateway_flush_duration_seconds_",
        "histogram_quantile(0.5, sum by (le, role, table) (rate(gateway_flush_duration_seconds_",
        "gateway_buffered_rows",
        "gateway_buffer_held_rows{",
        "gateway_buffer_limit_rows{",
        "sum(gateway_ready{",
        "gateway_pool_connections",
        "gateway_kafka_consumer_lag",
    ]:
        assert needed in exprs, f"the dashboard lacks {needed}"


def test_every_dashboard_query_names_only_exported_metrics_and_labels() -> None:
    known: dict[str, frozenset[str] | None] = {**exported(), **PROMETHEUS_SERIES}
    problems = [
        p for where, expr in dashboard_expressions() for p in check_names(where, expr, known)
    ]
    assert not problems, "\n".join(problems)


def test_legends_name_labels_of_their_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                assert re.search(rf"\b{label}\b", target["expr"]), (
                    f"{panel['title']}: legend label {label} is not in {target['expr']}"
                )


def test_every_rule_names_only_exported_or_recorded_metrics() -> None:
    all_rules = rules()
    # A recorded series has the labels of its aggregation, checked where it is recorded.
    recorded = {rule["record"]: None for rule in all_rules if "record" in rule}
    assert recorded, "the rules record nothing"
    known: dict[str, frozenset[str] | None] = {**exported(), **PROMETHEUS_SERIES, **recorded}
    problems = [
        problem for where, expr in rule_expressions() for problem in check_names(where, expr, known)
    ]
    assert not problems, "\n".join(problems)


def test_annotation_queries_are_found() -> None:
    # GatewayNotReady names the failing checks by querying them from its description.
    queries = [expr for where, expr in rule_expressions() if " " in where]
    assert queries == ['gateway_readiness_check{job="", instance=""} == 0']
