"""A real browser (headless Chromium) at 1280 and 390 px: the plan page shows the campaign's goal in words for the
user to confirm, and the campaign page shows it too, with an edit form (CSRF, errors shown) and "call now"."""

from __future__ import annotations

import socket

import pytest
from playwright.async_api import async_playwright, expect

from db import repo
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.webui_client import PASSWORD, add_user, make_runtime
from tests.test_webui_browser import ARGS, CHROMIUM
from tests.test_webui_plan_csv import a_plan
from webui.app import WebComponent


async def _fits(page, selector: str, width: int) -> None:
    """The element is on screen without horizontal scrolling at this width."""
    box = await page.locator(selector).first.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (selector, box, width)


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_plan_and_campaign_pages_show_the_goal_and_the_campaign_can_be_edited(settings_env, engine,
                                                                                        sessions, width, tmp_path):
    llm = FakeOpenAI()
    await llm.start()
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_BASE_URL=llm.base_url, LLM_TIMEOUT_SECONDS="5")
    alice = await add_user(runtime, "alice")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(runtime, sock=sock)
    await web.start()
    base = f"http://127.0.0.1:{web.port}"
    plan = a_plan(goal_type="until_one_succeeds", calling_window={"start": "00:00", "end": "23:59"})
    llm.queue_reply(content="I will call them one at a time and stop once one books you.",
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
            await page.fill("textarea[name=text]", "Book me one cleaning with one of these two dentists")
            await page.click("#send-message")

            goal = page.locator("#plan-goal")
            await expect(goal).to_be_visible()
            await expect(goal).to_contain_text("Until one succeeds")
            await expect(goal).to_contain_text("one call at a time")
            await expect(goal).to_contain_text("1. Bright Smile, 2. Oak Dental")
            await _fits(page, "#plan-goal", width)
            await page.screenshot(path=tmp_path / f"plan-{width}.png", full_page=True)   # for a person to look at

            await page.click("#confirm-plan")
            await expect(page.locator("#campaign-goal")).to_contain_text("Until one succeeds")
            await _fits(page, "#campaign-goal", width)
            rows = page.locator("tr.task")
            await expect(rows).to_have_count(2)
            await expect(rows.nth(1)).to_contain_text("waits its turn")
            await expect(rows.first.locator("button.call-now")).to_be_visible()

            # The edit form: a bad window is refused with the reason; a good edit is saved.
            await page.click("#campaign-edit summary")
            form = page.locator("#campaign-edit form")
            await expect(form).to_be_visible()
            await _fits(page, "#campaign-edit input[name=caller_id]", width)
            await form.locator("input[name=calling_window]").fill("9-5")
            await form.locator("input[name=caller_id]").fill("not a number")
            await form.locator("#save-campaign").click()
            error = page.locator(".flash.error")
            await expect(error).to_contain_text("Nothing was changed: calling_window:")
            await expect(error).to_contain_text("caller_id:")
            await _fits(page, ".flash.error", width)
            await page.click("#campaign-edit summary")
            await page.locator("#campaign-edit input[name=caller_id]").fill("Acme <+14155550199>")
            await page.locator("#campaign-edit input[name=name]").fill("One cleaning, first who can")
            await page.locator("#campaign-edit input[name=calling_window]").fill("08:00-18:00")
            await page.locator("#campaign-edit #save-campaign").click()
            await expect(page.locator("h1")).to_contain_text("One cleaning, first who can")
            await expect(page.locator("body")).to_contain_text("caller ID \"Acme\" <+14155550199>")
            async with runtime.sessions() as session:
                (campaign,) = await repo.list_campaigns(session, alice)
            assert (campaign.name, campaign.window_start, campaign.window_end, campaign.caller_id) == (
                "One cleaning, first who can", "08:00", "18:00", '"Acme" <+14155550199>')
            await _fits(page, "h1", width)
            await page.click("#campaign-edit summary")
            await page.screenshot(path=tmp_path / f"campaign-{width}.png", full_page=True)
            await browser.close()
    finally:
        await web.stop()
        await llm.stop()
