"""Write the demo engine artifact (portable engine, tiny random-weight model) into a directory.

    python make_demo_artifact.py OUT_DIR [--kind llama|mistral]

The dev overlay runs this in an init container instead of pulling from S3, so the manifests can be
tried on any cluster. The demo checkpoint is deterministic, so the gateway pod and the Triton pod
each build the same artifact (same tokenizer, same manifest) on their own.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from engines.demo import make_demo_checkpoint
from engines.repository import PortableSettings
from engines.targets.portable import build_portable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kind", choices=("llama", "mistral"), default="llama")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = make_demo_checkpoint(args.kind, Path(scratch) / f"demo-{args.kind}")
        # Small KV cache: the dev Triton pod asks for 2 GiB of memory in all.
        settings = PortableSettings(device="cpu", kv_cache_memory_bytes=64 << 20)
        manifest = build_portable(checkpoint, args.out_dir, settings, model_name=f"demo-{args.kind}")
    print(f"{args.out_dir}: {manifest.model_name}, {len(manifest.files)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
