"""The autoencoder's inputs and the anomaly review lane: what it reads, what it sends to review, what it never does.

Known answers on hand-made matrices, then a behavioural test with real models: fraud of a kind the supervised
model never saw, unusual in how the card behaves, scores LOW with XGBoost and still reaches the review queue.
"""

from __future__ import annotations

import numpy as np
import pytest

from cluster.features import FEATURE_NAMES, FEATURE_VERSION, LABEL_FEATURES
from training.autoencoder import STABLE_PSI, AnomalyScorer, anomaly_inputs
from training.ensemble import fit_ensemble
from training.policy import RiskPolicy
from training.predict import decide, xgb_scores
from training.quality import lane_first, recall_at_fpr
from training.registry import ModelBundle
from training.xgb import fit_xgboost

AE_CONFIG = {"lr": 3e-3, "weight_decay": 1e-6}
COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}


def _genuine(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (rows, len(FEATURE_NAMES))).astype(np.float32)


def test_label_features_are_exactly_those_computed_from_fraud_labels() -> None:
    assert "merchant_delayed_risk_7d" in LABEL_FEATURES and "card_fraud_known_30d" in LABEL_FEATURES
    assert "merchant_compromise_share_30d" in LABEL_FEATURES and "mcc_risk_30d" in LABEL_FEATURES
    assert not {"amount", "speed_from_prev_kmh", "user_count_10m", "new_device"} & set(LABEL_FEATURES)


def test_inputs_leave_out_label_features_and_columns_that_shift_across_the_window() -> None:
    early, late = _genuine(4_000, 1), _genuine(4_000, 2)
    growing = COLUMN["user_count_30d"]
    early[:, growing] = np.random.default_rng(3).poisson(5, len(early))
    late[:, growing] = np.random.default_rng(4).poisson(40, len(late))  # far beyond the early range
    inputs = anomaly_inputs(FEATURE_NAMES, early, late)
    names = {FEATURE_NAMES[column] for column in inputs}
    assert "user_count_30d" not in names
    assert not names & set(LABEL_FEATURES)
    assert names == set(FEATURE_NAMES) - set(LABEL_FEATURES) - {"user_count_30d"}
    assert STABLE_PSI == 0.1


def test_the_scorer_reads_only_its_inputs_and_survives_a_round_trip() -> None:
    x, y = _genuine(3_000, 5), np.zeros(3_000, dtype=np.int8)
    inputs = tuple(column for column in range(len(FEATURE_NAMES)) if FEATURE_NAMES[column] not in LABEL_FEATURES)
    scorer = AnomalyScorer.fit(x, y, AE_CONFIG, 2, inputs=inputs, seed=1)
    probe = _genuine(200, 6)
    changed = probe.copy()
    changed[:, COLUMN["merchant_delayed_risk_7d"]] = 50.0  # a left-out column: no effect
    np.testing.assert_array_equal(scorer.score(probe), scorer.score(changed))
    restored = AnomalyScorer.from_state(*scorer.state())
    np.testing.assert_allclose(restored.score(probe), scorer.score(probe))
    assert restored.inputs.tolist() == list(inputs)


def test_the_lane_sends_unusual_low_rows_to_review_and_never_alerts() -> None:
    policy = RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=0.995)
    scores = np.array([0.0, 0.0, 0.3, 0.7, 0.7])
    anomaly = np.array([0.5, 0.996, 0.999, 0.1, 0.999])
    assert policy.risk_levels(scores, anomaly).tolist() == ["LOW", "MEDIUM", "MEDIUM", "HIGH", "HIGH"]
    assert policy.risk_levels(scores).tolist() == ["LOW", "LOW", "MEDIUM", "HIGH", "HIGH"]
    assert policy.is_fraud(scores).tolist() == [False, False, False, True, True]
    assert RiskPolicy.from_dict(policy.to_dict()) == policy
    assert RiskPolicy.from_dict({"threshold": 0.6, "medium": 0.2}).anomaly_review is None
    with pytest.raises(ValueError, match="anomaly_review"):
        RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=1.5)


