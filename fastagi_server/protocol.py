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
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qs, urlsplit

HEADER_TIMEOUT_SECONDS = 5.0     # Asterisk sends the whole environment at once; 5 s is a dead or hostile peer
MAX_HEADER_BYTES = 16 * 1024     # a real environment is ~700 bytes plus the AGI() arguments
MAX_REPLY_LINE_BYTES = 64 * 1024

_REPLY = re.compile(r"^(?P<code>\d{3})(?P<sep>[ -])(?P<rest>.*)$")
_RESULT = re.compile(r"^result=(?P<result>\S*)(?:\s+\((?P<data>.*)\))?(?:\s+(?P<extra>.*))?$")
_SAFE_WORD = re.compile(r"^[^\s\"\\]+$")
_ENV_PAIR = re.compile(r"^(agi_[^: \n]*): ?([^\n]*)$", re.MULTILINE)
_NON_EMPTY_LINE = re.compile(r"[^\n]+")


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
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    # Every session passes here: one regular expression over the block (in C), then a check that it took every
    # line; the line-by-line loop only runs to name the line that is not `agi_key: value`.
    # `agi_accountcode: ` arrives with a trailing space and no value: the value is kept exactly empty.
    pairs = _ENV_PAIR.findall(text)
    body = text.rstrip("\n")
    lines = body.count("\n") + 1 if body and "\n\n" not in body else len(_NON_EMPTY_LINE.findall(text))
    if len(pairs) != lines:
        for number, line in enumerate(text.split("\n"), start=1):
            if line and not _ENV_PAIR.fullmatch(line):
                raise AgiHeaderError(f"AGI environment line {number} is not 'agi_key: value': {line[:80]!r}")
    variables = dict(pairs)
    if "agi_network_script" not in variables and "agi_request" not in variables:
        raise AgiHeaderError("AGI environment has neither agi_network_script nor agi_request")
    args = []
    index = 1
    while f"agi_arg_{index}" in variables:
        args.append(variables[f"agi_arg_{index}"])
        index += 1
    try:
        script, query = split_script(variables.get("agi_network_script") or _script_from_request(variables))
    except ValueError as exc:  # urlsplit refuses e.g. `agi://[bad/...` (an unclosed IPv6 bracket)
        raise AgiHeaderError(f"AGI script is not a valid agi:// path or URL: {exc}") from None
    return AgiEnvironment(variables=variables, args=tuple(args), script=script, query=query)


def split_script(raw: str) -> tuple[str, dict[str, list[str]]]:
    """`call-start?x=1&y=2` -> ("call-start", {"x": ["1"], "y": ["2"]}); leading/trailing slashes dropped."""
    if _PLAIN_SCRIPT.fullmatch(raw):
        # What our dialplan sends (`call-start?secret=...`): split by hand, as urlsplit and parse_qs would,
        # at a fraction of their cost; anything else (escapes, '+', fragments, a scheme) goes through them.
        path, _, query = raw.partition("?")
        found: dict[str, list[str]] = {}
        for pair in query.split("&") if query else ():
            if pair:
                name, _, value = pair.partition("=")
                found.setdefault(name, []).append(value)
        return path.strip("/"), found
    parts = urlsplit(raw)
    return parts.path.strip("/"), parse_qs(parts.query, keep_blank_values=True) if parts.query else {}


_PLAIN_SCRIPT = re.compile(r"[A-Za-z0-9._~-][A-Za-z0-9._~/-]*(?:\?[A-Za-z0-9._~=&-]*)?")


def _script_from_request(variables: dict[str, str]) -> str:
    parts = urlsplit(variables.get("agi_request", ""))
    return parts.path + (f"?{parts.query}" if parts.query else "")


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
    parsed = _RESULT.match(rest)
    if not parsed:
        return AgiReply(code=code, text=rest)
    return AgiReply(code=code, text=rest, result=parsed["result"], data=parsed["data"])


def quote_argument(value: str) -> str:
    """Quote one command argument so Asterisk's AGI argument parser gives back exactly `value`."""
    if "\n" in value or "\r" in value:
        raise ValueError("an AGI argument cannot contain a line break")
    if _SAFE_WORD.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------- one session


