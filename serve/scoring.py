"""What the Serve deployments and the in-process SDK share around the decision core (``training.predict``), hence
identical scores: the model cache, transactions as feature-code columns, and decisions with their reasons.

features (``cluster.feature_state.OnlineFeatures``) -> ``xgb_scores`` || ``ae_scores`` -> ``combine`` (``decide``,
then reason codes from XGBoost contributions, computed only for the MEDIUM and HIGH rows that show them, and the LOW
rows a caller asks to explain) -> ``apply_rules`` (the rule set's action, ``training.rules``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from cluster.config import Settings
from cluster.features import FEATURE_NAMES, Columns
from cluster.schema import canonical_columns as canonical_columns  # re-exported: both front ends import it here
from cluster.schema import scoring_record as scoring_record
from serve.reasons import explain
from training.policy import LOW
from training.predict import FraudScorer, decide
from training.registry import ModelBundle, registry_for
from training.rules import MODEL_ACTIONS, CompiledRules


class ModelSet:
    """Registry bundles by version (a small LRU), and pointer resolution (``champion``, ``latest``)."""

    def __init__(self, settings: Settings, capacity: int = 3):
        self.registry = registry_for(settings)
        self.capacity = capacity
        self._scorers: OrderedDict[str, FraudScorer] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, ref: str) -> str | None:
        return self.registry.resolve(ref)

    def scorer(self, version: str) -> FraudScorer:
        with self._lock:
            if version in self._scorers:
                self._scorers.move_to_end(version)
                return self._scorers[version]
        scorer = FraudScorer(self.registry.load(version))
        if tuple(scorer.feature_names) != FEATURE_NAMES:
            raise ValueError(f"model {version} expects features {scorer.feature_names}, not FEATURE_NAMES")
        with self._lock:
            self._scorers[version] = scorer
            while len(self._scorers) > self.capacity:
                self._scorers.popitem(last=False)
        return scorer


def combine(
    bundle: ModelBundle,
    transaction_ids: list[str],
    x: np.ndarray,
    xgb_score: np.ndarray,
    ae_score: np.ndarray,
    *,
    currencies: Sequence[str] | None = None,
    explain_low: Sequence[bool] | None = None,
    lane_level: float | None = None,
) -> list[dict[str, Any]]:
    """The decision per row: calibrated ensemble score, risk level and alert flag from the policy, the anomaly score
    and whether the anomaly review lane (at ``lane_level``, its live level; None: the trained one) sent the row to
    review, and reasons for the MEDIUM and HIGH rows (per-feature XGBoost contributions, ``pred_contribs``, quoting
    amounts in each row's ``currencies``). A LOW row has none unless ``explain_low`` asks for it: then its strongest
    reasons either way, labelled, so an analyst sees why it passed; a score the merchant floor set is explained by
    the merchant's fraud rate first."""
    scores = decide(bundle, x, xgb_score, ae_score, lane_level)
    fraud_score, levels, flags = scores.fraud_score, scores.risk_level, scores.is_fraud
    factors: list[list[str]] = [[] for _ in transaction_ids]
    low = levels == LOW
    explained = np.flatnonzero(~low | (np.asarray(explain_low, bool) if explain_low is not None else False))
    if len(explained):
        contributions = FraudScorer(bundle).contributions(x[explained]).to_numpy(dtype=np.float32)
        for row, reasons in zip(
            explained,
            explain(
                bundle.feature_names,
                x[explained],
                contributions,
                ae_score[explained],
                bundle.ensemble.ae_weight,
                anomaly_review=bundle.ensemble.policy.anomaly_review if lane_level is None else lane_level,
                currencies=None if currencies is None else [currencies[i] for i in explained],
                both_ways=low[explained],
                merchant_floor=scores.merchant_floor[explained],
            ),
        ):
            factors[row] = reasons
    return [
        {
            "transaction_id": tid,
            "fraud_score": float(score),
            "is_fraud": bool(flag),
            "risk_level": str(level),
            "factors": reasons,
            "model_version": bundle.version,
            "action": MODEL_ACTIONS[str(level)],
            "rules": [],
            "anomaly_score": float(anomaly),
            "anomaly_review": bool(reviewed),
        }
        for tid, score, flag, level, reasons, anomaly, reviewed in zip(
            transaction_ids, fraud_score, flags, levels, factors, ae_score, scores.anomaly_review
        )
    ]


def apply_rules(
    rules: CompiledRules, decisions: list[dict[str, Any]], fields: Columns, x: np.ndarray
) -> dict[str, dict[str, int]]:
    """Set each decision's ``action`` and ``rules`` from the rule set (the model's action where no active rule
    matched) and put a matched rule's reason first among its ``factors``; returns the per-rule match counts
    (shadow rules included) for the stats."""
    if not rules.rules or not decisions:
        return {}
    env = rules.inputs(
        fields,
        x,
        fraud_score=np.array([d["fraud_score"] for d in decisions]),
        risk_level=np.array([d["risk_level"] for d in decisions], dtype=object),
    )
    outcome = rules.apply(env, np.array([d["risk_level"] for d in decisions], dtype=object))
    for decision, action, matched in zip(decisions, outcome.action, outcome.matched):
        decision["action"] = str(action)
        if matched:
            decision["rules"] = [{"id": r.rule.id, "action": r.rule.action} for r in matched]
            decision["factors"] = [r.reason for r in matched] + decision["factors"]
    return outcome.counts


def split_rows(values: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Undo a concatenation of per-request blocks."""
    return np.split(values, np.cumsum(lengths)[:-1]) if lengths else []
