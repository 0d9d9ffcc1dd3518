"""Engine-level benchmark on one CUDA GPU: the portable engine against transformers, side by side.

Builds random-weight bf16 models with the exact shapes of Llama-2-7B and Mistral-7B on the GPU (no
downloads) and measures, per model:
  (a) batch-1 decode tokens/s (one prompt, greedy);
  (b) N requests x P prompt tokens / O output tokens, all submitted at once: total output tokens/s;
for each engine asked for: `portable` (engines.portable), `hf-generate` (transformers `generate`:
batch 1 for (a), static sub-batches for (b)) and `hf-cb` (transformers continuous batching,
`generate_batch`, for (b)). Each row carries the memory-bandwidth roofline of its case.

    python -m benchmarks.engine_bench --models llama-2-7b,mistral-7b --engines portable,hf-generate,hf-cb

Results go to benchmarks/results/engine_<tag>.json and .md, rewritten after every row, so a run cut
short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import inspect
import json
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.roofline import (
    MODEL_CONFIGS,
    ModelShape,
    batch1_decode_roofline,
    decode_step_bytes,
    measure_copy_bandwidth,
    measure_matmul_rate,
    workload_roofline,
)

ENGINES = ("portable", "hf-generate", "hf-cb")
# Targets of issue 3, for the markdown summary.
TARGETS = {"batch1_fraction": 0.80, "workload_tokens_per_s": 10_000, "workload_vs_hf_cb": 15.0,
           "workload_fraction": 0.70}


# ---- models


def hf_config(name: str, num_layers: int | None):
    from transformers import LlamaConfig, MistralConfig

    raw = dict(MODEL_CONFIGS[name])
    architectures = raw.pop("architectures")
    model_type = raw.pop("model_type")
    if num_layers:
        raw["num_hidden_layers"] = num_layers
    config_cls = {"llama": LlamaConfig, "mistral": MistralConfig}[model_type]
    # No end-of-sequence token: random weights would stop at arbitrary points otherwise.
    config = config_cls(**raw, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    config.architectures = architectures
    return config


def build_hf_model(name: str, num_layers: int | None, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config(name, num_layers), dtype=torch.bfloat16,
                                                 attn_implementation=attn)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompts_for(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (count, length), generator=gen).tolist()


def free_cuda():
    gc.collect()
    torch.cuda.empty_cache()


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


# ---- transformers


def hf_generate_batch1(model, prompt: list[int], new_tokens: int) -> dict:
    ids = torch.tensor([prompt], device="cuda")
    mask = torch.ones_like(ids)

    def run(n):
        with torch.inference_mode():
            return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    run(8)  # warm-up
    t1, _ = timed(lambda: run(1))
    tn, out = timed(lambda: run(new_tokens))
    produced = out.shape[1] - len(prompt)
    return {"tokens": produced, "seconds": tn, "prefill_plus_first_token_s": t1,
            "tokens_per_s": (produced - 1) / (tn - t1), "end_to_end_tokens_per_s": produced / tn,
            "note": "decode tok/s = (N-1) / (t(N) - t(1)): prefill excluded"}


def hf_generate_workload(model, prompts: list[list[int]], new_tokens: int, shape: ModelShape) -> dict:
    total_len = len(prompts[0]) + new_tokens
    free, _ = torch.cuda.mem_get_info()
    per_seq = 1.3 * total_len * shape.kv_bytes_per_token + 3 * len(prompts[0]) * shape.intermediate * 2
    sub_batch = 1
    while sub_batch * 2 <= len(prompts) and sub_batch * 2 * per_seq < free - (8 << 30):
        sub_batch *= 2
    produced = 0

    def run():
        nonlocal produced
        for start in range(0, len(prompts), sub_batch):
            ids = torch.tensor(prompts[start:start + sub_batch], device="cuda")
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False)
            produced += (out.shape[1] - ids.shape[1]) * ids.shape[0]
            del out
    seconds, _ = timed(run)
    return {"tokens": produced, "seconds": seconds, "tokens_per_s": produced / seconds,
            "note": f"static batches of {sub_batch} (memory bound on the dynamic cache), no padding"}


def _cb_attention_candidates(model) -> list[str]:
    """Names transformers' continuous batching accepts differ between 5.x releases: try in order."""
    return ["paged|sdpa", "sdpa_paged", "sdpa"]


