"""The chat assistant that turns "call these three dentists and book me a cleaning" into a campaign plan.

One user message starts one turn: the model (chat completions with tool calling, via `opendeep.llm`) may look
businesses up, search the internet, ask follow-up questions (shown as a form) or submit a plan. The turn is
bounded (MAX_ROUNDS model calls, MAX_PLAN_SUBMISSIONS plan attempts). Tool failures and invalid plans go back
to the model as tool results to act on; only a valid plan is stored (on the chat session), and only the
orchestrator, on the user's confirmation, writes campaigns and tasks.

The whole conversation, tool calls included, is kept in chat_messages, so a turn can resume it exactly. Rows
with role SYSTEM are notices for the user (e.g. "the LLM did not answer") and are never sent to the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.costs import Scope
from db.models import ChatMessage, ChatRole, UsageKind
from db.types import utcnow
from opendeep.costs import record_chat_usage
from opendeep.llm import LlmNotConfigured, chat_client
from opendeep.settings import Settings
from webui.lookup_tools import PlacesLookup, SearchProvider, ToolError, default_search_provider
from webui.plan import PLAN_SCHEMA, validate_plan

log = logging.getLogger(__name__)

MAX_ROUNDS = 8              # model calls per user message
MAX_PLAN_SUBMISSIONS = 3    # invalid plans the model may fix within one turn
MAX_HISTORY = 80            # messages of the conversation sent back to the model
MAX_TOOL_RESULT_CHARS = 8000
MAX_MESSAGE_CHARS = 8000


class ToolName:
    ASK = "ask_follow_up_questions"
    BUSINESS = "get_authoritative_business_info"
    SEARCH = "search_internet"
    PLAN = "submit_campaign_plan"


def _function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


ASK_TOOL = _function(ToolName.ASK, "Ask the user for missing details; they answer in a form. Use it instead of "
                     "guessing phone numbers, dates or preferences.",
                     {"type": "object", "required": ["questions"], "properties": {
                         "questions": {"type": "array", "minItems": 1, "maxItems": 8,
                                       "items": {"type": "string", "minLength": 1}}}})
BUSINESS_TOOL = _function(ToolName.BUSINESS, "Authoritative facts about a business from Google Places: name, phone "
                          "number, address, opening hours, time zone. Prefer it over search for phone numbers.",
                          {"type": "object", "required": ["query"], "properties": {
                              "query": {"type": "string", "description": "business name and kind"},
                              "location": {"type": "string", "description": "city or area"}}})
SEARCH_TOOL = _function(ToolName.SEARCH, "Search the internet for anything else (which businesses exist, prices, "
                        "policies).", {"type": "object", "required": ["query"],
                                       "properties": {"query": {"type": "string"}}})
PLAN_TOOL = _function(ToolName.PLAN, "Submit the campaign plan once you know every target's name, E.164 phone "
                      "number and objective. The user then confirms it. Invalid plans come back with errors to fix.",
                      PLAN_SCHEMA)

SYSTEM_PROMPT = """You are OpenDeep's assistant. The user wants phone calls made on their behalf by an AI caller.
Turn their request into a campaign plan: a name, the overall goal, the targets (business or person, phone number in
E.164 form such as +14155550123, and what each call must achieve), the local calling window (HH:MM-HH:MM in the
callee's time zone; default {window}) and how many attempts per target (default 3).
- Look phone numbers up with {business} when you can; never invent a number.
- If something essential is missing, call {ask} with short, concrete questions.
- When the plan is complete, call {plan}. If it comes back with errors, fix them and submit again.
- Put facts the caller needs (the user's name, dates, constraints) in the goal, objectives or target context.
- Answering machines: set voicemail.action to leave_message when a message helps (a business that calls back),
  else hang_up. A message is two or three short spoken sentences: who calls, on whose behalf, why, and a request
  to call back; OpenDeep adds the callback number{callback}.
- If the user names a spending limit for the calls, put it in budget_usd (USD).
- State the plan's goal_type and say it in your reply, so the user confirms it: each_target when every target is
  called for its own result ("ask all 40 shops for a quote"); until_one_succeeds when the targets are alternatives
  and one success is enough ("book a cleaning with one of three dentists"), listed in the order to try them. If the
  request does not make this clear (e.g. "call these two dentists and book me a cleaning": one appointment in
  total, or one with each?), ask with {ask} before submitting the plan.
  best_of when the user wants offers compared before choosing one ("find me the cheapest of these three shops"):
  every call only collects an offer. Then state best_of.criterion (what "best" means, e.g. "lowest price for a
  2 kg bag", "earliest appointment"), best_of.decide ("ai": you pick by the criterion; "user": the user is shown
  the offers and picks) and best_of.then ("book_with_chosen": call the chosen one back to accept; "report_only").
  If the criterion, who decides, or whether to book is unclear, ask with {ask}.
Today is {today} (UTC). The user's name: {user_name}."""


@dataclass
class AssistantTurn:
    """What one user message produced, for the page or the API."""

    reply: str = ""
    questions: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    plan_errors: list[str] = field(default_factory=list)
    error: str | None = None
    region: str | None = None   # the user's country: national numbers in a plan are read as its numbers


def _describe_llm_error(exc: openai.APIError, settings: Settings) -> str:
    where = settings.openai_base_url or "api.openai.com"
    if isinstance(exc, openai.APITimeoutError):
        return f"the LLM at {where} did not answer within {settings.llm_timeout_seconds:g} s; send it again"
    if isinstance(exc, openai.AuthenticationError):
        return f"the LLM at {where} refused the key (check OPENAI_API_KEY)"
    if isinstance(exc, openai.APIConnectionError):
        return f"the LLM at {where} is unreachable (check OPENAI_BASE_URL)"
    if isinstance(exc, openai.APIStatusError):
        return f"the LLM at {where} answered HTTP {exc.status_code}; send it again in a moment"
    return f"the LLM at {where} failed ({type(exc).__name__})"


def history_for_model(rows: list[ChatMessage]) -> list[dict[str, Any]]:
    """Stored chat rows -> OpenAI chat messages (notices left out, history capped at a user message)."""
    messages: list[dict[str, Any]] = []
    for row in rows:
        if row.role is ChatRole.USER:
            messages.append({"role": "user", "content": row.content})
        elif row.role is ChatRole.ASSISTANT:
            message: dict[str, Any] = {"role": "assistant", "content": row.content or None}
            if row.tool_calls:
                message["tool_calls"] = [{"id": call["id"], "type": "function",
                                          "function": {"name": call["name"], "arguments": call["arguments"]}}
                                         for call in row.tool_calls]
            messages.append(message)
        elif row.role is ChatRole.TOOL:
            messages.append({"role": "tool", "tool_call_id": row.tool_call_id, "content": row.content})
    if len(messages) > MAX_HISTORY:
        messages = messages[-MAX_HISTORY:]
        while messages and messages[0]["role"] != "user":   # never start on an orphaned tool result
            messages.pop(0)
    return messages


class UIAssistantService:
    """Runs chat turns for the web UI. Tools are injectable (tests point them at fakes over HTTP)."""

    def __init__(self, settings: Settings, *, places: PlacesLookup | None = None,
                 search: SearchProvider | None = None) -> None:
        self.settings = settings
        self.places = places or PlacesLookup(settings)
        self.search = search if search is not None else default_search_provider(settings)

    def tools(self) -> list[dict[str, Any]]:
        """The tools offered to the model: lookups only when they are configured."""
        tools = [ASK_TOOL]
        if self.settings.google_api_key:
            tools.append(BUSINESS_TOOL)
        if self.search is not None:
            tools.append(SEARCH_TOOL)
        tools.append(PLAN_TOOL)
        return tools

    async def respond(self, sessions: async_sessionmaker[AsyncSession], user_id: int, chat_id: int,
                      text: str) -> AssistantTurn:
        """Run one turn for the user's message. Raises LlmNotConfigured (naming the setting) or LookupError."""
        text = text.strip()[:MAX_MESSAGE_CHARS]
        if not text:
            raise ValueError("the message is empty")
        async with sessions() as session:
            chat = await repo.get_chat_session(session, user_id, chat_id)
            if chat is None:
                raise LookupError(f"chat {chat_id} not found")
            client = chat_client(self.settings)   # LlmNotConfigured before anything is stored
            user = await repo.get_user(session, user_id)
            if user is None:
                raise LookupError(f"user {user_id} not found")
            await repo.add_chat_message(session, user_id, chat_id, ChatRole.USER, text)
            if chat.title == "New task":
                chat.title = text.splitlines()[0][:80]
            await session.commit()
            rows = list(await repo.list_chat_messages(session, user_id, chat_id))
        system = SYSTEM_PROMPT.format(window=self.settings.default_calling_window, business=ToolName.BUSINESS,
                                      ask=ToolName.ASK, plan=ToolName.PLAN, today=utcnow().date().isoformat(),
                                      user_name=(user.profile or {}).get("name") or user.username,
                                      callback=(f" ({self.settings.callback_number_e164})"
                                                if self.settings.callback_number_e164 else ""))
        messages = [{"role": "system", "content": system}, *history_for_model(rows)]
        turn = AssistantTurn(region=user.default_region or self.settings.default_region or None)
        new_rows: list[dict[str, Any]] = []
        usage: list[Any] = []
        try:
            await self._loop(client, messages, new_rows, turn, usage)
        except openai.APIError as exc:
            turn.error = _describe_llm_error(exc, self.settings)
            log.warning("assistant turn for chat %s failed: %s", chat_id, turn.error)
            new_rows.append({"role": ChatRole.SYSTEM, "content": f"The assistant could not answer: {turn.error}"})
        finally:
            await client.close()
            await record_chat_usage(sessions, self.settings, Scope(user_id, chat.campaign_id, chat_id=chat_id),
                                    UsageKind.ASSISTANT, self.settings.openai_chat_model, usage)
        async with sessions() as session:
            for row in new_rows:
                await repo.add_chat_message(session, user_id, chat_id, row["role"], row.get("content") or "",
                                            tool_calls=row.get("tool_calls"), tool_call_id=row.get("tool_call_id"))
            if turn.plan is not None:
                chat = await repo.get_chat_session(session, user_id, chat_id)
                if chat is not None:   # deleted while the model was answering: nothing to attach the plan to
                    chat.plan = turn.plan
            await session.commit()
        return turn

    async def _loop(self, client: openai.AsyncOpenAI, messages: list[dict[str, Any]],
                    new_rows: list[dict[str, Any]], turn: AssistantTurn, usage: list[Any]) -> None:
        submissions = 0
        for _ in range(MAX_ROUNDS):
            # Our messages and tools are plain dicts in the API's wire shape (stored rows, schema constants); the
            # SDK types them as TypedDicts, which dicts built at run time cannot be checked against.
            completion = await client.chat.completions.create(
                model=self.settings.openai_chat_model, messages=cast(list[ChatCompletionMessageParam], messages),
                tools=cast(list[ChatCompletionToolParam], self.tools()))
            usage.append(completion.usage)   # each model call's tokens, for the user's costs
            message = completion.choices[0].message
            calls = [{"id": call.id, "name": call.function.name, "arguments": call.function.arguments or "{}"}
                     for call in (message.tool_calls or []) if call.type == "function"]
            assistant = {"role": ChatRole.ASSISTANT, "content": message.content or "", "tool_calls": calls or None}
            results = []
            for call in calls:
                if call["name"] == ToolName.PLAN:
                    submissions += 1
                results.append({"role": ChatRole.TOOL, "tool_call_id": call["id"],
                                "content": await self._run_tool(call, turn)})
            new_rows.extend([assistant, *results])
            messages.append({"role": "assistant", "content": message.content or None, **(
                {"tool_calls": [{"id": c["id"], "type": "function",
                                 "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]}
                if calls else {})})
            messages.extend({"role": "tool", "tool_call_id": r["tool_call_id"], "content": r["content"]}
                            for r in results)
            if not calls:
                turn.reply = message.content or ""
                return
            if turn.plan is not None:
                turn.reply = message.content or "Here is the plan. Check it, then confirm to schedule the calls."
                return
            if turn.questions:
                turn.reply = message.content or "I need a few details before I can plan the calls:"
                return
            if submissions >= MAX_PLAN_SUBMISSIONS and turn.plan_errors:
                turn.reply = ("I could not produce a valid plan. Problems: " + "; ".join(turn.plan_errors)
                              + ". Please give me the missing or corrected details.")
                new_rows.append({"role": ChatRole.ASSISTANT, "content": turn.reply})
                return
        turn.reply = ("I could not finish planning within one reply. Tell me what to focus on, or give me the "
                      "numbers directly.")
        new_rows.append({"role": ChatRole.ASSISTANT, "content": turn.reply})

    async def _run_tool(self, call: dict[str, Any], turn: AssistantTurn) -> str:
        """Run one tool call; the result (or the error) is a JSON string for the model."""
        try:
            arguments = json.loads(call["arguments"] or "{}")
            if not isinstance(arguments, dict):
                raise ToolError("arguments must be a JSON object")
        except (ValueError, ToolError) as exc:
            return json.dumps({"error": f"could not read the arguments as a JSON object: {exc}"})
        name = call["name"]
        try:
            if name == ToolName.PLAN:
                check = validate_plan(arguments, turn.region)
                errors = list(check.errors)
                if "goal_type" not in arguments:   # the user confirms the goal: the model must state it
                    errors.append("goal_type: state each_target, until_one_succeeds or best_of (ask the user with "
                                  f"{ToolName.ASK} if the request does not say which)")
                if errors:
                    turn.plan_errors = errors
                    return json.dumps({"accepted": False, "errors": errors,
                                       "instruction": "fix these and call submit_campaign_plan again"})
                turn.plan, turn.plan_errors = check.plan, []
                return json.dumps({"accepted": True, "note": "the user now sees the plan and a confirm button"})
            if name == ToolName.ASK:
                questions = [str(q).strip() for q in arguments.get("questions") or [] if str(q).strip()]
                if not questions:
                    raise ToolError("questions must be a non-empty list of strings")
                turn.questions = questions[:8]
                return json.dumps({"shown_to_user": True, "note": "the answers arrive as the next user message"})
            if name == ToolName.BUSINESS:
                result = await self.places.lookup(str(arguments.get("query", "")), str(arguments.get("location", "")))
            elif name == ToolName.SEARCH:
                if self.search is None:
                    raise ToolError("internet search is not configured (GOOGLE_API_KEY is empty)")
                result = await self.search.search(str(arguments.get("query", "")))
            else:
                raise ToolError(f"there is no tool named {name!r}")
        except ToolError as exc:
            return json.dumps({"error": str(exc)})
        except Exception as exc:  # a bug in a tool must not end the turn; the model can work around it
            log.exception("tool %s failed", name)
            return json.dumps({"error": f"{name} failed unexpectedly ({type(exc).__name__}); try another way"})
        return bounded_json(result, MAX_TOOL_RESULT_CHARS)


def bounded_json(result: Any, limit: int) -> str:
    """`result` as JSON of at most `limit` characters, and always valid JSON: when it is too long, the data is cut
    (the last items of the longest list, else the end of the longest text), never the JSON text, and a dict
    result says `"truncated": true` so the model knows it saw part of it."""
    text = json.dumps(result)
    if len(text) <= limit:
        return text
    data = {**result, "truncated": True} if isinstance(result, dict) else result
    data = json.loads(json.dumps(data))   # a copy to cut, in JSON's own types
    while len(text := json.dumps(data)) > limit:
        largest = _largest_cuttable(data)
        if largest is None:
            return json.dumps({"error": "the result was too large to send", "truncated": True})
        parent, key = largest
        value = parent[key]
        if isinstance(value, list):
            value.pop()
        else:   # a text: each character cut shortens the JSON by at least one
            parent[key] = value[: max(len(value) - (len(text) - limit), 0)]
    return text


def _largest_cuttable(node: Any) -> tuple[Any, Any] | None:
    """(container, key) of the non-empty list or the text longer than 40 characters whose JSON is largest."""
    best: tuple[int, Any, Any] | None = None
    stack = [node]
    while stack:
        container = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in items:
            if isinstance(value, dict | list):
                stack.append(value)
            if (isinstance(value, list) and value) or (isinstance(value, str) and len(value) > 40):
                size = len(json.dumps(value))
                if best is None or size > best[0]:
                    best = (size, container, key)
    return None if best is None else (best[1], best[2])


__all__ = ["AssistantTurn", "LlmNotConfigured", "UIAssistantService", "history_for_model"]
