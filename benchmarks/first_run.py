"""Time to first answer of `make serve` as a newcomer meets it: a fresh clone, then the same clone again.

    python -m benchmarks.first_run --commit HEAD --out benchmarks/results/first_run_after.json

Clones the repository at COMMIT into a temporary folder, runs `make serve PORT=<free port>` there with an
empty virtual environment, an empty pip cache and an empty model cache (the "fresh" run; /opt/wheels as this
machine has it), asks the served model one chat question until it answers, stops the stack, measures the
environment's size, then runs `make serve` again in the same clone (the "warm" run: environment and model
cache in place).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEMO_KEY = "ingot-demo-key"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_answer(base_url: str, process: subprocess.Popen, timeout: float) -> float:
    """Seconds until the stack answers a chat request; polls /v1/models for the model's id first."""
    started, headers = time.monotonic(), {"Authorization": f"Bearer {DEMO_KEY}"}
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"make serve exited with {process.returncode}")
        try:
            model = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=5).json()["data"][0]["id"]
            reply = httpx.post(f"{base_url}/v1/chat/completions", headers=headers, timeout=120, json={
                "model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8})
            if reply.status_code == 200:
                return time.monotonic() - started
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise RuntimeError(f"no answer within {timeout:.0f}s")


def run_serve(clone: Path, log_path: Path, make_args: list[str], timeout: float, caches: dict[str, str]) -> float:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGOT_", "VIRTUAL_ENV"))} | caches
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["make", "serve", f"PORT={port}", *make_args], cwd=clone, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return first_answer(f"http://127.0.0.1:{port}", process, timeout)
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Ctrl+C to make and the stack, as in a terminal; SIGKILL after a minute."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    except ProcessLookupError:  # make already exited
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(commit: str, workdir: Path, timeout: float) -> dict:
    clone = workdir / "ingot"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
    # As on a new machine: pip's cache and the model cache start empty (and stay for the warm run)
    caches = {"PIP_CACHE_DIR": str(workdir / "pip-cache"), "INGOT_CACHE_DIR": str(workdir / "ingot-cache")}
    fresh = run_serve(clone, workdir / "fresh.log", [], timeout, caches)
    venv_bytes = tree_bytes(clone / ".venv")
    warm = run_serve(clone, workdir / "warm.log", [], timeout, caches)
    return {"commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                                     check=True).stdout.strip(),
            "fresh_first_answer_s": round(fresh, 1), "warm_first_answer_s": round(warm, 1),
            "venv_bytes": venv_bytes, "venv_gib": round(venv_bytes / 2**30, 2),
            "largest_packages_mib": largest_packages(clone / ".venv")}


def largest_packages(venv: Path, count: int = 6) -> dict[str, float]:
    site = next(venv.glob("lib/python*/site-packages"))
    sizes = {p.name: tree_bytes(p) for p in site.iterdir() if p.is_dir() and not p.name.endswith("-info")}
    top = sorted(sizes.items(), key=lambda item: -item[1])[:count]
    return {name: round(size / 2**20, 1) for name, size in top}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the clone and its logs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ingot-first-run-"))
    try:
        result = measure(args.commit, workdir, args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpus=os.cpu_count(),
                  machine=platform.platform(), load_average=os.getloadavg(),
                  command=f"python -m benchmarks.first_run --commit {args.commit} --out {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
