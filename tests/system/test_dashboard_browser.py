"""The dashboard in a real browser (headless Chromium through Playwright), against the session's Serve app, the
cluster's stats actor and a scoreboard joining ground truth: live tiles and charts render, the manual check scores
through the API, bad input shows the API's error naming the field, and the page logs no error."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import requests

from cluster.config import Settings

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 90_000


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed (the browser test needs it): `apt-get install -y chromium`, which "
                    "`make test` runs when it is missing")
    return path


def record_stream_decisions(url: str, settings: Settings, history: Any, scoreboard: Any) -> dict[str, int]:
    """Score labelled simulated transactions through the API, report them as a stream consumer does (stats without
    truth, decisions on the decisions stream) and their truth as a producer does (to the scoreboard), and wait until
    the scoreboard has joined them. Returns the labelled counts per scenario.

    The ids are this test's own, so the alert ledger of other tests' transactions is left alone."""
    import orjson
    import ray

    from cluster.aws import client
    from cluster.kinesis import pack, put_records_reliably
    from cluster.schema import Transaction
    from cluster.waiting import wait_until
    from serve.stats import StatsReporter

    frame = history.transactions
    sample = pd.concat([frame[frame["is_fraud"] == 1].head(60), frame[frame["is_fraud"] == 0].head(240)])
    sample = sample.assign(timestamp=sample["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                           transaction_id="dashboard-" + sample["transaction_id"])
    ray.get(scoreboard.report.remote(sample["transaction_id"].tolist(), sample["fraud_scenario"].tolist()))
    records = [{k: v for k, v in row.items() if not pd.isna(v) and k not in ("is_fraud", "fraud_scenario")}
               for row in sample.to_dict(orient="records")]
    response = requests.post(f"{url}/api/check-fraud/batch", json={"transactions": records}, timeout=120)
    response.raise_for_status()
    decisions = response.json()["results"]
    transactions = [Transaction.model_validate(r) for r in records]
    reporter = StatsReporter()
    reporter.add(scored=len(decisions), alerts=0, latency_ms=5.0, stream_lags_ms=[250.0, 400.0, 900.0],
                 decisions=decisions, transactions=transactions)
    ray.get(reporter.flush())
    put_records_reliably(client("kinesis", settings), settings.decisions_stream_name,
                         pack([{"Data": orjson.dumps(d), "PartitionKey": d["transaction_id"]} for d in decisions]))
    wait_until(lambda: ray.get(scoreboard.view.remote())["window"]["labelled"] >= len(decisions), timeout_s=60,
               what="the scoreboard's join")
    return sample["fraud_scenario"].value_counts().to_dict()


@pytest.fixture(scope="module")
def dashboard(served: tuple[str, Settings], small_history: Any) -> Iterator[tuple[str, dict[str, int]]]:
    from cluster.waiting import free_port
    from simulation.dashboard import SimulationControl, serving_dashboard
    from simulation.scoreboard import start_scoreboard, stop_scoreboard
    from tests.streams import create_stream

    url, settings = served
    settings = settings.model_copy(update={"decisions_stream_name": create_stream(settings, 1, "decisions")})
    scoreboard = start_scoreboard(settings)
    try:
        labelled = record_stream_decisions(url, settings, small_history, scoreboard)
        with serving_dashboard(settings, SimulationControl(scoreboard=scoreboard), port=free_port(),
                               refresh_s=1.0) as dashboard_url:
            yield dashboard_url, labelled
    finally:
        stop_scoreboard(scoreboard)


@pytest.fixture()
def page() -> Iterator[tuple[Any, list[str]]]:
    """A fresh headless Chromium page, and the errors it logs (console errors and uncaught exceptions)."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        tab.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error"
               else None)
        tab.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
        tab.set_default_timeout(WAIT_MS)
        yield tab, errors
        browser.close()


def test_dashboard_renders_live_figures_and_checks_a_transaction(dashboard: tuple[str, dict[str, int]],
                                                                 page: tuple[Any, list[str]]) -> None:
    url, labelled = dashboard
    tab, errors = page
    tab.goto(url)

    # live tiles from the stats actor
    tiles = tab.locator("#tiles .tile")
    tiles.first.wait_for()
    tab.wait_for_function("() => /[0-9]/.test(document.querySelector('#tiles .tile-value')?.textContent || '')")
    labels = [text.strip() for text in tab.locator("#tiles .tile-label").all_text_contents()]
    assert labels == ["transactions / s", "latency p50 / p99 (ms)", "flagged as fraud", "true fraud rate",
                      "alerts / min", "stream consumers behind"]

    # a time-series chart with a drawn line (two refreshes make two points) and the score distribution
    tab.wait_for_function("""() => Array.from(document.querySelectorAll('#latency-plot svg g.mark-line path'))
                                 .some(path => (path.getAttribute('d') || '').includes('L'))""")
    tab.wait_for_function("""() => document.querySelectorAll('#score-plot svg g.mark-line path').length >= 2""")
    assert "fraud" in tab.locator("#score-plot").inner_text()

    # detection per scenario shows the ground truth the scoreboard joined
    detection = tab.locator("#detection")
    scenario = next(name for name in labelled if name != "none")
    detection.get_by_text(scenario).first.wait_for()
    assert "genuine (false positives)" in detection.inner_text()

    # the manual check goes through the API and shows a score
    tab.get_by_role("tab", name="Check a transaction").click()
    amount = tab.locator("#check-amount input")
    amount.fill("250")
    tab.locator("#check-button").click()
    result = tab.locator("#check-result")
    tab.wait_for_function("() => /fraud_score|Rejected|unreachable/.test("
                          "document.querySelector('#check-result')?.textContent || '')")
    match = re.search(r"fraud_score ([0-9.]+) · (LOW|MEDIUM|HIGH)", result.inner_text())
    assert match, result.inner_text()
    assert 0.0 <= float(match.group(1)) <= 1.0

    # bad input: the API's 4xx names the field
    amount.fill("-5")
    tab.locator("#check-button").click()
    tab.wait_for_function("() => /Rejected/.test(document.querySelector('#check-result')?.textContent || '')")
    assert "Rejected (422)" in result.inner_text() and "amount" in result.inner_text()

    assert errors == [], errors


def test_monitoring_tab_shows_the_window_the_worst_features_and_their_drift_over_time(
        dashboard: tuple[str, dict[str, int]], page: tuple[Any, list[str]]) -> None:
    url, _ = dashboard
    tab, errors = page
    tab.goto(url)
    tab.get_by_role("tab", name="Monitoring").click()
    tab.wait_for_function("() => /transactions scored in the last/.test("
                          "document.querySelector('#monitoring-summary')?.textContent || '')")
    summary = tab.locator("#monitoring-summary").inner_text()
    assert "training reference of" in summary and "Labelled decisions" in summary
    worst = tab.locator("#worst-features")
    worst.get_by_text("psi").first.wait_for()
    tab.wait_for_function("""() => document.querySelectorAll('#drift-plot svg g.mark-line path').length >= 1""")
    assert errors == [], errors
