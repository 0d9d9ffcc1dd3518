"""The Grafana dashboard asks only for metrics that exist: the gateway's /metrics and Triton's, read from the
running stack, and the engine gauges the portable model defines."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ingot.json"
PORTABLE_MODEL = ROOT / "engines" / "triton" / "portable_model.py"
METRIC_NAME = re.compile(r"\b((?:ingot|nv)_[a-z0-9_]+)\b")


def exported_series(exposition: str) -> set[str]:
    """Series names a scrape can return, from the exposition's TYPE lines (also families with no sample yet)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}
            names |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    return names


def sample(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the scrape")


def portable_engine_gauges() -> set[str]:
    """The gauge names in the portable model's `_make_gauges` (the module only imports inside Triton's stub)."""
    tree = ast.parse(PORTABLE_MODEL.read_text())
    function = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                    and node.name == "_make_gauges")
    return {key.value for node in ast.walk(function) if isinstance(node, ast.Dict)
            for key in node.keys if isinstance(key, ast.Constant) and str(key.value).startswith("ingot_engine_")}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


@pytest.mark.e2e
def test_every_metric_the_dashboard_queries_is_exported(ingot_stack):
    headers = {"Authorization": f"Bearer {ingot_stack.api_key}"}
    body = {"model": ingot_stack.model, "prompt": "Hello", "max_tokens": 3, "ignore_eos": True}
    assert httpx.post(f"{ingot_stack.base_url}/v1/completions", json=body, headers=headers, timeout=60).is_success
    gateway_text = httpx.get(f"{ingot_stack.base_url}/metrics", timeout=30).text
    gateway = exported_series(gateway_text)
    for observed in ("ingot_time_per_output_token_seconds_count", "ingot_request_prompt_tokens_count",
                     "ingot_request_generation_tokens_count", 'ingot_request_success_total{finished_reason="length"}'):
        assert sample(gateway_text, observed) >= 1, f"{observed} was not observed"
    assert sample(gateway_text, "ingot_requests_running") == 0 and sample(gateway_text, "ingot_requests_waiting") == 0
    triton_text = httpx.get(f"http://127.0.0.1:{ingot_stack.triton.metrics_port}/metrics", timeout=30).text
    triton = exported_series(triton_text)
    engine = portable_engine_gauges()
    assert {"ingot_engine_free_kv_blocks", "ingot_engine_total_kv_blocks"} <= engine <= triton
    queried = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    missing = sorted(queried - gateway - triton - engine)
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    # vLLM's core set, as the gateway knows it, is on the dashboard
    for name in ("ingot_time_to_first_token_seconds_bucket", "ingot_time_per_output_token_seconds_bucket",
                 "ingot_request_latency_seconds_bucket", "ingot_request_prompt_tokens_bucket",
                 "ingot_request_generation_tokens_bucket", "ingot_requests_running", "ingot_requests_waiting",
                 "ingot_engine_free_kv_blocks", "nv_inference_queue_duration_us"):
        assert name in queried, f"{name} is not on the dashboard"
