"""The shipped Asterisk files, read statically the way Asterisk 22 reads them: syntax, applications and their
arguments, Goto/U() targets and AudioSocket dial strings, the contexts OpenDeep's AMI actions send calls to,
comments for the admin, the AMI user's rights, and `render_dialplan` filling in this installation's addresses.
That a real Asterisk loads the rendered files and runs them is tests/test_asterisk_calls.py's and
tests/test_asterisk_faults.py's to show."""

from __future__ import annotations

import re

import pytest

from ami_controller.manager import CONNECTED_CONTEXT, OUTBOUND_CONTEXT, TRANSFER_CONTEXT
from dialplan.render import EXTENSIONS, MANAGER, render_dialplan, shipped
from fastagi_server.routes import AbortReason, CallRoutes
from opendeep.settings import load_settings
from tests.doubles.agi_client import TEST_FASTAGI_SECRET
from tests.doubles.dialplan_interpreter import DialplanError, match_extension, parse, split_args


@pytest.fixture
def plain_settings():
    return load_settings({"DATABASE_URL": "sqlite+aiosqlite:///:memory:", "SECRET_KEY": "x",
                          "FASTAGI_SECRET": TEST_FASTAGI_SECRET}, dotenv=None)   # no fastagi.secret file made


def test_the_shipped_dialplan_parses_cleanly():
    plan = parse(shipped(EXTENSIONS))
    assert set(plan.contexts) == {"opendeep-outbound", "opendeep-connected", "opendeep-transfer", "opendeep-inbound"}
    assert set(plan.contexts["opendeep-outbound"]) == {"_[+0-9].", "h"}


def test_every_context_the_code_sends_a_call_to_exists_with_its_extension():
    """The AMI Originate's Local channel (;2) and Context/Exten (;1), and the transfer's Redirect (to `s`: no
    number travels in it). tests/test_asterisk_calls.py asks a real Asterisk the same with `dialplan show`."""
    plan = parse(shipped(EXTENSIONS))
    for context, exten in ((OUTBOUND_CONTEXT, "+14155550123"), (CONNECTED_CONTEXT, "s"), (TRANSFER_CONTEXT, "s")):
        assert match_extension(plan, context, exten)[0].priority == 1, (context, exten)


def test_every_context_opens_with_a_comment_for_the_admin():
    plan = parse(shipped(EXTENSIONS))
    assert plan.comments_after_header == {name: True for name in plan.contexts}


def test_every_step_has_a_comment_within_three_lines_above_it():
    lines = shipped(EXTENSIONS).splitlines()
    steps = [n for n, line in enumerate(lines) if line.lstrip().startswith(("exten =>", "same =>"))]
    uncommented = [lines[n] for n in steps
                   if not any(lines[k].lstrip().startswith(";") for k in range(max(n - 3, 0), n))
                   and "NoOp(" not in lines[n] and "Hangup()" not in lines[n]]
    assert uncommented == []


def test_every_agi_route_in_the_dialplan_exists_in_the_server(plain_settings):
    routes = set(CallRoutes(plain_settings, sessions=None).table())
    used = set(re.findall(r"AGI\(agi://127\.0\.0\.1:4573/([a-z-]+)", shipped(EXTENSIONS)))
    assert used == routes


def test_every_abort_reason_is_named_in_the_dialplan_comments():
    text = shipped(EXTENSIONS)
    assert all(reason.value in text for reason in AbortReason)


def test_every_opendeep_variable_is_explained_in_the_readme():
    used = set(re.findall(r"OPENDEEP_[A-Z_]+", shipped(EXTENSIONS)))
    readme = shipped("README.md")
    assert used - set(re.findall(r"OPENDEEP_[A-Z_]+", readme)) == set()
    assert {"OPENDEEP_DIAL", "OPENDEEP_AS_UUID", "OPENDEEP_AS_ADDR", "OPENDEEP_BRIDGE", "OPENDEEP_ABORT"} <= used


def test_the_outbound_half_answers_nothing_and_rings_the_decided_string():
    """Nothing answers before the callee does, so the Originate reports busy / no answer / congestion."""
    plan = parse(shipped(EXTENSIONS))
    steps = plan.contexts[OUTBOUND_CONTEXT]["_[+0-9]."]
    assert "Answer" not in [step.app for step in steps]
    (dial,) = [step for step in steps if step.app == "Dial"]
    assert split_args(dial.data) == ["${OPENDEEP_DIAL}", "${OPENDEEP_RING_SECONDS}"]


