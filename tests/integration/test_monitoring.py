"""monitoring/: the Prometheus config and alert rules pass ``promtool`` (Debian's ``prometheus`` package; .ci/run
installs it), the alert rules' unit tests pass, and every metric the Grafana dashboard and the alert rules query is
one the services expose (read from the registry shared/metrics.py fills, the one each endpoint serves)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from shared import metrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install "
                                    "prometheus; .ci/run installs it)")
#: series Prometheus makes itself, not the services
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "delta", "count", "max_over_time", "histogram_quantile", "and", "le",
                "without", "on", "or", "unless"}


def exposed_names() -> set[str]:
    """Every sample name the registry can expose: counters as ``_total``, histograms' ``_bucket``/``_count``/``_sum``,
    gauges and the process collector's as they are."""
    names = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers outside label matchers, by-clauses and strings)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"(?<![a-zA-Z_:])\d+(\.\d+)?(e\d+)?", "", expr)  # numbers (1e9)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "sentinel.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_read_only_metrics_the_services_expose():
    exprs = dashboard_queries()
    assert len(exprs) >= 12
    exposed = exposed_names() | PROMETHEUS_OWN
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - exposed == set(), used - exposed
    # the pipeline end to end: trades/s, candles/s, alerts/s, lag, delivery latency, errors
    for name in ("sentinel_feed_trades_total", "sentinel_candles_closed_total", "sentinel_alerts_fired_total",
                 "sentinel_consumer_lag_entries", "sentinel_notification_delivery_latency_seconds_bucket",
                 "sentinel_redis_errors_total", "sentinel_notifications_dead_lettered_total"):
        assert name in used, name


def test_alert_rules_read_only_metrics_the_services_expose():
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {"SentinelFeedSilent", "SentinelConsumerLagGrowing", "SentinelDeadLettersRising",
            "SentinelReplicaMissing"} <= set(exprs)
    exposed = exposed_names() | PROMETHEUS_OWN
    for name, expr in exprs.items():
        assert metric_names(expr) <= exposed, (name, metric_names(expr) - exposed)


def test_every_service_is_scraped():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    scraped = {n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert scraped == {"market_feed", "candle_builder", "alert_engine", "notifier", "api"}
    compose = yaml.safe_load((MONITORING.parent / "docker-compose.yml").read_text())
    assert compose["x-sentinel"]["environment"]["SENTINEL_METRICS_PORT"] == "9100"
    assert all(sd["port"] == 9100 for job in config["scrape_configs"] for sd in job["dns_sd_configs"])
    assert compose["services"]["prometheus"]["profiles"] == compose["services"]["grafana"]["profiles"] == ["monitoring"]


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules():
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (args, done.stdout, done.stderr)


def test_metric_names_follow_prometheus_conventions():
    for family in REGISTRY.collect():
        if not family.name.startswith("sentinel_"):
            continue
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert re.fullmatch(r"[a-z_]+", family.name), family.name
    assert metrics.ALL == "all"
