"""`make run` in miniature: `opendeep serve` starts every component; with no Asterisk the AMI controller waits
and retries with backoff while the web UI, FastAGI and AudioSocket servers keep answering (and /healthz says
which part is missing); SIGTERM stops it."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.doubles.serve_process import free_port

ROOT = Path(__file__).resolve().parents[1]



def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited early with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} never answered")


def test_serve_runs_everything_and_waits_for_asterisk(tmp_path):
    database = f"sqlite+aiosqlite:///{tmp_path / 'opendeep.db'}"
    upgrade = subprocess.run([sys.executable, "-m", "opendeep.cli", "db", "upgrade"], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": database},
                             capture_output=True, text=True, timeout=60)
    assert upgrade.returncode == 0, upgrade.stderr
    web, fastagi, audiosocket, ami = (free_port() for _ in range(4))   # nothing listens on `ami`
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": database, "WEB_BIND": f"127.0.0.1:{web}",
           "FASTAGI_BIND": f"127.0.0.1:{fastagi}", "AUDIOSOCKET_BIND": f"127.0.0.1:{audiosocket}",
           "AMI_PORT": str(ami), "AMI_RECONNECT_MAX_SECONDS": "2", "SCHEDULER_POLL_SECONDS": "0.5",
           "LIFECYCLE_INTERVAL_SECONDS": "1", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "opendeep.cli", "serve"], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in (fastagi, audiosocket, web):
            _wait_for_port(port, process)
        response = httpx.get(f"http://127.0.0.1:{web}/login", timeout=5)
        assert response.status_code == 200
        time.sleep(4)   # long enough for several reconnect attempts with backoff 1 s, 2 s
        assert process.poll() is None
        response = httpx.get(f"http://127.0.0.1:{web}/login", timeout=5)
        assert response.status_code == 200
        health = httpx.get(f"http://127.0.0.1:{web}/healthz", timeout=5)   # what monitoring sees meanwhile
        assert health.status_code == 503
        states = health.json()["components"]
        passes = states["ami"].pop("scheduler_passes")   # the scheduler runs its passes while AMI is down
        assert states["ami"] == {"ok": False, "asterisk": f"127.0.0.1:{ami}", "connected": False, "scheduler": True}
        assert isinstance(passes, int) and passes >= 1
        assert [name for name, state in states.items() if state["ok"]] == ["fastagi", "audiosocket", "aftercall",
                                                                          "webhooks", "web"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    output = log_path.read_text()
    waiting = [line for line in output.splitlines() if re.search(r"waiting for Asterisk", line, re.I)]
    assert len(waiting) >= 2, output
    assert f"127.0.0.1:{ami}" in waiting[0]
    assert code == 0, output
    assert "Traceback" not in output, output
