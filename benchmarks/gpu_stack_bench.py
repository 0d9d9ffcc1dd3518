"""Our whole stack against `transformers serve`, on one machine, in one `ingot bench` run.

One invocation does everything, so one command on a GPU machine gives the whole comparison:
  1. writes a random-weight checkpoint (Llama-2-7B's exact shape, a real 32000-token tokenizer with a
     chat template; benchmarks/random_checkpoint.py),
  2. packs it for the portable target and starts Triton (portable engine) and our gateway,
  3. starts `transformers serve` (continuous batching) on the same checkpoint, on the same device,
  4. warms both up, then runs `ingot bench run` with both targets interleaved on one workload and seed,
     greedy decoding, each load point with its own prompts (no prefix-cache hits across points),
  5. stops every process it started, and writes report.json, summary.md, the plots, setup.json (what was
     served how) and server_logs.txt (the tail of each server's log) into --out.

    python -m benchmarks.gpu_stack_bench --out /tmp/stack                       # GPU: Llama-2-7B shape
    python -m benchmarks.gpu_stack_bench --shape tiny --device cpu --out /tmp/stack   # anywhere, small

Both servers hold their weights and KV cache on the one GPU at once (they take turns under load): the
KV cache of each is capped (--kv-cache-gib), the same bytes for both.
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
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.results_io import commit
from benchmarks.serving import answers_ready, wait_serving
from benchmarks.random_checkpoint import SHAPES, write_checkpoint
from engines.triton.launcher import free_port, log_tail

KEY_ENV = "INGOT_STACK_BENCH_KEY"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    log_path: Path
    base_url: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL if it lingers."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def spawn(name: str, command: list[str], log_path: Path, base_url: str, env: dict | None = None) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    print(f"{name}: {shlex.join(command)}", flush=True)
    return Server(name, process, log_path, base_url)


def wait_http(server: Server, path: str, timeout: float) -> None:
    wait_serving(server.process, answers_ready(server.base_url, path), server.log_path, timeout, poll_s=0.5,
                 name=server.name)


# ---- the two servers


def portable_settings(args):
    from engines.repository import PortableSettings

    return PortableSettings(device=args.device, dtype=args.dtype, kv_cache_memory_bytes=kv_bytes(args),
                            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                            enable_prefix_caching=False, max_batch_size=args.max_num_seqs)


def kv_bytes(args) -> int:
    return int(args.kv_cache_gib * 2**30)


def start_triton_with_engine(args, checkpoint: Path, work: Path, stack: ExitStack):
    """Pack the checkpoint for the portable target and start Triton on it: (TritonServer, artifact dir)."""
    from engines.targets.portable import build_portable
    from engines.triton.launcher import start_triton

    artifact = work / "artifact"
    shutil.rmtree(artifact, ignore_errors=True)  # no stale weight shards of an earlier run
    started = time.perf_counter()
    build_portable(checkpoint, artifact, portable_settings(args), model_name=args.served_model_name)
    print(f"artifact packed in {time.perf_counter() - started:.1f}s", flush=True)
    triton = start_triton(artifact / "model_repository", work / "triton")
    stack.callback(triton.stop)
    print(f"triton: pid {triton.process.pid}, log {triton.log_path}", flush=True)
    return triton, artifact


def start_gateway(artifact: Path, triton_url: str, work: Path, key: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "server.cli", "gateway", "--artifact", str(artifact), "--triton-url", triton_url,
               "--port", str(port)]
    return spawn("gateway", command, work / "gateway.log", f"http://127.0.0.1:{port}", {"INGOT_API_KEYS": key})


def hf_kv_blocks(args) -> int:
    """transformers' KV blocks for the same bytes as ours: 2 (K and V) x layers x KV heads x head dim."""
    config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    per_token = (2 * config["num_hidden_layers"] * (config.get("num_key_value_heads") or heads) * head_dim
                 * (4 if args.dtype == "float32" else 2))
    return max(1, kv_bytes(args) // (per_token * args.hf_block_size))


def start_transformers(args, checkpoint: Path, work: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(checkpoint),
               "--host", "127.0.0.1", "--port", str(port), "--device", args.device, "--dtype", args.dtype]
    if args.hf_continuous_batching:
        # the same tokens per step as our engine: transformers' default (8192) sizes its masks beyond a
        # small machine's memory on CPU
        command += ["--continuous-batching", "--cb-block-size", str(args.hf_block_size),
                    "--cb-num-blocks", str(hf_kv_blocks(args)),
                    "--cb-max-batch-tokens", str(args.max_num_batched_tokens)]
    command += args.hf_arg
    return spawn("transformers", command, work / "transformers.log", f"http://127.0.0.1:{port}")


# ---- warm-up and the sweep


def targets(args, gateway: Server, hf: Server, checkpoint: Path) -> list[str]:
    return [f"name=ingot,url={gateway.base_url},server=ingot,model={args.served_model_name},api-key-env={KEY_ENV}",
            f"name=transformers,url={hf.base_url},server=openai,model={checkpoint}"]


def warm_up(specs: list[str], args) -> None:
    """A few concurrent short answers per target: transformers sets up continuous batching on its first
    request (with that request's sampling settings, hence the same temperature as the sweep)."""
    from benchmarks.client import send
    from benchmarks.targets import Target, parse_target
    from benchmarks.workload import BenchRequest

    defaults = Target("", "", temperature=args.temperature)
    requests = [BenchRequest(i, f"Warm up number {i}, then say anything at all.", 16) for i in range(4)]

    async def run(target):
        async with httpx.AsyncClient(timeout=httpx.Timeout(args.request_timeout), trust_env=False) as client:
            return await asyncio.gather(*(send(client, target, r, time.perf_counter(), args.request_timeout)
                                          for r in requests))

    for index, spec in enumerate(specs):
        target = parse_target(spec, defaults, index)
        started = time.perf_counter()
        records = asyncio.run(run(target))
        failed = [r for r in records if not r.ok]
        if failed:
            raise RuntimeError(f"warm-up of {target.name} failed: {failed[0].error}: {failed[0].error_detail}")
        print(f"{target.name}: warmed up in {time.perf_counter() - started:.1f}s", flush=True)


def bench_arguments(args, specs: list[str], checkpoint: Path) -> list[str]:
    argv = ["run"]
    for spec in specs:
        argv += ["--target", spec]
    return argv + ["--tokenizer", str(checkpoint), "--input-tokens", str(args.input_tokens),
                   "--output-tokens", str(args.output_tokens), "--concurrency", args.concurrency,
                   "--num-requests", str(args.num_requests), "--duration", str(args.duration),
                   "--request-timeout", str(args.request_timeout), "--temperature", str(args.temperature),
                   "--fresh-prompts", "--seed", str(args.seed), "--out", str(args.out), "--quiet"]


def setup_record(args, argv: list[str], bench_argv: list[str], hf: Server, started: float) -> dict:
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m benchmarks.gpu_stack_bench " + shlex.join(argv),
              "bench_command": "ingot bench " + shlex.join(bench_argv), "commit": commit(),
              "shape": args.shape, "num_layers": args.num_layers, "device": args.device, "dtype": args.dtype,
              "ingot": {"portable_engine": portable_settings(args).parameters(), "cuda_graphs": args.device != "cpu"},
              "transformers": {"command": shlex.join(hf.process.args), "continuous_batching":
                               args.hf_continuous_batching},
              "kv_cache_bytes_each": kv_bytes(args), "versions": versions(),
              "python": platform.python_version(), "machine": platform.machine(),
              "wall_s_until_report": round(time.perf_counter() - started, 1)}
    return record


