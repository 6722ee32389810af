"""`opendeep serve`: start the components in order in one process, stop them in reverse.

A component is any object with `name`, `async start()` and `async stop()`. Each package builds its own
from the shared Runtime; `--only` picks a subset (e.g. `fastagi,audiosocket` on a box beside Asterisk).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy import text

from opendeep.costs import warn_unpriced_models
from opendeep.dberrors import describe_unreachable, unreachable_reason
from opendeep.runtime import Runtime

log = logging.getLogger(__name__)


class Component(Protocol):
    """Optionally also `health() -> dict` with at least "ok" (opendeep/health.py)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _webhooks(runtime: Runtime) -> Component:
    from opendeep.webhooks import WebhookComponent
    return WebhookComponent(runtime)


def _web(runtime: Runtime) -> Component:
    from webui.app import WebComponent
    return WebComponent(runtime)


def _fastagi(runtime: Runtime) -> Component:
    from fastagi_server.server import FastAgiComponent
    return FastAgiComponent(runtime)


def _audiosocket(runtime: Runtime) -> Component:
    from audiosocket.server import AudioSocketComponent
    return AudioSocketComponent(runtime)


def _ami(runtime: Runtime) -> Component:
    from ami_controller.component import AmiComponent
    return AmiComponent(runtime)


def _after_call(runtime: Runtime) -> Component:
    from opendeep.after_call import AfterCallComponent
    return AfterCallComponent(runtime)


# Start order: the servers Asterisk calls into first, then the AMI controller and scheduler that make calls,
# the after-call services, and the web UI last (it shows all of the above).
COMPONENTS: dict[str, Callable[[Runtime], Component]] = {
    "fastagi": _fastagi,
    "audiosocket": _audiosocket,
    "ami": _ami,
    "aftercall": _after_call,
    "webhooks": _webhooks,
    "web": _web,
}


def loop_factory(settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `opendeep` runs on (EVENT_LOOP): None for asyncio's own, uvloop's when asked for."""
    if settings.event_loop != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        raise RuntimeError("EVENT_LOOP=uvloop, but uvloop is not installed: pip install 'opendeep[uvloop]' "
                           "(or set EVENT_LOOP=asyncio)") from None
    return uvloop.new_event_loop


def parse_only(raw: str | None) -> list[str]:
    if not raw:
        return list(COMPONENTS)
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown or not names:
        raise ValueError(f"--only: unknown component(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(COMPONENTS)}")
    return [name for name in COMPONENTS if name in names]


DATABASE_RETRY_MAX_SECONDS = 30.0


async def wait_for_database(runtime: Runtime, stop_event: asyncio.Event, *, first_wait: float = 1.0,
                            max_wait: float = DATABASE_RETRY_MAX_SECONDS) -> bool:
    """Wait until the database answers (True), or `stop_event` is set (False). While it cannot be reached,
    one line per try, with backoff (1 s doubling up to `max_wait`); any other error is raised."""
    wait = first_wait
    while not stop_event.is_set():
        try:
            async with runtime.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            reason = unreachable_reason(exc)
            if reason is None:
                raise
            log.warning("waiting for the database: %s; next try in %.0f s (check DATABASE_URL)",
                        describe_unreachable(runtime.settings.database_url, reason), wait)
        try:
            await asyncio.wait_for(stop_event.wait(), wait)
        except TimeoutError:
            pass
        wait = min(wait * 2, max_wait)
    return False


async def serve(runtime: Runtime, names: Sequence[str], stop_event: asyncio.Event | None = None) -> None:
    """Run the named components until SIGINT/SIGTERM (or `stop_event`), once the database answers."""
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop_event.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    if runtime.settings.event_loop != "asyncio":
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
    started: list[Component] = []
    # Live-call actions (DTMF, transfer, hangup) work in every process, whichever holds the call: through the
    # `ami` part's controllers where it runs here, else over an AMI connection of this process's own.
    from ami_controller.actions import CallActions
    runtime.ami = actions = CallActions(runtime.settings, runtime.sessions)
    warn_unpriced_models(runtime.settings)
    try:
        if not await wait_for_database(runtime, stop_event):
            return
        for name in names:
            component = COMPONENTS[name](runtime)
            await component.start()
            started.append(component)
            runtime.components[name] = component
            log.info("%s started", component.name)
        await stop_event.wait()
    finally:
        runtime.components.clear()
        for component in reversed(started):
            try:
                await component.stop()
                log.info("%s stopped", component.name)
            except Exception:  # one failing stop must not keep the others running
                log.exception("%s failed to stop cleanly", component.name)
        await actions.close()
        runtime.ami = None
        await runtime.close()
        for sig in handled:
            loop.remove_signal_handler(sig)
