"""The AMI wire: panoramisk's `Manager` for the framing, ActionID matching and pings, with three things changed
because of how panoramisk 1.4 behaves (tests/test_ami_wire.py shows each on the wire):

- An async Originate's ActionID also tags its later `Event: OriginateResponse`; panoramisk treats the pair as
  one multi-message reply, so `send_action()` would only resolve when the callee answers or gives up, and the
  OriginateResponse would never reach event handlers. `WireAction` resolves on the first reply (the
  "successfully queued" ack) so the OriginateResponse arrives as an event.
- panoramisk re-sends unanswered actions after a reconnect (`awaiting_actions`): for an Originate that is a
  second call to the same person. We never re-send; we fail the waiting future instead, and a re-sync
  (CoreShowChannels) after each login decides what happened to every in-flight call.
- panoramisk reconnects every 2 s forever; we back off from 1 s, doubling up to AMI_RECONNECT_MAX_SECONDS, and
  say in the log which Asterisk we are waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from panoramisk import Manager
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from opendeep.asterisk_servers import AsteriskServer
from opendeep.metrics import AMI_CONNECTED

log = logging.getLogger(__name__)

EVENT_CLASSES = "call"                          # every event we read is in the `call` class
LOGIN_TIMEOUT_SECONDS = 10.0


class AmiError(RuntimeError):
    """AMI could not do what was asked; the message says what to check."""


class AmiNotConnected(AmiError):
    """Not connected to Asterisk: nothing was sent (safe to try again later)."""


class AmiRefused(AmiError):
    """Asterisk answered `Response: Error`: it received the action and will not do it."""


class AmiLoginRefused(AmiError):
    """Wrong AMI username/secret or a user without the rights we need."""

class WireAction(Action):
    """An AMI action written header by header in the order given; a header may repeat (`Variable`).

    panoramisk's own `Action` sorts headers and guesses from the reply text whether more replies follow; this
    one resolves on the first reply unless `as_list=True` (CoreShowChannels / Status lists).
    """

    def __init__(self, pairs: Sequence[tuple[str, str]]):
        for key, value in pairs:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", key) or "\r" in str(value) or "\n" in str(value):
                raise AmiError(f"refusing to send AMI header {key!r}: names are letters/digits and values "
                               f"cannot contain line breaks")
        grouped: dict[str, Any] = {}
        for key, value in pairs:
            if key in grouped:
                previous = grouped[key]
                grouped[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                grouped[key] = value
        super().__init__(grouped)
        self.pairs = [(key, str(value)) for key, value in pairs]

    @property
    def multi(self) -> bool:
        return bool(self.as_list)

    def __str__(self) -> str:
        return "".join(f"{key}: {value}\r\n" for key, value in self.pairs) + "\r\n"


class _ForgetEveryAction:
    """panoramisk's `forgetable_actions`: containing everything means nothing is re-sent after a reconnect."""

    def __contains__(self, _name: object) -> bool:
        return True


class _Protocol(AMIProtocol):
    def handle_message(self, message: Message) -> None:
        # A repeated `Event:` or `ActionID:` header reaches panoramisk as a list and makes it raise; raising here
        # would make asyncio close the whole connection (tests/test_fuzz_ami.py). One bad message costs itself.
        try:
            super().handle_message(message)
        except Exception:
            log.warning("dropped an AMI message that could not be handled: %.300r", message, exc_info=True)

    def close(self) -> None:
        # Whoever waits for a reply gets a clear error now instead of waiting forever.
        for action in list(getattr(self, "responses", {}).values()):
            if not action.future.done():
                action.future.set_exception(AmiError(
                    f"the AMI connection closed before Asterisk answered {action.get('Action', 'the action')}"))
        if getattr(self, "responses", None):
            self.responses.clear()
        super().close()


class _PanoramiskManager(Manager):
    """panoramisk's Manager, minus its own reconnect loop: AmiConnection decides when to try again."""

    pinger: asyncio.TimerHandle | None   # set by panoramisk (untyped): its keep-alive Ping timer

    def __init__(self, *, on_lost: Callable[[Any], None], **config: Any) -> None:
        super().__init__(**config)
        self._on_lost = on_lost

    def connection_made(self, f: asyncio.Future) -> None:
        if f.cancelled() or f.exception() is not None:
            return  # the caller awaits the same future and handles the error
        super().connection_made(f)

    def login(self, future: asyncio.Future) -> bool:
        # Asterisk closing before it answers Login (it is restarting) fails the future: the caller awaiting the
        # same future reports that and tries again; panoramisk would raise here, in a callback nobody awaits.
        if future.cancelled() or future.exception() is not None:
            self.authenticated_future = None
            return False
        return super().login(future)

    def connection_lost(self, exc: Any) -> None:
        self._connected = False
        self.authenticated = False
        if self.pinger:
            self.pinger.cancel()
            self.pinger = None
        self._on_lost(exc)


def header(message: Message, name: str) -> str:
    """One header's value as text ("" if absent). panoramisk gives a header that came more than once as a
    list; the first one counts, as in Asterisk's own astman_get_header()."""
    value = message.get(name, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)



