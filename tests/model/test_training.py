"""Training stage: policy, ensemble, registry round trip, causality of scores, model behaviour, backtest CLI.

Models here are trained for real, on a small handbook-style history (about 20,000 rows) with fixed
hyperparameters; the Ray Tune path runs in the backtest CLI test.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from cluster.features import FEATURE_NAMES, FEATURE_VERSION, RISING_WITH_MERCHANT_FRAUD, build_features
from cluster.schema import LABEL_COLUMN
from training.autoencoder import AnomalyScorer
from training.baseline import HandbookConfig, simulate_handbook
from training.data import folds_with_fraud, rolling_folds, take, time_periods
from training.ensemble import (
    FLOOR_PRIOR_ROWS,
    Calibration,
    Ensemble,
    MerchantFloor,
    choose_floor,
    choose_weight,
    fit_ensemble,
    merchant_record,
)
from training.policy import RiskPolicy
from training.predict import FraudScorer, ae_scores, decide, xgb_scores
from training.reference import build_reference, input_missing_rates
from training.registry import FeatureVersionMismatch, ModelBundle, ModelRegistry
from training.xgb import fit_xgboost, rising_with_merchant_fraud

DELAY = timedelta(days=7)
START = date(2026, 1, 1)
PARAMS = {
    "max_depth": 4,
    "eta": 0.1,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "scale_pos_weight": 1.0,
}


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    config = HandbookConfig(
        customers=300,
        terminals=600,
        days=36,
        start=START,
        seed=3,
        compromised_terminals_per_day=1.0,
        compromised_customers_per_day=1.0,
    )
    return simulate_handbook(config).drop(columns=["fraud_scenario"])


def featurize(transactions: pd.DataFrame) -> pd.DataFrame:
    return build_features(transactions, label_delay=DELAY)


@pytest.fixture(scope="module")
def features(history: pd.DataFrame) -> pd.DataFrame:
    return featurize(history)


@pytest.fixture(scope="module")
def bundle(history: pd.DataFrame, features: pd.DataFrame) -> ModelBundle:
    day = lambda n: pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=n)  # noqa: E731
    train = take("train", history, features, FEATURE_NAMES, (day(8), day(18)))
    valid = take("validation", history, features, FEATURE_NAMES, (day(25), day(36)))
    assert train.fraud_count > 20 and valid.fraud_count > 20
    booster = fit_xgboost(train.x, train.y, FEATURE_NAMES, {**PARAMS, **rising_with_merchant_fraud(FEATURE_NAMES)}, 120)
    anomaly = AnomalyScorer.fit(train.x, train.y, {"lr": 3e-3, "weight_decay": 1e-5}, 3)
    ensemble, _ = fit_ensemble(
        valid.y,
        booster.inplace_predict(valid.x).astype(float),
        anomaly.score(valid.x),
        valid.frame["amount"].to_numpy(),
    )
    return ModelBundle(
        booster=booster,
        anomaly=anomaly,
        ensemble=ensemble,
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
        metrics={"test": {"average_precision": 0.5}},
    )


@pytest.fixture(scope="module")
def scorer(bundle: ModelBundle) -> FraudScorer:
    return FraudScorer(bundle)


def test_policy_alerts_exactly_the_high_band() -> None:
    policy = RiskPolicy(threshold=0.6, medium=0.2)
    scores = np.array([0.0, 0.19, 0.2, 0.59, 0.6, 1.0])
    assert policy.risk_levels(scores).tolist() == ["LOW", "LOW", "MEDIUM", "MEDIUM", "HIGH", "HIGH"]
    assert policy.is_fraud(scores).tolist() == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match="medium <= threshold"):
        RiskPolicy(threshold=0.2, medium=0.6)


def test_ensemble_drops_an_autoencoder_that_adds_nothing_and_calibrates() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.05).astype(int)
    xgb_score = np.clip(0.6 * y + rng.normal(0.2, 0.15, len(y)), 0, 1)
    noise = rng.random(len(y))
    ensemble, choice = fit_ensemble(y, xgb_score, noise, rng.uniform(1, 100, len(y)))
    assert ensemble.xgb_weight == 1.0 and ensemble.ae_weight == 0.0 and not choice["autoencoder_adds_value"]
    calibrated = ensemble.fraud_score(xgb_score, noise)
    assert calibrated.min() >= 0 and calibrated.max() <= 1
    order = np.argsort(xgb_score)
    assert np.all(np.diff(calibrated[order]) >= -1e-12)  # calibration keeps the ranking
    # calibrated scores read as probabilities: mean close to the fraud rate
    assert abs(calibrated.mean() - y.mean()) < 0.01
    isotonic = Calibration.fit(xgb_score, y, "isotonic").apply(xgb_score)
    assert abs(isotonic.mean() - y.mean()) < 0.01


def test_the_merchant_floor_is_the_shrunk_fraud_share_of_the_merchants_labelled_week() -> None:
    floor = MerchantFloor(prior_rows=100.0, base_rate=0.01)
    # share, fully labelled purchases, whether the floor applies (card present, or no channel)
    record = np.array([[0.5, 100.0, 1], [0.0, 0.0, 1], [1.0, 2.0, 1], [0.0, 500.0, 1], [0.5, 100.0, 0]])
    assert floor.rate(record) == pytest.approx([51 / 200, 0.01, 3 / 102, 1 / 600, 51 / 200])
    excess = [(51 / 200 - 0.01) / 0.99, 0.0, (3 / 102 - 0.01) / 0.99, 0.0, 0.0]  # only what lies above the base rate
    assert floor.excess(record) == pytest.approx(excess)
    model = np.array([0.9, 0.0, 0.5, 0.2, 0.3])
    assert floor.apply(model, record) == pytest.approx(1 - (1 - model) * (1 - np.array(excess)))
    assert floor.apply(np.array([0.1]), None) == pytest.approx([0.1])  # features without the record: no floor


def test_the_floor_is_kept_where_validation_cannot_tell_and_dropped_where_it_ranks_worse() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(20_000) < 0.02).astype(int)
    model = np.clip(np.where(y == 1, rng.beta(5, 2, len(y)), rng.beta(1, 30, len(y))), 0, 1)
    # no merchant has a labelled fraud: validation cannot tell, the most cautious floor stays
    quiet = np.column_stack([np.zeros(len(y)), rng.integers(20, 200, len(y)), np.ones(len(y))])
    floor, compared = choose_floor(y, model, quiet)
    assert floor is not None and floor.prior_rows == FLOOR_PRIOR_ROWS[0]
    assert floor.base_rate == pytest.approx(y.mean()) and set(compared["ap"]) == {
        "none",
        *map("{:g}".format, FLOOR_PRIOR_ROWS),
    }
    assert compared["resamples_where_the_best_floor_ranks_worse"] == 0.0
    # a merchant whose labelled week was all fraud, whose purchases now are genuine: every floor ranks them too high
    misleading = quiet.copy()
    misleading[(y == 0) & (rng.random(len(y)) < 0.05)] = [1.0, 2000.0, 1.0]
    assert choose_floor(y, model, misleading)[0] is None
    # a compromised terminal: its later purchases are fraud the model missed
    compromised = quiet.copy()
    missed = np.flatnonzero(y == 1)[:150]
    model[missed] = rng.beta(1, 30, len(missed))
    compromised[missed] = [0.8, 60.0, 1.0]
    chosen, _ = choose_floor(y, model, compromised)
    assert chosen is not None and (chosen.apply(model, compromised)[missed] > np.quantile(model[y == 0], 0.99)).all()


def test_the_decision_core_lifts_a_card_present_purchase_at_a_merchant_whose_labelled_week_was_fraud(
    bundle: ModelBundle, features: pd.DataFrame
) -> None:
    floored = ModelBundle(
        booster=bundle.booster,
        anomaly=bundle.anomaly,
        ensemble=replace(bundle.ensemble, merchant_floor=MerchantFloor(prior_rows=30.0, base_rate=0.01)),
        feature_names=bundle.feature_names,
        feature_version=bundle.feature_version,
    )
    rows = features.sample(4, random_state=1).copy()
    rows[["merchant_delayed_risk_7d", "merchant_delayed_count_7d"]] = [0.9, 70.0]
    rows[["channel_card_present", "channel_online", "channel_missing"]] = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    rows.iloc[3, rows.columns.get_loc("merchant_delayed_risk_7d")] = 0.0
    x = rows[list(FEATURE_NAMES)].to_numpy(np.float32)
    plain = decide(bundle, x, xgb_scores(bundle, x), ae_scores(bundle, x))
    lifted = decide(floored, x, xgb_scores(floored, x), ae_scores(floored, x))
    least = (0.9 * 70 + 0.01 * 30) / 100
    assert (lifted.fraud_score[[0, 2]] >= (least - 0.01) / 0.99).all()  # card present, and data without a channel
    assert lifted.fraud_score[[1, 3]] == pytest.approx(plain.fraud_score[[1, 3]])  # online; no labelled fraud
    assert lifted.merchant_floor.tolist() == [True, False, True, False]
    assert merchant_record(x[:, :5], FEATURE_NAMES[:5]) is None  # features without the record: no floor


def test_an_ensemble_keeps_its_floor_through_its_dict_and_one_from_before_has_none() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(4000) < 0.05).astype(int)
    score = np.clip(0.6 * y + rng.normal(0.2, 0.15, len(y)), 0, 1)
    ensemble, _ = fit_ensemble(y, score, score, np.ones(len(y)), record=np.zeros((len(y), 3)))
    assert ensemble.merchant_floor is not None
    assert Ensemble.from_dict(ensemble.to_dict()) == ensemble
    before = {k: v for k, v in ensemble.to_dict().items() if k != "merchant_floor"}
    assert Ensemble.from_dict(before).merchant_floor is None


def test_platt_calibration_ties_no_scores_that_were_apart() -> None:
    rng = np.random.default_rng(1)
    raw = np.sort(np.concatenate([10.0 ** -rng.uniform(6, 30, 500), rng.uniform(1e-6, 1 - 1e-6, 500)]))
    y = (rng.random(len(raw)) < raw).astype(int)
    calibrated = Calibration.fit(raw, y, "platt").apply(raw)
    assert np.all(np.diff(calibrated) > 0)  # raw scores far below the fitting clip stay apart, and in order


def test_cost_objective_alerts_less_when_reviews_cost_more() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(4000) < 0.05).astype(int)
    scores = np.clip(0.4 * y + rng.normal(0.3, 0.2, len(y)), 0, 1)
    amounts = rng.uniform(10, 200, len(y))
    cheap, _ = fit_ensemble(y, scores, scores, amounts, objective="cost", review_cost=1.0)
    dear, _ = fit_ensemble(y, scores, scores, amounts, objective="cost", review_cost=500.0)
    assert dear.policy.threshold > cheap.policy.threshold


def test_the_blend_weight_never_buys_precision_with_worse_ranking() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.05).astype(int)
    xgb_score = np.where(y == 1, rng.uniform(0.2, 0.9, len(y)), rng.uniform(0, 0.6, len(y)))
    flagged = (y == 1) & (rng.random(len(y)) < 0.4)  # the autoencoder is sure of some frauds, blind to the rest
    ae_score = np.where(flagged, 1.0, np.where(y == 1, 0.0, rng.uniform(0, 0.5, len(y))))
    weight, by_weight = choose_weight(y, xgb_score, ae_score)
    ap, auc = by_weight["ap"], by_weight["roc_auc"]
    assert max(ap, key=ap.get) == "0.7" and auc["0.7"] < auc["1.0"]  # the best AP alone would rank worse
    assert weight == 0.8 and auc["0.8"] >= auc["1.0"] and ap["0.8"] > ap["1.0"]


def test_time_periods_leave_one_label_delay_between_periods() -> None:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    periods = time_periods(start, start + pd.Timedelta(days=60), label_delay=DELAY)
    assert periods.train[0] > start
    assert periods.validation[0] - periods.train[1] == pd.Timedelta(DELAY)
    assert periods.test[0] - periods.validation[1] == pd.Timedelta(DELAY)
    with pytest.raises(ValueError, match="too short"):
        time_periods(start, start + pd.Timedelta(days=15), label_delay=DELAY)


def test_rolling_folds_validate_later_blocks_on_models_of_earlier_rows_only() -> None:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    times = pd.Series(start + pd.to_timedelta(np.random.default_rng(0).uniform(0, 80, 6000), unit="D"))
    folds = rolling_folds(times, label_delay=DELAY, folds=3, validation_share=0.45)
    assert len(folds) == 3
    held = np.concatenate([fold.valid for fold in folds])
    assert len(held) == len(set(held)) and set(held) == set(np.argsort(times.to_numpy())[-len(held) :])  # latest rows
    assert abs(len(held) - 0.45 * len(times)) <= 1 and {len(fold.valid) for fold in folds} == {900}
    for fold in folds:
        assert fold.gap == pd.Timedelta(DELAY)  # every block lasts longer than the delay here
        before = times < times[fold.valid].min() - fold.gap
        assert set(fold.train) == set(np.flatnonzero(before.to_numpy()))  # exactly the rows one delay older
    starts = [times[fold.valid].min() for fold in folds]
    assert starts == sorted(starts) and [len(f.train) for f in folds] == sorted(len(f.train) for f in folds)


def test_rolling_folds_cut_blocks_by_rows_so_a_gap_between_periods_makes_no_empty_fold() -> None:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    train = pd.date_range(start, periods=26 * 24, freq="h")
    valid = pd.date_range(start + pd.Timedelta(days=33), periods=9 * 24, freq="h")  # after a 7-day gap
    times = pd.Series(train.append(valid))
    folds = rolling_folds(times, label_delay=DELAY)
    assert len(folds) == 3 and len({len(fold.train) for fold in folds}) == 3  # each fold its own origin
    assert all(len(fold.valid) >= 100 for fold in folds)


def test_rolling_folds_shrink_the_gap_to_the_shortest_block_when_blocks_are_shorter_than_the_delay() -> None:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    times = pd.Series(pd.date_range(start, periods=7 * 24, freq="h"))
    folds = rolling_folds(times, label_delay=DELAY, folds=3, validation_share=0.45)
    assert len(folds) == 3
    for fold in folds:
        assert pd.Timedelta(hours=24) <= fold.gap <= pd.Timedelta(hours=27)  # a block: 0.45 x 168 h / 3
        assert times[fold.train].max() < times[fold.valid].min() - fold.gap
    with pytest.raises(ValueError, match="no rows"):
        rolling_folds(times.iloc[:0], label_delay=DELAY)


def test_folds_without_fraud_on_either_side_are_left_out_and_none_left_is_an_error() -> None:
    times = pd.Series(pd.date_range("2026-01-01", periods=1000, freq="h", tz="UTC"))
    folds = rolling_folds(times, label_delay=DELAY)
    y = np.zeros(len(times), dtype=np.int8)
    y[[10, folds[1].valid[5], folds[2].valid[5]]] = 1  # the first fold validates on a block without fraud
    kept = folds_with_fraud(folds, y)
    assert [len(fold.valid) for fold in kept] == [len(folds[1].valid), len(folds[2].valid)]
    with pytest.raises(ValueError, match="is_fraud"):
        folds_with_fraud(folds, np.zeros(len(times), dtype=np.int8))


def test_scorer_output(scorer: FraudScorer, features: pd.DataFrame) -> None:
    batch = features.iloc[-500:]
    out = scorer.score(batch, contributions=True)
    assert out["transaction_id"].tolist() == batch["transaction_id"].tolist()
    assert out["fraud_score"].between(0, 1).all() and out["ae_score"].between(0, 1).all()
    assert set(out["risk_level"]) <= {"LOW", "MEDIUM", "HIGH"}
    assert (out["is_fraud"] == (out["risk_level"] == "HIGH")).all()
    contributions = out.filter(like="contrib_").to_numpy().sum(axis=1)
    margin = np.log(out["xgb_score"] / (1 - out["xgb_score"]))
    np.testing.assert_allclose(contributions, margin, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="amount"):
        scorer.score(batch.drop(columns=["amount"]))


def test_registry_round_trip_gives_identical_scores(
    bundle: ModelBundle, features: pd.DataFrame, tmp_path, aws_settings
) -> None:
    expected = FraudScorer(bundle).score(features)
    for registry in (ModelRegistry(root=tmp_path), ModelRegistry(aws_settings)):
        version = registry.register(bundle)
        assert registry.resolve("latest") == version and version in registry.versions()
        loaded = registry.load("latest")
        pd.testing.assert_frame_equal(FraudScorer(loaded).score(features), expected)
        assert loaded.feature_version == FEATURE_VERSION and loaded.version == version


def test_registry_refuses_a_bundle_built_with_other_feature_code(bundle: ModelBundle, tmp_path) -> None:
    registry = ModelRegistry(root=tmp_path)
    stale = ModelBundle(**{**bundle.__dict__, "feature_version": "0" * 64})
    registry.register(stale)
    with pytest.raises(FeatureVersionMismatch, match="retrain"):
        registry.load("latest")


def test_champion_moves_only_for_a_model_at_least_as_good(bundle: ModelBundle, tmp_path) -> None:
    registry = ModelRegistry(root=tmp_path)
    first = registry.register(bundle)
    worse = ModelBundle(**{**bundle.__dict__, "metrics": {"test": {"average_precision": 0.1}}})
    second = registry.register(worse)
    assert registry.resolve("latest") == second and registry.resolve("champion") == first
    registry.promote(second)
    assert registry.resolve("champion") == second


def test_a_label_revealed_later_changes_no_score_before_it_is_known(
    history: pd.DataFrame, scorer: FraudScorer, features: pd.DataFrame
) -> None:
    frauds = history.index[
        (history[LABEL_COLUMN] == 1) & (history["timestamp"] < history["timestamp"].max() - pd.Timedelta(days=10))
    ]
    relabelled = history.copy()
    relabelled.loc[frauds, LABEL_COLUMN] = 0
    known_from = history.loc[frauds, "timestamp"].min() + DELAY
    before = (history["timestamp"] <= known_from).to_numpy()
    original, changed = scorer.score(features), scorer.score(featurize(relabelled))
    pd.testing.assert_frame_equal(changed[before], original[before])
    assert not np.allclose(changed.loc[~before, "fraud_score"], original.loc[~before, "fraud_score"])


def test_changing_future_rows_changes_no_past_score(
    history: pd.DataFrame, scorer: FraudScorer, features: pd.DataFrame
) -> None:
    cutoff = history["timestamp"].quantile(0.6)
    past = history["timestamp"] < cutoff
    future = history[~past].sample(frac=0.7, random_state=0)  # drop some, shuffle the order of the rest
    future["amount"] = future["amount"].sample(frac=1.0, random_state=1).to_numpy()
    future[LABEL_COLUMN] = 1 - future[LABEL_COLUMN]
    altered = pd.concat([history[past], future], ignore_index=True)
    altered_scores = scorer.score(featurize(altered)).iloc[: int(past.sum())].reset_index(drop=True)
    expected = scorer.score(features[past.to_numpy()]).reset_index(drop=True)
    pd.testing.assert_frame_equal(altered_scores, expected)


def test_raising_an_amount_far_above_habit_at_a_risky_merchant_does_not_lower_the_score(
    history: pd.DataFrame, scorer: FraudScorer, features: pd.DataFrame
) -> None:
    late = (history["timestamp"] > history["timestamp"].quantile(0.7)).to_numpy()
    risky = features["merchant_risk_7d"].to_numpy() > np.quantile(features["merchant_risk_7d"], 0.95)
    genuine = (history[LABEL_COLUMN] == 0).to_numpy()
    cases = history.index[late & risky & genuine][:5]
    assert len(cases) == 5
    for row in cases:
        raised = history.copy()
        habit = history.loc[history["user_id"] == history.at[row, "user_id"], "amount"].mean()
        raised.at[row, "amount"] = round(max(habit, history.at[row, "amount"]) * 10, 2)
        before = scorer.score(features.iloc[[row]])["fraud_score"].iloc[0]
        after = scorer.score(featurize(raised).iloc[[row]])["fraud_score"].iloc[0]
        assert after >= before, f"row {row}: score fell from {before:.4f} to {after:.4f} when the amount rose"


def test_more_confirmed_fraud_at_the_merchant_never_lowers_the_score(
    scorer: FraudScorer, features: pd.DataFrame
) -> None:
    """XGBoost fitted with the constraints (``rising_with_merchant_fraud``; training keeps them unless validation
    ranks better without) is held to it, whatever the few incidents it learned from; the
    served autoencoder reads none of these (``test_anomaly_lane``), this fixture's reads every column."""
    assert {"merchant_delayed_risk_7d", "merchant_compromise_share_30d", "mcc_risk_7d"} <= set(
        RISING_WITH_MERCHANT_FRAUD
    )
    assert not {"merchant_count_7d", "merchant_delayed_count_7d", "amount"} & set(RISING_WITH_MERCHANT_FRAUD)
    rows = features.sample(300, random_state=5)
    before = scorer.score(rows)["xgb_score"].to_numpy()
    rose = 0
    for name in RISING_WITH_MERCHANT_FRAUD:
        raised = rows.copy()
        raised[name] = rows[name] + np.where(rows[name] < 1.0, 1.0 - rows[name], rows[name]) * 0.5
        after = scorer.score(raised)["xgb_score"].to_numpy()
        assert (after >= before).all(), f"{name}: a score fell when the merchant's fraud rose"
        rose += int((after > before).sum())
    assert rose > 0  # the model does read them


