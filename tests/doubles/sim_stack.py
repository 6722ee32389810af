"""The end-to-end scenery on the Asterisk simulator: scripted models on the fake OpenAI server, the simulator and
`opendeep serve` as a subprocess, a user logged in to nothing yet; all torn down whatever happens, and the serve
process must have stopped cleanly (exit 0, no traceback).

    async with simulator_stack(tmp_path, models, user=USER, password=PASSWORD, talk_seconds=25,
                               env={"MAX_CONCURRENT_CALLS": "1"}) as (serve, sim, fake):
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from opendeep.settings import load_settings
from tests.doubles.ami_helpers import eventually
from tests.doubles.asterisk_sim import AsteriskSim, Callee
from tests.doubles.fake_openai import FakeOpenAI, ScriptedModels
from tests.doubles.serve_process import ServeProcess


@contextlib.asynccontextmanager
async def simulator_stack(tmp_path: Path, models: ScriptedModels, *, user: str, password: str,
                          talk_seconds: float, env: dict[str, str] | None = None,
                          database: str = "e2e.db") -> AsyncIterator[tuple[ServeProcess, AsteriskSim, FakeOpenAI]]:
    fake = models.install(FakeOpenAI())
    base_url = await fake.start()
    serve = ServeProcess(tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / database}",
                         extra_env={"OPENAI_BASE_URL": base_url, "ORIGINATE_TIMEOUT_SECONDS": "10", **(env or {})})
    sim = AsteriskSim(load_settings(serve.settings_env(), dotenv=None), directory=serve.workdir,
                      default_callee=Callee("answer", talk_seconds=talk_seconds, speech_seconds=1.0))
    serve.env["AMI_PORT"] = str(await sim.start())
    try:
        await serve.cli("db", "upgrade")
        await serve.cli("user", "add", user, "--password-stdin", input=password + "\n")
        await serve.start()
        await eventually(lambda: sim.ami.connected_clients >= 1, 15, 0.1, what="the AMI login")
        yield serve, sim, fake
    finally:
        try:
            code = await serve.stop()
        finally:
            serve.kill()
            await sim.stop()
            await fake.stop()
    assert code == 0, serve.log_text()
    assert "Traceback" not in serve.log_text(), serve.log_text()
