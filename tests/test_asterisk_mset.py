"""One round trip for several channel variables, on the real Asterisk 22: `EXEC MSet A=v,B=v`.

The routes set their variables with AgiSession.set_variables (one EXEC MSet) instead of one SET VARIABLE per
variable, and never pipeline commands (res_agi reads them with stdio fgets() and poll(): a second line already
in stdio's buffer stalls the session). Here a real AGI() session gets values holding every character that one of
the three parsers on the way treats specially (res_agi's words, MSet's comma split, its `=` split), and each
comes back from the channel exactly, read with GET VARIABLE on the same channel.
"""

from __future__ import annotations

import asyncio

import pytest

from fastagi_server.protocol import mset_command
from fastagi_server.server import FastAgiServer
from tests.asterisk.observer import AmiObserver
from tests.asterisk.stack import ANSWERS
from tests.doubles.agi_client import FakeAsteriskAgi

pytestmark = pytest.mark.asterisk

VALUES = {
    "OPENDEEP_T_COMMAS": "a,b,,c,",
    "OPENDEEP_T_QUOTES": 'say "hi", then \'bye\'',
    "OPENDEEP_T_SPACES": "  two leading, two trailing  ",
    "OPENDEEP_T_BACKSLASHES": "C:\\dir\\\\share\\",
    "OPENDEEP_T_PIPES": "a|b||c|",
    "OPENDEEP_T_EQUALS": "=a=b==",
    "OPENDEEP_T_BRACKETS": "(open [one, two) three] ) (",
    "OPENDEEP_T_DOLLAR": "${CHANNEL} $[1+1] stays literal",
    "OPENDEEP_T_EMPTY": "",
    "OPENDEEP_T_ALL": ' ,"\\|=()[]; ü, ${X} ',
}


async def test_one_mset_sets_values_with_commas_quotes_spaces_backslashes_pipes_and_equals_exactly(asterisk):
    seen: dict[str, object] = {}
    done = asyncio.get_running_loop().create_future()

    async def mset_check(agi):
        try:
            await agi.set_variables(VALUES)
            seen["read back"] = {name: await agi.get_variable(name) for name in VALUES}
            done.set_result(None)
        except Exception as exc:  # shown by the assertion below
            done.set_result(exc)

    server = FastAgiServer({"mset-check": mset_check}, "127.0.0.1", 0)
    port = await server.start()
    try:
        # The callee answers (tests/asterisk/extensions_test.conf); the Local ;1 half then runs AGI().
        ami = AmiObserver(asterisk.ami_port)
        await ami.start()
        try:
            ami._writer.write(f"Action: Originate\r\nActionID: mset-1\r\n"
                              f"Channel: Local/{ANSWERS.lstrip('+')}@opendeep-test-callees\r\nApplication: AGI\r\n"
                              f"Data: agi://127.0.0.1:{port}/mset-check\r\nAsync: true\r\n\r\n".encode())
            assert (await ami.wait_for(lambda m: m.get("ActionID") == "mset-1", 10))["Response"] == "Success"
            assert await asyncio.wait_for(done, 30) is None
        finally:
            await ami.stop()
    finally:
        await server.stop()
    assert seen["read back"] == VALUES


def test_the_agi_double_splits_mset_as_the_real_asterisk_did():
    """The double the other FastAGI tests use follows the same rules (checked above against Asterisk)."""
    fake = FakeAsteriskAgi(0, script="x")
    assert fake.answer(mset_command(VALUES)) == b"200 result=0\n"
    assert fake.variables == VALUES
