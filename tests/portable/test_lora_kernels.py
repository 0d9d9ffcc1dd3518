"""The Triton LoRA kernels (engines/portable/lora_kernels.py) on the CPU, in Triton's interpreter: the same
numbers as the torch path. The GPU run is tests/portable_gpu/test_lora_kernels_gpu.py."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the triton package is not installed")
def test_kernels_match_the_torch_path_in_the_interpreter(demo_checkpoints):
    env = dict(os.environ, TRITON_INTERPRET="1")
    for kind in ("llama", "mistral"):  # multi-head and grouped-query attention (k, v narrower than q)
        result = subprocess.run([sys.executable, "-m", "tests.portable.lora_kernel_check", str(demo_checkpoints[kind]),
                                 "cpu", "float32"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        assert float(result.stdout.split()[-1]) < 1e-5, kind
