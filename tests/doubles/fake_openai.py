"""A fake OpenAI-compatible HTTP server for tests: the real `openai` SDK talks to it over HTTP via base_url.

    fake = FakeOpenAI()
    base_url = await fake.start()            # http://127.0.0.1:PORT/v1
    fake.queue_reply(tool_calls=[{"name": "lookup", "arguments": {"q": "dentist"}}])
    fake.queue_reply(content="Done.")
    ...                                      # fake.requests holds every request body, in order
    await fake.stop()

Replies are served FIFO; `responder(body) -> dict | None` (the same keys as queue_reply) answers first when
set. With nothing queued the server answers 500, so a test never hangs on a missing reply.

The same base_url also serves the Realtime API: the SDK opens `ws://127.0.0.1:PORT/v1/realtime?model=...`, and
`fake.realtime` (a FakeRealtime, never started on its own port) scripts it -- greeting / responses / script,
`wait_for_connection()`, each session's `received` client events.

`ScriptedModels(...).install(fake)` plays every model of a whole campaign (the e2e test, `make demo`, the e2e
benchmark): the assistant proposes a plan for any chat, the call AI greets, asks the user a question through
request_user_feedback, thanks the callee with the answer and ends the call with end_call(objective_met), the
analyzer gives a success verdict and the summarizer a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.doubles.fake_realtime import FakeRealtime, FakeRealtimeConnection, FakeResponse, text_tokens
from tests.doubles.local_http import LocalHttpServer


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.usage_sent: list[tuple[str, dict[str, Any]]] = []   # (model, usage) of every completion answered
        self.responder: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
        self._replies: deque[dict[str, Any]] = deque()
        self._ids = itertools.count(1)
        self._http: LocalHttpServer | None = None
        self.base_url = ""
        self.realtime = FakeRealtime()   # the Realtime API's sessions and script, served at /v1/realtime

    def queue_reply(self, content: str | None = None, tool_calls: list[dict[str, Any]] | None = None,
                    delay: float = 0.0, status: int = 200) -> None:
        self._replies.append({"content": content, "tool_calls": tool_calls, "delay": delay, "status": status})

    @property
    def pending_replies(self) -> int:
        return len(self._replies)

    async def _chat_completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        spec = self.responder(body) if self.responder else None
        if spec is None:
            if not self._replies:
                return JSONResponse({"error": {"message": "fake OpenAI: no reply queued", "type": "server_error"}},
                                    status_code=500)
            spec = self._replies.popleft()
        if spec.get("delay"):
            await asyncio.sleep(spec["delay"])
        status = spec.get("status", 200)
        if status != 200:
            return JSONResponse({"error": {"message": f"fake OpenAI error {status}", "type": "server_error",
                                           "code": None}}, status_code=status)
        message: dict[str, Any] = {"role": "assistant", "content": spec.get("content")}
        finish = "stop"
        if spec.get("tool_calls"):
            finish = "tool_calls"
            message["tool_calls"] = [
                {"id": f"call_{next(self._ids)}", "type": "function",
                 "function": {"name": call["name"],
                              "arguments": call["arguments"] if isinstance(call["arguments"], str)
                              else json.dumps(call["arguments"])}}
                for call in spec["tool_calls"]
            ]
        return JSONResponse({
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": self._usage(body, message),
        })

    def _usage(self, body: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        """The usage block as the real API reports it: prompt tokens counted over the messages and tools sent
        (a prompt over 1,024 tokens has its earlier part cached, as OpenAI's prompt caching does), completion
        tokens over the answer."""
        sent = [body.get(key) for key in ("messages", "tools", "response_format") if body.get(key)]
        prompt = sum(text_tokens(json.dumps(part)) for part in sent)
        completion = text_tokens(message.get("content") or "") + (
            text_tokens(json.dumps(message["tool_calls"])) if message.get("tool_calls") else 0)
        cached = (prompt - 1024) // 128 * 128 if prompt > 1024 and len(self.requests) > 1 else 0
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        self.usage_sent.append((body.get("model", ""), usage))
        return usage

    async def _realtime_session(self, websocket: WebSocket) -> None:
        if self.realtime.refuse_connections:
            await websocket.close(code=1013)   # before accept: the SDK sees the handshake refused
            return
        await websocket.accept()
        path = websocket.url.path + (f"?{websocket.url.query}" if websocket.url.query else "")
        await self.realtime.serve_session(_StarletteSocket(websocket), path)
        with contextlib.suppress(Exception):
            await websocket.close()

    async def start(self) -> str:
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                                WebSocketRoute("/v1/realtime", self._realtime_session)])
        self._http = LocalHttpServer(app)
        port = await self._http.start()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None


class _StarletteSocket:
    """A Starlette WebSocket with the face FakeRealtime's sessions expect (send / async for / transport)."""

    transport = None   # uvicorn does not expose it: drop() of such a session does nothing

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def send(self, text: str) -> None:
        await self._websocket.send_text(text)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while True:
            message = await self._websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            yield data if data is not None else message.get("bytes") or b""


# ---------------------------------------------------------------- the scripted models of a whole campaign

DEMO_TARGETS = (("Bright Smile Dental", "+14155550101"), ("Golden Gate Dentistry", "+14155550102"))
# The call AI's audio is streamed at about the pace it is spoken (800 mu-law bytes = 100 ms per delta), so its
# function calls come once it has finished saying what precedes them, as from the real model.
REALTIME_CHUNK_SECONDS = 0.1
DEMO_QUESTION = "They can do Tuesday at 10:00 or Thursday at 15:30. Which one should I book?"
DEMO_CALLEE_OFFER = "Let me look... We have Tuesday at 10:00 or Thursday at 15:30."


def always_open_window(number: str, now: datetime | None = None) -> dict[str, str]:
    """A calling window that is open now in the callee's zone: 00:00-23:59, shifted when it is 23:59 there."""
    from opendeep.phone import callee_timezone

    local = (now or datetime.now(UTC)).astimezone(callee_timezone(number))
    if local.hour < 23 or local.minute < 59:
        return {"start": "00:00", "end": "23:59"}   # what a person would write for "any time"
    shifted = local - timedelta(hours=2)         # the one minute 00:00-23:59 leaves closed
    return {"start": f"{shifted:%H:%M}", "end": f"{shifted - timedelta(minutes=1):%H:%M}"}


def generated_speech(seconds: float, seed: int = 7) -> bytes:
    """Speech-like audio as the realtime model sends it: G.711 mu-law at 8 kHz (generated, nothing downloaded)."""
    from tests.doubles.audiosocket_client import mulaw, speech_like

    return mulaw(speech_like(seconds, seed=seed))


# Best of several (opendeep/best_of.py): each dentist offers its earliest slot; the user picks; the chosen one is
# called back to book it.
OFFER_OBJECTIVE = "Ask for their earliest cleaning slot next week; do not book yet."
OFFER_SLOTS = ("Thursday at 15:30", "Tuesday at 10:00")   # by target, in plan order
BEST_OF_PLAN = {"criterion": "earliest appointment", "decide": "user", "then": "book_with_chosen"}
GOAL_QUESTION = ("Do you want one appointment in total (I call them one at a time and stop as soon as one books "
                 "you), or an appointment with each of them?")
WRAPPED_UP = "Thank you so much, but we no longer need the appointment: it was booked elsewhere. Sorry, goodbye!"


def goal_from_words(said: str, targets: int) -> str | None:
    """The goal a user's words ask for, as the assistant's prompt reads them; None: ambiguous, ask."""
    if targets <= 1:
        return "each_target"
    text = f" {said.replace(GOAL_QUESTION, ' ').lower()} "   # the page's answer form repeats the question
    if any(w in text for w in (" let me pick", " i'll pick", " compare ", " cheapest ", " earliest ")):
        return "best_of"
    if any(w in text for w in (" one of ", "just one", "only one", "one appointment", " one in total", "the first ")):
        return "until_one_succeeds"
    if any(w in text for w in (" each ", " every ", " all ", " both ")):
        return "each_target"
    return None


class ScriptedModels:
    """Every model a campaign needs, scripted: install() on a FakeOpenAI (chat responder and realtime script).

    targets: (name, E.164 number) pairs the assistant plans for any chat message.
    ask_user: the call AI asks `question` through request_user_feedback before it ends the call.
    speech_seconds: the length of each thing the call AI says (generated audio, streamed at once).
    """

    def __init__(self, targets: tuple[tuple[str, str], ...] = DEMO_TARGETS, *, ask_user: bool = True,
                 question: str = DEMO_QUESTION, speech_seconds: float = 1.0, max_attempts: int = 1,
                 goal: str | None = "each_target") -> None:
        self.targets = targets
        # The plan's goal_type; None: read it from what the user said, and ask when it is ambiguous (as the
        # assistant's prompt tells the real model to): "book me a cleaning" with two dentists -> one or each?
        self.goal = goal
        self.ask_user = ask_user
        self.question = question
        self.max_attempts = max_attempts
        self.speech = generated_speech(speech_seconds)
        self.answers_heard: list[str] = []   # the user's answers as the call AI received them

    def install(self, fake: FakeOpenAI) -> FakeOpenAI:
        fake.responder = self.chat
        fake.realtime.script = self.realtime
        return fake

    # -------------------------------------------------------------- chat completions

    def chat(self, body: dict[str, Any]) -> dict[str, Any] | None:
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if schema == "call_analysis":
            return {"content": json.dumps(self.analysis(body))}
        if schema == "campaign_summary":
            return {"content": json.dumps(self.summary(body))}
        if schema == "best_offer_decision":   # the first offer (decide=ai plans; the demo's plan lets the user pick)
            offer = json.loads(body["messages"][-1]["content"])["offers"][0]
            return {"content": json.dumps({"chosen_task_id": offer["task_id"], "reason": "It came first.",
                                           "compared": []})}
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        if last.get("role") == "user":
            said = " ".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")
            goal = self.goal or goal_from_words(said, len(self.targets))
            if goal is None:
                return {"content": "Before I plan the calls: " + GOAL_QUESTION,
                        "tool_calls": [{"name": "ask_follow_up_questions",
                                        "arguments": {"questions": [GOAL_QUESTION]}}]}
            words = {"until_one_succeeds": "I will call them one at a time, in this order, and stop as soon as one "
                                           "books you.",
                     "best_of": "I will ask each of them for their earliest slot without booking; then you pick "
                                "one and I call it back to book."}.get(goal, "I will call each of them.")
            first = next((str(m.get("content") or "") for m in messages if m.get("role") == "user"), "")
            return {"content": f"Here is a plan for the calls. {words} Check it, then confirm.",
                    "tool_calls": [{"name": "submit_campaign_plan", "arguments": self.plan(first, goal)}]}
        return {"content": "The plan is ready: confirm it to start the calls."}

    def plan(self, request: str | None, goal_type: str = "each_target") -> dict[str, Any]:
        goal = (request or "").strip() or "Book a dental cleaning next week."
        if goal_type == "best_of":
            return {"name": "Earliest dental cleaning", "goal": goal[:4000], "goal_type": "best_of",
                    "best_of": dict(BEST_OF_PLAN), "master_prompt": "Be brief and polite.",
                    "calling_window": always_open_window(self.targets[0][1]), "max_attempts": self.max_attempts,
                    "targets": [{"name": name, "phone_number": number, "objective": OFFER_OBJECTIVE}
                                for name, number in self.targets]}
        return {
            "name": "Dental cleaning next week",
            "goal": goal[:4000],
            "goal_type": goal_type,
            "master_prompt": "Be brief and polite. You call on behalf of the user.",
            "calling_window": always_open_window(self.targets[0][1]),
            "max_attempts": self.max_attempts,
            "targets": [{"name": name, "phone_number": number,
                         "objective": "Book a cleaning next week; ask the user which slot to take."}
                        for name, number in self.targets],
        }

    def analysis(self, body: dict[str, Any]) -> dict[str, Any]:
        facts = json.dumps(body.get("messages") or [])
        if OFFER_OBJECTIVE in facts or "Accept the offer" in facts:   # best of several: an offer, or its booking
            index = next((i for i, (name, _) in enumerate(self.targets) if name in facts), 0)
            slot = OFFER_SLOTS[index % len(OFFER_SLOTS)]
            booking = "Accept the offer" in facts
            return {"outcome": "success", "should_retry": False, "retry_at": None, "callback_requested": False,
                    "add_to_dnd": False, "notes_for_next_call": "",
                    "summary": f"Booked the cleaning for {slot}." if booking else f"Earliest slot: {slot}.",
                    "extracted": [{"name": "appointment" if booking else "earliest", "value": slot}],
                    "reason": "The booking was confirmed." if booking else "The practice gave its earliest slot."}
        if WRAPPED_UP in facts:   # the call AI withdrew the request: the goal was met on another call
            return {"outcome": "failed", "summary": "The request was withdrawn: the goal was met on another call.",
                    "extracted": [], "should_retry": False, "retry_at": None, "callback_requested": False,
                    "add_to_dnd": False, "reason": "Not needed any more.", "notes_for_next_call": ""}
        booked = "Tuesday at 10:00" if "Tuesday" in facts else "a slot next week"
        return {"outcome": "success", "summary": f"The receptionist booked a cleaning for {booked}.",
                "extracted": [{"name": "appointment", "value": booked}], "should_retry": False,
                "retry_at": None, "callback_requested": False, "add_to_dnd": False,
                "reason": "The callee confirmed the booking.", "notes_for_next_call": ""}

    @staticmethod
    def summary(body: dict[str, Any]) -> dict[str, Any]:
        try:   # the summarizer sends its facts as JSON, the rule-based report against the goal included
            facts = json.loads((body.get("messages") or [{}])[-1].get("content") or "{}")
        except ValueError:
            facts = {}
        if "best of several" in str(facts.get("goal_type", "")).lower():
            return {"summary": "Both practices gave their earliest slot; the one chosen was booked.",
                    "key_findings": [], "next_steps": ["Add the appointment to your calendar."]}
        if "until one succeeds" in str(facts.get("goal_type", "")).lower():
            return {"summary": "One cleaning was booked, as asked; the other practices were not needed.",
                    "key_findings": ["Appointments are available next week."],
                    "next_steps": ["Add the appointment to your calendar."]}
        return {"summary": "Every practice was reached and a cleaning was booked.",
                "key_findings": ["Appointments are available next week."],
                "next_steps": ["Add the appointment to your calendar."]}

    # -------------------------------------------------------------- the realtime call AI

    def realtime(self, conn: FakeRealtimeConnection, index: int) -> FakeResponse | None:
        greeting = "Hello, this is an AI assistant calling to book a dental cleaning for next week."
        asked = (conn.events("response.create") or [{}])[-1].get("response") or {}
        if "goal was just met on another call" in str(asked.get("instructions") or ""):
            # audiosocket/wrap_up.py: thank the callee, withdraw the request, end the call.
            return FakeResponse(audio=self.speech, transcript=WRAPPED_UP, chunk_interval=REALTIME_CHUNK_SECONDS,
                                function_call=("end_call", {"outcome": "objective_not_met",
                                                            "summary": "Withdrawn: booked elsewhere."}))
        instructions = str(conn.session_config().get("instructions") or "")
        if index == 0 and ("This call collects an offer" in instructions or "Objective of this call: Accept the offer"
                           in instructions):   # best of several: ask for the slot, or book the chosen one
            return FakeResponse(audio=self.speech, transcript=greeting, chunk_interval=REALTIME_CHUNK_SECONDS,
                                callee_reply=DEMO_CALLEE_OFFER,
                                function_call=("end_call", {"outcome": "objective_met", "summary": "Done."}))
        if index == 0 and not self.ask_user:
            return FakeResponse(audio=self.speech, transcript=greeting, chunk_interval=REALTIME_CHUNK_SECONDS,
                                function_call=("end_call", {"outcome": "objective_met",
                                                            "summary": "A cleaning was booked."}))
        if index == 0:
            return FakeResponse(audio=self.speech, transcript=greeting, chunk_interval=REALTIME_CHUNK_SECONDS,
                                callee_reply=DEMO_CALLEE_OFFER,
                                function_call=("request_user_feedback", {"question": self.question}))
        if index == 1:
            answer = _last_function_output(conn)
            self.answers_heard.append(answer)
            return FakeResponse(audio=self.speech, transcript=f"Thank you. {answer.rstrip('.!')}. Goodbye!",
                                chunk_interval=REALTIME_CHUNK_SECONDS, callee_reply="You're welcome, bye!",
                                function_call=("end_call", {"outcome": "objective_met",
                                                            "summary": f"Booked: {answer}"}))
        return None


def _last_function_output(conn: FakeRealtimeConnection) -> str:
    for event in reversed(conn.events("conversation.item.create")):
        item = event.get("item") or {}
        if item.get("type") == "function_call_output":
            try:
                output = json.loads(item.get("output") or "{}")
            except ValueError:
                return str(item.get("output"))
            return str(output.get("answer") or output.get("message") or output)
    return ""
