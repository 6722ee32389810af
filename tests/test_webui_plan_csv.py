"""Campaign plans and CSV files: what may reach the database, and what a user is told when it may not."""

from __future__ import annotations

import pytest

from db import repo
from db.models import CampaignStatus
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app
from webui.csv_import import (
    CsvImportError,
    export_dnd_csv,
    import_dnd,
    import_targets,
    parse_dnd_csv,
    parse_targets_csv,
    table_csv,
)
from webui.plan import plan_fingerprint, validate_plan
from webui.views import summary_table


def a_plan(**changes):
    plan = {
        "name": "Dental cleaning", "goal": "Book a cleaning next week, mornings",
        "calling_window": {"start": "9:00", "end": "17:30"}, "max_attempts": 2,
        "targets": [
            {"name": "Bright Smile", "phone_number": "+1 415 555 0101", "objective": "Book a cleaning"},
            {"name": "Oak Dental", "phone_number": "+14155550102", "objective": "Book a cleaning",
             "context": {"address": "12 Main St"}},
        ],
    }
    plan.update(changes)
    return plan


def test_valid_plan_is_normalized_to_e164_with_defaults():
    check = validate_plan(a_plan())
    assert check.ok, check.errors
    assert [t["phone_number"] for t in check.plan["targets"]] == ["+14155550101", "+14155550102"]
    assert check.plan["targets"][0]["language"] == "en" and check.plan["targets"][0]["context"] == {}
    assert check.plan["master_prompt"] == ""


@pytest.mark.parametrize(("plan", "expected"), [
    (a_plan(targets=[{"name": "X", "phone_number": "555", "objective": "o"}]), "targets[0].phone_number"),
    (a_plan(targets=[]), "targets: [] should be non-empty"),
    ({k: v for k, v in a_plan().items() if k != "goal"}, "'goal' is a required property"),
    (a_plan(calling_window={"start": "25:00", "end": "10:00"}), "calling_window.start"),
    (a_plan(calling_window={"start": "10:00", "end": "10:00"}), "calling_window: window start and end must differ"),
    (a_plan(max_attempts=0), "max_attempts"),
    (a_plan(name="   "), "name: must not be blank"),
    (a_plan(targets=[{"name": "A", "phone_number": "+14155550101", "objective": "o"},
                     {"name": "B", "phone_number": "+1 (415) 555-0101", "objective": "o"}]),
     "targets[1].phone_number: +14155550101 is already targets[0]"),
    ("a string", "plan: expected a JSON object"),
])
def test_invalid_plans_are_refused_with_a_reason_naming_the_field(plan, expected):
    check = validate_plan(plan)
    assert not check.ok and check.plan is None
    assert any(expected in error for error in check.errors), check.errors


def test_fingerprint_is_stable_and_changes_with_the_plan():
    assert plan_fingerprint(a_plan()) == plan_fingerprint(a_plan())
    assert plan_fingerprint(a_plan()) != plan_fingerprint(a_plan(max_attempts=3))


def test_targets_csv_with_aliases_extra_columns_and_quoted_multiline_field():
    text = ('\ufeffName,Phone,objective,max_attempts,notes\r\n'
            'Bright Smile,+1 415 555 0101,Book a cleaning,2,"ask for\r\nDr. Lee"\r\n'
            '\r\n'
            'Oak Dental,+14155550102,,,\r\n')
    rows = parse_targets_csv(text)
    assert [(r.line, r.name, r.phone_number, r.max_attempts) for r in rows] == [
        (2, "Bright Smile", "+14155550101", 2), (5, "Oak Dental", "+14155550102", None)]
    assert rows[0].context == {"notes": "ask for\r\nDr. Lee"} and rows[1].context == {}


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("", 1, "the file is empty"),
    ("who,when\nA,B\n", 1, "no name or phone_number column"),
    ("name,phone_number\n", 1, "no targets"),
    ("name,phone_number\nA,+14155550101\nB,12\n", 3, "'12' has no valid country code: write it in E.164"),
    ("name,phone_number\nA,+14155550101\nB,+1 415 555 0101\n", 3, "already on line 2"),
    ("name,phone_number\nA,+14155550101,extra\n", 2, "3 values but the header has 2 columns"),
    ("name,phone_number,max_attempts\nA,+14155550101,99\n", 2, "max_attempts '99'"),
    ('name,phone_number\n"A,+14155550101\n', 2, "not valid CSV"),
])
def test_bad_targets_csv_names_the_line_and_why(text, line, reason):
    with pytest.raises(CsvImportError) as caught:
        parse_targets_csv(text)
    assert caught.value.line == line and reason in caught.value.reason, str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")


