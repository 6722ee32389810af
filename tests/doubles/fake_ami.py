"""A fake Asterisk Manager Interface server that speaks the bytes of a real Asterisk 22.

Modelled on tests/captures/ami-originate-local.raw and smoke-logs/*.ami.log: the banner
`Asterisk Call Manager/11.0.0`, CRLF line ends, a blank line after each message, an async Originate answered
first by `Response: Success / Originate successfully queued` and later by `Event: OriginateResponse` (which
also carries a `Response:` header), and the call's events with the captured headers in the captured order.

What a test can do:
    fake = FakeAmi(username="opendeep", secret="secret")
    port = await fake.start()                  # 127.0.0.1, a free port (or start(port=...) to come back up)
    fake.script_number("+14155550123", "busy")  # answer / busy / noanswer / congestion / fail
    action = await fake.wait_for_action("Originate", timeout=5)   # [(header, value), ...] in wire order
    fake.actions                               # every action received, in order
    await fake.drop_connections()              # an Asterisk restart: sockets closed, live calls gone
    fake.emit([("Event", "Hangup"), ...])      # push any event to the logged-in clients
    fake.emit_raw(b"...")                      # or any bytes at all (fuzzing the client's framing)
    fake.hang_up_calls(["+14155550123"])       # the callee hangs up now (all live calls without a list)
    await fake.stop()

A driver can take over what an Originate does (tests/doubles/asterisk_sim.py runs the real dialplan that way):
    fake.call_driver = async_fn              # async_fn(call: FakeCall, action: Pairs, outcome: str), spawned
                                             # by the caller of the hook; announce_local() emits the start
    fake.channel_driver = fn                 # fn(action_name: str, action: Pairs), after the Success reply to
                                             # a PlayDTMF, Redirect or Hangup on a live channel (with a driver,
                                             # the driver does the Hangup)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
CRLF = "\r\n"

Pairs = list[tuple[str, str]]

# "self_answer": the Local extension answers by itself, without a Dial() (the dialplan of the smoke capture).
OUTCOMES = ("answer", "busy", "noanswer", "congestion", "fail", "self_answer")

# What Asterisk reports when the ;2 half of the Local channel cannot reach the callee:
# (OriginateResponse Reason, Hangup Cause, Cause-txt) as ast_cause2str() spells them.
_FAILURES = {
    "busy": ("5", "17", "User busy"),
    "noanswer": ("3", "19", "User alerting, no answer"),
    "congestion": ("8", "34", "Circuit/channel congestion"),
}
_STATE_DESC = {"0": "Down", "4": "Ring", "5": "Ringing", "6": "Up"}


def pairs_get(pairs: Iterable[tuple[str, str]], header: str, default: str | None = None) -> str | None:
    """The first value of `header` (case-insensitive, as Asterisk reads headers)."""
    wanted = header.lower()
    for key, value in pairs:
        if key.lower() == wanted:
            return value
    return default


def pairs_all(pairs: Iterable[tuple[str, str]], header: str) -> list[str]:
    """Every value of a header that may repeat (e.g. `Variable`)."""
    wanted = header.lower()
    return [value for key, value in pairs if key.lower() == wanted]


def encode(pairs: Sequence[tuple[str, str]]) -> bytes:
    """One AMI message: `Key: Value` CRLF lines and a blank line (an empty value keeps its space)."""
    return ("".join(f"{key}: {value}{CRLF}" for key, value in pairs) + CRLF).encode()


@dataclass
class FakeChannel:
    name: str
    uniqueid: str
    linkedid: str
    context: str
    exten: str
    state: str = "0"
    priority: str = "1"
    cid_num: str = "<unknown>"
    cid_name: str = "<unknown>"
    application: str = ""
    application_data: str = ""
    created: float = field(default_factory=time.monotonic)

    def snapshot(self, prefix: str = "") -> Pairs:
        """The channel headers Asterisk puts in every channel event, in its order."""
        return [
            (f"{prefix}Channel", self.name),
            (f"{prefix}ChannelState", self.state),
            (f"{prefix}ChannelStateDesc", _STATE_DESC.get(self.state, "Unknown")),
            (f"{prefix}CallerIDNum", self.cid_num),
            (f"{prefix}CallerIDName", self.cid_name),
            (f"{prefix}ConnectedLineNum", self.cid_num),
            (f"{prefix}ConnectedLineName", self.cid_name),
            (f"{prefix}Language", "en"),
            (f"{prefix}AccountCode", ""),
            (f"{prefix}Context", self.context),
            (f"{prefix}Exten", self.exten),
            (f"{prefix}Priority", self.priority),
            (f"{prefix}Uniqueid", self.uniqueid),
            (f"{prefix}Linkedid", self.linkedid),
        ]


@dataclass
class FakeCall:
    """One Originate into a Local channel: the ;1 and ;2 halves."""

    action_id: str
    number: str
    one: FakeChannel
    two: FakeChannel
    hung_up: bool = False
    callee: FakeChannel | None = None   # the channel Dial() of the ;2 half rings

    @property
    def channels(self) -> list[FakeChannel]:
        return [self.one, self.two, *([self.callee] if self.callee else [])]


@dataclass(eq=False)
class _Client:
    writer: asyncio.StreamWriter
    logged_in: bool = False
    event_mask: frozenset[str] = frozenset()


class FakeAmi:
    """See the module docstring. Every action received is kept in `actions` as (header, value) pairs."""

    def __init__(self, username: str = "opendeep", secret: str = "secret", *, hold_seconds: float = 30.0,
                 step_seconds: float = 0.0) -> None:
        self.username = username
        self.secret = secret
        self.hold_seconds = hold_seconds        # how long an answered call stays up unless hung up
        self.step_seconds = step_seconds        # pause between the events of one call
        self.actions: list[Pairs] = []
        self.port: int | None = None
        self.logins = 0
        self.calls: dict[str, FakeCall] = {}    # by ActionID
        self._scripts: dict[str, str] = {}
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task] = set()
        self._changed = asyncio.Event()
        self._cursor: dict[str, int] = {}
        self._channel_seq = 0
        self._uniqueid_seq = 0
        # Called (not awaited) instead of the built-in call script on each accepted Originate; it must start
        # its own task. None: the built-in script (_run_call) runs.
        self.call_driver: Callable[[FakeCall, Pairs, str], Awaitable[None] | None] | None = None
        # Called after a PlayDTMF, Redirect or Hangup on a live channel was answered with Success (a Hangup is
        # then the driver's to carry out).
        self.channel_driver: Callable[[str, Pairs], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (a free port, or `port` to come back where a stopped fake was)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection (Asterisk is down until start() again)."""
        if self._server is not None:
            self._server.close()
        await self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def drop_connections(self, *, kill_calls: bool = True) -> None:
        """Close every client socket, as an Asterisk restart does; live calls die with it by default."""
        for client in list(self._clients):
            client.writer.close()
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.writer.wait_closed()
        self._clients.clear()
        for task in list(self._tasks):
            task.cancel()
        if kill_calls:
            for call in self.calls.values():
                call.hung_up = True

    # ------------------------------------------------------------------ what tests script and read

    def script_number(self, number: str, outcome: str) -> None:
        """What an Originate of `number` does: answer / busy / noanswer / congestion / fail / self_answer."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; choose from {', '.join(OUTCOMES)}")
        self._scripts[number] = outcome

    def actions_named(self, name: str) -> list[Pairs]:
        return [action for action in self.actions if (pairs_get(action, "Action") or "").lower() == name.lower()]

    async def wait_for_action(self, name: str, timeout: float = 5.0) -> Pairs:
        """The next `name` action not yet returned by this method (waits for it to arrive)."""
        async def _next() -> Pairs:
            while True:
                matching = self.actions_named(name)
                index = self._cursor.get(name.lower(), 0)
                if index < len(matching):
                    self._cursor[name.lower()] = index + 1
                    return matching[index]
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(_next(), timeout)

    def emit(self, event_pairs: Sequence[tuple[str, str]]) -> None:
        """Send an event to every logged-in client (subject to its `Events:` filter)."""
        data = encode(event_pairs)
        privilege = pairs_get(event_pairs, "Privilege")
        for client in list(self._clients):
            if client.logged_in and self._wants(client, privilege):
                client.writer.write(data)

    def emit_raw(self, data: bytes) -> None:
        """Write bytes as they are to every logged-in client (garbage, cut or malformed messages)."""
        for client in list(self._clients):
            if client.logged_in:
                client.writer.write(data)

    def hang_up_calls(self, numbers: Iterable[str] | None = None, cause: str = "16") -> int:
        """The callee hangs up every live call (to `numbers` only, if given), with the events Asterisk sends;
        also ends calls whose scripted hold was cut short by drop_connections(kill_calls=False)."""
        wanted = set(numbers) if numbers is not None else None
        live = [call for call in self.calls.values()
                if not call.hung_up and (wanted is None or call.number in wanted)]
        for call in live:
            self._spawn(self._hang_up(call.callee or call.two, cause, request=False))
        return len(live)

    def live_channels(self) -> list[FakeChannel]:
        return [channel for call in self.calls.values() if not call.hung_up for channel in call.channels]

    @property
    def connected_clients(self) -> int:
        return sum(1 for client in self._clients if client.logged_in)

    # ------------------------------------------------------------------ the wire

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self._clients.add(client)
        try:
            writer.write(BANNER)
            while True:
                action = await self._read_message(reader)
                if action is None:
                    break
                if not action:
                    continue
                self.actions.append(action)
                self._changed.set()
                if not await self._handle(client, action):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(client)
            writer.close()

    @staticmethod
    async def _read_message(reader: asyncio.StreamReader) -> Pairs | None:
        pairs: Pairs = []
        while True:
            line = await reader.readline()
            if not line:
                return None
            text = line.decode(errors="replace").rstrip("\r\n")
            if not text:
                return pairs
            key, sep, value = text.partition(":")
            if sep:
                pairs.append((key.strip(), value[1:] if value.startswith(" ") else value))

    @staticmethod
    def _wants(client: _Client, privilege: str | None) -> bool:
        if privilege is None or client.event_mask & {"on", "all"}:
            return True
        classes = {part.strip().lower() for part in privilege.split(",")} - {"all"}
        return bool(classes & client.event_mask)

    def _reply(self, client: _Client, pairs: Sequence[tuple[str, str]]) -> None:
        client.writer.write(encode(pairs))

    async def _handle(self, client: _Client, action: Pairs) -> bool:
        name = (pairs_get(action, "Action") or "").lower()
        action_id = pairs_get(action, "ActionID")
        id_pairs: Pairs = [("ActionID", action_id)] if action_id is not None else []
        if name == "login":
            if pairs_get(action, "Username") == self.username and pairs_get(action, "Secret") == self.secret:
                client.logged_in = True
                mask = (pairs_get(action, "Events") or "on").lower()
                client.event_mask = frozenset(part.strip() for part in mask.split(","))
                self.logins += 1
                self._reply(client, [("Response", "Success"), *id_pairs, ("Message", "Authentication accepted")])
                if self._wants(client, "system,all"):
                    self._reply(client, [("Event", "FullyBooted"), ("Privilege", "system,all"),
                                         ("Uptime", "1"), ("LastReload", "1"), ("Status", "Fully Booted")])
                return True
            self._reply(client, [("Response", "Error"), *id_pairs, ("Message", "Authentication failed")])
            return False  # Asterisk ends the session after a failed login
        if name == "logoff":
            self._reply(client, [("Response", "Goodbye"), *id_pairs, ("Message", "Thanks for all the fish.")])
            return False
        if not client.logged_in:
            self._reply(client, [("Response", "Error"), *id_pairs, ("Message", "Permission denied")])
            return True
        if name == "ping":
            self._reply(client, [("Response", "Success"), *id_pairs, ("Ping", "Pong"),
                                 ("Timestamp", f"{time.time():.6f}")])
        elif name == "originate":
            self._originate(client, action, id_pairs)
        elif name == "hangup":
            channel = self._find_channel(pairs_get(action, "Channel") or "")
            if channel is None:
                self._reply(client, [("Response", "Error"), *id_pairs, ("Message", "No such channel")])
            else:
                self._reply(client, [("Response", "Success"), *id_pairs, ("Message", "Channel Hungup")])
                if self.channel_driver is not None:
                    self.channel_driver("Hangup", action)   # the driver hangs the channel up its own way
                else:
                    self._spawn(self._hang_up(channel, pairs_get(action, "Cause") or "16"))
        elif name == "playdtmf":
            if self._is_dead(pairs_get(action, "Channel") or ""):
                self._reply(client, [("Response", "Error"), *id_pairs, ("Message", "Channel not found")])
            else:
                self._reply(client, [("Response", "Success"), *id_pairs, ("Message", "DTMF successfully queued")])
                if self.channel_driver is not None:
                    self.channel_driver("PlayDTMF", action)
        elif name == "redirect":
            if self._is_dead(pairs_get(action, "Channel") or ""):
                self._reply(client, [("Response", "Error"), *id_pairs, ("Message", "Channel specified does not exist")])
            else:
                self._reply(client, [("Response", "Success"), *id_pairs, ("Message", "Redirect successful")])
                if self.channel_driver is not None:
                    self.channel_driver("Redirect", action)
        elif name == "coreshowchannels":
            self._core_show_channels(client, id_pairs)
        elif name == "status":
            self._status(client, id_pairs)
        else:
            self._reply(client, [("Response", "Error"), *id_pairs, ("Message", "Invalid/unknown command")])
        return True

    # ------------------------------------------------------------------ channels and calls

    def _find_call(self, channel_name: str) -> tuple[FakeCall, FakeChannel] | None:
        for call in self.calls.values():
            for channel in call.channels:
                if channel.name == channel_name or channel.uniqueid == channel_name:
                    return call, channel
        return None

    def _find_channel(self, name: str) -> FakeChannel | None:
        found = self._find_call(name)
        if found is None or found[0].hung_up:
            return None
        return found[1]

    def _is_dead(self, name: str) -> bool:
        """A channel of a call that has hung up. Channels this fake never made (a test's own) count as live."""
        found = self._find_call(name)
        return found is not None and found[0].hung_up

    def _next_uniqueid(self) -> str:
        self._uniqueid_seq += 1
        return f"1795413964.{self._uniqueid_seq}"

    def _originate(self, client: _Client, action: Pairs, id_pairs: Pairs) -> None:
        dial = pairs_get(action, "Channel") or ""
        match = re.fullmatch(r"Local/([^@]+)@([^/]+)(/n)?", dial)
        if match is None:
            # Asterisk refuses an Originate whose channel technology it cannot find at once.
            self._reply(client, [("Response", "Error"), *id_pairs, ("Message", "Originate failed")])
            return
        number, context = match.group(1), match.group(2)
        self._reply(client, [("Response", "Success"), *id_pairs, ("Message", "Originate successfully queued")])
        base = f"Local/{number}@{context}-{self._channel_seq:08x}"
        self._channel_seq += 1
        one_id = pairs_get(action, "ChannelId") or self._next_uniqueid()
        two_id = pairs_get(action, "OtherChannelId") or self._next_uniqueid()
        one = FakeChannel(f"{base};1", one_id, one_id, context, number, state="0")
        two = FakeChannel(f"{base};2", two_id, one_id, context, number, state="4")
        call = FakeCall(pairs_get(action, "ActionID") or "", number, one, two)
        self.calls[call.action_id or one_id] = call
        outcome = self._scripts.get(number, "answer")
        if self.call_driver is not None:
            self.call_driver(call, action, outcome)
            return
        self._spawn(self._run_call(call, action, outcome))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _step(self, event: Pairs) -> None:
        self.emit(event)
        await asyncio.sleep(self.step_seconds)

    async def _run_call(self, call: FakeCall, action: Pairs, outcome: str) -> None:
        one, two = call.one, call.two
        if outcome == "fail":  # no such extension: Asterisk gives up before the variables and the dial
            await self._step([("Event", "Newchannel"), ("Privilege", "call,all"), *one.snapshot()])
            await self._step([("Event", "Newchannel"), ("Privilege", "call,all"), *two.snapshot()])
            name, num = _parse_caller_id(pairs_get(action, "CallerID") or "")
            for channel in (one, two):
                channel.cid_num, channel.cid_name = num, name
            await self._fail(call, action)
            return
        await self.announce_local(call, action)
        if outcome == "self_answer":
            await self.answer_local(call, action)
            await asyncio.sleep(self.hold_seconds)
            if not call.hung_up:
                await self._hang_up(two, "16")
            return
        # The shipped dialplan: the ;2 half dials the callee; nothing answers before the callee does.
        await self._dial_callee(call, outcome)
        if outcome != "answer":
            # As a real Asterisk 22 reports it (tests/test_asterisk_calls.py): the ;2 half hung up with 16, the
            # Originate's own dial of ;1 ends NOANSWER, ;1 hangs up, and the OriginateResponse fails, Reason 0.
            await self._step([("Event", "DialEnd"), ("Privilege", "call,all"), *one.snapshot("Dest"),
                              ("DialStatus", "NOANSWER")])
            call.hung_up = True
            await self._step([("Event", "Hangup"), ("Privilege", "call,all"), *one.snapshot(),
                              ("Cause", "16"), ("Cause-txt", "Normal Clearing")])
            await self._step(self._originate_response(call, action, "Failure", "0", one.uniqueid, one.name))
            return
        await self.answer_local(call, action)
        await asyncio.sleep(self.hold_seconds)
        if not call.hung_up:
            await self._hang_up(two, "16")

    async def announce_local(self, call: FakeCall, action: Pairs) -> None:
        """The start of every Originate into a Local channel: both halves appear, the variables are set, the
        halves are bridged and the ;1 half is dialed (the events of the capture, in its order)."""
        one, two = call.one, call.two
        await self._step([("Event", "Newchannel"), ("Privilege", "call,all"), *one.snapshot()])
        await self._step([("Event", "Newchannel"), ("Privilege", "call,all"), *two.snapshot()])
        name, num = _parse_caller_id(pairs_get(action, "CallerID") or "")
        variables = [item for value in pairs_all(action, "Variable") for item in _split_variables(value)]
        # The ;1 half sets the variables last-first (then gets its caller ID), and the Local driver copies
        # them to ;2 first-first (which gets its caller ID after that), as in the capture.
        for key, value in reversed(variables):
            await self._step([("Event", "VarSet"), ("Privilege", "dialplan,all"), *one.snapshot(),
                              ("Variable", key), ("Value", value)])
        one.cid_num, one.cid_name = num, name
        for key, value in variables:
            await self._step([("Event", "VarSet"), ("Privilege", "dialplan,all"), *two.snapshot(),
                              ("Variable", key), ("Value", value)])
        two.cid_num, two.cid_name = num, name
        await self._step([("Event", "LocalBridge"), ("Privilege", "call,all"), *one.snapshot("LocalOne"),
                          *two.snapshot("LocalTwo"), ("Context", one.context), ("Exten", one.exten),
                          ("LocalOptimization", "No")])
        await self._step([("Event", "DialBegin"), ("Privilege", "call,all"), *one.snapshot("Dest"),
                          ("DialString", f"{one.exten}@{one.context}/n")])

    async def answer_local(self, call: FakeCall, action: Pairs) -> None:
        """The callee answered the ;2 half's Dial(): both Local halves Up, the Originate succeeds (Reason 4)."""
        one, two = call.one, call.two
        two.state = "6"
        await self._step([("Event", "Newstate"), ("Privilege", "call,all"), *two.snapshot()])
        one.state = "6"
        await self._step([("Event", "Newstate"), ("Privilege", "call,all"), *one.snapshot()])
        await self._step([("Event", "DialEnd"), ("Privilege", "call,all"), *one.snapshot("Dest"),
                          ("DialStatus", "ANSWER")])
        await self._step(self._originate_response(call, action, "Success", "4", one.uniqueid, one.name))

    async def send_event(self, event: Pairs) -> None:
        """Emit one event to the logged-in clients, then pause `step_seconds` (as the built-in script does)."""
        await self._step(event)

    def originate_response(self, call: FakeCall, action: Pairs, response: str, reason: str) -> Pairs:
        """The `Event: OriginateResponse` of `call` (Success reason 4, Failure reason 1/3/5/8...)."""
        return self._originate_response(call, action, response, reason, call.one.uniqueid, call.one.name)

    def new_channel(self, name_prefix: str, context: str, exten: str, linkedid: str) -> FakeChannel:
        """A fresh channel (e.g. the callee's PJSIP channel that Dial() creates) with the next Uniqueid."""
        channel = FakeChannel(f"{name_prefix}-{self._channel_seq:08x}", self._next_uniqueid(), linkedid, context,
                              exten, state="0")
        self._channel_seq += 1
        return channel

    async def _dial_callee(self, call: FakeCall, outcome: str) -> None:
        """The ;2 half's Dial() of the callee through the trunk, as the shipped dialplan does it."""
        one, two = call.one, call.two
        callee = FakeChannel(f"PJSIP/opendeep-trunk-{self._channel_seq:08x}", self._next_uniqueid(), one.linkedid,
                             "opendeep-outbound", "s", state="0")
        self._channel_seq += 1
        call.callee = callee
        await self._step([("Event", "Newchannel"), ("Privilege", "call,all"), *callee.snapshot()])
        await self._step([("Event", "DialBegin"), ("Privilege", "call,all"), *two.snapshot(),
                          *callee.snapshot("Dest"), ("DialString", f"{call.number}@opendeep-trunk")])
        if outcome in ("answer", "noanswer"):
            callee.state = "5"
            await self._step([("Event", "Newstate"), ("Privilege", "call,all"), *callee.snapshot()])
        if outcome == "answer":
            callee.state = "6"
            await self._step([("Event", "Newstate"), ("Privilege", "call,all"), *callee.snapshot()])
            await self._step([("Event", "DialEnd"), ("Privilege", "call,all"), *two.snapshot(),
                              *callee.snapshot("Dest"), ("DialStatus", "ANSWER")])
            return
        _, cause, cause_txt = _FAILURES[outcome]
        await self._step([("Event", "Hangup"), ("Privilege", "call,all"), *callee.snapshot(),
                          ("Cause", cause), ("Cause-txt", cause_txt)])
        await self._step([("Event", "DialEnd"), ("Privilege", "call,all"), *two.snapshot(),
                          *callee.snapshot("Dest"), ("DialStatus", {"17": "BUSY", "19": "NOANSWER",
                                                                    "34": "CONGESTION"}[cause])])
        call.callee = None
        await self._step([("Event", "Hangup"), ("Privilege", "call,all"), *two.snapshot(),
                          ("Cause", "16"), ("Cause-txt", "Normal Clearing")])

    def _originate_response(self, call: FakeCall, action: Pairs, response: str, reason: str, uniqueid: str,
                            channel: str) -> Pairs:
        target: Pairs
        if pairs_get(action, "Application") is not None:
            target = [("Application", pairs_get(action, "Application") or ""),
                      ("Data", pairs_get(action, "Data") or "")]
        else:
            target = [("Context", pairs_get(action, "Context") or ""), ("Exten", pairs_get(action, "Exten") or "")]
        return [("Event", "OriginateResponse"), ("Privilege", "call,all"), ("ActionID", call.action_id),
                ("Response", response), ("Channel", channel), *target, ("Reason", reason), ("Uniqueid", uniqueid),
                ("CallerIDNum", call.one.cid_num), ("CallerIDName", call.one.cid_name)]

    async def _fail(self, call: FakeCall, action: Pairs) -> None:
        """The `fail` smoke scenario: no such extension -> Cause 0, Response Failure, Reason 0, <unknown>."""
        one, two = call.one, call.two
        await self._step([("Event", "Hangup"), ("Privilege", "call,all"), *two.snapshot(),
                          ("Cause", "0"), ("Cause-txt", "Unknown")])
        await self._step([("Event", "DeviceStateChange"), ("Privilege", "call,all"),
                          ("Device", f"Local/{one.exten}@{one.context}"), ("State", "INVALID")])
        dial = (pairs_get(action, "Channel") or "").removesuffix("/n")
        await self._step(self._originate_response(call, action, "Failure", "0", "<unknown>", dial))
        call.hung_up = True
        await self._step([("Event", "Hangup"), ("Privilege", "call,all"), *one.snapshot(),
                          ("Cause", "0"), ("Cause-txt", "Unknown")])
        await self._step([("Event", "DeviceStateChange"), ("Privilege", "call,all"),
                          ("Device", f"Local/{one.exten}@{one.context}"), ("State", "INVALID")])

    async def _hang_up(self, channel: FakeChannel, cause: str, cause_txt: str | None = None, *,
                       request: bool = True) -> None:
        found = self._find_call(channel.name)
        if found is None or found[0].hung_up:
            return
        call = found[0]
        call.hung_up = True
        cause_txt = cause_txt or ("Normal Clearing" if cause == "16" else "Unknown")
        if request:
            await self._step([("Event", "HangupRequest"), ("Privilege", "call,all"), *channel.snapshot(),
                              ("Cause", cause)])
        for half in ([call.callee] if call.callee else []) + [call.two, call.one]:
            await self._step([("Event", "Hangup"), ("Privilege", "call,all"), *half.snapshot(),
                              ("Cause", cause), ("Cause-txt", cause_txt)])

    def _core_show_channels(self, client: _Client, id_pairs: Pairs) -> None:
        channels = self.live_channels()
        self._reply(client, [("Response", "Success"), *id_pairs, ("EventList", "start"),
                             ("Message", "Channels will follow")])
        for channel in channels:
            duration = int(time.monotonic() - channel.created)
            self._reply(client, [("Event", "CoreShowChannel"), *id_pairs, *channel.snapshot(),
                                 ("Application", "AppDial2" if channel.name.endswith(";1") else "Dial"),
                                 ("ApplicationData", "(Outgoing Line)" if channel.name.endswith(";1") else ""),
                                 ("Duration", f"{duration // 3600:02d}:{duration // 60 % 60:02d}:{duration % 60:02d}"),
                                 ("BridgeId", "")])
        self._reply(client, [("Event", "CoreShowChannelsComplete"), *id_pairs, ("EventList", "Complete"),
                             ("ListItems", str(len(channels)))])

    def _status(self, client: _Client, id_pairs: Pairs) -> None:
        channels = self.live_channels()
        self._reply(client, [("Response", "Success"), *id_pairs, ("EventList", "start"),
                             ("Message", "Channel status will follow")])
        for channel in channels:
            self._reply(client, [("Event", "Status"), ("Privilege", "Call"), *channel.snapshot(), *id_pairs])
        self._reply(client, [("Event", "StatusComplete"), *id_pairs, ("EventList", "Complete"),
                             ("ListItems", str(len(channels))), ("Items", str(len(channels)))])


def _split_variables(value: str) -> list[tuple[str, str]]:
    """`A=1,B=2` -> [(A, 1), (B, 2)], honouring `\\,` escapes and "double, quoted" values as Asterisk does."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            current.append(value[i + 1])
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    items.append("".join(current))
    result = []
    for item in items:
        key, sep, val = item.partition("=")
        if sep and key:
            result.append((key, val))
    return result


def _parse_caller_id(raw: str) -> tuple[str, str]:
    """`"OpenDeep" <5551234>` -> ("OpenDeep", "5551234"); a bare number has no name."""
    match = re.fullmatch(r'\s*"?([^"<]*?)"?\s*<([^>]*)>\s*', raw)
    if match:
        return (match.group(1) or "<unknown>", match.group(2) or "<unknown>")
    raw = raw.strip()
    return ("<unknown>", raw or "<unknown>")
