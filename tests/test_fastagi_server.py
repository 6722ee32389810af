"""The FastAGI server under bad sessions: why we do not use panoramisk's fast_agi, and that one bad session
(no empty line, EOF inside the environment, 1 MB environment, HANGUP mid-command, a crashing route) is closed
cleanly while the next session is answered at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import psutil
import pytest

from fastagi_server.server import FastAgiServer
from tests.doubles.agi_client import FakeAsteriskAgi, build_environment
from tests.doubles.ami_helpers import eventually

PANORAMISK_SERVER = textwrap.dedent("""
    import asyncio
    from panoramisk.fast_agi import Application

    async def call_start(request):
        await request.send_command("GET VARIABLE OPENDEEP_CALL_ID")

    async def main():
        app = Application(loop=asyncio.get_running_loop())
        app.add_route("call-start", call_start)
        server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(20)

    asyncio.run(main())
""")


class Recorder:
    """Routes that record what they saw; `call-start` asks one variable like the real route does first."""

    def __init__(self):
        self.seen = []

    def table(self):
        return {"call-start": self.call_start, "crash": self.crash, "slow": self.slow}

    async def call_start(self, agi):
        value = await agi.get_variable("OPENDEEP_CALL_ID")
        self.seen.append((agi.env.script, agi.env.query, agi.env.args, value))
        await agi.set_variable("OPENDEEP_DIAL", "PJSIP/+14155550123@opendeep-trunk")

    async def crash(self, agi):
        raise RuntimeError("route bug")

    async def slow(self, agi):
        await asyncio.sleep(30)


@pytest.fixture
async def server():
    recorder = Recorder()
    server = FastAgiServer(recorder.table(), "127.0.0.1", 0, header_timeout=0.5)
    await server.start()
    server.recorder = recorder
    yield server
    await server.stop(grace=0.5)


async def _serve_good_session(port: int) -> None:
    """A well-formed session gets the route's whole dialog (the server is not stuck on an earlier client)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(build_environment(script="call-start", agi_host=f"127.0.0.1:{port}"))
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\n"), 30)
    assert first == b"GET VARIABLE OPENDEEP_CALL_ID\n"
    writer.write(b"200 result=1 (42)\n")
    assert await asyncio.wait_for(reader.readuntil(b"\n"), 2) == \
        b"SET VARIABLE OPENDEEP_DIAL PJSIP/+14155550123@opendeep-trunk\n"
    writer.write(b"200 result=1\n")
    assert await asyncio.wait_for(reader.read(), 2) == b""  # the server ended the AGI
    writer.close()


async def _closed_by_server(reader, timeout: float = 2.0) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return True
    return data == b""


def test_panoramisk_fast_agi_spins_on_a_client_that_closes_before_the_empty_line():
    """Why fastagi_server is our own: panoramisk's header loop re-reads b'' forever at EOF, never yields to
    the event loop, and so no later session is answered at all. Shown by the spin itself: the server process
    burns a whole second of CPU (an idle one uses next to none) while a good session waits unanswered."""
    process = subprocess.Popen([sys.executable, "-c", PANORAMISK_SERVER], stdout=subprocess.PIPE)
    try:
        port = int(process.stdout.readline())
        server_process = psutil.Process(process.pid)

        def cpu_seconds() -> float:
            times = server_process.cpu_times()
            return times.user + times.system

        async def scenario():
            idle = cpu_seconds()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"agi_network: yes\nagi_network_script: call-start\n")  # no empty line, then EOF
            await writer.drain()
            writer.close()
            await eventually(lambda: cpu_seconds() - idle >= 0.5, timeout=60, interval=0.05,
                             what="the panoramisk process to start spinning")
            spinning = cpu_seconds()
            reader, good = await asyncio.open_connection("127.0.0.1", port)   # the kernel accepts it for them
            good.write(build_environment(script="call-start"))
            await good.drain()
            answer = asyncio.ensure_future(reader.readuntil(b"\n"))
            await eventually(lambda: cpu_seconds() - spinning >= 1.0, timeout=60, interval=0.1,
                             what="the panoramisk process to burn another second of CPU")
            answered = answer.done()
            answer.cancel()
            good.close()
            return answered

        assert asyncio.run(scenario()) is False, "panoramisk answered: re-check the claim in the README"
    finally:
        process.kill()
        process.wait(5)


