"""Exactly-once feature state under chaos: a stream of N simulated transactions is scored while a state actor (and,
separately, a consumer, the alert desk) is killed at a random point; afterwards every transaction's features and
score equal those of an uninterrupted run of the same stream, there is one decision per transaction, and every HIGH
alerted once. And transactions scored over HTTP before a kill still count in the windows after it (the ingest
stream's replay)."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ray
import requests

from cluster.config import Settings
from cluster.feature_state import OnlineFeatures
from cluster.features import FEATURE_NAMES
from cluster.kinesis import read_stream
from cluster.runtime import ACTOR_NAMESPACE
from cluster.schema import Transaction, canonical_columns, format_timestamp, scoring_record
from cluster.waiting import wait_until
from serve.alerts import alert_desk_name
from serve.sdk import FraudDetector
from serve.stream import StreamScoring
from tests.streams import drain_alerts, stop_feature_state, subscribe_alert_queue
from tests.system.test_stream import ledger_ids, produce, stream_settings, traffic, wait_for_decisions

N = 1_500
CHUNK = 50  # transactions per put: the consumer scores many small batches, so the kill lands mid-stream


@pytest.fixture()
def chaos_run(ray_session: Settings, champion_model: str, small_history: Any) -> Iterator[dict[str, Any]]:
    """A one-shard stream (so its order is the stream's one order), its own feature state, and an uninterrupted
    reference: the same transactions in the same order through a fresh state."""
    state = f"chaos-{uuid.uuid4().hex[:8]}"
    settings = stream_settings(ray_session, shards=1).model_copy(
        update={"feature_snapshot_interval_s": 3600.0, "feature_state_name": state}
    )
    frame = traffic(small_history, N, state)
    unlabelled = frame.drop(columns=["is_fraud", "fraud_scenario"])
    reference = OnlineFeatures(settings, name=f"{state}-reference", restore=False)
    detector = FraudDetector(settings, features=reference)
    expected = [
        d for start in range(0, N, CHUNK) for d in detector.predict_batch(unlabelled.iloc[start : start + CHUNK])
    ]
    stream = StreamScoring(settings, poll_shards_s=0.5).start()
    try:
        yield {
            "state": state,
            "settings": settings,
            "frame": frame,
            "unlabelled": unlabelled,
            "stream": stream,
            "reference": reference,
            "expected": expected,
        }
    finally:
        stream.stop()
        reference.shutdown()
        stop_feature_state(settings)


def produce_slowly(settings: Settings, frame: pd.DataFrame) -> threading.Thread:
    def run() -> None:
        for start in range(0, len(frame), CHUNK):
            produce(settings, frame.iloc[start : start + CHUNK])
            threading.Event().wait(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def decided(settings: Settings) -> int:
    return len(read_stream(settings, settings.decisions_stream_name))


def assert_as_if_uninterrupted(run: dict[str, Any], *, repeats_allowed: bool) -> list[dict[str, Any]]:
    settings, frame = run["settings"], run["frame"]
    ids = set(frame["transaction_id"])
    decisions = wait_for_decisions(settings, ids)
    seen = [d["transaction_id"] for d in decisions]
    assert set(seen) == ids, f"{len(ids - set(seen))} transactions without a decision"
    if not repeats_allowed:
        assert len(seen) == N, "exactly N decisions"
    first = {d["transaction_id"]: d for d in reversed(decisions)}
    for want in run["expected"]:
        got = first[want["transaction_id"]]
        assert got["fraud_score"] == pytest.approx(want["fraud_score"], abs=1e-9), want["transaction_id"]
        assert (got["risk_level"], got["factors"]) == (want["risk_level"], want["factors"])
    recovered = OnlineFeatures(settings, name=run["state"], restore=False)
    got = recovered.compute(run["unlabelled"])  # what each transaction got: the state remembers it
    want = run["reference"].compute(run["unlabelled"])
    np.testing.assert_allclose(got[list(FEATURE_NAMES)], want[list(FEATURE_NAMES)], rtol=1e-9, atol=1e-9)
    assert recovered.summary()["keys"] == run["reference"].summary()["keys"]
    high = {d["transaction_id"] for d in run["expected"] if d["risk_level"] == "HIGH"}
    alerted = ledger_ids(settings, f"{run['state']}-")
    assert len(alerted) == len(set(alerted)) and set(alerted) == high, "every HIGH alerted once"
    return decisions


def test_a_killed_state_actor_comes_back_with_its_windows_exact(chaos_run: dict[str, Any]) -> None:
    settings, state = chaos_run["settings"], chaos_run["state"]
    kill_after = random.randint(N // 5, 3 * N // 5)
    producer = produce_slowly(settings, chaos_run["frame"])
    wait_until(
        lambda: decided(settings) >= kill_after,
        timeout_s=240,
        interval_s=0.2,
        what=f"{kill_after} decisions before the kill",
    )
    print(f"killing the state actor after {kill_after} decisions")  # shown with a failure: the point to retry
    ray.kill(ray.get_actor(f"{state}-0", namespace=ACTOR_NAMESPACE), no_restart=False)
    producer.join()
    assert_as_if_uninterrupted(chaos_run, repeats_allowed=False)
    summary = OnlineFeatures(settings, name=state, restore=False).summary()
    assert summary["recoveries"] == 1
    assert summary["replayed"] >= kill_after, "everything applied before the kill came back from the stream"
    assert summary["last_recovery_s"] > 0 and summary["last_snapshot_at"] is not None


def test_a_killed_consumer_resends_from_its_checkpoint_and_nothing_counts_twice(chaos_run: dict[str, Any]) -> None:
    settings = chaos_run["settings"]
    kill_after = random.randint(N // 5, 3 * N // 5)
    producer = produce_slowly(settings, chaos_run["frame"])
    wait_until(
        lambda: decided(settings) >= kill_after,
        timeout_s=240,
        interval_s=0.2,
        what=f"{kill_after} decisions before the kill",
    )
    print(f"killing the consumer after {kill_after} decisions")
    ray.kill(next(iter(chaos_run["stream"].consumers.values())), no_restart=False)
    producer.join()
    decisions = assert_as_if_uninterrupted(chaos_run, repeats_allowed=True)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for decision in decisions:
        by_id.setdefault(decision["transaction_id"], []).append(decision)
    for repeated in (group for group in by_id.values() if len(group) > 1):  # a re-sent batch repeats its decisions
        assert len({(d["fraud_score"], d["risk_level"]) for d in repeated}) == 1


def test_a_killed_alert_desk_alerts_every_high_once_and_the_windows_stay_exact(chaos_run: dict[str, Any]) -> None:
    """The desk is restarted by Ray and the calls in flight retried: the ledger claims every HIGH once, no message
    goes out twice (a desk lost between a claim and its message loses that message, never repeats it)."""
    settings, state = chaos_run["settings"], chaos_run["state"]
    high = {d["transaction_id"] for d in chaos_run["expected"] if d["risk_level"] == "HIGH"}
    assert high, "the stream has no HIGH decision for the desk to alert"
    queue = subscribe_alert_queue(settings, f"alerts-{state}")
    kill_after = random.randint(N // 5, 3 * N // 5)
    producer = produce_slowly(settings, chaos_run["frame"])
    wait_until(
        lambda: decided(settings) >= kill_after,
        timeout_s=240,
        interval_s=0.2,
        what=f"{kill_after} decisions before the kill",
    )
    print(f"killing the alert desk after {kill_after} decisions")
    ray.kill(ray.get_actor(alert_desk_name(settings), namespace=ACTOR_NAMESPACE), no_restart=False)
    producer.join()
    assert_as_if_uninterrupted(chaos_run, repeats_allowed=False)
    messages = [
        m["transaction"]["transaction_id"]
        for m in drain_alerts(settings, queue)
        if m["transaction"]["transaction_id"].startswith(f"{state}-")
    ]
    assert len(messages) == len(set(messages)) and set(messages) <= high, "no alert message repeated or invented"


def card_bursts(tag: str, start: pd.Timestamp, cards: int = 5, per_card: int = 6) -> list[list[dict[str, Any]]]:
    """Request bodies for cards of their own (and shops of their own, so no other test's rows share a window),
    each card buying every 5 minutes: ``per_card`` rounds, every round one batch of all the cards."""
    return [
        [
            {
                "transaction_id": f"{tag}-{card}-{turn}",
                "user_id": f"{tag}-card{card}",
                "merchant_id": f"{tag}-shop{(card + turn) % 3}",
                "amount": 20.0 + 7 * turn + card,
                "timestamp": format_timestamp(start + pd.Timedelta(minutes=5 * turn, seconds=card)),
                "channel": "online",
                "device_id": f"{tag}-device{card}",
                "country": "US",
                "lat": 40.7,
                "lon": -74.0,
            }
            for card in range(cards)
        ]
        for turn in range(per_card)
    ]


def columns_of(batches: list[list[dict[str, Any]]]) -> dict[str, Any]:
    return canonical_columns([scoring_record(Transaction.model_validate(body)) for batch in batches for body in batch])


def test_http_scored_transactions_still_count_after_a_state_actor_kill(
    served: tuple[str, Settings], small_history: Any
) -> None:
    """Rounds 1-2 scored over HTTP, then a snapshot (they are in it), rounds 3-4 (only in the ingest stream), a kill
    of the app's state actor, rounds 5-6: every round's features equal an uninterrupted state's, so rounds 3-4
    came back and rounds 1-2, replayed too (within the margin before the snapshot), did not count twice."""
    url, settings = served
    tag = f"http-{uuid.uuid4().hex[:8]}"
    state = OnlineFeatures(settings, restore=False)  # the app's own (its actors exist: named, shared)
    # the rounds end before the state's clock (other tests' transactions may be dated months after the history):
    # a snapshot's compaction evicts history more than the windows behind that clock
    clock = state.summary()["event_time"]
    start = (small_history.transactions["timestamp"].max() if clock is None else pd.Timestamp(clock)) - pd.Timedelta(
        hours=1
    )
    rounds = card_bursts(tag, start)

    def score(batches: list[list[dict[str, Any]]]) -> None:
        for batch in batches:
            response = requests.post(f"{url}/api/check-fraud/batch", json={"transactions": batch}, timeout=300)
            assert response.status_code == 200, response.text

    score(rounds[:2])
    state.snapshot()
    before = state.summary()
    score(rounds[2:4])
    assert state.summary()["last_snapshot_at"] == before["last_snapshot_at"], "rounds 3-4 only in the ingest log"
    ray.kill(ray.get_actor(f"{state.name}-0", namespace=ACTOR_NAMESPACE), no_restart=False)
    score(rounds[4:])  # waits through the recovery
    after = state.summary()

    reference = OnlineFeatures(settings, name=f"{tag}-reference", restore=False)
    try:
        want = np.vstack([reference.matrix(columns_of([batch])) for batch in rounds])
    finally:
        reference.shutdown()
    got = state.matrix(columns_of(rounds))  # what each transaction got: the state remembers it
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    count_1h = list(FEATURE_NAMES).index("user_count_1h")
    assert got[-5:, count_1h].tolist() == [6.0] * 5, "the last round counts each card's six in the hour"
    assert after["recoveries"] == before["recoveries"] + 1
    assert after["replayed_http"] - before["replayed_http"] >= sum(map(len, rounds[2:4])), "rounds 3-4 replayed"
