"""What the call AI is told and may do on the two calls that are not an ordinary outbound conversation:
a callback (the callee rang back; fastagi_server/callbacks.py made the call row) and a voicemail drop (AMD heard
a machine on a campaign that leaves messages; the dialplan waited for the beep)."""

from __future__ import annotations

from typing import Any

from audiosocket.instructions import callback_instructions, voicemail_instructions
from audiosocket.tools import ToolName, tool_definitions
from db.models import Call, CallDirection, Campaign, Task, User, VoicemailAction
from opendeep.settings import Settings
from opendeep.voicemail import voicemail_script

# A callback has no Local channel pair: no DTMF to an IVR, and [opendeep-transfer] works on outbound calls only.
CALLBACK_TOOLS = (ToolName.REQUEST_USER_FEEDBACK, ToolName.RECORD_NOTE, ToolName.END_CALL)
VOICEMAIL_TOOLS = (ToolName.END_CALL,)


def voicemail_plan(settings: Settings, task: Task, campaign: Campaign | None) -> tuple[bool, str]:
    """(leave a message on machines?, the message with the callback number) for this task."""
    leave = campaign is not None and campaign.voicemail_action is VoicemailAction.LEAVE_MESSAGE
    message = voicemail_script(task.voicemail_message or "", settings.callback_number_e164)
    return leave and bool((task.voicemail_message or "").strip()), message


def call_instructions(settings: Settings, call: Call, task: Task, user: User,
                      campaign: Campaign | None) -> tuple[str, list[dict[str, Any]]]:
    """(instructions, tools) for a callback or a voicemail drop."""
    if call.direction is CallDirection.INBOUND:
        return (callback_instructions(task=task, user=user, caller_number=call.dialed_number, campaign=campaign,
                                      recorded=settings.record_calls),
                _only(CALLBACK_TOOLS))
    _, message = voicemail_plan(settings, task, campaign)
    return voicemail_instructions(task=task, user=user, message=message), _only(VOICEMAIL_TOOLS)


def _only(names: tuple[ToolName, ...]) -> list[dict[str, Any]]:
    return [tool for tool in tool_definitions([]) if tool["name"] in names]
