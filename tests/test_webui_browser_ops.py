"""What an operator sees, in a real browser (headless Chromium), at 1280 px and at 390 px (a phone): the status
strip following Asterisk live, the campaign header following the campaign live, toasts shown once and clear of
the flash message, the question panel showing every card, and no page wider than the screen (issue 15, items 4,
5 and 14)."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
from playwright.async_api import async_playwright, expect
from sqlalchemy import update

from ami_controller.manager import AmiController
from db import repo
from db.models import Call, CallOutcome, CallStatus, Speaker, User
from db.types import utcnow
from opendeep.events import EventHub
from tests.doubles.ami_helpers import ami_settings
from tests.doubles.fake_ami import FakeAmi
from tests.doubles.webui_client import PASSWORD, add_user, make_runtime
from tests.test_webui_browser import ARGS, CHROMIUM
from tests.test_webui_plan_csv import a_plan
from webui.app import WebComponent
from webui.controls import ControlAction, control_campaign
from webui.orchestrator import confirm_plan

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
LONG_NAME = "Zahnarztpraxis Dr. med. dent. Maximilian Mustermann-Schönefeld und Kollegen GmbH"


async def _site(settings_env, engine, sessions, **overrides):
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_API_KEY="sk-test", **overrides)
    alice = await add_user(runtime, "alice")
    async with runtime.sessions() as session:   # alice administers, so the users page is in the nav too
        await session.execute(update(User).where(User.id == alice).values(is_admin=True))
        await session.commit()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(runtime, sock=sock)
    await web.start()
    return runtime, alice, web, f"http://127.0.0.1:{web.port}"


async def _log_in(page, base):
    await page.goto(base + "/login")
    await page.fill("input[name=username]", "alice")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(base + "/campaigns")


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("width", list(WIDTHS))
async def test_status_strip_and_campaign_header_follow_asterisk_and_the_campaign_live(settings_env, engine,
                                                                                      sessions, width):
    fake = FakeAmi(username="opendeep", secret="secret", hold_seconds=30)
    await fake.start()
    runtime, alice, web, base = await _site(settings_env, engine, sessions)
    runtime.settings = ami_settings(runtime.settings, fake.port)
    runtime.ami = AmiController(runtime.settings, runtime.sessions, EventHub())
    await runtime.ami.start()
    await runtime.ami.wait_connected(5)
    confirmation = await confirm_plan(runtime.sessions, alice, a_plan(), "k")
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page(viewport=dict(zip(("width", "height"), WIDTHS[width], strict=True)),
                                          timezone_id="America/New_York")
            page.set_default_timeout(10_000)
            await _log_in(page, base)
            await page.goto(f"{base}/campaigns/{confirmation.campaign.id}")
            await page.wait_for_selector("body[data-live-ready='1']")
            strip = page.locator("#status-strip")
            await expect(strip.locator("[data-light=asterisk]")).to_have_text("Asterisk connected")
            await expect(strip.locator("[data-light=model]")).to_have_text("Model configured")
            await expect(strip.locator("[data-light=calls]")).to_have_text("Calls in progress 0 / 2")
            await expect(strip).to_contain_text("Times in America/New_York")   # the browser's zone, first login

            await fake.stop()   # Asterisk goes away; the next live event refreshes the strip, no reload
            while runtime.ami.connected:
                await asyncio.sleep(0.05)
            runtime.events.publish(alice, "task.updated", {"task_id": confirmation.task_ids[0],
                                                           "campaign_id": confirmation.campaign.id,
                                                           "status": "pending"})
            await expect(page.locator("#status-strip [data-light=asterisk]")).to_contain_text(
                "Asterisk not reachable (AMI at 127.0.0.1:")
            await expect(page.locator("tr.task").first).to_contain_text("waiting")

            # The campaign is cancelled elsewhere (another tab, the API): this page's header follows.
            header = page.locator("#campaign-header")
            await expect(header.locator("#campaign-status")).to_have_text("active")
            await expect(header.locator("button.pause")).to_be_visible()
            await control_campaign(runtime, alice, confirmation.campaign.id, ControlAction.CANCEL)
            await expect(header.locator("#campaign-status")).to_have_text("cancelled")
            await expect(header.locator("button")).to_have_count(0)
            await browser.close()
    finally:
        await runtime.ami.stop()
        await web.stop()
        await fake.stop()


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("width", list(WIDTHS))
async def test_toasts_once_clear_of_the_flash_and_every_question_card_reachable(settings_env, engine, sessions,
                                                                               width):
    runtime, alice, web, base = await _site(settings_env, engine, sessions)
    confirmation = await confirm_plan(runtime.sessions, alice, a_plan(), "k")
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page(viewport=dict(zip(("width", "height"), WIDTHS[width], strict=True)))
            page.set_default_timeout(10_000)
            await _log_in(page, base)
            await page.goto(f"{base}/campaigns/{confirmation.campaign.id}")
            await page.click("button.pause")   # a flash message at the top of the page
            flash = page.locator("main .flash").first
            await expect(flash).to_contain_text("paused")
            await page.wait_for_selector("body[data-live-ready='1']")

            note = {"id": 7, "kind": "campaign.summarized", "message": "Campaign 'Dental cleaning' is finished"}
            runtime.events.publish(alice, "notification", note)
            runtime.events.publish(alice, "notification", note)   # the hub and the database poll both tell it
            questions = []
            async with runtime.sessions() as session:
                for task_id, words in zip(confirmation.task_ids, ("Tuesday 9:00?", "Wednesday 8:30?"), strict=True):
                    call = Call(user_id=alice, task_id=task_id, attempt_number=1, status=CallStatus.ANSWERED,
                                dialed_number="+14155550101")
                    session.add(call)
                    await session.flush()
                    for line in range(12):   # a long transcript must not push the next card away
                        await repo.add_transcript(session, alice, call.id, Speaker.CALLEE, f"line {line} " * 8,
                                                  line * 1000)
                    questions.append(await repo.create_feedback_request(
                        session, alice, call.id, f"Is {words}", timeout_at=utcnow() + timedelta(seconds=90)))
                await session.commit()
            for question in questions:
                runtime.events.publish(alice, "feedback.asked", {"request_id": question.id,
                                                                 "call_id": question.call_id})
            toasts = page.locator("#toasts .flash")
            await expect(toasts).to_have_count(3)
            await expect(toasts.filter(has_text="is finished")).to_have_count(1)
            await expect(toasts.filter(has_text="Bright Smile (+14155550101) needs your answer")).to_have_count(1)
            await expect(toasts.filter(has_text="Oak Dental (+14155550102) needs your answer")).to_have_count(1)
            flash_box = await flash.bounding_box()
            for index in range(3):
                box = await toasts.nth(index).bounding_box()
                assert box["y"] >= flash_box["y"] + flash_box["height"] or \
                    box["y"] + box["height"] <= flash_box["y"], "a toast covers the flash message"

            panel = page.locator("#hitl-panel")
            viewport = page.viewport_size
            panel_box = await panel.bounding_box()
            assert panel_box["x"] >= 0 and panel_box["x"] + panel_box["width"] <= viewport["width"]
            assert panel_box["y"] >= 0 and panel_box["y"] + panel_box["height"] <= viewport["height"]
            for question in questions:
                card = page.locator(f"#hitl-{question.id}")
                await card.locator(".hitl-question").scroll_into_view_if_needed()
                await expect(card.locator(".hitl-question")).to_be_in_viewport()
                await expect(card.locator("button")).to_be_enabled()
            await browser.close()
    finally:
        await web.stop()


PAGES = ["/campaigns", "/campaigns/{campaign}", "/chat", "/dnd", "/feedback", "/account", "/account/password",
         "/admin/users", "/transfer-targets", "/calls/{call}", "/campaigns/import", "/chat/{chat}",
         "/campaigns/{campaign}/summary"]


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("width", list(WIDTHS))
async def test_no_page_is_wider_than_the_screen(settings_env, engine, sessions, width):
    runtime, alice, web, base = await _site(settings_env, engine, sessions)
    plan = a_plan(targets=[{"name": LONG_NAME, "phone_number": "+14155550101",
                            "objective": "Book a cleaning for the whole family " * 4}])
    confirmation = await confirm_plan(runtime.sessions, alice, plan, "k")
    async with runtime.sessions() as session:
        call = Call(user_id=alice, task_id=confirmation.task_ids[0], attempt_number=1, status=CallStatus.ENDED,
                    outcome=CallOutcome.NO_ANSWER, dialed_number="+14155550101", ended_at=utcnow())
        session.add(call)
        await session.flush()
        await repo.add_dnd(session, alice, "+14155550199", "asked us never to call again " * 3)
        chat = await repo.create_chat_session(session, alice)
        chat.plan = plan
        campaign = await repo.get_campaign(session, alice, confirmation.campaign.id)
        campaign.summary_text = "Nobody answered. " * 20
        campaign.summary = [{"target": LONG_NAME, "outcome": "no_answer", "attempts": 1,
                             "result": {"notes": "rang out " * 10}}]
        await session.commit()
    ids = {"campaign": confirmation.campaign.id, "call": call.id, "chat": chat.id}
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page(viewport=dict(zip(("width", "height"), WIDTHS[width], strict=True)))
            page.set_default_timeout(10_000)
            await _log_in(page, base)
            for path in PAGES:
                response = await page.goto(base + path.format(**ids))
                assert response.status == 200, path
                scroll, client = await page.evaluate(
                    "[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
                assert scroll <= client, f"{path} is {scroll} px wide on a {client} px screen"
                header = await page.locator("header.top").bounding_box()
                assert header["width"] <= client, path
            await browser.close()
    finally:
        await web.stop()
