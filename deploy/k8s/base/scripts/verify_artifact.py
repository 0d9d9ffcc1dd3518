#!/usr/bin/env python3
"""Check a downloaded engine artifact against its manifest.json before anything serves it.

    verify_artifact.py ARTIFACT_DIR [--only PREFIX ...]

Every file the manifest lists (or, with --only, every listed file under one of the prefixes) must
exist and have the manifest's sha256. Exit 0 when all match, 1 on any problem, with one line per
problem on stderr. Standard library only: it runs in the Triton image and in the gateway image,
neither of which needs Ingot's packages for this.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def listed_files(manifest: dict, prefixes: list[str]) -> dict[str, str]:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError("manifest.json lists no files")
    selected = {}
    for relative, expected in files.items():
        parts = PurePosixPath(relative).parts
        if PurePosixPath(relative).is_absolute() or ".." in parts:
            raise ValueError(f"manifest.json lists an unsafe path: {relative!r}")
        if not isinstance(expected, str) or len(expected) != 64:
            raise ValueError(f"manifest.json has no sha256 for {relative!r}")
        if not prefixes or any(relative.startswith(prefix) for prefix in prefixes):
            selected[relative] = expected.lower()
    if not selected:
        raise ValueError(f"manifest.json lists no files under {', '.join(prefixes)}")
    return selected


def check(root: Path, relative: str, expected: str) -> str | None:
    path = root / relative
    if not path.is_file():
        return f"{relative}: missing"
    if sha256_file(path) != expected:
        return f"{relative}: sha256 mismatch"
    return None


def verify(root: Path, prefixes: list[str]) -> list[str]:
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing; is the artifact URI right?"]
    try:
        files = listed_files(json.loads(manifest_path.read_text()), prefixes)
    except (ValueError, json.JSONDecodeError) as exc:
        return [str(exc)]
    # hashlib releases the GIL on large blocks: threads hash several engine shards at once.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda item: check(root, *item), sorted(files.items()))
        problems = [problem for problem in results if problem]
    if not problems:
        print(f"{root}: {len(files)} file(s) match manifest.json")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an engine artifact against its manifest.json.")
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="check only listed files under this relative prefix (repeatable)")
    args = parser.parse_args(argv)
    problems = verify(args.artifact_dir, args.only)
    for problem in problems:
        print(f"verify_artifact: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
