"""Several Asterisk servers (ASTERISK_SERVERS): parsing and defaults, each server's call limit fed by one
scheduler, calls that record their server, and live-call actions routed to the server carrying the call.
The AMI side is the fake Asterisk of tests/doubles/fake_ami.py (two of them); the real-Asterisk version of the
same story is tests/test_asterisk_scaleout.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import select

from ami_controller.actions import CallActions
from ami_controller.initiator import dispatch_due_tasks
from ami_controller.manager import AmiController, AmiError, AmiRefused
from db.models import Call, CallStatus
from opendeep.events import EventHub
from opendeep.settings import SettingsError, load_settings
from tests.doubles.agi_client import TEST_FASTAGI_SECRET, FakeAsteriskAgi
from tests.doubles.ami_helpers import ami_settings, local_noon_after, make_tenant
from tests.doubles.fake_ami import FakeAmi, pairs_get

NUMBERS = ["+14155550123", "+14155550124", "+14155550125", "+14155550126", "+14155550127"]


def _settings(**env):
    return load_settings({"SECRET_KEY": "k", **env}, dotenv=None)


def test_without_asterisk_servers_there_is_one_default_server_from_the_single_server_settings():
    settings = _settings(AMI_HOST="10.0.0.9", AMI_PORT="5039", AMI_USERNAME="od", AMI_SECRET="s",
                         AUDIOSOCKET_ADVERTISE="10.0.0.5:9092", FASTAGI_BIND="0.0.0.0:4573", MAX_CONCURRENT_CALLS="7")
    (server,) = settings.asterisk_servers
    assert (server.name, server.ami_address, server.ami_username, server.ami_secret, server.audiosocket_address,
            server.fastagi_address, server.max_calls) == ("default", "10.0.0.9:5039", "od", "s", "10.0.0.5:9092",
                                                          "0.0.0.0:4573", 7)
    assert settings.asterisk_server(None) is not None and settings.asterisk_server(None).name == "default"


def test_a_server_list_takes_its_own_values_and_the_single_server_ones_for_the_rest():
    servers = [{"name": "pbx-a", "ami": "10.0.0.11:5038", "ami_secret": "a", "max_calls": 40,
                "audiosocket": "10.0.0.5:9092", "fastagi": "10.0.0.5:4573"},
               {"name": "pbx-b", "ami": "[2001:db8::2]:5038"}]
    settings = _settings(ASTERISK_SERVERS=json.dumps(servers), AMI_SECRET="shared", AUDIOSOCKET_BIND="0.0.0.0:9100",
                         MAX_CONCURRENT_CALLS="3")
    a, b = settings.asterisk_servers
    assert (a.name, a.ami_host, a.ami_port, a.ami_secret, a.max_calls, a.audiosocket_address) == (
        "pbx-a", "10.0.0.11", 5038, "a", 40, "10.0.0.5:9092")
    assert (b.name, b.ami_host, b.ami_secret, b.max_calls, b.audiosocket_address) == (
        "pbx-b", "2001:db8::2", "shared", 3, "0.0.0.0:9100")
    assert settings.asterisk_server(None) == a          # calls from before servers had names: the first
    assert settings.asterisk_server("pbx-b") == b and settings.asterisk_server("gone") is None


@pytest.mark.parametrize("raw, message", [
    ("not json", "JSON list"),
    ("{}", "non-empty JSON list"),
    ('[{"name": "a"}]', "ami (HOST:PORT"),
    ('[{"name": "a", "ami": "host"}]', "HOST:PORT"),
    ('[{"name": "a", "ami": "h:1"}, {"name": "a", "ami": "h:2"}]', "used twice"),
    ('[{"name": "bad name", "ami": "h:1"}]', "name must be"),
    ('[{"name": "a", "ami": "h:1", "max_calls": 0}]', "max_calls"),
    ('[{"name": "a", "ami": "h:1", "secret": "x"}]', "unknown field"),
])
def test_a_bad_server_list_is_refused_with_what_to_fix_and_never_shows_secrets(raw, message):
    with pytest.raises(SettingsError, match="ASTERISK_SERVERS") as error:
        _settings(ASTERISK_SERVERS=raw)
    assert message in str(error.value)
    assert "ASTERISK_SERVERS=***" in str(error.value)


@pytest.fixture
async def two_asterisks():
    fakes = [FakeAmi(username="opendeep", secret="secret", hold_seconds=30) for _ in range(2)]
    for fake in fakes:
        await fake.start()
    yield fakes
    for fake in fakes:
        await fake.stop()


async def test_one_scheduler_feeds_two_servers_each_within_its_own_limit(two_asterisks, settings, sessions):
    a, b = two_asterisks
    servers = [{"name": "pbx-a", "ami": f"127.0.0.1:{a.port}", "max_calls": 2},
               {"name": "pbx-b", "ami": f"127.0.0.1:{b.port}", "max_calls": 1}]
    settings = ami_settings(settings, a.port, max_concurrent_calls_per_user=10,
                            asterisk_server_entries=_settings(ASTERISK_SERVERS=json.dumps(servers))
                            .asterisk_server_entries)
    controllers = [AmiController(settings, sessions, EventHub(), server=server) for server in settings.asterisk_servers]
    await make_tenant(sessions, numbers=NUMBERS)
    now = local_noon_after(NUMBERS[0])
    try:
        for controller in controllers:
            await controller.start()
            await controller.wait_connected(5)
        for _ in range(2):   # a second pass finds both servers full
            for controller in controllers:
                await dispatch_due_tasks(sessions, settings, controller, claimer="test", now=now)
    finally:
        for controller in controllers:
            await controller.stop()
    assert (len(a.actions_named("Originate")), len(b.actions_named("Originate"))) == (2, 1)
    async with sessions() as db:
        calls = (await db.scalars(select(Call).order_by(Call.id))).all()
    assert [call.asterisk_server for call in calls] == ["pbx-a", "pbx-a", "pbx-b"]
    sent_to_b = {pairs_get(action, "ChannelId") for action in b.actions_named("Originate")}
    assert sent_to_b == {f"opendeep-{calls[2].id}"}


async def test_live_call_actions_go_to_the_server_carrying_the_call_from_a_process_without_its_controller(
        two_asterisks, settings, sessions):
    a, b = two_asterisks
    servers = [{"name": "pbx-a", "ami": f"127.0.0.1:{a.port}"}, {"name": "pbx-b", "ami": f"127.0.0.1:{b.port}"}]
    settings = ami_settings(settings, a.port, asterisk_server_entries=_settings(
        ASTERISK_SERVERS=json.dumps(servers)).asterisk_server_entries)
    user_id, _, task_ids = await make_tenant(sessions, numbers=NUMBERS[:2])
    channel = "Local/+14155550123@opendeep-outbound-00000001;1"
    async with sessions() as db, db.begin():
        db.add(Call(user_id=user_id, task_id=task_ids[0], attempt_number=1, dialed_number=NUMBERS[0],
                    status=CallStatus.ANSWERED, channel=channel, asterisk_server="pbx-b"))
    actions = CallActions(settings, sessions)   # a bridge worker: no scheduler controller here
    assert actions.connected is None            # the web UI shows nothing rather than "not connected"
    try:
        await actions.play_dtmf(channel, "1#")
        with pytest.raises(AmiRefused, match="No such channel"):   # the fake pbx-b has no such channel up
            await actions.hangup(channel)
    finally:
        await actions.close()
    assert [pairs_get(action, "Digit") for action in b.actions_named("PlayDTMF")] == ["1", "#"]
    assert [pairs_get(action, "Channel") for action in b.actions_named("Hangup")] == [channel]
    assert a.actions_named("PlayDTMF") == [] and a.actions_named("Hangup") == []
    assert b.actions_named("Originate") == []   # the action-only connection never dials


async def test_an_action_for_a_channel_live_on_two_servers_is_refused_not_guessed(settings, sessions):
    servers = [{"name": "pbx-a", "ami": "127.0.0.1:1"}, {"name": "pbx-b", "ami": "127.0.0.1:2"}]
    settings = dataclasses.replace(settings, asterisk_server_entries=_settings(
        ASTERISK_SERVERS=json.dumps(servers)).asterisk_server_entries)
    user_id, _, task_ids = await make_tenant(sessions, numbers=NUMBERS[:2])
    channel = "Local/+14155550123@opendeep-outbound-00000001;1"
    async with sessions() as db, db.begin():
        for task_id, server in zip(task_ids, ("pbx-a", "pbx-b"), strict=True):
            db.add(Call(user_id=user_id, task_id=task_id, attempt_number=1, dialed_number=NUMBERS[0],
                        status=CallStatus.ANSWERED, channel=channel, asterisk_server=server))
    actions = CallActions(settings, sessions)
    with pytest.raises(AmiError, match="several Asterisk servers"):
        await actions.hangup(channel)
    await actions.close()


def test_each_server_gets_its_own_dialplan_with_its_fastagi_address_and_ami_login(tmp_path):
    from tests.test_cli import run_cli

    servers = [{"name": "pbx-a", "ami": "10.0.0.11:5038", "ami_username": "od-a", "ami_secret": "secret-a",
                "fastagi": "10.0.0.5:4573"},
               {"name": "pbx-b", "ami": "10.0.0.12:5038", "ami_username": "od-b", "ami_secret": "secret-b",
                "fastagi": "10.0.0.6:4573"}]
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    out = tmp_path / "b"
    result = run_cli(["dialplan", "render", "--out", str(out), "--server", "pbx-b"], url, tmp_path,
                     ASTERISK_SERVERS=json.dumps(servers))
    assert result.returncode == 0, result.stderr
    assert "agi://10.0.0.6:4573/call-start" in (out / "extensions_opendeep.conf").read_text()
    manager = (out / "manager_opendeep.conf").read_text()
    assert "[od-b]" in manager and "secret = secret-b" in manager and "secret-a" not in manager
    unknown = run_cli(["dialplan", "render", "--server", "pbx-z"], url, tmp_path, ASTERISK_SERVERS=json.dumps(servers))
    assert unknown.returncode == 2 and "pbx-z" in unknown.stderr and "pbx-a, pbx-b" in unknown.stderr


async def test_serve_runs_fastagi_on_uvloop_when_event_loop_says_so(tmp_path):
    from tests.doubles.serve_process import ServeProcess
    from tests.test_cli import run_cli

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    bad = run_cli(["db", "upgrade"], url, tmp_path, EVENT_LOOP="tokio")
    assert bad.returncode == 2 and "EVENT_LOOP" in bad.stderr
    serve = ServeProcess(tmp_path, database_url=url, extra_env={"EVENT_LOOP": "uvloop",
                                                                 "FASTAGI_SECRET": TEST_FASTAGI_SECRET})
    serve.only = "fastagi"
    await serve.cli("db", "upgrade")
    await serve.start()
    try:
        run = await FakeAsteriskAgi(serve.fastagi_port, script="call-start", args=("404", "1")).run()
    finally:
        code = await serve.stop()
    assert code == 0, serve.log_text()
    assert "event loop: uvloop" in serve.log_text()
    assert run.agi_status == "SUCCESS" and run.variables["OPENDEEP_ABORT"] == "unknown-call"
