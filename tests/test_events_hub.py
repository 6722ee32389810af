"""The in-process event hub delivers to the right user only, and a slow page never blocks a call."""

import asyncio

from opendeep.events import QUEUE_LIMIT, EventHub


async def test_events_reach_only_the_users_own_subscribers():
    hub = EventHub()
    async with hub.subscribe(1) as alice_page_1, hub.subscribe(1) as alice_page_2, hub.subscribe(2) as bob:
        hub.publish(1, "feedback.asked", {"request_id": 7})
        first = await asyncio.wait_for(alice_page_1.get(), 1)
        second = await asyncio.wait_for(alice_page_2.get(), 1)
        assert first.kind == second.kind == "feedback.asked" and first.payload == {"request_id": 7}
        assert bob.empty()
    assert hub.subscriber_count(1) == 0


async def test_a_page_that_stops_reading_loses_oldest_events_without_blocking():
    hub = EventHub()
    async with hub.subscribe(1) as page:
        for number in range(QUEUE_LIMIT + 5):
            hub.publish(1, "call.transcript", {"n": number})
        assert page.qsize() == QUEUE_LIMIT
        assert (await page.get()).payload == {"n": 5}
