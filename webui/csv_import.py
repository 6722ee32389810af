"""Targets and do-not-call lists as CSV: parse everything first, report every bad line, then import.

Parsing is separate from importing: `parse_*` reads the whole text and raises `CsvImportError` (first bad line,
plus every other one in `.errors`) before a single row touches the database, so a bad file leaves nothing
behind. `import_*` then writes the rows in chunks of repo.BULK_CHUNK_ROWS, one executemany INSERT and one commit
per chunk: a 10,000-row file never holds SQLite's write lock for more than a few milliseconds at a time, so
other tenants' writes (and the scheduler's) go in between. Should the database fail part-way, the chunks
already committed stay, and the error says so. The CLI (`opendeep tasks import`, `opendeep dnd import/export`)
and the web UI both use these functions.

Every CSV the app writes goes through `safe_cell`: a spreadsheet runs a cell starting with `=`, `+`, `-`, `@`,
tab or CR as a formula (CSV injection), so such a cell gets a `'` in front, which spreadsheets show as text and
our own imports drop again. A plain number (an E.164 phone number such as +14155550123, or -3) is no formula and
stays as it is, so an exported list reads and re-imports as the same numbers.

Targets CSV: a header line naming the columns; `name` and `phone_number` are required, `objective`,
`language` and `max_attempts` are optional, and any other column goes into the task's context for the call AI.
DND CSV: `phone_number[,reason]`, with or without a header line.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from db import repo, task_life
from db.models import Campaign, CampaignGoal, TaskStatus
from opendeep.campaign_goal import held_on_import
from opendeep.phone import InvalidPhoneNumber, normalize_e164
from webui.plan import MAX_ATTEMPTS_LIMIT

if TYPE_CHECKING:
    from _csv import Reader as _csv_reader  # the type csv.reader() returns (typeshed names it only in _csv)

MAX_ROWS = 10_000
MAX_ERRORS_REPORTED = 50   # shown on a web page; the CLI and the API list them all
TARGET_ALIASES = {
    "name": "name", "target_name": "name", "target": "name", "business": "name",
    "phone_number": "phone_number", "phone": "phone_number", "number": "phone_number", "telephone": "phone_number",
    "objective": "objective", "goal": "objective",
    "language": "language", "max_attempts": "max_attempts",
}
DND_HEADERS = {"phone_number", "phone", "number", "telephone"}
# A spreadsheet runs a cell starting with one of these as a formula; such a cell gets a quote first when written.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")   # e.g. +14155550123: no formula, written as it is


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class CsvImportError(ValueError):
    """A CSV cannot be imported; `line` and `reason` name the first problem, `errors` lists all found."""

    def __init__(self, line: int, reason: str, errors: list[LineError] | None = None) -> None:
        self.line = line
        self.reason = reason
        self.errors = errors or [LineError(line, reason)]
        more = len(self.errors) - 1
        super().__init__(f"line {line}: {reason}" + (f" (and {more} more bad line(s))" if more > 0 else ""))


@dataclass(frozen=True)
class TargetRow:
    line: int
    name: str
    phone_number: str          # E.164
    objective: str = ""
    language: str = "en"
    max_attempts: int | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DndRow:
    line: int
    phone_number: str          # E.164
    reason: str = ""


def _reader(text: str) -> _csv_reader:
    if text.startswith("\ufeff"):  # Excel's UTF-8 byte order mark
        text = text[1:]
    return csv.reader(io.StringIO(text, newline=""), strict=True)


def _rows(text: str):
    """(line number, cells) for each non-blank row; the line is where the row starts. A cell `safe_cell` quoted
    (e.g. `'=SUM(A1)` in a file we exported) reads as what it was."""
    reader = _reader(text)
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if any(cell.strip() for cell in cells):
                yield start, [_unquoted(cell.strip()) for cell in cells]
    except csv.Error as exc:
        raise CsvImportError(reader.line_num or 1, f"not valid CSV ({exc})") from None


def _raise_if_any(errors: list[LineError]) -> None:
    if errors:
        first = errors[0]
        raise CsvImportError(first.line, first.reason, errors)   # all of them: the CLI lists every bad line


def parse_targets_csv(text: str, default_region: str | None = None) -> list[TargetRow]:
    """Parse a targets CSV (header required); national numbers of `default_region` are accepted. Raises
    CsvImportError naming each bad line and the reason."""
    rows = _rows(text)
    first = next(rows, None)
    if first is None:
        raise CsvImportError(1, "the file is empty; expected a header line such as name,phone_number,objective")
    header_line, header = first
    columns = [TARGET_ALIASES.get(cell.lower().replace(" ", "_"), cell) for cell in header]
    missing = [name for name in ("name", "phone_number") if name not in columns]
    if missing:
        raise CsvImportError(header_line, f"the header has no {' or '.join(missing)} column "
                                          f"(found: {', '.join(header) or 'nothing'})")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise CsvImportError(header_line, f"the header names {', '.join(duplicated)} twice")
    targets: list[TargetRow] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(targets) + len(errors) >= MAX_ROWS:
            raise CsvImportError(line, f"too many rows (at most {MAX_ROWS} per file)")
        if len(cells) > len(columns):
            errors.append(LineError(line, f"{len(cells)} values but the header has {len(columns)} columns"))
            continue
        values = dict(zip(columns, cells + [""] * (len(columns) - len(cells)), strict=True))
        row_errors: list[str] = []
        if not values["name"]:
            row_errors.append("name is empty")
        try:
            number = normalize_e164(values["phone_number"], default_region)
        except InvalidPhoneNumber as exc:
            row_errors.append(f"{exc}")
            number = ""
        if number in seen:
            row_errors.append(f"{number} is already on line {seen[number]}")
        max_attempts = None
        if values.get("max_attempts"):
            raw = values["max_attempts"]
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_ATTEMPTS_LIMIT:
                row_errors.append(f"max_attempts {raw!r} is not a whole number from 1 to {MAX_ATTEMPTS_LIMIT}")
            else:
                max_attempts = int(raw)
        if row_errors:
            errors.append(LineError(line, "; ".join(row_errors)))
            continue
        seen[number] = line
        context = {key: value for key, value in values.items() if key not in TARGET_ALIASES.values() and value}
        targets.append(TargetRow(line=line, name=values["name"], phone_number=number,
                                 objective=values.get("objective", ""), language=values.get("language") or "en",
                                 max_attempts=max_attempts, context=context))
    _raise_if_any(errors)
    if not targets:
        raise CsvImportError(header_line, "the file has a header but no targets")
    return targets


async def import_targets(session: AsyncSession, user_id: int, campaign_id: int, rows: list[TargetRow],
                         *, default_objective: str = "", default_max_attempts: int = 3,
                         held: bool = False) -> list[int]:
    """Add one task per row to the user's campaign (LookupError if the campaign is not theirs); returns the new
    task ids. Commits `session` after each chunk of repo.BULK_CHUNK_ROWS rows (the first commit includes what
    the caller wrote before, e.g. the new campaign). `held`: the tasks wait their turn (until-one-succeeds
    campaigns: opendeep/campaign_goal.py releases them in order), so no chunk is claimed before its turn."""
    if await repo.get_campaign(session, user_id, campaign_id) is None:
        raise LookupError(f"campaign {campaign_id} not found")
    task_ids: list[int] = []
    for start in range(0, len(rows), repo.BULK_CHUNK_ROWS):
        chunk = [{"target_name": row.name, "phone_number": row.phone_number,
                  "objective": row.objective or default_objective, "context": dict(row.context),
                  "language": row.language, "max_attempts": row.max_attempts or default_max_attempts,
                  "held": held}
                 for row in rows[start:start + repo.BULK_CHUNK_ROWS]]
        try:
            task_ids += await repo.add_tasks(session, user_id, campaign_id, chunk)
            await session.commit()
        except Exception as exc:
            if task_ids:
                exc.add_note(f"{len(task_ids)} of {len(rows)} target(s) were imported before this failure")
            raise
    return task_ids


def publish_imported(events: task_life.Publisher | None, user_id: int, campaign_id: int,
                     task_ids: list[int]) -> None:
    """Tell the user's open pages about an import's new tasks, as for any task that changes."""
    for task_id in task_ids:
        task_life.task_updated(events, user_id, task_id, campaign_id, TaskStatus.PENDING)


CAMPAIGN_NAME_MAX = 200   # campaigns.name is String(200)


async def campaign_from_csv(session: AsyncSession, events: task_life.Publisher | None, user_id: int,
                            rows: list[TargetRow], *, name: str, goal: str = "",
                            goal_type: CampaignGoal = CampaignGoal.EACH_TARGET,
                            budget_microusd: int | None = None) -> tuple[Campaign, list[int]]:
    """A new campaign of the user's from parsed CSV rows (the web page, the API and the CLI all build it here):
    the name cut to what the column holds, the goal each task's default objective, an until-one-succeeds
    campaign's targets held, committed chunk by chunk, then `task.updated` published for each new task."""
    campaign = await repo.create_campaign(session, user_id, name=name.strip()[:CAMPAIGN_NAME_MAX], goal=goal)
    campaign.budget_microusd = budget_microusd
    campaign.goal_type = goal_type
    return campaign, await targets_from_csv(session, events, user_id, campaign, rows)


