"""AMI events -> call state: how an event names its call, and what it means for the call."""

from __future__ import annotations

import re

CALL_UNIQUEID = re.compile(r"opendeep-(\d+)(-b)?")


def call_uniqueids(call_id: int) -> tuple[str, str]:
    """The Uniqueids the Originate pre-assigns: the ;1 half (also the Linkedid) and the ;2 half."""
    return f"opendeep-{call_id}", f"opendeep-{call_id}-b"


def originate_action_id(call_id: int) -> str:
    return f"opendeep-orig-{call_id}"


def call_id_from_uniqueid(uniqueid: str | None) -> int | None:
    match = CALL_UNIQUEID.fullmatch(uniqueid or "")
    return int(match.group(1)) if match else None