def test_the_connected_half_asks_for_the_ai_then_dials_the_audiosocket_channel():
    plan = parse(shipped(EXTENSIONS))
    steps = plan.contexts[CONNECTED_CONTEXT]["s"]
    apps = [step.app for step in steps]
    assert "Answer" not in apps   # the ;1 half is up because the callee answered
    call_answered = next(i for i, step in enumerate(steps)
                         if step.app == "AGI" and re.search(r"/call-answered[?,]", step.data))
    (dial,) = [step for step in steps if step.app == "Dial"]
    assert steps.index(dial) > call_answered
    assert split_args(dial.data) == ["AudioSocket/${OPENDEEP_AS_ADDR}/${OPENDEEP_AS_UUID}/c(slin)"]
    # The hard limit is set from what call-answered said, before the conversation.
    (limit,) = [step for step in steps if step.data.startswith("TIMEOUT(absolute)=")]
    assert limit.data == "TIMEOUT(absolute)=${OPENDEEP_MAX_SECONDS}"
    assert call_answered < steps.index(limit) < steps.index(dial)


@pytest.mark.parametrize("broken,message", [
    ("exten => s,1,Macro(old)\n", "not an Asterisk 22 application"),
    ("exten => s,1,GotoIf($[1]?nowhere)\n", "not a label"),
    ("exten => s,1,NoOp(unclosed\n", "expected App"),
    ("exten => s,1,Set(X=${Y)\n", "unclosed"),
    ("exten => s,2,NoOp()\n", "priority 1"),
    ("same => n,NoOp()\n", "before any 'exten"),
    ("exten => s,1,Dial(PJSIP/1,30,U(no-such-context))\n", "needs context"),
    ("exten => s,1,AudioSocket(only-uuid)\n", "takes 2..2 arguments"),
    ("exten => s,1,Dial(AudioSocket/127.0.0.1/${OPENDEEP_AS_UUID})\n", "needs host:port"),
    ("exten => s,1,Dial(AudioSocket/127.0.0.1:9092/not-a-uuid)\n", "not a UUID"),
    ("exten => s,1,Dial(AudioSocket/${A}/${B}/c(opus))\n", "slin codec"),
    ("exten => s,1,Dial(AudioSocket/${A})\n", "AudioSocket/<host:port>/<uuid>"),
    ("exten => s,1,Log(LOUD,hi)\n", "Log level"),
    ('exten => s,1,Set(X="a)\n', "double quote"),
])
def test_the_reader_catches_what_asterisk_would_refuse(broken, message):
    with pytest.raises(DialplanError, match=message):
        parse("[opendeep-test]\n; test\n" + broken)


def test_render_fills_in_the_fastagi_address_and_secret_and_the_ami_user(settings_env):
    settings = load_settings({**settings_env, "FASTAGI_ADVERTISE": "10.1.2.3:4600", "AMI_USERNAME": "deep",
                              "AMI_SECRET": "s3cr;et"}, dotenv=None)
    files = render_dialplan(settings)
    extensions, manager = files[EXTENSIONS], files[MANAGER]
    steps = "\n".join(line for line in extensions.splitlines() if not line.lstrip().startswith(";"))
    agi_calls = re.findall(r"AGI\(([^,)]*)", steps)
    assert len(agi_calls) == 7 and "127.0.0.1:4573" not in extensions and "CHANGE_ME" not in steps
    assert all(re.fullmatch(rf"agi://10\.1\.2\.3:4600/[a-z-]+\?secret={settings.fastagi_secret}", url)
               for url in agi_calls), agi_calls
    assert "\n[deep]\n" in manager and "secret = s3cr\\;et" in manager
    parse(extensions)  # still loads cleanly


def test_render_can_turn_amd_on(plain_settings):
    on = render_dialplan(plain_settings, amd=True)[EXTENSIONS]
    assert "Set(OPENDEEP_AMD=1)" in on and "Set(OPENDEEP_AMD=0)" not in on
    assert "Set(OPENDEEP_AMD=0)" in render_dialplan(plain_settings)[EXTENSIONS]


def test_render_refuses_a_dial_template_that_would_break_the_dialplan(settings_env):
    settings = load_settings({**settings_env, "DIAL_STRING_TEMPLATE": "PJSIP/{number}@a,b"}, dotenv=None)
    with pytest.raises(ValueError, match="DIAL_STRING_TEMPLATE"):
        render_dialplan(settings)


def _manager_user(text: str) -> dict[str, list[str]]:
    section = text.split("\n[opendeep]\n", 1)[1]
    values: dict[str, list[str]] = {}
    for line in section.splitlines():
        line = line.split(";", 1)[0].strip()
        if "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_the_ami_user_has_the_least_rights_and_an_address_restriction():
    user = _manager_user(shipped(MANAGER))
    assert user["read"] == ["call"]
    # Originate needs "originate"; Hangup, Redirect, PlayDTMF, Status need "call"; CoreShowChannels "reporting".
    assert set(user["write"][0].split(",")) == {"originate", "call", "reporting"}
    assert not {"system", "command", "config", "all"} & set(user["write"][0].split(","))
    assert user["deny"] == ["0.0.0.0/0.0.0.0"] and user["permit"] == ["127.0.0.1/255.255.255.255"]
