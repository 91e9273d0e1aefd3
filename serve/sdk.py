"""``FraudDetector``: the scoring core in-process, for notebooks and batch jobs; the same stages the Serve replicas
run (``serve.scoring``), so a transaction gets the same score here as over HTTP given the same feature state.

    detector = FraudDetector()                       # champion from the registry, online feature state "sdk"
    detector.predict({"transaction_id": "t1", ...})  # -> {fraud_score, is_fraud, risk_level, factors, ...}
    detector.predict_batch(frame_or_list)
    detector.predict(transaction, explain=True)      # LOW decisions get their factors too, labelled either way

A stream consumer makes it ``follow`` the rollout (``serve.rollout.Routing``): the canary share of transactions
(by transaction_id, as over HTTP) is answered by the challenger, and every challenger decision is kept for the
champion/challenger log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from cluster.config import Settings, get_settings
from cluster.feature_state import OnlineFeatures, StreamPlacement
from cluster.features import Columns
from cluster.schema import Transaction, validate_frame
from serve.api import ApiError, parse_transaction
from serve.champion import decision_rows, in_canary
from serve.monitoring import LaneLevels, MonitoringReporter
from serve.rollout import Routing
from serve.rule_store import RuleCache
from serve.scoring import ModelSet, apply_rules, canonical_columns, combine, scoring_record
from serve.stats import add_matches
from training.predict import ae_scores, xgb_scores
from training.registry import ModelBundle

log = logging.getLogger(__name__)


class InvalidTransaction(ValueError):
    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


class FraudDetector:
    """Loads a registry bundle (``model``: a version or a pointer) and keeps its own online feature state, named
    ``feature_state``; ``restore_from=settings.feature_state_name`` starts that state from the cluster's last
    snapshot (refused when it covers other streams than these settings'). Decisions
    follow the stored rule set (``rules``: a ``RuleCache``, by default over the settings' rules table) and the
    anomaly lane's live level (``lanes``, by default read from the cluster's monitoring actor, as over HTTP); with a
    ``monitor`` every scored batch is noted for drift monitoring (the stream consumers pass theirs)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        model: str = "champion",
        features: Any = None,
        feature_state: str = "sdk",
        restore_from: str | None = None,
        rules: RuleCache | None = None,
        monitor: MonitoringReporter | None = None,
        lanes: LaneLevels | None = None,
    ):
        self.settings = settings or get_settings()
        self.models = ModelSet(self.settings)
        version = self.models.resolve(model)
        if version is None:
            raise LookupError(f"no {model!r} model in the registry; run `fraudctl train` first")
        self.bundle = self.models.scorer(version).bundle
        self.version = version
        self.challenger: ModelBundle | None = None
        self.canary_share = 0.0
        self.challenger_rows: list[dict[str, Any]] = []  # champion/challenger pairs (``serve.champion``)
        self.challenger_errors: dict[str, int] = {}  # version -> rows it failed to score
        self.features = features or OnlineFeatures(self.settings, name=feature_state, restore_from=restore_from)
        self.rules = rules or RuleCache(self.settings)
        self.rule_matches: dict[str, dict[str, int]] = {}
        self.monitor = monitor
        self.lanes = lanes or LaneLevels(self.settings, actor=monitor.actor if monitor is not None else None)

    def predict(self, transaction: dict[str, Any], *, explain: bool = False) -> dict[str, Any]:
        return self.predict_batch([transaction], explain=explain)[0]

    def predict_batch(
        self, transactions: list[dict[str, Any]] | pd.DataFrame, *, explain: bool = False
    ) -> list[dict[str, Any]]:
        """Decisions in input order; invalid input raises ``InvalidTransaction`` naming each field. ``explain``
        gives LOW decisions their factors too, as ``?explain=true`` does over HTTP."""
        started = time.perf_counter()
        if isinstance(transactions, pd.DataFrame):
            return self._decide(validate_frame(transactions), started, explain)
        parsed, errors = [], []
        for index, item in enumerate(transactions):
            try:
                parsed.append(parse_transaction(item, prefix=f"{index}." if len(transactions) > 1 else ""))
            except ApiError as exc:
                errors.extend(exc.errors)
        if errors:
            raise InvalidTransaction(errors)
        return self._decide(canonical_columns([scoring_record(t) for t in parsed]), started, explain)

    def predict_transactions(
        self, transactions: list[Transaction], placement: StreamPlacement | None = None
    ) -> list[dict[str, Any]]:
        """Decisions for transactions the caller has already validated (the stream consumers): no second pass.
        ``placement``: where they sit in their stream, so the feature state applies each exactly once."""
        started = time.perf_counter()
        return self._decide(canonical_columns([scoring_record(t) for t in transactions]), started, placement=placement)

    def follow(self, routing: Routing) -> None:
        """Answer from the routing's champion, and its canary share from the challenger (None: no challenger)."""
        if routing.champion is not None and routing.champion != self.version:
            self.bundle, self.version = self.models.scorer(routing.champion).bundle, routing.champion
        self.challenger = self.models.scorer(routing.challenger).bundle if routing.challenger else None
        self.canary_share = routing.share

    def take_challenger_log(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The champion/challenger decision pairs and the challenger's failed rows since the last call."""
        rows, errors = self.challenger_rows, self.challenger_errors
        self.challenger_rows, self.challenger_errors = [], {}
        return rows, errors

    def take_rule_matches(self) -> dict[str, dict[str, int]]:
        """The rows each rule matched since the last call (for the stats)."""
        matches, self.rule_matches = self.rule_matches, {}
        return matches

    def _combine(self, bundle: ModelBundle, batch: Columns, x: Any, explain: bool) -> list[dict[str, Any]]:
        return combine(
            bundle,
            list(batch["transaction_id"]),
            x,
            xgb_scores(bundle, x),
            ae_scores(bundle, x),
            currencies=list(batch["currency"]),
            explain_low=[explain] * len(x) if explain else None,
            lane_level=self.lanes.level(bundle),
        )

    def _with_challenger(
        self, batch: Columns, x: Any, decisions: list[dict[str, Any]], explain: bool
    ) -> list[dict[str, Any]]:
        """Every row scored by the challenger too (shadow), its canary share answered by it; a failure leaves the
        champion's answers and counts against the challenger."""
        challenger = self.challenger
        canary = [in_canary(tid, self.canary_share) for tid in batch["transaction_id"]]
        try:
            challenger_decisions = self._combine(challenger, batch, x, explain)
        except Exception:
            log.exception("challenger %s failed on %d rows; the champion answers them", challenger.version, len(x))
            self.challenger_errors[challenger.version] = self.challenger_errors.get(challenger.version, 0) + sum(canary)
            return decisions
        self.challenger_rows.extend(decision_rows(decisions, challenger_decisions, canary))
        if self.monitor is not None:
            self.monitor.shadowed(challenger, challenger_decisions)
        return [b if c else a for a, b, c in zip(decisions, challenger_decisions, canary)]

    def _decide(
        self, batch: Columns, started: float, explain: bool = False, placement: StreamPlacement | None = None
    ) -> list[dict[str, Any]]:
        x = self.features.matrix(batch, placement)
        decisions = self._combine(self.bundle, batch, x, explain)
        if self.monitor is not None:
            self.monitor.add(self.bundle, x, decisions, batch)
        if self.challenger is not None:
            decisions = self._with_challenger(batch, x, decisions, explain)
        add_matches(self.rule_matches, apply_rules(self.rules.current(), decisions, batch, x))
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        for decision in decisions:
            decision["processing_time_ms"] = round(elapsed_ms, 3)
        return decisions
