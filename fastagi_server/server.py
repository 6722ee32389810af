"""Our own small asyncio FastAGI server, and the `fastagi` component that `opendeep serve` starts.

Why not panoramisk's `fast_agi.Application`: its header loop (`while b'\\n\\n' not in buffer: buffer += await
reader.read(100)`) never ends for a peer that closes before the empty line (read() keeps returning b''), has no
timeout and no size cap; tests/test_fastagi_server.py shows it spinning next to ours closing cleanly.

A connection is first a small protocol object that collects its environment (bounded in size and time, no
task); a complete one runs its route as its own task. A slow, malformed or hostile session costs only
itself. Every failure is logged with the peer and the channel, the socket is closed, and the server goes on.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping

from fastagi_server.protocol import (
    HEADER_TIMEOUT_SECONDS,
    MAX_HEADER_BYTES,
    AgiConnection,
    AgiEnvironment,
    AgiError,
    AgiHangup,
    AgiHeaderError,
    AgiSession,
)
from opendeep.metrics import FASTAGI_SECONDS, FASTAGI_SESSIONS

log = logging.getLogger(__name__)

Route = Callable[[AgiSession], Awaitable[None]]
STOP_GRACE_SECONDS = 5.0
# Every OpenDeep route is a handful of commands and one transaction; a session still open after this long is
# stuck (a silent peer, a locked database) and is closed. One sweep over the open connections every
# SWEEP_SECONDS enforces it and the header timeout: cheaper than a timer per connection or per command.
SESSION_TIMEOUT_SECONDS = 60.0
SWEEP_SECONDS = 1.0
# Metric labels come from this fixed set; a route added later (another module's) is counted as "other" until
# it is named here.
METRIC_ROUTES = frozenset({"call-start", "call-answered", "call-end", "amd", "transfer", "callback", "callback-end"})


class FastAgiServer:
    """Accept FastAGI sessions and hand each to the route named by its `agi_network_script` path.

    Each connection is an AgiConnection (protocol.py): the environment is read and bounded there, without a
    task; a complete one starts the route as its own task, under one deadline for the whole session.
    """

    def __init__(self, routes: Mapping[str, Route], host: str = "127.0.0.1", port: int = 4573, *,
                 header_timeout: float = HEADER_TIMEOUT_SECONDS, max_header_bytes: int = MAX_HEADER_BYTES,
                 session_timeout: float = SESSION_TIMEOUT_SECONDS, secret: str | None = None,
                 peer_allowed: Callable[[str | None], bool] | None = None):
        self.routes = dict(routes)
        # Who may speak AGI to us: the secret in the AGI URL (`?secret=`) and the peer's address. None: no check
        # (protocol tests and benches of the bare server); `opendeep serve` always sets both.
        self.secret = secret
        self.peer_allowed = peer_allowed
        self.refused_sessions = 0
        self.host = host
        self.port = port
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.session_timeout = session_timeout
        self._server: asyncio.Server | None = None
        self._connecting: set[AgiConnection] = set()  # still sending their environment
        self._sessions: dict[asyncio.Task, float] = {}  # routes running -> their deadline (loop time)
        self._sweeper: asyncio.TimerHandle | None = None
        self._metrics: dict[str, tuple] = {}             # route -> bound metric children (labels() is not free)

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0 in tests)."""
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._new_connection, self.host, self.port, reuse_address=True)
        except OSError as exc:
            raise OSError(exc.errno, f"FastAGI cannot listen on {self.host}:{self.port}: {exc.strerror} "
                                     "(check FASTAGI_BIND, or whether another process holds the port)") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        # Often enough for the shortest deadline (tests use fractions of a second), at most once a second.
        self._sweep_every = max(min(SWEEP_SECONDS, self.header_timeout / 3, self.session_timeout / 3), 0.02)
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)
        log.info("FastAGI listening on %s:%s (routes: %s)", self.host, self.port, ", ".join(sorted(self.routes)))
        return self.port

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting; give running sessions `grace` seconds, then cancel them."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self._sessions or self._connecting) and loop.time() < deadline:
            if self._sessions:
                await asyncio.wait(set(self._sessions), timeout=deadline - loop.time())
            else:  # only peers still sending their environment: they may yet become sessions
                await asyncio.sleep(min(0.05, max(deadline - loop.time(), 0)))
        for connection in list(self._connecting):
            connection.close()
        self._connecting.clear()
        pending = set(self._sessions)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def active_sessions(self) -> int:
        return len(self._connecting) + len(self._sessions)

    def _new_connection(self) -> AgiConnection:
        connection = AgiConnection(self._environment_received, self._refused,
                                   header_timeout=self.header_timeout, max_header_bytes=self.max_header_bytes)
        self._connecting.add(connection)
        return connection

    def _refused(self, connection: AgiConnection, error: AgiHeaderError) -> None:
        self._connecting.discard(connection)
        self._count("", "refused")   # no route named yet: counted as "other"
        log.warning("FastAGI session from %s dropped: %s", connection.peer, error)

    def _environment_received(self, connection: AgiConnection, env: AgiEnvironment) -> None:
        self._connecting.discard(connection)
        if not self._trusted(connection, env):
            self.refused_sessions += 1
            self._count(env.script, "refused")
            connection.close()
            return
        route = self.routes.get(env.script)
        if route is None:
            self._count(env.script, "refused")
            log.error("FastAGI: no route %r (from %s on %s); known routes: %s. Check the "
                      "AGI(agi://...) lines in extensions_opendeep.conf", env.script, connection.peer, env.channel,
                      ", ".join(sorted(self.routes)))
            connection.close()
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._serve_session(route, connection, env))
        self._sessions[task] = loop.time() + self.session_timeout
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task) -> None:
        self._sessions.pop(task, None)

    def _sweep(self) -> None:
        """Refuse connections still without a complete environment after header_timeout; cancel the sessions
        past their deadline (the route sees CancelledError; _serve_session logs it)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in list(self._connecting):
            connection.expire_header(now)
        for task, deadline in list(self._sessions.items()):
            if deadline <= now and not task.done():
                self._sessions[task] = float("inf")  # cancelled once
                task.cancel(msg="session timeout")
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    def _count(self, route: str, result: str) -> None:
        FASTAGI_SESSIONS.labels(route if route in METRIC_ROUTES else "other", result).inc()

    def _route_metrics(self, route: str) -> tuple:
        bound = self._metrics.get(route)
        if bound is None:
            label = route if route in METRIC_ROUTES else "other"
            bound = self._metrics[route] = (FASTAGI_SESSIONS.labels(label, "ok"),
                                            FASTAGI_SESSIONS.labels(label, "error"), FASTAGI_SECONDS.labels(label))
        return bound

    def _trusted(self, connection: AgiConnection, env: AgiEnvironment) -> bool:
        """Asterisk, not someone who found the port: an allowed address and the secret (never logged)."""
        peer = connection.peer
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if self.peer_allowed is not None and not self.peer_allowed(host):
            log.warning("FastAGI %s from %s refused: the address is not in ASTERISK_ALLOWED_PEERS", env.script, peer)
            return False
        if self.secret is not None:
            given = (env.query_value("secret") or "").encode()
            if not hmac.compare_digest(given, self.secret.encode()):
                log.warning("FastAGI %s from %s on %s refused: %s secret (the dialplan must be the one `opendeep "
                            "dialplan render` wrote with this FASTAGI_SECRET)", env.script, peer, env.channel,
                            "wrong" if given else "no")
                return False
        return True

    async def _serve_session(self, route: Route, connection: AgiConnection, env: AgiEnvironment) -> None:
        ok, error, seconds = self._route_metrics(env.script)
        counted = error
        try:
            assert connection.session is not None, "on_environment is called once the session exists"
            await route(connection.session)
            counted = ok
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or self._sessions.get(task) != float("inf"):
                raise  # the server is stopping
            log.warning("FastAGI %s on %s: still running after %g s; closed", env.script, env.channel,
                        self.session_timeout)
        except AgiHangup as exc:
            counted = ok  # the callee hung up: nothing went wrong here
            log.info("FastAGI %s on %s: channel hung up (%s)", env.script, env.channel, exc)
        except AgiError as exc:
            log.warning("FastAGI %s on %s: %s", env.script, env.channel, exc)
        except (ConnectionError, OSError) as exc:
            log.info("FastAGI session from %s (%s): connection lost (%s)", connection.peer, env.script, exc)
        except Exception:
            log.exception("FastAGI route %s failed on %s", env.script, env.channel)
        finally:
            connection.close()  # ends the AGI: Asterisk sets AGISTATUS=SUCCESS and the dialplan goes on
            counted.inc()
            seconds.observe(asyncio.get_running_loop().time() - connection.connected_at)


class FastAgiComponent:
    """The `fastagi` part of `opendeep serve`: our server with OpenDeep's call routes."""

    name = "fastagi"

    def __init__(self, runtime, *, host: str | None = None, port: int | None = None):
        from fastagi_server.routes import CallRoutes  # routes import the DB layer; keep this module light
        from fastagi_server.secret import fastagi_secret
        from opendeep.settings import peer_allowed

        settings = runtime.settings
        self.runtime = runtime
        self.routes = CallRoutes(settings, runtime.sessions, runtime.events)
        bind = settings.fastagi_bind
        self.server = FastAgiServer(self.routes.table(), host or bind.host, bind.port if port is None else port,
                                    secret=fastagi_secret(settings),
                                    peer_allowed=lambda host: peer_allowed(settings, host))

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def health(self) -> dict:
        return {"ok": self.server.listening, "listen": f"{self.server.host}:{self.server.port}",
                "sessions": self.server.active_sessions}
