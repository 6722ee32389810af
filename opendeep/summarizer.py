"""The campaign summarizer: once every task of a campaign is terminal, write its summary, exactly once.

The summary is JSON in `campaigns.summary` (an LLM-written text, findings, next steps, and a table with one row
per target: outcome, attempts, result, link to the transcript) and plain text in `campaigns.summary_text`; the
web UI renders it as a page, serves it through the API, and as CSV via `summary_csv()`.

"Exactly once": the summary is stored by a conditional UPDATE (`summarized_at IS NULL`), so of two racing
summarizers only one stores it, completes the campaign and notifies the user. If the LLM keeps failing, a
rule-based summary is written after `max_llm_failures` tries: a campaign is never left unsummarized.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import jsonschema
import openai
from sqlalchemy import case, exists, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo, webhooks
from db.costs import Scope
from db.models import TERMINAL_TASK_STATUSES, Call, Campaign, CampaignGoal, CampaignStatus, Task, UsageKind
from db.typed import rows_changed
from db.types import UTCDateTime, utcnow
from opendeep import best_of
from opendeep.campaign_goal import describe_goal
from opendeep.costs import record_chat_usage
from opendeep.llm import LlmNotConfigured, LlmRequestError, chat_client, structured_completion
from opendeep.periodic import run_periodically
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger(__name__)

SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "key_findings", "next_steps"],
    "properties": {
        "summary": {"type": "string", "description": "One paragraph for the user: what the campaign achieved."},
        "key_findings": {"type": "array", "items": {"type": "string"}},
        "next_steps": {"type": "array", "items": {"type": "string"}},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(SUMMARY_SCHEMA)

SYSTEM_PROMPT = """You summarize an outbound calling campaign for the user who ran it.
You get the campaign goal, how it was measured against it, and one row per target: the final status, attempts,
what each call found out.
Write a short, factual summary (compare results where useful, e.g. prices or available times), the key
findings, and suggested next steps. Only use facts in the rows. Answer in the JSON schema given."""

CSV_COLUMNS = ("target", "phone_number", "outcome_words", "summary", "result", "calls_placed", "attempts", "status",
               "outcome", "transcript_url")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")   # e.g. +14155550123: no formula, written as it is


class SummaryError(Exception):
    """The LLM gave no usable summary."""


def transcript_link(call_id: int) -> str:
    return f"/calls/{call_id}"


OUTCOME_WORDS = {
    "success": "objective met", "partial": "partly done", "retry": "not reached yet",
    "failed": "objective not met", "voicemail": "reached voicemail",
    "voicemail_left": "left a voicemail message", "wrong_number": "wrong number",
    "do_not_call": "asked not to be called again",
}


def target_row(task: Task, calls: list[Call]) -> dict[str, Any]:
    """One target's line of the table. The link goes to the call that decided the task (the last connected one)."""
    connected = [c for c in calls if c.answered_at is not None or c.analysis]
    decisive = connected[-1] if connected else (calls[-1] if calls else None)
    result = task.result if isinstance(task.result, dict) else {}
    row = {
        "task_id": task.id, "target": task.target_name, "phone_number": task.phone_number,
        "status": task.status.value, "outcome": result.get("outcome") or task.status.value,
        "verdict": result.get("outcome"),   # the analyzer's, if a call was judged
        "attempts": task.attempt_count, "calls_placed": len(calls),
        "summary": result.get("summary") or task.status_reason or "",
        "reason": task.status_reason or "",
        "result": result.get("data") or {},
        "call_id": decisive.id if decisive else None,
        "transcript_url": transcript_link(decisive.id) if decisive else None,
    }
    row["outcome_words"] = outcome_in_words(row)
    return row


