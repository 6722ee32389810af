"""A real browser (headless Chromium) at 1280 and 390 px: the plan page states a best-of goal in words (what
"best" means, who decides, what follows); once the offers are in, the open campaign page says (live, without a
reload) that it waits for the user's choice and lists the offers in a form; the user picks one and the page shows
the choice and the follow-up call."""

from __future__ import annotations

import socket

import pytest
from playwright.async_api import async_playwright, expect
from sqlalchemy import update

from db import repo
from db.models import Task, TaskStatus
from opendeep.best_of import BestOfKeeper
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.webui_client import PASSWORD, add_user, make_runtime
from tests.test_webui_browser import ARGS, CHROMIUM
from tests.test_webui_browser_goal import _fits
from tests.test_webui_plan_csv import a_plan
from webui.app import WebComponent

BEST = {"criterion": "earliest appointment", "decide": "user", "then": "book_with_chosen"}


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_user_sees_the_offers_and_chooses_the_best_on_the_campaign_page(settings_env, engine, sessions,
                                                                                   width, tmp_path):
    llm = FakeOpenAI()
    await llm.start()
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_BASE_URL=llm.base_url, LLM_TIMEOUT_SECONDS="5")
    alice = await add_user(runtime, "alice")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(runtime, sock=sock)
    await web.start()
    base = f"http://127.0.0.1:{web.port}"
    plan = a_plan(goal_type="best_of", best_of=BEST, calling_window={"start": "00:00", "end": "23:59"})
    llm.queue_reply(content="I will ask both for their earliest slot; then you choose, and I book it.",
                    tool_calls=[{"name": "submit_campaign_plan", "arguments": plan}])
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page(viewport={"width": width, "height": 900})
            page.set_default_timeout(10_000)
            await page.goto(base + "/login?next=/chat")
            await page.fill("input[name=username]", "alice")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.click("#new-chat")
            await page.fill("textarea[name=text]", "Ask both dentists for their earliest cleaning; I'll pick")
            await page.click("#send-message")

            goal = page.locator("#plan-goal")
            await expect(goal).to_contain_text("Best of several: every target is asked for an offer")
            await expect(goal).to_contain_text("you pick the best by \u201cearliest appointment\u201d")
            await expect(goal).to_contain_text("the chosen one is then called back to accept its offer")
            await _fits(page, "#plan-goal", width)
            await page.click("#confirm-plan")
            await expect(page.locator("#best-of")).to_contain_text("Collecting offers")
            await expect(page.locator("body[data-live-ready='1']")).to_have_count(1)   # the live events are on

            # The offer calls end (as the analyzer writes them); the decision pass asks the user.
            async with runtime.sessions() as session, session.begin():
                (campaign,) = await repo.list_campaigns(session, alice)
                first, second = [t.id for t in await repo.list_tasks(session, alice, campaign.id)]
                for task_id, slot in ((first, "Friday 9:00"), (second, "Tuesday 8:30")):
                    await session.execute(update(Task).where(Task.id == task_id).values(
                        status=TaskStatus.COMPLETED, result={"outcome": "success", "data": {"earliest": slot},
                                                             "summary": f"Earliest cleaning: {slot}."}))
            assert (await BestOfKeeper(runtime.settings, sessions, runtime.events).run_once()).asked == [campaign.id]
            # No reload: the live event brings the header's note and the choice form.
            await expect(page.locator("#waiting-for-choice")).to_contain_text("Waiting for your choice")
            form = page.locator("#best-of-form")
            await expect(form.locator("label.offer")).to_have_count(2)
            await expect(form).to_contain_text("earliest: Tuesday 8:30")
            await _fits(page, "#best-of-form button[type=submit]", width)
            await _fits(page, "#waiting-for-choice", width)
            await page.screenshot(path=tmp_path / f"choice-{width}.png", full_page=True)   # for a person to look at

            await form.locator(f"input[name=task_id][value='{second}']").check()
            await form.locator("input[name=reason]").fill("earliest")
            await form.locator("button[type=submit]").click()
            await expect(page.locator("#best-of-choice")).to_contain_text("Chosen: Oak Dental")
            await expect(page.locator("body")).to_contain_text("A call to accept the offer is scheduled.")
            await expect(page.locator("#waiting-for-choice")).to_have_count(0)
            await expect(page.locator("tr.task")).to_have_count(3)   # the follow-up task, due now
            await _fits(page, "#best-of-choice", width)
            await browser.close()
    finally:
        await web.stop()
        await llm.stop()
