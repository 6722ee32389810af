"""Fuzzing the FastAGI wire (fastagi_server/protocol.py and the server around it) with hypothesis.

Whatever Asterisk - or anything else that reaches port 4573 - sends, the parser returns a value or raises its
own AgiError family (AgiHeaderError, AgiHangup, AgiCommandError...), never anything else, and never waits on a
finished connection. The bytes go through AgiConnection, the asyncio.Protocol the server runs, fed the way the
event loop feeds it (data_received in any chunking, then eof_received). At the socket level, no input kills the
server: the next well-formed session is answered.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

from hypothesis import example, given
from hypothesis import strategies as st

from fastagi_server.protocol import (
    MAX_REPLY_LINE_BYTES,
    AgiConnection,
    AgiError,
    AgiHeaderError,
    AgiSession,
    parse_environment,
    parse_reply_line,
    split_script,
)
from fastagi_server.server import FastAgiServer
from tests.doubles.agi_client import ENV_ANSWERED, FakeAsteriskAgi, build_environment
from tests.doubles.reliability_fuzz import FUZZ, FUZZ_SOCKETS, chunked, cuts, run_bounded

CAPTURED = build_environment(ENV_ANSWERED, script="call-start?attempt=1", args=("first arg", "second,with comma"))

# ---------------------------------------------------------------- strategies: what could arrive

line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=60)
env_key = st.from_regex(r"agi_[a-z0-9_]{1,16}", fullmatch=True)
# Scripts as a sloppy dialplan or a hostile peer might write them: brackets, percent signs, query strings.
script_text = st.one_of(
    st.from_regex(r"[a-z-]{1,12}(\?[a-z]{1,5}=[^\s&]{0,8}(&[a-z]{1,5}=[^\s&]{0,8}){0,2})?", fullmatch=True),
    st.text(st.sampled_from("/?&=%[]:#@ab1\\ \t"), max_size=24),
)
env_line = st.one_of(
    st.tuples(env_key, line_text).map(lambda kv: f"{kv[0]}: {kv[1]}".encode()),
    script_text.map(lambda s: f"agi_network_script: {s}".encode("utf-8", "replace")),
    script_text.map(lambda s: f"agi_request: agi://{s}".encode("utf-8", "replace")),
    st.binary(max_size=40),
)
structured_env = st.lists(env_line, max_size=30).map(lambda lines: b"\n".join(lines) + b"\n\n")
# The captured environment with bytes flipped, cut short, or with garbage spliced in.
mutated_capture = st.tuples(st.integers(0, len(CAPTURED)), st.binary(max_size=64), st.integers(0, 64)).map(
    lambda m: CAPTURED[:m[0]] + m[1] + CAPTURED[m[0] + m[2]:])
environment_bytes = st.one_of(st.binary(max_size=2048), structured_env, mutated_capture)

reply_line = st.one_of(
    st.builds(lambda r, d: f"200 result={r}" + (f" ({d})" if d is not None else ""),
              st.text(st.characters(blacklist_characters=" \r\n", blacklist_categories=("Cs",)), max_size=8),
              st.none() | line_text),
    st.sampled_from(["HANGUP", "510 Invalid or unknown command", "511 Command Not Permitted on a dead channel",
                     "520-Invalid command syntax.  Proper usage follows:", " Usage: GET VARIABLE <name>",
                     "520 End of proper usage.", "100 result=0 Trying...", "200 result=", "200 result=1 (",
                     "200 result=6", "200 result=x (y) extra"]),
    line_text,
)
reply_stream = st.one_of(
    st.lists(reply_line, max_size=12).map(lambda lines: "\n".join(lines).encode("utf-8", "replace")),
    st.binary(max_size=1024),
)


# ---------------------------------------------------------------- the environment


@FUZZ
@given(environment_bytes)
# Found by this test: urlsplit() raised ValueError through parse_environment on an unclosed IPv6 bracket.
@example(b"agi_network: yes\nagi_network_script: //[::1/call-start\n\n")
@example(b"agi_request: agi://[::1:4573/call-start\n\n")
def test_any_environment_block_parses_or_raises_agi_header_error(block):
    try:
        env = parse_environment(block)
    except AgiHeaderError:
        return
    assert "agi_network_script" in env.variables or "agi_request" in env.variables
    assert all(key.startswith("agi_") for key in env.variables)


@FUZZ
@given(st.dictionaries(env_key.filter(lambda k: k not in {"agi_network_script", "agi_request"}
                                      and not k.startswith("agi_arg_")), line_text, max_size=20),
       st.lists(line_text, max_size=5),
       st.from_regex(r"[a-z][a-z-]{0,15}", fullmatch=True),
       st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.from_regex(r"[a-z0-9]{0,6}", fullmatch=True),
                       max_size=3))
def test_a_well_formed_environment_round_trips_exactly(variables, args, script, query):
    """Values come back byte for byte: leading spaces, colons, non-ASCII caller names, empty values."""
    raw_script = script + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    lines = [f"agi_network_script: {raw_script}"]
    lines += [f"{key}: {value}" for key, value in variables.items()]
    lines += [f"agi_arg_{index}: {value}" for index, value in enumerate(args, start=1)]
    env = parse_environment(("\n".join(lines) + "\n\n").encode("utf-8"))
    assert {k: v for k, v in env.variables.items() if k in variables} == variables
    assert env.args == tuple(args)
    assert env.script == script
    assert {k: v[0] for k, v in env.query.items()} == query


class _Transport(asyncio.Transport):
    """The event loop's side of one connection, as AgiConnection uses it: records what the server writes."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name, default=None):
        return ("192.0.2.1", 40000) if name == "peername" else default


