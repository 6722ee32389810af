"""The "webhooks" component of `opendeep serve`: sends the outbox (db/webhooks.py) to users' endpoints.

Each delivery is one POST of a JSON body, signed with the endpoint's secret: the header
`OpenDeep-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, and carries its idempotency id in
`OpenDeep-Event-Id` (the same on every retry of it). A 2xx answer delivers it; anything else, a timeout or a
refused connection is retried with exponential backoff until WEBHOOK_RETRY_HOURS after the event, then given up.

A delivery is claimed with a lease longer than its request can take, so a restart loses none (an unfinished one
is due again when its lease ends) and two senders never send the same one at once. A slow or dead endpoint holds
at most WEBHOOK_CONCURRENCY_PER_ENDPOINT requests; other endpoints' deliveries are claimed past it.

SSRF: the URL's host is resolved here, every address is checked (loopback, private, link-local, multicast,
reserved and other non-global ranges are refused unless WEBHOOK_ALLOW_PRIVATE), and the request connects to
the checked address (Host header and TLS server name stay the URL's host), at save time and before every send.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import webhooks as outbox
from db.models import WebhookDeliveryStatus
from db.types import utcnow
from opendeep.health import task_running
from opendeep.metrics import WEBHOOK_DELIVERIES
from opendeep.periodic import FINISH_GRACE_SECONDS, finishing
from opendeep.runtime import Runtime
from opendeep.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "OpenDeep-Signature"
EVENT_ID_HEADER = "OpenDeep-Event-Id"
EVENT_TYPE_HEADER = "OpenDeep-Event"
POLL_SECONDS = 1.0
LEASE_MARGIN_SECONDS = 30.0       # the lease outlasts the request's own timeout by this much
CLAIM_BATCH = 200
MAX_URL_LENGTH = 2000

RECORD_BATCH = 200

Resolver = Callable[[str, int], Awaitable[list[str]]]


class UnsafeWebhookUrl(ValueError):
    """A webhook URL we will not send to; the message says why and what to do. `refused`: it resolves to an
    address the policy refuses (retrying will not help), rather than not resolving at all."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


# ---------------------------------------------------------------- signing


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<timestamp>.<body>"` with the endpoint's secret."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def delivery_body(delivery: outbox.ClaimedDelivery, public_base_url: str) -> bytes:
    """The JSON body: id (the idempotency id), type, created_at, data. Every "..._url" path in data gets
    PUBLIC_BASE_URL in front, so the body is the same bytes on every retry."""
    data = {key: public_base_url + value if key.endswith("_url") and isinstance(value, str)
            and value.startswith("/") else value for key, value in delivery.payload.items()}
    envelope = {"id": delivery.event_id, "type": delivery.event_type, "created_at": delivery.created_at.isoformat(),
                "data": data}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- SSRF checks


