"""`opendeep serve` as a subprocess with real sockets, pointed at the simulator and the fake models.

Shared by the end-to-end test, `make demo` (tests/demo.py) and bench/bench_e2e.py:

    stack = ServeProcess(workdir, database_url=...)      # picks free ports for web, FastAGI, AudioSocket
    stack.env.update(AMI_PORT=str(ami_port), OPENAI_BASE_URL=base_url)
    await stack.cli("db", "upgrade")
    await stack.cli("user", "add", "alice", "--password-stdin", input="secret words\\n")
    await stack.start()                                  # returns once web, FastAGI and AudioSocket answer
    stack.web_url                                         # http://127.0.0.1:<port>
    await stack.stop()                                   # SIGTERM, then kill after `stop_timeout`
    stack.log_text()                                     # everything it printed
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    def __init__(self, workdir: Path, *, database_url: str, web_port: int | None = None,
                 extra_env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.web_port = web_port or free_port()
        self.fastagi_port = free_port()
        self.audiosocket_port = free_port()
        self.log_path = Path(log_path) if log_path else self.workdir / "serve.log"
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {
            **os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": database_url,
            "WEB_BIND": f"127.0.0.1:{self.web_port}", "FASTAGI_BIND": f"127.0.0.1:{self.fastagi_port}",
            "AUDIOSOCKET_BIND": f"127.0.0.1:{self.audiosocket_port}", "AMI_HOST": "127.0.0.1",
            "AMI_USERNAME": "opendeep", "AMI_SECRET": "e2e-secret", "AMI_RECONNECT_MAX_SECONDS": "2",
            "OPENAI_API_KEY": "sk-fake", "GOOGLE_API_KEY": "", "SECRET_KEY": "e2e-" + "k" * 40,
            "SCHEDULER_POLL_SECONDS": "0.2", "LIFECYCLE_INTERVAL_SECONDS": "5", "LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def settings_env(self) -> dict[str, str]:
        """The OpenDeep settings of this process (for load_settings in the test: the dialplan render)."""
        keys = ("DATABASE_URL", "WEB_BIND", "FASTAGI_BIND", "AUDIOSOCKET_BIND", "AMI_HOST", "AMI_PORT",
                "AMI_USERNAME", "AMI_SECRET", "OPENAI_API_KEY", "OPENAI_BASE_URL")
        return {key: self.env[key] for key in keys if key in self.env}

    async def cli(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `opendeep <args>` with this environment; raises with its output when it fails."""
        def _run() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "opendeep.cli", *args], cwd=self.workdir, env=self.env,
                                  input=input, capture_output=True, text=True, timeout=timeout)
        done = await asyncio.to_thread(_run)
        if done.returncode != 0:
            raise RuntimeError(f"opendeep {' '.join(args)} exited {done.returncode}: {done.stderr or done.stdout}")
        return done

    only: str | None = None   # `serve --only` components; None = all of them

    async def start(self, timeout: float = 30) -> None:
        """Start `opendeep serve` and return once each of its listening ports answers."""
        command = [sys.executable, "-m", "opendeep.cli", "serve"]
        if self.only:
            command += ["--only", self.only]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        listening = {"fastagi": self.fastagi_port, "audiosocket": self.audiosocket_port, "web": self.web_port}
        wanted = self.only.split(",") if self.only else list(listening)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for port in (port for name, port in listening.items() if name in wanted):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"opendeep serve exited with {self.process.returncode}:\n{self.log_text()}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if loop.time() > deadline:
                        raise RuntimeError(f"port {port} never answered:\n{self.log_text()}") from None
                    await asyncio.sleep(0.1)

    async def stop(self, stop_timeout: float = 15) -> int | None:
        """SIGTERM and wait; kill -9 if it does not stop in time. Returns the exit code (None if killed)."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(process.wait, stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)
            return None

    def kill(self) -> None:
        """Last resort from a finally: block: kill -9 and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