def _connection(data: bytes, cut_at, **limits) -> tuple[AgiConnection, list, list]:
    """An AgiConnection fed `data` in the chunks `cut_at` gives, then EOF; its (environments, refusals)."""
    environments, refusals = [], []
    connection = AgiConnection(lambda _conn, env: environments.append(env),
                               lambda _conn, error: refusals.append(error), **limits)
    connection.connection_made(_Transport())
    for piece in chunked(data, cut_at):
        connection.data_received(piece)
    if not connection.eof_received():
        connection.connection_lost(None)  # what the loop does when the protocol does not keep its half open
    return connection, environments, refusals


@FUZZ
@given(environment_bytes, cuts)
def test_reading_an_environment_never_hangs_or_escapes(block, cut_at):
    """The connection ends (EOF) after the bytes: the connection decides at once, in any chunking, and
    exactly once: an environment (then a session) or a refusal (then the socket is closed)."""
    async def read():
        return _connection(block, cut_at)

    with asyncio.Runner() as runner:
        connection, environments, refusals = run_bounded(runner, read(), timeout=2.0)
    assert len(environments) + len(refusals) == 1, (environments, refusals)
    assert all(isinstance(error, AgiHeaderError) for error in refusals)
    if environments:
        assert b"\n\n" in block and connection.session is not None
    else:
        assert connection.transport.is_closing() or connection.session is None


def test_an_environment_over_the_size_cap_is_refused_without_a_hang():
    async def read():
        return _connection(b"agi_network_script: call-start\n" + b"agi_x: " + b"y" * 4096 + b"\n\n", [],
                           max_header_bytes=1024)

    with asyncio.Runner() as runner:
        connection, environments, refusals = run_bounded(runner, read(), timeout=2.0)
    assert environments == [] and len(refusals) == 1 and "limit" in str(refusals[0])
    assert connection.transport.is_closing()


def test_a_connection_refused_before_the_loop_hands_it_its_transport_still_closes_it():
    """Found by test_random_bytes_never_kill_the_fastagi_server: the server's sweep may expire a connection between
    the protocol factory and connection_made; it was refused but its socket was left open, and Asterisk's AGI()
    would have waited on it."""
    async def expire_early():
        refusals = []
        connection = AgiConnection(lambda *_: None, lambda _conn, error: refusals.append(error), header_timeout=0.3)
        connection.expire_header(connection.connected_at + 1.0)
        transport = _Transport()
        connection.connection_made(transport)
        return refusals, transport

    with asyncio.Runner() as runner:
        refusals, transport = run_bounded(runner, expire_early(), timeout=2.0)
    assert len(refusals) == 1 and "within 0.3 s" in str(refusals[0])
    assert transport.is_closing()


