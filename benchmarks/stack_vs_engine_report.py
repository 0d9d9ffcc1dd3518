"""The stack-vs-engine results of one or more models as one JSON, a markdown summary and a plot."""
from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("users", "engine tok/s", "stack tok/s", "stack ÷ engine", "stack per-user tok/s p50 / p90",
           "engine per-user tok/s p50 / p90", "stack TTFT p50 / p90 ms", "engine TTFT p50 / p90 ms",
           "stack ITL p50 ms", "engine ITL p50 ms")


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:,.3f}" if isinstance(value, float) and value < 10 else f"{value:,}"


def _row(point: dict) -> str:
    s, e = point["stack"], point["engine"]
    def pair(values: dict, low: str, high: str) -> str:
        return f"{_cell(values[low])} / {_cell(values[high])}"

    cells = [point["users"], point["engine_tok_s"], point["stack_tok_s"], point["ratio"],
             pair(s, "speed_p50", "speed_p90"), pair(e, "speed_p50", "speed_p90"),
             pair(s, "ttft_p50_ms", "ttft_p90_ms"), pair(e, "ttft_p50_ms", "ttft_p90_ms"),
             s["itl_p50_ms"], e["itl_p50_ms"]]
    return "| " + " | ".join(c if isinstance(c, str) else _cell(c) for c in cells) + " |"


def _goodput(entry: dict | None) -> str:
    if not entry:
        return "none"
    return f"{entry['output_throughput']:,.0f} tok/s ({entry['point']})"


def markdown(results: list[dict]) -> str:
    lines = ["# The stack against the engine alone", ""]
    for result in results:
        workload = result["workload"]
        lines += [f"## {result['model']}", "",
                  f"- **Hardware**: {result['hardware']}",
                  f"- **Date**: {result['date']}; **commit** {result['commit']}",
                  f"- **Command**: `{result['command']}` ({result['wall_s']} s in all)",
                  f"- **Workload**: {workload['input_tokens']}-token prompts, "
                  f"{workload['output_tokens']} output tokens, greedy, closed loop, at most "
                  f"{workload['requests_per_user']} requests per user, nothing started "
                  f"after {workload['duration_s']} s; engine settings {json.dumps(result['engine_settings'])}", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += [_row(point) for point in result["points"]]
        lines += ["", "Goodput (largest throughput whose per-user speed meets the limit at p50 / at p90):", ""]
        for name in ("stack", "engine"):
            for limit, entry in result["goodput"][name].items():
                lines.append(f"- {name}, ≥ {limit} tok/s per user: {_goodput(entry['p50'])} / {_goodput(entry['p90'])}")
        errors = {p["users"]: p["stack"]["errors"] for p in result["points"] if p["stack"]["errors"]}
        if errors:
            lines.append(f"- stack request errors by users: {errors}")
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        users = [p["users"] for p in result["points"]]
        axis.plot(users, [p["engine_tok_s"] for p in result["points"]], marker="o", label="engine alone")
        axis.plot(users, [p["stack_tok_s"] for p in result["points"]], marker="s", label="stack (gateway + Triton)")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent users")
        axis.set_ylabel("output tokens/s")
        axis.set_title(result["model"])
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({r["model"]: r for r in results}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
