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
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from panoramisk import Manager
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

log = logging.getLogger(__name__)


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
    """panoramisk's Manager, minus its own reconnect loop: AmiController decides when to try again."""

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


def _header(message: Message, name: str) -> str:
    """One header's value as text ("" if absent). panoramisk gives a header that came more than once as a
    list; the first one counts, as in Asterisk's own astman_get_header()."""
    value = message.get(name, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)

