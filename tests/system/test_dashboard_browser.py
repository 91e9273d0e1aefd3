"""The dashboard in a real browser (headless Chromium through Playwright), against the session's Serve app, the
cluster's stats actor and a scoreboard joining ground truth: live tiles and charts render, the manual check scores
through the API, bad input shows the API's error naming the field; the Rules tab saves a rule (and shows a 422's
field), and tests the rule set on the simulated history as a table and a chart; the Review tab decides a case; the
Monitoring tab shows the window and the worst features; a world shift applied on the Simulation tab to real producer
actors (scored by real stream consumers) shows up there as drift and sends the drift notification; and the page
logs no error. Each test that changes the rule set puts back the one it found (other system tests share
it)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pytest
import requests

from cluster.config import Settings
from cluster.schema import format_timestamp
from cluster.waiting import wait_until
from tests.conftest import API_KEY

KEY = {"X-API-Key": API_KEY}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "Chromium is not installed (the browser test needs it): `apt-get install -y chromium`, which "
            "`make test` runs when it is missing"
        )
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
    sample = sample.assign(
        timestamp=sample["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        transaction_id="dashboard-" + sample["transaction_id"],
    )
    ray.get(scoreboard.report.remote(sample["transaction_id"].tolist(), sample["fraud_scenario"].tolist()))
    records = [
        {k: v for k, v in row.items() if not pd.isna(v) and k not in ("is_fraud", "fraud_scenario")}
        for row in sample.to_dict(orient="records")
    ]
    response = requests.post(f"{url}/api/check-fraud/batch", json={"transactions": records}, timeout=120)
    response.raise_for_status()
    decisions = response.json()["results"]
    transactions = [Transaction.model_validate(r) for r in records]
    reporter = StatsReporter()
    reporter.add(
        scored=len(decisions),
        alerts=0,
        latency_ms=5.0,
        stream_lags_ms=[250.0, 400.0, 900.0],
        decisions=decisions,
        transactions=transactions,
    )
    ray.get(reporter.flush())
    put_records_reliably(
        client("kinesis", settings),
        settings.decisions_stream_name,
        pack([{"Data": orjson.dumps(d), "PartitionKey": d["transaction_id"]} for d in decisions]),
    )
    wait_until(
        lambda: ray.get(scoreboard.view.remote())["window"]["labelled"] >= len(decisions),
        timeout_s=60,
        what="the scoreboard's join",
    )
    return sample["fraud_scenario"].value_counts().to_dict()


@pytest.fixture(scope="module")
def dashboard(
    served: tuple[str, Settings], small_history: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, int]]]:
    """The dashboard on a free port; its rule test replays the session's small simulated history."""
    from cluster.waiting import free_port
    from simulation.dashboard import SimulationControl, serving_dashboard
    from simulation.history import write_history
    from simulation.scoreboard import start_scoreboard, stop_scoreboard
    from tests.streams import create_stream

    url, settings = served
    history_file = tmp_path_factory.mktemp("rule-test") / "history.parquet"
    write_history(small_history, history_file)
    settings = settings.model_copy(
        update={"decisions_stream_name": create_stream(settings, 1, "decisions"), "rule_test_data": history_file}
    )
    scoreboard = start_scoreboard(settings)
    try:
        labelled = record_stream_decisions(url, settings, small_history, scoreboard)
        with serving_dashboard(
            settings, SimulationControl(scoreboard=scoreboard), port=free_port(), refresh_s=1.0
        ) as dashboard_url:
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
        tab.on(
            "console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None
        )
        tab.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
        tab.set_default_timeout(WAIT_MS)
        yield tab, errors
        browser.close()


def test_dashboard_renders_live_figures_and_checks_a_transaction(
    dashboard: tuple[str, dict[str, int]], page: tuple[Any, list[str]]
) -> None:
    url, labelled = dashboard
    tab, errors = page
    tab.goto(url)

    # live tiles from the stats actor
    tiles = tab.locator("#tiles .tile")
    tiles.first.wait_for()
    tab.wait_for_function("() => /[0-9]/.test(document.querySelector('#tiles .tile-value')?.textContent || '')")
    labels = [text.strip() for text in tab.locator("#tiles .tile-label").all_text_contents()]
    assert labels == [
        "transactions / s",
        "latency p50 / p99 (ms)",
        "flagged as fraud",
        "true fraud rate",
        "alerts / min",
        "stream consumers behind",
    ]

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
    tab.wait_for_function(
        "() => /fraud_score|Rejected|unreachable/.test(document.querySelector('#check-result')?.textContent || '')"
    )
    match = re.search(r"fraud_score ([0-9.]+) · (LOW|MEDIUM|HIGH)", result.inner_text())
    assert match, result.inner_text()
    assert 0.0 <= float(match.group(1)) <= 1.0

    # bad input: the API's 4xx names the field
    amount.fill("-5")
    tab.locator("#check-button").click()
    tab.wait_for_function("() => /Rejected/.test(document.querySelector('#check-result')?.textContent || '')")
    assert "Rejected (422)" in result.inner_text() and "amount" in result.inner_text()

    assert errors == [], errors