def outcome_in_words(row: dict[str, Any]) -> str:
    """A target's outcome as a person says it ("not called: the goal was met with Dentist B")."""
    status, placed, reason = row["status"], row.get("calls_placed", 0), (row.get("reason") or "").strip()
    if status == "cancelled_dnd":
        return "not called: the number is on a do-not-call list"
    if status == "cancelled":
        return f"{'stopped calling' if placed else 'not called'}: {reason or 'cancelled'}"
    if row.get("verdict") in OUTCOME_WORDS:
        return OUTCOME_WORDS[row["verdict"]]
    if status == "failed":
        return f"not reached after {placed} call(s)" if placed else f"not called: {reason or 'failed'}"
    return status.replace("_", " ")


def count_line(rows: list[dict[str, Any]]) -> str:
    """How many targets were called and how many calls were placed: a target never dialed is 'not called'."""
    called = [row for row in rows if row.get("calls_placed", 0) > 0]
    placed = sum(row.get("calls_placed", 0) for row in rows)
    text = f"{len(called)} of {len(rows)} target(s) called ({placed} call(s) placed)"
    outcomes = Counter(outcome_in_words(row).split(":")[0] for row in called)
    if outcomes:
        text += ": " + ", ".join(f"{n} {words}" for words, n in outcomes.most_common())
    not_called = len(rows) - len(called)
    if not_called:
        text += f"; {not_called} not called"
    return text


def goal_report(campaign: Campaign, rows: list[dict[str, Any]]) -> str:
    """What the campaign achieved, measured against its goal (rule-based, so the model cannot contradict it)."""
    goal = CampaignGoal(campaign.goal_type or CampaignGoal.EACH_TARGET)
    if goal is CampaignGoal.BEST_OF:
        return best_of.goal_report(campaign, rows)
    if goal is CampaignGoal.UNTIL_ONE_SUCCEEDS:
        winner = next((row for row in rows if row["task_id"] == campaign.goal_met_task_id), None)
        if winner is None:
            return f"Goal not met: none of the {len(rows)} target(s) succeeded."
        facts = ", ".join(f"{key} {value}" for key, value in (winner["result"] or {}).items())
        text = f"Goal met with {winner['target']}" + (f" ({facts})" if facts else "") + "."
        if winner["summary"]:
            text += f" {winner['summary']}"
        stopped = [row["target"] for row in rows if row is not winner and row["status"] == "cancelled"
                   and row.get("calls_placed", 0) > 0]
        skipped = [row["target"] for row in rows if row is not winner and row["status"] == "cancelled"
                   and not row.get("calls_placed", 0)]
        if stopped:
            text += f" Stopped calling {', '.join(stopped)} because the goal was met."
        if skipped:
            text += f" Did not call {', '.join(skipped)} because the goal was met."
        return text
    met = sum(1 for row in rows if row["outcome"] == "success")
    return f"Each target: {met} of {len(rows)} target(s) met the objective."