class AgiSession:
    """One FastAGI session after its environment was read: send commands, get parsed replies.

    It writes to its AgiConnection's transport and reads the connection's reply lines. There is no timer per
    command: the server bounds the whole session (SESSION_TIMEOUT_SECONDS in server.py).

    One command at a time, never pipelined: res_agi reads commands with stdio fgets() and waits for the next
    one with poll(), so a second line already sitting in stdio's buffer is not seen until more bytes arrive,
    and the session stalls. `set_variables` is the way to set several variables in one round trip.
    """

    __slots__ = ("connection", "env", "hung_up")

    def __init__(self, connection: AgiConnection, env: AgiEnvironment):
        self.connection = connection
        self.env = env
        self.hung_up = False

    async def command(self, line: str) -> AgiReply:
        """Send one command line and return its reply; raise AgiCommandError subclasses for 510/511/520,
        AgiHangup when the channel hung up or the socket closed."""
        if "\n" in line or "\r" in line:
            raise ValueError("an AGI command is one line")
        transport = self.connection.transport
        if transport is None or transport.is_closing():
            raise AgiHangup(f"AGI connection already closed before {line!r}")
        transport.write(line.encode("utf-8") + b"\n")
        try:
            reply = await self._read_reply()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.hung_up = True
            raise AgiHangup(f"AGI connection closed while waiting for the reply to {line!r}") from exc
        if reply.code == 200:
            return reply
        raise _ERRORS.get(reply.code, AgiCommandError)(line, reply)

    async def _read_reply(self) -> AgiReply:
        readline = self.connection.readline
        while True:
            raw = await readline()
            if raw.startswith("200 result="):  # the common case first
                return parse_reply_line(raw)
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
            raw = await self.connection.readline()
            if raw.startswith("520 "):
                return AgiReply(code=520, text=first[4:], usage="\n".join(lines[1:]))
            lines.append(raw)
            if sum(len(part) for part in lines) > MAX_REPLY_LINE_BYTES:
                raise AgiError("AGI 520 usage text longer than the limit")

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

    async def set_variables(self, values: Mapping[str, str]) -> None:
        """Set several channel variables in ONE round trip: `EXEC MSet A=v,B=v` (see mset_command). One
        variable goes as a plain SET VARIABLE. Raises AgiError if Asterisk has no MSet application."""
        if len(values) == 1:
            ((name, value),) = values.items()
            await self.set_variable(name, value)
            return
        line = mset_command(values)
        reply = await self.command(line)
        if reply.result == "-2":  # res_agi: "Could not find application"
            raise AgiCommandError(line, reply)

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command(f"VERBOSE {quote_argument(message)} {int(level)}")

    async def channel_status(self) -> int:
        """CHANNEL STATUS (6 = up). Raises AgiDeadChannel in the `h` extension."""
        reply = await self.command("CHANNEL STATUS")
        try:
            return int(reply.result)
        except ValueError:
            raise AgiError(f"CHANNEL STATUS answered {reply.text!r}, not a channel state number") from None

    async def close(self) -> None:
        """End the AGI: Asterisk sets AGISTATUS=SUCCESS and the dialplan continues. The transport flushes
        what is buffered and closes by itself; nothing is left to wait for."""
        self.connection.close()


# Asterisk's application-argument parser (main/app.c, __ast_app_separate_args, as MSet's comma split uses
# it) treats these specially: `,` separates, `"` quotes, `\\` escapes, and commas inside () or [] do not
# separate. A backslash before each makes it literal, and the parser drops the backslash.
_APP_ARG_ESCAPES = str.maketrans({char: "\\" + char for char in '\\",()[]'})
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHECKED_NAMES: set[str] = set()


def mset_command(values: Mapping[str, str]) -> str:
    """The one AGI command that sets all `values`: `EXEC MSet "A=v1,B=v2"`.

    Three parsers read it, each undoing one layer: res_agi's parse_args (the outer quote_argument), MSet's
    comma split (`\\` before `\\ " , ( ) [ ]`), then MSet's split of each pair at its FIRST `=`, which
    keeps the rest (an `=` in a value) as it is. EXEC does not substitute `${...}`: a value is set literally.
    tests/test_asterisk_mset.py shows a value with all of these surviving a real Asterisk 22.
    """
    if not values:
        raise ValueError("MSet needs at least one variable")
    if len(values) > 99:  # MSet parses at most 99 pairs
        raise ValueError("MSet sets at most 99 variables at once")
    pairs = []
    for name, value in values.items():
        if name not in _CHECKED_NAMES:
            if not _VARIABLE_NAME.fullmatch(name):
                raise ValueError(f"not a channel variable name for MSet: {name!r}")
            if len(_CHECKED_NAMES) < 1000:   # the routes use a handful of constant names
                _CHECKED_NAMES.add(name)
        pairs.append(name + "=" + str(value).translate(_APP_ARG_ESCAPES))
    return "EXEC MSet " + quote_argument(",".join(pairs))


_ERRORS: dict[int, type[AgiCommandError]] = {510: AgiInvalidCommand, 511: AgiDeadChannel, 520: AgiUsageError}


# ---------------------------------------------------------------- the server side of a connection