async def targets_from_csv(session: AsyncSession, events: task_life.Publisher | None, user_id: int,
                           campaign: Campaign, rows: list[TargetRow]) -> list[int]:
    """Add parsed CSV rows to one of the user's campaigns, as `campaign_from_csv` does; returns the task ids."""
    task_ids = await import_targets(session, user_id, campaign.id, rows, default_objective=campaign.goal,
                                    held=held_on_import(campaign.goal_type))
    await session.commit()
    publish_imported(events, user_id, campaign.id, task_ids)
    return task_ids


def parse_dnd_csv(text: str, default_region: str | None = None) -> list[DndRow]:
    """Parse `phone_number[,reason]` lines (an optional header is recognised); national numbers of
    `default_region` are accepted. Raises CsvImportError naming each bad line."""
    result: list[DndRow] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for index, (line, cells) in enumerate(_rows(text)):
        if index == 0 and cells[0].lower().replace(" ", "_") in DND_HEADERS:
            continue
        if len(result) + len(errors) >= MAX_ROWS:
            raise CsvImportError(line, f"too many rows (at most {MAX_ROWS} per file)")
        try:
            number = normalize_e164(cells[0], default_region)
        except InvalidPhoneNumber as exc:
            errors.append(LineError(line, f"{exc}"))
            continue
        if number in seen:
            continue  # the same number twice in one list is harmless
        seen.add(number)
        result.append(DndRow(line, number, cells[1] if len(cells) > 1 else ""))
    _raise_if_any(errors)
    return result


