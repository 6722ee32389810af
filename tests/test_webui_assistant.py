"""The chat assistant through the real `openai` SDK against a fake OpenAI server, and its lookup tools against a
fake Google server: tool calls, tool errors handed to the model, plans fixed by the model, bounded loops."""

from __future__ import annotations

import json
import re

import pytest_asyncio
from sqlalchemy import func, select

from db.models import Campaign
from tests.doubles.fake_google import FakeGoogle
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.assistant import MAX_ROUNDS, MAX_TOOL_RESULT_CHARS


@pytest_asyncio.fixture
async def fakes():
    openai_fake, google = FakeOpenAI(), FakeGoogle(api_key="gkey")
    await openai_fake.start()
    await google.start()
    google.add_place("Bright Smile Dental", "+1 510-555-0101", "12 Main St, Oakland, CA 94607",
                     "America/Los_Angeles", ["Monday: 8:00 AM – 4:00 PM"])
    yield openai_fake, google
    await openai_fake.stop()
    await google.stop()


@pytest_asyncio.fixture
async def chat_client(fakes, settings_env, engine, sessions):
    openai_fake, google = fakes
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_BASE_URL=openai_fake.base_url,
                           OPENAI_API_KEY="sk-test", GOOGLE_API_KEY="gkey", GOOGLE_PLACES_BASE_URL=google.base_url,
                           GEMINI_BASE_URL=google.base_url, LLM_TIMEOUT_SECONDS="5")
    await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    chat_id = (await client.api("POST", "/api/chats")).json()["id"]
    yield runtime, client, chat_id
    await client.aclose()


def tool_results(request_body):
    return [json.loads(m["content"]) for m in request_body["messages"] if m["role"] == "tool"]


def dentist_plan(number):
    plan = a_plan(goal_type="each_target",
                  targets=[{"name": "Bright Smile Dental", "phone_number": number, "objective": "Book a cleaning"}])
    return plan


async def test_lookup_then_a_plan_the_model_fixes_then_confirm_once(fakes, chat_client):
    openai_fake, google = fakes
    runtime, client, chat_id = chat_client
    openai_fake.queue_reply(tool_calls=[{"name": "get_authoritative_business_info",
                                         "arguments": {"query": "Bright Smile Dental", "location": "Oakland"}}])
    openai_fake.queue_reply(tool_calls=[{"name": "submit_campaign_plan", "arguments": dentist_plan("555-0101")}])
    openai_fake.queue_reply(content="Here is your plan.",
                            tool_calls=[{"name": "submit_campaign_plan", "arguments": dentist_plan("+1 510-555-0101")}])
    response = await client.api("POST", f"/api/chats/{chat_id}/messages",
                                {"text": "Book me a cleaning at Bright Smile Dental in Oakland"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "Here is your plan." and body["plan"]["targets"][0]["phone_number"] == "+15105550101"

    places = google.requests[0]
    assert places.path == "/v1/places:searchText" and places.headers["x-goog-api-key"] == "gkey"
    assert {"places.internationalPhoneNumber", "places.timeZone", "places.formattedAddress",
            "places.regularOpeningHours.weekdayDescriptions"} <= set(places.headers["x-goog-fieldmask"].split(","))
    assert places.body["textQuery"] == "Bright Smile Dental Oakland"

    first, second, third = openai_fake.requests
    assert first["model"] == "gpt-4.1-mini" and first["messages"][0]["role"] == "system"
    assert {t["function"]["name"] for t in first["tools"]} == {
        "ask_follow_up_questions", "get_authoritative_business_info", "search_internet", "submit_campaign_plan"}
    lookup = tool_results(second)[0]["results"][0]
    assert (lookup["phone_number"], lookup["time_zone"]) == ("+1 510-555-0101", "America/Los_Angeles")
    assert lookup["opening_hours"] == ["Monday: 8:00 AM – 4:00 PM"]
    refused = tool_results(third)[-1]
    assert refused["accepted"] is False and any("targets[0].phone_number" in e for e in refused["errors"])

    async with runtime.sessions() as session:   # the plan waits on the chat; nothing is scheduled yet
        assert await session.scalar(select(func.count()).select_from(Campaign)) == 0
    chat = (await client.http.get(f"/api/chats/{chat_id}")).json()
    page = await client.http.get(f"/chat/{chat_id}")
    assert "Confirm and schedule campaign" in page.text and "+15105550101" in page.text
    first_click = await client.api("POST", f"/api/chats/{chat_id}/confirm", {"source_key": chat["source_key"]})
    second_click = await client.api("POST", f"/api/chats/{chat_id}/confirm", {"source_key": chat["source_key"]})
    assert (first_click.status_code, second_click.status_code) == (201, 200)
    assert first_click.json()["campaign_id"] == second_click.json()["campaign_id"]
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Campaign)) == 1
    # The page's form confirms the same plan with the same key: still one campaign.
    token = re.search(r'name="source_key" value="([^"]+)"', page.text).group(1)
    form = await client.form(f"/chat/{chat_id}/confirm", {"source_key": token})
    assert form.headers["location"] == f"/campaigns/{first_click.json()['campaign_id']}"


