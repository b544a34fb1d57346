"""The oversight dashboard in a real browser (Debian's chromium driven by Playwright) against the
real API on uvicorn, a real Temporal dev server, PostgreSQL and a decisions worker.

A decision waiting in assist mode is refused to a person without the permission (they see why),
approved from the page by one who has it, and the workflow goes on; the first person's page
follows it live (server-sent events) without a reload. The controls refuse a non-admin and pause
the platform for an admin. Every page is kept as a screenshot in the test artefacts
(`NOFX_TEST_ARTIFACTS`, default `test-artifacts/`, under `dashboard/`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from models.decisions import Operator
from nofx.api import tokens
from nofx.api.app import ApiContext, create_app
from nofx.decisions import store
from nofx.settings import Settings, get_settings
from tests.helpers import ROOT, eventually, serving
from tests.test_decision_operations import SERVICE, add_service, serve

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
expect.set_options(timeout=30_000)  # a busy 2-core machine: wait on the page, generously

ARTIFACTS = Path(os.environ.get("NOFX_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
VIEWS = ("waiting", "incidents", "decisions", "forecasts", "maintenance", "metrics", "controls")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    async with playwright.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(browser: Any, url: str, token: str) -> Any:
    """A new browser context (its own session storage) signed in with `token`."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("pageerror", lambda err: print("the page failed:", err))  # kept in the test log
    await page.goto(f"{url}/dashboard")
    await page.fill("#token", token)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#nav")).to_be_visible()
    return page


async def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def paused(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT coalesce(bool_or(paused), false) FROM platform_controls")
            ).scalar_one()
        )


async def test_a_waiting_decision_is_refused_then_approved_from_the_page_and_goes_on(
    client: Client, fresh_engine: Engine, browser: Any
) -> None:
    queue = f"decisions-{uuid.uuid4().hex[:8]}"
    add_service(fresh_engine)
    people = {"alice": ["healing:*"], "mallory": [], "root": ["*"]}
    issued = {}
    for name, permissions in people.items():
        store.add_operator(fresh_engine, Operator(name=name, permissions=permissions), actor="t")
        issued[name] = tokens.issue(fresh_engine, name, actor="test")[1]
    store.set_mode(fresh_engine, "assist")
    app = create_app(ApiContext(client, fresh_engine, get_settings(), decisions_queue=queue))
    async with (
        await serve(client, fresh_engine, queue),
        serving(app) as url,
        httpx.AsyncClient(base_url=url, timeout=120) as http,
    ):
        made = await http.post(
            "/api/autonomous/decide",
            json={"service": SERVICE, "incident_type": "service_down"},
            headers={"Authorization": f"Bearer {issued['alice']}"},
        )
        assert made.status_code == 200, made.text
        decision = made.json()
        assert decision["status"] == "awaiting_approval"
        ref = decision["decision_id"]

        # mallory sees what waits, with the explanation, criteria and rollback plan ...
        mallory = await signed_in(browser, url, issued["mallory"])
        card = mallory.locator(f'section.decision[data-decision="{ref}"]')
        await expect(card).to_be_visible()
        await expect(card.locator("pre.explanation")).to_contain_text(decision["chosen"])
        await expect(card.locator("table tr.chosen")).to_contain_text(decision["chosen"])
        await expect(card).to_contain_text("Rollback plan")
        await expect(mallory.locator("#waiting-count")).to_have_text("1")
        await shoot(mallory, "waiting")

        # ... but may not approve it: the page says why, and nothing changed
        await card.get_by_role("button", name="Approve").click()
        await expect(mallory.locator("#banner")).to_contain_text("approve refused (403)")
        await expect(mallory.locator("#banner")).to_contain_text("mallory lacks permission")
        await shoot(mallory, "approve-refused")
        still = await http.get(
            f"/api/autonomous/explain/{ref}",
            headers={"Authorization": f"Bearer {issued['alice']}"},
        )
        assert (still.json()["status"], still.json()["running"]) == ("awaiting_approval", True)

        # alice approves it from her page
        alice = await signed_in(browser, url, issued["alice"])
        mine = alice.locator(f'section.decision[data-decision="{ref}"]')
        await mine.locator("input[name=reason]").fill("checked the service from the page")
        await mine.get_by_role("button", name="Approve").click()
        await expect(alice.locator("#banner")).to_contain_text("approve accepted")

        # mallory's page follows live (server-sent events), with no reload
        await expect(mallory.locator("#nothing-waiting")).to_be_visible()
        await expect(mallory.locator("#waiting-count")).to_have_text("")

        # and the workflow went on: alice's approval made the decision act
        async def finished() -> dict[str, Any]:
            got = await http.get(
                f"/api/autonomous/explain/{ref}",
                headers={"Authorization": f"Bearer {issued['alice']}"},
            )
            return dict(got.json())

        closed = await finished()
        deadline = asyncio.get_running_loop().time() + 60
        while closed["running"]:
            assert asyncio.get_running_loop().time() < deadline, f"still running: {closed}"
            await asyncio.sleep(0.5)
            closed = await finished()
        assert (closed["status"], closed["decided_by"], closed["act"]) == (
            "approved",
            "alice",
            True,
        )
        verdicts = closed["approval"]["verdicts"]
        assert [(v["approver"], v["reason"]) for v in verdicts] == [
            ("alice", "checked the service from the page")
        ]

        # its page: the criteria table, the approval and the timeline from the audit trail
        await alice.goto(f"{url}/dashboard#/decisions/{ref}")
        await expect(alice.locator("main")).to_contain_text("approve by alice")
        await expect(alice.locator("ol.timeline")).to_contain_text("decision.approve")
        await shoot(alice, "decision")

        # the controls: refused to mallory, the kill switch works for an admin
        await mallory.goto(f"{url}/dashboard#/controls")
        await expect(mallory.locator("main")).to_contain_text("Changing controls needs")
        await mallory.locator("input[name=reason]").fill("let me")
        await mallory.get_by_role("button", name="Pause all automation").click()
        await expect(mallory.locator("#banner")).to_contain_text("refused (403)")
        assert not paused(fresh_engine)
        root = await signed_in(browser, url, issued["root"])
        await root.goto(f"{url}/dashboard#/controls")
        await root.locator("input[name=reason]").fill("game day")
        await root.get_by_role("button", name="Pause all automation").click()
        await expect(root.locator("#automation-state")).to_have_text("PAUSED")
        await eventually(lambda: paused(fresh_engine), "the platform paused")
        await shoot(root, "controls-paused")
        await root.locator("input[name=reason]").fill("game day over")
        await root.get_by_role("button", name="Resume automation").click()
        await expect(root.locator("#automation-state")).to_have_text("active")

        # every page renders for an admin, and is kept as a screenshot
        for view in VIEWS:
            await root.goto(f"{url}/dashboard#/{view}")
            await expect(root.locator(f'main[data-view="{view}"]')).to_be_attached()
            await expect(root.locator("#banner.error")).to_have_count(0)
            await shoot(root, f"page-{view}")
        for page in (mallory, alice, root):  # their event streams end before the server
            await page.context.close()