async def import_dnd(session: AsyncSession, user_id: int, rows: list[DndRow]) -> int:
    """Add the rows to the user's DND list (a number already on it keeps its entry); returns how many were new.
    Commits `session` after each chunk of repo.BULK_CHUNK_ROWS rows."""
    added = 0
    for start in range(0, len(rows), repo.BULK_CHUNK_ROWS):
        chunk = rows[start:start + repo.BULK_CHUNK_ROWS]
        added += await repo.add_dnd_entries(session, user_id, [(row.phone_number, row.reason) for row in chunk])
        await session.commit()
    return added


def safe_cell(value: str) -> str:
    """A cell as every CSV we write has it: a would-be formula gets a `'` in front; plain numbers stay."""
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _unquoted(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


async def export_dnd_csv(session: AsyncSession, user_id: int) -> str:
    """The user's DND list as CSV (header `phone_number,reason,added_at`); `parse_dnd_csv` reads it back."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["phone_number", "reason", "added_at"])
    for entry in await repo.list_dnd(session, user_id):
        writer.writerow([safe_cell(entry.phone_number), safe_cell(entry.reason), entry.created_at.isoformat()])
    return out.getvalue()


def table_csv(columns: list[str], rows: list[list[Any]]) -> str:
    """A table (e.g. a campaign summary) as CSV, with spreadsheet formulas defused."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([safe_cell(str(column)) for column in columns])
    for row in rows:
        writer.writerow([safe_cell("" if value is None else str(value)) for value in row])
    return out.getvalue()