def hf_continuous_batching(model, prompts: list[list[int]], new_tokens: int) -> dict:
    from transformers import GenerationConfig

    accepted = set(inspect.signature(model.generate_batch).parameters)
    kwargs = {"progress_bar": False} if "progress_bar" in accepted else {}

    def generate(inputs, max_new):
        # No inference_mode here: the manager's loop runs in its own thread and updates its tensors in place.
        config = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=None, pad_token_id=0)
        outputs = model.generate_batch(inputs=inputs, generation_config=config, **kwargs)
        failed = [out for out in outputs.values() if getattr(out, "error", None)]
        if failed or not outputs:
            raise RuntimeError(f"{len(failed)} of {len(inputs)} requests failed: {failed[0].error if failed else ''}")
        return sum(len(out.generated_tokens) for out in outputs.values())

    original = model.config._attn_implementation
    errors = []
    for attn in _cb_attention_candidates(model):
        try:
            model.set_attn_implementation(attn)
            generate([p[:32] for p in prompts[:8]], 8)  # warm-up, and proof that this implementation runs
        except Exception as exc:  # try the next name
            errors.append(f"{attn}: {type(exc).__name__}: {str(exc)[:200]}")
            model.set_attn_implementation(original)
            continue
        seconds, produced = timed(lambda: generate(prompts, new_tokens))
        model.set_attn_implementation(original)
        return {"tokens": produced, "seconds": seconds, "tokens_per_s": produced / seconds,
                "note": f"generate_batch, attn_implementation={attn!r}", "tried": errors}
    raise RuntimeError("no attention implementation worked for generate_batch: " + " | ".join(errors))


# ---- portable engine


def portable_engine(checkpoint: Path, shape: ModelShape, max_len: int, max_seqs: int):
    from engines.portable.config import EngineConfig
    from engines.portable.engine import LLMEngine

    weights = shape.params * shape.dtype_bytes
    free, _ = torch.cuda.mem_get_info()
    kv_bytes = int(max(1 << 30, 0.85 * (free - weights) - (6 << 30)))
    config = EngineConfig(device="cuda", dtype="bfloat16", block_size=16, kv_cache_memory_bytes=kv_bytes,
                          max_num_seqs=max_seqs, max_num_batched_tokens=8192, max_model_len=max_len)
    return LLMEngine.from_checkpoint(checkpoint, config), kv_bytes


def portable_batch1(engine, prompt: list[int], new_tokens: int) -> dict:
    from engines.portable.sampling import SamplingParams

    def run(n):
        return engine.generate([prompt], SamplingParams(max_new_tokens=n, temperature=0.0, end_id=None))
    run(8)
    t1, _ = timed(lambda: run(1))
    tn, out = timed(lambda: run(new_tokens))
    produced = len(out[0])
    return {"tokens": produced, "seconds": tn, "prefill_plus_first_token_s": t1,
            "tokens_per_s": (produced - 1) / (tn - t1), "end_to_end_tokens_per_s": produced / tn,
            "note": "decode tok/s = (N-1) / (t(N) - t(1)): prefill excluded"}


def portable_workload(engine, prompts: list[list[int]], new_tokens: int, kv_bytes: int) -> dict:
    from engines.portable.sampling import SamplingParams

    seconds, outs = timed(lambda: engine.generate(
        prompts, SamplingParams(max_new_tokens=new_tokens, temperature=0.0, end_id=None)))
    produced = sum(len(o) for o in outs)
    return {"tokens": produced, "seconds": seconds, "tokens_per_s": produced / seconds,
            "note": f"engine.generate, KV cache {kv_bytes / 2**30:.1f} GiB"}


def portable_decode_step(engine, prompts: list[list[int]], steps: int, shape: ModelShape, bandwidth: float,
                         profile_path: Path) -> dict:
    """Time full-batch decode steps once every prompt is prefilled, and profile a few of them."""
    from engines.portable.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=2 * steps + 8, temperature=0.0, end_id=None)
    ids = [f"profile-{index}" for index in range(len(prompts))]
    for rid, prompt in zip(ids, prompts, strict=True):
        engine.add_request(rid, prompt, params)
    started: set[str] = set()
    while len(started) < len(ids):
        started.update(out.request_id for out in engine.step())
    # consecutive steps with one sync at each end: the engine may launch a step before the last one
    # ends, so a sync around every step would serialise what it overlaps
    seconds, _ = timed(lambda: [engine.step() for _ in range(steps)])
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            engine.step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    try:
        table = averages.table(sort_by="device_time_total", row_limit=30)
    except Exception:  # older spelling
        table = averages.table(sort_by="cuda_time_total", row_limit=30)
    profile_path.write_text(table)
    for rid in ids:
        engine.abort(rid)
    engine.step()
    context = len(prompts[0]) + 1 + steps // 2
    floor = decode_step_bytes(shape, [context] * len(prompts))["total"] / bandwidth
    mean = seconds / steps
    return {"batch": len(prompts), "context": context, "step_ms": mean * 1e3, "floor_ms": floor * 1e3,
            "tokens_per_s": len(prompts) / mean, "profile": profile_path.name,
            "note": f"mean of {steps} consecutive decode steps (engine.step, CUDA graphs as the engine chooses)"}


