"""One real browser (headless Chromium) through the whole story: log in, chat a plan with the (fake) LLM, confirm
it, see the tasks, and answer a question a live call asks."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
from playwright.async_api import async_playwright, expect

from db import repo
from db.models import Call, CallStatus, FeedbackStatus, Speaker
from db.types import utcnow
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.webui_client import PASSWORD, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import WebComponent

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_login_chat_confirm_see_tasks_and_answer_a_live_question(settings_env, engine, sessions):
    llm = FakeOpenAI()
    await llm.start()
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_BASE_URL=llm.base_url, LLM_TIMEOUT_SECONDS="5")
    alice = await add_user(runtime, "alice")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(runtime, sock=sock)
    await web.start()
    base = f"http://127.0.0.1:{web.port}"
    llm.queue_reply(content="Here is the plan: two dentists, mornings.",
                    tool_calls=[{"name": "submit_campaign_plan", "arguments": a_plan(goal_type="each_target")}])
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            await page.goto(base + "/chat")
            await expect(page).to_have_url(base + "/login?next=/chat")
            await page.fill("input[name=username]", "alice")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await expect(page).to_have_url(base + "/chat")

            await page.click("#new-chat")
            await page.fill("textarea[name=text]", "Book me a cleaning at two dentists next week, mornings")
            await page.click("#send-message")
            card = page.locator("#plan-card")
            await expect(card).to_contain_text("Dental cleaning")
            await expect(card).to_contain_text("+14155550101")
            assert llm.requests[0]["messages"][-1]["content"].startswith("Book me a cleaning")

            await page.dblclick("#confirm-plan")   # a double click schedules one campaign
            await expect(page.locator("h1")).to_contain_text("Dental cleaning")
            rows = page.locator("tr.task")
            await expect(rows).to_have_count(2)
            await expect(rows.first).to_contain_text("pending")
            campaign_url = page.url
            async with runtime.sessions() as session:
                campaigns = await repo.list_campaigns(session, alice)
                tasks = await repo.list_tasks(session, alice)
            assert len(campaigns) == 1 and campaign_url.endswith(f"/campaigns/{campaigns[0].id}")

            await page.wait_for_selector("body[data-live-ready='1']")
            # The call AI's side: a live call, what was said so far, a question, and the hub event.
            async with runtime.sessions() as session:
                call = Call(user_id=alice, task_id=tasks[0].id, attempt_number=1, status=CallStatus.ANSWERED,
                            dialed_number=tasks[0].phone_number, channel="PJSIP/trunk-00000001")
                session.add(call)
                await session.flush()
                await repo.add_transcript(session, alice, call.id, Speaker.CALLEE, "We have Tuesday at 9.", 1500)
                question = await repo.create_feedback_request(session, alice, call.id, "Is Tuesday 9:00 OK?",
                                                              timeout_at=utcnow() + timedelta(seconds=90))
                await session.commit()
            runtime.events.publish(alice, "feedback.asked", {"request_id": question.id, "call_id": call.id,
                                                             "task_id": tasks[0].id, "question": question.question})
            hitl = page.locator(f"#hitl-{question.id}")
            await expect(hitl).to_be_visible()
            await expect(hitl).to_contain_text("Is Tuesday 9:00 OK?")
            await expect(hitl).to_contain_text("We have Tuesday at 9.")
            await expect(hitl).to_contain_text("Bright Smile")
            async with runtime.events.subscribe(alice) as call_side:
                await hitl.locator("input[name=answer]").fill("Yes, book Tuesday")
                await hitl.locator("button").click()
                await expect(hitl).to_contain_text("Answered: Yes, book Tuesday")
                event = await asyncio.wait_for(call_side.get(), 5)
            assert (event.kind, event.payload["answer"]) == ("feedback.answered", "Yes, book Tuesday")
            async with runtime.sessions() as session:
                row = await repo.get_feedback_request(session, alice, question.id)
            assert (row.status, row.answer) == (FeedbackStatus.ANSWERED, "Yes, book Tuesday")
            await browser.close()
    finally:
        await web.stop()
        await llm.stop()
