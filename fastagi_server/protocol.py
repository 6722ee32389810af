"""The FastAGI wire, as Asterisk 22 speaks it. Bytes only: nothing here knows about calls or tasks.

A session is: Asterisk connects, sends the environment (`agi_key: value\\n` lines, then one empty line), then
waits for commands. Each command is one line; each reply is one line (`200 result=1 (data)`, `510 ...`,
`511 ...`), except usage errors, which come as `520-...` lines closed by `520 End of proper usage.`. When the
channel hangs up during the session Asterisk may send a bare `HANGUP` line (FastAGI's stand-in for SIGHUP).
Closing the socket ends the AGI() application (AGISTATUS=SUCCESS) and the dialplan goes on.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

HEADER_TIMEOUT_SECONDS = 5.0     # Asterisk sends the whole environment at once; 5 s is a dead or hostile peer
MAX_HEADER_BYTES = 16 * 1024     # a real environment is ~700 bytes plus the AGI() arguments
COMMAND_TIMEOUT_SECONDS = 30.0   # the commands we send (GET/SET VARIABLE, VERBOSE) answer in milliseconds
MAX_REPLY_LINE_BYTES = 64 * 1024

_REPLY = re.compile(r"^(?P<code>\d{3})(?P<sep>[ -])(?P<rest>.*)$")
_RESULT = re.compile(r"^result=(?P<result>\S*)(?:\s+\((?P<data>.*)\))?(?:\s+(?P<extra>.*))?$")
_SAFE_WORD = re.compile(r"^[^\s\"\\]+$")


class AgiError(Exception):
    """Base of every FastAGI failure."""


class AgiHeaderError(AgiError):
    """The environment block was not complete, too large, too slow, or not `key: value` lines."""


class AgiHangup(AgiError):
    """The channel hung up (a `HANGUP` line) or Asterisk closed the socket while we waited for a reply."""


class AgiCommandError(AgiError):
    """Asterisk refused a command: 510 (unknown), 511 (dead channel), 520 (usage). `reply` tells which."""

    def __init__(self, command: str, reply: AgiReply):
        self.command = command
        self.reply = reply
        super().__init__(f"AGI command {command!r} refused: {reply.code} {reply.text}")


class AgiDeadChannel(AgiCommandError):
    """511: the command needs a live channel (e.g. CHANNEL STATUS in the `h` extension)."""


class AgiInvalidCommand(AgiCommandError):
    """510: Asterisk does not know this command."""


class AgiUsageError(AgiCommandError):
    """520: wrong arguments; `reply.usage` holds the usage text Asterisk sent."""


# ---------------------------------------------------------------- the environment


@dataclass(frozen=True)
class AgiEnvironment:
    """What Asterisk told us when it connected.

    `variables` are the `agi_*` keys as sent; `args` are `agi_arg_1..N` in order (dialplan quoting already
    undone by Asterisk); `script` is `agi_network_script` without its query string, `query` the parsed query.
    """

    variables: dict[str, str]
    args: tuple[str, ...] = ()
    script: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        return self.variables.get(key, default)

    def query_value(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query argument (`call-start?x=1` -> query_value("x") == "1")."""
        values = self.query.get(name)
        return values[0] if values else default

    @property
    def channel(self) -> str:
        return self.get("agi_channel")

    @property
    def uniqueid(self) -> str:
        return self.get("agi_uniqueid")

    @property
    def extension(self) -> str:
        return self.get("agi_extension")


