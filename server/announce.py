"""What `ingot serve` tells a person once the gateway accepts connections: where, a request to try, how to stop.

The announcement waits for the gateway's `/health` to answer, so "gateway on …" is never printed before
a request could succeed.
"""
from __future__ import annotations

import json
import shlex
import threading
import urllib.request
from collections.abc import Callable

ANY_ADDRESS = ("0.0.0.0", "::", "")


def client_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL a local client uses: a wildcard bind address is reached on loopback."""
    host = "127.0.0.1" if host in ANY_ADDRESS else host
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def try_command(base_url: str, api_key: str, model: str) -> str:
    """A curl a person can paste as it is to get an answer."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32},
                      ensure_ascii=False)
    return (f"curl -s {base_url}/v1/chat/completions -H {shlex.quote(f'Authorization: Bearer {api_key}')} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")


def announcement(base_url: str, api_key: str | None, model: str, elapsed: float) -> list[str]:
    key = api_key or "$INGOT_API_KEY"  # a configured key is a secret: never printed
    return [f"gateway on {base_url}/v1 (model {model!r}), ready {elapsed:.0f}s after start; try:",
            f"  {try_command(base_url, key, model)}",
            f"API docs: {base_url}/docs; stop with Ctrl+C"]


def wait_until_listening(base_url: str, stop: threading.Event, poll: float = 0.2) -> bool:
    """True once GET /health answers 200; False if `stop` is set first (the gateway exited)."""
    while not stop.is_set():
        try:  # urllib, not httpx: httpx logs every request at INFO into the serve log
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        stop.wait(poll)
    return False


def announce_when_listening(base_url: str, lines: Callable[[], list[str]],
                            emit: Callable[[str], None]) -> threading.Event:
    """Print `lines()` from a background thread once the gateway answers; set the returned event to give up."""
    stop = threading.Event()

    def run() -> None:
        if wait_until_listening(base_url, stop):
            for line in lines():
                emit(line)

    threading.Thread(target=run, name="announce-gateway", daemon=True).start()
    return stop
