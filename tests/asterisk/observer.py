"""The tests' own AMI session on the private Asterisk (user opendeep-test, read = all): it sees what OpenDeep's
session sees plus the test callees' UserEvents, and never acts on OpenDeep's calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tests.asterisk.instance import TEST_AMI_SECRET, TEST_AMI_USER

Message = dict[str, str]


class AmiObserver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()
        self._reader_task: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        await reader.readline()   # banner
        self._reader_task = asyncio.create_task(self._read(reader))
        self._writer.write(f"Action: Login\r\nUsername: {TEST_AMI_USER}\r\nSecret: {TEST_AMI_SECRET}\r\n"
                           f"ActionID: observer-login\r\n\r\n".encode())
        login = await self.wait_for(lambda m: m.get("ActionID") == "observer-login", 10)
        if login.get("Response") != "Success":
            raise RuntimeError(f"test AMI login refused: {login}")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task

    async def _read(self, reader: asyncio.StreamReader) -> None:
        current: Message = {}
        while True:
            line = await reader.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if text:
                key, _, value = text.partition(":")
                current.setdefault(key.strip(), value.strip())
                continue
            if current:
                async with self._changed:
                    self.messages.append(current)
                    self._changed.notify_all()
                current = {}

    async def action(self, action: str, **headers: str) -> Message:
        """Send one AMI action (e.g. an Originate of a test caller) and return its response."""
        action_id = f"observer-{action.lower()}-{len(self.messages)}"
        lines = [f"Action: {action}", f"ActionID: {action_id}"] + [f"{k}: {v}" for k, v in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await self.wait_for(lambda m: m.get("ActionID") == action_id and "Response" in m, 10,
                                   what=f"the response to {action}")

    def events(self, name: str) -> list[Message]:
        return [m for m in self.messages if m.get("Event") == name]

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float, what: str = "") -> Message:
        """The first message (seen so far or arriving) that satisfies `predicate`."""
        async def _found() -> Message:
            async with self._changed:
                while True:
                    for message in self.messages:
                        if predicate(message):
                            return message
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(_found(), timeout)
        except TimeoutError:
            raise AssertionError(f"no AMI message {what or 'matching'} within {timeout:g} s") from None

    async def wait_event(self, name: str, timeout: float, **headers: str) -> Message:
        return await self.wait_for(
            lambda m: m.get("Event") == name and all(m.get(k) == v for k, v in headers.items()), timeout,
            what=f"{name} {headers}")
