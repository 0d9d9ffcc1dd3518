"""PNG charts of a report: the throughput / per-user speed frontier, and TTFT against load."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402


def _series(report: dict, target: str) -> list[dict]:
    entries = [e for e in report["runs"] if e["target"] == target]
    return sorted(entries, key=lambda e: e["point"]["value"])


def frontier(report: dict, path: Path) -> None:
    """Output throughput against p50 per-user decode speed, one line per target, limits as dashed lines."""
    figure, axes = plt.subplots(figsize=(7, 5))
    for target in report["targets"]:
        points = [e for e in _series(report, target["name"]) if e["summary"]["decode_speed"]["p50"] is not None]
        xs = [e["summary"]["decode_speed"]["p50"] for e in points]
        ys = [e["summary"]["output_throughput"] for e in points]
        axes.plot(xs, ys, marker="o", label=target["name"])
        for x, y, entry in zip(xs, ys, points, strict=True):
            axes.annotate(entry["point"]["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for limit in report["speed_limits"]:
        axes.axvline(limit, linestyle="--", color="grey", linewidth=0.8)
    axes.set_xlabel("per-user decode speed, p50 (tok/s)")
    axes.set_ylabel("output throughput (tok/s)")
    axes.set_title("Throughput vs per-user speed")
    _finish(figure, axes, path)


def ttft_vs_load(report: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 5))
    for target in report["targets"]:
        entries = [e for e in _series(report, target["name"]) if e["summary"]["ttft"]["p50"] is not None]
        xs = [e["point"]["value"] for e in entries]
        line, = axes.plot(xs, [e["summary"]["ttft"]["p50"] * 1000 for e in entries], marker="o",
                          label=f"{target['name']} p50")
        axes.plot(xs, [e["summary"]["ttft"]["p90"] * 1000 for e in entries], marker="x", linestyle="--",
                  color=line.get_color(), label=f"{target['name']} p90")
    mode = report["runs"][0]["point"]["mode"] if report["runs"] else "concurrency"
    axes.set_xlabel("concurrent users" if mode == "concurrency" else "request rate (req/s)")
    axes.set_ylabel("time to first token (ms)")
    axes.set_title("TTFT vs load")
    _finish(figure, axes, path)


def _finish(figure, axes, path: Path) -> None:
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
