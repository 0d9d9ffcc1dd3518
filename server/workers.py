"""Several gateway processes on one box: uvicorn's workers share one listening socket, each builds its own app
(and so its own Triton client and event loop). The gateway is stateless, so nothing else is shared but the
Prometheus metrics, which prometheus-client's multiprocess mode sums from files in a private folder.

The settings reach the workers as a pickle in that same private folder (mode 0700): no key travels on a
command line or in an environment variable. The folder is removed when the gateway exits.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path

from server.cpu_limit import usable_cpus

SETTINGS_FILE_ENV = "INGOT_GATEWAY_SETTINGS_FILE"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("ingot.gateway")


def default_workers(cores: int | None = None) -> int:
    """Half the cores this process may use (Triton and the engine need the rest on a shared box), 1 to 8. The cores
    are its CPU affinity capped by its container's CPU quota (server.cpu_limit), not the node's core count."""
    if cores is None:
        cores = usable_cpus()
    return max(1, min(cores // 2, 8))


def run_workers(settings, workers: int, uvicorn_options: dict) -> None:
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="ingot-gateway-") as private:
        metrics_dir = Path(private) / "metrics"
        metrics_dir.mkdir()
        settings_file = Path(private) / "settings.pickle"
        settings_file.write_bytes(pickle.dumps(settings))
        os.environ[MULTIPROC_ENV], os.environ[SETTINGS_FILE_ENV] = str(metrics_dir), str(settings_file)
        log.info("%d gateway workers; their metrics are summed from %s", workers, metrics_dir)
        try:
            uvicorn.run("server.workers:worker_app", factory=True, workers=workers, host=settings.host,
                        port=settings.port, **uvicorn_options)
        finally:
            for name in (MULTIPROC_ENV, SETTINGS_FILE_ENV):
                os.environ.pop(name, None)


def worker_app():
    """The app of one worker process (uvicorn calls this in each spawned worker)."""
    from server.app import create_app

    settings = pickle.loads(Path(os.environ[SETTINGS_FILE_ENV]).read_bytes())
    return create_app(settings)
