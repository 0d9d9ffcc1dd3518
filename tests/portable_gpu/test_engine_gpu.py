"""The portable engine on a CUDA GPU (kernels, CUDA graphs) against transformers on the same GPU.

fp32: greedy tokens must be identical. bf16: both sides round differently (fused QKV/gate-up GEMMs,
a flash-style kernel vs transformers' SDPA), so greedy sequences may part after a near-tie; the test
then compares the first steps' logits and reports where the sequences parted.
"""
from __future__ import annotations

import json

import pytest
import torch

from engines.portable import kernels
from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams
from tests.portable.pipelining import assert_same_for_clients, mixed_requests, run_all

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"needs a CUDA GPU: {kernels.unavailable_reason()}")

LENGTHS = [(3, 48), (10, 30), (60, 20), (17, 41), (33, 12), (5, 36), (48, 25), (24, 24)]


def prompts(vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [[1] + torch.randint(5, vocab, (n - 1,), generator=generator).tolist() for n, _ in LENGTHS]


def hf_greedy(model, prompt: list[int], new: int) -> list[int]:
    with torch.no_grad():
        ids = torch.tensor([prompt], device="cuda")
        out = model.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_fp32_greedy_identical_with_kernels_and_cuda_graphs(kind, demo_checkpoints):
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    hf = AutoModelForCausalLM.from_pretrained(demo_checkpoints[kind], dtype=torch.float32).cuda().eval()
    engine = LLMEngine.from_checkpoint(demo_checkpoints[kind], EngineConfig(device="cuda", dtype="float32"))
    assert engine.runner.graphs is not None
    batch = prompts(hf.config.vocab_size)
    outputs = engine.generate(batch, [SamplingParams(max_new_tokens=n, temperature=0.0) for _, n in LENGTHS])
    for prompt, (_, new), output in zip(batch, LENGTHS, outputs, strict=True):
        assert output == hf_greedy(hf, prompt, new)
    assert engine.num_free_blocks == engine.num_total_blocks


def bf16_model(tmp_path, kind: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    common = dict(vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                  num_attention_heads=8, max_position_embeddings=1024, rms_norm_eps=1e-5, head_dim=128)
    config = (LlamaConfig(num_key_value_heads=8, **common) if kind == "llama"
              else MistralConfig(num_key_value_heads=2, sliding_window=64, **common))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # spread the logits: fewer near-ties under bf16
    path = tmp_path / kind
    model.save_pretrained(path)
    return model.cuda().eval(), path


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_bf16_against_transformers(kind, tmp_path):
    hf, path = bf16_model(tmp_path, kind)
    engine = LLMEngine.from_checkpoint(path, EngineConfig(device="cuda", dtype="bfloat16"))
    batch = prompts(4096)
    outputs = engine.generate(batch, [SamplingParams(max_new_tokens=n, temperature=0.0) for _, n in LENGTHS])
    report = []
    for prompt, (_, new), output in zip(batch, LENGTHS, outputs, strict=True):
        reference = hf_greedy(hf, prompt, new)
        same = next((i for i, (a, b) in enumerate(zip(output, reference, strict=True)) if a != b), len(output))
        report.append({"prompt_len": len(prompt), "new": new, "identical_prefix": same})
        # the first token comes from the prefill: its logits must agree closely
        engine.add_request("probe", prompt, SamplingParams(max_new_tokens=1, temperature=0.0, return_logprobs=True))
        ours = []
        while engine.has_unfinished():
            ours += engine.step()
        with torch.no_grad():
            logits = hf(torch.tensor([prompt], device="cuda")).logits[0, -1].float()
        # bf16 moves logits by about 1% of their spread (here a std of ~16); a wrong forward moves them by all of it
        expected = logits.log_softmax(-1)[ours[-1].new_token_ids[0]].item()
        assert ours[-1].new_logprobs[0] == pytest.approx(expected, abs=0.02 * logits.std().item())
    print(json.dumps({"kind": kind, "greedy_vs_transformers_bf16": report}))
    identical = sum(r["identical_prefix"] == r["new"] for r in report)
    assert identical >= len(report) // 2, report



@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_pipelined_decoding_matches_step_by_step(kind, demo_checkpoints):
    """Launching the next greedy step before reading this one changes nothing a client sees, with the
    real CUDA graphs (tests/portable/test_pipelining.py checks the same on the CPU with eager launches);
    and every block comes back."""
    torch.backends.cuda.matmul.allow_tf32 = False
    engines = {pipelined: LLMEngine.from_checkpoint(demo_checkpoints[kind], EngineConfig(
        device="cuda", dtype="float32", pipeline_decode=pipelined, max_num_seqs=16)) for pipelined in (True, False)}
    assert engines[True].pipelined and not engines[False].pipelined
    batch = prompts(engines[True].model_config.vocab_size)
    free = engines[False].generate(batch, [SamplingParams(max_new_tokens=n, temperature=0.0) for _, n in LENGTHS])
    requests = mixed_requests(batch, free, [n for _, n in LENGTHS])
    results = {pipelined: run_all(engine, requests, {"r5": 9}) for pipelined, engine in engines.items()}
    assert_same_for_clients(results[True], results[False], "r5", free[5])
    for engine in engines.values():
        assert engine.num_free_blocks == engine.num_total_blocks