def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "tokenizers", "fastapi", "uvicorn", "tritonclient", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        import torch

        found["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # versions are a note in the record, never a reason to fail the run
        found["gpu"] = None
    return found


def write_server_logs(out: Path, logs: dict[str, Path], lines: int = 150) -> None:
    parts = [f"===== {name}: last {lines} lines of {path}\n{log_tail(path, lines)}\n" for name, path in logs.items()]
    (out / "server_logs.txt").write_text("\n".join(parts))


# ---- the run


def run(args, argv: list[str]) -> int:
    from benchmarks.cli import main as bench_main

    started = time.perf_counter()
    work = Path(args.work_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    layers = f"-{args.num_layers}layers" if args.num_layers else ""
    checkpoint = Path(args.checkpoint or work / f"{args.shape}{layers}-{args.dtype}-seed{args.seed}")
    args.checkpoint = str(checkpoint)
    if not (checkpoint / "config.json").is_file():
        write_checkpoint(checkpoint, args.shape, args.device, args.dtype, args.num_layers, args.seed)
    key = secrets.token_urlsafe(24)
    os.environ[KEY_ENV] = key
    logs: dict[str, Path] = {}
    with ExitStack() as stack:
        try:
            triton, artifact = start_triton_with_engine(args, checkpoint, work, stack)
            logs["triton"] = triton.log_path
            hf = start_transformers(args, checkpoint, work)
            stack.callback(hf.stop)
            logs["transformers"] = hf.log_path
            triton.wait_ready(timeout=args.start_timeout)
            print(f"triton ready at {time.perf_counter() - started:.1f}s", flush=True)
            gateway = start_gateway(artifact, triton.grpc_url, work, key)
            stack.callback(gateway.stop)
            logs["gateway"] = gateway.log_path
            wait_http(gateway, "/ready", timeout=120)
            wait_http(hf, "/health", timeout=args.start_timeout)
            print(f"both servers up at {time.perf_counter() - started:.1f}s", flush=True)
            specs = targets(args, gateway, hf, checkpoint)
            warm_up(specs, args)
            bench_argv = bench_arguments(args, specs, checkpoint)
            print("ingot bench " + shlex.join(bench_argv), flush=True)
            code = bench_main(bench_argv)
            record = setup_record(args, argv, bench_argv, hf, started)
            (args.out / "setup.json").write_text(json.dumps(record, indent=1) + "\n")
        finally:
            write_server_logs(args.out, logs)
    summary = args.out / "summary.md"
    if summary.is_file():
        print(summary.read_text())
    print(f"done in {time.perf_counter() - started:.1f}s: {args.out}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--work-dir", default="/tmp/ingot-stack-bench", help="checkpoint, artifact, server logs")
    parser.add_argument("--checkpoint", default=None, help="reuse this checkpoint instead of writing one")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b")
    parser.add_argument("--num-layers", type=int, default=None, help="override the layer count (smoke runs)")
    parser.add_argument("--device", default="cuda", help="cuda or cpu, for both servers")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--served-model-name", default=None, help="our gateway's model id (default SHAPE-random)")
    engine = parser.add_argument_group("servers")
    engine.add_argument("--kv-cache-gib", type=float, default=None,
                        help="KV cache of each server (default 18 on cuda: 64 users x 522 tokens fit; 0.125 on cpu)")
    engine.add_argument("--max-num-seqs", type=int, default=64, help="portable engine: most sequences in a batch")
    engine.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help="portable engine: token budget of a step (default 2048 on cuda, 1024 on cpu: "
                             "see benchmarks/README.md on time to first token)")
    engine.add_argument("--hf-block-size", type=int, default=64, help="transformers serve: KV block size in tokens")
    engine.add_argument("--no-hf-continuous-batching", dest="hf_continuous_batching", action="store_false",
                        help="serve transformers with sequential generate() instead of continuous batching")
    engine.add_argument("--hf-arg", action="append", default=[], help="one more argument for transformers serve")
    engine.add_argument("--start-timeout", type=float, default=420.0, help="seconds each server may take to start")
    load = parser.add_argument_group("workload (ingot bench run)")
    load.add_argument("--input-tokens", type=int, default=256)
    load.add_argument("--output-tokens", type=int, default=256)
    load.add_argument("--concurrency", default="1,4,16,64")
    load.add_argument("--num-requests", type=int, default=64, help="per target and load point")
    load.add_argument("--duration", type=float, default=20.0, help="seconds after which a point starts nothing new")
    load.add_argument("--request-timeout", type=float, default=180.0)
    load.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args(argv)
    on_cpu = args.device == "cpu"
    args.dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    args.kv_cache_gib = args.kv_cache_gib if args.kv_cache_gib is not None else (0.125 if on_cpu else 18.0)
    args.max_num_batched_tokens = args.max_num_batched_tokens or (1024 if on_cpu else 2048)
    args.served_model_name = args.served_model_name or f"{args.shape}-random"
    return run(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
