"""Tiny, deterministic Llama and Mistral checkpoints for tests and `make serve`.

The weights are random but seeded; the tokenizer is a real byte-level BPE trained on a small
built-in text (English, Chinese, code, emoji), so any UTF-8 text round-trips. Each checkpoint is a
complete Hugging Face directory: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (with a chat template), generation_config.json.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, UNK, IM_START, IM_END = "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = """
Ingot serves language models behind the OpenAI API. The gateway validates each request, applies the
chat template, counts tokens and streams the answer back as server-sent events.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Paged attention stores the key and value cache in fixed-size blocks, so memory is not wasted.
Continuous batching lets new requests join the running batch between two decoding steps.
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
{"model": "demo", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
大型语言模型可以回答问题、写代码和翻译文本。今天天气很好，我们去公园散步吧。
你好，世界！欢迎使用我们的推理服务。请用中文回答这个问题。北京是中国的首都。
Emoji work too: 😀 🚀 🎉 ❤️ 👍 — and accents: café, naïve, über, señor.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159 2.71828.
Mistral uses grouped-query attention and a sliding window; Llama uses rotary position embeddings.
"""

ARCHITECTURES = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rope_scaling": None,
    },
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rope_theta": 1000000.0,
        "sliding_window": 24,
    },
}


def train_tokenizer(vocab_size: int = 640, corpus: Iterable[str] | None = None,
                    special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """A byte-level BPE trained on `corpus` (default: the built-in text), with `<s>` added in front."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines() if corpus is None else corpus, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def model_config(kind: str, vocab_size: int, tokenizer: Tokenizer) -> dict:
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown demo model {kind!r}; choose one of {sorted(ARCHITECTURES)}")
    config = dict(ARCHITECTURES[kind])
    config.update(
        vocab_size=vocab_size,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tokenizer.token_to_id(BOS),
        eos_token_id=tokenizer.token_to_id(IM_END),
        torch_dtype="float32",
        attention_bias=False,
        mlp_bias=False,
        head_dim=config["hidden_size"] // config["num_attention_heads"],
    )
    return config


def random_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights scaled so logits are well separated (greedy decoding has no near-ties)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config["head_dim"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim

    def linear(out_features: int, in_features: int, gain: float = 1.0) -> torch.Tensor:
        return torch.randn(out_features, in_features, generator=gen) * (gain / math.sqrt(in_features))

    weights = {"model.embed_tokens.weight": torch.randn(config["vocab_size"], hidden, generator=gen)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        weights.update({
            f"{prefix}.input_layernorm.weight": 1.0 + 0.1 * torch.randn(hidden, generator=gen),
            f"{prefix}.post_attention_layernorm.weight": 1.0 + 0.1 * torch.randn(hidden, generator=gen),
            f"{prefix}.self_attn.q_proj.weight": linear(q_out, hidden, 2.0),
            f"{prefix}.self_attn.k_proj.weight": linear(kv_out, hidden, 2.0),
            f"{prefix}.self_attn.v_proj.weight": linear(kv_out, hidden),
            f"{prefix}.self_attn.o_proj.weight": linear(hidden, q_out),
            f"{prefix}.mlp.gate_proj.weight": linear(inter, hidden),
            f"{prefix}.mlp.up_proj.weight": linear(inter, hidden),
            f"{prefix}.mlp.down_proj.weight": linear(hidden, inter),
        })
    weights["model.norm.weight"] = torch.ones(hidden)
    weights["lm_head.weight"] = linear(config["vocab_size"], hidden, 4.0)
    return {name: tensor.contiguous() for name, tensor in weights.items()}


def tokenizer_config(config: dict) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": IM_END,
        "unk_token": UNK,
        "pad_token": EOS,
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }


def make_demo_checkpoint(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the demo checkpoint `kind` ("llama" or "mistral") into `out_dir` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    config = model_config(kind, tokenizer.get_vocab_size(), tokenizer)
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "config.json", config)
    _write_json(out / "tokenizer_config.json", tokenizer_config(config))
    special = {"bos_token": BOS, "eos_token": IM_END, "unk_token": UNK, "pad_token": EOS}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "generation_config.json", {
        "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False,
    })
    save_file(random_weights(config, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny deterministic demo checkpoint.")
    parser.add_argument("kind", choices=sorted(ARCHITECTURES))
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_demo_checkpoint(args.kind, args.out_dir, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