def parse_environment(block: bytes) -> AgiEnvironment:
    """Parse the environment block (without or with its closing empty line). Raises AgiHeaderError."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")  # caller ID names are not always UTF-8; never fail a call on that
    variables: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        key, sep, value = line.partition(":")
        # `agi_accountcode: ` arrives with a trailing space and no value: keep the value exactly empty.
        if not sep or not key.startswith("agi_") or " " in key:
            raise AgiHeaderError(f"AGI environment line {number} is not 'agi_key: value': {line[:80]!r}")
        variables[key] = value[1:] if value.startswith(" ") else value
    if "agi_network_script" not in variables and "agi_request" not in variables:
        raise AgiHeaderError("AGI environment has neither agi_network_script nor agi_request")
    args = []
    index = 1
    while f"agi_arg_{index}" in variables:
        args.append(variables[f"agi_arg_{index}"])
        index += 1
    script, query = split_script(variables.get("agi_network_script") or _script_from_request(variables))
    return AgiEnvironment(variables=variables, args=tuple(args), script=script, query=query)


def split_script(raw: str) -> tuple[str, dict[str, list[str]]]:
    """`call-start?x=1&y=2` -> ("call-start", {"x": ["1"], "y": ["2"]}); leading/trailing slashes dropped."""
    parts = urlsplit(raw)
    return parts.path.strip("/"), parse_qs(parts.query, keep_blank_values=True)


def _script_from_request(variables: dict[str, str]) -> str:
    parts = urlsplit(variables.get("agi_request", ""))
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def read_environment(reader: asyncio.StreamReader, *, timeout: float | None = HEADER_TIMEOUT_SECONDS,
                           max_bytes: int = MAX_HEADER_BYTES) -> AgiEnvironment:
    """Read and parse the environment block: at most `max_bytes`, within `timeout` seconds in total (None:
    the caller's own deadline applies). Raises AgiHeaderError for a peer that is too slow, sends too much,
    or closes before the empty line.
    """
    if timeout is None:
        return parse_environment(await _read_block(reader, max_bytes))
    try:
        async with asyncio.timeout(timeout):
            block = await _read_block(reader, max_bytes)
    except TimeoutError:
        raise AgiHeaderError(f"no complete AGI environment within {timeout:g} s") from None
    return parse_environment(block)


async def _read_block(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    # One readuntil for the whole block: the stream's own limit (set by the server) bounds the buffering,
    # and EOF before the empty line raises IncompleteReadError instead of returning b"" forever.
    try:
        block = await reader.readuntil(b"\n\n")
    except asyncio.IncompleteReadError as exc:
        raise AgiHeaderError(
            f"connection closed inside the AGI environment after {len(exc.partial)} bytes") from None
    except asyncio.LimitOverrunError:
        raise AgiHeaderError(f"AGI environment larger than the {max_bytes}-byte limit") from None
    if len(block) > max_bytes:
        raise AgiHeaderError(f"AGI environment larger than the {max_bytes}-byte limit")
    return block


# ---------------------------------------------------------------- replies


@dataclass(slots=True)
class AgiReply:
    """One parsed reply. `result` is the text after `result=`, `data` what stood in parentheses (None if
    there were none), `usage` the text of a multi-line 520."""

    code: int
    text: str
    result: str = ""
    data: str | None = None
    usage: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 200


def parse_reply_line(line: str) -> AgiReply:
    """Parse one single-line reply (`200 result=1 (x)`, `510 ...`, `511 ...`, `520 ...`)."""
    line = line.rstrip("\r\n")
    if line.startswith("200 result="):  # the common case, without regular expressions
        result, _, tail = line[11:].partition(" ")
        data = None
        if tail.startswith("("):
            end = tail.rfind(")")
            data = tail[1:end] if end > 0 else None
        return AgiReply(code=200, text=line[4:], result=result, data=data)
    match = _REPLY.match(line)
    if not match:
        raise AgiError(f"not an AGI reply: {line[:120]!r}")
    code, rest = int(match["code"]), match["rest"]
    if code != 200:
        return AgiReply(code=code, text=rest)
    result = _RESULT.match(rest)
    if not result:
        return AgiReply(code=code, text=rest)
    return AgiReply(code=code, text=rest, result=result["result"], data=result["data"])


def quote_argument(value: str) -> str:
    """Quote one command argument so Asterisk's AGI argument parser gives back exactly `value`."""
    if "\n" in value or "\r" in value:
        raise ValueError("an AGI argument cannot contain a line break")
    if _SAFE_WORD.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------- one session


class AgiSession:
    """One FastAGI connection after its environment was read: send commands, get parsed replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, env: AgiEnvironment, *,
                 command_timeout: float | None = COMMAND_TIMEOUT_SECONDS):
        self.reader = reader
        self.writer = writer
        self.env = env
        self.command_timeout = command_timeout
        self.hung_up = False

    async def command(self, line: str) -> AgiReply:
        """Send one command line and return its reply; raise AgiCommandError subclasses for 510/511/520,
        AgiHangup when the channel hung up or the socket closed."""
        if "\n" in line or "\r" in line:
            raise ValueError("an AGI command is one line")
        if self.writer.is_closing():
            raise AgiHangup(f"AGI connection already closed before {line!r}")
        self.writer.write(line.encode("utf-8") + b"\n")
        try:
            if self.command_timeout is None:  # the server bounds the whole session instead: no timer per command
                await self.writer.drain()
                reply = await self._read_reply()
            else:
                async with asyncio.timeout(self.command_timeout):
                    await self.writer.drain()
                    reply = await self._read_reply()
        except TimeoutError:
            raise AgiError(f"no reply to AGI command {line!r} in time ({self.command_timeout} s)") from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.hung_up = True
            raise AgiHangup(f"AGI connection closed while waiting for the reply to {line!r}") from exc
        if reply.code == 200:
            return reply
        raise _ERRORS.get(reply.code, AgiCommandError)(line, reply)

    async def _read_reply(self) -> AgiReply:
        while True:
            raw = await self._readline()
            if raw == "HANGUP":
                # Asterisk's notice that the channel is gone; the reply to our command still follows
                # (on a dead channel), so remember it and keep reading.
                self.hung_up = True
                continue
            if raw.startswith("520-"):
                return await self._read_usage(raw)
            reply = parse_reply_line(raw)
            if reply.code == 100:  # "100 result=0 Trying..." precedes the real reply
                continue
            return reply

    async def _read_usage(self, first: str) -> AgiReply:
        lines = [first[4:]]
        while True:
            raw = await self._readline()
            if raw.startswith("520 "):
                return AgiReply(code=520, text=first[4:], usage="\n".join(lines[1:]))
            lines.append(raw)
            if sum(len(part) for part in lines) > MAX_REPLY_LINE_BYTES:
                raise AgiError("AGI 520 usage text longer than the limit")

    async def _readline(self) -> str:
        line = await self.reader.readuntil(b"\n")
        if len(line) > MAX_REPLY_LINE_BYTES:
            raise AgiError("AGI reply line longer than the limit")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    async def get_variable(self, name: str) -> str | None:
        """A channel variable's value, or None when it is not set (`200 result=0`)."""
        reply = await self.command(f"GET VARIABLE {quote_argument(name)}")
        return reply.data if reply.result == "1" else None

    async def get_full_variable(self, expression: str) -> str | None:
        """Evaluate a dialplan expression such as `${CHANNEL}` on the channel."""
        reply = await self.command(f"GET FULL VARIABLE {quote_argument(expression)}")
        return reply.data if reply.result == "1" else None

    async def set_variable(self, name: str, value: str) -> None:
        """Set a channel variable (the dialplan reads it after AGI() returns)."""
        await self.command(f"SET VARIABLE {quote_argument(name)} {quote_argument(str(value))}")

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command(f"VERBOSE {quote_argument(message)} {int(level)}")

    async def channel_status(self) -> int:
        """CHANNEL STATUS (6 = up). Raises AgiDeadChannel in the `h` extension."""
        return int((await self.command("CHANNEL STATUS")).result)

    async def close(self) -> None:
        """End the AGI: Asterisk sets AGISTATUS=SUCCESS and the dialplan continues. The transport flushes
        what is buffered and closes by itself; nothing is left to wait for."""
        if not self.writer.is_closing():
            self.writer.close()


_ERRORS: dict[int, type[AgiCommandError]] = {510: AgiInvalidCommand, 511: AgiDeadChannel, 520: AgiUsageError}