def rule_based_summary(campaign: Campaign, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A summary from counts and per-target results alone, for when the LLM cannot write one."""
    findings = [f"{row['target']}: {row['summary'] or row.get('outcome_words') or row['outcome']}" for row in rows]
    with_results = [row for row in rows if row["result"]]
    findings += [f"{row['target']} result: " + ", ".join(f"{k}={v}" for k, v in row["result"].items())
                 for row in with_results]
    retry = [row["target"] for row in rows if row["outcome"] in ("retry", "voicemail", "voicemail_left")
             or (row["status"] == "failed" and row.get("calls_placed"))]
    return {
        "summary": f"Campaign '{campaign.name}' finished: {count_line(rows)}.",
        "key_findings": findings,
        "next_steps": [f"Consider calling again: {', '.join(retry)}."] if retry else [],
    }


def summary_text(content: dict[str, Any]) -> str:
    """Plain text of a summary (campaigns.summary_text): the paragraph, then findings and next steps."""
    parts = [content["summary"].strip()]
    if content["key_findings"]:
        parts.append("Key findings:\n" + "\n".join(f"- {item}" for item in content["key_findings"]))
    if content["next_steps"]:
        parts.append("Next steps:\n" + "\n".join(f"- {item}" for item in content["next_steps"]))
    return "\n\n".join(parts)


def _csv_cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, dict | list) else (
        "" if value is None else str(value))
    # Spreadsheets run cells starting with these as formulas (CSV injection): quote them as text. A plain number
    # (a phone number in E.164) is no formula and stays as it is (the same rule as webui/csv_import.safe_cell).
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def summary_csv(campaign: Campaign) -> str:
    """The campaign's per-target table as CSV (header row first). ValueError if it has no summary yet."""
    if not campaign.summary or "targets" not in campaign.summary:
        raise ValueError(f"campaign {campaign.id} has no summary yet: it is written once every task has finished")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in campaign.summary["targets"]:
        writer.writerow([_csv_cell(row.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()


async def request_summary(client: openai.AsyncOpenAI, model: str, campaign: Campaign,
                          rows: list[dict[str, Any]], on_usage: Any = None) -> dict[str, Any]:
    """Ask the LLM for the summary in SUMMARY_SCHEMA; SummaryError on any failure. `on_usage` gets the
    response's token usage (see structured_completion)."""
    facts = {"campaign": campaign.name, "goal": campaign.goal,
             "goal_type": describe_goal(campaign.goal_type or CampaignGoal.EACH_TARGET, campaign.parallel_calls or 1,
                                          best_of.settings_of(campaign)),
             "measured_against_the_goal": goal_report(campaign, rows), "calls": count_line(rows),
             "targets": [{k: row[k] for k in ("target", "status", "outcome", "attempts", "summary", "result")}
                         for row in rows]}
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": json.dumps(facts, ensure_ascii=False, indent=1)}]
    try:
        content = await structured_completion(client, model, messages, name="campaign_summary",
                                              schema=SUMMARY_SCHEMA, on_usage=on_usage)
    except LlmRequestError as exc:
        raise SummaryError(f"the summary {exc}") from None
    try:
        data = json.loads(content or "")
    except json.JSONDecodeError:
        raise SummaryError("the model's summary is not valid JSON") from None
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(data))
    if error is not None:
        raise SummaryError(f"the model's summary does not match the schema: {error.message}")
    return data


class CampaignSummarizer:
    """Summarizes each finished campaign once; see the module docstring."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession],
                 events: EventHub | None = None, *, max_llm_failures: int = 3,
                 retry_seconds: float = 60.0) -> None:
        self.settings = settings
        self.sessions = sessions
        self.events = events
        self.max_llm_failures = max_llm_failures
        self.retry_after = timedelta(seconds=retry_seconds)
        # Per process: after a restart a campaign gets max_llm_failures fresh tries, still a bounded number.
        self._failures: Counter[int] = Counter()
        self._next_try: dict[int, datetime] = {}
        self._client: openai.AsyncOpenAI | None = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def finished_campaigns(self) -> list[tuple[int, int]]:
        """(user_id, campaign_id) of unsummarized campaigns that have tasks, all of them terminal."""
        open_task = exists().where(Task.campaign_id == Campaign.id,
                                   Task.status.not_in(list(TERMINAL_TASK_STATUSES)))
        any_task = exists().where(Task.campaign_id == Campaign.id)
        async with self.sessions() as session:
            rows = await session.execute(
                select(Campaign.user_id, Campaign.id)
                .where(Campaign.summarized_at.is_(None), any_task, ~open_task,
                       best_of.not_awaiting_choice())   # a best-of campaign waits for its choice
                .order_by(Campaign.id)
            )
            return [(user_id, campaign_id) for user_id, campaign_id in rows.all()]

    async def run_once(self) -> int:
        """Summarize every finished campaign that is due; returns how many summaries this call stored."""
        stored = 0
        now = utcnow()
        for user_id, campaign_id in await self.finished_campaigns():
            if self._next_try.get(campaign_id, now) > now:
                continue
            if await self.summarize_campaign(user_id, campaign_id):
                stored += 1
        return stored

    async def run_forever(self, interval: float) -> None:
        """Poll until cancelled; a failing pass is logged and the next one runs."""
        await run_periodically(self.run_once, interval, "campaign summarizer pass")

    async def summarize_campaign(self, user_id: int, campaign_id: int) -> bool:
        """Write one campaign's summary; True only for the summarizer whose UPDATE stored it."""
        async with self.sessions() as session:
            campaign = await repo.get_campaign(session, user_id, campaign_id)
            if campaign is None or campaign.summarized_at is not None or best_of.awaits_choice(campaign):
                return False
            tasks = list(await repo.list_tasks(session, user_id, campaign_id))
            if not tasks or any(not t.status.is_terminal for t in tasks):
                return False
            rows = [target_row(task, list(await repo.list_calls(session, user_id, task.id))) for task in tasks]
        written = await self._write(campaign, rows)
        if written is None:
            return False  # the LLM failed; tried again after retry_seconds
        content, generated_by = written
        now = utcnow()
        report = goal_report(campaign, rows)
        summary = {**content, "targets": rows, "counts": dict(Counter(row["outcome"] for row in rows)),
                   "calls": count_line(rows),
                   "goal": {"type": (campaign.goal_type or CampaignGoal.EACH_TARGET).value, "report": report,
                            "in_words": describe_goal(campaign.goal_type or CampaignGoal.EACH_TARGET,
                                                      campaign.parallel_calls or 1, best_of.settings_of(campaign)),
                            "choice": campaign.best_choice,
                            "met_by_task_id": campaign.goal_met_task_id},
                   "generated_by": generated_by, "generated_at": now.isoformat()}
        # The goal's report comes first: it is what the user asked for.
        text = report + "\n\n" + summary_text(content)
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.user_id == user_id, Campaign.summarized_at.is_(None))
                .values(summary=summary, summary_text=text, summarized_at=now,
                        # A cancelled campaign stays cancelled; an active or paused one is now complete.
                        status=case((Campaign.status == CampaignStatus.CANCELLED, Campaign.status),
                                    else_=CampaignStatus.COMPLETED),
                        finished_at=func.coalesce(Campaign.finished_at, literal(now, UTCDateTime())))
            )
            if rows_changed(result) != 1:
                return False  # another summarizer stored it first
            await webhooks.campaign_finished(session, user_id, campaign_id)   # the outbox, in this transaction
            note = await repo.add_notification(
                session, user_id, "campaign.summarized",
                f"Campaign '{campaign.name}' is finished: {report[:300]}",
                {"campaign_id": campaign_id})
        self._failures.pop(campaign_id, None)
        self._next_try.pop(campaign_id, None)
        log.info("campaign %s summarized (%s)", campaign_id, generated_by)
        if self.events is not None:
            self.events.publish(user_id, "campaign.summarized", {"campaign_id": campaign_id})
            self.events.publish(user_id, "notification", {"id": note.id, "kind": note.kind, "message": note.message})
        return True

    async def _write(self, campaign: Campaign, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
        """The LLM's summary, or the rule-based one once the LLM has failed max_llm_failures times (None: the
        LLM failed and the campaign waits for its next try)."""
        usage: list[Any] = []
        model = self.settings.openai_analyzer_model
        try:
            if self._client is None:
                self._client = chat_client(self.settings)
            return await request_summary(self._client, model, campaign, rows, usage.append), "llm"
        except (SummaryError, LlmNotConfigured) as exc:
            self._failures[campaign.id] += 1
            failures = self._failures[campaign.id]
            if isinstance(exc, LlmNotConfigured) or failures >= self.max_llm_failures:
                log.warning("campaign %s: LLM summary failed %d time(s) (%s); writing a rule-based summary",
                            campaign.id, failures, exc)
                return rule_based_summary(campaign, rows), "rules"
            self._next_try[campaign.id] = utcnow() + self.retry_after
            log.warning("campaign %s: LLM summary failed (%d of %d): %s; retrying in %s", campaign.id, failures,
                        self.max_llm_failures, exc, self.retry_after)
            return None
        finally:   # what the model used is recorded whether its answer is usable or not
            await record_chat_usage(self.sessions, self.settings, Scope(campaign.user_id, campaign.id),
                                    UsageKind.SUMMARIZER, model, usage)
