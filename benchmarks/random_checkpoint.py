"""Random-weight Hugging Face checkpoints with the exact shape of a public model, and a real tokenizer.

For serving benchmarks without downloads: `llama-2-7b` has Llama-2-7B's config (vocab 32000, 32 layers,
hidden 4096), `tiny` the same vocabulary on a two-layer toy for CPU runs. The tokenizer is a byte-level
BPE trained to exactly the model's vocabulary on generated words, so every id decodes to text (the 128
lone bytes above 0x7f decode to U+FFFD until a neighbour completes them; `<unk>`, `<s>` and `</s>` are
special). `tokenizer_config.json` carries a Llama-2-style chat template and the bos/eos tokens.

The weights are seeded normal noise (std 0.02, norms at 1), made on the device that will serve them and
written in shards with an index. The model's generation settings have no end-of-sequence token, so a
server that has no `ignore_eos` (transformers serve) still produces exactly `max_tokens` per answer.

    python -m benchmarks.random_checkpoint /tmp/llama-2-7b-random --shape llama-2-7b --device cuda
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.roofline import MODEL_CONFIGS
from engines.demo import train_tokenizer

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (UNK, BOS, EOS)  # ids 0, 1, 2 as in Llama-2
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
TINY = dict(MODEL_CONFIGS["llama-2-7b"], hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
SHAPES = {"llama-2-7b": MODEL_CONFIGS["llama-2-7b"], "mistral-7b": MODEL_CONFIGS["mistral-7b"], "tiny": TINY}
SHARD_BYTES = 2 << 30


def shape_config(shape: str, num_layers: int | None = None) -> dict:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    config = dict(SHAPES[shape])
    if num_layers:
        config["num_hidden_layers"] = num_layers
    return config


def corpus(lines: int = 40_000, seed: int = 0) -> list[str]:
    """Sentences of made-up words with a Zipf-like frequency: enough distinct pairs for 32000 merges."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnpqrstvwxyz", "aeiou"
    syllables = ([c + v for c in consonants for v in vowels] + [v + c for c in consonants for v in vowels]
                 + [c + v + e for c in consonants for v in vowels for e in "lmnrst"])
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(60_000)]
    cumulative, total = [], 0.0
    for rank in range(len(words)):
        total += 1.0 / (rank + 1)
        cumulative.append(total)
    marks = ".,;:!?"
    return [" ".join(rng.choices(words, cum_weights=cumulative, k=12)).capitalize() + rng.choice(marks)
            + f" {rng.randint(0, 99_999)}" for _ in range(lines)]


def write_tokenizer(out: Path, vocab_size: int, max_len: int) -> None:
    tokenizer = train_tokenizer(vocab_size, corpus(), SPECIAL_TOKENS)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"the tokenizer reached {tokenizer.get_vocab_size()} tokens, not {vocab_size}")
    tokenizer.save(str(out / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": UNK}
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": True,
        "clean_up_tokenization_spaces": False, "model_max_length": max_len, "chat_template": CHAT_TEMPLATE})
    _write_json(out / "special_tokens_map.json", special)


def hf_config(raw: dict, dtype: str) -> dict:
    config = {key: value for key, value in raw.items()}
    config.update(bos_token_id=1, eos_token_id=None, pad_token_id=0, torch_dtype=dtype, attention_bias=False,
                  mlp_bias=False, head_dim=raw["hidden_size"] // raw["num_attention_heads"], rope_scaling=None)
    return config


def layer_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_out = config["num_attention_heads"] * config["head_dim"]
    kv_out = config["num_key_value_heads"] * config["head_dim"]
    return {"input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
            "self_attn.q_proj.weight": (q_out, hidden), "self_attn.k_proj.weight": (kv_out, hidden),
            "self_attn.v_proj.weight": (kv_out, hidden), "self_attn.o_proj.weight": (hidden, q_out),
            "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden),
            "mlp.down_proj.weight": (hidden, inter)}


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], config["hidden_size"])}
    for layer in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{layer}.{name}": shape for name, shape in layer_shapes(config).items()})
    shapes["model.norm.weight"] = (config["hidden_size"],)
    shapes["lm_head.weight"] = (config["vocab_size"], config["hidden_size"])
    return shapes


def write_weights(out: Path, config: dict, device: str, dtype: torch.dtype, seed: int) -> int:
    """Seeded noise made on `device`, written in shards of about 2 GiB; returns the bytes written."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = tensor_shapes(config)
    element = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = element * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for index, names in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensor = torch.ones(shapes[name], dtype=dtype)
            else:
                tensor = (torch.randn(shapes[name], generator=gen, device=device, dtype=dtype) * 0.02).cpu()
            tensors[name] = tensor
            weight_map[name] = file
            total += tensor.numel() * element
        save_file(tensors, str(out / file), metadata={"format": "pt"})
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return total


def write_checkpoint(out: str | Path, shape: str = "llama-2-7b", device: str = "cpu", dtype: str = "bfloat16",
                     num_layers: int | None = None, seed: int = 0) -> Path:
    """Write the whole checkpoint into `out` (created) and return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = hf_config(shape_config(shape, num_layers), dtype)
    write_tokenizer(out, config["vocab_size"], config["max_position_embeddings"])
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {"bos_token_id": 1, "pad_token_id": 0, "do_sample": False})
    tokenized = time.perf_counter()
    total = write_weights(out, config, device, getattr(torch, dtype), seed)
    print(f"checkpoint {out}: tokenizer in {tokenized - started:.1f}s, {total / 2**30:.2f} GiB of weights in "
          f"{time.perf_counter() - tokenized:.1f}s", flush=True)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b")
    parser.add_argument("--num-layers", type=int, default=None, help="override the layer count")
    parser.add_argument("--device", default="cpu", help="where the noise is made (cuda is much faster for 7B)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_checkpoint(args.out, args.shape, args.device, args.dtype, args.num_layers, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
