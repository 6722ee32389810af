"""A strict reader and a small interpreter for extensions_opendeep.conf -- not Asterisk, but as close to its
rules as this file needs. The real check of the shipped file is a real Asterisk 22 (tests/test_asterisk_calls.py,
tests/test_asterisk_faults.py); this module is what the Asterisk simulator (asterisk_sim.py, for `make demo` and the
load tests) runs the shipped file with, and what tests/test_dialplan_conf.py reads it with.

Reader (what `dialplan reload` would complain about): `[context]` headers, `exten => ext,prio(label),App(args)`
and `same => n(label),App(args)` lines, balanced parentheses / ${...} / $[...] / quotes, applications that exist
in Asterisk 22 with an argument count they accept, Goto/GotoIf labels and U() contexts that exist, and Dial()
strings of the AudioSocket channel driver (`AudioSocket/<host:port>/<uuid>[/c(<codec>)]`, as
channels/chan_audiosocket.c parses them).

Interpreter: runs one extension from priority 1 with ${VAR} substitution, $[...] expressions (=, !=, &, |),
Set, GotoIf, Goto, NoOp/Verbose/Log, Answer, Hangup, Return, and hands AGI, Dial, AudioSocket, AMD and
Playback to callbacks, so a caller can connect AGI() to the real FastAGI server. A callback may hang the channel
up (`channel.hung_up = True`: e.g. Dial() without the g option, whose answered callee hung up); the extension
then stops and the context's `h` extension runs, as in Asterisk. A callback that raises Redirected (an AMI
Redirect arrived while its application ran) moves the channel to that place, as Asterisk's async goto does.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# Applications of Asterisk 22 this dialplan may use: (min args, max args). A name not here is an error
# (Macro, for one, was removed in Asterisk 21).
APPLICATIONS: dict[str, tuple[int, int]] = {
    "NoOp": (0, 99), "Verbose": (1, 2), "Log": (2, 2), "Set": (1, 1), "GotoIf": (1, 1), "Goto": (1, 3),
    "AGI": (1, 99), "Answer": (0, 2), "Dial": (1, 4), "Hangup": (0, 1), "AMD": (0, 9), "AudioSocket": (2, 2),
    "Playback": (1, 2), "Return": (0, 1), "Gosub": (1, 1), "MixMonitor": (1, 3),
}
FUNCTIONS = {"TIMEOUT", "FILTER", "CHANNEL", "LOCAL", "CALLERID"}
LOG_LEVELS = {"ERROR", "WARNING", "NOTICE", "DEBUG", "VERBOSE", "DTMF"}
DIAL_OPTION_WITH_ARG = set("ADFGLMSUbr")
# Codecs chan_audiosocket's c() option takes here (ast_format_cache_get names; AudioSocket speaks slin).
AUDIOSOCKET_CODECS = {"slin", "slin12", "slin16", "slin24", "slin32", "slin44", "slin48", "slin96", "slin192"}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_VARIABLE = re.compile(r"\$\{[A-Z_]+\}")


class Redirected(Exception):  # noqa: N818 - a jump, not an error
    """Raised by a handler when an AMI Redirect takes the channel out of its application (Asterisk's async
    goto): `run` goes on at context,exten,priority."""

    def __init__(self, context: str, exten: str, priority: str = "1") -> None:
        super().__init__(f"{context},{exten},{priority}")
        self.context, self.exten, self.priority = context, exten, priority


class DialplanError(ValueError):
    """The file would not load cleanly (or would misbehave) in Asterisk 22."""


@dataclass
class Step:
    priority: int
    label: str | None
    app: str
    data: str
    line: int


@dataclass
class Dialplan:
    contexts: dict[str, dict[str, list[Step]]] = field(default_factory=dict)
    comments_after_header: dict[str, bool] = field(default_factory=dict)


def _strip_comment(line: str) -> str:
    out = []
    escaped = False
    for char in line:
        if char == ";" and not escaped:
            break
        escaped = char == "\\" and not escaped
        out.append(char)
    return "".join(out).rstrip()


def check_balanced(text: str, where: str) -> None:
    """Parentheses, ${...}, $[...] and double quotes must balance (Asterisk does not warn: it misparses)."""
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in text:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                raise DialplanError(f"{where}: unbalanced {char!r} in {text!r}")
    if any(depth.values()):
        raise DialplanError(f"{where}: unclosed bracket in {text!r}")
    if text.count('"') % 2:
        raise DialplanError(f"{where}: unbalanced double quote in {text!r}")


def split_args(data: str) -> list[str]:
    """Split application data on top-level commas (not inside (), ${}, $[] or quotes), like Asterisk."""
    args, current, depth, quoted = [], [], 0, False
    for char in data:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
        elif not quoted and char in ")]}":
            depth -= 1
        elif char == "," and depth == 0 and not quoted:
            args.append("".join(current))
            current = []
            continue
        current.append(char)
    args.append("".join(current))
    return [] if args == [""] else args


_APP = re.compile(r"^(?P<app>[A-Za-z][A-Za-z0-9_]*)\((?P<data>.*)\)$")
_PRIORITY = re.compile(r"^(?P<prio>\d+|n)(?:\((?P<label>[A-Za-z0-9_-]+)\))?$")


def parse(text: str) -> Dialplan:
    """Read the file the way pbx_config does; raise DialplanError for anything it would warn about."""
    plan = Dialplan()
    context: str | None = None
    exten: str | None = None
    expect_comment = False
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"line {number}"
        stripped = raw.strip()
        if expect_comment and stripped:
            plan.comments_after_header[context] = stripped.startswith(";")
            expect_comment = False
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("["):
            match = re.fullmatch(r"\[([A-Za-z0-9_-]+)\]", line)
            if not match:
                raise DialplanError(f"{where}: bad context header {line!r}")
            context = match[1]
            if context in plan.contexts:
                raise DialplanError(f"{where}: context [{context}] defined twice")
            plan.contexts[context] = {}
            exten = None
            expect_comment = True
            continue
        if context is None:
            raise DialplanError(f"{where}: {line!r} outside any context")
        key, arrow, rest = line.partition("=>")
        key = key.strip()
        if not arrow or key not in ("exten", "same"):
            raise DialplanError(f"{where}: expected 'exten =>' or 'same =>', got {line!r}")
        rest = rest.strip()
        if key == "exten":
            exten, _, rest = rest.partition(",")
            exten = exten.strip()
            if not (exten in ("s", "h", "i", "t", "T") or re.fullmatch(r"_[\[\]+0-9XZN.!-]+|[0-9+*#]+", exten)):
                raise DialplanError(f"{where}: extension {exten!r} is not a valid name or pattern")
        elif exten is None:
            raise DialplanError(f"{where}: 'same =>' before any 'exten =>' in [{context}]")
        priority, _, app_part = rest.partition(",")
        match = _PRIORITY.match(priority.strip())
        if not match:
            raise DialplanError(f"{where}: bad priority {priority!r}")
        steps = plan.contexts[context].setdefault(exten, [])
        if key == "exten" and steps:
            raise DialplanError(f"{where}: extension {exten!r} of [{context}] defined twice")
        if match["prio"] == "n":
            if not steps:
                raise DialplanError(f"{where}: 'n' priority with no priority 1 before it")
            prio = steps[-1].priority + 1
        else:
            prio = int(match["prio"])
            if not steps and prio != 1:
                raise DialplanError(f"{where}: extension {exten!r} must start at priority 1")
        app_match = _APP.match(app_part.strip())
        if not app_match:
            raise DialplanError(f"{where}: expected App(args), got {app_part!r}")
        app, data = app_match["app"], app_match["data"]
        check_balanced(data, where)
        if app not in APPLICATIONS:
            raise DialplanError(f"{where}: {app}() is not an Asterisk 22 application this file may use")
        low, high = APPLICATIONS[app]
        count = len(split_args(data))
        if not low <= count <= high:
            raise DialplanError(f"{where}: {app}() takes {low}..{high} arguments, got {count}: {data!r}")
        if match["label"] and any(step.label == match["label"] for step in steps):
            raise DialplanError(f"{where}: label {match['label']!r} used twice in {exten!r}")
        steps.append(Step(prio, match["label"], app, data, number))
    _check_references(plan)
    return plan


def _check_references(plan: Dialplan) -> None:
    for context, extensions in plan.contexts.items():
        for exten, steps in extensions.items():
            labels = {step.label for step in steps if step.label}
            for step in steps:
                where = f"line {step.line}"
                if step.app == "GotoIf":
                    condition, question, targets = step.data.partition("?")
                    if not question or not condition.startswith("$[") or not condition.endswith("]"):
                        raise DialplanError(f"{where}: GotoIf needs $[condition]?label")
                    for target in filter(None, targets.split(":")):
                        _check_target(plan, context, exten, labels, target, where)
                elif step.app == "Goto":
                    _check_target(plan, context, exten, labels, step.data, where)
                elif step.app == "Log" and split_args(step.data)[0] not in LOG_LEVELS:
                    raise DialplanError(f"{where}: Log level must be one of {sorted(LOG_LEVELS)}")
                elif step.app == "Set":
                    name = step.data.partition("=")[0]
                    function = re.match(r"([A-Z_]+)\(", name)
                    if "=" not in step.data or (function and function[1] not in FUNCTIONS):
                        raise DialplanError(f"{where}: Set() needs name=value with a known function")
                elif step.app == "Dial":
                    _check_dial(plan, step, where)
                elif step.app == "AGI" and not step.data.startswith("agi://"):
                    raise DialplanError(f"{where}: AGI() here must be a FastAGI agi:// URL")


def _check_target(plan, context, exten, labels, target, where) -> None:
    parts = [part.strip() for part in target.split(",")]
    if len(parts) == 1:
        if parts[0] not in labels and not parts[0].isdigit():
            raise DialplanError(f"{where}: Goto target {target!r} is not a label of {exten!r}")
        return
    ctx = parts[0] if len(parts) == 3 else context
    ext = parts[-2]
    if ext not in plan.contexts.get(ctx, {}):
        raise DialplanError(f"{where}: Goto target {target!r} does not exist")


def parse_audiosocket_dial(target: str) -> tuple[str, str, str]:
    """`AudioSocket/<host:port>/<uuid>[/c(<codec>)]` -> (host:port, uuid, codec), checked the way
    chan_audiosocket.c's audiosocket_request() checks it (port required, a UUID, a known codec). ${VAR}s are
    accepted unexpanded (the reader sees the file before any call). Raises DialplanError."""
    tech, _, rest = target.partition("/")
    parts = rest.split("/")
    if tech != "AudioSocket" or len(parts) not in (2, 3):
        raise DialplanError(f"AudioSocket dial string {target!r} is not AudioSocket/<host:port>/<uuid>[/c(codec)]")
    address, call_uuid = parts[0], parts[1]
    codec = "slin"
    if not _VARIABLE.fullmatch(address) and not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):\d+", address):
        raise DialplanError(f"AudioSocket destination {address!r} needs host:port")
    if not _VARIABLE.fullmatch(call_uuid) and not _UUID.fullmatch(call_uuid):
        raise DialplanError(f"AudioSocket id {call_uuid!r} is not a UUID")
    if len(parts) == 3:
        match = re.fullmatch(r"c\(([a-z0-9]+)\)", parts[2])
        if not match or match[1] not in AUDIOSOCKET_CODECS:
            raise DialplanError(f"AudioSocket options {parts[2]!r}: only c(<slin codec>) is known")
        codec = match[1]
    return address, call_uuid, codec


def _check_dial(plan: Dialplan, step: Step, where: str) -> None:
    args = split_args(step.data)
    if args and args[0].startswith("AudioSocket/"):
        try:
            parse_audiosocket_dial(args[0])
        except DialplanError as exc:
            raise DialplanError(f"{where}: {exc}") from None
    if len(args) > 1 and args[1] and not re.fullmatch(r"\d+|\$\{[A-Z_]+\}", args[1]):
        raise DialplanError(f"{where}: Dial timeout {args[1]!r} is not a number of seconds")
    options = args[2] if len(args) > 2 else ""
    index = 0
    while index < len(options):
        option = options[index]
        index += 1
        if index < len(options) and options[index] == "(":
            depth, start = 0, index
            while index < len(options):
                depth += {"(": 1, ")": -1}.get(options[index], 0)
                index += 1
                if depth == 0:
                    break
            if option not in DIAL_OPTION_WITH_ARG:
                raise DialplanError(f"{where}: Dial option {option}() takes no argument")
            if option == "U":
                gosub_context = options[start + 1:index - 1].split("^")[0]
                if "s" not in plan.contexts.get(gosub_context, {}):
                    raise DialplanError(f"{where}: U({gosub_context}) needs context [{gosub_context}] with 's'")


# ---------------------------------------------------------------- interpreter


def substitute(text: str, variables: dict[str, str]) -> str:
    """Expand ${VAR} (innermost first) and ${VAR:offset}; unknown variables are empty, as in Asterisk."""
    pattern = re.compile(r"\$\{([A-Za-z0-9_]+)(?::(-?\d+))?\}")
    previous = None
    while previous != text:
        previous = text

        def expand(match):
            value = variables.get(match[1], "")
            return value[int(match[2]):] if match[2] else value

        text = pattern.sub(expand, text)
    return text


def evaluate(expression: str) -> str:
    """$[...] with quoted or bare operands and =, !=, &, | (what this dialplan uses). Returns "1" or "0"."""
    tokens = re.findall(r'"[^"]*"|!=|=|&|\||[^\s"=!&|]+', expression)

    def operand(token):
        return token[1:-1] if token.startswith('"') else token

    def comparison(items):
        if len(items) == 1:
            return operand(items[0]) not in ("", "0")
        left, op, right = items
        equal = operand(left) == operand(right)
        return equal if op == "=" else not equal

    groups, current = [], []
    for token in tokens:
        if token in ("&", "|"):
            groups.append(current)
            groups.append(token)
            current = []
        else:
            current.append(token)
    groups.append(current)
    result = comparison(groups[0])
    for index in range(1, len(groups), 2):
        value = comparison(groups[index + 1])
        result = (result and value) if groups[index] == "&" else (result or value)
    return "1" if result else "0"


def expand(data: str, variables: dict[str, str]) -> str:
    text = substitute(data, variables)
    return re.sub(r"\$\[(.*?)\]", lambda m: evaluate(m[1]), text)


Handler = Callable[["Channel", list[str]], Awaitable[None]]


@dataclass
class Channel:
    """One channel running the dialplan: its variables and what it executed."""

    name: str
    variables: dict[str, str]
    executed: list[tuple[str, str]] = field(default_factory=list)   # (application, expanded data)
    hung_up: bool = False


async def run(plan: Dialplan, context: str, exten: str, channel: Channel, handlers: dict[str, Handler],
              max_steps: int = 200) -> None:
    """Run `exten` of `context` on `channel` until Hangup/Return/the end; then its `h` extension if any."""
    steps = match_extension(plan, context, exten)
    channel.variables.setdefault("EXTEN", exten)
    index = 0
    for _ in range(max_steps):
        if index >= len(steps) or channel.hung_up:
            break
        step = steps[index]
        index += 1
        data = expand(step.data, channel.variables) if step.app != "GotoIf" else step.data
        if step.app == "GotoIf":
            condition, _, targets = step.data.partition("?")
            true_target, _, false_target = targets.partition(":")
            target = true_target if evaluate(substitute(condition[2:-1], channel.variables)) == "1" else false_target
            channel.executed.append(("GotoIf", target))
            if target:
                index = _label_index(steps, target)
            continue
        channel.executed.append((step.app, data))
        if step.app == "Goto":
            index = _label_index(steps, data)
        elif step.app == "Set":
            name, _, value = data.partition("=")
            channel.variables[name] = value
        elif step.app == "Hangup":
            channel.hung_up = True
        elif step.app == "Return":
            return
        elif step.app in handlers:
            try:
                await handlers[step.app](channel, split_args(data))
            except Redirected as jump:
                channel.executed.append(("Redirect", str(jump)))
                channel.variables["EXTEN"] = jump.exten
                context, exten, index = jump.context, jump.exten, 0
                steps = match_extension(plan, context, exten)
                if jump.priority != "1":
                    index = _label_index(steps, jump.priority)
    if channel.hung_up or index >= len(steps):
        channel.hung_up = True
        if "h" in plan.contexts[context] and exten != "h":
            channel.variables["EXTEN"] = "h"
            channel.hung_up = False
            await run(plan, context, "h", channel, handlers, max_steps)
            channel.hung_up = True


def match_extension(plan: Dialplan, context: str, exten: str) -> list[Step]:
    """The steps Asterisk runs for `exten` in `context`: an extension of that exact name, else a matching _pattern."""
    extensions = plan.contexts.get(context)
    if extensions is None:
        raise DialplanError(f"no context [{context}]")
    if exten in extensions:
        return extensions[exten]
    for name, steps in extensions.items():
        if name.startswith("_") and re.fullmatch(_pattern_to_regex(name[1:]), exten):
            return steps
    raise DialplanError(f"no extension {exten!r} in [{context}]")


def _pattern_to_regex(pattern: str) -> str:
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[":
            end = pattern.index("]", index)
            out.append("[" + re.escape(pattern[index + 1:end]).replace("\\-", "-") + "]")
            index = end + 1
            continue
        out.append({"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}.get(char, re.escape(char)))
        index += 1
    return "".join(out)


def _label_index(steps: list[Step], target: str) -> int:
    for position, step in enumerate(steps):
        if step.label == target or str(step.priority) == target:
            return position
    raise DialplanError(f"no label {target!r}")
