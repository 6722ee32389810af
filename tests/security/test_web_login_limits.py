"""Password guessing over HTTP: in parallel, from many addresses, and through a reverse proxy.

Before: 60 concurrent wrong passwords for one user gave 60 x 401 (the limiter was checked, then the hash
awaited, then the failure recorded); 5 failures from any address locked the real user out everywhere; and
behind a reverse proxy every client shared the proxy's address.
"""

from __future__ import annotations

import asyncio

import pytest_asyncio

from tests.doubles.webui_client import PASSWORD, WebClient, add_user, make_runtime
from webui.app import create_app
from webui.auth import LoginRateLimiter


@pytest_asyncio.fixture
async def clients(settings_env, engine, sessions):
    """`connect(app, address)` -> a WebClient from that address (with a CSRF token); all closed afterwards."""
    opened: list[WebClient] = []

    async def connect(app, address: str = "127.0.0.1") -> WebClient:
        client = WebClient(app, address)
        opened.append(client)
        await client.refresh_csrf()
        return client

    yield connect
    for client in opened:
        await client.aclose()


async def login(client: WebClient, password: str, **headers: str) -> int:
    response = await client.api("POST", "/api/login", {"username": "alice", "password": password}, headers=headers)
    return response.status_code


async def test_sixty_parallel_wrong_passwords_get_at_most_the_limit_of_401s(settings_env, engine, sessions, clients):
    runtime = make_runtime(settings_env, engine, sessions)
    app = create_app(runtime)
    await add_user(runtime, "alice")
    attacker = await clients(app, "203.0.113.7")
    statuses = await asyncio.gather(*(login(attacker, f"guess-{n}") for n in range(60)))
    limit = app.state.rate_limiter.max_failures
    assert statuses.count(401) <= limit and statuses.count(401) + statuses.count(429) == 60, statuses
    # The form login shares the count.
    page = await attacker.http.post("/login", data={"username": "alice", "password": "guess",
                                                    "csrf_token": attacker.csrf})
    assert page.status_code == 429


async def test_failures_from_one_address_lock_the_user_out_elsewhere_only_at_the_per_user_cap(
        settings_env, engine, sessions, clients):
    runtime = make_runtime(settings_env, engine, sessions)
    now = [1000.0]
    app = create_app(runtime, rate_limiter=LoginRateLimiter(max_failures=3, max_failures_per_user=7,
                                                            window_seconds=60, clock=lambda: now[0]))
    await add_user(runtime, "alice")
    guesser = await clients(app, "203.0.113.7")
    assert [await login(guesser, "guess") for _ in range(4)] == [401, 401, 401, 429]

    alice_at_work = await clients(app, "198.51.100.20")
    assert await login(alice_at_work, PASSWORD) == 200

    # A guesser with many addresses: 3 per address, until the username as a whole has 7 failures.
    others = [await clients(app, f"203.0.113.{n}") for n in (8, 9)]
    assert [await login(others[0], "guess") for _ in range(3)] == [401, 401, 401]
    assert [await login(others[1], "guess") for _ in range(2)] == [401, 429]
    alice_at_home = await clients(app, "198.51.100.30")
    assert await login(alice_at_home, PASSWORD) == 429
    now[0] += 61
    assert await login(alice_at_home, PASSWORD) == 200


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(settings_env, engine, sessions, clients):
    limiter = LoginRateLimiter(max_failures=3)
    direct = create_app(make_runtime(settings_env, engine, sessions), rate_limiter=limiter)
    await add_user(direct.state.runtime, "alice")
    # A client talking to us directly cannot get fresh attempts by inventing addresses.
    spoofer = await clients(direct, "203.0.113.7")
    statuses = [await login(spoofer, "guess", **{"x-forwarded-for": f"192.0.2.{n}"}) for n in range(5)]
    assert statuses == [401, 401, 401, 429, 429]

    # Behind the proxy, each client is counted by the address the proxy saw.
    proxied = create_app(make_runtime(settings_env, engine, sessions, TRUSTED_PROXIES="10.0.0.0/24"),
                         rate_limiter=LoginRateLimiter(max_failures=3))
    proxy = await clients(proxied, "10.0.0.2")
    forged_then_real = {"x-forwarded-for": "198.51.100.99, 203.0.113.7"}
    assert [await login(proxy, "guess", **forged_then_real) for _ in range(4)] == [401, 401, 401, 429]
    # The attacker's forged left-hand entry is not who gets locked out; the real client behind the proxy logs in.
    assert await login(proxy, PASSWORD, **{"x-forwarded-for": "198.51.100.99"}) == 200
    # And a peer that is not the proxy cannot borrow the header.
    outsider = await clients(proxied, "203.0.113.50")
    assert [await login(outsider, "guess", **{"x-forwarded-for": f"192.0.2.{n}"}) for n in range(4)] == \
        [401, 401, 401, 429]
