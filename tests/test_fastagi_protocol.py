"""The AGI wire: the captured Asterisk 22 environment and replies parse exactly; commands round-trip through
Asterisk's own argument rules; 510 / 511 / 520 / HANGUP come back as the errors a route can act on."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastagi_server.protocol import (
    AgiDeadChannel,
    AgiHangup,
    AgiHeaderError,
    AgiInvalidCommand,
    AgiUsageError,
    mset_command,
    parse_environment,
    parse_reply_line,
    quote_argument,
)
from fastagi_server.server import FastAgiServer
from tests.doubles.agi_client import (
    ENV_ANSWERED,
    ENV_H_EXTENSION,
    FakeAsteriskAgi,
    build_environment,
    parse_args,
)
from tests.doubles.captures import CAPTURES


def test_captured_answered_environment_parses_with_script_query_and_arguments():
    env = parse_environment(ENV_ANSWERED.read_bytes())
    assert len(env.variables) == 25
    assert env.script == "hello"
    assert env.query == {"x": ["1"]}
    assert env.query_value("x") == "1"
    assert env.args == ("first arg", "second,with comma", "quoted, too")
    assert env.channel == "Local/101@smoke-00000000;2"
    assert env.uniqueid == "opendeep-call-42-b"
    assert env.get("agi_accountcode") == ""  # sent as "agi_accountcode: " with a trailing space
    assert env.get("agi_version") == "22.10.1"


def test_captured_h_extension_environment_has_no_arguments():
    env = parse_environment(ENV_H_EXTENSION.read_bytes())
    assert (env.script, env.args, env.extension) == ("hangup", (), "h")


def test_the_double_replays_the_capture_byte_for_byte():
    rebuilt = build_environment(ENV_ANSWERED, script="hello?x=1",
                                args=("first arg", "second,with comma", "quoted, too"))
    assert rebuilt == ENV_ANSWERED.read_bytes()
    assert build_environment(ENV_H_EXTENSION, script="hangup") == ENV_H_EXTENSION.read_bytes()


def test_a_line_that_is_not_an_agi_key_is_refused():
    with pytest.raises(AgiHeaderError, match="not 'agi_key: value'"):
        parse_environment(b"agi_network: yes\nGET / HTTP/1.1\n\n")


def _captured_replies() -> list[str]:
    lines = []
    for name in ("agi-dialog-answered.txt", "agi-dialog-h-extension.txt"):
        for line in (CAPTURES / name).read_text().splitlines():
            if line.startswith("<<< "):
                lines.append(eval(line[4:]).decode())  # the capture writes Python bytes literals
    return lines


def test_every_captured_reply_parses():
    parsed = [parse_reply_line(line) for line in _captured_replies()]
    assert [reply.code for reply in parsed] == [200, 200, 200, 200, 200, 200, 510, 200,
                                               200, 200, 200, 200, 511, 200, 510, 200]
    first = parsed[0]
    assert (first.result, first.data) == ("1", "42")
    assert parsed[3].data == "40325ec2-5efd-4bd3-805f-53576e581d13"
    assert (parsed[7].result, parsed[7].data) == ("0", None)  # GET VARIABLE of an unset variable
    assert parsed[12].code == 511


@pytest.mark.parametrize("line,result,data", [
    ("200 result= (timeout)", "", "timeout"),         # panoramisk loses the "timeout"
    ("200 result=-1", "-1", None),
    ("200 result=1 (a (nested) value)", "1", "a (nested) value"),
    ("200 result=0 endpos=1234", "0", None),
])
def test_result_shapes(line, result, data):
    reply = parse_reply_line(line)
    assert (reply.code, reply.result, reply.data) == (200, result, data)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40))
def test_quoted_values_survive_asterisks_argument_parser(value):
    assert parse_args(f"SET VARIABLE OPENDEEP_X {quote_argument(value)}") == ["SET", "VARIABLE", "OPENDEEP_X", value]


def test_a_line_break_can_never_be_sent_as_a_value():
    with pytest.raises(ValueError):
        quote_argument("PJSIP/1@trunk\nEXEC System rm")


async def _session_with(fake: FakeAsteriskAgi, route):
    """Serve one connection of `fake` with `route(session)` on the FastAGI server production runs; returns the
    fake's AgiRun and what the route returned (or raised)."""
    done = asyncio.get_running_loop().create_future()

    async def handle(session):
        try:
            done.set_result(await route(session))
        except Exception as exc:  # the test inspects what the route raised
            done.set_result(exc)

    server = FastAgiServer({"x": handle}, "127.0.0.1", 0)
    fake.port = await server.start()
    try:
        run = await fake.run()
        return run, await asyncio.wait_for(done, 2)
    finally:
        await server.stop()


