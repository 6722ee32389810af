"""Asterisk 22 for a real `opendeep serve`, without an Asterisk: AMI, the shipped dialplan, FastAGI and the
AudioSocket channel, over real sockets.

Kept for what a real Asterisk is not used for: `make demo` (tests/demo.py, runs on any machine) and what a real
Asterisk cannot be made to do on demand -- a hundred scripted callees at once (tests/test_reliability_100_calls.py,
bench/bench_e2e.py). The call path itself is tested against a real Asterisk 22 (tests/test_asterisk_calls.py,
tests/test_asterisk_faults.py); tests/doubles/README.md says which of those tests backs each thing this simulator
does the way Asterisk does it.

It composes the protocol doubles:
  FakeAmi (fake_ami.py)              the AMI login, the Originate action, PlayDTMF / Redirect / Hangup, the events
  dialplan_interpreter.py            runs the SHIPPED dialplan/extensions_opendeep.conf, rendered for `settings`
  FakeAsteriskAgi (agi_client.py)    each AGI() of the dialplan: a TCP session to the app's FastAGI server
  AsteriskAudioSocket                the AudioSocket channel: a TCP connection to the app's AudioSocket server

One call (Originate of Local/<number>@opendeep-outbound/n, Context opendeep-connected, Exten s; every AGI() goes
to the app's FastAGI server with its URL as the rendered dialplan writes it, the FastAGI secret included, and the
Uniqueid the Originate pre-assigned to its half):
  the ";2" half runs [opendeep-outbound]: AGI call-start, then Dial(${OPENDEEP_DIAL},${OPENDEEP_RING_SECONDS})
  rings the callee, scripted per number. Nothing is answered before the callee:
    busy / noanswer / congestion: DialEnd <status> -> Hangup() -> the `h` extension's AGI call-end (DIALSTATUS,
      HANGUPCAUSE) -> OriginateResponse Failure (Reason 0, Channel = the dial string) -> the ;2 and ;1 Hangups.
    answer: OriginateResponse Success (Reason 4), DialEnd ANSWER, and the ";1" half runs the Originate's Context
      [opendeep-connected]: AGI call-answered on ;1 (the app records ;1 as the call's channel), AMD() + AGI amd when
      the dialplan turns AMD on, then Dial(AudioSocket/<host:port>/<uuid>/c(slin)): the channel driver connects to
      the app's AudioSocket server, sends the 0x01 UUID frame, then the callee's audio as 20 ms slin frames (speech,
      then silence frames while the line is open, or nothing with Callee(line_silence=False)). No inactivity
      timeout: that is the AudioSocket() application's, not the channel's.
  The conversation ends one of three ways:
    the app sends the hangup frame (or closes): the AudioSocket channel hangs up, so does ;1 (Dial has no g
      option), then ;2 runs `h` (call-end, DIALSTATUS=ANSWER) and the callee is hung up;
    the callee hangs up (Callee.talk_seconds after the answer): ;2 runs `h`, then ;1 hangs up and the socket is
      closed -- Asterisk sends no hangup frame;
    AMI Hangup of ;1: the socket is closed without a hangup frame, then ;2 runs `h`.
  AMI Redirect of ;1: it leaves Dial(AudioSocket) -- the socket is closed without a hangup frame -- and runs the
  Redirect's place, [opendeep-transfer] (AGI transfer gives the number), whose Dial() rings the person
  (Callee.transfer_outcome); the callee stays on the line through the Local pair. AMI PlayDTMF on ;1 reaches the
  callee (call.dtmf_heard).
AMI events: those OpenDeep reads (Newchannel, VarSet, LocalBridge, DialBegin, DialEnd, Newstate,
OriginateResponse, Hangup), with the headers and in the order a real Asterisk 22.10.1 sent them for the same
calls; the ones OpenDeep does not subscribe to (Newexten, Bridge*, SoftHangupRequest, ...) are left out.

    sim = AsteriskSim(settings, directory=workdir) # opendeep Settings: FASTAGI_*/AUDIOSOCKET_* say where to go;
                                                   # `opendeep serve`'s folder holds its fastagi.secret
    ami_port = await sim.start()                   # AMI on 127.0.0.1:<free port> (or start(port=...))
    sim.script_number("+14155550123", Callee("busy"))        # answer / busy / noanswer / congestion
    sim.default_callee = Callee("answer", talk_seconds=30, speech_seconds=2.0)
    call = await sim.wait_for_call(timeout=10)     # the next Originate's SimCall, once it starts
    await call.wait_done(timeout=30)               # both halves have run to their end (h extension included)
    call.originate                                 # the Originate action, [(header, value), ...] in wire order
    call.agi                                       # [(script?query, AgiRun)]: call-start, call-answered, ...
    call.audio                                     # the AsteriskAudioSocket (frames received, sent count)
    call.events                                    # every AMI event emitted for this call, in order
    call.local / call.connected                    # the ;2 and ;1 halves: variables, executed applications
    call.dtmf_heard                                # AMI PlayDTMF digits played on ;1, which the callee hears
    call.redirected_to, call.transfer_dialed       # AMI Redirect of ;1, and the Dial() it then ran
    sim.calls, sim.ami.actions                     # every call; every AMI action received
    await sim.stop()                               # ends live calls and closes every socket

Several calls run at once, each in its own tasks; an error inside one is kept in `call.error` (and raised by
wait_done) instead of being lost. Not simulated: TIMEOUT(absolute) (Asterisk's hard limit of a call), DTMF from
the callee, early media, Asterisk restarts (fake_ami.py's drop_connections has those for the AMI tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dialplan.render import EXTENSIONS, render_dialplan
from opendeep.settings import Settings
from tests.doubles import dialplan_interpreter as dialplan
from tests.doubles.agi_client import ENV_ANSWERED, ENV_H_EXTENSION, AgiRun, FakeAsteriskAgi
from tests.doubles.audiosocket_client import AsteriskAudioSocket, speech_like
from tests.doubles.fake_ami import FakeAmi, FakeCall, FakeChannel, Pairs, _split_variables, pairs_all, pairs_get

CALLEE_OUTCOMES = ("answer", "busy", "noanswer", "congestion")
# Dial() results: (DIALSTATUS, HANGUPCAUSE, Cause-txt as ast_cause2str() spells it).
_DIAL_FAILURES = {
    "busy": ("BUSY", "17", "User busy"),
    "noanswer": ("NOANSWER", "19", "User alerting, no answer"),
    "congestion": ("CONGESTION", "34", "Circuit/channel congestion"),
}
_AMD_CAUSES = {"HUMAN": "HUMAN-300-1000", "MACHINE": "LONGGREETING-1500-1500", "NOTSURE": "TOOLONG-5000",
               "HANGUP": "HANGUP"}
_CALL = ("Privilege", "call,all")


@dataclass
class Callee:
    """What the phone at a number does when Dial() rings it."""

    outcome: str = "answer"          # answer / busy / noanswer / congestion
    ring_seconds: float = 0.1        # ringing before the answer (noanswer: until Dial's timeout, capped here)
    talk_seconds: float = 60.0       # the callee hangs up this long after answering unless the call ends first
    speech_seconds: float = 2.0      # speech-like audio said at once after the answer
    speech_seed: int = 1
    line_silence: bool = True        # after the speech, silence frames keep coming (a phone line's RTP)
    amd_status: str = "HUMAN"        # what AMD() reports, when the dialplan runs it (HUMAN/MACHINE/NOTSURE/HANGUP)
    transfer_outcome: str = "answer"     # what the person a transfer rings does (Dial() in [opendeep-transfer])
    transfer_talk_seconds: float = 1.0   # ...and how long that person talks before hanging up

    def __post_init__(self) -> None:
        for outcome in (self.outcome, self.transfer_outcome):
            if outcome not in CALLEE_OUTCOMES:
                raise ValueError(f"unknown callee outcome {outcome!r}; choose from {', '.join(CALLEE_OUTCOMES)}")


@dataclass
class SimCall:
    """One Originate as the simulator played it."""

    number: str
    originate: Pairs
    variables: dict[str, str]                     # the Originate's Variable headers
    fake: FakeCall
    callee_script: Callee
    local: dialplan.Channel | None = None         # the ;2 half running [opendeep-outbound]
    connected: dialplan.Channel | None = None     # the ;1 half, once answered: [opendeep-connected] (and transfer)
    agi: list[tuple[str, AgiRun]] = field(default_factory=list)
    audio: AsteriskAudioSocket | None = None
    events: list[Pairs] = field(default_factory=list)
    dialed: list[list[str]] = field(default_factory=list)   # Dial() arguments of the ;2 half (the callee)
    answered_at: float | None = None
    ended_at: float | None = None
    app_hung_up: bool = False                     # the app sent the AudioSocket hangup frame
    dtmf_heard: list[str] = field(default_factory=list)     # AMI PlayDTMF digits on ;1, heard by the callee
    redirected_to: tuple[str, str, str] | None = None       # AMI Redirect of ;1: context, exten, priority
    transfer_dialed: list[list[str]] = field(default_factory=list)   # Dial() arguments after the Redirect
    error: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # What each side does, as it happens (the halves wait on these).
    redirect: asyncio.Event = field(default_factory=asyncio.Event)        # an AMI Redirect of ;1 arrived
    one_gone: asyncio.Event = field(default_factory=asyncio.Event)        # ;1 hung up (its end, or AMI Hangup)
    two_gone: asyncio.Event = field(default_factory=asyncio.Event)        # ;2 hung up (after its h extension)
    callee_hangup: asyncio.Event = field(default_factory=asyncio.Event)   # AMI Hangup of the callee's side
    _hung_up: set[str] = field(default_factory=set)                       # uniqueids whose Hangup went out
    _connected_task: asyncio.Task | None = None

    @property
    def call_id(self) -> int | None:
        value = self.variables.get("OPENDEEP_CALL_ID")
        return int(value) if value and value.isdigit() else None

    def agi_scripts(self) -> list[str]:
        """The routes the dialplan's AGI() calls asked for, in order (without their ?query)."""
        return [script.split("?")[0] for script, _ in self.agi]

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
    """See the module docstring. The dialplan is rendered as `opendeep dialplan render [--amd]` run in `directory`
    writes it: give the folder `opendeep serve` runs in, where its fastagi.secret is (unless FASTAGI_SECRET is
    set in `settings`)."""

    def __init__(self, settings: Settings, *, username: str | None = None, secret: str | None = None,
                 default_callee: Callee | None = None, agi_timeout: float = 10.0, amd: bool = False,
                 directory: Path = Path(".")) -> None:
        self.settings = settings
        self.plan = dialplan.parse(render_dialplan(settings, amd=amd, directory=Path(directory))[EXTENSIONS])
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

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_originate(self, fake: FakeCall, action: Pairs, _outcome: str) -> None:
        variables = dict(item for value in pairs_all(action, "Variable") for item in _split_variables(value))
        call = SimCall(fake.number, action, variables, fake, self._scripts.get(fake.number, self.default_callee))
        self.calls.append(call)
        self._spawn(self._run(call), f"asterisk-sim-{fake.number}")

        async def _announce() -> None:
            async with self._new_call:
                self._new_call.notify_all()
        self._spawn(_announce(), "asterisk-sim-announce")

    def _record_and_emit(self, event: Pairs) -> None:
        self.ami_events.append(list(event))
        for call in reversed(self.calls):
            if _belongs(event, call.fake):
                call.events.append(list(event))
                break
        self._emit(event)

    async def _event(self, event: Pairs) -> None:
        await self.ami.send_event(event)

    async def _hangup(self, call: SimCall, channel: FakeChannel, cause: str = "16",
                      cause_txt: str = "Normal Clearing") -> None:
        """The channel's Hangup event, once."""
        if channel.uniqueid in call._hung_up:
            return
        call._hung_up.add(channel.uniqueid)
        await self._event([("Event", "Hangup"), _CALL, *channel.snapshot(), ("Cause", cause),
                           ("Cause-txt", cause_txt)])

    def _new_channel(self, dial_string: str, call: SimCall, context: str, exten: str) -> FakeChannel:
        """The channel Dial() creates for `PJSIP/<number>@<endpoint>`: PJSIP/<endpoint>-<sequence>."""
        technology, _, rest = dial_string.partition("/")
        endpoint = rest.split("@", 1)[1] if "@" in rest else rest
        return self.ami.new_channel(f"{technology}/{endpoint}", context, exten, call.fake.one.linkedid)

    # ------------------------------------------------------------------ the ;2 half

    async def _run(self, call: SimCall) -> None:
        fake = call.fake
        try:
            await self.ami.announce_local(fake, call.originate)
            local = dialplan.Channel(fake.two.name, {**call.variables, "CHANNEL": fake.two.name})
            call.local = local
            handlers = {"AGI": self._agi_for(call, fake.two), "Dial": self._dial_callee_for(call)}
            await dialplan.run(self.plan, fake.two.context, fake.number, local, handlers)
            await self._end_two(call)
            if call._connected_task is not None:
                await asyncio.wait_for(asyncio.shield(call._connected_task), 10)
        except asyncio.CancelledError:
            if call._connected_task is not None:
                call._connected_task.cancel()
            raise
        except BaseException as exc:  # kept for the test: a broken call must not vanish silently
            call.error = call.error or exc
        finally:
            fake.hung_up = True
            call.one_gone.set()
            call.two_gone.set()
            call.ended_at = time.monotonic()
            if call.audio is not None:
                with contextlib.suppress(Exception):
                    await call.audio.close()
            call.done.set()

    async def _end_two(self, call: SimCall) -> None:
        """The ;2 half is gone (its `h` extension has run). Unanswered, the Originate fails with it."""
        fake = call.fake
        if call.answered_at is None:
            # Asterisk 22.10.1: Reason 0 and the dial string as Channel, whatever the callee did.
            response = self.ami.originate_response(fake, call.originate, "Failure", "0")
            dial = pairs_get(call.originate, "Channel") or ""
            await self._event([(key, dial if key == "Channel" else value) for key, value in response])
            await self._hangup(call, fake.two)
            await self._event([("Event", "DialEnd"), _CALL, *fake.one.snapshot("Dest"), ("DialStatus", "NOANSWER")])
            await self._hangup(call, fake.one)
            call.one_gone.set()
        else:
            if fake.callee is not None:
                await self._hangup(call, fake.callee)   # Dial() hangs up the callee it bridged
            await self._hangup(call, fake.two)
        call.two_gone.set()   # the Local driver hangs up ;1, if it is still up

    def _dial_callee_for(self, call: SimCall):
        async def dial(chan: dialplan.Channel, args: list[str]) -> None:
            call.dialed.append(args)
            await self._dial_callee(call, chan, args)
        return dial

    async def _dial_callee(self, call: SimCall, local: dialplan.Channel, args: list[str]) -> None:
        fake, script = call.fake, call.callee_script
        one, two = fake.one, fake.two
        callee = self._new_channel(args[0], call, two.context, two.exten)
        fake.callee = callee
        ring_limit = float(args[1]) if len(args) > 1 and args[1].isdigit() else 60.0
        started = time.monotonic()
        await self._event([("Event", "Newchannel"), _CALL, *callee.snapshot()])
        await self._event([("Event", "DialBegin"), _CALL, *two.snapshot(), *callee.snapshot("Dest"),
                           ("DialString", args[0].split("/", 1)[-1])])
        if script.outcome in ("answer", "noanswer"):
            callee.state = one.state = "5"
            await self._event([("Event", "Newstate"), _CALL, *callee.snapshot()])
            await self._event([("Event", "Newstate"), _CALL, *one.snapshot()])   # ringing reaches ;1 too
            if await _first(call.one_gone, timeout=min(script.ring_seconds, ring_limit)):
                # The ;1 half was hung up while the callee rang (AMI Hangup): Dial gives up.
                await self._event([("Event", "DialEnd"), _CALL, *two.snapshot(), *callee.snapshot("Dest"),
                                   ("DialStatus", "CANCEL")])
                await self._hangup(call, callee)
                local.variables.update(DIALSTATUS="CANCEL", HANGUPCAUSE="16", ANSWEREDTIME="")
                local.hung_up = True
                return
        if script.outcome != "answer":
            dial_status, cause, cause_txt = _DIAL_FAILURES[script.outcome]
            await self._event([("Event", "DialEnd"), _CALL, *two.snapshot(), *callee.snapshot("Dest"),
                               ("DialStatus", dial_status)])
            await self._hangup(call, callee, cause, cause_txt)
            local.variables.update(DIALSTATUS=dial_status, HANGUPCAUSE=cause, ANSWEREDTIME="",
                                   DIALEDTIME=str(int(time.monotonic() - started)))
            return   # the dialplan goes on to Hangup(), then `h`
        # The callee answers: so does the ;1 half, and the Originate succeeds.
        callee.state = "6"
        await self._event([("Event", "Newstate"), _CALL, *callee.snapshot()])
        await self._event(self.ami.originate_response(fake, call.originate, "Success", "4"))
        await self._event([("Event", "DialEnd"), _CALL, *two.snapshot(), *callee.snapshot("Dest"),
                           ("DialStatus", "ANSWER")])
        two.state = one.state = "6"
        await self._event([("Event", "Newstate"), _CALL, *two.snapshot()])
        await self._event([("Event", "Newstate"), _CALL, *one.snapshot()])
        await self._event([("Event", "DialEnd"), _CALL, *one.snapshot("Dest"), ("DialStatus", "ANSWER")])
        call.answered_at = time.monotonic()
        call._connected_task = self._spawn(self._run_connected(call), f"asterisk-sim-{fake.number}-1")
        # Bridged (through the Local pair) until the callee hangs up or the ;1 half does.
        ended_by = await _first(call.one_gone, call.callee_hangup, timeout=script.talk_seconds)
        if ended_by is not call.one_gone:
            await self._hangup(call, callee)   # the callee hung up
        talked = time.monotonic() - call.answered_at
        local.variables.update(DIALSTATUS="ANSWER", HANGUPCAUSE="16", ANSWEREDTIME=str(int(talked)),
                               DIALEDTIME=str(int(time.monotonic() - started)))
        local.hung_up = True   # Dial() without g: the answered call is over, so is this half (then `h`)

    # ------------------------------------------------------------------ the ;1 half, once answered

    async def _run_connected(self, call: SimCall) -> None:
        fake = call.fake
        one = fake.one
        context = pairs_get(call.originate, "Context") or ""
        exten = pairs_get(call.originate, "Exten") or "s"
        try:
            if (pairs_get(call.originate, "Priority") or "1") != "1":
                raise dialplan.DialplanError("the simulator starts the ;1 half at priority 1 only")
            one.context, one.exten = context, exten
            chan = dialplan.Channel(one.name, {**call.variables, "CHANNEL": one.name})
            call.connected = chan
            handlers = {"AGI": self._agi_for(call, one), "Dial": self._dial_on_connected_for(call),
                        "AMD": self._amd_for(call), "Playback": _playback}
            await dialplan.run(self.plan, context, exten, chan, handlers)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            call.error = call.error or exc
        finally:
            with contextlib.suppress(Exception):
                await self._hangup(call, one)
            call.one_gone.set()

    def _dial_on_connected_for(self, call: SimCall):
        async def dial(chan: dialplan.Channel, args: list[str]) -> None:
            if args[0].startswith("AudioSocket/"):
                await self._audiosocket(call, chan, args[0])
            else:
                call.transfer_dialed.append(args)
                await self._dial_person(call, chan, args)
        return dial

    async def _audiosocket(self, call: SimCall, chan: dialplan.Channel, target: str) -> None:
        """Dial(AudioSocket/<host:port>/<uuid>/c(slin)) on ;1: chan_audiosocket connects when the channel is
        requested and sends the UUID frame when it is called; the channel answers at once."""
        one = call.fake.one
        address, call_uuid, _codec = dialplan.parse_audiosocket_dial(target)
        host, _, port = address.rpartition(":")
        client = AsteriskAudioSocket(int(port), call_uuid, host=host.strip("[]") or "127.0.0.1")
        try:
            await client.connect(send_uuid=False)
        except OSError:
            chan.variables["DIALSTATUS"] = "CHANUNAVAIL"   # no channel: Dial returns, the dialplan goes on
            return
        call.audio = client
        socket_channel = self.ami.new_channel("AudioSocket", "default", "s", one.linkedid)
        socket_channel.name = f"AudioSocket/{address}-{call_uuid}"
        await self._event([("Event", "Newchannel"), _CALL, *socket_channel.snapshot()])
        await self._event([("Event", "DialBegin"), _CALL, *one.snapshot(), *socket_channel.snapshot("Dest"),
                           ("DialString", target.split("/", 1)[1])])
        client.write(b"\x01\x00\x10" + uuid.UUID(call_uuid).bytes)
        socket_channel.state = "6"
        await self._event([("Event", "Newstate"), _CALL, *socket_channel.snapshot()])
        await self._event([("Event", "DialEnd"), _CALL, *one.snapshot(), *socket_channel.snapshot("Dest"),
                           ("DialStatus", "ANSWER")])
        script = call.callee_script
        speech = speech_like(script.speech_seconds, seed=script.speech_seed) if script.speech_seconds else b""
        client.play(speech, keep_sending=script.line_silence)
        ended_by = await _first(client.eof, call.redirect, call.one_gone, call.two_gone)
        if ended_by is client.eof:
            # The app's hangup frame (or its close): the AudioSocket channel hangs up, and with it this half.
            call.app_hung_up = client.hangup.is_set()
            await self._hangup(call, socket_channel)
            await client.close()
            chan.hung_up = True
        elif ended_by is call.redirect:
            # The Redirect takes ;1 out of Dial(): Asterisk hangs the AudioSocket channel up -- it closes the
            # socket, with no hangup frame -- and ;1 runs the Redirect's place.
            await client.close()
            await self._hangup(call, socket_channel)
            one.context, one.exten = call.redirected_to[:2]
            raise dialplan.Redirected(*call.redirected_to)
        else:
            # This half was hung up (AMI Hangup, or the callee's side ended): the socket closes, no hangup frame.
            await self._hangup(call, one)
            await client.close()
            await self._hangup(call, socket_channel)
            chan.hung_up = True

    async def _dial_person(self, call: SimCall, chan: dialplan.Channel, args: list[str]) -> None:
        """Dial() on ;1 after the Redirect to [opendeep-transfer]: rings the person; on their answer they talk
        with the callee (through the Local pair) until one of them hangs up."""
        one, script = call.fake.one, call.callee_script
        person = self._new_channel(args[0], call, one.context, one.exten)
        await self._event([("Event", "Newchannel"), _CALL, *person.snapshot()])
        await self._event([("Event", "DialBegin"), _CALL, *one.snapshot(), *person.snapshot("Dest"),
                           ("DialString", args[0].split("/", 1)[-1])])
        if script.transfer_outcome != "answer":
            status, cause, cause_txt = _DIAL_FAILURES[script.transfer_outcome]
            await self._event([("Event", "DialEnd"), _CALL, *one.snapshot(), *person.snapshot("Dest"),
                               ("DialStatus", status)])
            await self._hangup(call, person, cause, cause_txt)
            chan.variables["DIALSTATUS"] = status
            return
        person.state = "6"
        await self._event([("Event", "Newstate"), _CALL, *person.snapshot()])
        await self._event([("Event", "DialEnd"), _CALL, *one.snapshot(), *person.snapshot("Dest"),
                           ("DialStatus", "ANSWER")])
        chan.variables["DIALSTATUS"] = "ANSWER"
        if await _first(call.one_gone, call.two_gone, timeout=script.transfer_talk_seconds):
            await self._hangup(call, one)   # the callee's side (or an AMI Hangup) ended it
        await self._hangup(call, person)
        chan.hung_up = True   # Dial() without g

    def _amd_for(self, call: SimCall):
        async def amd(chan: dialplan.Channel, _args: list[str]) -> None:
            await asyncio.sleep(0.05)   # AMD() listens to the callee's greeting
            status = call.callee_script.amd_status
            chan.variables.update(AMDSTATUS=status, AMDCAUSE=_AMD_CAUSES.get(status, ""))
        return amd

    # ------------------------------------------------------------------ AGI and AMI actions

    def _agi_for(self, call: SimCall, channel: FakeChannel):
        async def agi(chan: dialplan.Channel, args: list[str]) -> None:
            url = urlsplit(args[0])
            script = url.path.lstrip("/") + (f"?{url.query}" if url.query else "")
            dead = chan.variables.get("EXTEN") == "h"
            overrides = {"agi_channel": chan.name, "agi_uniqueid": channel.uniqueid,
                         "agi_context": channel.context, "agi_extension": "h" if dead else channel.exten,
                         "agi_callerid": channel.cid_num, "agi_calleridname": channel.cid_name}
            client = FakeAsteriskAgi(url.port or 4573, host=url.hostname or "127.0.0.1", script=script,
                                     args=tuple(args[1:]), variables=chan.variables, dead=dead,
                                     template=ENV_H_EXTENSION if dead else ENV_ANSWERED, overrides=overrides,
                                     timeout=self.agi_timeout, secret=None)   # the URL carries the secret
            run = await client.run()
            call.agi.append((script, run))
            chan.variables.update(run.variables)
            chan.variables["AGISTATUS"] = run.agi_status
        return agi

    def _on_channel_action(self, name: str, action: Pairs) -> None:
        """PlayDTMF / Redirect / Hangup (answered with Success by FakeAmi) on a channel of a live call."""
        channel = pairs_get(action, "Channel") or ""
        for call in reversed(self.calls):
            if call.done.is_set():
                continue
            fake = call.fake
            if channel in (fake.one.name, fake.one.uniqueid):
                half = "one"
            elif channel in (fake.two.name, fake.two.uniqueid) or (
                    fake.callee is not None and channel in (fake.callee.name, fake.callee.uniqueid)):
                half = "far"
            else:
                continue
            break
        else:
            return
        if name == "PlayDTMF" and half == "one":
            call.dtmf_heard.append(pairs_get(action, "Digit") or "")   # through the Local pair to the callee
        elif name == "Redirect" and half == "one" and call.redirected_to is None:
            call.redirected_to = (pairs_get(action, "Context") or "", pairs_get(action, "Exten") or "",
                                  pairs_get(action, "Priority") or "1")
            call.redirect.set()
        elif name == "Hangup":
            (call.one_gone if half == "one" else call.callee_hangup).set()


async def _playback(_chan: dialplan.Channel, _args: list[str]) -> None:
    await asyncio.sleep(0.2)   # a short stock prompt


async def _first(*events: asyncio.Event, timeout: float | None = None) -> asyncio.Event | None:
    """The first of `events` that is set (in argument order when several are); None if `timeout` passes first."""
    for event in events:
        if event.is_set():
            return event
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return next((event for event in events if event.is_set()), None)


def _belongs(event: Pairs, fake: FakeCall) -> bool:
    linked = {value for key, value in event if key.endswith("Linkedid")}
    return fake.one.linkedid in linked or any(key == "ActionID" and value == fake.action_id for key, value in event)


__all__ = ["AsteriskSim", "Callee", "SimCall"]
