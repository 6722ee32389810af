"""A real HTTP receiver for webhook tests (uvicorn on 127.0.0.1): records every POST to /hook/{name} and answers
as the test says: a status code per name, or holding the request until the test releases it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.local_http import LocalHttpServer


@dataclass
class Received:
    name: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    received: list[Received] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)          # name -> status code (default 200)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # name -> answered once set
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: LocalHttpServer | None = None

    async def _hook(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.received.append(Received(name, {k.lower(): v for k, v in request.headers.items()},
                                      await request.body()))
        self.arrived.set()
        if name in self.hold:
            await self.hold[name].wait()
        return Response("ok", status_code=self.status.get(name, 200))

    async def start(self) -> WebhookReceiver:
        self.server = LocalHttpServer(Starlette(routes=[Route("/hook/{name}", self._hook, methods=["POST"])]))
        await self.server.start()
        return self

    def url(self, name: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/hook/{name}"

    def to(self, name: str) -> list[Received]:
        return [r for r in self.received if r.name == name]

    async def stop(self) -> None:
        for event in self.hold.values():
            event.set()
        if self.server is not None:
            await self.server.stop()
