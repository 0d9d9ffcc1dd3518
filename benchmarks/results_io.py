"""How a benchmark records a result: what was measured (commit, date, command line) and the JSON + markdown pair
it leaves under benchmarks/results.

The commit comes from $INGOT_COMMIT when it is set: a GPU machine runs a copy of the working tree whose `.git` can
name an older commit than the files it holds, so whoever sends the copy says which commit it is
(`INGOT_COMMIT=$(git rev-parse HEAD)` on the machine that sent it). Elsewhere git is asked.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMIT_ENV = "INGOT_COMMIT"


def commit() -> str:
    """The commit measured: $INGOT_COMMIT, else `git rev-parse HEAD` of this repository, else "unknown"."""
    named = os.environ.get(COMMIT_ENV, "").strip()
    if named:
        return named
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    return found or "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces this run: `python -m MODULE ARGS` (argv None: this process's own arguments)."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)


def add_out_argument(parser: argparse.ArgumentParser, default: str | None = "benchmarks/results",
                     *aliases: str) -> None:
    """--out FOLDER for the JSON + markdown pair (required when there is no default)."""
    parser.add_argument("--out", *aliases, dest="out", type=Path, required=default is None,
                        default=None if default is None else Path(default),
                        help="folder for the .json record and its .md note")


def write_result(out: Path, stem: str, record: dict, markdown: str) -> Path:
    """Writes OUT/STEM.json and OUT/STEM.md, prints the markdown, returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown, flush=True)
    return path
