"""Asterisk 22 for a real `opendeep serve`: AMI, the shipped dialplan, FastAGI and AudioSocket, over real sockets.

It composes the protocol doubles, each byte-faithful to the captures in tests/captures/:
  FakeAmi (fake_ami.py)              the AMI login, the Originate action and every event Asterisk emits
  dialplan_interpreter.py            runs the SHIPPED dialplan/extensions_opendeep.conf, rendered for `settings`
  FakeAsteriskAgi (agi_client.py)    each AGI() of the dialplan: a TCP session to the app's FastAGI server
  AsteriskAudioSocket                the AudioSocket() application: UUID frame, 20 ms slin frames, hangup

On each Originate of Local/<number>@opendeep-outbound/n the ";2" half runs [opendeep-outbound] step by step:
AGI call-start -> Answer() (the Originate succeeds) -> Dial() of the callee, scripted per number -> on answer
the U() subroutine [opendeep-answered] on the callee's channel (AGI call-answered, then AudioSocket() with 20 ms
frames of speech until the app sends 00 00 00 or the callee's talk time ends) -> Hangup() -> the `h` extension's
AGI call-end with DIALSTATUS / HANGUPCAUSE / ANSWEREDTIME. The AMI events go out in the order Asterisk sends
them (Newchannel, VarSet, LocalBridge, DialBegin, Newstate, DialEnd, OriginateResponse, Hangup).

    sim = AsteriskSim(settings)                    # opendeep Settings: FASTAGI_*/AUDIOSOCKET_* say where to go
    ami_port = await sim.start()                   # AMI on 127.0.0.1:<free port> (or start(port=...))
    sim.script_number("+14155550123", Callee("busy"))        # answer / busy / noanswer / congestion
    sim.default_callee = Callee("answer", talk_seconds=30, speech_seconds=2.0)
    call = await sim.wait_for_call(timeout=10)     # the next Originate's SimCall, once it starts
    await call.wait_done(timeout=30)               # the dialplan has run to the end (h extension included)
    call.originate                                 # the Originate action, [(header, value), ...] in wire order
    call.agi                                       # [(script, AgiRun)]: call-start, call-answered, call-end
    call.audio                                     # the AsteriskAudioSocket (frames received, sent count)
    call.events                                    # every AMI event emitted for this call, in order
    call.local / call.callee                       # dialplan channels: variables, executed applications
    call.dtmf_heard                                # AMI PlayDTMF digits played to the callee, in order
    call.redirected_to, call.transfer_dialed       # AMI Redirect of the callee: it leaves AudioSocket() (socket
                                                   # closed, no hangup frame) and runs [opendeep-transfer]
    sim.calls, sim.ami.actions                     # every call; every AMI action received
    await sim.stop()                               # ends live calls and closes every socket

Several calls run at once, each in its own task; an error inside one is kept in `call.error` (and raised by
wait_done) instead of being lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dialplan.render import EXTENSIONS, render_dialplan
from opendeep.settings import Settings
from tests.doubles import dialplan_interpreter as dialplan
from tests.doubles.agi_client import ENV_ANSWERED, ENV_H_EXTENSION, AgiRun, FakeAsteriskAgi
from tests.doubles.audiosocket_client import AsteriskAudioSocket, speech_like
from tests.doubles.fake_ami import FakeAmi, FakeCall, FakeChannel, Pairs, _split_variables, pairs_all, pairs_get

OUTBOUND_CONTEXT = "opendeep-outbound"
CALLEE_OUTCOMES = ("answer", "busy", "noanswer", "congestion")
# Dial() results: (DIALSTATUS, HANGUPCAUSE, Cause-txt as ast_cause2str() spells it).
_DIAL_FAILURES = {
    "busy": ("BUSY", "17", "User busy"),
    "noanswer": ("NOANSWER", "19", "User alerting, no answer"),
    "congestion": ("CONGESTION", "34", "Circuit/channel congestion"),
}


@dataclass
class Callee:
    """What the phone at a number does when Dial() rings it."""

    outcome: str = "answer"          # answer / busy / noanswer / congestion
    ring_seconds: float = 0.1        # ringing before the answer (noanswer: until Dial's timeout, capped here)
    talk_seconds: float = 60.0       # the callee hangs up after this long unless the app hangs up first
    speech_seconds: float = 2.0      # speech-like audio said at once, then silence frames (a live line)
    speech_seed: int = 1
    transfer_outcome: str = "answer"     # what the person a transfer rings does (Dial() in [opendeep-transfer])

    def __post_init__(self) -> None:
        if self.outcome not in CALLEE_OUTCOMES:
            raise ValueError(f"unknown callee outcome {self.outcome!r}; choose from {', '.join(CALLEE_OUTCOMES)}")


@dataclass
class SimCall:
    """One Originate as the simulator played it."""

    number: str
    originate: Pairs
    variables: dict[str, str]                     # the Originate's Variable headers
    fake: FakeCall
    callee_script: Callee
    local: dialplan.Channel | None = None         # the ;2 half running [opendeep-outbound]
    callee: dialplan.Channel | None = None        # the callee's channel running [opendeep-answered]
    agi: list[tuple[str, AgiRun]] = field(default_factory=list)
    audio: AsteriskAudioSocket | None = None
    events: list[Pairs] = field(default_factory=list)
    dialed: list[list[str]] = field(default_factory=list)   # Dial() arguments
    answered_at: float | None = None
    ended_at: float | None = None
    app_hung_up: bool = False                     # the app sent the AudioSocket hangup frame
    dtmf_heard: list[str] = field(default_factory=list)     # AMI PlayDTMF digits played to the callee
    redirected_to: tuple[str, str, str] | None = None       # AMI Redirect of the callee: context, exten, priority
    transfer_dialed: list[list[str]] = field(default_factory=list)   # Dial() arguments after the Redirect
    redirect: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def call_id(self) -> int | None:
        value = self.variables.get("OPENDEEP_CALL_ID")
        return int(value) if value and value.isdigit() else None

    def agi_scripts(self) -> list[str]:
        return [script for script, _ in self.agi]

    def agi_run(self, script: str) -> AgiRun:
        for name, run in self.agi:
            if name.split("?")[0] == script:
                return run
        raise KeyError(f"no AGI {script!r} in this call (ran: {self.agi_scripts()})")

    def event_names(self) -> list[str]:
        return [next((v for k, v in event if k == "Event"), "") for event in self.events]

    async def wait_done(self, timeout: float = 30.0) -> SimCall:
        await asyncio.wait_for(self.done.wait(), timeout)
        if self.error is not None:
            raise self.error
        return self


class AsteriskSim:
    """See the module docstring."""

    def __init__(self, settings: Settings, *, username: str | None = None, secret: str | None = None,
                 default_callee: Callee | None = None, agi_timeout: float = 10.0) -> None:
        self.settings = settings
        self.plan = dialplan.parse(render_dialplan(settings)[EXTENSIONS])
        self.ami = FakeAmi(username=username or settings.ami_username, secret=secret or settings.ami_secret)
        self.ami.call_driver = self._on_originate
        self.ami.channel_driver = self._on_channel_action
        self.ami_events: list[Pairs] = []             # every event sent to the app, in order
        self._emit = self.ami.emit
        self.ami.emit = self._record_and_emit          # every event also lands in its call's `events`
        self.default_callee = default_callee or Callee()
        self.agi_timeout = agi_timeout
        self.calls: list[SimCall] = []
        self._scripts: dict[str, Callee] = {}
        self._tasks: set[asyncio.Task] = set()
        self._new_call = asyncio.Condition()
        self._cursor = 0

    # ------------------------------------------------------------------ lifecycle and scripting

    async def start(self, port: int = 0) -> int:
        """Start the AMI server on 127.0.0.1 (a free port unless given); returns the port."""
        return await self.ami.start(port)

    async def stop(self) -> None:
        """Stop the AMI server and cut every live call (sockets closed, tasks cancelled)."""
        await self.ami.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def script_number(self, number: str, callee: Callee | str) -> None:
        """What the phone at `number` does (a Callee, or just its outcome)."""
        self._scripts[number] = callee if isinstance(callee, Callee) else Callee(callee)

    async def wait_for_call(self, timeout: float = 10.0) -> SimCall:
        """The next call not yet returned by this method (waits for its Originate)."""
        async def _next() -> SimCall:
            async with self._new_call:
                await self._new_call.wait_for(lambda: len(self.calls) > self._cursor)
                self._cursor += 1
                return self.calls[self._cursor - 1]
        return await asyncio.wait_for(_next(), timeout)

    async def wait_for_calls(self, count: int, timeout: float = 30.0) -> list[SimCall]:
        """Wait until `count` calls have been originated and have run to their end."""
        async def _all() -> None:
            async with self._new_call:
                await self._new_call.wait_for(lambda: len(self.calls) >= count)
            for call in self.calls[:count]:
                await call.done.wait()
        await asyncio.wait_for(_all(), timeout)
        return self.calls[:count]

    @property
    def live_calls(self) -> int:
        return sum(1 for call in self.calls if not call.done.is_set())

    # ------------------------------------------------------------------ one call

    def _on_originate(self, fake: FakeCall, action: Pairs, _outcome: str) -> None:
        variables = dict(item for value in pairs_all(action, "Variable") for item in _split_variables(value))
        call = SimCall(fake.number, action, variables, fake, self._scripts.get(fake.number, self.default_callee))
        self.calls.append(call)
        task = asyncio.create_task(self._run(call), name=f"asterisk-sim-{fake.number}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        async def _announce() -> None:
            async with self._new_call:
                self._new_call.notify_all()
        announce = asyncio.create_task(_announce())
        self._tasks.add(announce)
        announce.add_done_callback(self._tasks.discard)

    def _record_and_emit(self, event: Pairs) -> None:
        self.ami_events.append(list(event))
        for call in reversed(self.calls):
            if _belongs(event, call.fake):
                call.events.append(list(event))
                break
        self._emit(event)

    async def _event(self, _call: SimCall, event: Pairs) -> None:
        await self.ami.send_event(event)

    async def _run(self, call: SimCall) -> None:
        fake = call.fake
        try:
            await self.ami.announce_local(fake, call.originate)
            local = dialplan.Channel(fake.two.name, {**call.variables, "CHANNEL": fake.two.name})
            call.local = local
            handlers = {"AGI": self._agi_for(call, fake.two), "Answer": self._answer_for(call),
                        "Dial": self._dial_for(call)}
            await dialplan.run(self.plan, OUTBOUND_CONTEXT, fake.number, local, handlers)
            await self._hang_up_local(call)
        except asyncio.CancelledError:
            fake.hung_up = True
            raise
        except BaseException as exc:  # kept for the test: a broken call must not vanish silently
            call.error = exc
            fake.hung_up = True
        finally:
            call.ended_at = time.monotonic()
            if call.audio is not None:
                with contextlib.suppress(Exception):
                    await call.audio.close()
            call.done.set()

    def _agi_for(self, call: SimCall, channel: FakeChannel):
        async def agi(chan: dialplan.Channel, args: list[str]) -> None:
            url = urlsplit(args[0])
            script = url.path.lstrip("/") + (f"?{url.query}" if url.query else "")
            dead = chan.variables.get("EXTEN") == "h"
            on = channel if chan is call.local else self._callee_channel(call)
            overrides = {"agi_channel": chan.name, "agi_uniqueid": on.uniqueid, "agi_context": on.context,
                         "agi_extension": "h" if dead else on.exten, "agi_callerid": on.cid_num,
                         "agi_calleridname": on.cid_name}
            client = FakeAsteriskAgi(url.port or 4573, host=url.hostname or "127.0.0.1", script=script,
                                     args=tuple(args[1:]), variables=chan.variables, dead=dead,
                                     template=ENV_H_EXTENSION if dead else ENV_ANSWERED, overrides=overrides,
                                     timeout=self.agi_timeout)
            run = await client.run()
            call.agi.append((script, run))
            chan.variables.update(run.variables)
            chan.variables["AGISTATUS"] = run.agi_status
        return agi

    def _callee_channel(self, call: SimCall) -> FakeChannel:
        return call.fake.callee or call.fake.two

    def _answer_for(self, call: SimCall):
        async def answer(_chan: dialplan.Channel, _args: list[str]) -> None:
            await self.ami.answer_local(call.fake, call.originate)
        return answer

    def _dial_for(self, call: SimCall):
        async def dial(chan: dialplan.Channel, args: list[str]) -> None:
            call.dialed.append(args)
            await self._dial(call, chan, args)
        return dial

    async def _dial(self, call: SimCall, local: dialplan.Channel, args: list[str]) -> None:
        fake, script = call.fake, call.callee_script
        two = fake.two
        technology = args[0].split("@")[0].split("/")[0] if args else "PJSIP"
        trunk = args[0].split("@", 1)[1] if "@" in args[0] else "opendeep-trunk"
        callee = self.ami.new_channel(f"{technology}/{trunk}", "opendeep-outbound", "s", fake.one.linkedid)
        fake.callee = callee
        ring_limit = float(args[1]) if len(args) > 1 and args[1].isdigit() else 45.0
        started = time.monotonic()
        await self._event(call, [("Event", "Newchannel"), ("Privilege", "call,all"), *callee.snapshot()])
        await self._event(call, [("Event", "DialBegin"), ("Privilege", "call,all"), *two.snapshot(),
                                 *callee.snapshot("Dest"), ("DialString", args[0].split("/", 1)[-1])])
        if script.outcome in ("answer", "noanswer"):
            callee.state = "5"
            await self._event(call, [("Event", "Newstate"), ("Privilege", "call,all"), *callee.snapshot()])
            await asyncio.sleep(min(script.ring_seconds, ring_limit))
        if script.outcome != "answer":
            dial_status, cause, cause_txt = _DIAL_FAILURES[script.outcome]
            await self._event(call, [("Event", "Hangup"), ("Privilege", "call,all"), *callee.snapshot(),
                                     ("Cause", cause), ("Cause-txt", cause_txt)])
            await self._event(call, [("Event", "DialEnd"), ("Privilege", "call,all"), *two.snapshot(),
                                     *callee.snapshot("Dest"), ("DialStatus", dial_status)])
            fake.callee = None
            local.variables.update(DIALSTATUS=dial_status, HANGUPCAUSE=cause, ANSWEREDTIME="",
                                   DIALEDTIME=str(int(time.monotonic() - started)))
            return
        callee.state = "6"
        await self._event(call, [("Event", "Newstate"), ("Privilege", "call,all"), *callee.snapshot()])
        await self._event(call, [("Event", "DialEnd"), ("Privilege", "call,all"), *two.snapshot(),
                                 *callee.snapshot("Dest"), ("DialStatus", "ANSWER")])
        call.answered_at = time.monotonic()
        option = next((arg for arg in args[2:] if arg.startswith("U(")), "")
        if option:
            context, *gosub_args = option[2:-1].split("^")
            channel = dialplan.Channel(callee.name, {
                "CHANNEL": callee.name, **{f"ARG{i}": value for i, value in enumerate(gosub_args, start=1)}})
            call.callee = channel
            handlers = {"AGI": self._agi_for(call, callee), "AudioSocket": self._audiosocket_for(call),
                        "Dial": self._transfer_dial_for(call)}
            await dialplan.run(self.plan, context, "s", channel, handlers)
        talked = time.monotonic() - call.answered_at
        # GOSUB_RESULT=CONTINUE (or the conversation over): Dial hangs up the callee and returns.
        if not fake.hung_up:
            await self._event(call, [("Event", "Hangup"), ("Privilege", "call,all"), *callee.snapshot(),
                                     ("Cause", "16"), ("Cause-txt", "Normal Clearing")])
        fake.callee = None
        local.variables.update(DIALSTATUS="ANSWER", HANGUPCAUSE="16", ANSWEREDTIME=str(int(talked)),
                               DIALEDTIME=str(int(time.monotonic() - started)))

    def _audiosocket_for(self, call: SimCall):
        async def audiosocket(_chan: dialplan.Channel, args: list[str]) -> None:
            call_uuid, address = args[0], args[1]
            host, _, port = address.rpartition(":")
            client = AsteriskAudioSocket(int(port), call_uuid, host=host or "127.0.0.1")
            call.audio = client
            try:
                await client.connect()
            except OSError:
                return   # AudioSocket() fails at once; the subroutine goes on
            script = call.callee_script
            client.play(speech_like(script.speech_seconds, seed=script.speech_seed) if script.speech_seconds else b"")
            ends = asyncio.get_running_loop().time() + script.talk_seconds
            while not client.eof.is_set() and not call.fake.hung_up and not call.redirect.is_set():
                remaining = ends - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.eof.wait(), min(remaining, 0.1))
            call.app_hung_up = client.hangup.is_set()
            # The callee hung up, we answer the app's hangup frame, or a Redirect took the channel out of
            # AudioSocket(): the socket closes, with no hangup frame from Asterisk's side.
            await client.close()
            if call.redirected_to is not None and not call.app_hung_up:
                raise dialplan.Redirected(*call.redirected_to)
        return audiosocket

    def _on_channel_action(self, name: str, action: Pairs) -> None:
        """PlayDTMF / Redirect on the callee's channel: the callee hears the digit; the channel leaves
        AudioSocket() for the Redirect's place."""
        channel = pairs_get(action, "Channel") or ""
        call = next((c for c in reversed(self.calls)
                     if c.fake.callee is not None and channel in (c.fake.callee.name, c.fake.callee.uniqueid)), None)
        if call is None:
            return
        if name == "PlayDTMF":
            call.dtmf_heard.append(pairs_get(action, "Digit") or "")
        elif name == "Redirect" and call.redirected_to is None:
            call.redirected_to = (pairs_get(action, "Context") or "", pairs_get(action, "Exten") or "",
                                  pairs_get(action, "Priority") or "1")
            call.redirect.set()

    def _transfer_dial_for(self, call: SimCall):
        """Dial() on the callee's channel after a Redirect to [opendeep-transfer]: rings the person."""
        async def dial(chan: dialplan.Channel, args: list[str]) -> None:
            call.transfer_dialed.append(args)
            fake, script = call.fake, call.callee_script
            person = self.ami.new_channel("PJSIP/opendeep-trunk", "opendeep-transfer", chan.variables["EXTEN"],
                                          fake.one.linkedid)
            await self._event(call, [("Event", "Newchannel"), ("Privilege", "call,all"), *person.snapshot()])
            await self._event(call, [("Event", "DialBegin"), ("Privilege", "call,all"), *fake.callee.snapshot(),
                                     *person.snapshot("Dest"), ("DialString", args[0].split("/", 1)[-1])])
            status = "ANSWER" if script.transfer_outcome == "answer" else _DIAL_FAILURES[script.transfer_outcome][0]
            await self._event(call, [("Event", "DialEnd"), ("Privilege", "call,all"), *fake.callee.snapshot(),
                                     *person.snapshot("Dest"), ("DialStatus", status)])
            await self._event(call, [("Event", "Hangup"), ("Privilege", "call,all"), *person.snapshot(),
                                     ("Cause", "16"), ("Cause-txt", "Normal Clearing")])
            chan.variables["DIALSTATUS"] = status
        return dial

    async def _hang_up_local(self, call: SimCall) -> None:
        """After the `h` extension: the ;2 half and then the ;1 half go away (OriginateResponse first when the
        Local channel was never answered)."""
        fake = call.fake
        if fake.hung_up:
            return   # an AMI Hangup or an Asterisk restart already ended it (and emitted the events)
        local = call.local
        cause = (local.variables.get("HANGUPCAUSE") if local is not None else None) or "16"
        cause_txt = {"16": "Normal Clearing", "17": "User busy", "19": "User alerting, no answer",
                     "34": "Circuit/channel congestion"}.get(cause, "Unknown")
        if fake.two.state != "6":
            await self._event(call, [("Event", "Hangup"), ("Privilege", "call,all"), *fake.two.snapshot(),
                                     ("Cause", "16"), ("Cause-txt", "Normal Clearing")])
            await self._event(call, self.ami.originate_response(fake, call.originate, "Failure", "1"))
            fake.hung_up = True
            await self._event(call, [("Event", "Hangup"), ("Privilege", "call,all"), *fake.one.snapshot(),
                                     ("Cause", "16"), ("Cause-txt", "Normal Clearing")])
            return
        fake.hung_up = True
        await self._event(call, [("Event", "Hangup"), ("Privilege", "call,all"), *fake.two.snapshot(),
                                 ("Cause", cause), ("Cause-txt", cause_txt)])
        await self._event(call, [("Event", "Hangup"), ("Privilege", "call,all"), *fake.one.snapshot(),
                                 ("Cause", cause), ("Cause-txt", cause_txt)])


def _belongs(event: Pairs, fake: FakeCall) -> bool:
    linked = {value for key, value in event if key.endswith("Linkedid")}
    return fake.one.linkedid in linked or any(key == "ActionID" and value == fake.action_id for key, value in event)


__all__ = ["AsteriskSim", "Callee", "SimCall"]
