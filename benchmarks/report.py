"""The results of a sweep as data: a JSON document with every raw record, and a markdown summary."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.load import RunResult
from benchmarks.metrics import goodput, summarize
from benchmarks.targets import Target


def build_report(targets: list[Target], runs: list[RunResult], settings: dict,
                 speed_limits: tuple[float, ...]) -> dict:
    run_entries = [_run_entry(run) for run in runs]
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "speed_limits": list(speed_limits),
        "targets": [asdict(target) for target in targets],
        "runs": run_entries,
        "goodput": {t.name: goodput(_summaries_of(run_entries, t.name), speed_limits) for t in targets},
    }
    if len(targets) >= 2:
        report["ratios"] = ratios(report, targets[0].name)
    return report


def _run_entry(run: RunResult) -> dict:
    point = {"mode": run.point.mode, "value": run.point.value, "label": run.point.label}
    summary = {"point": run.point.label, **summarize(run)}
    return {"target": run.target, "point": point, "summary": summary,
            "records": [record.to_dict() for record in run.records]}


def _summaries_of(run_entries: list[dict], target: str) -> list[dict]:
    return [entry["summary"] for entry in run_entries if entry["target"] == target]


RATIO_FIELDS = (("output_throughput", None), ("request_throughput", None), ("ttft", "p50"),
                ("decode_speed", "p50"), ("e2e", "p50"))


def ratios(report: dict, baseline: str) -> dict:
    """Every other target divided by the baseline, point by point and for goodput."""
    base = {entry["point"]["label"]: entry["summary"] for entry in report["runs"] if entry["target"] == baseline}
    rows = []
    for entry in report["runs"]:
        reference = base.get(entry["point"]["label"])
        if entry["target"] == baseline or reference is None:
            continue
        row = {"target": entry["target"], "point": entry["point"]["label"]}
        for field, level in RATIO_FIELDS:
            row[field if level is None else f"{field}_{level}"] = _ratio(_value(entry["summary"], field, level),
                                                                          _value(reference, field, level))
        rows.append(row)
    goodput_rows = []
    for name, by_limit in report["goodput"].items():
        if name == baseline:
            continue
        for limit, levels in by_limit.items():
            base_levels = report["goodput"][baseline][limit]
            goodput_rows.append({"target": name, "limit": limit, **{
                level: _ratio(_throughput(levels[level]), _throughput(base_levels[level])) for level in levels}})
    return {"baseline": baseline, "points": rows, "goodput": goodput_rows}


def _value(summary: dict, field: str, level: str | None) -> float | None:
    return summary[field] if level is None else summary[field][level]


def _throughput(entry: dict | None) -> float | None:
    return None if entry is None else entry["output_throughput"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n")


def markdown(report: dict) -> str:
    names = [t["name"] for t in report["targets"]]
    settings = report["settings"]
    lines = [f"# Benchmark: {' vs '.join(names)}", "",
             f"{report['created']} · workload: {settings.get('workload')} · seed {settings.get('seed')}", ""]
    if settings.get("command"):
        lines += [f"`{settings['command']}`", ""]
    for target in report["targets"]:
        lines.append(f"- **{target['name']}**: {target['url']} ({target['api']} API, {target['server']} server, "
                     f"model {target['model']})")
    lines += ["", "## Results", "",
              "| target | load | ok | errors | req/s | out tok/s | TTFT p50 / p90 / p99 ms | ITL p50 ms "
              "| TPOT p50 ms | speed p50 / p90 tok/s | E2E p50 / p99 s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(names)}
    by_target = sorted(report["runs"], key=lambda e: (order[e["target"]], e["point"]["value"]))
    lines += [_result_row(entry) for entry in by_target]
    lines += ["", "## Goodput", "",
              "Largest output throughput (tok/s) of the sweep whose per-user decode speed at p50 (and at p90) "
              "is at least the limit.", "",
              "| target | limit tok/s | at p50 | at p90 |", "|---|---|---|---|"]
    for name, by_limit in report["goodput"].items():
        for limit, levels in by_limit.items():
            lines.append(f"| {name} | {limit} | {_goodput_cell(levels['p50'])} | {_goodput_cell(levels['p90'])} |")
    if "ratios" in report:
        lines += _ratio_lines(report["ratios"])
    return "\n".join(lines) + "\n"


def _result_row(entry: dict) -> str:
    s = entry["summary"]
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(s["errors"].items())) or "0"
    ttft = " / ".join(_ms(s["ttft"][p]) for p in ("p50", "p90", "p99"))
    speed = " / ".join(_num(s["decode_speed"][p]) for p in ("p50", "p90"))
    e2e = " / ".join(_num(s["e2e"][p], 2) for p in ("p50", "p99"))
    return (f"| {entry['target']} | {entry['point']['label']} | {s['ok']}/{s['requests']} | {errors} "
            f"| {s['request_throughput']:.2f} | {s['output_throughput']:.1f} | {ttft} | {_ms(s['itl']['p50'])} "
            f"| {_ms(s['tpot']['p50'])} | {speed} | {e2e} |")


def _ratio_lines(ratio: dict) -> list[str]:
    lines = ["", f"## Ratios to {ratio['baseline']}", "",
             "Each value is the target's divided by the baseline's at the same load (higher is better for "
             "throughput and speed, lower for TTFT and E2E).", "",
             "| target | load | out tok/s | req/s | TTFT p50 | speed p50 | E2E p50 |", "|---|---|---|---|---|---|---|"]
    for row in ratio["points"]:
        values = " | ".join(_times(row[key]) for key in ("output_throughput", "request_throughput", "ttft_p50",
                                                          "decode_speed_p50", "e2e_p50"))
        lines.append(f"| {row['target']} | {row['point']} | {values} |")
    if ratio["goodput"]:
        lines += ["", "| target | goodput limit tok/s | at p50 | at p90 |", "|---|---|---|---|"]
        lines += [f"| {row['target']} | {row['limit']} | {_times(row['p50'])} | {_times(row['p90'])} |"
                  for row in ratio["goodput"]]
    return lines


def _goodput_cell(entry: dict | None) -> str:
    return "none" if entry is None else f"{entry['output_throughput']:.1f} ({entry['point']})"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"
