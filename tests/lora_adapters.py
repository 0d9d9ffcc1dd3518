"""Deterministic random PEFT adapters on the demo checkpoints, and transformers + PEFT greedy references."""
from __future__ import annotations

from pathlib import Path

import torch

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir, out_dir, seed: int, rank: int, alpha: int, rslora: bool, modules: list[str],
                 fp16_exact: bool = False) -> Path:
    """A PEFT adapter whose B is not zero (so it changes the output). `fp16_exact` rounds A and B to values
    float16 holds, so an adapter sent as TensorRT-LLM's FP16 lora_weights (B times a power-of-two scaling)
    is the same adapter."""
    import peft
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, use_rslora=rslora,
                             init_lora_weights=False, lora_dropout=0.0)
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():  # PEFT's random init is small: make every adapter visibly different from the base
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(8.0)
            if fp16_exact and "lora_" in name:
                parameter.copy_(parameter.half().float())
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


class PeftReference:
    """transformers + PEFT (unmerged, fp32) with several adapters, greedy."""

    def __init__(self, base_dir, adapters: dict[str, Path]):
        import peft
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        names = list(adapters)
        self.model = peft.PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            self.model.load_adapter(adapters[name], adapter_name=name)
        self.model.eval()

    def greedy(self, adapter: str | None, prompt: list[int], max_new_tokens: int) -> list[int]:
        inputs = torch.tensor([prompt])
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
        with torch.no_grad():
            if adapter is None:
                with self.model.disable_adapter():
                    out = self.model.generate(input_ids=inputs, **kwargs)
            else:
                self.model.set_adapter(adapter)
                out = self.model.generate(input_ids=inputs, **kwargs)
        return out[0, len(prompt):].tolist()