def test_the_lane_summary_counts_only_what_the_lane_adds_below_the_alert() -> None:
    policy = RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=0.99)
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.0, 0.1, 0.7, 0.1, 0.9, 0.1, 0.1])
    anomaly = np.array([0.995, 0.1, 0.999, 0.1, 0.999, 0.999, 0.1])
    assert policy.lane_summary(y, scores, anomaly) == {
        "level": 0.99,
        "rate": None,
        "live_level": None,
        "rows_below_alert": 2,  # the alerted rows in the lane add nothing
        "genuine_share": 0.25,
        "frauds_below_alert": 2,
        "frauds_reviewed": 1,
        "alerted_or_reviewed_recall": round(2 / 3, 5),
    }
    assert RiskPolicy(threshold=0.6, medium=0.2).lane_summary(y, scores, anomaly) is None
    per_row = np.array([np.inf, np.inf, 0.99, 0.99, 0.99, 0.99, 0.999])  # closed for the first two, then live
    summary = policy.lane_summary(y, scores, anomaly, per_row)
    assert summary["rows_below_alert"] == 1 and summary["frauds_reviewed"] == 1  # row 0 met a closed lane
    assert summary["live_level"] == {"closed_share": round(2 / 7, 5), "median_level": 0.99}


def test_the_live_level_holds_the_rate_on_recent_rows_with_the_trained_level_as_floor() -> None:
    policy = RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=0.9, anomaly_review_rate=0.01)
    assert policy.lane_window_rows() == 10_000 and policy.lane_block_rows() == 200  # 100 / rate rows, 50 moves
    assert policy.live_lane_level(np.full(1_999, 0.5)) == np.inf  # 20 reviews need 2,000 rows: closed
    drifted = np.linspace(0.0, 1.0, 10_001)  # a cold state: far more rows look unusual than at training
    assert policy.live_lane_level(drifted) == pytest.approx(0.99)  # the rate's quantile, above the trained 0.9
    assert policy.live_lane_level(np.linspace(0.0, 0.5, 10_001)) == 0.9  # quiet traffic: never below the floor
    fixed = RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=0.9)  # a bundle from before the live level
    assert not fixed.live_lane and fixed.live_lane_level(drifted) == 0.9
    assert RiskPolicy(threshold=0.6, medium=0.2).live_lane_level(drifted) is None
    assert RiskPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ValueError, match="anomaly_review_rate"):
        RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=0.9, anomaly_review_rate=1.0)


def test_the_replay_gives_each_block_the_level_of_the_rows_before_it_in_time_order() -> None:
    policy = RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=0.5, anomaly_review_rate=0.01)
    rng = np.random.default_rng(3)
    scores = rng.random(12_000)
    times = rng.permutation(len(scores))  # rows arrive shuffled; the replay follows their times
    levels = policy.rolling_lane_levels(scores, times)
    ordered, at = scores[np.argsort(times)], levels[np.argsort(times)]
    assert np.isinf(at[:2_000]).all()  # closed until 2,000 rows were seen
    for start in (2_000, 6_400, 11_800):  # block starts: the quantile of the window before, floored
        window = ordered[max(0, start - 10_000) : start]
        assert at[start] == pytest.approx(max(0.5, np.quantile(window, 0.99)))
        assert (at[start : start + 200] == at[start]).all()  # one level per block of 200
    in_lane = policy.in_anomaly_lane(scores, levels)
    assert in_lane[np.isfinite(levels)].mean() == pytest.approx(0.01, abs=0.004)
    assert (policy.rolling_lane_levels(scores) != levels).any()  # without times: the given order
    fixed = RiskPolicy(threshold=0.6, medium=0.2, anomaly_review=0.5)
    assert (fixed.rolling_lane_levels(scores, times) == 0.5).all()


