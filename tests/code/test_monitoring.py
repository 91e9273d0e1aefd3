"""Drift monitoring's pure logic: reference bins, PSI, the window, hysteresis, one notification per episode, the
false-alarm rate on stable traffic, and labelled metrics against scikit-learn's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, precision_score, recall_score

from cluster.config import Settings
from serve.monitoring import (
    DecisionBlock,
    DriftNotifier,
    DriftPolicy,
    DriftTracker,
    MonitoringCollector,
    MonitoringReporter,
    Reference,
    card_precision_at_k,
    count_rows,
    rejected_field,
)
from serve.stream import record_errors
from tests.streams import drain_alerts, subscribe_alert_queue
from training.policy import RiskPolicy
from training.reference import bin_counts, bin_edges, bin_matrix, build_reference, input_missing_rates, psi

FEATURES = ("amount", "log_amount", "hour_of_day", "device_missing", "merchant_risk")
BATCH_ROWS = 500
EVALUATE_S = 10.0
STABLE_SEEDS = 20


def world(
    rows: int, rng: np.random.Generator, *, inflate_half: bool = False, device_gone: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A feature matrix, its scores and the transactions' device column, as the simulated traffic has them."""
    amount = rng.lognormal(3.5, 1.0, rows)
    if inflate_half:
        amount[: rows // 2] *= 3
    device = np.array(
        [
            None if gone else f"d{i}"
            for i, gone in enumerate(np.ones(rows, bool) if device_gone else rng.random(rows) < 0.05)
        ],
        dtype=object,
    )
    x = np.column_stack(
        [
            amount,
            np.log1p(amount),
            rng.integers(0, 24, rows),
            (device == None).astype(float),  # noqa: E711
            rng.beta(1, 60, rows),
        ]
    ).astype(np.float32)
    scores = 1 / (1 + np.exp(-(x[:, 1] - 6 + rng.normal(0, 1, rows))))
    return x, scores, {"device_id": device}


def reference_of(seed: int = 0, rows: int = 20_000) -> dict:
    x, scores, columns = world(rows, np.random.default_rng(seed))
    return build_reference(x, FEATURES, scores, inputs=input_missing_rates(columns))


def settings(**overrides) -> Settings:
    return Settings(
        aws_mode="embedded",
        monitoring_window_s=300.0,
        monitoring_evaluate_s=EVALUATE_S,
        drift_min_rows=1000,
        drift_consecutive=3,
        drift_psi_threshold=0.25,
        drift_psi_clear=0.1,
        **overrides,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def collector(stored: dict | None, clock: Clock, sent: list, notify: Any = None) -> MonitoringCollector:
    return MonitoringCollector(settings(), clock=clock, references=lambda version: stored, notify=notify or sent.append)


def run_stream(stored: dict, seed: int, batches: int, notify: Any = None, **drift) -> tuple[MonitoringCollector, list]:
    """Feed ``batches`` micro-batches, one evaluation apart, straight into a collector; returns it and its messages
    (those ``notify`` did not take instead)."""
    clock, sent = Clock(), []
    monitor = collector(stored, clock, sent, notify)
    reference = Reference.parse("v1", stored)
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        x, scores, columns = world(BATCH_ROWS, rng, **drift)
        monitor.record(counts={"v1": count_rows(reference, x, scores, columns)}, scored=BATCH_ROWS)
        clock.now += EVALUATE_S
    return monitor, sent


def test_bins_are_fixed_at_training_with_a_missing_bin() -> None:
    values = np.array([0, 0, 1, 1, 1, np.nan], dtype=np.float64)
    edges = bin_edges(values)
    assert edges.tolist() == [0.0, 1.0]  # few distinct values: a bin each
    assert bin_counts(values, edges).tolist() == [0, 2, 3, 1]
    wide = np.random.default_rng(1).normal(size=10_000)
    assert len(bin_edges(wide)) == 9
    counts = bin_counts(wide, bin_edges(wide))
    assert counts[:-1].tolist() == [1000] * 10 and counts[-1] == 0  # deciles, nothing missing
    matrix = np.column_stack([values, values[::-1]])
    together = bin_matrix(matrix, [edges, edges], width=6)
    assert together[0, :4].tolist() == bin_counts(values, edges).tolist()
    assert together[1, :4].tolist() == bin_counts(values[::-1], edges).tolist()


def test_reference_holds_every_feature_the_score_and_input_missing_rates() -> None:
    stored = reference_of()
    assert stored["rows"] == 20_000 and set(stored["features"]) == set(FEATURES)
    assert sum(stored["features"]["amount"]["counts"]) == 20_000
    assert sum(stored["score"]["counts"]) == 20_000
    assert stored["inputs"]["device_id"]["missing_rate"] == pytest.approx(0.05, abs=0.01)


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    # (q - p) * ln(q / p) summed: 0.25 and 0.75 against 0.5 and 0.5
    assert psi([50, 50], [25, 75]) == pytest.approx(-0.25 * np.log(0.5) + 0.25 * np.log(1.5))
    assert psi([100, 0], [50, 50]) > psi([100, 0], [90, 10]) > 0
    assert psi([1, 1], [0, 0]) is None


def test_hysteresis_needs_consecutive_evaluations_and_clears_only_below_the_lower_threshold() -> None:
    tracker = DriftTracker(DriftPolicy(threshold=0.25, clear_below=0.1, consecutive=3, min_rows=100))
    assert tracker.update({"a": 0.3}, rows=100) == []
    assert tracker.update({"a": 0.3}, rows=100) == []
    assert tracker.update({"a": 0.2}, rows=100) == []  # the streak breaks
    assert [tracker.update({"a": 0.3}, rows=100) for _ in range(3)] == [[], [], ["a"]]
    assert tracker.update({"a": 0.2}, rows=100) == [] and tracker.drifted == {"a"}  # between the thresholds: stays
    assert tracker.update({"a": 0.9}, rows=100) == []  # still the same episode
    assert tracker.update({"a": 0.05}, rows=10) == [] and tracker.drifted == {"a"}  # too few rows to judge
    assert tracker.update({"a": 0.05}, rows=100) == [] and tracker.drifted == set()
    assert [tracker.update({"a": 0.3}, rows=100) for _ in range(3)] == [[], [], ["a"]]  # a new episode


def test_amounts_tripled_on_half_the_traffic_drift_the_amount_features_with_one_notification() -> None:
    monitor, sent = run_stream(reference_of(), seed=7, batches=40, inflate_half=True)
    assert {"amount", "log_amount"} <= set(monitor.tracker.drifted)
    assert not {"hour_of_day", "device_missing", "merchant_risk"} & monitor.tracker.drifted
    assert len(sent) == 1
    assert set(sent[0]["features"]) == {"amount", "log_amount"} and sent[0]["model_version"] == "v1"
    view = monitor.view()
    assert view["drifted"] == sorted(monitor.tracker.drifted)
    assert view["features"]["amount"]["psi"] > 0.25 > view["features"]["hour_of_day"]["psi"]
    assert view["score"]["psi"] > 0.1


def test_a_field_going_missing_drifts_its_indicator_and_shows_in_the_input_missing_rate() -> None:
    monitor, sent = run_stream(reference_of(), seed=8, batches=40, device_gone=True)
    assert monitor.tracker.drifted == {"device_missing"} and len(sent) == 1
    view = monitor.view()
    assert view["inputs"]["device_id"]["missing_rate"] == 1.0
    assert view["inputs"]["device_id"]["reference_missing_rate"] == pytest.approx(0.05, abs=0.01)


def test_stable_traffic_raises_no_drift_over_many_seeds() -> None:
    """The false-alarm rate stated in docs/MODEL_DETAILS.md: stable streams as long as the drifted ones."""
    stored = reference_of()
    alarms = [len(run_stream(stored, seed=100 + seed, batches=40)[1]) for seed in range(STABLE_SEEDS)]
    largest = max(max(v["psi"] for v in run_stream(stored, seed=100, batches=40)[0].view()["features"].values()), 0.0)
    assert sum(alarms) == 0, f"{sum(alarms)} false alarms in {STABLE_SEEDS} stable streams"
    assert largest < 0.05


def test_nothing_is_judged_below_the_minimum_rows_nor_without_a_reference() -> None:
    monitor, sent = run_stream(reference_of(), seed=9, batches=1, inflate_half=True)  # 500 rows < 1000
    assert sent == [] and monitor.view()["features"]["amount"]["psi"] > 0.25 and monitor.view()["drifted"] == []
    clock, messages = Clock(), []
    blind = collector(None, clock, messages)
    blind.record(scored=10, model_version="old")
    view = blind.view()
    assert view["reference"] == {"model_version": "old", "rows": None} and view["features"] == {}
    assert view["scored"] == 10 and view["score"] == {"psi": None}


def test_the_window_forgets_old_rows() -> None:
    stored = reference_of()
    monitor, _ = run_stream(stored, seed=3, batches=5)
    assert monitor.view()["compared_rows"] == 5 * BATCH_ROWS
    monitor.clock.now += 400.0  # past the 300 s window
    view = monitor.view()
    assert view["compared_rows"] == 0 and view["scored"] == 0


def test_flushes_into_one_bucket_add_up_though_ray_delivers_their_counts_read_only() -> None:
    stored = reference_of()
    clock, sent = Clock(), []
    monitor = collector(stored, clock, sent)
    reference = Reference.parse("v1", stored)
    rng = np.random.default_rng(5)
    for _ in range(3):  # a second apart: one bucket
        counts = count_rows(reference, *world(BATCH_ROWS, rng))
        for array in (counts.features, counts.score):
            array.flags.writeable = False  # as an actor call's numpy arguments arrive
        monitor.record(counts={"v1": counts}, scored=BATCH_ROWS)
        clock.now += 1.0
    assert monitor.view()["compared_rows"] == 3 * BATCH_ROWS


def bundle_of(version: str, reference: Any, policy: RiskPolicy = RiskPolicy(threshold=0.5, medium=0.2)) -> Any:
    """What the reporter reads of a registry bundle."""
    return SimpleNamespace(version=version, reference=reference, ensemble=SimpleNamespace(policy=policy))


def test_reporter_bins_at_flush_and_counts_rejected_fields_and_labels() -> None:
    stored = reference_of()
    clock, sent = Clock(), []
    monitor = collector(stored, clock, sent)
    reporter = MonitoringReporter(settings(), actor=SimpleNamespace(record=SimpleNamespace(remote=monitor.record)))
    x, scores, columns = world(300, np.random.default_rng(4))
    decisions = [
        {"transaction_id": f"t{i}", "fraud_score": float(s), "is_fraud": bool(s > 0.5)} for i, s in enumerate(scores)
    ]
    reporter.add(bundle_of("v1", stored), x, decisions, columns)
    reporter.rejected(
        [{"field": "transactions.3.amount", "message": "x"}, {"field": "transactions.3.currency", "message": "y"}]
    )
    reporter.rejected([{"field": "amount", "message": "z"}])
    reporter.label("t1", True)
    reporter.flush()
    view = monitor.view()
    assert view["scored"] == 300 and view["compared_rows"] == 300
    assert view["rejected_inputs"] == {"count": 3, "by_field": {"amount": 2, "currency": 1}}
    assert view["labelled"]["count"] == 1 and view["labelled"]["coverage"] == pytest.approx(1 / 300, abs=1e-6)
    assert reporter.flush() is None  # nothing new
    assert rejected_field("transactions") == "transactions" and rejected_field("body") == "body"


def test_the_collector_keeps_each_versions_lane_level_on_the_newest_rows_of_every_reporter() -> None:
    clock, sent = Clock(), []
    monitor = collector(reference_of(), clock, sent)
    actor = SimpleNamespace(record=SimpleNamespace(remote=monitor.record))
    replicas = [MonitoringReporter(settings(), actor=actor) for _ in range(2)]
    lane = RiskPolicy(threshold=0.5, medium=0.2, anomaly_review=0.9, anomaly_review_rate=0.01)
    live, fixed = bundle_of("live", None, lane), bundle_of("fixed", None, RiskPolicy(0.5, 0.2, anomaly_review=0.9))
    rng = np.random.default_rng(8)

    def flush(reporter: MonitoringReporter, bundle: Any, anomaly: np.ndarray) -> None:
        x, scores, columns = world(len(anomaly), rng)
        decisions = [
            {"transaction_id": f"t{i}", "fraud_score": 0.1, "is_fraud": False, "anomaly_score": float(a)}
            for i, a in enumerate(anomaly)
        ]
        reporter.add(bundle, x, decisions, columns)
        reporter.flush()

    seen = [rng.random(900), rng.random(900)]
    for replica, rows in zip(replicas, seen):  # 1,800 rows in all: 20 reviews at 1 % need 2,000
        flush(replica, live, rows)
        flush(replica, fixed, rng.random(900))
    assert monitor.lane_levels() == {"live": np.inf}  # only a live lane keeps a window; this one still closed
    assert monitor.view()["anomaly_review"]["live"] | {"window_rows": 0} == {
        "rate": 0.01,
        "trained_level": 0.9,
        "live_level": None,
        "open": False,
        "window_rows": 0,
        "rows_to_open": 2_000,
    }
    cold = np.linspace(0.0, 1.0, 10_000)  # a cold feature state: many rows look unusual
    flush(replicas[0], live, cold[:200])  # 2,000 rows: open, at the rate's quantile of both replicas' rows
    assert monitor.lane_levels()["live"] == pytest.approx(
        max(0.9, np.quantile(np.concatenate([*seen, cold[:200]]), 0.99))
    )
    for start in range(200, 10_000, 1_000):
        flush(replicas[1], live, cold[start : start + 1_000])
    assert monitor.lane_levels()["live"] == pytest.approx(np.quantile(cold, 0.99), abs=2e-3)  # the newest 10,000
    view = monitor.view()["anomaly_review"]["live"]
    assert view["open"] and view["window_rows"] == 10_000 and view["live_level"] > view["trained_level"]
    before = monitor.lane_levels()["live"]
    flush(replicas[0], live, np.zeros(150))  # fewer rows than a block (200): the level does not move yet
    assert monitor.lane_levels()["live"] == before
    scored = monitor.view()["scored"]
    challenger = bundle_of("challenger", None, lane)
    replicas[1].shadowed(challenger, [{"anomaly_score": float(a)} for a in cold[-2_000:]])
    replicas[1].shadowed(fixed, [{"anomaly_score": 1.0}])  # no live lane: nothing kept
    replicas[1].flush()
    assert monitor.lane_levels()["challenger"] == pytest.approx(np.quantile(cold[-2_000:], 0.99))  # open on promotion
    assert monitor.view()["scored"] == scored and "fixed" not in monitor.lane_levels()  # drift: the champion's rows


def test_monitoring_switched_off_notes_nothing() -> None:
    clock, sent = Clock(), []
    monitor = collector(reference_of(), clock, sent)
    reporter = MonitoringReporter(
        settings(monitoring_enabled=False), actor=SimpleNamespace(record=SimpleNamespace(remote=monitor.record))
    )
    x, scores, columns = world(10, np.random.default_rng(5))
    reporter.add(
        bundle_of("v1", None),
        x,
        [{"transaction_id": "t", "fraud_score": 0.1, "is_fraud": False}] * 10,
        columns,
    )
    reporter.rejected([{"field": "amount", "message": "x"}])
    reporter.label("t", True)
    assert reporter.flush() is None and monitor.view()["scored"] == 0


def test_labelled_metrics_equal_scikit_learns_on_the_same_decisions() -> None:
    rng = np.random.default_rng(11)
    rows = 5_000
    labels = rng.random(rows) < 0.05
    scores = np.clip(rng.normal(0.2 + 0.5 * labels, 0.2), 0, 1)
    flagged = scores > 0.5
    clock, sent = Clock(), []
    monitor = collector(None, clock, sent)
    days = np.where(np.arange(rows) < rows // 2, "2026-12-01", "2026-12-02")
    for day in ("2026-12-01", "2026-12-02"):
        rows_of_day = np.flatnonzero(days == day)
        monitor.record(
            scored=len(rows_of_day),
            decisions=DecisionBlock(
                transaction_ids=[f"t{i}" for i in rows_of_day],
                scores=scores[rows_of_day],
                flagged=flagged[rows_of_day],
                day=day,
            ),
        )
    labelled_rows = rng.random(rows) < 0.6  # labels arrive for some decisions only
    monitor.record(
        labels=[(f"t{i}", bool(labels[i])) for i in np.flatnonzero(labelled_rows)] + [("never-scored", True)]
    )
    figures = monitor.view()["labelled"]
    y, s, f = labels[labelled_rows], scores[labelled_rows], flagged[labelled_rows]
    assert figures["count"] == int(labelled_rows.sum())
    assert figures["coverage"] == pytest.approx(labelled_rows.mean(), abs=1e-6)
    assert figures["precision"] == pytest.approx(precision_score(y, f))
    assert figures["recall"] == pytest.approx(recall_score(y, f))
    assert figures["average_precision"] == pytest.approx(average_precision_score(y, s))
    tn, fp, fn, tp = confusion_matrix(y, f).ravel()
    assert figures["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    first = labelled_rows & (days == "2026-12-01")
    assert figures["per_day"]["2026-12-01"]["precision"] == pytest.approx(
        precision_score(labels[first], flagged[first])
    )


def test_a_drift_episode_publishes_one_message_to_the_drift_topic(aws_settings: Settings) -> None:
    queue = subscribe_alert_queue(aws_settings, "drift-under-test", topic=aws_settings.drift_topic)
    run_stream(reference_of(), seed=7, batches=40, notify=DriftNotifier(aws_settings), inflate_half=True)
    messages = drain_alerts(aws_settings, queue)
    assert len(messages) == 1
    assert set(messages[0]["features"]) == {"amount", "log_amount"} and messages[0]["rows"] >= 1000


def test_an_invalid_stream_record_names_its_fields_for_the_rejected_inputs() -> None:
    fields = {error["field"] for error in record_errors(b'{"transaction_id": "t", "amount": -1}')}
    assert {"amount", "user_id", "timestamp"} <= fields
    assert [error["field"] for error in record_errors(b"not json")] == ["body"]
    assert [error["field"] for error in record_errors(b"[1]")] == ["body"]


def test_a_decision_replayed_is_counted_once_by_its_newest_decision() -> None:
    clock, sent = Clock(), []
    monitor = collector(None, clock, sent)
    for score, flagged in ((0.9, True), (0.1, False)):
        monitor.record(
            scored=1,
            decisions=DecisionBlock(
                transaction_ids=["t1"], scores=np.array([score]), flagged=np.array([flagged]), day="2026-12-01"
            ),
        )
    monitor.record(labels=[("t1", True)])
    labelled = monitor.view()["labelled"]
    assert labelled["count"] == 1 and labelled["kept_decisions"] == 1
    assert labelled["confusion"] == {"tp": 0, "fp": 0, "fn": 1, "tn": 0} and labelled["recall"] == 0.0


def test_card_precision_at_k_per_day_counts_the_top_cards_with_a_labelled_fraud() -> None:
    # six cards; by their best score of the day: c0 > c1 > ... > c5; k = 3 takes c0, c1, c2
    cards = ["c0", "c0", "c1", "c2", "c3", "c4", "c5", "c2"]
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.6, 0.5, 0.4, 0.7])
    labels = {1: True, 3: False, 4: True}  # c0 fraud (a low-scored transaction of a top card), c2 genuine, c3 fraud
    figures = card_precision_at_k(cards, scores, labels, k=3)
    assert figures == {"k": 3, "cards": 3, "labelled_cards": 2, "cp_at_k": pytest.approx(1 / 3)}
    assert card_precision_at_k(cards, scores, {}, k=10)["cards"] == 6

    clock, sent = Clock(), []
    monitor = MonitoringCollector(
        settings(monitoring_card_precision_k=3), clock=clock, references=lambda v: None, notify=sent.append
    )
    monitor.record(
        scored=len(cards),
        decisions=DecisionBlock(
            transaction_ids=[f"t{i}" for i in range(len(cards))],
            scores=scores,
            flagged=scores > 0.5,
            day="2026-12-01",
            cards=cards,
        ),
    )
    monitor.record(labels=[(f"t{row}", label) for row, label in labels.items()])
    day = monitor.view()["labelled"]["per_day"]["2026-12-01"]
    assert day["card_precision"]["cp_at_k"] == pytest.approx(1 / 3) and day["count"] == 3