# ---- the run


class Results:
    def __init__(self, path: Path, meta: dict):
        self.path, self.meta, self.rows = path, meta, []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items() if k != "traceback"}
        print("ROW", json.dumps(shown), flush=True)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.with_suffix(".json").write_text(json.dumps({**self.meta, "rows": self.rows}, indent=2))
        self.path.with_suffix(".md").write_text(markdown(self.meta, self.rows))


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Engine benchmark: {meta['device']}", "",
             f"- date: {meta['date']}", f"- command: `{meta['command']}`",
             f"- versions: torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, "
             f"triton {meta['versions'].get('triton')}, python {meta['versions']['python']}",
             f"- measured device copy bandwidth: {meta['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + write); "
             f"bf16 matmul: {meta['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s",
             f"- workload: {meta['workload']['requests']} requests x {meta['workload']['prompt_len']} prompt / "
             f"{meta['workload']['output_len']} output tokens; batch-1: {meta['batch1_tokens']} new tokens after a "
             f"{meta['workload']['prompt_len']}-token prompt",
             "- weights are random (exact shapes, bf16); greedy decoding; no end-of-sequence token", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {model}", "", "| case | engine | tok/s | roofline tok/s | of roofline | vs hf-generate | "
                  "vs hf-cb | note |", "|---|---|---|---|---|---|---|---|"]
        model_rows = [r for r in rows if r["model"] == model]
        for case in ("batch1", "workload"):
            base = {r["engine"]: r.get("tokens_per_s") for r in model_rows if r["case"] == case}
            for r in (r for r in model_rows if r["case"] == case):
                if "error" in r:
                    error = " ".join(r["error"].split()).replace("|", "/")[:160]
                    lines.append(f"| {case} | {r['engine']} | — | {r['roofline_tokens_per_s']:,.0f} | | | | "
                                 f"skipped/failed: {error} |")
                    continue
                tps = r["tokens_per_s"]
                vs = [f"{tps / base[e]:.2f}x" if base.get(e) else "" for e in ("hf-generate", "hf-cb")]
                lines.append(f"| {case} | {r['engine']} | {tps:,.1f} | {r['roofline_tokens_per_s']:,.0f} | "
                             f"{tps / r['roofline_tokens_per_s']:.1%} | {vs[0]} | {vs[1]} | {r.get('note', '')} |")
        for r in model_rows:
            if r["case"] == "decode_step" and "error" not in r:
                lines.append(f"One portable decode step at batch {r['batch']}, context {r['context']}: "
                             f"{r['step_ms']:.2f} ms against a floor of {r['floor_ms']:.2f} ms "
                             f"({r['floor_ms'] / r['step_ms']:.0%} of roofline); kernel profile in {r['profile']}.")
        lines.append("")
    lines += ["Roofline: bytes moved (weights + KV read + KV write per decode step; prefill at the larger of "
              "bytes/bandwidth and FLOPs/matmul rate) over the measured rates, from `benchmarks/roofline.py`.", ""]
    return "\n".join(lines)


def versions() -> dict:
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        found["triton"] = None
    return found


