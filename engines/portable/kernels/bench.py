"""Kernel microbenchmarks on a CUDA GPU: paged decode attention against the plain-torch reference and
against SDPA on a dense KV layout, prefill attention (Triton against gather + SDPA), and the KV write.

Each variant is timed as a CUDA graph of calls over rotating input sets (launch gaps out, L2 reuse
out for small cases), median over replays.

    python -m engines.portable.kernels.bench --out results.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from engines.portable.kernels import reference
from engines.portable.kernels.kv_cache import write_kv
from engines.portable.kernels.paged_attention import choose_num_splits, paged_decode_attention
from engines.portable.kernels.prefill_attention import gather_prefill_attention, paged_prefill_attention

PAGE = 16
HEAD_DIM = 128
SHAPES = {"llama-2-7b (32/32)": (32, 32), "mistral-7b (32/8)": (32, 8)}
ROTATE_BYTES = 256 << 20  # spread small cases over this much memory so they miss L2


def time_us(calls: list, replays: int = 20) -> tuple[float, str]:
    """Median microseconds per call: a graph of `calls` in sequence, replayed (events as fallback)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        run, mode = graph.replay, "graph"
    except Exception:  # some variant cannot be captured: time eager launches instead
        def run():
            for call in calls:
                call()
        mode = "eager"
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times), mode


def _decode_sets(batch: int, ctx: int, heads: int, kv_heads: int, dtype):
    per_set = 2 * batch * ctx * kv_heads * HEAD_DIM * 2
    count = max(1, min(32, math.ceil(ROTATE_BYTES / per_set)))
    blocks_per_seq = math.ceil(ctx / PAGE)
    sets = []
    for _ in range(count):
        num_blocks = batch * blocks_per_seq
        k = torch.randn(num_blocks, PAGE, kv_heads, HEAD_DIM, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        tables = torch.randperm(num_blocks, device="cuda").view(batch, blocks_per_seq).to(torch.int32)
        lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, heads, HEAD_DIM, device="cuda", dtype=dtype)
        sets.append((q, k, v, tables, lens))
    return sets, per_set


def bench_decode(batches, ctx, dtype, configs) -> list[dict]:
    rows = []
    for shape_name, (heads, kv_heads) in SHAPES.items():
        for batch in batches:
            rows += _decode_case(shape_name, heads, kv_heads, batch, ctx, dtype, configs)
            torch.cuda.empty_cache()
    return rows


