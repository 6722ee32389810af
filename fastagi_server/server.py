"""Our own small asyncio FastAGI server, and the `fastagi` component that `opendeep serve` starts.

Why not panoramisk's `fast_agi.Application`: its header loop (`while b'\\n\\n' not in buffer: buffer += await
reader.read(100)`) never ends for a peer that closes before the empty line (read() keeps returning b''), has no
timeout and no size cap; tests/test_fastagi_server.py shows it spinning next to ours closing cleanly.

Each connection is its own task: a slow, malformed or hostile session costs only itself. Every failure is
logged with the peer and the channel, the socket is closed, and the server goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from fastagi_server.protocol import (
    HEADER_TIMEOUT_SECONDS,
    MAX_HEADER_BYTES,
    MAX_REPLY_LINE_BYTES,
    AgiError,
    AgiHangup,
    AgiHeaderError,
    AgiSession,
    read_environment,
)

log = logging.getLogger("opendeep.fastagi")

Route = Callable[[AgiSession], Awaitable[None]]
STOP_GRACE_SECONDS = 5.0
# Every OpenDeep route is a handful of commands and one transaction; a session still open after this long is
# stuck (a silent peer, a locked database) and is closed. One deadline per session is also cheaper than a
# timer per command.
SESSION_TIMEOUT_SECONDS = 60.0


class FastAgiServer:
    """Accept FastAGI sessions and hand each to the route named by its `agi_network_script` path."""

    def __init__(self, routes: Mapping[str, Route], host: str = "127.0.0.1", port: int = 4573, *,
                 header_timeout: float = HEADER_TIMEOUT_SECONDS, max_header_bytes: int = MAX_HEADER_BYTES,
                 session_timeout: float = SESSION_TIMEOUT_SECONDS):
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.session_timeout = session_timeout
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task] = set()

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0 in tests)."""
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port,
                limit=max(self.max_header_bytes, MAX_REPLY_LINE_BYTES), reuse_address=True,
            )
        except OSError as exc:
            raise OSError(exc.errno, f"FastAGI cannot listen on {self.host}:{self.port}: {exc.strerror} "
                                     "(check FASTAGI_BIND, or whether another process holds the port)") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("FastAGI listening on %s:%s (routes: %s)", self.host, self.port, ", ".join(sorted(self.routes)))
        return self.port

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting; give running sessions `grace` seconds, then cancel them."""
        if self._server is not None:
            self._server.close()
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve_session(reader, writer))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def _serve_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        env = None
        # One deadline per session: header_timeout for the environment, then moved to session_timeout for
        # the route (a single timer instead of one per read or command).
        try:
            async with asyncio.timeout(self.header_timeout) as deadline:
                env = await read_environment(reader, timeout=None, max_bytes=self.max_header_bytes)
                route = self.routes.get(env.script)
                session = AgiSession(reader, writer, env, command_timeout=None)
                if route is None:
                    log.error("FastAGI: no route %r (from %s on %s); known routes: %s. Check the "
                              "AGI(agi://...) lines in extensions_opendeep.conf", env.script, peer, env.channel,
                              ", ".join(sorted(self.routes)))
                    return
                deadline.reschedule(loop.time() + self.session_timeout)
                await route(session)
        except AgiHeaderError as exc:
            log.warning("FastAGI session from %s dropped: %s", peer, exc)
        except TimeoutError:
            if env is None:
                log.warning("FastAGI session from %s dropped: no complete AGI environment within %g s",
                            peer, self.header_timeout)
            else:
                log.warning("FastAGI %s on %s: still running after %g s; closed", env.script, env.channel,
                            self.session_timeout)
        except AgiHangup as exc:
            log.info("FastAGI %s on %s: channel hung up (%s)", env.script, env.channel, exc)
        except AgiError as exc:
            log.warning("FastAGI %s on %s: %s", env.script, env.channel, exc)
        except (ConnectionError, OSError) as exc:
            log.info("FastAGI session from %s (%s): connection lost (%s)", peer, env and env.script, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("FastAGI route %s failed on %s", env and env.script, env and env.channel)
        finally:
            _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()  # the transport flushes and closes by itself


class FastAgiComponent:
    """The `fastagi` part of `opendeep serve`: our server with OpenDeep's call routes."""

    name = "fastagi"

    def __init__(self, runtime, *, host: str | None = None, port: int | None = None):
        from fastagi_server.routes import CallRoutes  # routes import the DB layer; keep this module light

        self.runtime = runtime
        self.routes = CallRoutes(runtime.settings, runtime.sessions, runtime.events)
        bind = runtime.settings.fastagi_bind
        self.server = FastAgiServer(self.routes.table(), host or bind.host, bind.port if port is None else port)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
