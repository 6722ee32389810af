"""The message OpenDeep leaves on an answering machine: the planner's text plus the number to call back.
Shared by the plan page (what the user confirms) and the call AI (what it says), so both are the same words."""

from __future__ import annotations

import phonenumbers


def voicemail_script(message: str, callback_number: str) -> str:
    """The message left on a machine: the planner's text, with the callback number added when it lacks it.
    What the plan page shows is what the AI says."""
    text = " ".join((message or "").split())
    if callback_number and not _mentions(text, callback_number):
        text = f"{text} You can call us back at {spoken_number(callback_number)}.".strip()
    return text


def spoken_number(number: str) -> str:
    """+14155550123 -> "plus 1, 4 1 5, 5 5 5, 0 1 2 3": digit by digit, the last four together and threes before
    them, as a person reads a number out."""
    digits = number.lstrip("+")
    groups = [digits[-4:]] if digits else []
    rest = digits[:-4]
    while rest:
        groups.insert(0, rest[-3:])
        rest = rest[:-3]
    return ("plus " if number.startswith("+") else "") + ", ".join(" ".join(group) for group in groups)


def _mentions(text: str, number: str) -> bool:
    """Whether `text` already gives `number`, in international or national form (+1 415..., 415 ..., 020 ...)."""
    digits = "".join(ch for ch in text if ch.isdigit())
    try:
        national = str(phonenumbers.parse(number, None).national_number)
    except phonenumbers.NumberParseException:
        national = number.lstrip("+")
    return national in digits