def test_every_bad_line_is_reported_not_only_the_first():
    with pytest.raises(CsvImportError) as caught:
        parse_targets_csv("name,phone_number\nA,1\n,+14155550101\nC,+14155550102\nD,2\n")
    assert [e.line for e in caught.value.errors] == [2, 3, 5]
    assert "and 2 more bad line(s)" in str(caught.value)


async def test_targets_import_into_a_campaign_and_refuses_another_users_campaign(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice, bob = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    rows = parse_targets_csv("name,phone_number,objective\nA,+14155550101,Ask\nB,+14155550102,\n")
    async with sessions() as session:
        campaign = await repo.create_campaign(session, alice, name="c", goal="default goal")
        with pytest.raises(LookupError):
            await import_targets(session, bob, campaign.id, rows)
        task_ids = await import_targets(session, alice, campaign.id, rows, default_objective="default goal")
    async with sessions() as session:   # committed by the import itself
        tasks = await repo.list_tasks(session, alice, campaign.id)
        assert len(await repo.list_tasks(session, bob)) == 0
    assert [t.id for t in tasks] == task_ids
    assert sorted((t.target_name, t.objective, t.max_attempts) for t in tasks) == [
        ("A", "Ask", 3), ("B", "default goal", 3)]


async def test_dnd_csv_round_trip_and_formula_cells_are_defused(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice = await add_user(runtime, "alice")
    rows = parse_dnd_csv("phone_number,reason\n+1 415 555 0101,asked us\n+14155550102,=HYPERLINK(\"x\")\n"
                         "+14155550101,twice\n")
    assert [(r.line, r.phone_number) for r in rows] == [(2, "+14155550101"), (3, "+14155550102")]
    async with sessions() as session:
        assert await import_dnd(session, alice, rows) == 2
        assert await import_dnd(session, alice, rows) == 0
        await session.commit()
        exported = await export_dnd_csv(session, alice)
    lines = exported.splitlines()
    assert lines[0] == "phone_number,reason,added_at"
    assert lines[1].startswith("+14155550101,asked us,") and "'=HYPERLINK" in lines[2]
    assert [r.phone_number for r in parse_dnd_csv(exported)] == ["+14155550101", "+14155550102"]


def test_bad_dnd_csv_imports_nothing_and_says_which_line():
    with pytest.raises(CsvImportError) as caught:
        parse_dnd_csv("+14155550101\nnot a number\n")
    assert caught.value.line == 2 and "not a phone number" in caught.value.reason


@pytest.mark.parametrize(("summary", "columns", "first_row"), [
    ({"columns": ["target", "result"], "rows": [["A", "booked"]]}, ["target", "result"], ["A", "booked"]),
    ({"rows": [{"target": "A", "result": "booked"}, {"target": "B", "when": "Tue"}]},
     ["target", "result", "when"], ["A", "booked", None]),
    ([{"target": "A", "details": {"time": "9:00"}}], ["target", "details"], ["A", '{"time": "9:00"}']),
    ({"booked": 1, "failed": 0}, ["field", "value"], ["booked", 1]),
    ({"summary": "One booked.", "key_findings": ["x"], "targets": [  # opendeep/summarizer.py's shape
        {"target": "A", "phone_number": "+14155550101", "status": "completed", "outcome": "answered"}]},
     ["target", "phone_number", "status", "outcome"], ["A", "+14155550101", "completed", "answered"]),
])
def test_summary_table_reads_the_shapes_a_summarizer_may_write(summary, columns, first_row):
    got_columns, rows = summary_table(summary)
    assert got_columns == columns and rows[0] == first_row
    assert table_csv(got_columns, rows).splitlines()[0] == ",".join(columns)


async def test_a_finished_campaign_takes_no_new_targets(settings_env, engine, sessions):
    """A cancelled (or completed) campaign's summary is final: adding targets is refused, on the API and the page,
    and nothing is imported."""
    runtime = make_runtime(settings_env, engine, sessions)
    alice = await add_user(runtime, "alice")
    async with sessions() as session:
        campaign = await repo.create_campaign(session, alice, name="Shops")
        campaign.status = CampaignStatus.CANCELLED
        await session.commit()
    client = WebClient(create_app(runtime))
    await client.login("alice")
    try:
        body = "name,phone_number\nShop,+14155550123\n"
        refused = await client.api("POST", f"/api/campaigns/{campaign.id}/targets", content=body,
                                   headers={"content-type": "text/csv"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "campaign_finished"
        page = await client.form(f"/campaigns/{campaign.id}/targets",
                                 files={"file": ("t.csv", body.encode(), "text/csv")})
        assert page.status_code == 303
        shown = await client.http.get(f"/campaigns/{campaign.id}")
        assert "Nothing was imported: the campaign is cancelled" in shown.text
        assert "Add targets from CSV" not in shown.text
        async with sessions() as session:
            assert await repo.list_tasks(session, alice, campaign.id) == []
    finally:
        await client.aclose()