async def test_tool_errors_go_to_the_model_not_to_the_user(fakes, chat_client):
    openai_fake, google = fakes
    _, client, chat_id = chat_client
    google.fail_next(503)
    openai_fake.queue_reply(tool_calls=[{"name": "get_authoritative_business_info",
                                         "arguments": {"query": "Bright Smile Dental"}}])
    openai_fake.queue_reply(tool_calls=[{"name": "no_such_tool", "arguments": "{not json"}])
    openai_fake.queue_reply(content="The directory is down; what is the dentist's number?")
    body = (await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "Call my dentist"})).json()
    assert body["reply"] == "The directory is down; what is the dentist's number?"
    assert tool_results(openai_fake.requests[1])[0] == {
        "error": "Google Places answered HTTP 503: The service is currently unavailable."}
    assert "could not read the arguments" in tool_results(openai_fake.requests[2])[1]["error"]
    page = (await client.http.get(f"/chat/{chat_id}")).text
    assert "Traceback" not in page and "looked up: Bright Smile Dental" in page


async def test_search_internet_uses_gemini_with_google_search_grounding(fakes, chat_client):
    openai_fake, google = fakes
    _, client, chat_id = chat_client
    google.search_answer = "Three dentists in Oakland take new patients."
    google.search_sources = [("Oakland dentists", "https://example.test/dentists")]
    openai_fake.queue_reply(tool_calls=[{"name": "search_internet", "arguments": {"query": "dentists Oakland"}}])
    openai_fake.queue_reply(content="I found three.")
    await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "Which dentists are there?"})
    request = google.requests[0]
    assert request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.body["tools"] == [{"google_search": {}}] and request.headers["x-goog-api-key"] == "gkey"
    assert tool_results(openai_fake.requests[1])[0] == {
        "query": "dentists Oakland", "answer": "Three dentists in Oakland take new patients.",
        "sources": [{"title": "Oakland dentists", "url": "https://example.test/dentists"}]}


async def test_the_tool_loop_is_bounded(fakes, chat_client):
    openai_fake, _ = fakes
    _, client, chat_id = chat_client
    openai_fake.responder = lambda body: {"tool_calls": [{"name": "get_authoritative_business_info",
                                                          "arguments": {"query": "Bright"}}]}
    body = (await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "loop forever"})).json()
    assert len(openai_fake.requests) == MAX_ROUNDS
    assert body["reply"].startswith("I could not finish planning") and body["plan"] is None


async def test_a_plan_that_stays_invalid_is_given_up_on_and_never_stored(fakes, chat_client):
    openai_fake, _ = fakes
    runtime, client, chat_id = chat_client
    openai_fake.responder = lambda body: {"tool_calls": [{"name": "submit_campaign_plan",
                                                          "arguments": dentist_plan("12")}]}
    body = (await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "plan it"})).json()
    assert len(openai_fake.requests) == 3 and body["plan"] is None
    assert body["reply"].startswith("I could not produce a valid plan") and "targets[0].phone_number" in body["reply"]
    assert (await client.http.get(f"/api/chats/{chat_id}")).json()["plan"] is None
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Campaign)) == 0
    assert (await client.api("POST", f"/api/chats/{chat_id}/confirm", {})).json()["error"]["code"] == "no_plan"


async def test_follow_up_questions_show_as_a_form_and_come_back_as_one_message(fakes, chat_client):
    openai_fake, _ = fakes
    _, client, chat_id = chat_client
    openai_fake.queue_reply(tool_calls=[{"name": "ask_follow_up_questions",
                                         "arguments": {"questions": ["Which days suit you?", "Your dentist's name?"]}}])
    await client.form(f"/chat/{chat_id}/messages", {"text": "Book me a cleaning"})
    page = (await client.http.get(f"/chat/{chat_id}")).text
    assert 'id="questions-form"' in page and "Which days suit you?" in page
    openai_fake.queue_reply(content="Thanks, looking them up.")
    await client.http.post(f"/chat/{chat_id}/messages", data={
        "csrf_token": client.csrf, "question": ["Which days suit you?", "Your dentist's name?"],
        "answer": ["Tuesday", "Dr. Lee"]})
    last_user = [m for m in openai_fake.requests[-1]["messages"] if m["role"] == "user"][-1]
    assert last_user["content"] == "Which days suit you? — Tuesday\nYour dentist's name? — Dr. Lee"
    assert 'id="questions-form"' not in (await client.http.get(f"/chat/{chat_id}")).text