def refused_address_reason(address: str) -> str | None:
    """Why OpenDeep must not connect to `address` for a user (None: a public address)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                       ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                       ("reserved", ip.is_reserved), ("private", ip.is_private)):
        if flag:
            return kind
    return None if ip.is_global else "non-public"


def check_url_form(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable webhook URL; UnsafeWebhookUrl otherwise."""
    if len(url) > MAX_URL_LENGTH or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UnsafeWebhookUrl(f"give a URL of at most {MAX_URL_LENGTH} characters without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeWebhookUrl("the URL is not valid (check the host and port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookUrl("give an http:// or https:// URL with a host, e.g. https://example.com/hooks")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("put no user or password in the URL: check the signature with the secret instead")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal is itself)."""
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(url: str, allow_private: bool, resolver: Resolver = resolve_host) -> list[str]:
    """The addresses to connect to for `url`, each allowed; UnsafeWebhookUrl if the URL is malformed, does not
    resolve, or any address it resolves to is refused (a name with one private address is refused whole)."""
    _, host, port = check_url_form(url)
    try:
        addresses = await resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeWebhookUrl(f"the host {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise UnsafeWebhookUrl(f"the host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = refused_address_reason(address)
            if reason is not None:
                raise UnsafeWebhookUrl(f"the host {host!r} resolves to a {reason} address ({address}); webhooks "
                                       f"go to public addresses only (an admin can set WEBHOOK_ALLOW_PRIVATE=true)",
                                       refused=True)
    return addresses


def pinned_request(client: httpx.AsyncClient, url: str, address: str, headers: dict[str, str],
                   body: bytes) -> httpx.Request:
    """A POST to `url` that connects to `address` (already checked): the Host header and, for https, the TLS
    server name and certificate check stay the URL's host, so DNS cannot change between check and connect."""
    original = httpx.URL(url)
    request = client.build_request("POST", original.copy_with(host=address), content=body,
                                   headers={**headers, "Host": original.netloc.decode("ascii")})
    if original.scheme == "https":
        request.extensions["sni_hostname"] = original.host
    return request


# ---------------------------------------------------------------- the sender


class WebhookSender:
    """Claims due deliveries in batches and sends them: per endpoint, a queue of what it holds and at most
    WEBHOOK_CONCURRENCY_PER_ENDPOINT workers draining it; WEBHOOK_MAX_CONCURRENCY requests in all.

    It holds up to PREFETCH times its request slots (per endpoint and in all), so one claim query feeds many
    requests; the lease covers sending all of an endpoint's held deliveries one slot after another at the
    request timeout each."""

    PREFETCH = 4

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], *,
                 client: httpx.AsyncClient | None = None, clock: Callable[[], datetime] = utcnow,
                 resolver: Resolver = resolve_host) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.resolver = resolver
        self.timeout = settings.webhook_timeout_seconds
        self.per_endpoint = settings.webhook_concurrency_per_endpoint
        self.max_in_flight = settings.webhook_max_concurrency
        self.lease_seconds = self.timeout * self.PREFETCH + LEASE_MARGIN_SECONDS
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight))
        self._owns_client = client is None
        self._requests = asyncio.Semaphore(self.max_in_flight)
        # endpoint -> (delivery, monotonic time its lease ends) not yet being sent
        self._held: dict[int, collections.deque[tuple[outbox.ClaimedDelivery, float]]] = {}
        self._busy: dict[int, int] = {}                                          # endpoint -> held and sending
        self._workers: dict[int, set[asyncio.Task]] = {}
        self._room = asyncio.Event()
        self._finished_since_claim = 0
        self._to_record: asyncio.Queue[outbox.AttemptResult] = asyncio.Queue()
        self._recorder: asyncio.Task | None = None

    @property
    def in_flight(self) -> int:
        """Deliveries this sender holds (queued or being sent)."""
        return sum(self._busy.values())

    async def run_once(self) -> int:
        """Claim what is due and fits the limits, queue it for sending; returns how many were claimed."""
        room = self.max_in_flight * self.PREFETCH - self.in_flight
        if room <= 0:
            return 0
        per_endpoint = self.per_endpoint * self.PREFETCH
        free = {endpoint: per_endpoint - busy for endpoint, busy in self._busy.items()}
        now = self.clock()
        async with self.sessions() as session, session.begin():
            claimed = await outbox.claim_due_deliveries(
                session, now=now, lease_seconds=self.lease_seconds, free_slots=free, default_slots=per_endpoint,
                limit=min(room, CLAIM_BATCH))
        lease_ends = asyncio.get_running_loop().time() + self.lease_seconds - LEASE_MARGIN_SECONDS / 2
        for delivery in claimed:
            endpoint = delivery.endpoint_id
            self._busy[endpoint] = self._busy.get(endpoint, 0) + 1
            self._held.setdefault(endpoint, collections.deque()).append((delivery, lease_ends))
            workers = self._workers.setdefault(endpoint, set())
            if sum(1 for worker in workers if not worker.done()) < self.per_endpoint:
                worker = asyncio.create_task(self._work(endpoint), name=f"webhooks-endpoint-{endpoint}")
                workers.add(worker)
                worker.add_done_callback(workers.discard)
        return len(claimed)

    async def _work(self, endpoint: int) -> None:
        """Send this endpoint's held deliveries one after another (one of its request slots)."""
        while queue := self._held.get(endpoint):   # the current queue: one made after this worker began too
            delivery, lease_ends = queue.popleft()
            try:
                async with self._requests:
                    if asyncio.get_running_loop().time() + self.timeout > lease_ends:
                        # Waited so long for a request slot that the lease could end mid-request, and another
                        # sender could send it too: leave it to be claimed again.
                        log.info("webhook delivery %s: lease nearly over before sending; left for a new claim",
                                 delivery.id)
                        continue
                    attempt = await self._post(delivery)
                self._record(attempt)
            finally:
                left = self._busy.get(endpoint, 1) - 1
                if left > 0:
                    self._busy[endpoint] = left
                else:
                    self._busy.pop(endpoint, None)
                    self._held.pop(endpoint, None)
                self._finished_since_claim += 1
                self._room.set()

    async def run_forever(self, poll_seconds: float = POLL_SECONDS) -> None:
        """Claim and send until cancelled: again once half of the last claim has been sent (so each claim query
        feeds many requests), else every `poll_seconds`."""
        while True:
            try:
                claimed = await finishing(self.run_once())   # a stop lets the claim's transaction finish
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("claiming webhook deliveries failed; trying again in %.1fs", poll_seconds)
                claimed = 0
            self._finished_since_claim = 0
            deadline = asyncio.get_running_loop().time() + poll_seconds
            while not claimed or self._finished_since_claim < max(claimed // 2, 1):
                self._room.clear()
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), left)

    def _all_workers(self) -> list[asyncio.Task]:
        return [worker for workers in self._workers.values() for worker in workers]

    async def drain(self) -> None:
        """Wait until every held delivery is sent and recorded."""
        while workers := self._all_workers():
            await asyncio.gather(*workers, return_exceptions=True)
        await self._to_record.join()

    async def close(self) -> None:
        """Stop: requests in flight are cancelled, held deliveries dropped (their leases run out and they are
        sent again later, by this process after a restart or by another sender)."""
        workers = self._all_workers()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if self._recorder is not None:
            with contextlib.suppress(TimeoutError):   # what was sent is recorded, not sent again after the lease
                await asyncio.wait_for(self._to_record.join(), FINISH_GRACE_SECONDS)
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
            self._recorder = None
        self._held.clear()
        self._busy.clear()
        if self._owns_client:
            await self.client.aclose()

    def _record(self, attempt: outbox.AttemptResult) -> None:
        """Hand an attempt to the one recorder task, which writes whatever has finished meanwhile in one
        transaction (one commit for many requests; on SQLite, one turn of the write lock). The worker goes on
        with its next request meanwhile; until recorded, the delivery stays leased to this sender."""
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_batches(), name="webhooks-recorder")
        self._to_record.put_nowait(attempt)

    async def _record_batches(self) -> None:
        give_up_after = timedelta(hours=self.settings.webhook_retry_hours)
        while True:
            batch = [await self._to_record.get()]
            while not self._to_record.empty() and len(batch) < RECORD_BATCH:
                batch.append(self._to_record.get_nowait())

            async def write(batch=batch) -> list[WebhookDeliveryStatus | None]:
                async with self.sessions() as session, session.begin():
                    return await outbox.record_attempts(session, batch, now=self.clock(), give_up_after=give_up_after)

            try:
                statuses = await finishing(write())   # a stop lets the transaction finish
            except asyncio.CancelledError:
                raise
            except Exception:   # the database failed: the leases end and these deliveries are tried again
                log.exception("recording %d webhook attempt(s) failed", len(batch))
                statuses = []
            finally:
                for _ in batch:
                    self._to_record.task_done()
            for attempt, status in zip(batch, statuses, strict=False):
                self._count(attempt, status)

    @staticmethod
    def _count(attempt: outbox.AttemptResult, status: WebhookDeliveryStatus | None) -> None:
        delivery = attempt.delivery
        if status is None:
            log.warning("webhook delivery %s: its lease ran out before the answer was recorded", delivery.id)
            return
        result = {WebhookDeliveryStatus.DELIVERED: "delivered", WebhookDeliveryStatus.PENDING: "failed",
                  WebhookDeliveryStatus.GAVE_UP: "gave_up"}[status]
        WEBHOOK_DELIVERIES.labels(result=result).inc()
        if status is WebhookDeliveryStatus.GAVE_UP:
            log.warning("webhook delivery %s (%s) to endpoint %s given up after %s attempt(s): %s",
                        delivery.id, delivery.event_type, delivery.endpoint_id, delivery.attempt, attempt.error)

    async def _post(self, delivery: outbox.ClaimedDelivery) -> outbox.AttemptResult:
        """One request: its status code, or why it failed, and how long it took."""
        started = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            async with asyncio.timeout(self.timeout):
                addresses = await checked_addresses(delivery.url, self.settings.webhook_allow_private,
                                                    self.resolver)
                body = delivery_body(delivery, self.settings.public_base_url)
                headers = {"Content-Type": "application/json", "User-Agent": "OpenDeep-Webhooks/1",
                           EVENT_ID_HEADER: delivery.event_id, EVENT_TYPE_HEADER: delivery.event_type,
                           SIGNATURE_HEADER: signature_header(delivery.secret, int(time.time()), body)}
                request = pinned_request(self.client, delivery.url, addresses[0], headers, body)
                response = await self.client.send(request, stream=True)
                await response.aclose()   # the status is all we need; never read an endless body
        except UnsafeWebhookUrl as exc:
            # Refused by policy is final; a name that does not resolve may come back.
            return outbox.AttemptResult(delivery, None, str(exc), elapsed(), final=exc.refused)
        except TimeoutError:
            return outbox.AttemptResult(delivery, None, f"no answer within {self.timeout:g} s "
                                                        f"(WEBHOOK_TIMEOUT_SECONDS)", elapsed())
        except httpx.HTTPError as exc:
            return outbox.AttemptResult(delivery, None, f"{type(exc).__name__}: {exc}"[:500], elapsed())
        if 200 <= response.status_code < 300:
            return outbox.AttemptResult(delivery, response.status_code, None, elapsed())
        return outbox.AttemptResult(delivery, response.status_code,
                                    f"HTTP {response.status_code} {response.reason_phrase}"[:500], elapsed())


class WebhookComponent:
    """Runs the WebhookSender's loop; any number of processes may run one."""

    name = "webhooks"

    def __init__(self, runtime: Runtime) -> None:
        self.sender = WebhookSender(runtime.settings, runtime.sessions)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.sender.run_forever(), name="webhooks-sender")
        log.info("webhook sender started (%d per endpoint, %d at most, timeout %.0fs)", self.sender.per_endpoint,
                 self.sender.max_in_flight, self.sender.timeout)

    def health(self) -> dict:
        return {"ok": task_running(self._task), "in_flight": self.sender.in_flight}

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sender.close()
