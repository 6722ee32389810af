"""The shipped Asterisk files, read the way Asterisk 22 reads them (we have no Asterisk here; see the limits in
dialplan/README.md): syntax, applications and their arguments, Goto/U() targets, comments for the admin,
the AMI user's rights, and `render_dialplan` filling in this installation's addresses."""

from __future__ import annotations

import re

import pytest

from dialplan.render import EXTENSIONS, MANAGER, render_dialplan, shipped
from fastagi_server.routes import AbortReason, CallRoutes
from opendeep.settings import load_settings
from tests.doubles.dialplan_interpreter import DialplanError, parse, split_args


@pytest.fixture
def plain_settings():
    return load_settings({"DATABASE_URL": "sqlite+aiosqlite:///:memory:", "SECRET_KEY": "x"}, dotenv=None)


def test_the_shipped_dialplan_parses_cleanly():
    plan = parse(shipped(EXTENSIONS))
    assert set(plan.contexts) == {"opendeep-outbound", "opendeep-answered", "opendeep-transfer"}
    assert set(plan.contexts["opendeep-outbound"]) == {"_[+0-9].", "h"}


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


def test_dial_rings_the_decided_string_with_the_answered_subroutine():
    plan = parse(shipped(EXTENSIONS))
    (dial,) = [step for step in plan.contexts["opendeep-outbound"]["_[+0-9]."] if step.app == "Dial"]
    args = split_args(dial.data)
    assert args[0] == "${OPENDEEP_DIAL}" and args[1] == "${OPENDEEP_RING_SECONDS}"
    assert args[2].startswith("U(opendeep-answered^${OPENDEEP_CALL_ID}^${OPENDEEP_USER_ID}^${OPENDEEP_AS_UUID}")


@pytest.mark.parametrize("broken,message", [
    ("exten => s,1,Macro(old)\n", "not an Asterisk 22 application"),
    ("exten => s,1,GotoIf($[1]?nowhere)\n", "not a label"),
    ("exten => s,1,NoOp(unclosed\n", "expected App"),
    ("exten => s,1,Set(X=${Y)\n", "unclosed"),
    ("exten => s,2,NoOp()\n", "priority 1"),
    ("same => n,NoOp()\n", "before any 'exten"),
    ("exten => s,1,Dial(PJSIP/1,30,U(no-such-context))\n", "needs context"),
    ("exten => s,1,AudioSocket(only-uuid)\n", "takes 2..2 arguments"),
    ("exten => s,1,Log(LOUD,hi)\n", "Log level"),
    ('exten => s,1,Set(X="a)\n', "double quote"),
])
def test_the_reader_catches_what_asterisk_would_refuse(broken, message):
    with pytest.raises(DialplanError, match=message):
        parse("[opendeep-test]\n; test\n" + broken)


def test_render_fills_in_the_fastagi_address_the_trunk_and_the_ami_user(settings_env):
    settings = load_settings({**settings_env, "FASTAGI_ADVERTISE": "10.1.2.3:4600", "AMI_USERNAME": "deep",
                              "AMI_SECRET": "s3cr;et", "DIAL_STRING_TEMPLATE": "PJSIP/{digits}@carrier"},
                             dotenv=None)
    files = render_dialplan(settings)
    extensions, manager = files[EXTENSIONS], files[MANAGER]
    assert "127.0.0.1:4573" not in extensions
    assert extensions.count("agi://10.1.2.3:4600/") == 4
    assert "Dial(PJSIP/${FILTER(0-9,${EXTEN})}@carrier,30)" in extensions
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