def run_model(name: str, args, engines: list[str], results: Results, bandwidth: float, matmul_rate: float):
    shape = ModelShape.from_config(name, {**MODEL_CONFIGS[name],
                                          **({"num_hidden_layers": args.num_layers} if args.num_layers else {})})
    prompts = prompts_for(args.requests, args.prompt_len, shape.vocab)
    b1_roof = batch1_decode_roofline(shape, args.prompt_len, args.batch1_tokens, bandwidth)["tokens_per_s"]
    wl_roof = workload_roofline(shape, args.requests, args.prompt_len, args.output_len, bandwidth,
                                matmul_rate)["output_tokens_per_s"]
    step_context = args.prompt_len + 1 + args.profile_steps // 2
    step_roof = len(prompts) * bandwidth / decode_step_bytes(shape, [step_context] * len(prompts))["total"]
    roofline = {"batch1": b1_roof, "workload": wl_roof, "decode_step": step_roof}

    def record(engine, case, fn, *fn_args):
        row = {"model": name, "engine": engine, "case": case, "roofline_tokens_per_s": roofline[case]}
        try:
            row.update(fn(*fn_args))
        except Exception as exc:  # keep measuring the other rows
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()[-2000:]
        results.add(row)
        free_cuda()

    started = time.perf_counter()
    model = build_hf_model(name, args.num_layers)
    print(f"{name}: built in {time.perf_counter() - started:.1f}s", flush=True)
    checkpoint = None
    if "portable" in engines:
        try:
            importlib.import_module("engines.portable.engine")  # is the engine importable at all?
            checkpoint = Path(tempfile.mkdtemp(prefix=f"ingot-{name}-", dir=args.checkpoint_root))
            started = time.perf_counter()
            model.save_pretrained(checkpoint)
            print(f"{name}: checkpoint saved in {time.perf_counter() - started:.1f}s", flush=True)
        except Exception as exc:
            reason = f"portable engine unavailable: {type(exc).__name__}: {exc}"
            for case in ("batch1", "workload"):
                results.add({"model": name, "engine": "portable", "case": case,
                             "roofline_tokens_per_s": roofline[case], "error": reason})
            checkpoint = None
    if "hf-generate" in engines:
        record("hf-generate", "batch1", hf_generate_batch1, model, prompts[0], args.batch1_tokens)
        if not args.skip_hf_generate_workload:
            record("hf-generate", "workload", hf_generate_workload, model, prompts, args.output_len, shape)
    if "hf-cb" in engines:
        record("hf-cb", "workload", hf_continuous_batching, model, prompts, args.output_len)
    del model
    free_cuda()
    if checkpoint is not None:
        max_len = args.prompt_len + max(args.output_len, args.batch1_tokens) + 16
        try:
            started = time.perf_counter()
            engine, kv_bytes = portable_engine(checkpoint, shape, max_len, args.requests)
            print(f"{name}: portable engine up in {time.perf_counter() - started:.1f}s", flush=True)
        except Exception as exc:
            for case in ("batch1", "workload"):
                results.add({"model": name, "engine": "portable", "case": case,
                             "roofline_tokens_per_s": roofline[case],
                             "error": f"engine did not start: {type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-2000:]})
            return
        record("portable", "batch1", portable_batch1, engine, prompts[0], args.batch1_tokens)
        record("portable", "workload", portable_workload, engine, prompts, args.output_len, kv_bytes)
        if args.profile_steps:
            record("portable", "decode_step", portable_decode_step, engine, prompts, args.profile_steps, shape,
                   bandwidth, Path(args.out_dir) / f"engine_profile_{name}.txt")
        del engine
        free_cuda()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="llama-2-7b,mistral-7b")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"any of {', '.join(ENGINES)}")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--batch1-tokens", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=None, help="override the layer count (smoke runs)")
    parser.add_argument("--skip-hf-generate-workload", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=16,
                        help="after the workload, time this many full-batch portable decode steps and profile 3")
    parser.add_argument("--checkpoint-root", default=None, help="where the portable engine's checkpoints go")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--tag", default=None, help="file name: engine_<tag>.json/.md")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    if not torch.cuda.is_available():
        sys.exit("engine_bench needs a CUDA GPU")

    bandwidth, matmul_rate = measure_copy_bandwidth(), measure_matmul_rate()
    device = torch.cuda.get_device_name()
    tag = args.tag or device.lower().replace("nvidia", "").strip().split()[0]
    meta = {"device": device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.engine_bench " + shlex.join(sys.argv[1:] if argv is None else argv),
            "versions": versions(), "bandwidth_bytes_per_s": bandwidth, "matmul_flops_per_s": matmul_rate,
            "workload": {"requests": args.requests, "prompt_len": args.prompt_len, "output_len": args.output_len},
            "batch1_tokens": args.batch1_tokens, "num_layers_override": args.num_layers, "targets": TARGETS}
    print(f"{device}: copy {bandwidth / 1e12:.2f} TB/s, bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s", flush=True)
    results = Results(Path(args.out_dir) / f"engine_{tag}", meta)
    for name in args.models.split(","):
        run_model(name, args, engines, results, bandwidth, matmul_rate)
    print(markdown(meta, results.rows))


if __name__ == "__main__":
    main()
