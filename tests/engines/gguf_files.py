"""Small GGUF files written the way llama.cpp's converter writes them, for the GGUF reader's tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["t h", "th e"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Row length 256: a multiple of every block size, the K-quants' 256 included.
TINY = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}


def byte_alphabet() -> list[str]:
    """GPT-2's bytes → printable characters map, as byte-level BPE vocabularies spell their tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py reordering of q/k rows (two halves → interleaved pairs)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]) \
        .swapaxes(1, 2).reshape(weights.shape)


def random_block_bytes(qtype_name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random quantized rows for types the gguf package cannot quantize: random codes, sane fp16 scales."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = (rng.random((rows, cols // block, 2)) * 0.02 + 0.001).astype(np.float16).view(np.uint8)
    if qtype_name == "Q4_K":  # d, dmin first
        blocks[..., 0:4] = scale.reshape(rows, cols // block, 4)
    elif qtype_name == "Q6_K":  # d last
        blocks[..., size - 2:] = scale[..., 0:2]
    else:
        raise ValueError(f"no random layout for {qtype_name}")
    return blocks.reshape(rows, -1)


def encode_tensor(weights: np.ndarray, qtype_name: str, rng: np.random.Generator):
    """(data, raw type) for GGUFWriter.add_tensor."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    if qtype_name in ("Q4_K", "Q6_K"):
        return random_block_bytes(qtype_name, weights.shape[0], weights.shape[1], rng), qtype
    if qtype_name == "Q8_K":  # no dequantizer in the gguf package: bytes only, for the error path
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return np.zeros((weights.shape[0], weights.shape[1] // block * size), dtype=np.uint8), qtype
    return gguf.quants.quantize(weights.astype(np.float32), qtype), qtype


def hf_weights(shape: dict, vocab: int, rng: np.random.Generator, tied: bool) -> dict[str, np.ndarray]:
    hidden, inter, head_dim = shape["hidden"], shape["intermediate"], shape["hidden"] // shape["heads"]
    kv = shape["kv_heads"] * head_dim

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    weights = {"model.embed_tokens.weight": mat(vocab, hidden),
               "model.norm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)}
    if not tied:
        weights["lm_head.weight"] = mat(vocab, hidden)
    for layer in range(shape["layers"]):
        prefix = f"model.layers.{layer}"
        weights.update({
            f"{prefix}.input_layernorm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
            f"{prefix}.post_attention_layernorm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
            f"{prefix}.self_attn.q_proj.weight": mat(hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": mat(kv, hidden),
            f"{prefix}.self_attn.v_proj.weight": mat(kv, hidden),
            f"{prefix}.self_attn.o_proj.weight": mat(hidden, hidden),
            f"{prefix}.mlp.gate_proj.weight": mat(inter, hidden),
            f"{prefix}.mlp.up_proj.weight": mat(inter, hidden),
            f"{prefix}.mlp.down_proj.weight": mat(hidden, inter),
        })
    return weights


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest]}"


def write_llama_gguf(path: Path, qtype: str = "F32", shape: dict | None = None, tied: bool = False,
                     architecture: str = "llama", extra_tensors: dict | None = None, seed: int = 0,
                     weights: dict | None = None) -> dict[str, np.ndarray]:
    """A llama GGUF with every matrix in `qtype` (norms stay F32, as llama.cpp keeps them); returns the
    float32 Hugging Face weights it was made from (before quantization)."""
    import gguf

    shape = dict(shape or TINY)
    rng = np.random.default_rng(seed)
    tokens = byte_alphabet() + ["th", "the"] + SPECIALS
    vocab = len(tokens)
    weights = weights or hf_weights(shape, vocab, rng, tied)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny test model")
    writer.add_block_count(shape["layers"])
    writer.add_context_length(512)
    writer.add_embedding_length(shape["hidden"])
    writer.add_feed_forward_length(shape["intermediate"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(shape["hidden"] // shape["heads"])
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_chat_template(CHATML)
    for name, tensor in weights.items():
        if name.endswith("q_proj.weight"):
            tensor = llama_cpp_permute(tensor, shape["heads"])
        elif name.endswith("k_proj.weight"):
            tensor = llama_cpp_permute(tensor, shape["kv_heads"])
        if tensor.ndim == 1:
            writer.add_tensor(gguf_name(name), tensor)
        else:
            data, raw = encode_tensor(tensor, qtype, rng)
            writer.add_tensor(gguf_name(name), data, raw_dtype=raw)
    for name, tensor in (extra_tensors or {}).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights
