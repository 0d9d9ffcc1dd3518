"""The serving path's robustness in numbers, on any machine: `ingot serve` on the demo model, driven as a user
(and an operator) would drive it.

    python -m benchmarks.robustness --out benchmarks/results/robustness_cpu \
        [--disconnects 400] [--streams 500] [--cycles 20]

Four measurements, each a count or a time, never a pass/fail of its own (the tests assert; this records):

- disconnects: N clients (streaming and not, chat and completions) each start a long generation, and leave
  (close the socket) once it is under way; then the engine's running-requests gauge on Triton's metrics
  endpoint is read: how many requests still generate 1 s after the last client left, and when the count
  reached zero. KV blocks free against total are read at the end.
- streams: M concurrent streams, each greedy with its tokens forced by logit_bias: how many are lost (no
  `[DONE]`, an error, or not all their tokens) and how many carry text other than their own request's.
- kill: tritonserver is killed (SIGKILL) with streams in flight: how those streams end (an error event and
  `[DONE]`, or cut), and how long until the stack answers a completion again.
- cycles: `ingot serve` is started, given streams some of whose clients leave, and stopped with SIGINT while
  the rest still run, N times: how many tritonserver / Python-backend stub processes and shared-memory regions
  are left after each exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from benchmarks.serving import wait_serving
from engines.triton.launcher import free_port
from engines.triton.processes import alive, cmdline, descendants
from server.stack import DEMO_API_KEY

ROOT = Path(__file__).resolve().parent.parent
MODEL = "demo-llama"
LONG = 480  # tokens asked for (the demo's context is 512): long enough to outlast every measurement
HEADERS = {"Authorization": f"Bearer {DEMO_API_KEY}"}


# ---- one `ingot serve`

@dataclass
class Serve:
    process: subprocess.Popen
    base_url: str
    work_dir: Path
    log_path: Path

    @classmethod
    def start(cls, root: Path) -> Serve:
        port = free_port()
        work_dir = root / "work"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGOT_API_KEYS")}
        env["INGOT_MAX_IN_FLIGHT"] = "4096"  # admission is not what this measures
        env["INGOT_FIRST_TOKEN_TIMEOUT"] = "0"  # clients queued behind max_num_seqs wait as long as they must
        env["INGOT_DRAIN_TIMEOUT"] = "5"  # streams still running at a SIGINT are ended after 5 s
        root.mkdir(parents=True, exist_ok=True)
        log_path = root / "serve.log"
        command = [sys.executable, "-m", "server.cli", "serve", "--demo", "llama", "--port", str(port),
                   "--work-dir", str(work_dir)]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return cls(process, f"http://127.0.0.1:{port}", work_dir, log_path)

    def wait_serving(self, timeout: float = 600) -> float:
        """Seconds until a completion succeeds (not just /ready: after a kill, the time to serve again)."""
        return wait_serving(self.process, lambda: completion(self.base_url).status_code == 200, self.log_path,
                            timeout, poll_s=0.2)

    def tritonservers(self) -> list[int]:
        return [pid for pid in descendants(self.process.pid) if "bin/tritonserver" in cmdline(pid)]

    def triton_arg(self, prefix: str) -> str:
        """The value of tritonserver's `prefix...` argument (its ports and names are chosen at start)."""
        (pid,) = self.tritonservers()
        return next(arg[len(prefix):] for arg in cmdline(pid).split() if arg.startswith(prefix))

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.triton_arg('--metrics-port=')}/metrics"

    def shm_prefix(self) -> str:
        return self.triton_arg("--backend-config=python,shm-region-prefix-name=")

    def engine_gauge(self, name: str) -> float:
        text = httpx.get(self.metrics_url(), timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self, timeout: float = 120) -> float:
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return time.monotonic() - started


def completion(base_url: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", headers=HEADERS, timeout=60,
                      json={"model": MODEL, "prompt": "Hello", "max_tokens": 4})


def leftovers(work_dir: Path, shm_prefixes: set[str]) -> dict:
    """Processes whose command line names the work dir, and shared-memory regions of the Tritons it ran."""
    pids = subprocess.run(["pgrep", "-f", str(work_dir)], capture_output=True, text=True).stdout.split()
    names = [cmdline(int(pid)).split(" ", 1)[0].rsplit("/", 1)[-1] for pid in pids if alive(int(pid))]
    regions = [name for name in os.listdir("/dev/shm") if any(name.startswith(p) for p in shm_prefixes)]
    return {"processes": names, "shm_regions": sorted(regions)}


# ---- clients that leave

def request_bytes(base_url: str, path: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    host = base_url.split("//", 1)[1]
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {DEMO_API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload


def body_for(path: str, stream: bool) -> dict:
    body = {"model": MODEL, "max_tokens": LONG, "ignore_eos": True, "stream": stream}
    if path == "/v1/completions":
        return {**body, "prompt": "Once upon a time"}
    return {**body, "messages": [{"role": "user", "content": "Tell me a long story."}]}


async def leave_after_first_token(base_url: str, path: str, stream: bool, under_way: asyncio.Event,
                                  leave: asyncio.Event) -> str:
    """Send one request and close the connection without reading on once `leave` is set. A streaming client
    says it is under way at its first content chunk; one the engine keeps waiting (more clients than its
    max_num_seqs), or a non-streaming one, as soon as its request is sent: the engine holds it either way."""
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(base_url, path, body_for(path, stream)))
        await writer.drain()
        if not stream:
            under_way.set()
            await leave.wait()
            return "left"
        seen = b""
        reading = asyncio.ensure_future(reader.read(4096))
        leaving = asyncio.ensure_future(leave.wait())
        while not leave.is_set():
            await asyncio.wait({reading, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                chunk = reading.result()
                if not chunk:
                    return "closed by the server"
                seen += chunk
                if not seen.startswith(b"HTTP/1.1 200"):
                    return seen.split(b"\r\n", 1)[0].decode()
                if b'"content"' in seen or b'"text"' in seen:
                    under_way.set()
                reading = asyncio.ensure_future(reader.read(4096))
        reading.cancel()
        return "left"
    finally:
        writer.close()


async def disconnects(serve: Serve, count: int) -> dict:
    paths = ("/v1/chat/completions", "/v1/completions")
    leave = asyncio.Event()
    events = [asyncio.Event() for _ in range(count)]
    # One client in four does not stream: it can only leave by closing the connection while waiting.
    tasks = [asyncio.create_task(leave_after_first_token(serve.base_url, paths[i % 2], i % 4 != 0, events[i], leave))
             for i in range(count)]
    deadline = time.monotonic() + 300
    while serve.engine_gauge("ingot_engine_running_requests") < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    held = serve.engine_gauge("ingot_engine_running_requests")
    generating = sum(event.is_set() for event in events)
    leave.set()
    outcomes = await asyncio.gather(*tasks)
    left_at = time.monotonic()
    after_1s, zero_after = None, None
    while time.monotonic() - left_at < 60:
        running = serve.engine_gauge("ingot_engine_running_requests")
        elapsed = time.monotonic() - left_at
        if after_1s is None and elapsed >= 1.0:
            after_1s = running
        if running == 0:
            zero_after = elapsed
            break
        await asyncio.sleep(0.05)
    if after_1s is None:
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - left_at)))
        after_1s = serve.engine_gauge("ingot_engine_running_requests")
    return {"clients": count, "streaming": sum(1 for i in range(count) if i % 4 != 0),
            "engine_held_before_leaving": held, "with_tokens_before_leaving": generating,
            "left_cleanly": outcomes.count("left"),
            "other_outcomes": sorted({o for o in outcomes if o != "left"}),
            "running_1s_after_last_left": after_1s, "running_reached_zero_after_s": zero_after,
            "free_kv_blocks": serve.engine_gauge("ingot_engine_free_kv_blocks"),
            "total_kv_blocks": serve.engine_gauge("ingot_engine_total_kv_blocks")}


