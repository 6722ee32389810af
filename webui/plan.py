"""A campaign plan: its JSON schema and the one function that decides whether a plan may reach the database.

The assistant submits plans through a tool call; `validate_plan` checks the shape with jsonschema and then what a
schema cannot say (each number is a real E.164 number, no number twice, the window's hours are real). The
errors are phrased for the model to fix them ("targets[1].phone_number: '555' is not a valid phone number").
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from db.models import VoicemailAction
from opendeep.best_of import DECIDERS, THEN
from opendeep.campaign_goal import MAX_PARALLEL_CALLS
from opendeep.phone import InvalidPhoneNumber, normalize_e164
from opendeep.settings import parse_window

MAX_TARGETS = 200
MAX_ATTEMPTS_LIMIT = 10
MAX_VOICEMAIL_CHARS = 1000

_HHMM = r"^([01]?\d|2[0-3]):[0-5]\d$"

PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "goal", "targets", "calling_window", "max_attempts"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "short campaign title, e.g. 'Dental cleaning next week'"},
        "goal": {"type": "string", "minLength": 1, "maxLength": 4000,
                 "description": "what the user wants achieved overall"},
        "goal_type": {"type": "string", "enum": ["each_target", "until_one_succeeds", "best_of"],
                      "description": "each_target: every target is called for its own result (ask all 40 shops "
                                     "for a quote). until_one_succeeds: the targets are alternatives, called in "
                                     "the listed order until one achieves the goal; the rest are then cancelled "
                                     "(book one cleaning with one of three dentists). best_of: every target "
                                     "is asked for an offer, nothing is committed; then the best is chosen "
                                     "(state best_of)"},
        "best_of": {"type": "object", "additionalProperties": False, "required": ["criterion", "decide"],
                    "description": "best_of only: what 'best' means and who decides",
                    "properties": {
                        "criterion": {"type": "string", "minLength": 1, "maxLength": 500,
                                      "description": "what makes an offer the best, e.g. 'lowest price for a "
                                                     "2 kg bag', 'earliest appointment'"},
                        "decide": {"type": "string", "enum": list(DECIDERS),
                                   "description": "ai: the AI picks the best offer by the criterion; user: the "
                                                  "user is shown the offers and picks"},
                        "then": {"type": "string", "enum": list(THEN),
                                 "description": "book_with_chosen: call the chosen one back to accept its "
                                                "offer; report_only: only report the choice (default)"}}},
        "parallel_calls": {"type": "integer", "minimum": 1, "maximum": MAX_PARALLEL_CALLS,
                           "description": "until_one_succeeds only: targets called at once (default 1)"},
        "master_prompt": {"type": "string", "maxLength": 8000,
                          "description": "instructions for the call AI that apply to every call"},
        "calling_window": {
            "type": "object", "additionalProperties": False, "required": ["start", "end"],
            "description": "local hours (callee's time zone) in which calls may be placed",
            "properties": {"start": {"type": "string", "pattern": _HHMM},
                           "end": {"type": "string", "pattern": _HHMM}},
        },
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT,
                         "description": "calls per target before giving up"},
        "voicemail": {
            "type": "object", "additionalProperties": False, "required": ["action"],
            "description": "what happens when an answering machine answers",
            "properties": {
                "action": {"type": "string", "enum": [a.value for a in VoicemailAction],
                           "description": "hang_up: hang up and call again later; leave_message: wait for the "
                                          "beep, say the message, hang up"},
                "message": {"type": "string", "maxLength": MAX_VOICEMAIL_CHARS,
                            "description": "for leave_message: who is calling, for whom, why, and a request to "
                                           "call back (OpenDeep adds the callback number if it is missing)"},
            },
        },
        "budget_usd": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1_000_000,
                       "description": "spending limit in USD (models and trunk) if the user named one; dialing "
                                      "pauses once it is spent"},
        "targets": {
            "type": "array", "minItems": 1, "maxItems": MAX_TARGETS,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "phone_number", "objective"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "phone_number": {"type": "string", "minLength": 1, "maxLength": 40,
                                     "description": "E.164, e.g. +14155550123"},
                    "objective": {"type": "string", "minLength": 1, "maxLength": 4000,
                                  "description": "what this call must achieve"},
                    "language": {"type": "string", "minLength": 2, "maxLength": 16},
                    "context": {"type": "object", "description": "facts the call AI may need (address, hours...)"},
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT},
                    "voicemail_message": {"type": "string", "maxLength": MAX_VOICEMAIL_CHARS,
                                          "description": "this target's voicemail message (else the plan's)"},
                },
            },
        },
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(PLAN_SCHEMA)


@dataclass
class PlanCheck:
    """The outcome of `validate_plan`: a normalized plan, or the reasons it is not acceptable."""

    plan: dict[str, Any] | None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.plan is not None and not self.errors


def _path(error: jsonschema.ValidationError) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "plan"


def validate_plan(raw: Any, default_region: str | None = None) -> PlanCheck:
    """Check a plan; return it normalized (numbers in E.164, text stripped) or every error found. National
    numbers of `default_region` (the user's country) are accepted."""
    if not isinstance(raw, dict):
        return PlanCheck(None, ["plan: expected a JSON object"])
    errors = [f"{_path(e)}: {e.message}" for e in sorted(_VALIDATOR.iter_errors(raw), key=lambda e: list(
        map(str, e.absolute_path)))]
    if errors:
        return PlanCheck(None, errors)
    plan = copy.deepcopy(raw)
    window = plan["calling_window"]
    try:
        parse_window(f"{window['start']}-{window['end']}")
    except ValueError as exc:
        errors.append(f"calling_window: {exc}")
    for key in ("name", "goal"):
        plan[key] = plan[key].strip()
        if not plan[key]:
            errors.append(f"{key}: must not be blank")
    plan.setdefault("master_prompt", "")
    voicemail = plan.setdefault("voicemail", {"action": VoicemailAction.HANG_UP.value})
    voicemail["message"] = " ".join(voicemail.get("message", "").split())
    leaves_messages = voicemail["action"] == VoicemailAction.LEAVE_MESSAGE.value
    # API clients and CSV imports may leave the goal out: each target, as campaigns always behaved. The assistant
    # must state it (webui/assistant.py refuses a plan from the model without it).
    plan.setdefault("goal_type", "each_target")
    if plan["goal_type"] == "until_one_succeeds":
        plan.setdefault("parallel_calls", 1)
    else:
        plan.pop("parallel_calls", None)
    if plan["goal_type"] == "best_of":
        best = plan.get("best_of")
        if best is None:
            errors.append("best_of: a best_of goal needs best_of.criterion (what makes an offer the best) and "
                          "best_of.decide (ai or user)")
        else:
            best["criterion"] = " ".join(best["criterion"].split())
            best.setdefault("then", "report_only")
            if not best["criterion"]:
                errors.append("best_of.criterion: must not be blank")
    else:
        plan.pop("best_of", None)
    seen: dict[str, int] = {}
    for index, target in enumerate(plan["targets"]):
        target["name"] = target["name"].strip()
        target["objective"] = target["objective"].strip()
        target.setdefault("context", {})
        target.setdefault("language", "en")
        for key in ("name", "objective"):
            if not target[key]:
                errors.append(f"targets[{index}].{key}: must not be blank")
        if "voicemail_message" in target:
            target["voicemail_message"] = " ".join(target["voicemail_message"].split())
        if leaves_messages and not (target.get("voicemail_message") or voicemail["message"]):
            errors.append(f"targets[{index}]: voicemail.action is leave_message but there is no message: write "
                          f"voicemail.message (or this target's voicemail_message)")
        try:
            target["phone_number"] = normalize_e164(target["phone_number"], default_region)
        except InvalidPhoneNumber as exc:
            errors.append(f"targets[{index}].phone_number: {exc}")
            continue
        if target["phone_number"] in seen:
            errors.append(f"targets[{index}].phone_number: {target['phone_number']} is already "
                          f"targets[{seen[target['phone_number']]}]")
        seen.setdefault(target["phone_number"], index)
    return PlanCheck(None, errors) if errors else PlanCheck(plan)


def voicemail_message_for(plan: dict[str, Any], target: dict[str, Any]) -> str | None:
    """The message a validated plan leaves on this target's machine (None when the plan hangs up)."""
    voicemail = plan.get("voicemail") or {}
    if voicemail.get("action") != VoicemailAction.LEAVE_MESSAGE.value:
        return None
    return target.get("voicemail_message") or voicemail.get("message") or None


def plan_fingerprint(plan: dict[str, Any]) -> str:
    """A stable digest of a plan: the same plan confirmed twice gets the same idempotency key."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