def test_backtest_cli_end_to_end_on_required_columns_only(history: pd.DataFrame, ray_session, tmp_path) -> None:
    from typer.testing import CliRunner

    from fraudctl.cli import app

    data = tmp_path / "external.csv"
    external = history[["transaction_id", "user_id", "merchant_id", "amount", "timestamp", LABEL_COLUMN]].copy()
    external["timestamp"] = external["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    external.to_csv(data, index=False)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            "--data",
            str(data),
            "--train-start",
            "2026-01-10",
            "--train-days",
            "10",
            "--delay-days",
            "7",
            "--test-days",
            "7",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.rfind("\n{\n") + 1 :])  # the JSON summary ends stdout
    scores = pd.read_csv(out)
    start = pd.Timestamp("2026-01-27", tz="UTC")
    test = history[(history["timestamp"] >= start) & (history["timestamp"] < start + pd.Timedelta(days=7))]
    assert list(scores.columns) == ["transaction_id", "fraud_score"]
    assert scores["transaction_id"].tolist() == test["transaction_id"].tolist()
    assert scores["fraud_score"].between(0, 1).all()
    assert summary["scored"] == len(test) and summary["test_metrics"]["roc_auc"] > 0.7
    ranking = summary["ranking_check"]  # calibration keeps the ranking; the floor's and a plain XGBoost's beside it
    assert ranking["before_calibration"]["roc_auc"] == pytest.approx(
        ranking["without_merchant_floor"]["roc_auc"], abs=1e-4
    )
    if summary["ensemble"]["merchant_floor"] is None:
        assert ranking["without_merchant_floor"] == summary["test_metrics"]
    assert 0.5 < ranking["plain_xgboost"]["roc_auc"] <= 1
    folds = summary["model_selection"]["folds"]  # chosen on rolling time folds inside the training window
    starts = [pd.Timestamp(fold["validation_start"]) for fold in folds]
    assert len(folds) == 3 and starts == sorted(starts) and pd.Timestamp("2026-01-10", tz="UTC") < starts[0]
    assert starts[-1] < pd.Timestamp("2026-01-20", tz="UTC")
    assert [fold["train_rows"] for fold in folds] == sorted(fold["train_rows"] for fold in folds)


