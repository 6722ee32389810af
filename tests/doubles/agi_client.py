"""A FastAGI client that behaves like Asterisk 22's AGI(agi://...) application.

It sends the environment captured from a real Asterisk 22.10.1 (tests/captures/agi-env-*.raw), byte for
byte, with only the script, the AGI() arguments and chosen keys substituted; then it answers commands the way
agi-dialog-*.txt shows: GET VARIABLE from a dict (`200 result=1 (v)` / `200 result=0`), SET VARIABLE and
EXEC MSet (split like Asterisk's application arguments; tests/test_asterisk_mset.py checks it on a real one) into it,
GET FULL VARIABLE with ${...} substitution, `511` for CHANNEL STATUS on a dead channel (the `h` extension),
`510` for unknown commands, `520-` multi-line usage errors, and a `HANGUP` line in the middle of a command.
Commands are split with the rules of res_agi.c's parse_args (quotes and backslash escapes).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.doubles.captures import CAPTURES

ENV_ANSWERED = CAPTURES / "agi-env-answered.raw"
ENV_H_EXTENSION = CAPTURES / "agi-env-h-extension.raw"

REPLY_510 = b"510 Invalid or unknown command\n"
REPLY_511 = b"511 Command Not Permitted on a dead channel or intercept routine\n"
# res_agi.c's framing of a usage error; the usage text itself comes from Asterisk's XML docs (not captured).
USAGE_FIRST = b"520-Invalid command syntax.  Proper usage follows:\n"
USAGE_LAST = b"520 End of proper usage.\n"
USAGES = {
    "GET VARIABLE": b" Usage: GET VARIABLE <variablename>\n",
    "SET VARIABLE": b" Usage: SET VARIABLE <variablename> <value>\n",
    "GET FULL VARIABLE": b" Usage: GET FULL VARIABLE <expression> [<channelname>]\n",
}


def parse_args(line: str) -> list[str]:
    """res_agi.c parse_args(): split a command line into words, honouring "quotes" and \\ escapes."""
    words: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None:
                current = []
                words.append("")
            continue
        if char in " \t" and not quoted and not escaped:
            if current is not None:
                words[-1] = "".join(current)
                current = None
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        if current is None:
            current = []
            words.append("")
        current.append(char)
        escaped = False
    if current is not None:
        words[-1] = "".join(current)
    return words


def separate_app_args(text: str, delim: str, limit: int = 99) -> list[str]:
    """main/app.c __ast_app_separate_args() with remove_chars (AST_STANDARD_APP_ARGS /
    AST_NONSTANDARD_APP_ARGS, as MSet uses them): split at `delim` outside (), [] and "quotes"; quotes are
    dropped, a backslash makes the next character literal; the last of `limit` fields keeps the rest as is."""
    fields: list[str] = []
    index, paren, bracket, quote = 0, 0, 0, False
    was_delim = False
    while index < len(text) and len(fields) < limit - 1:
        current: list[str] = []
        was_delim = False
        while index < len(text):
            char = text[index]
            if char == "(":
                paren += 1
            elif char == ")" and paren:
                paren -= 1
            elif char == "[":
                bracket += 1
            elif char == "]" and bracket:
                bracket -= 1
            elif char == '"' and delim != '"':
                quote = not quote
                index += 1
                continue
            elif char == "\\":
                index += 1
                if index < len(text):
                    current.append(text[index])
                    index += 1
                continue
            elif char == delim and not paren and not quote and not bracket:
                index += 1
                was_delim = True
                break
            current.append(char)
            index += 1
        fields.append("".join(current))
    if index < len(text) or was_delim:
        fields.append(text[index:])
    return fields


TEST_FASTAGI_SECRET = "test-fastagi-secret-0123456789"   # FASTAGI_SECRET of the tests' settings (conftest.py)
LOCAL_TWO_ROUTES = ("call-start", "call-end")              # the routes the dialplan runs on the Local ;2 half


def build_environment(template: Path | bytes = ENV_ANSWERED, *, script: str, args: tuple[str, ...] = (),
                      agi_host: str = "127.0.0.1:4573", overrides: dict[str, str] | None = None) -> bytes:
    """The captured environment with `agi_network_script`/`agi_request` pointing at `script`, the AGI()
    arguments replaced by `args`, and `overrides` applied; every other byte as Asterisk sent it."""
    raw = template.read_bytes() if isinstance(template, Path) else template
    overrides = dict(overrides or {})
    overrides["agi_network_script"] = script
    overrides["agi_request"] = f"agi://{agi_host}/{script}"
    lines = []
    for line in raw.split(b"\n"):
        if not line:
            continue
        key, _, value = line.partition(b": ")
        name = key.decode()
        if name.startswith("agi_arg_"):
            continue
        if name in overrides:
            value = overrides.pop(name).encode()
        lines.append(key + b": " + value)
    for index, arg in enumerate(args, start=1):
        lines.append(f"agi_arg_{index}: {arg}".encode())
    return b"\n".join(lines) + b"\n\n"


@dataclass
class AgiRun:
    """What happened in one session, as Asterisk would see it."""

    commands: list[str] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    agi_status: str = ""          # SUCCESS (server closed), FAILURE (no server), HANGUP (we hung up)


class FakeAsteriskAgi:
    """One AGI() execution against a FastAGI server.

    variables: the channel's variables (GET VARIABLE reads them, SET VARIABLE writes them).
    dead: the channel is already hung up (the `h` extension): CHANNEL STATUS and ANSWER get 511.
    hangup_after: after answering this many commands, the channel hangs up in the middle of the next one:
      Asterisk writes `HANGUP` and (hangup_close=True) closes the socket, or goes on in dead mode.
    """

    def __init__(self, port: int, *, script: str, variables: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), template: Path | bytes = ENV_ANSWERED, host: str = "127.0.0.1",
                 overrides: dict[str, str] | None = None, dead: bool = False, hangup_after: int | None = None,
                 hangup_close: bool = True, timeout: float = 5.0, secret: str | None = TEST_FASTAGI_SECRET):
        self.host, self.port = host, port
        overrides = dict(overrides or {})
        call_id = args[0] if args else (variables or {}).get("OPENDEEP_CALL_ID")
        if call_id and "agi_uniqueid" not in overrides:
            # The Uniqueid our Originate pre-assigns to the half this route runs on, as on a real Asterisk.
            overrides["agi_uniqueid"] = f"opendeep-{call_id}" + ("-b" if script in LOCAL_TWO_ROUTES else "")
        if secret is not None:
            script = f"{script}?secret={secret}"   # as the rendered dialplan's AGI(agi://.../<route>?secret=...)
        self.environment = build_environment(template, script=script, args=args, agi_host=f"{host}:{port}",
                                             overrides=overrides)
        self.variables = dict(variables or {})
        self.dead = dead
        self.hangup_after = hangup_after
        self.hangup_close = hangup_close
        self.timeout = timeout
        self.channel = re.search(rb"agi_channel: (.*)\n", self.environment)[1].decode()

    async def run(self) -> AgiRun:
        run = AgiRun(variables=self.variables)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            run.agi_status = "FAILURE"
            return run
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(self.environment)
                await writer.drain()
                run.agi_status = await self._dialog(reader, writer, run)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        return run

    async def _dialog(self, reader, writer, run: AgiRun) -> str:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return "SUCCESS"  # the server closed: AGI() returns, the dialplan goes on
            except ConnectionError:
                return "SUCCESS"
            command = line.decode().rstrip("\r\n")
            run.commands.append(command)
            if self.hangup_after is not None and len(run.commands) > self.hangup_after and not self.dead:
                self.dead = True
                writer.write(b"HANGUP\n")
                run.replies.append(b"HANGUP\n")
                if self.hangup_close:
                    await writer.drain()
                    return "HANGUP"
            reply = self.answer(command)
            run.replies.append(reply)
            writer.write(reply)
            await writer.drain()

    def answer(self, command: str) -> bytes:
        """The reply Asterisk 22 sends to `command` on this channel."""
        words = parse_args(command)
        upper = [word.upper() for word in words]
        if upper[:2] == ["GET", "VARIABLE"]:
            if len(words) != 3:
                return self._usage("GET VARIABLE")
            value = self.variables.get(words[2])
            return b"200 result=0\n" if value is None else f"200 result=1 ({value})\n".encode()
        if upper[:2] == ["SET", "VARIABLE"]:
            if len(words) != 4:
                return self._usage("SET VARIABLE")
            self.variables[words[2]] = words[3]
            return b"200 result=1\n"
        if upper[:3] == ["GET", "FULL", "VARIABLE"]:
            if len(words) not in (4, 5):
                return self._usage("GET FULL VARIABLE")
            value = re.sub(r"\$\{([^}]+)\}", lambda m: self._lookup(m[1]), words[3])
            return f"200 result=1 ({value})\n".encode()
        if upper[:2] == ["CHANNEL", "STATUS"]:
            return REPLY_511 if self.dead else b"200 result=6\n"
        if upper[:1] == ["ANSWER"]:
            return REPLY_511 if self.dead else b"200 result=0\n"
        if upper[:1] == ["VERBOSE"]:
            return b"200 result=1\n"
        if upper[:1] == ["NOOP"]:
            return b"200 result=0\n"
        if upper[:1] == ["EXEC"] and len(words) >= 2:
            if words[1].upper() != "MSET":
                return b"200 result=-2\n"   # res_agi: the application was not found
            for pair in separate_app_args(words[2] if len(words) > 2 else "", ","):
                name_value = separate_app_args(pair, "=", limit=2)
                if len(name_value) == 2:
                    self.variables[name_value[0]] = name_value[1]
            return b"200 result=0\n"
        return REPLY_510

    def _lookup(self, name: str) -> str:
        if name == "CHANNEL":
            return self.channel
        return self.variables.get(name, "")

    @staticmethod
    def _usage(command: str) -> bytes:
        return USAGE_FIRST + USAGES[command] + USAGE_LAST
