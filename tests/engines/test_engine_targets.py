"""The trtllm target's orchestration (with a stand-in for the container's tools) and the portable target
end to end: demo checkpoint → `ingot build` → real Triton loads the repository → a request answers."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path

import pytest

from engines import contract
from engines.checkpoint import validate_checkpoint
from engines.manifest import read_manifest, verify_files
from engines.plan import BuildPaths, make_plan
from engines.profiles import get_profile
from engines.repository import TrtllmSettings, parse_config_pbtxt
from engines.targets.trtllm import TrtllmBuildError, build_trtllm

ROOT = Path(__file__).resolve().parents[2]


def fake_container(plan, tamper=None):
    """Plays convert_checkpoint.py and trtllm-build: writes what they write, from the commands' own flags."""
    def runner(command: list[str], log_path: Path) -> None:
        args = {flag: value for flag, value in zip(command, command[1:] + [""], strict=True)
                if flag.startswith("--") and not value.startswith("--")}
        if command[0] == "python3":
            out = Path(args["--output_dir"])
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps({"architecture": plan.model["architecture"]}))
            return
        engine_dir = Path(args["--output_dir"])
        engine_dir.mkdir(parents=True, exist_ok=True)
        tp = plan.tp_size
        config = {
            "version": "0.12.0",
            "pretrained_config": {"architecture": plan.model["architecture"], "dtype": args["--gpt_attention_plugin"],
                                  "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
                                  "quantization": {"quant_algo": None, "kv_cache_quant_algo": None}},
            "build_config": {key: int(args[f"--{key}"]) for key in
                             ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width")}
            | {key: f"--{key}" in command for key in ("gather_context_logits", "gather_generation_logits")}
            | {"plugin_config": {"paged_kv_cache": True, "remove_input_padding": True,
                                 "use_paged_context_fmha": True}},
        }
        if tamper:
            tamper(config)
        (engine_dir / "config.json").write_text(json.dumps(config))
        for rank in range(tp):
            (engine_dir / f"rank{rank}.engine").write_bytes(b"engine" * 100)
    return runner


def trtllm_plan(checkpoint: Path, artifact: Path, work: Path, **overrides):
    report = validate_checkpoint(checkpoint)
    profile = get_profile("h100-80gb", max_seq_len=512, max_input_len=256, tp_size=2, **overrides)
    paths = BuildPaths(str(checkpoint), str(work / "tllm_checkpoint"),
                       str(artifact / "model_repository" / "tensorrt_llm" / "1"))
    return report, make_plan(report.config, profile, paths, "demo-mistral")


def test_trtllm_target_writes_repository_and_manifest(demo_checkpoints, tmp_path):
    artifact, work = tmp_path / "artifact", tmp_path / "work"
    report, plan = trtllm_plan(demo_checkpoints["mistral"], artifact, work)
    steps = []
    settings = TrtllmSettings(max_batch_size=plan.profile["max_batch_size"])
    manifest = build_trtllm(report, plan, artifact, work, settings, "demo-mistral",
                            runner=fake_container(plan), step=steps.append)
    assert steps == ["convert checkpoint", "trtllm-build", "check engine", "model repository", "manifest"]
    config = parse_config_pbtxt((artifact / "model_repository/tensorrt_llm/config.pbtxt").read_text())
    assert config.backend == "tensorrtllm" and config.model_transaction_policy.decoupled
    assert config.max_batch_size == plan.profile["max_batch_size"]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["gpt_model_type"] == "inflight_fused_batching"
    assert parameters["gpt_model_path"] == "/models/model_repository/tensorrt_llm/1"
    assert parameters["exclude_input_in_output"] == "true"
    assert parameters["enable_chunked_context"] == parameters["enable_kv_cache_reuse"] == "true"
    assert parameters["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert parameters["batch_scheduler_policy"] == "max_utilization"
    assert {"max_beam_width", "cancellation_check_period_ms"} <= set(parameters)
    # TensorRT-LLM 0.12's backend has no guided-decoding inputs (they came with 0.19.0)
    assert [t.name for t in config.input] == [spec.name for spec in contract.INPUTS if spec.trtllm_since is None]
    assert "guided_decoding_backend" not in parameters
    assert [t.name for t in config.output] == [spec.name for spec in contract.OUTPUTS]
    assert manifest.target == "trtllm" and manifest.plan["chosen"]["tp_size"] == 2
    assert manifest.tool_versions["tensorrt_llm_engine"] == "0.12.0"
    assert {"model_repository/tensorrt_llm/1/rank0.engine", "model_repository/tensorrt_llm/1/rank1.engine",
            "tokenizer/tokenizer.json"} <= set(manifest.files)
    assert verify_files(artifact, read_manifest(artifact)) == []
    assert not (work / "tllm_checkpoint").exists()  # the intermediate checkpoint is not kept


def test_trtllm_beam_and_logits_engine_matches_its_triton_config(demo_checkpoints, tmp_path):
    artifact, work = tmp_path / "artifact", tmp_path / "work"
    report, plan = trtllm_plan(demo_checkpoints["mistral"], artifact, work, max_beam_width=4,
                               gather_context_logits=True, gather_generation_logits=True)
    settings = TrtllmSettings(max_batch_size=plan.profile["max_batch_size"],
                              max_beam_width=plan.profile["max_beam_width"])
    manifest = build_trtllm(report, plan, artifact, work, settings, "demo-mistral", runner=fake_container(plan))
    config = parse_config_pbtxt((artifact / "model_repository/tensorrt_llm/config.pbtxt").read_text())
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["max_beam_width"] == "4" and parameters["decoding_mode"] == "beam_search"
    assert {"context_logits", "generation_logits"} <= {t.name for t in config.output}
    assert {"return_context_logits", "return_generation_logits", "beam_width"} <= {t.name for t in config.input}
    # The gateway reads what the engine returns from the manifest's profile.
    assert (manifest.profile["max_beam_width"], manifest.profile["gather_context_logits"],
            manifest.profile["gather_generation_logits"]) == (4, True, True)
    plain = TrtllmSettings().parameters()
    assert plain["max_beam_width"] == "1" and plain["decoding_mode"] == "top_k_top_p"


def test_trtllm_target_rejects_an_engine_that_differs_from_the_plan(demo_checkpoints, tmp_path):
    artifact, work = tmp_path / "artifact", tmp_path / "work"
    report, plan = trtllm_plan(demo_checkpoints["mistral"], artifact, work)

    def tamper(config):
        config["build_config"]["max_num_tokens"] = 1024
        config["pretrained_config"]["mapping"]["tp_size"] = 1

    with pytest.raises(TrtllmBuildError) as err:
        build_trtllm(report, plan, artifact, work, TrtllmSettings(), "demo-mistral",
                     runner=fake_container(plan, tamper))
    assert "build_config.max_num_tokens is 1024, the plan says 8192" in str(err.value)
    assert "pretrained_config.mapping.tp_size is 1, the plan says 2" in str(err.value)
    assert not (artifact / "manifest.json").exists()


def stream_request(grpc_url: str, prompt_ids: list[int], max_tokens: int, end_id: int) -> list[int]:
    import tritonclient.grpc as grpcclient

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    request = contract.GenerationRequest(input_ids=prompt_ids, request_output_len=max_tokens, end_id=end_id,
                                         temperature=0.0, top_k=1)
    inputs = []
    for name, array in contract.encode_request(request).items():
        tensor = grpcclient.InferInput(name, list(array.shape), contract.INPUT_SPECS[name].dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client.async_stream_infer(contract.MODEL_NAME, inputs, enable_empty_final_response=True)
    tokens: list[int] = []
    try:
        while True:
            result, error = responses.get(timeout=120)
            assert error is None, error
            final = result.get_response().parameters["triton_final_response"].bool_param
            ids = result.as_numpy("output_ids")
            if ids is not None and ids.size:
                lengths = result.as_numpy("sequence_length")
                chunk = contract.decode_chunk({"output_ids": ids, "sequence_length": lengths}, final)
                tokens.extend(chunk.output_ids)
            if final:
                return tokens
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.e2e
def test_portable_target_end_to_end(demo_checkpoints, tmp_path, triton_server_factory):
    # The Python-backend glue (engines/triton) serves the repository with the portable engine itself.
    artifact = tmp_path / "demo-llama"
    built = subprocess.run(
        [sys.executable, "-m", "engines.cli", "build", "--checkpoint", str(demo_checkpoints["llama"]),
         "--profile", "a100-40gb", "--target", "portable", "--out", str(artifact), "--model-name", "demo-llama"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    manifest = read_manifest(artifact)
    assert manifest.target == "portable" and manifest.profile["name"] == "a100-40gb"
    assert verify_files(artifact, manifest) == []
    parse_config_pbtxt((artifact / "model_repository/tensorrt_llm/config.pbtxt").read_text())

    server = triton_server_factory(artifact / "model_repository")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer" / "tokenizer.json"))
    prompt = tokenizer.encode("The quick brown fox").ids
    config = json.loads((demo_checkpoints["llama"] / "config.json").read_text())
    tokens = stream_request(server.grpc_url, prompt, max_tokens=8, end_id=config["eos_token_id"])
    assert 0 < len(tokens) <= 8
    assert all(0 <= t < config["vocab_size"] for t in tokens)