async def test_ours_closes_that_client_and_answers_the_next_one_at_once(server):
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"agi_network: yes\nagi_network_script: call-start\n")
    await writer.drain()
    writer.close()
    await _serve_good_session(server.port)


async def test_no_empty_line_times_out_while_other_sessions_go_on(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"agi_network: yes\nagi_network_script: call-start\n")  # and then nothing, socket open
    await writer.drain()
    await _serve_good_session(server.port)                    # served while the stuck one waits ...
    assert await _closed_by_server(reader, timeout=30)        # ... which the header timeout (0.5 s) closes
    writer.close()
    await _serve_good_session(server.port)
    assert server.recorder.seen[0][3] == "42"


async def test_one_megabyte_environment_is_cut_off_at_the_cap(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"agi_network: yes\n" + b"agi_junk: " + b"x" * (1024 * 1024) + b"\n\n")
        await writer.drain()
    except ConnectionError:
        pass  # the server may close while we are still sending: that is the point
    assert await _closed_by_server(reader)
    writer.close()
    await _serve_good_session(server.port)
    assert server.recorder.seen == [("call-start", {}, (), "42")]


async def test_many_short_lines_beyond_the_cap_are_refused_too(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"".join(b"agi_arg_%d: %s\n" % (i, b"y" * 50) for i in range(1, 2000)))
        await writer.drain()
    except ConnectionError:
        pass
    assert await _closed_by_server(reader)
    writer.close()
    await _serve_good_session(server.port)


async def test_eof_inside_the_environment_then_next_session(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(build_environment(script="call-start")[:100])
    await writer.drain()
    writer.write_eof()
    assert await _closed_by_server(reader)
    writer.close()
    await _serve_good_session(server.port)


async def test_hangup_in_the_middle_of_a_command_then_next_session(server):
    run = await FakeAsteriskAgi(server.port, script="call-start", variables={"OPENDEEP_CALL_ID": "42"},
                                hangup_after=0).run()
    assert run.commands == ["GET VARIABLE OPENDEEP_CALL_ID"] and run.replies == [b"HANGUP\n"]
    assert "OPENDEEP_DIAL" not in run.variables
    await _serve_good_session(server.port)


async def test_a_crashing_route_and_an_unknown_route_end_the_agi_cleanly(server):
    crashed = await FakeAsteriskAgi(server.port, script="crash").run()
    unknown = await FakeAsteriskAgi(server.port, script="no-such-route").run()
    assert (crashed.agi_status, crashed.commands) == ("SUCCESS", [])
    assert (unknown.agi_status, unknown.commands) == ("SUCCESS", [])
    await _serve_good_session(server.port)


async def test_route_gets_query_arguments_and_agi_args(server):
    run = await FakeAsteriskAgi(server.port, script="call-start?campaign=7&mode=test", args=("a,b", "c"),
                                variables={"OPENDEEP_CALL_ID": "9"}, secret=None).run()
    assert run.variables["OPENDEEP_DIAL"] == "PJSIP/+14155550123@opendeep-trunk"
    assert server.recorder.seen == [("call-start", {"campaign": ["7"], "mode": ["test"]}, ("a,b", "c"), "9")]


async def test_many_sessions_at_once_are_isolated(server):
    bad = []
    for _ in range(20):  # twenty stuck peers holding half an environment
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"agi_network: yes\n")
        bad.append(writer)
    runs = await asyncio.gather(*(
        FakeAsteriskAgi(server.port, script="call-start", variables={"OPENDEEP_CALL_ID": str(i)}).run()
        for i in range(50)
    ))
    assert all(run.variables.get("OPENDEEP_DIAL") for run in runs)
    assert sorted(int(seen[3]) for seen in server.recorder.seen) == list(range(50))
    for writer in bad:
        writer.close()


async def test_stop_cancels_sessions_that_outlive_the_grace_period():
    recorder = Recorder()
    server = FastAgiServer(recorder.table(), "127.0.0.1", 0)
    await server.start()
    client = asyncio.create_task(FakeAsteriskAgi(server.port, script="slow", timeout=5).run())
    for _ in range(100):
        if server.active_sessions:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(server.stop(grace=0.2), 20)   # far less than the route's 30 s: it was cancelled
    assert server.active_sessions == 0
    assert (await asyncio.wait_for(client, 2)).agi_status == "SUCCESS"


async def test_a_taken_port_gives_an_actionable_error(server):
    with pytest.raises(OSError, match="FASTAGI_BIND"):
        await FastAgiServer({}, "127.0.0.1", server.port).start()
