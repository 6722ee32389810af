"""A fake OpenAI-compatible HTTP server for tests: the real `openai` SDK talks to it over HTTP via base_url.

    fake = FakeOpenAI()
    base_url = await fake.start()            # http://127.0.0.1:PORT/v1
    fake.queue_reply(tool_calls=[{"name": "lookup", "arguments": {"q": "dentist"}}])
    fake.queue_reply(content="Done.")
    ...                                      # fake.requests holds every request body, in order
    await fake.stop()

Replies are served FIFO; `responder(body) -> dict | None` (the same keys as queue_reply) answers first when
set. With nothing queued the server answers 500, so a test never hangs on a missing reply.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.responder: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
        self._replies: deque[dict[str, Any]] = deque()
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.base_url = ""

    def queue_reply(self, content: str | None = None, tool_calls: list[dict[str, Any]] | None = None,
                    delay: float = 0.0, status: int = 200) -> None:
        self._replies.append({"content": content, "tool_calls": tool_calls, "delay": delay, "status": status})

    @property
    def pending_replies(self) -> int:
        return len(self._replies)

    async def _chat_completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        spec = self.responder(body) if self.responder else None
        if spec is None:
            if not self._replies:
                return JSONResponse({"error": {"message": "fake OpenAI: no reply queued", "type": "server_error"}},
                                    status_code=500)
            spec = self._replies.popleft()
        if spec.get("delay"):
            await asyncio.sleep(spec["delay"])
        status = spec.get("status", 200)
        if status != 200:
            return JSONResponse({"error": {"message": f"fake OpenAI error {status}", "type": "server_error",
                                           "code": None}}, status_code=status)
        message: dict[str, Any] = {"role": "assistant", "content": spec.get("content")}
        finish = "stop"
        if spec.get("tool_calls"):
            finish = "tool_calls"
            message["tool_calls"] = [
                {"id": f"call_{next(self._ids)}", "type": "function",
                 "function": {"name": call["name"],
                              "arguments": call["arguments"] if isinstance(call["arguments"], str)
                              else json.dumps(call["arguments"])}}
                for call in spec["tool_calls"]
            ]
        return JSONResponse({
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    async def start(self) -> str:
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat_completions, methods=["POST"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)
            self._server = self._task = None
