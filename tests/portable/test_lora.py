"""LoRA adapters in the portable engine: greedy outputs token-identical to transformers + PEFT (unmerged,
fp32) for several adapters and the base in one batch, on both demo checkpoints."""
from __future__ import annotations

import json

import pytest

from engines.portable.lora import LoraError
from engines.portable.sampling import SamplingParams
from tests.lora_adapters import PeftReference, make_adapter
from tests.portable.conftest import prompt_of

peft = pytest.importorskip("peft")

KINDS = ["llama", "mistral"]
# name -> (rank, alpha, rsLoRA, target modules): every projection, attention only, MLP only, rsLoRA
ADAPTERS = {
    "all-r8": (8, 16, False, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "attn-r4": (4, 8, False, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "mlp-r16": (16, 8, False, ["gate_proj", "up_proj", "down_proj"]),
    "rs-r12": (12, 6, True, ["q_proj", "v_proj", "down_proj"]),
}


@pytest.fixture(scope="session")
def adapters(demo_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {kind: {name: make_adapter(demo_checkpoints[kind], root / kind / name, seed, *spec)
                   for seed, (name, spec) in enumerate(ADAPTERS.items())}
            for kind in KINDS}


@pytest.fixture(scope="session")
def peft_greedy(demo_checkpoints, adapters):
    """Callable(kind, adapter name or None, prompt, max_new_tokens) -> transformers + PEFT greedy ids."""
    references = {kind: PeftReference(demo_checkpoints[kind], adapters[kind]) for kind in KINDS}
    return lambda kind, adapter, prompt, max_new_tokens: references[kind].greedy(adapter, prompt, max_new_tokens)


def greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_and_base_in_one_batch_match_peft(kind, make_engine, adapters, peft_greedy):
    # two device slots for four adapters: the scheduler holds back requests whose adapter has no slot,
    # and slots are reloaded as adapters come and go
    engine = make_engine(kind, max_loras=2, max_lora_rank=16)
    for name, path in adapters[kind].items():
        engine.add_lora(name, path)
    names = [*ADAPTERS, None, "all-r8"]
    prompts = [prompt_of(6 + 5 * i, seed=40 + i) for i in range(len(names))]
    lengths = [12 + 3 * i for i in range(len(names))]
    outputs = engine.generate(prompts, [greedy(n) for n in lengths], names)
    expected = [peft_greedy(kind, name, prompt, n) for name, prompt, n in zip(names, prompts, lengths, strict=True)]
    assert outputs == expected
    base = [peft_greedy(kind, None, prompt, n) for prompt, n in zip(prompts[:4], lengths, strict=False)]
    assert all(out != ref for out, ref in zip(outputs, base, strict=False))  # every adapter changes the answer
    assert engine.num_free_blocks == engine.num_total_blocks


def test_prefix_cache_never_crosses_adapters(make_engine, adapters, peft_greedy):
    engine = make_engine("llama", max_loras=4, block_size=4)
    engine.add_lora("all-r8", adapters["llama"]["all-r8"])
    prompt = prompt_of(40, seed=7)
    first = engine.generate([prompt], greedy(10), [None])
    second = engine.generate([prompt], greedy(10), ["all-r8"])  # same prompt: base blocks are cached
    third = engine.generate([prompt], greedy(10), ["all-r8"])  # now the adapter's blocks are
    assert first == [peft_greedy("llama", None, prompt, 10)]
    assert second == third == [peft_greedy("llama", "all-r8", prompt, 10)]
    assert engine.blocks.num_reused_tokens == 36  # only the third request reused (9 full blocks)


def test_unknown_and_unsupported_adapters_are_refused(make_engine, adapters, tmp_path):
    engine = make_engine("llama", max_loras=1, max_lora_rank=8)
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        engine.add_request("r1", [1, 2, 3], greedy(4), lora="nope")
    with pytest.raises(LoraError, match="rank 16 is above the engine's max_lora_rank 8"):
        engine.add_lora("big", adapters["llama"]["mlp-r16"])
    dora = tmp_path / "dora"
    dora.mkdir()
    config = json.loads((adapters["llama"]["attn-r4"] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(LoraError, match="use_dora=true is not supported"):
        engine.add_lora("dora", dora)
    with pytest.raises(ValueError, match="max_lora"):
        make_engine("llama").add_lora("x", adapters["llama"]["attn-r4"])