@pytest.fixture()
def rules_put_back(served: tuple[str, Settings]) -> Iterator[str]:
    """The API's URL; the rule set this test found is put back afterwards."""
    url, _ = served
    found = requests.get(f"{url}/api/rules", timeout=30).json()
    yield url
    body = {"mode": found["mode"], "rules": found["rules"]}
    response = requests.put(f"{url}/api/rules", json=body, headers=KEY, timeout=30)
    assert response.status_code == 200, response.text


def _text(tab: Any, selector: str, pattern: str) -> str:
    """The element's text once ``pattern`` (a JS regex) matches it."""
    tab.wait_for_function(
        "([selector, pattern]) => new RegExp(pattern).test(document.querySelector(selector)?.textContent || '')",
        arg=[selector, pattern],
    )
    return tab.locator(selector).inner_text()


def test_rules_tab_saves_a_rule_and_tests_the_rule_set_on_history(
    dashboard: tuple[str, dict[str, int]], rules_put_back: str, page: tuple[Any, list[str]]
) -> None:
    url, _ = dashboard
    api = rules_put_back
    tab, errors = page
    tab.goto(url)
    tab.get_by_role("tab", name="Rules").click()
    _text(tab, "#rules-status", "Active rule set: version")
    editor = tab.locator("#rules-editor textarea")

    # an invalid expression: the API's 422 names the field
    editor.fill("mode: all_matched\nrules:\n  - id: dash-bad\n    expression: amount.__class__\n    action: block\n")
    tab.locator("#rules-save").click()
    rejected = _text(tab, "#rules-save-result", "rejected")
    assert "rejected (422)" in rejected and "rules.0.expression" in rejected

    # a valid rule set is saved through the API and shown as the active one
    editor.fill(
        "mode: all_matched\nrules:\n"
        "  - id: dash-large\n    expression: amount > 300\n    action: review\n"
        "    description: large amount\n"
        "  - id: dash-night\n    expression: hour_of_day < 5 and amount > 100\n    action: block\n"
        "    state: shadow\n"
    )
    tab.locator("#rules-save").click()
    saved = _text(tab, "#rules-save-result", "Saved: version")
    version = int(re.search(r"version (\d+)", saved).group(1))
    stored = requests.get(f"{api}/api/rules", timeout=30).json()
    assert stored["version"] == version and [r["id"] for r in stored["rules"]] == ["dash-large", "dash-night"]
    assert stored["rules"][1]["state"] == "shadow"
    _text(tab, "#rules-status", f"version {version}")
    assert "dash-night" in tab.locator("#rules-table").inner_text()

    # the rule test replays the simulated history: a row per rule and matches per day on a chart
    tab.locator("#rules-test").click()
    summary = _text(tab, "#rules-test-summary", "Rule test:|Not tested")
    assert re.search(r"Rule test: [0-9,]+ transactions", summary), summary
    table = tab.locator("#rules-test-table")
    table.get_by_text("dash-large").filter(visible=True).first.wait_for()  # (a hidden copy measures the cells)
    assert "dash-night" in table.inner_text() and "shadow" in table.inner_text()
    tab.wait_for_function("""() => Array.from(document.querySelectorAll('#rules-per-day svg g.mark-line path'))
                                 .some(path => (path.getAttribute('d') || '').includes('L'))""")

    # an invalid editor rule set is not tested, and its field is named
    editor.fill("rules:\n  - {id: dash-bad, expression: 'amount >', action: block}\n")
    tab.locator("#rules-test").click()
    untested = _text(tab, "#rules-test-summary", "Not tested")
    assert "rules.0.expression" in untested

    assert errors == [], errors