@FUZZ
@given(st.one_of(st.text(st.sampled_from("ab1-._~/?=&"), max_size=30), script_text))
def test_the_fast_script_split_gives_what_urlsplit_and_parse_qs_give(raw):
    """split_script splits plain scripts by hand (every session passes there); it must agree with the library."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        return   # parse_environment turns this into AgiHeaderError (tested above)
    expected = parts.path.strip("/"), parse_qs(parts.query, keep_blank_values=True) if parts.query else {}
    assert split_script(raw) == expected


# ---------------------------------------------------------------- replies


@FUZZ
@given(st.one_of(reply_line, st.text(max_size=200)))
def test_any_reply_line_parses_or_raises_agi_error(line):
    try:
        reply = parse_reply_line(line)
    except AgiError:
        return
    assert 0 <= reply.code <= 999


@FUZZ
@given(st.text(st.characters(blacklist_characters=" \r\n()", blacklist_categories=("Cs",)), max_size=10),
       st.none() | st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40))
def test_a_200_reply_gives_back_its_result_and_data(result, data):
    reply = parse_reply_line(f"200 result={result}" + (f" ({data})" if data is not None else "") + "\n")
    assert (reply.code, reply.result, reply.data) == (200, result, data)


@FUZZ
@given(reply_stream, cuts)
def test_commands_over_any_reply_stream_return_or_raise_agi_error(stream, cut_at):
    """A route's commands read whatever Asterisk answered, then EOF: each returns a value or raises an
    AgiError (AgiHangup at EOF), never anything else, and never waits once the connection ended."""
    async def dialog():
        connection, [env], _ = _connection(CAPTURED + stream, cut_at)
        session = connection.session
        assert session.env == env
        answered = 0
        try:
            for _ in range(20):  # EOF ends it at the latest: every reply consumes at least one line
                await session.get_variable("OPENDEEP_CALL_ID")
                await session.channel_status()
                await session.set_variables({"OPENDEEP_DIAL": 'PJSIP/+1 "x"', "OPENDEEP_RING_SECONDS": "30"})
                answered += 1
        except AgiError:
            pass
        return answered, connection.transport.sent

    with asyncio.Runner() as runner:
        answered, sent = run_bounded(runner, dialog(), timeout=2.0)
    assert answered < 20
    assert sent.startswith(b"GET VARIABLE OPENDEEP_CALL_ID\n")


def test_a_reply_line_longer_than_the_limit_is_an_agi_error():
    async def dialog():
        connection, _, _ = _connection(CAPTURED + b"200 result=1 (" + b"x" * MAX_REPLY_LINE_BYTES + b")\n", [4096])
        return await connection.session.get_variable("X")

    with asyncio.Runner() as runner:
        try:
            run_bounded(runner, dialog(), timeout=2.0)
        except AgiError as exc:
            assert "longer than the limit" in str(exc)
        else:
            raise AssertionError("a reply over MAX_REPLY_LINE_BYTES was accepted")


# ---------------------------------------------------------------- the server on a real socket


class _Routes:
    """call-start as the real route begins: read a variable, set the dial string."""

    def __init__(self) -> None:
        self.completed = 0

    async def call_start(self, agi: AgiSession) -> None:
        call_id = await agi.get_variable("OPENDEEP_CALL_ID")
        await agi.set_variable("OPENDEEP_DIAL", f"PJSIP/{call_id}@opendeep-trunk")
        self.completed += 1


async def _good_session(port: int) -> None:
    run = await FakeAsteriskAgi(port, script="call-start", variables={"OPENDEEP_CALL_ID": "42"}, timeout=2).run()
    assert run.agi_status == "SUCCESS", run
    assert run.variables["OPENDEEP_DIAL"] == "PJSIP/42@opendeep-trunk"


session_bytes = st.one_of(
    environment_bytes,
    # A session that gets as far as a route, then answers its commands with anything.
    st.tuples(st.sampled_from([build_environment(script="call-start"), CAPTURED]), reply_stream)
    .map(lambda pair: pair[0] + pair[1]),
)


def test_random_bytes_never_kill_the_fastagi_server():
    routes = _Routes()
    server = FastAgiServer({"call-start": routes.call_start}, "127.0.0.1", 0, header_timeout=0.3,
                           session_timeout=0.5)
    with asyncio.Runner() as runner:
        port = runner.run(server.start())
        held_open: list[asyncio.StreamWriter] = []

        async def attack_then_call(data: bytes, ending: str) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            if ending == "close":
                writer.close()
            elif ending == "half-close":
                writer.write_eof()
                held_open.append(writer)
            else:  # silent: the header timeout (or the session deadline) has to end it
                held_open.append(writer)
            await _good_session(port)

        @FUZZ_SOCKETS
        @given(session_bytes, st.sampled_from(["close", "half-close", "silent"]))
        def attack(data, ending):
            completed = routes.completed
            run_bounded(runner, attack_then_call(data, ending))
            assert routes.completed >= completed + 1

        try:
            attack()

            async def drained() -> None:
                while server.active_sessions:
                    await asyncio.sleep(0.02)
            run_bounded(runner, drained(), timeout=3.0)   # every bad session was closed by the server
        finally:
            for writer in held_open:
                writer.close()
            runner.run(server.stop(grace=0.5))
