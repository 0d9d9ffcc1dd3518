"""What the stack itself costs per streamed token, on any machine: CPU time of the gateway and of Triton
with its Python-backend stub, for many concurrent streams of the tiny demo model.

The demo model's forward is nearly free, so the CPU the server processes burn is the serving path's own
cost: the gateway's HTTP, detokenization and SSE work, Triton's gRPC, and the stub's engine loop and
responses. Each load point runs N users in a closed loop (each sends its next streamed completion when
the last one ends); CPU time is read from /proc (psutil) for each process tree before and after.

    python -m benchmarks.stack_overhead --out benchmarks/results/stack_overhead_after
    python -m benchmarks.stack_overhead --streams 4 --output-tokens 8 --out /tmp/overhead   # a quick look
    python -m benchmarks.stack_overhead --compare before/stack_overhead.json after/stack_overhead.json \
        --out benchmarks/results/stack_overhead.md

Only interfaces that every version of the stack has are used (the Triton launcher, the portable target,
`server.cli gateway`), so the same file measures an older commit in its own worktree (copy
benchmarks/serving.py and results_io.py there with it).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from benchmarks.results_io import commit, write_result
from benchmarks.serving import answers_ready, wait_serving
from benchmarks.stack_vs_engine import stop_stack
from engines.triton.processes import cmdline

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Tell me a long story about the sea, the ships that sail it and the people who wait for them."


@dataclass
class Point:
    streams: int
    requests: int
    failed: int
    tokens: int
    chunks: int  # SSE events carrying output text
    wall_s: float
    gateway_cpu_s: float
    triton_cpu_s: float  # tritonserver and its Python-backend stub(s)
    stub_cpu_s: float
    # the stub's CPU seconds by thread (engines/triton names its threads in the OS): the engine loop
    # (the model's forward included), the response sender, request intake (the stub's main thread runs
    # `execute`) and the rest (the cancellation watch, the stub's own IPC threads)
    stub_threads_cpu_s: dict[str, float] | None = None

    @property
    def derived(self) -> dict:
        per_token = 1e6 / max(self.tokens, 1)
        figures = {"tok_s": round(self.tokens / self.wall_s, 1),
                   "chunks_per_token": round(self.chunks / max(self.tokens, 1), 3),
                   "gateway_us_per_token": round(self.gateway_cpu_s * per_token, 1),
                   "triton_us_per_token": round(self.triton_cpu_s * per_token, 1),
                   "stub_us_per_token": round(self.stub_cpu_s * per_token, 1),
                   "stack_us_per_token": round((self.gateway_cpu_s + self.triton_cpu_s) * per_token, 1)}
        threads = self.stub_threads_cpu_s or {}
        if threads:
            figures.update({"engine_us_per_token": round(threads.get("engine", 0.0) * per_token, 1),
                            "sender_us_per_token": round(threads.get("sender", 0.0) * per_token, 1),
                            "intake_us_per_request": round(threads.get("intake", 0.0) * 1e6 / max(self.requests, 1),
                                                           1),
                            "stub_rest_us_per_token": round(threads.get("rest", 0.0) * per_token, 1)})
        return figures


def tree_cpu(pid: int) -> dict[int, float]:
    """user + system CPU seconds of `pid` and every process below it, by pid."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return seconds


THREAD_ROLES = {"portable-engine": "engine", "portable-sender": "sender", "portable-receive": "receiver"}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of process `pid`: (its role, user + system CPU seconds), by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    # the engine's own process (engine_process): every thread of it is the engine's
    engine_process = "engines.triton.engine_process" in cmdline(pid)
    threads = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tid = int(task.name)
        if engine_process:
            role = "engine"
        else:
            role = "intake" if tid == pid else THREAD_ROLES.get(name.rstrip("0123456789"), "rest")
        threads[tid] = (role, (int(fields[11]) + int(fields[12])) / ticks)  # utime, stime
    return threads


def roles_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    spent: dict[str, float] = {}
    for tid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - before.get(tid, (role, 0.0))[1]
    return {role: round(value, 3) for role, value in spent.items()}


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


# ---- the stack