async def test_several_variables_go_in_one_exec_mset_round_trip():
    fake = FakeAsteriskAgi(0, script="x")

    async def route(agi):
        await agi.set_variables({"OPENDEEP_A": "1", "OPENDEEP_B": 'x, "y" = z\\'})
        await agi.set_variables({"OPENDEEP_C": "only one"})

    run, _ = await _session_with(fake, route)
    assert run.commands == [r'EXEC MSet "OPENDEEP_A=1,OPENDEEP_B=x\\, \\\"y\\\" = z\\\\"',
                            'SET VARIABLE OPENDEEP_C "only one"']
    assert run.variables == {"OPENDEEP_A": "1", "OPENDEEP_B": 'x, "y" = z\\', "OPENDEEP_C": "only one"}


def test_mset_refuses_what_it_cannot_send():
    with pytest.raises(ValueError):
        mset_command({"OPENDEEP_A": "1", "NOT A NAME": "2"})
    with pytest.raises(ValueError):
        mset_command({"OPENDEEP_A": "line\nbreak", "OPENDEEP_B": ""})


async def test_get_set_and_full_variable_on_the_wire():
    fake = FakeAsteriskAgi(0, script="x", variables={"OPENDEEP_CALL_ID": "42"})

    async def route(agi):
        await agi.set_variable("OPENDEEP_DIAL", 'PJSIP/+1 "x"@trunk')
        return (await agi.get_variable("OPENDEEP_CALL_ID"), await agi.get_variable("UNSET_VAR"),
                await agi.get_full_variable("${OPENDEEP_CALL_ID}-${CHANNEL}"), await agi.channel_status())

    run, result = await _session_with(fake, route)
    assert result == ("42", None, "42-Local/101@smoke-00000000;2", 6)
    assert run.variables["OPENDEEP_DIAL"] == 'PJSIP/+1 "x"@trunk'
    assert run.commands[0] == r'SET VARIABLE OPENDEEP_DIAL "PJSIP/+1 \"x\"@trunk"'
    assert run.agi_status == "SUCCESS"


async def test_dead_channel_511_unknown_510_and_multiline_520_raise_distinct_errors():
    fake = FakeAsteriskAgi(0, script="x", template=ENV_H_EXTENSION, dead=True)
    errors = []

    async def route(agi):
        for line in ("CHANNEL STATUS", "BOGUS COMMAND", "SET VARIABLE ONLY_NAME"):
            try:
                await agi.command(line)
            except Exception as exc:
                errors.append(exc)
        return await agi.get_variable("NOPE")  # the session is still usable afterwards

    run, result = await _session_with(fake, route)
    assert [type(error) for error in errors] == [AgiDeadChannel, AgiInvalidCommand, AgiUsageError]
    assert errors[2].reply.usage == " Usage: SET VARIABLE <variablename> <value>"
    assert run.replies[2].startswith(b"520-Invalid command syntax.")
    assert run.replies[2].endswith(b"520 End of proper usage.\n")
    assert result is None


async def test_hangup_in_the_middle_of_a_command_raises_agi_hangup():
    fake = FakeAsteriskAgi(0, script="x", variables={"A": "1"}, hangup_after=1)

    async def route(agi):
        await agi.get_variable("A")
        await agi.get_variable("A")

    run, result = await _session_with(fake, route)
    assert isinstance(result, AgiHangup)
    assert run.replies[-1] == b"HANGUP\n" and run.agi_status == "HANGUP"


async def test_hangup_line_then_dead_channel_reply_is_read_through():
    fake = FakeAsteriskAgi(0, script="x", variables={"A": "1"}, hangup_after=0, hangup_close=False)

    async def route(agi):
        value = await agi.get_variable("A")
        return value, agi.hung_up

    _, result = await _session_with(fake, route)
    assert result == ("1", True)
