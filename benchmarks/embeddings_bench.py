"""Embeddings per second through the whole stack (gateway → Triton's dynamic batcher → all-MiniLM-L6-v2),
against the same model called in-process (transformers, batch 32: the ceiling on this machine).

    python -m benchmarks.embeddings_bench --out benchmarks/results/embeddings_cpu

Closed loop: C clients, each sending requests of B inputs (sentences of about 12 words, distinct per request)
back to back for --seconds; embeddings/s = inputs answered / wall time. Writes embeddings.json and
embeddings.md into --out.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.results_io import commit
from benchmarks.serving import answers_ready, wait_serving

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
KEY = "bench-key"
WORDS = ("paged attention keeps the cache in blocks so batching many requests wastes little memory "
         "while the scheduler mixes prefill and decode steps across clients").split()


def sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)) + f" {i}"


def in_process(seconds: float, batch: int = 32) -> tuple[float, float]:
    """Embeddings per wall second and per CPU second of this process (the second is what load cannot hide)."""
    from transformers import AutoTokenizer

    from engines.embedding import Embedder, read_embedding_spec, resolve_model_dir

    model_dir = resolve_model_dir(MODEL)
    embedder, tokenizer = Embedder(model_dir, read_embedding_spec(model_dir)), AutoTokenizer.from_pretrained(
        str(model_dir))
    done, start, cpu, i = 0, time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        ids = tokenizer([sentence(i + k) for k in range(batch)])["input_ids"]
        embedder.embed(ids)
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


async def closed_loop(base_url: str, clients: int, batch: int, seconds: float) -> dict:
    counter, latencies = [0], []

    async def client(worker: int, http: httpx.AsyncClient, deadline: float) -> int:
        answered = 0
        while time.perf_counter() < deadline:
            counter[0] += 1
            inputs = [sentence(counter[0] * batch + k) for k in range(batch)]
            sent = time.perf_counter()
            response = await http.post("/v1/embeddings", json={"model": MODEL, "input": inputs})
            response.raise_for_status()
            latencies.append(time.perf_counter() - sent)
            answered += len(response.json()["data"])
        return answered

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=300) as http:
        start = time.perf_counter()
        answered = await asyncio.gather(*(client(w, http, start + seconds) for w in range(clients)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {"clients": clients, "batch": batch, "requests": len(latencies), "embeddings": sum(answered),
            "embeddings_per_s": round(sum(answered) / wall, 1),
            "p50_latency_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p95_latency_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1)}


def start_stack(work: Path):
    from engines.demo import make_demo_checkpoint
    from engines.embedding_artifact import add_embedding_model
    from engines.repository import PortableSettings
    from engines.targets.portable import build_portable
    from engines.triton.launcher import free_port, start_triton

    artifact = work / "artifact"
    build_portable(make_demo_checkpoint("llama", work / "checkpoint"), artifact,
                   PortableSettings(kv_cache_memory_bytes=32 << 20), model_name="demo-llama")
    add_embedding_model(artifact, MODEL)
    triton = start_triton(artifact / "model_repository", work / "triton")
    triton.wait_ready(timeout=300)
    port = free_port()
    env = dict(os.environ, INGOT_API_KEYS=KEY)
    gateway = subprocess.Popen([sys.executable, "-m", "server.cli", "gateway", "--artifact", str(artifact),
                                "--triton-url", triton.grpc_url, "--port", str(port)], cwd=ROOT, env=env,
                               stdout=open(work / "gateway.log", "wb"), stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(gateway, answers_ready(base_url), work / "gateway.log", timeout=120, name="the gateway")
    except BaseException:  # nothing outlives a failed start
        gateway.kill()
        gateway.wait()
        triton.stop()
        raise
    return triton, gateway, base_url


def markdown(record: dict) -> str:
    rows = "\n".join(f"| {r['clients']} | {r['batch']} | {r['embeddings_per_s']} | {r['p50_latency_ms']} | "
                     f"{r['p95_latency_ms']} |" for r in record["stack"])
    return (f"# Embeddings per second on CPU ({MODEL})\n\n"
            f"{record['date']}, commit {record['commit']}, {record['hardware']}; load average (1, 5, 15 min) "
            f"{record['load_average_at_start']} at the start, {record['load_average_at_end']} at the end: the "
            "machine is shared, so read the figures against each other, not as this model's CPU speed.\n"
            f"Command: `{record['command']}`\n\n"
            f"In-process ceiling (transformers, batch 32, same threads): **{record['in_process_per_s']}** "
            f"embeddings/s, {record['in_process_per_cpu_s']} per CPU second of the process.\n\n"
            "| clients | inputs per request | embeddings/s | p50 ms | p95 ms |\n| --- | --- | --- | --- | --- |\n"
            f"{rows}\n\nThrough the stack every input is its own Triton request; Triton's dynamic batcher "
            "(max_queue_delay 2 ms) gathers them into one forward pass, across clients.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    record = {"date": datetime.date.today().isoformat(), "command": " ".join(["python -m benchmarks.embeddings_bench",
                                                                             *(argv or sys.argv[1:])]),
              "commit": commit(),
              "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
              "stack": []}
    per_wall_s, per_cpu_s = in_process(args.seconds)
    record["in_process_per_s"], record["in_process_per_cpu_s"] = round(per_wall_s, 1), round(per_cpu_s, 1)
    with tempfile.TemporaryDirectory(prefix="ingot-embed-bench-") as work:
        triton, gateway, base_url = start_stack(Path(work))
        try:
            asyncio.run(closed_loop(base_url, 2, 4, 3))  # warm-up
            for clients, batch in ((1, 1), (16, 1), (1, 32), (8, 32)):
                record["stack"].append(asyncio.run(closed_loop(base_url, clients, batch, args.seconds)))
        finally:
            gateway.terminate()
            gateway.wait(timeout=20)
            triton.stop()
    record["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    (out / "embeddings.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "embeddings.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