# ---- many streams at once: none lost, none mixed

def marked_body(index: int, stream: bool) -> dict:
    """A greedy completion whose every token is forced by logit_bias (+100 on one token of its own): the
    answer does not depend on batching or numerics, so a token of another request cannot pass unseen."""
    body = {"model": MODEL, "prompt": f"Request {index}:", "max_tokens": 16, "ignore_eos": True, "temperature": 0,
            "logit_bias": {str(100 + index % 500): 100}, "stream": stream}
    return {**body, "stream_options": {"include_usage": True}} if stream else body


async def concurrent_streams(serve: Serve, count: int) -> dict:
    limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    async with httpx.AsyncClient(base_url=serve.base_url, headers=HEADERS, timeout=900, limits=limits) as client:
        async def one(index: int) -> dict:
            text, done, tokens, error = [], False, None, None
            try:
                async with client.stream("POST", "/v1/completions", json=marked_body(index, True)) as response:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            done = True
                            continue
                        event = json.loads(line[6:])
                        error = error or event.get("error")
                        text += [choice["text"] for choice in event.get("choices", [])]
                        tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
            except httpx.HTTPError as exc:
                error = repr(exc)
            return {"text": "".join(text), "done": done, "tokens": tokens, "error": error}

        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(count)))
        wall = time.monotonic() - started
        # The same requests, not streamed, a few at a time: what each stream had to say.
        gate = asyncio.Semaphore(16)

        async def alone(index: int) -> str:
            async with gate:
                response = await client.post("/v1/completions", json=marked_body(index, False))
                return response.json()["choices"][0]["text"]

        expected = await asyncio.gather(*(alone(i) for i in range(count)))
    lost = [i for i, r in enumerate(results) if not r["done"] or r["error"] or r["tokens"] != 16]
    mixed = [i for i, r in enumerate(results) if i not in lost and r["text"] != expected[i]]
    return {"streams": count, "wall_s": round(wall, 1), "lost": len(lost), "mixed": len(mixed),
            "lost_examples": [results[i] for i in lost[:3]], "mixed_examples": mixed[:5]}


# ---- tritonserver killed mid-stream

def kill_mid_stream(serve: Serve, streams: int = 4) -> dict:
    endings: list[str] = []
    started = [asyncio.Event() for _ in range(streams)]

    async def one(first_token: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=serve.base_url, headers=HEADERS, timeout=120) as client:
            async with client.stream("POST", "/v1/completions", json=body_for("/v1/completions", True)) as response:
                last, error, finished = None, False, False
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    last = line[6:]
                    first_token.set()
                    error = error or '"error"' in last
                    finished = finished or '"finish_reason":"length"' in last.replace(" ", "")
                endings.append("finished before the kill" if finished else
                               "error event + [DONE]" if error and last == "[DONE]" else
                               "[DONE] without error" if last == "[DONE]" else "cut")

    async def run() -> float:
        tasks = [asyncio.create_task(one(event)) for event in started]
        await asyncio.gather(*(event.wait() for event in started))  # every stream is under way
        (pid,) = serve.tritonservers()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.gather(*tasks, return_exceptions=True)
        return killed

    killed = asyncio.run(run())
    while True:
        try:
            if completion(serve.base_url).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() - killed > 600:
            return {"streams": streams, "endings": endings, "serving_again_after_s": None}
        time.sleep(0.1)
    return {"streams": streams, "endings": sorted(endings), "serving_again_after_s": time.monotonic() - killed}


# ---- stop/start cycles

def cycle(root: Path, index: int) -> dict:
    serve = Serve.start(root / f"cycle-{index}")
    prefixes = set()
    try:
        serve.wait_serving()
        prefixes.add(serve.shm_prefix())
        asyncio.run(_streams_some_leave(serve))
    finally:
        stop_s = serve.stop()
    return {"cycle": index, "exit_code": serve.process.returncode, "stop_s": round(stop_s, 2),
            **leftovers(serve.work_dir, prefixes)}


