"""The model lifecycle over HTTP and the stream, on the session's Serve app: a canary share honoured on both paths
(the same model for the same transaction_id), a broken challenger rolled back by the guard on its own, promotion
by significance on labelled feedback, and a retrain cycle (kept transactions + feedback -> ``fraudctl retrain`` ->
challenger in shadow). Each test puts the champion pointer and the rollout state back as it found them."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from typer.testing import CliRunner

from cluster.aws import client
from cluster.config import Settings, get_settings, use_settings
from cluster.kinesis import put_records_reliably, read_stream, to_entries
from cluster.waiting import wait_until
from serve.champion import TRANSACTIONS_PREFIX, in_canary, read_log
from serve.rollout import RolloutStore, served_rows_since
from tests.conftest import API_KEY
from tests.streams import own_streams, stop_feature_state
from training.policy import RiskPolicy
from training.registry import registry_for

KEY = {"X-API-Key": API_KEY}
ROLLBACK_WITHIN_S = 60  # from the first canary request to the rolled-back state
SHARE = 0.3
TOLERANCE = 0.05


def fraudctl(settings: Settings, *args: str) -> dict[str, Any]:
    """Run the CLI in-process against these settings; its JSON answer."""
    from fraudctl.cli import app

    previous = get_settings()
    use_settings(settings)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        use_settings(previous)
    assert result.exit_code == 0, result.output
    text = result.stdout  # Ray Tune may print before the answer: the answer is the last top-level object
    return json.loads(text[text.rfind("\n{\n") + 1 :] if "\n{\n" in text else text)


def records(frame: pd.DataFrame, tag: str | None) -> list[dict[str, Any]]:
    """Transactions as HTTP bodies, ids made unique to the test (``tag``; None keeps the simulated ids)."""
    out = frame.drop(columns=["is_fraud", "fraud_scenario"], errors="ignore").reset_index(drop=True).copy()
    if tag:
        out["transaction_id"] = [f"{tag}-{i}" for i in range(len(out))]
    out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        for row in out.to_dict(orient="records")
    ]


def score(url: str, transactions: list[dict[str, Any]], batch: int = 100) -> list[dict[str, Any]]:
    results = []
    for start in range(0, len(transactions), batch):
        answer = requests.post(
            f"{url}/api/check-fraud/batch", json={"transactions": transactions[start : start + batch]}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        results.extend(answer.json()["results"])
    return results


def reload(url: str) -> dict[str, Any]:
    return requests.post(f"{url}/api/admin/reload", headers=KEY, timeout=60).json()


def register_variant(settings: Settings, policy: RiskPolicy | None = None) -> str:
    """The champion's real bundle registered again as a new version, with another risk policy if given: no
    stubbed scores, only the cut points differ."""
    registry = registry_for(settings)
    bundle = registry.load("champion")
    if policy is not None:
        bundle.ensemble = dataclasses.replace(bundle.ensemble, policy=policy)
    return registry.register(bundle, promote=False)


@pytest.fixture()
def lifecycle(served: tuple[str, Settings]) -> Iterator[tuple[str, Settings]]:
    """The session's app; afterwards the original champion and no stored rollout state, reloaded."""
    url, settings = served
    registry = registry_for(settings)
    champion = registry.resolve("champion")
    yield url, settings
    RolloutStore(settings).clear()
    registry.promote(champion)
    assert reload(url)["champion"] == champion