async def test_an_llm_that_fails_is_reported_and_the_conversation_continues(fakes, chat_client):
    openai_fake, _ = fakes
    _, client, chat_id = chat_client
    openai_fake.queue_reply(status=500)
    failed = await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "hello"})
    assert failed.status_code == 502 and "answered HTTP 500" in failed.json()["error"]["message"]
    openai_fake.queue_reply(content="Hi again.")
    ok = await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "hello?"})
    assert ok.json()["reply"] == "Hi again."
    sent = [m["role"] for m in openai_fake.requests[-1]["messages"]]
    assert sent == ["system", "user", "user"]   # the failure notice is shown, never sent to the model


async def test_without_an_llm_the_chat_names_the_setting_and_csv_import_still_works(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    try:
        await client.login("alice")
        chat_id = (await client.api("POST", "/api/chats")).json()["id"]
        page = (await client.http.get(f"/chat/{chat_id}")).text
        assert "OPENAI_API_KEY" in page and "OPENAI_BASE_URL" in page and "/campaigns/import" in page
        refused = await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "call my dentist"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "llm_not_configured"
        assert "OPENAI_API_KEY" in refused.json()["error"]["message"]
        imported = await client.http.post("/api/campaigns/import?name=Dentists",
                                          content=b"name,phone_number\nBright Smile,+15105550101\n",
                                          headers={"x-csrf-token": client.csrf, "content-type": "text/csv"})
        assert imported.status_code == 201 and len(imported.json()["task_ids"]) == 1
    finally:
        await client.aclose()


async def test_a_tool_result_too_long_for_the_model_is_cut_as_data_and_stays_valid_json(fakes, chat_client):
    openai_fake, google = fakes
    _, client, chat_id = chat_client
    google.search_answer = "Dentists in Oakland: " + "Bright Smile Dental takes new patients. " * 400
    google.search_sources = [("Oakland dentists", "https://example.test/dentists")]
    openai_fake.queue_reply(tool_calls=[{"name": "search_internet", "arguments": {"query": "dentists Oakland"}}])
    openai_fake.queue_reply(content="I found some.")
    await client.api("POST", f"/api/chats/{chat_id}/messages", {"text": "Which dentists are there?"})
    sent = next(m["content"] for m in openai_fake.requests[1]["messages"] if m["role"] == "tool")
    assert len(google.search_answer) > MAX_TOOL_RESULT_CHARS >= len(sent)
    result = json.loads(sent)   # the old cut of the JSON text left an unterminated string here
    assert result["truncated"] is True and result["query"] == "dentists Oakland"
    assert google.search_answer.startswith(result["answer"]) and len(result["answer"]) > MAX_TOOL_RESULT_CHARS / 2
    assert result["sources"] == [{"title": "Oakland dentists", "url": "https://example.test/dentists"}]


# ---------------------------------------------------------------- a best-of goal (opendeep/best_of.py)

BEST_OF = {"criterion": "earliest appointment", "decide": "user", "then": "book_with_chosen"}


async def test_a_best_of_plan_needs_its_criterion_and_decider_and_the_page_says_it_in_words(fakes, chat_client):
    openai_fake, _ = fakes
    runtime, client, chat_id = chat_client
    vague = a_plan(goal_type="best_of")
    openai_fake.queue_reply(tool_calls=[{"name": "submit_campaign_plan", "arguments": vague}])
    openai_fake.queue_reply(content="I will ask both for their earliest slot; you choose, then I book it.",
                            tool_calls=[{"name": "submit_campaign_plan",
                                         "arguments": a_plan(goal_type="best_of", best_of=BEST_OF)}])
    response = await client.api("POST", f"/api/chats/{chat_id}/messages",
                                {"text": "Ask both dentists for their earliest cleaning and let me pick"})
    assert response.status_code == 200, response.text
    plan = response.json()["plan"]
    assert plan["goal_type"] == "best_of" and plan["best_of"] == BEST_OF

    first, second = openai_fake.requests
    system = first["messages"][0]["content"]
    assert "best_of when the user wants offers compared before choosing one" in system
    assert "If the criterion, who decides, or whether to book is unclear, ask" in system
    schema = next(t for t in first["tools"] if t["function"]["name"] == "submit_campaign_plan")["function"]
    assert "best_of" in schema["parameters"]["properties"]["goal_type"]["enum"]
    (refused,) = tool_results(second)
    assert refused["accepted"] is False and refused["errors"] == [
        "best_of: a best_of goal needs best_of.criterion (what makes an offer the best) and best_of.decide "
        "(ai or user)"]

    page = (await client.http.get(f"/chat/{chat_id}")).text
    assert ("Best of several: every target is asked for an offer (nothing is accepted on these calls); then you "
            "pick the best by \u201cearliest appointment\u201d; the chosen one is then called back to accept its "
            "offer.") in page
