"""A real browser (headless Chromium) on the call log, the charts and the live board: filtering and paging the
log, the board updating from the live event stream while a call runs (the call AI on a real Asterisk 22 in the
second test), hang up from the board, and no page wider than the screen at 390 px and 1280 px."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
from playwright.async_api import async_playwright, expect

from db import task_life
from db.models import Speaker, TaskStatus
from db.types import utcnow
from tests.doubles.call_log_seed import add_line, seed_campaign
from tests.doubles.webui_client import PASSWORD, add_user, make_runtime
from tests.test_webui_board import live_call
from tests.test_webui_browser import ARGS, CHROMIUM
from webui.app import WebComponent

WIDTHS = (390, 1280)
WAIT_MS = 20_000   # a real call: Originate, ring, answer and the model take a few seconds on a busy machine
# Everything inside the part must fit the screen (the header's layout belongs to the status-strip work).
OVERFLOW = """(part) => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll(part + ' *')].filter((el) => el.getBoundingClientRect().right > width + 1);
  return {width, scroll: document.querySelector(part).scrollWidth,
          wide: wide.slice(0, 5).map((el) => el.tagName + '.' + el.className + ' ' + el.getBoundingClientRect().right)};
}"""


async def login(page, base: str, username: str, password: str = PASSWORD) -> None:
    await page.goto(base + "/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/campaigns")


async def assert_fits(page, url: str, part: str = "main") -> None:
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        await page.goto(url)
        fit = await page.evaluate(OVERFLOW, part)
        assert fit["wide"] == [] and fit["scroll"] <= fit["width"], (url, width, fit)


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_call_log_filters_pages_and_the_board_follows_a_live_call(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice = await add_user(runtime, "alice")
    seeded = await seed_campaign(runtime.sessions, alice, tasks=300, calls=130, lines_per_call=2,
                                 start=utcnow() - timedelta(days=3), spacing=timedelta(minutes=20),
                                 name="Bakeries of a very long name that goes on and on past the edge of a phone")
    await add_line(runtime.sessions, alice, seeded.call_ids[42], "We bake rye bread with caraway on Sundays")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(runtime, sock=sock)
    await web.start()
    base = f"http://127.0.0.1:{web.port}"
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(10_000)
            await login(page, base, "alice")

            await page.click("nav >> text=Calls")
            await expect(page.locator("h1")).to_have_text("Call log")
            rows = page.locator("tr.call-row")
            await expect(rows).to_have_count(50)
            await page.fill("input[name=q]", "rye bread with CARAWAY")
            await page.click("#call-filters button[type=submit]")
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_have_attribute("data-call-id", str(seeded.call_ids[42]))
            assert "q=rye+bread+with+CARAWAY" in await page.get_attribute("#calls-csv", "href")
            await page.click("text=Clear")
            await page.click("#calls-next")
            await expect(rows).to_have_count(50)
            await page.click("#calls-next")
            await expect(rows).to_have_count(30)
            await expect(page.locator("#calls-next")).to_have_count(0)
            assert int(await rows.last.get_attribute("data-call-id")) == seeded.call_ids[0]

            # The board, open while a call goes on: the call appears, then its words as they are said.
            await page.goto(base + "/board")
            await page.wait_for_selector("body[data-live-ready='1']")
            await expect(page.locator("tr.board-empty")).to_be_visible()
            _, call_id = await live_call(runtime, alice, "Sunny Bakery")
            runtime.events.publish(alice, "call.updated", {"call_id": call_id, "status": "answered"})
            row = page.locator(f"#board-call-{call_id}")
            await expect(row).to_contain_text("Sunny Bakery")
            await expect(row).to_contain_text("Nothing said yet.")
            for n, text in enumerate(["Hello, this is Alice's assistant.", "Hi, Sunny Bakery.",
                                      "Are you open on Sunday?", "From eight to noon."]):
                speaker = Speaker.AGENT if n % 2 == 0 else Speaker.CALLEE
                runtime.events.publish(alice, "call.transcript", {"call_id": call_id, "speaker": speaker.value,
                                                                  "text": text, "offset_ms": n * 1000})
            await expect(row.locator(".last-words li")).to_have_count(3)
            await expect(row.locator(".last-words")).to_contain_text("From eight to noon.")
            await expect(row.locator(".last-words")).not_to_contain_text("Hello, this is")
            assert (await row.locator(".timer").text_content()).count(":") == 1

            # The campaign page, 100 tasks a page: the next page, and a live update keeps the page shown.
            await page.goto(base + f"/campaigns/{seeded.campaign_id}")
            await page.wait_for_selector("body[data-live-ready='1']")
            await page.click("nav.pager >> text=Next")
            await expect(page.locator("tr.task")).to_have_count(100)
            await expect(page.locator("tr.task").first).to_have_id(f"task-{seeded.task_ids[100]}")
            await page.wait_for_selector("body[data-live-ready='1']")   # page 2's own event stream is open
            async with runtime.sessions() as session:
                await task_life.move(session, alice, seeded.task_ids[150], TaskStatus.CANCELLED,
                                           reason="cancelled from another tab")
                await session.commit()
            runtime.events.publish(alice, "task.updated", {"task_id": seeded.task_ids[150],
                                                           "campaign_id": seeded.campaign_id, "status": "cancelled"})
            await expect(page.locator(f"#task-{seeded.task_ids[150]}")).to_contain_text("cancelled from another tab")
            await expect(page.locator("tr.task").first).to_have_id(f"task-{seeded.task_ids[100]}")

            for url in ("/calls", "/board", f"/board/calls/{call_id}", "/charts",
                        f"/campaigns/{seeded.campaign_id}/charts"):
                await assert_fits(page, base + url)
            # The campaign page: its task list and pager (the header and forms above are the campaign form's).
            await assert_fits(page, base + f"/campaigns/{seeded.campaign_id}?page=2", "#tasks")
            await browser.close()
    finally:
        await web.stop()


@pytest.mark.browser
@pytest.mark.asterisk
async def test_the_board_shows_a_real_call_as_it_talks_and_hangs_it_up(make_stack, asterisk):
    """A call through the real Asterisk to the test callee who answers and listens for 20 s; the call AI speaks
    (no end_call). The board shows the call and the AI's words as they are said; Hang up cancels the task and
    Asterisk accepts the AMI Hangup of the call's channel, which ends the call."""
    from tests.asterisk.stack import ANSWERS, USER
    from tests.asterisk.stack import PASSWORD as STACK_PASSWORD
    from tests.doubles.fake_realtime import FakeResponse

    stack = await make_stack()
    words = "Good morning, I am calling to ask whether you are open on Sunday."

    def script(conn, index):
        return FakeResponse(audio=stack.models.speech, transcript=words, chunk_interval=0.1) if index == 0 else None
    stack.fake.realtime.script = script
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = await browser.new_page(viewport={"width": 390, "height": 800})
        page.set_default_timeout(20_000)
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await login(page, stack.serve.web_url, USER, STACK_PASSWORD)
        await page.goto(stack.serve.web_url + "/board")
        await page.wait_for_selector("body[data-live-ready='1']")

        _, [task_id] = await stack.import_campaign([("Sunny Bakery", ANSWERS)])
        row = page.locator("tr.board-call")
        await expect(row).to_contain_text("Sunny Bakery", timeout=WAIT_MS)
        await expect(row.locator(".last-words")).to_contain_text(words, timeout=WAIT_MS)
        await expect(row).to_contain_text("talking", timeout=WAIT_MS)
        await row.locator("button", has_text="Hang up").click()
        # The flash of the answer to the hang-up (the toasts may meanwhile say the campaign finished).
        await expect(page.locator("main > .flash")).to_contain_text("cancelled; hung up 1 call(s)", timeout=WAIT_MS)
        await expect(page.locator("tr.board-empty")).to_be_visible(timeout=WAIT_MS)
        await browser.close()
    task = await stack.wait_task(task_id, "cancelled")
    (call, events, lines), = await stack.call_rows(task_id)
    assert call.ended_at is not None and call.bridged_to_ai
    assert task["status_reason"] == "cancelled by user"
    assert any(line.text == words for line in lines)
    # Ended by the hang-up: Asterisk closed the AudioSocket while the callee still had 20 s of listening left.
    ended = next(event for event in events if event.type == "call.ended")
    assert (ended.payload["outcome"], ended.payload["hangup_cause"]) == ("answered", 16)
    assert ended.payload["answered_seconds"] < 20, ended.payload