def test_a_canary_share_is_honoured_on_http_and_on_the_stream(
    lifecycle: tuple[str, Settings], small_history: Any
) -> None:
    from serve.stream import StreamScoring

    url, settings = lifecycle
    champion = registry_for(settings).resolve("champion")
    challenger = register_variant(settings)  # same scores, so no guardrail trips: this is about routing
    state = fraudctl(settings, "rollout", challenger, "--share", str(SHARE))
    assert (state["mode"], state["share"], state["version"]) == ("canary", SHARE, challenger)
    status = fraudctl(settings, "rollout", "--status")
    assert status["stored"] and status["events"][-1]["to"] == "canary" and status["champion"] == champion
    assert reload(url) == {"champion": champion, "challenger": challenger}

    frame = small_history.transactions.tail(1000)
    transactions = records(frame, "canary")
    over_http = {r["transaction_id"]: r["model_version"] for r in score(url, transactions)}
    served_share = sum(v == challenger for v in over_http.values()) / len(over_http)
    assert abs(served_share - SHARE) <= TOLERANCE, served_share
    assert all((version == challenger) == in_canary(tid, SHARE) for tid, version in over_http.items())

    stream = own_streams(settings, 2, "canary-in")
    scoring = StreamScoring(stream, poll_shards_s=0.5).start()
    try:
        produced = frame.copy()
        produced["transaction_id"] = [t["transaction_id"] for t in transactions]  # the same ids as over HTTP
        put_records_reliably(client("kinesis", stream), stream.stream_name, to_entries(produced))

        def all_decided() -> dict[str, str]:
            decided = {
                d["transaction_id"]: d["model_version"] for d in read_stream(stream, stream.decisions_stream_name)
            }
            return decided if len(decided) >= len(transactions) else {}

        on_stream = wait_until(all_decided, timeout_s=240, interval_s=1.0, what="a stream decision for every id")
    finally:
        scoring.stop()
        stop_feature_state(stream)
    stream_share = sum(v == challenger for v in on_stream.values()) / len(on_stream)
    assert abs(stream_share - SHARE) <= TOLERANCE, stream_share
    assert on_stream == over_http  # each transaction_id got the same model on both paths


def test_a_broken_challenger_is_rolled_back_by_the_guardrail(
    lifecycle: tuple[str, Settings], small_history: Any
) -> None:
    url, settings = lifecycle
    champion = registry_for(settings).resolve("champion")
    broken = register_variant(settings, RiskPolicy(threshold=0.0, medium=0.0))  # every score is HIGH
    fraudctl(settings, "rollout", broken, "--share", "0.5")
    assert reload(url)["challenger"] == broken
    store = RolloutStore(settings)
    transactions = records(small_history.transactions.tail(3000), "broken")
    started, sent = time.monotonic(), 0
    served_by_broken: list[dict[str, Any]] = []
    while store.current().mode != "rolled_back" and time.monotonic() - started < ROLLBACK_WITHIN_S:
        served_by_broken += [r for r in score(url, transactions[sent : sent + 100]) if r["model_version"] == broken]
        sent = (sent + 100) % len(transactions)
    elapsed = time.monotonic() - started
    state = store.current()
    assert state.mode == "rolled_back", f"still {state.mode} after {elapsed:.0f} s"
    assert served_by_broken and all(r["risk_level"] == "HIGH" for r in served_by_broken)
    event = state.events[-1]
    assert (event["from"], event["to"], state.share) == ("canary", "rolled_back", 0.0)
    assert event["reason"].startswith("guardrail: alert (HIGH) rate"), event
    print(f"rolled back {elapsed:.1f} s after the first canary request")

    fresh = records(small_history.transactions.head(200), "after-rollback")
    wait_until(
        lambda: {r["model_version"] for r in score(url, fresh)} == {champion},
        timeout_s=settings.serve_model_refresh_s * 10,
        interval_s=settings.serve_model_refresh_s,
        what="every answer from the champion again",
    )


