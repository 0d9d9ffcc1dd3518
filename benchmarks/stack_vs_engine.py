"""The whole stack (gateway + Triton + portable engine) against the portable engine alone, at the same loads.

One invocation per model does everything on one GPU (or, small, on a CPU):
  1. writes a random-weight checkpoint of the model's exact shape (benchmarks/random_checkpoint.py);
  2. the engine alone, in a child process (so its GPU memory is given back when it exits): the engine
     configured exactly as the Triton model configures it (engine_config_from_parameters on the same
     PortableSettings), driven in-process by N users in a closed loop (each submits its next request when
     the last one ends), at most --requests-per-user x N requests a point, none started after --duration;
  3. the stack: the same checkpoint packed for the portable target, Triton and the gateway, and
     `ingot bench run` with the same closed loop over HTTP (exact-length prompts, greedy, ignore_eos);
  4. writes <out>/<model>.json: per users, engine_tok_s, stack_tok_s, ratio and both sides' per-user speed
     p50/p90, TTFT p50/p90 and ITL p50, and goodput at 60 and 80 tok/s per user.

    python -m benchmarks.stack_vs_engine run --model llama-2-7b --out $OUT/sve        # H100, < 10 min
    python -m benchmarks.stack_vs_engine run --model tiny --device cpu --users 1,4 --out /tmp/sve  # anywhere
    python -m benchmarks.stack_vs_engine report A/llama-2-7b.json B/mistral-7b.json \
        --out benchmarks/results/stack_vs_engine_h100        # .json, .md and .png from the runs

The measures are those of `ingot bench` (benchmarks/metrics.py) on both sides: the engine's records are
built from the times its steps return each request's tokens, the stack's from the SSE chunks a client sees.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results_io import commit

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "INGOT_SVE_KEY"
SPEED_LIMITS = (60.0, 80.0)


def portable_settings(args):
    from engines.repository import PortableSettings

    return PortableSettings(device=args.device, dtype=args.dtype, kv_cache_memory_bytes=args.kv_cache_bytes,
                            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                            enable_prefix_caching=False, max_batch_size=args.max_num_seqs,
                            response_sender_threads=getattr(args, "sender_threads", 1),  # other callers: 1
                            engine_process=getattr(args, "engine_process", "auto"),
                            **({"gil_switch_interval_us": args.switch_interval_us}
                               if getattr(args, "switch_interval_us", None) else {}))


# ---- the engine alone (runs in a child process)


def engine_closed_loop(engine, prompts: list[list[int]], users: int, output_tokens: int, max_requests: int,
                       duration: float):
    """N users, each submitting its next request when its last one ends: a RunResult as ingot bench makes."""
    from benchmarks.load import LoadPoint, RunResult
    from benchmarks.records import RequestRecord
    from engines.portable.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=output_tokens, ignore_end_id=True)
    records: dict[str, RequestRecord] = {}
    started = time.perf_counter()
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        request_id = f"u{submitted}"
        records[request_id] = RequestRecord(submitted, time.perf_counter() - started, max_tokens=output_tokens,
                                            expected_prompt_tokens=len(prompts[0]))
        engine.add_request(request_id, prompts[submitted % len(prompts)], params)
        submitted += 1

    for _ in range(min(users, max_requests)):
        submit()
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter() - started
        for output in outputs:
            record = records[output.request_id]
            if output.new_token_ids:
                record.first_token_time = record.first_token_time or now
                record.chunk_times.append(now)
                record.output_tokens += len(output.new_token_ids)
            if output.finished:
                record.end_time = now
                if submitted < max_requests and now < duration:
                    submit()
    wall = time.perf_counter() - started
    return RunResult("engine", LoadPoint("concurrency", users), wall, list(records.values()))


def run_engine(args) -> int:
    """Child process: the engine alone at every load, summaries to --result."""
    import torch

    from benchmarks.metrics import summarize
    from engines.portable.engine import LLMEngine
    from engines.triton.engine_settings import engine_config_from_parameters

    config = engine_config_from_parameters(portable_settings(args).parameters())
    started = time.perf_counter()
    engine = LLMEngine.from_checkpoint(args.checkpoint, config)
    print(f"engine: loaded in {time.perf_counter() - started:.1f}s ({engine.num_total_blocks} KV blocks)", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = engine.model_config.vocab_size
    max_users = max(int(u) for u in args.users.split(","))
    prompts = torch.randint(100, vocab, (max_users * args.requests_per_user, args.input_tokens),
                            generator=gen).tolist()
    # warm-up: graphs, allocator, and the kernels compiled for the largest load's shapes (on a fresh machine
    # they would otherwise compile inside the first measured points)
    engine_closed_loop(engine, prompts[:8], 4, 16, 8, 60.0)
    engine_closed_loop(engine, prompts, max_users, 16, max_users, 60.0)
    summaries = []
    for users in (int(u) for u in args.users.split(",")):  # the same bounds as ingot bench's points
        run = engine_closed_loop(engine, prompts, users, args.output_tokens, max_users * args.requests_per_user,
                                 args.duration)
        summary = {"point": run.point.label, **summarize(run)}
        summaries.append(summary)
        print(f"engine: {users} users: {summary['output_throughput']:.1f} tok/s, TTFT p50 "
              f"{summary['ttft']['p50'] * 1000:.0f} ms", flush=True)
    Path(args.result).write_text(json.dumps(summaries, indent=1) + "\n")
    return 0


# ---- the stack


def stop_stack(triton, gateway, timeout: float = 30.0) -> None:
    """Stop the gateway (SIGTERM: it drains; SIGKILL to its whole session, workers included, after `timeout`),
    then Triton and its stubs."""
    gateway.terminate()
    try:
        gateway.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(gateway.pid, signal.SIGKILL)  # started with start_new_session: it leads its group
        except ProcessLookupError:
            pass
        gateway.wait()
    triton.stop()


def start_stack(args, work: Path, key: str):
    """Triton (portable engine) and the gateway on the checkpoint: (triton, gateway process, base url)."""
    import httpx

    from engines.targets.portable import build_portable
    from engines.triton.launcher import free_port, start_triton

    artifact = work / "artifact"
    build_portable(Path(args.checkpoint), artifact, portable_settings(args), model_name=args.model)
    triton = start_triton(artifact / "model_repository", work / "triton")
    try:
        triton.wait_ready(timeout=args.start_timeout)
    except BaseException:
        triton.stop()
        raise
    port = free_port()
    command = [sys.executable, "-m", "server.cli", "gateway", "--artifact", str(artifact), "--triton-url",
               triton.grpc_url, "--port", str(port)] + args.gateway_arg
    with open(work / "gateway.log", "wb") as log:
        gateway = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(os.environ, INGOT_API_KEYS=key, PYTHONUNBUFFERED="1"))
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if gateway.poll() is not None or time.monotonic() > deadline:
            stop_stack(triton, gateway, timeout=60)
            raise RuntimeError(f"gateway did not start:\n{(work / 'gateway.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return triton, gateway, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


def run_stack(args, work: Path) -> list[dict]:
    from benchmarks.cli import main as bench_main

    key = secrets.token_urlsafe(16)
    os.environ[KEY_ENV] = key
    with stub_stats_env(args.stub_stats):
        triton, gateway, base_url = start_stack(args, work, key)
    out = work / "stack_report"
    try:
        target = f"name=stack,url={base_url},server=ingot,model={args.model},api-key-env={KEY_ENV}"
        common = ["--target", target, "--tokenizer", str(args.checkpoint), "--input-tokens", str(args.input_tokens),
                  "--temperature", "0", "--seed", str(args.seed), "--request-timeout", "300", "--quiet"]
        max_users = max(int(u) for u in args.users.split(","))
        for users in (4, max_users):  # the engine side's warm-up, over HTTP
            bench_main(["run", *common, "--output-tokens", "16", "--concurrency", str(users), "--num-requests",
                        str(max(8, users)), "--out", str(work / "warmup")])
        bench_main(["run", *common, "--output-tokens", str(args.output_tokens), "--concurrency", args.users,
                    "--num-requests", str(max_users * args.requests_per_user), "--duration", str(args.duration),
                    "--fresh-prompts", "--out", str(out)])
    finally:
        stop_stack(triton, gateway, timeout=60)
        keep_stub_stats(triton.log_path, args.out / f"{args.model}_stub_stats.log")
    report = json.loads((out / "report.json").read_text())
    return [run["summary"] for run in report["runs"] if run["target"] == "stack"]


@contextlib.contextmanager
def stub_stats_env(period_s: float):
    """Triton (and so its stub) started inside sees INGOT_ENGINE_STATS_S; this process's environment is
    restored after."""
    from engines.triton.stub_stats import ENV

    previous = os.environ.get(ENV)
    if period_s:
        os.environ[ENV] = str(period_s)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous


def keep_stub_stats(triton_log: Path, path: Path) -> None:
    """The stub's periodic lines (engines/triton/stub_stats.py) from Triton's log, next to the results."""
    try:
        lines = [line for line in triton_log.read_text(errors="replace").splitlines() if "engine stats over" in line]
    except OSError:
        return
    if lines:
        path.write_text("\n".join(lines) + "\n")


# ---- the comparison


def side(summary: dict) -> dict:
    return {"tok_s": round(summary["output_throughput"], 1),
            "speed_p50": _round(summary["decode_speed"]["p50"]), "speed_p90": _round(summary["decode_speed"]["p90"]),
            "ttft_p50_ms": _ms(summary["ttft"]["p50"]), "ttft_p90_ms": _ms(summary["ttft"]["p90"]),
            "itl_p50_ms": _ms(summary["itl"]["p50"]), "requests": summary["ok"], "errors": summary["errors"]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def compare(engine: list[dict], stack: list[dict]) -> dict:
    from benchmarks.metrics import goodput

    rows = []
    for e, s in zip(engine, stack, strict=True):
        engine_side, stack_side = side(e), side(s)
        rows.append({"users": int(e["point"].split("=")[1]), "engine_tok_s": engine_side["tok_s"],
                     "stack_tok_s": stack_side["tok_s"],
                     "ratio": round(stack_side["tok_s"] / engine_side["tok_s"], 3) if engine_side["tok_s"] else None,
                     "stack": stack_side, "engine": engine_side})
    return {"points": rows, "goodput": {"stack": goodput(stack, SPEED_LIMITS), "engine": goodput(engine, SPEED_LIMITS)}}


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"1x {torch.cuda.get_device_name()}, {os.cpu_count()} CPU cores"
    except ImportError:
        pass
    return f"CPU only, {os.cpu_count()} cores ({platform.machine()})"


def run(args, argv: list[str]) -> int:
    started = time.perf_counter()
    work = Path(args.work_dir or f"/tmp/ingot-sve-{args.model}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / f"checkpoint-{args.dtype}"
    if not (checkpoint / "config.json").is_file():  # in a child too: this process keeps no GPU memory
        writer = [sys.executable, "-m", "benchmarks.random_checkpoint", str(checkpoint), "--shape", args.model,
                  "--device", args.device, "--dtype", args.dtype, "--seed", str(args.seed)]
        subprocess.run(writer + (["--num-layers", str(args.num_layers)] if args.num_layers else []), cwd=ROOT,
                       check=True)
    args.checkpoint = str(checkpoint)
    engine_result = work / "engine.json"
    child = [sys.executable, "-m", "benchmarks.stack_vs_engine", "engine", *argv[1:], "--checkpoint",
             str(checkpoint), "--result", str(engine_result)]
    subprocess.run(child, cwd=ROOT, check=True)
    print(f"engine alone done at {time.perf_counter() - started:.0f}s", flush=True)
    stack = run_stack(args, work)
    engine = json.loads(engine_result.read_text())
    result = {"model": args.model, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit(), "hardware": hardware(),
              "command": "python -m benchmarks.stack_vs_engine " + shlex.join(argv),
              "workload": {"input_tokens": args.input_tokens, "output_tokens": args.output_tokens, "greedy": True,
                           "closed_loop": True, "requests_per_user": args.requests_per_user,
                           "duration_s": args.duration},
              "engine_settings": portable_settings(args).parameters(), "num_layers": args.num_layers,
              **compare(engine, stack), "wall_s": round(time.perf_counter() - started, 1)}
    path = args.out / f"{args.model}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown([result]))
    print(f"done in {result['wall_s']}s: {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks.stack_vs_engine_report import write_report

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "report":
        parser = argparse.ArgumentParser(description="merge per-model results into one JSON, markdown and plot")
        parser.add_argument("results", nargs="+", type=Path)
        parser.add_argument("--out", type=Path, required=True, help="path without suffix: .json, .md, .png")
        args = parser.parse_args(argv[1:])
        write_report([json.loads(path.read_text()) for path in args.results], args.out)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("run", "engine"))
    parser.add_argument("--model", default="llama-2-7b", help="llama-2-7b, mistral-7b or tiny")
    parser.add_argument("--num-layers", type=int, default=None, help="override the layer count (smoke runs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    # 96 between 64 and 128: where the per-user speed crosses 60-80 tok/s on an H100, which goodput looks for
    parser.add_argument("--users", default="1,16,64,96,128,256")
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--requests-per-user", type=int, default=2, help="at most this many requests per user")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds after which a point starts nothing")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--kv-cache-bytes", type=int, default=None,
                        help="default: the GPU's free memory; 256 MiB on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gateway-arg", action="append", default=[], help="one more argument for the gateway")
    parser.add_argument("--sender-threads", type=int, default=1, help="the portable model's response_sender_threads")
    parser.add_argument("--switch-interval-us", type=int, default=None,
                        help="the portable model's gil_switch_interval_us (default: the model's own)")
    parser.add_argument("--engine-process", choices=("auto", "true", "false"), default="auto",
                        help="the portable model's engine_process (auto: a process of its own on CUDA)")
    parser.add_argument("--stub-stats", type=float, default=5.0,
                        help="seconds between the stub's timing lines (<out>/<model>_stub_stats.log); 0: none")
    parser.add_argument("--start-timeout", type=float, default=420.0)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stack_vs_engine"))
    parser.add_argument("--checkpoint", default=None,
                        help="serve this checkpoint (with tokenizer.json) instead of writing a random one")
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.mode == "engine":
        return run_engine(args)
    return run(args, argv)


def markdown(results: list[dict]) -> str:
    from benchmarks.stack_vs_engine_report import markdown as render

    return render(results)


if __name__ == "__main__":
    raise SystemExit(main())
