"""lm-eval's `local-completions` against our server gives the loglikelihoods of its `hf` backend on the same
checkpoint: the small multiple-choice task in tests/e2e/lm_eval_tasks is scored through echo + logprobs."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TASKS = Path(__file__).parent / "lm_eval_tasks"


@pytest.fixture()
def task_dir(tmp_path):
    """The task with its data file named by absolute path (lm-eval reads data_files from the working directory)."""
    shutil.copy(TASKS / "ingot_mc.jsonl", tmp_path / "ingot_mc.jsonl")
    text = (TASKS / "ingot_mc.yaml").read_text().replace("test: ingot_mc.jsonl", f"test: {tmp_path / 'ingot_mc.jsonl'}")
    (tmp_path / "ingot_mc.yaml").write_text(text)
    return tmp_path


def loglikelihoods(model: str, model_args: str, task_dir: Path) -> list[list[float]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=model, model_args=model_args, tasks=["ingot_mc"], batch_size=1,
                              task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                              log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    samples = sorted(results["samples"]["ingot_mc"], key=lambda sample: sample["doc_id"])
    return [[float(resp[0]) for resp in sample["filtered_resps"]] for sample in samples]


def test_local_completions_equals_the_hf_backend(ingot_stack, demo_checkpoints, task_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", ingot_stack.api_key)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    served = loglikelihoods(
        "local-completions",
        f"model={ingot_stack.model},base_url={ingot_stack.base_url}/v1/completions,"
        f"tokenizer={ingot_stack.tokenizer_dir},tokenizer_backend=huggingface,num_concurrent=1,max_retries=1,"
        "add_bos_token=True",
        task_dir)
    # Both with the tokenizer's BOS: lm-eval's API models leave special tokens out unless told.
    reference = loglikelihoods("hf", f"pretrained={demo_checkpoints['llama']},dtype=float32,device=cpu,"
                               "add_bos_token=True", task_dir)
    assert len(served) == len(reference) == 6
    for ours, theirs in zip(served, reference, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-3)
        assert all(value < 0 for value in ours)  # a real score, not the 0 of a missing prompt logprob