def start_stack(args, work: Path, key: str):
    """Demo artifact, Triton and the gateway; returns (triton, gateway process, base URL)."""
    from engines.demo import make_demo_checkpoint
    from engines.repository import PortableSettings
    from engines.targets.portable import build_portable
    from engines.triton.launcher import free_port, start_triton

    checkpoint = make_demo_checkpoint("llama", work / "checkpoint")
    settings = PortableSettings(device="cpu", kv_cache_memory_bytes=256 << 20, max_num_seqs=args.max_num_seqs,
                                max_num_batched_tokens=args.max_num_batched_tokens, max_batch_size=args.max_num_seqs,
                                cpu_threads=args.cpu_threads,
                                gil_switch_interval_us=args.switch_interval_us or None,
                                engine_process=args.engine_process)
    artifact = work / "artifact"
    build_portable(checkpoint, artifact, settings, model_name="demo-llama")
    triton = start_triton(artifact / "model_repository", work / "triton")
    triton.wait_ready(timeout=300)
    port = free_port()
    command = [sys.executable, "-m", "server.cli", "gateway", "--artifact", str(artifact),
               "--triton-url", triton.grpc_url, "--port", str(port)] + args.gateway_arg
    log = open(work / "gateway.log", "wb")
    gateway = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env=dict(os.environ, INGOT_API_KEYS=key, PYTHONUNBUFFERED="1"))
    base_url = f"http://127.0.0.1:{port}"
    wait_serving(gateway, answers_ready(base_url), work / "gateway.log", timeout=120)
    return triton, gateway, base_url


# ---- the load


async def stream_one(client: httpx.AsyncClient, base_url: str, key: str, max_tokens: int) -> tuple[int, int]:
    """One streamed completion: (tokens from usage, chunks carrying text)."""
    body = {"model": "demo-llama", "prompt": PROMPT, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "temperature": 0.0, "stream_options": {"include_usage": True}}
    tokens = chunks = 0
    async with client.stream("POST", f"{base_url}/v1/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text"):
                chunks += 1
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return tokens, chunks


async def load_point(base_url: str, key: str, streams: int, requests_per_user: int, max_tokens: int):
    results, failed = [], 0
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits, trust_env=False) as client:
        async def user():
            nonlocal failed
            for _ in range(requests_per_user):
                try:
                    results.append(await stream_one(client, base_url, key, max_tokens))
                except (httpx.HTTPError, RuntimeError):
                    failed += 1

        await asyncio.gather(*(user() for _ in range(streams)))
    return results, failed


def measure(args, triton, gateway, base_url: str, key: str, streams: int) -> Point:
    asyncio.run(load_point(base_url, key, min(streams, 4), 1, 4))  # warm both paths up, not measured
    server_pid = triton.process.pid
    gateway_before, triton_before = tree_cpu(gateway.pid), tree_cpu(server_pid)
    threads_before = {pid: thread_cpu(pid) for pid in triton_before if pid != server_pid}
    started = time.perf_counter()
    results, failed = asyncio.run(load_point(base_url, key, streams, args.requests_per_user, args.output_tokens))
    wall = time.perf_counter() - started
    gateway_after, triton_after = tree_cpu(gateway.pid), tree_cpu(server_pid)
    threads_after = {pid: thread_cpu(pid) for pid in threads_before}
    stubs = {pid for pid in triton_after if pid != server_pid}
    stub_cpu = sum(triton_after[pid] - triton_before.get(pid, 0.0) for pid in stubs)
    by_role: dict[str, float] = {}
    for pid, threads in threads_after.items():
        for role, seconds in roles_spent(threads_before[pid], threads).items():
            by_role[role] = round(by_role.get(role, 0.0) + seconds, 3)
    return Point(streams, len(results) + failed, failed, sum(t for t, _ in results), sum(c for _, c in results),
                 round(wall, 3), round(cpu_spent(gateway_before, gateway_after), 3),
                 round(cpu_spent(triton_before, triton_after), 3), round(stub_cpu, 3), by_role)


# ---- records


def record(args, argv: list[str], points: list[Point]) -> dict:
    return {"label": args.label, "commit": commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "hardware": f"{psutil.cpu_count()}-core CPU machine, no GPU ({platform.machine()}), shared with other "
                        "work: CPU time per token is the measure, wall-clock figures are only indicative",
            "command": "python -m benchmarks.stack_overhead " + shlex.join(argv),
            "model": "demo-llama (tiny random weights, CPU)", "cpu_threads": args.cpu_threads,
            "output_tokens": args.output_tokens,
            "requests_per_user": args.requests_per_user, "max_num_seqs": args.max_num_seqs,
            "points": [{**asdict(p), **p.derived} for p in points]}


