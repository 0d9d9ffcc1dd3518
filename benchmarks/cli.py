"""`ingot bench`: run a load sweep against one or more targets, serve the calibration target, redraw reports.

Exit codes of `run`: 0 when the sweep finished (failed requests are counted in the report, not fatal);
1 when every request of the whole invocation failed (the report is still written); 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import calibration, report as reports, workload
from benchmarks.load import Limits, LoadPoint
from benchmarks.metrics import DEFAULT_SPEED_LIMITS
from benchmarks.progress import SweepProgress
from benchmarks.sweep import Sweep, run_sweep
from benchmarks.targets import APIS, SERVERS, Target, parse_target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = list(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"ingot bench: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingot bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands.add_parser("run", help="sweep load over targets and write a report"))
    calibrate = commands.add_parser("calibrate", help="serve a target that streams at a known pace")
    calibrate.add_argument("--host", default="127.0.0.1")
    calibrate.add_argument("--port", type=int, default=8100)
    calibrate.add_argument("--ttft-ms", type=float, default=50.0)
    calibrate.add_argument("--itl-ms", type=float, default=20.0)
    calibrate.add_argument("--api-key-env", help="require the key held by this environment variable")
    calibrate.set_defaults(handler=_calibrate)
    redraw = commands.add_parser("report", help="rewrite summary.md and the plots from a report.json")
    redraw.add_argument("report_json", type=Path)
    redraw.set_defaults(handler=_redraw)
    return parser


def _run_parser(run: argparse.ArgumentParser) -> None:
    run.add_argument("--target", action="append", required=True, metavar="SPEC",
                     help="URL, or url=URL,name=N,api=A,server=S,model=M,api-key-env=VAR,min-tokens=1; repeat to "
                          "compare targets")
    run.add_argument("--api", choices=APIS, default="chat", help="default API of the targets")
    run.add_argument("--server", choices=SERVERS, default="openai",
                     help="default server kind; ingot and vllm get ignore_eos so outputs reach max tokens")
    run.add_argument("--model", help="model name to request (default: the first of the target's /v1/models)")
    run.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the bearer token")
    run.add_argument("--min-tokens", action="store_true", help="send min_tokens = max_tokens (OpenAI-style targets)")
    run.add_argument("--temperature", type=float, help="send this temperature (OpenAI-style targets; 0: greedy)")
    load = run.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_numbers, help="closed loop: users, e.g. 1,2,4,8 (default 1)")
    load.add_argument("--rate", type=_numbers, help="open loop: Poisson request rates in req/s, e.g. 1,2,4")
    run.add_argument("--num-requests", type=int, default=32, help="requests per target and load point")
    run.add_argument("--duration", type=float, default=300.0, help="seconds after which a run starts no request")
    run.add_argument("--request-timeout", type=float, default=300.0)
    run.add_argument("--prompts", type=Path, help="JSONL or JSON prompts: prompt, messages or ShareGPT conversations")
    run.add_argument("--input-tokens", type=int, default=128)
    run.add_argument("--output-tokens", type=int,
                     help="output length (default 128; with --prompts, the file's max_tokens or reply length)")
    run.add_argument("--length-dist", choices=("fixed", "uniform", "normal"), default="fixed")
    run.add_argument("--length-spread", type=float, default=0.0, help="relative spread of the lengths")
    run.add_argument("--tokenizer", type=Path, help="directory with tokenizer.json: exact prompt token counts")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--fresh-prompts", action="store_true",
                     help="new prompts at every load point (same for every target), so prefix caches never hit")
    run.add_argument("--goodput-limits", type=_numbers, default=list(DEFAULT_SPEED_LIMITS),
                     help="per-user decode speed limits in tok/s (default 60,80)")
    run.add_argument("--out", type=Path, help="report folder (default benchmarks/results/<UTC time>)")
    run.add_argument("--quiet", action="store_true", help="no progress display and no summary on stdout")
    run.set_defaults(handler=_run)


def _numbers(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _run(args: argparse.Namespace) -> int:
    defaults = Target("", "", args.api, args.server, args.model, args.api_key_env, args.min_tokens, args.temperature)
    targets = [parse_target(spec, defaults, i) for i, spec in enumerate(args.target)]
    if len({t.name for t in targets}) != len(targets):
        raise ValueError("targets need distinct names (name=...)")
    points = ([LoadPoint("rate", r) for r in args.rate] if args.rate
              else [LoadPoint("concurrency", int(c)) for c in args.concurrency or [1]])
    for point in points:
        if point.mode == "concurrency" and point.value > args.num_requests:
            print(f"warning: {point.label} with {args.num_requests} requests never has more than "
                  f"{args.num_requests} users in flight; raise --num-requests", file=sys.stderr)
    requests = _workload(args, args.num_requests * (len(points) if args.fresh_prompts else 1))
    sweep = Sweep(targets, points, requests, args.seed, Limits(args.duration, args.request_timeout),
                  fresh_prompts=args.fresh_prompts)
    with SweepProgress(enabled=not args.quiet) as progress:
        resolved, runs = asyncio.run(run_sweep(sweep, progress))
    report = reports.build_report(resolved, runs, _settings(args), tuple(args.goodput_limits))
    out = args.out or Path("benchmarks/results") / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    write_all(report, out)
    if not args.quiet:
        print(reports.markdown(report))
    print(f"report: {out}/report.json, {out}/summary.md, {out}/frontier.png, {out}/ttft.png")
    return _verdict(report)


def _workload(args: argparse.Namespace, count: int) -> list[workload.BenchRequest]:
    tokenizer = workload.load_tokenizer(args.tokenizer) if args.tokenizer else None
    outputs = workload.LengthSpec(args.output_tokens or 128, args.length_dist, args.length_spread)
    if args.prompts:
        return workload.from_file(args.prompts, count, outputs if args.output_tokens else None, args.seed, tokenizer)
    inputs = workload.LengthSpec(args.input_tokens, args.length_dist, args.length_spread)
    return workload.synthetic(count, inputs, outputs, args.seed, tokenizer)


def _settings(args: argparse.Namespace) -> dict:
    source = (f"prompts from {args.prompts}" if args.prompts else
              f"synthetic, {args.input_tokens} in / {args.output_tokens or 128} out tokens, {args.length_dist}"
              + (f" ±{args.length_spread:g}" if args.length_dist != "fixed" else ""))
    return {"command": "ingot bench " + " ".join(args.argv), "workload": source,
            "tokenizer": str(args.tokenizer) if args.tokenizer else None, "seed": args.seed,
            "num_requests": args.num_requests, "fresh_prompts": args.fresh_prompts,
            "temperature": args.temperature, "duration_s": args.duration,
            "request_timeout_s": args.request_timeout, "load": "open loop (Poisson)" if args.rate else "closed loop"}


def write_all(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    reports.write_json(report, out / "report.json")
    (out / "summary.md").write_text(reports.markdown(report))
    try:
        from benchmarks import plots
    except ImportError:  # matplotlib comes with the `bench` extra; the data is complete without it
        print("warning: no plots: matplotlib is not installed (pip install 'ingot[bench]')", file=sys.stderr)
        return
    plots.frontier(report, out / "frontier.png")
    plots.ttft_vs_load(report, out / "ttft.png")


def _verdict(report: dict) -> int:
    """Warn about targets that never answered; fail only when no request of the invocation succeeded."""
    errors: Counter = Counter()
    ok_by_target: Counter = Counter()
    for entry in report["runs"]:
        errors.update(entry["summary"]["errors"])
        ok_by_target[entry["target"]] += entry["summary"]["ok"]
    for target in report["targets"]:
        if ok_by_target[target["name"]] == 0:
            print(f"warning: every request to {target['name']} ({target['url']}) failed", file=sys.stderr)
    if sum(ok_by_target.values()) == 0:
        kinds = ", ".join(f"{kind} {count}" for kind, count in errors.most_common())
        print(f"ingot bench: every request failed ({kinds}); the report has the details", file=sys.stderr)
        return 1
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    pace = calibration.Pace(ttft=args.ttft_ms / 1000, itl=args.itl_ms / 1000, api_key=key)
    print(f"calibration target on http://{args.host}:{args.port}: TTFT {args.ttft_ms:g} ms, "
          f"{1000 / args.itl_ms:.1f} tok/s per user", flush=True)
    calibration.serve(pace, args.host, args.port)
    return 0


def _redraw(args: argparse.Namespace) -> int:
    report = json.loads(args.report_json.read_text())
    write_all(report, args.report_json.parent)
    print(reports.markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