class AmiConnection:
    """One AMI session to one Asterisk, kept up: connect, log in, back off and reconnect, send actions.

    `after_login` runs after each login before the connection counts as up (the controller's re-sync); if it
    raises, the connection is dropped and tried again. Events named in `event_names` go to `on_event`. Each
    connection numbers its own ActionIDs (`next_action_id`), so two connections never share a counter.
    """

    def __init__(self, server: AsteriskServer, *, host: str, port: int, reconnect_max_seconds: float,
                 action_timeout_seconds: float, ping_seconds: int, event_names: Sequence[str] = (),
                 on_event: Callable[[Manager, Message], None] | None = None,
                 after_login: Callable[[], Awaitable[None]] | None = None, counted: bool = True,
                 role: str = "") -> None:
        self.server = server
        self.host, self.port = host, port
        self.username, self.secret = server.ami_username, server.ami_secret
        self.reconnect_max_seconds = reconnect_max_seconds
        self.action_timeout_seconds = action_timeout_seconds
        self.ping_seconds = ping_seconds
        self.event_names = tuple(event_names)
        self.on_event = on_event
        self.after_login = after_login
        self.counted = counted      # in the AMI_CONNECTED gauge (the scheduler's connections, not action-only ones)
        self.role = role            # said in the "connected" log line
        self._manager: _PanoramiskManager | None = None
        self._connected = False
        self._connected_event = asyncio.Event()
        self._lost = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._stopping = False
        self._action_ids: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        """Logged in (and `after_login` done): an action now would be sent."""
        return self._connected

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def next_action_id(self, prefix: str) -> str:
        """A fresh ActionID on this connection: `opendeep-<prefix>-<n>`."""
        self._action_ids[prefix] = self._action_ids.get(prefix, 0) + 1
        return f"opendeep-{prefix}-{self._action_ids[prefix]}"

    def start(self) -> None:
        """Start connecting in the background; Asterisk being down is not an error (we keep trying)."""
        self._stopping = False
        self._runner = asyncio.create_task(self._run(), name=f"ami-connection-{self.server.name}")

    async def stop(self) -> None:
        self._stopping = True
        self._connected = False
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self.close()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    def close(self) -> None:
        """Drop the current session (if any); the reconnect loop, while running, opens a new one."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._connect_and_login()
            except AmiLoginRefused as exc:
                log.error("%s", exc)
            except (TimeoutError, OSError, AmiError) as exc:
                delay = self._backoff(attempt)
                log.warning("waiting for Asterisk AMI at %s (%s); next try in %.1f s", self.address,
                            exc or type(exc).__name__, delay)
            else:
                attempt = 0
                try:
                    if self.after_login is not None:
                        await self.after_login()
                except Exception as exc:  # AMI or the database: either way try again, never stop reconnecting
                    log.warning("AMI re-sync with %s failed (%s: %s); reconnecting", self.address,
                                type(exc).__name__, exc)
                    self.close()
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                await self._stay_connected()
                log.warning("lost the AMI connection to Asterisk at %s; reconnecting", self.address)
                self.close()
                continue
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _stay_connected(self) -> None:
        self._connected = True
        self._connected_event.set()
        if self.counted:
            AMI_CONNECTED.inc()
        log.info("connected to Asterisk AMI at %s as %r%s", self.address, self.username,
                 f" ({self.role})" if self.role else "")
        try:
            await self._lost.wait()
        finally:
            self._connected = False
            self._connected_event.clear()
            if self.counted:
                AMI_CONNECTED.dec()

    def _backoff(self, attempt: int) -> float:
        # 1 s, 2 s, 4 s ... capped; a floor keeps a zero setting from spinning the CPU.
        return max(min(2.0 ** attempt, self.reconnect_max_seconds), 0.05)

    async def _connect_and_login(self) -> None:
        self._lost = asyncio.Event()
        lost = self._lost
        manager = _PanoramiskManager(
            on_lost=lambda _exc: lost.set(), loop=asyncio.get_running_loop(), host=self.host, port=self.port,
            username=self.username, secret=self.secret, events=EVENT_CLASSES if self.event_names else "off",
            ping_delay=self.ping_seconds, ping_interval=self.ping_seconds, protocol_factory=_Protocol,
            forgetable_actions=_ForgetEveryAction(), log=logging.getLogger(f"{__name__}.panoramisk"),
        )
        if self.on_event is not None:
            for name in self.event_names:
                manager.register_event(name, self.on_event)
        self._manager = manager
        try:
            await asyncio.wait_for(manager.connect(), LOGIN_TIMEOUT_SECONDS)
            login = manager.authenticated_future
            if login is None:
                raise AmiError("AMI connection made but no login was sent")
            reply = await asyncio.wait_for(login, LOGIN_TIMEOUT_SECONDS)
        except BaseException:
            self.close()
            raise
        if not reply.success:
            self.close()
            raise AmiLoginRefused(
                f"AMI login refused for user {self.username!r} at {self.address} (server "
                f"{self.server.name!r}; {reply.get('Message', 'no reason given')}; check AMI_USERNAME / AMI_SECRET "
                f"or ASTERISK_SERVERS, and dialplan/manager_opendeep.conf)")

    async def send(self, pairs: Sequence[tuple[str, str]], *, as_list: bool = False) -> Any:
        """Send one action; return the reply Message (or the list of messages with `as_list`).

        Raises AmiNotConnected when there is no connection (nothing was written), AmiRefused on
        `Response: Error`, AmiError when the connection drops or Asterisk does not answer in time.
        """
        manager = self._manager
        if manager is None or manager.protocol is None or manager.protocol.closed or not manager.authenticated:
            raise AmiNotConnected(f"not connected to Asterisk AMI at {self.address}; is Asterisk running and "
                                  f"AMI_HOST/AMI_PORT right?")
        action = WireAction(pairs)
        name = action.get("Action", "?")
        try:
            reply = await asyncio.wait_for(manager.send_action(action, as_list=as_list),
                                           self.action_timeout_seconds)
        except TimeoutError:
            raise AmiError(f"Asterisk at {self.address} did not answer {name} within "
                           f"{self.action_timeout_seconds:g} s") from None
        first = reply[0] if isinstance(reply, list) else reply
        if first.get("Response", "").lower() == "error":
            raise AmiRefused(f"Asterisk refused {name}: {first.get('Message', 'no reason given')}")
        return reply