COLUMNS = ("streams", "tokens", "failed", "chunks_per_token", "gateway_us_per_token", "triton_us_per_token",
           "stub_us_per_token", "stack_us_per_token", "tok_s")
# the stub by thread (runs of older commits, whose stub threads had no OS names, lack these)
THREAD_COLUMNS = ("streams", "engine_us_per_token", "sender_us_per_token", "intake_us_per_request",
                  "stub_rest_us_per_token")


def table(result: dict, columns: tuple[str, ...] = COLUMNS) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(point.get(c, "–")) for c in columns) + " |" for point in result["points"]]
    return lines


def markdown(result: dict) -> str:
    head = [f"# Stack overhead: {result['label']}", "",
            f"- **Hardware**: {result['hardware']}", f"- **Date**: {result['date']}",
            f"- **Commit**: {result['commit']}", f"- **Command**: `{result['command']}`",
            f"- **Workload**: {result['model']}, {result['output_tokens']} streamed tokens per request, "
            f"{result['requests_per_user']} requests per user, closed loop", ""]
    threads = ["", "The stub's CPU by thread (the engine thread includes the demo model's forward):", ""]
    return "\n".join(head + table(result) + threads + table(result, THREAD_COLUMNS)) + "\n"


def compare(before: dict, after: dict) -> str:
    lines = ["# Stack overhead: before and after", "",
             "CPU microseconds per streamed token of the gateway process and of Triton with its Python-backend "
             "stub (`triton` includes `stub`), and SSE chunks per token, for the same workload on the same "
             f"machine ({after['hardware']}).", "",
             f"- before: commit {before['commit']}, {before['date']}: `{before['command']}`",
             f"- after: commit {after['commit']}, {after['date']}: `{after['command']}`", "",
             "| streams | version | " + " | ".join(COLUMNS[3:]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    for columns in (COLUMNS, THREAD_COLUMNS):
        if columns is THREAD_COLUMNS:
            lines += ["", "The stub's CPU by thread:", "",
                      "| streams | version | " + " | ".join(columns[1:]) + " |", "|" + "---|" * (len(columns) + 1)]
        skip = 3 if columns is COLUMNS else 1
        for point_before in before["points"]:
            for name, result in (("before", before), ("after", after)):
                point = next((p for p in result["points"] if p["streams"] == point_before["streams"]), None)
                if point is not None:
                    lines.append(f"| {point['streams']} | {name} | "
                                 + " | ".join(str(point.get(c, "–")) for c in columns[skip:]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="report folder (--compare: the .md file)")
    parser.add_argument("--label", default="this commit")
    parser.add_argument("--streams", default="64,256", help="concurrent streams per load point")
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--requests-per-user", type=int, default=2)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    # torch's worker threads spin while they wait: with more than one, the stub's CPU time follows the
    # machine's load more than the serving path's cost
    parser.add_argument("--cpu-threads", type=int, default=1, help="the demo model's torch threads in the stub")
    parser.add_argument("--switch-interval-us", type=int, default=500,
                        help="the stub's GIL switch interval (gil_switch_interval_us); 0: Python's own 5 ms")
    parser.add_argument("--engine-process", choices=("auto", "true", "false"), default="auto",
                        help="the portable model's engine_process (auto: in the stub on CPU)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a fresh folder under /tmp")
    parser.add_argument("--gateway-arg", action="append", default=[], help="one more argument for the gateway")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE_JSON", "AFTER_JSON"))
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        args.out.write_text(compare(before, after))
        print(args.out.read_text())
        return 0
    work = (args.work_dir or Path(f"/tmp/ingot-overhead-{secrets.token_hex(4)}")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(16)
    triton, gateway, base_url = start_stack(args, work, key)
    try:
        points = [measure(args, triton, gateway, base_url, key, int(n)) for n in args.streams.split(",")]
    finally:
        stop_stack(triton, gateway)
    result = record(args, argv, points)
    write_result(args.out, "stack_overhead", result, markdown(result))
    return 0 if all(p.failed == 0 for p in points) else 1


if __name__ == "__main__":
    raise SystemExit(main())