async def test_forecasts_show_interval_bands_and_the_failure_predictions(
    client: Client, fresh_engine: Engine, browser: Any, tmp_path: Path
) -> None:
    """Three days of a daily cycle up to now, then a leak toward the inventory's limit, replayed
    from a CSV: the prediction pass records a failure, and its page draws the forecast with its
    80% and 95% bands and the limit."""
    from nofx import inventory
    from nofx.maintenance.predictions import predict
    from nofx.telemetry.routing import metric_source

    step = 300
    end = int(datetime.now(UTC).timestamp()) // step * step
    hours = np.arange(3 * 288) * step / 3600
    values = 20 + 5 * np.sin(2 * np.pi * hours / 24)
    values[-36:] += 0.8 * np.arange(36)
    start = end - (len(values) - 1) * step
    csv = tmp_path / "api.csv"  # the replayed series is named after its file
    csv.write_text(
        "timestamp,memory\n" + "".join(f"{start + i * step},{v}\n" for i, v in enumerate(values))
    )
    limits = {"name": "api", "endpoint": "http://127.0.0.1:1", "limits": {"memory": 60}}
    inventory.apply(fresh_engine, inventory.parse({"services": [limits]}))
    settings = Settings(telemetry="csv", telemetry_csv_path=csv)
    recorded = await asyncio.to_thread(
        predict, fresh_engine, metric_source(fresh_engine, settings), history_hours=72
    )
    assert [r.change for r in recorded] == ["opened"], recorded  # the leak exhausts memory
    store.add_operator(fresh_engine, Operator(name="reader", permissions=[]), actor="t")
    token = tokens.issue(fresh_engine, "reader", actor="test")[1]
    async with serving(create_app(ApiContext(client, fresh_engine, settings))) as url:
        page = await signed_in(browser, url, token)
        await page.goto(f"{url}/dashboard#/forecasts")
        await expect(page.locator("main")).to_contain_text("Failure predictions")
        await expect(page.locator("main table").first).to_contain_text("api")
        chart = page.locator("#forecast svg.chart")
        await expect(chart).to_be_visible()
        await expect(chart.locator("polygon.band95")).to_have_count(1)
        await expect(chart.locator("polygon.band80")).to_have_count(1)
        await expect(chart.locator("polyline.mean")).to_have_count(1)
        await expect(chart.locator("line.limit")).to_have_count(1)
        await expect(page.locator("#forecast")).to_contain_text("Reaches its limit 60")
        await shoot(page, "forecast")
        await page.context.close()