async def _streams_some_leave(serve: Serve) -> None:
    """Four streams: two clients leave after their first token, two are still running at the SIGINT."""
    leave, stay = asyncio.Event(), asyncio.Event()
    events = [asyncio.Event() for _ in range(4)]
    tasks = [asyncio.create_task(leave_after_first_token(serve.base_url, "/v1/completions", True, events[i],
                                                         leave if i < 2 else stay)) for i in range(4)]
    await asyncio.gather(*(event.wait() for event in events))
    leave.set()
    await asyncio.gather(*tasks[:2])
    serve.process.send_signal(signal.SIGINT)
    await asyncio.gather(*tasks[2:], return_exceptions=True)


# ---- the report

@dataclass
class Report:
    command: str
    machine: dict
    disconnects: dict = field(default_factory=dict)
    streams: dict = field(default_factory=dict)
    kill: dict = field(default_factory=dict)
    cycles: list = field(default_factory=list)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(report: Report) -> str:
    d, k = report.disconnects, report.kill
    left = [c for c in report.cycles if c["processes"] or c["shm_regions"]]
    lines = [
        "# Serving-path robustness (`ingot serve --demo llama`, CPU)", "",
        f"Command: `{report.command}`. Machine: {report.machine}.", "",
        "| measurement | result |", "|---|---|",
    ]
    if d:
        lines += [f"| {d['clients']} clients leave a long generation ({d['streaming']} streaming) | "
                  f"{d['running_1s_after_last_left']:.0f} requests still generating 1 s after the last left; "
                  f"zero after {d['running_reached_zero_after_s']:.2f} s; KV blocks free {d['free_kv_blocks']:.0f} "
                  f"of {d['total_kv_blocks']:.0f} |"]
    if report.streams:
        st = report.streams
        lines += [f"| {st['streams']} concurrent streams (16 tokens each, forced by logit_bias) | {st['lost']} lost, "
                  f"{st['mixed']} mixed with another request's tokens; all done in {st['wall_s']} s |"]
    if k:
        lines += [f"| tritonserver killed (SIGKILL) with {k['streams']} streams in flight | streams ended: "
                  f"{', '.join(k['endings'])}; serving again after {k['serving_again_after_s']:.1f} s |"]
    if report.cycles:
        lines += [f"| {len(report.cycles)} start / cancel / SIGINT-mid-stream cycles | {len(left)} cycles left "
                  f"processes or shared memory behind; slowest stop {max(c['stop_s'] for c in report.cycles)} s |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for robustness.json and robustness.md")
    parser.add_argument("--disconnects", type=int, default=400)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams checked for loss and mixing")
    parser.add_argument("--skip-kill", action="store_true")
    args = parser.parse_args(argv)
    report = Report(command="python -m benchmarks.robustness " + " ".join(argv or sys.argv[1:]), machine=machine())
    with tempfile.TemporaryDirectory(prefix="ingot-robustness-") as tmp:
        root = Path(tmp)
        if args.disconnects or args.streams or not args.skip_kill:
            serve = Serve.start(root / "main")
            try:
                serve.wait_serving()
                if args.disconnects:
                    report.disconnects = asyncio.run(disconnects(serve, args.disconnects))
                    print(json.dumps(report.disconnects), flush=True)
                if args.streams:
                    report.streams = asyncio.run(concurrent_streams(serve, args.streams))
                    print(json.dumps(report.streams), flush=True)
                if not args.skip_kill:
                    report.kill = kill_mid_stream(serve)
                    print(json.dumps(report.kill), flush=True)
            finally:
                serve.stop()
        for index in range(args.cycles):
            report.cycles.append(cycle(root, index))
            print(json.dumps(report.cycles[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (args.out / "robustness.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