def test_evaluation_report_has_every_figure(tmp_path) -> None:
    from training.evaluate import evaluate, write_report

    rng = np.random.default_rng(2)
    n = 3000
    y = (rng.random(n) < 0.05).astype(int)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="10min", tz="UTC"),
            "user_id": rng.integers(0, 300, n).astype(str),
            LABEL_COLUMN: y,
            "fraud_scenario": np.where(y == 1, rng.choice(["skim", "ato"], n), "none"),
        }
    )
    scores = np.clip(0.5 * y + rng.random(n) * 0.6, 0, 1)
    policy = RiskPolicy(threshold=0.6, medium=0.3)
    metrics = evaluate(frame, scores, policy)
    cm = metrics["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == y.sum() and cm["tp"] + cm["fp"] == (scores >= 0.6).sum()
    assert metrics["recall"] == round(cm["tp"] / y.sum(), 5)
    assert set(metrics["recall_by_scenario"]) == {"skim", "ato"}
    assert len(metrics["card_precision_at_100_per_day"]) == 21
    report = write_report(
        tmp_path, title="t", frame=frame, scores=scores, metrics=metrics, policy=policy, notes=["n"], details={}
    )
    text = report.read_text()
    for heading in (
        "average_precision",
        "Confusion matrix",
        "Recall per fraud scenario",
        "Card Precision@100",
        "evaluation.png",
    ):
        assert heading in text
    assert (tmp_path / "evaluation.png").stat().st_size > 10_000


def test_bundle_keeps_its_reference_and_a_bundle_from_before_references_still_loads(
    bundle: ModelBundle, history: pd.DataFrame, features: pd.DataFrame, tmp_path
) -> None:
    x = features[list(FEATURE_NAMES)].to_numpy(np.float32)
    scores = FraudScorer(bundle).score(features)["fraud_score"].to_numpy()
    referenced = ModelBundle(
        **{
            **bundle.__dict__,
            "reference": build_reference(x, FEATURE_NAMES, scores, inputs=input_missing_rates(history)),
        }
    )
    registry = ModelRegistry(root=tmp_path)
    version = registry.register(referenced)
    loaded = registry.load(version)
    assert loaded.reference["rows"] == len(x) and set(loaded.reference["features"]) == set(FEATURE_NAMES)
    assert sum(loaded.reference["score"]["counts"]) == len(x)
    assert loaded.metrics == referenced.metrics
    meta_path = tmp_path / "models" / "versions" / version / "bundle.json"
    meta = json.loads(meta_path.read_text())
    del meta["reference"]
    meta_path.write_text(json.dumps(meta))
    assert registry.load(version).reference is None