def _open_case(url: str, user_id: str) -> dict[str, Any]:
    """A review decision for ``user_id`` (a rule sends the user to review) and the case it opens."""
    rules = {
        "mode": "first_matched",
        "rules": [
            {
                "id": "dash-review",
                "expression": f"user_id == '{user_id}'",
                "action": "review",
                "description": "the dashboard test's user",
            }
        ],
    }
    assert requests.put(f"{url}/api/rules", json=rules, headers=KEY, timeout=30).status_code == 200
    decided: list[dict[str, Any]] = []

    def reviewed() -> bool:
        body = {
            "transaction_id": f"{user_id}-{uuid.uuid4().hex[:8]}",
            "user_id": user_id,
            "merchant_id": "m000017",
            "amount": 432.1,
            "currency": "USD",
            "timestamp": format_timestamp(datetime.now(timezone.utc)),
            "channel": "online",
            "country": "US",
        }
        response = requests.post(f"{url}/api/check-fraud", json=body, timeout=30)
        assert response.status_code == 200, response.text
        decided.append(response.json())
        return decided[-1]["action"] == "review"

    wait_until(reviewed, timeout_s=15, interval_s=0.3, what="the review rule applied")
    transaction_id = decided[-1]["transaction_id"]

    def opened() -> dict[str, Any] | None:
        queue = requests.get(f"{url}/api/cases", params={"status": "open", "limit": 500}, timeout=30).json()
        return next((c for c in queue["cases"] if c["transaction_id"] == transaction_id), None)

    wait_until(lambda: opened() is not None, timeout_s=30, interval_s=0.3, what="the case opened")
    return opened()


def test_review_tab_decides_a_case(
    dashboard: tuple[str, dict[str, int]], rules_put_back: str, page: tuple[Any, list[str]]
) -> None:
    url, _ = dashboard
    api = rules_put_back
    case = _open_case(api, f"u-dash-{uuid.uuid4().hex[:8]}")
    tab, errors = page
    tab.goto(url)
    tab.get_by_role("tab", name="Review").click()
    tab.locator("#review-limit input").fill("500")
    tab.locator("#review-refresh").click()
    summary = _text(tab, "#review-summary", "open case")
    assert re.search(r"[0-9,]+ open cases? · the oldest waits for", summary), summary

    # the case's row in the queue selects it: its transaction, reasons and the rule that sent it
    queue = tab.locator("#review-queue")
    queue.get_by_text(case["case_id"]).filter(visible=True).first.click()
    details = _text(tab, "#review-details", case["transaction_id"])
    assert "dash-review (review)" in details and f"user {case['user_id']}" in details  # markdown as rendered

    tab.locator("#review-analyst textarea").fill("dashboard-test")
    tab.locator("#review-note textarea").fill("confirmed by the browser test")
    tab.locator("#review-fraud").click()
    result = _text(tab, "#review-result", "Decided|rejected|Already|unreachable")
    assert f"Decided: {case['case_id']} is fraud" in result, result

    closed = requests.get(f"{api}/api/cases", params={"status": "closed", "limit": 500}, timeout=30).json()
    decided = next(c for c in closed["cases"] if c["case_id"] == case["case_id"])
    assert (decided["is_fraud"], decided["analyst"], decided["note"]) == (
        True,
        "dashboard-test",
        "confirmed by the browser test",
    )
    tab.wait_for_function(
        "(id) => !(document.querySelector('#review-queue')?.textContent || '').includes(id)", arg=case["case_id"]
    )


def test_monitoring_tab_shows_the_window_the_worst_features_and_their_drift_over_time(
    dashboard: tuple[str, dict[str, int]], page: tuple[Any, list[str]]
) -> None:
    url, _ = dashboard
    tab, errors = page
    tab.goto(url)
    tab.get_by_role("tab", name="Monitoring").click()
    tab.wait_for_function(
        "() => /transactions scored in the last/.test(document.querySelector('#monitoring-summary')?.textContent || '')"
    )
    summary = tab.locator("#monitoring-summary").inner_text()
    assert "training reference of" in summary and "Labelled decisions" in summary
    worst = tab.locator("#worst-features")
    worst.get_by_text("psi").first.wait_for()
    tab.wait_for_function("""() => document.querySelectorAll('#drift-plot svg g.mark-line path').length >= 1""")
    assert errors == [], errors


MISSING_FIELD = "device_id"
MISSING_FEATURES = ("device_missing",)  # what that field going missing moves (no other test does), among the worst
SIMULATED_TPS = 200.0
DRIFT_WAIT_MS = 150_000  # consumers starting, then ``drift_consecutive`` evaluations ``monitoring_evaluate_s`` apart