def test_a_challenger_the_significance_test_prefers_is_promoted(
    lifecycle: tuple[str, Settings], small_history: Any
) -> None:
    url, settings = lifecycle
    registry = registry_for(settings)
    # a challenger that alerts on the top tenth of the champion's scores on this traffic: the two disagree often
    preview = score(url, records(small_history.transactions.tail(400), "promotion-preview"))
    cut = float(np.quantile([r["fraud_score"] for r in preview], 0.9))
    wider = register_variant(settings, RiskPolicy(threshold=cut, medium=cut / 2))
    state = fraudctl(settings, "rollout", wider, "--share", "0")  # shadow: only logged, never answered
    assert state["mode"] == "shadow" and reload(url)["challenger"] == wider
    transactions = records(small_history.transactions.tail(400), "promotion")
    answers = score(url, transactions)
    assert {r["model_version"] for r in answers} == {registry.resolve("champion")}

    def live_status() -> dict[str, Any] | None:  # the guard's view, as the API and `rollout --status` give it
        status = fraudctl(settings, "rollout", "--status")
        return status if (status["live"]["champion"] or {}).get("rows", 0) >= len(transactions) else None

    status = wait_until(live_status, timeout_s=60, interval_s=1.0, what="the champion's rows in the live status")
    assert (status["version"], status["mode"], status["stored"]) == (wider, "shadow", True)
    assert status["champion"] == registry.resolve("champion") and 0 <= status["live"]["champion"]["alert_rate"] <= 1
    over_http = requests.get(f"{url}/api/rollout", timeout=30).json()
    stable = ("version", "share", "mode", "since", "events", "stored", "champion", "window_s")
    assert {key: over_http[key] for key in stable} == {key: status[key] for key in stable}

    def all_logged() -> list[pd.DataFrame]:
        rows = served_rows_since(settings, wider, state["since"])
        return [rows] if len(rows) >= len(transactions) else []

    [logged] = wait_until(all_logged, timeout_s=60, interval_s=1.0, what="the shadow decisions logged")
    assert (logged["challenger_is_fraud"] != logged["champion_is_fraud"]).sum() >= 10, "too few discordant pairs"
    # synthetic labels that agree with the challenger: it is right wherever the two disagree
    for tid, label in zip(logged["transaction_id"], logged["challenger_is_fraud"]):
        requests.post(
            f"{url}/api/feedback", json={"transaction_id": tid, "is_fraud": int(label)}, headers=KEY, timeout=30
        ).raise_for_status()
    wait_until(
        lambda: registry.resolve("champion") == wider,
        timeout_s=120,
        interval_s=1.0,
        what="the significance test promoting the challenger",
    )
    promoted = RolloutStore(settings).current()
    assert promoted.mode == "promoted" and promoted.events[-1]["reason"].startswith("significance: McNemar")
    wait_until(
        lambda: (
            requests.post(f"{url}/api/check-fraud", json=transactions[0], timeout=30).json()["model_version"] == wider
        ),
        timeout_s=30,
        interval_s=1.0,
        what="the app answering from it",
    )


def test_retraining_from_kept_transactions_and_feedback_starts_a_challenger_in_shadow(
    lifecycle: tuple[str, Settings], small_history: Any, tmp_path: Any
) -> None:
    from cluster.datasets import write_transactions

    url, settings = lifecycle
    champion = registry_for(settings).resolve("champion")
    history = small_history.transactions
    cut = history["timestamp"].min() + pd.Timedelta(days=12)
    bootstrap = write_transactions(history[history["timestamp"] < cut], tmp_path / "bootstrap.parquet")
    recent = history[history["timestamp"] >= cut].reset_index(drop=True)
    recent["transaction_id"] = [f"retrain-{i}" for i in range(len(recent))]  # ids of this test's own: alerts once
    score(url, records(recent, None), batch=1000)  # kept by the app's transaction log
    frauds = recent.loc[recent["is_fraud"] == 1, "transaction_id"]
    for tid in frauds:
        requests.post(
            f"{url}/api/feedback", json={"transaction_id": tid, "is_fraud": 1}, headers=KEY, timeout=30
        ).raise_for_status()
    wait_until(
        lambda: set(recent["transaction_id"]) <= set(read_log(settings, TRANSACTIONS_PREFIX)["transaction_id"]),
        timeout_s=60,
        interval_s=2.0,
        what="every scored transaction kept",
    )

    window = ["--since", f"{history['timestamp'].min():%Y-%m-%d}", "--until", f"{history['timestamp'].max():%Y-%m-%d}"]
    # the window of this history: other tests' transactions, kept by the same app, have other dates
    summary = fraudctl(settings.model_copy(update={"retrain_history": bootstrap}), "retrain", *window, "--trials", "1")
    assert summary["history"]["bootstrap"] == int((history["timestamp"] < cut).sum())
    assert summary["history"]["labelled"] >= len(frauds) and summary["history"]["kept"] >= len(recent)
    assert summary["history"]["frauds"] >= int(history["is_fraud"].sum())
    assert 0.0 <= summary["metrics"]["average_precision"] <= 1.0
    assert summary["rollout"]["mode"] == "shadow"
    version = summary["version"]
    state = RolloutStore(settings).current()
    assert (state.version, state.mode, state.share) == (version, "shadow", 0.0)
    assert registry_for(settings).resolve("champion") == champion
    assert reload(url) == {"champion": champion, "challenger": version}
    answers = score(url, records(recent.tail(50), "after-retrain"))
    assert {r["model_version"] for r in answers} == {champion}  # in shadow: answers still from the champion