def test_the_lane_level_lets_through_the_rate_of_genuine_validation_rows() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(20_000) < 0.02).astype(np.int8)
    xgb_score = np.clip(rng.normal(0.2 + 0.6 * y, 0.15), 0, 1)
    ae_score = rng.random(len(y))
    ensemble, choice = fit_ensemble(y, xgb_score, ae_score, rng.uniform(1, 100, len(y)), anomaly_review_rate=0.01)
    assert ensemble.policy.anomaly_review == pytest.approx(np.quantile(ae_score[y == 0], 0.99))
    assert choice["anomaly_review"]["validation_genuine_share"] == pytest.approx(0.01, abs=0.001)
    assert ensemble.policy.anomaly_review_rate == 0.01 and ensemble.policy.live_lane
    off, _ = fit_ensemble(y, xgb_score, ae_score, rng.uniform(1, 100, len(y)))
    assert off.policy.anomaly_review is None


def test_lane_first_counts_the_lanes_genuine_rows_against_the_same_budget() -> None:
    y = np.array([0] * 100 + [1, 1])
    fraud_score = np.r_[np.linspace(0, 0.5, 100), 0.9, 0.01]
    ae_score = np.r_[np.full(99, 0.1), 0.99, 0.2, 0.999]
    in_lane = ae_score >= 0.99
    ordered = lane_first(fraud_score, ae_score, in_lane)
    assert recall_at_fpr(y, fraud_score, 0.01) == 0.5  # the second fraud ranks below every genuine row
    assert recall_at_fpr(y, ordered, 0.01) == 1.0  # the lane's one genuine row uses the 1 % budget


def test_novel_fraud_unusual_in_behaviour_reaches_review_though_xgboost_scores_it_low() -> None:
    """Known fraud: large amounts. Novel fraud (never in training): a burst of 10-minute velocity with ordinary
    amounts. The supervised model has no reason to flag it; the lane, from the autoencoder, does."""
    rng = np.random.default_rng(11)
    amount, burst = COLUMN["log_amount"], COLUMN["user_count_10m"]

    def rows(genuine: int, known: int, novel: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(0.0, 1.0, (genuine + known + novel, len(FEATURE_NAMES))).astype(np.float32)
        x[genuine : genuine + known, amount] += 6.0
        x[genuine + known :, burst] += 8.0
        y = np.r_[np.zeros(genuine), np.ones(known), np.full(novel, 2)].astype(np.int8)
        return x, y

    x_train, kind_train = rows(20_000, 200, 0)
    x_valid, kind_valid = rows(10_000, 100, 0)
    x_test, kind_test = rows(10_000, 100, 60)
    y_train, y_valid = (kind_train > 0).astype(np.int8), (kind_valid > 0).astype(np.int8)
    booster = fit_xgboost(x_train, y_train, FEATURE_NAMES, {"max_depth": 3, "eta": 0.3}, 40, seed=1)
    anomaly = AnomalyScorer.fit(x_train, y_train, AE_CONFIG, 6, seed=1)
    ensemble, _ = fit_ensemble(
        y_valid,
        booster.inplace_predict(x_valid).astype(np.float64),
        anomaly.score(x_valid),
        np.full(len(y_valid), 50.0),
        anomaly_review_rate=0.005,
        weight=1.0,
    )
    bundle = ModelBundle(
        booster=booster,
        anomaly=anomaly,
        ensemble=ensemble,
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
    )
    decided = decide(bundle, x_test, xgb_scores(bundle, x_test), anomaly.score(x_test))
    novel, genuine, known = kind_test == 2, kind_test == 0, kind_test == 1
    assert decided.is_fraud[novel].mean() < 0.1  # XGBoost alone misses it
    assert (decided.risk_level[novel] != "LOW").mean() > 0.8  # the lane reviews it
    assert decided.is_fraud[known].mean() > 0.9  # known fraud is still alerted
    assert (decided.risk_level[genuine] != "LOW").mean() < 0.05
    lane_genuine = (decided.risk_level[genuine] == "MEDIUM") & ~np.asarray(decided.is_fraud[genuine])
    assert 0.0 < lane_genuine.mean() < 0.05