@pytest.fixture()
def live_simulation(served: tuple[str, Settings]) -> Iterator[tuple[str, str, list[Any], Settings]]:
    """Real producer actors into a stream of their own, scored by real stream consumers (which report to the
    session's monitoring actor), and the dashboard driving those producers. Yields (dashboard URL, API URL,
    producers, settings); afterwards the shift is removed and producers, consumers and scoreboard stop."""
    import ray

    from cluster.waiting import free_port
    from serve.stream import StreamScoring
    from simulation.dashboard import SimulationControl, serving_dashboard
    from simulation.producers import start_producers
    from simulation.scoreboard import start_scoreboard, stop_scoreboard
    from tests.streams import own_streams, stop_feature_state

    url, settings = served
    settings = own_streams(settings, 1, "drift-in")
    scoreboard = start_scoreboard(settings)
    stream = StreamScoring(settings, poll_shards_s=0.5).start()
    producers, _ = start_producers(settings, tps=SIMULATED_TPS, n_users=300, actors=1, scoreboard=scoreboard)
    try:
        with serving_dashboard(
            settings, SimulationControl(producers, scoreboard), port=free_port(), refresh_s=1.0
        ) as dashboard_url:
            yield dashboard_url, url, producers, settings
    finally:
        ray.get([producer.set_world_shift.remote(None) for producer in producers], timeout=60)
        for producer in producers:
            producer.stop.remote()
            ray.kill(producer)
        stream.stop()
        stop_feature_state(settings)
        stop_scoreboard(scoreboard)


def test_a_world_shift_from_the_simulation_tab_shows_up_as_drift_on_the_monitoring_tab(
    live_simulation: tuple[str, str, list[Any], Settings], page: tuple[Any, list[str]]
) -> None:
    import ray

    from tests.streams import drain_alerts, subscribe_alert_queue

    dashboard_url, api, producers, settings = live_simulation
    before = requests.get(f"{api}/api/monitoring", timeout=30).json()
    assert not set(MISSING_FEATURES) & set(before["drifted"]), before["drifted"]
    drift_queue = subscribe_alert_queue(settings, f"drift-{uuid.uuid4().hex[:8]}", topic=settings.drift_topic)
    tab, errors = page
    tab.goto(dashboard_url)

    # the Simulation tab's controls drive the live producers: every transaction loses its device
    tab.get_by_role("tab", name="Simulation").click()
    share = tab.locator("#shift-share input[type=number]")
    share.fill("1")
    share.press("Enter")
    tab.locator("#shift-missing").get_by_label(MISSING_FIELD, exact=True).check()
    tab.locator("#shift-button").click()
    result = _text(tab, "#control-result", "World shift")
    assert f"World shift applied from the next batch: {MISSING_FIELD} missing on 100% of the traffic" in result
    assert [stats["world_shift"] for stats in ray.get([p.get_stats.remote() for p in producers], timeout=60)] == [
        f"{MISSING_FIELD} missing on 100% of the traffic"
    ]

    # the Monitoring tab: those features drifted, at the top of the worst features, on the drift chart
    tab.get_by_role("tab", name="Monitoring").click()
    tab.wait_for_function(
        """(names) => {
        const text = document.querySelector('#monitoring-summary')?.textContent || '';
        const drifted = (text.match(/drifted features: ([^·]*)/) || ['', ''])[1];
        return names.every(name => drifted.includes(name));
    }""",
        arg=list(MISSING_FEATURES),
        timeout=DRIFT_WAIT_MS,
    )
    worst = tab.locator("#worst-features")
    for name in MISSING_FEATURES:
        worst.get_by_text(name, exact=True).filter(visible=True).first.wait_for()  # (a hidden copy measures cells)
    tab.wait_for_function(
        """(names) => names.every(name =>  // a legend entry or a line's aria-label names it
        (document.querySelector('#drift-plot')?.innerHTML || '').includes(name))""",
        arg=list(MISSING_FEATURES),
    )

    view = requests.get(f"{api}/api/monitoring", timeout=30).json()
    assert set(MISSING_FEATURES) <= set(view["drifted"])
    assert all(view["features"][name]["psi"] > view["drift_policy"]["psi_threshold"] for name in MISSING_FEATURES)
    assert view["inputs"][MISSING_FIELD]["missing_rate"] > view["inputs"][MISSING_FIELD]["reference_missing_rate"]
    messages: list[dict[str, Any]] = []  # one per evaluation that starts episodes
    wait_until(
        lambda: (
            messages.extend(drain_alerts(settings, drift_queue))
            or set(MISSING_FEATURES) <= {name for message in messages for name in message["features"]}
        ),
        timeout_s=30,
        interval_s=1.0,
        what="the drift notification naming the features",
    )
    assert errors == [], errors