class AgiConnection(asyncio.Protocol):
    """The server side of one FastAGI connection, read straight from the transport.

    Cheaper than a StreamReader plus a task per connection: the environment is collected in data_received
    (at most `max_header_bytes`, up to its empty line) and only a complete, parsed one is handed on, as
    `on_environment(connection, env)`. A peer that sends too much, no AGI, or closes early is refused once with
    `on_refused(connection, AgiHeaderError)` and closed; one too slow is refused by `expire_header()`, which the
    server's sweep calls (no timer per connection). After the environment, `session` (an AgiSession) reads the
    reply lines.
    """

    def __init__(self, on_environment: Callable[[AgiConnection, AgiEnvironment], None],
                 on_refused: Callable[[AgiConnection, AgiHeaderError], None], *,
                 header_timeout: float = HEADER_TIMEOUT_SECONDS, max_header_bytes: int = MAX_HEADER_BYTES):
        self.on_environment = on_environment
        self.on_refused = on_refused
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.session: AgiSession | None = None
        # Loop time of the connection (the header deadline and FASTAGI_SECONDS count from here). Set when the
        # protocol is made, not in connection_made, which the loop calls a moment later.
        self.connected_at = asyncio.get_running_loop().time()
        self._header = bytearray()
        self._tail = b""                 # an incomplete reply line
        self._lines: deque[bytes] = deque()
        self._queued = 0                 # bytes in _lines and _tail, for flow control
        self._paused = False
        self._eof = False
        self._waiter: asyncio.Future | None = None

    @property
    def peer(self):
        return self.transport.get_extra_info("peername") if self.transport else None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # the transport flushes what is buffered and closes by itself

    # -------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's protocol always gets a read/write transport (asyncio's or uvloop's, which does not
        # subclass asyncio.Transport, hence no isinstance check).
        self.transport = cast(asyncio.Transport, transport)
        if self._eof:  # refused before the loop handed us the transport: close it now
            transport.close()

    def expire_header(self, now: float) -> None:
        """Refuse the connection if its environment is not complete `header_timeout` seconds after it opened."""
        if self.session is None and now - self.connected_at >= self.header_timeout:
            self._refuse(f"no complete AGI environment within {self.header_timeout:g} s")

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            if self._eof:  # refused: whatever still arrives is dropped
                return
            data = self._environment_data(data)
            if not data:
                return
        tail = self._tail + data if self._tail else data
        *lines, self._tail = tail.split(b"\n")
        self._lines.extend(lines)
        self._queued += len(data)
        if (self._queued > 2 * MAX_REPLY_LINE_BYTES and not self._paused  # a peer talking, nobody asking
                and self.transport is not None):
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        if self.session is None:
            self._refuse(f"connection closed inside the AGI environment after {len(self._header)} bytes")
            return False
        self._eof = True
        self._wake()
        return True  # keep our side open: the route notices the EOF at its next reply and ends the AGI

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is None and not self._eof:
            self._eof = True
            self.on_refused(self, AgiHeaderError(
                f"connection closed inside the AGI environment after {len(self._header)} bytes"))
        self._eof = True
        self._wake()

    # -------------------------------------------------------- the environment

    def _environment_data(self, data: bytes) -> bytes:
        """Collect environment bytes; returns what followed the empty line (b"" until then)."""
        start = max(len(self._header) - 1, 0)
        self._header += data
        end = self._header.find(b"\n\n", start)
        if end < 0 or end + 2 > self.max_header_bytes:
            if len(self._header) > self.max_header_bytes:
                self._refuse(f"AGI environment larger than the {self.max_header_bytes}-byte limit")
            return b""
        block, rest = bytes(self._header[:end + 2]), bytes(self._header[end + 2:])
        try:
            env = parse_environment(block)
        except AgiHeaderError as exc:
            self._refuse(exc)
            return b""
        self.session = AgiSession(self, env)
        self.on_environment(self, env)
        return rest

    def _refuse(self, error: AgiHeaderError | str) -> None:
        if self._eof:
            return
        self._eof = True  # refused once; nothing more is read
        self.on_refused(self, error if isinstance(error, AgiHeaderError) else AgiHeaderError(error))
        self.close()

    # -------------------------------------------------------- reply lines

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def readline(self) -> str:
        """The next reply line, without its line break. IncompleteReadError at EOF (the session turns it
        into AgiHangup), AgiError for a line over MAX_REPLY_LINE_BYTES."""
        while not self._lines:
            if len(self._tail) > MAX_REPLY_LINE_BYTES:
                raise AgiError("AGI reply line longer than the limit")
            if self._eof:
                raise asyncio.IncompleteReadError(self._tail, None)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        line = self._lines.popleft()
        self._queued -= len(line) + 1
        if self._paused and self._queued <= MAX_REPLY_LINE_BYTES and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if len(line) > MAX_REPLY_LINE_BYTES:
            raise AgiError("AGI reply line longer than the limit")
        return line.decode("utf-8", "replace").rstrip("\r")