def _decode_case(shape_name, heads, kv_heads, batch, ctx, dtype, configs) -> list[dict]:
    rows = []
    scale = 1 / math.sqrt(HEAD_DIM)
    sets, kv_bytes = _decode_sets(batch, ctx, heads, kv_heads, dtype)
    moved = kv_bytes + 2 * batch * heads * HEAD_DIM * 2
    q0, k0, v0, t0, l0 = sets[0]
    expected = reference.decode_attention_ref(q0, k0, v0, t0, l0, scale)

    def add(variant, calls, check=None, **extra):
        try:
            us, mode = time_us(calls)
        except Exception as exc:  # report, keep going
            rows.append({"shape": shape_name, "batch": batch, "context": ctx, "variant": variant,
                         "error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        row = {"shape": shape_name, "batch": batch, "context": ctx, "variant": variant, "us": us,
               "gb_per_s": moved / us / 1e3, "timing": mode, **extra}
        if check is not None:
            out = check()
            row["rel_err"] = ((out.float() - expected).norm() / expected.norm()).item()
        rows.append(row)

    for block_n, warps in configs:
        splits = choose_num_splits(batch, kv_heads, ctx, q0.device, block_n)
        add(f"triton paged (block_n={block_n}, warps={warps}, splits={splits})",
            [lambda s=s, b=block_n, w=warps: paged_decode_attention(*s, scale, block_n=b, num_warps=w)
             for s in sets],
            check=lambda b=block_n, w=warps: paged_decode_attention(q0, k0, v0, t0, l0, scale,
                                                                    block_n=b, num_warps=w),
            block_n=block_n, num_warps=warps, num_splits=splits)
    add("triton paged, no split-K",
        [lambda s=s: paged_decode_attention(*s, scale, num_splits=1) for s in sets], num_splits=1)
    add("torch reference (gather + masked softmax)",
        [lambda s=s: reference.decode_attention_batched_ref(*s, ctx, scale) for s in sets])
    dense = [(q.unsqueeze(2), torch.randn(batch, kv_heads, ctx, HEAD_DIM, device="cuda", dtype=dtype),
              torch.randn(batch, kv_heads, ctx, HEAD_DIM, device="cuda", dtype=dtype))
             for q, *_ in sets]
    add("SDPA dense layout (default backend)",
        [lambda d=d: F.scaled_dot_product_attention(*d, scale=scale, enable_gqa=heads != kv_heads)
         for d in dense])
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        chosen = getattr(SDPBackend, backend)

        def sdpa(d, chosen=chosen):
            with sdpa_kernel(chosen):
                return F.scaled_dot_product_attention(*d, scale=scale, enable_gqa=heads != kv_heads)
        add(f"SDPA dense layout ({backend})", [lambda d=d: sdpa(d) for d in dense])
    return rows


PREFILL_CASES = {
    "256 prompts x 256": [(0, 256)] * 256,
    "4 chunks of 512 after 1536 cached": [(1536, 512)] * 4,
    "1 prompt x 2048": [(0, 2048)],
}


def bench_prefill(dtype) -> list[dict]:
    rows = []
    for shape_name, (heads, kv_heads) in SHAPES.items():
        for case, chunks in PREFILL_CASES.items():
            rows += _prefill_case(shape_name, heads, kv_heads, case, chunks, dtype)
            torch.cuda.empty_cache()
    return rows


def _prefill_case(shape_name, heads, kv_heads, case, chunks, dtype) -> list[dict]:
    rows = []
    scale = 1 / math.sqrt(HEAD_DIM)
    lens = [p + n for p, n in chunks]
    blocks_per_seq = math.ceil(max(lens) / PAGE)
    num_blocks = len(chunks) * blocks_per_seq
    k = torch.randn(num_blocks, PAGE, kv_heads, HEAD_DIM, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    tables = torch.randperm(num_blocks, device="cuda").view(len(chunks), blocks_per_seq).to(torch.int32)
    q_lens = [n for _, n in chunks]
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    q = torch.randn(sum(q_lens), heads, HEAD_DIM, device="cuda", dtype=dtype)
    attended = sum(sum(p + i + 1 for i in range(n)) for p, n in chunks)
    flops = 4 * heads * HEAD_DIM * attended
    variants = {
        "triton paged": lambda: paged_prefill_attention(q, k, v, tables, cu, ctx, max(q_lens), scale),
        "gather + SDPA (masked)": lambda: gather_prefill_attention(q, k, v, tables, cu, ctx, max(q_lens),
                                                                   max(lens), scale),
    }
    if all(p == 0 for p, _ in chunks):
        qd = q.view(len(chunks), q_lens[0], heads, HEAD_DIM).transpose(1, 2)
        kd = torch.randn(len(chunks), kv_heads, q_lens[0], HEAD_DIM, device="cuda", dtype=dtype)
        vd = torch.randn_like(kd)
        variants["SDPA dense causal (ideal layout, no paging)"] = lambda: F.scaled_dot_product_attention(
            qd, kd, vd, is_causal=True, scale=scale, enable_gqa=heads != kv_heads)
    for name, fn in variants.items():
        try:
            us, mode = time_us([fn], replays=10)
            rows.append({"shape": shape_name, "case": case, "variant": name, "us": us,
                         "tflop_per_s": flops / us / 1e6, "timing": mode})
        except Exception as exc:
            rows.append({"shape": shape_name, "case": case, "variant": name,
                         "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows


def bench_write_kv(dtype) -> list[dict]:
    return [row for kv_heads in (32, 8) for tokens in (256, 65536) for row in _write_kv_case(kv_heads, tokens, dtype)]


def _write_kv_case(kv_heads, tokens, dtype) -> list[dict]:
    rows = []
    num_slots = max(tokens * 2, 4096)
    k_cache = torch.zeros(num_slots // PAGE, PAGE, kv_heads, HEAD_DIM, device="cuda", dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    k = torch.randn(tokens, kv_heads, HEAD_DIM, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    slots = torch.randperm(num_slots, device="cuda")[:tokens]
    moved = 2 * 2 * tokens * kv_heads * HEAD_DIM * 2  # K and V, read and written
    flat_k, flat_v = k_cache.view(-1, kv_heads, HEAD_DIM), v_cache.view(-1, kv_heads, HEAD_DIM)

    def two_index_copies():
        flat_k.index_copy_(0, slots, k)
        flat_v.index_copy_(0, slots, v)
    for name, fn in {"triton write_kv": lambda: write_kv(k, v, k_cache, v_cache, slots),
                     "torch index_copy_ x2": two_index_copies}.items():
        us, mode = time_us([fn])
        rows.append({"kv_heads": kv_heads, "tokens": tokens, "variant": name, "us": us,
                     "gb_per_s": moved / us / 1e3, "timing": mode})
    return rows


def _short(error: str) -> str:
    return " ".join(error.split()).replace("|", "/")[:100]


def markdown(result: dict) -> str:
    lines = [f"### Decode attention, context {result['context']}, bf16, one layer", "",
             "| shape | B | variant | µs | GB/s | rel. err |", "|---|---|---|---|---|---|"]
    for row in result["decode"]:
        if "error" in row:
            lines.append(f"| {row['shape']} | {row['batch']} | {row['variant']} | error | {_short(row['error'])} | |")
            continue
        err = f"{row['rel_err']:.1e}" if "rel_err" in row else ""
        lines.append(f"| {row['shape']} | {row['batch']} | {row['variant']} | {row['us']:.1f} | "
                     f"{row['gb_per_s']:.0f} | {err} |")
    lines += ["", "### Prefill attention, bf16, one layer", "", "| shape | case | variant | µs | TFLOP/s |",
              "|---|---|---|---|---|"]
    for row in result["prefill"]:
        if "error" in row:
            lines.append(f"| {row['shape']} | {row['case']} | {row['variant']} | error | {_short(row['error'])} |")
        else:
            lines.append(f"| {row['shape']} | {row['case']} | {row['variant']} | {row['us']:.1f} | "
                         f"{row['tflop_per_s']:.1f} |")
    lines += ["", "### KV-cache write, bf16, one layer", "", "| KV heads | tokens | variant | µs | GB/s |",
              "|---|---|---|---|---|"]
    for row in result["write_kv"]:
        lines.append(f"| {row['kv_heads']} | {row['tokens']} | {row['variant']} | {row['us']:.1f} | "
                     f"{row['gb_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Kernel microbenchmarks (CUDA GPU)")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--configs", default="32x4,64x4,64x8,128x4,128x8",
                        help="decode kernel tiles to try, block_n x num_warps")
    parser.add_argument("--out", default=None, help="write the JSON here (markdown beside it)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dtype = torch.bfloat16
    configs = [tuple(int(x) for x in item.split("x")) for item in args.configs.split(",")]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "context": args.context,
              "decode": bench_decode([int(b) for b in args.batches.split(",")], args.context, dtype, configs),
              "prefill": bench_prefill(dtype), "write_kv": bench_write_kv(dtype)}
    text = markdown(result)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
        with open(args.out.rsplit(".", 1)[0] + ".md", "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
