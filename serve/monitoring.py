"""Drift and data-quality monitoring behind ``GET /api/monitoring``: every scored row (HTTP single and batch, and
the stream) against the champion's training reference (``training/reference.py``), over a sliding window.

    ingress replica / stream consumer                                  the cluster's one monitoring actor
    MonitoringReporter.add(bundle, x, decisions, columns)  --flush-->  MonitoringCollector: a ring of time buckets,
      (an append; binned at flush, off the request)        once a s    PSI per feature and of the score, missing
                                                                       rates, drift with hysteresis -> SNS, the
                                                                       kept decisions joined to feedback labels

A reporter keeps references to the scored matrices and bins them when it flushes (one ``np.searchsorted`` per
column into the reference's fixed bins and one ``np.bincount``), in the ingress's background flush or the stream
consumer's writer thread, so the hot path only appends. Only counts travel: a window costs
``buckets x features x bins`` integers whatever the traffic, and merging replicas is adding counts.

PSI of a window q against the reference p over the same bins: ``sum((q_i - p_i) * ln(q_i / p_i))``, proportions
floored at ``training.reference.PSI_EPSILON`` so an empty bin on either side stays finite.

The collector also keeps the anomaly review lane's live level (``training.policy.RiskPolicy.live_lane_level``):
the newest anomaly scores each model version answered with, from every reporter, so one level holds the lane's
budget across replicas and the stream; ``LaneLevels`` is how the scoring code reads it.

Libraries considered: river has streaming statistics and drift detectors for one univariate stream (ADWIN,
Page-Hinkley), but no binned comparison against a fixed training reference, nor a way to merge the state of many
replicas; whylogs profiles do merge, but they keep sketches per column (KLL, HLL, frequent items), far more than
PSI needs, built through pandas per call, and its last release is from 2024; evidently compares two DataFrames in a
report, a batch job rather than a running window over replicas. Fixed-bin counts are a few numpy calls and merge by
addition.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import ray
from sklearn.metrics import average_precision_score

from cluster.aws import client
from cluster.config import Settings
from cluster.runtime import ACTOR_NAMESPACE
from training.policy import RiskPolicy
from training.reference import OPTIONAL_INPUTS, bin_matrix, psi
from training.registry import ModelNotFound, registry_for

log = logging.getLogger(__name__)

MONITORING_ACTOR = "serve-monitoring"
WINDOW_BUCKETS = 30  # the window is a ring of this many time buckets
MAX_PENDING_ROWS = 50_000  # a reporter bins what it holds once it holds this many rows, whenever its flush is due
MAX_KEPT_DECISIONS = 200_000  # decisions kept for the labels that arrive days later (the newest ones)
MAX_KEPT_LABELS = 200_000
MAX_LANE_VERSIONS = 4  # anomaly-score windows are kept for the newest this many model versions
LANE_READ_TIMEOUT_S = 2.0


def rejected_field(name: str) -> str:
    """A 4xx error's field as counted: ``transactions.3.amount`` and ``amount`` are both ``amount``."""
    return re.sub(r"^transactions\.\d+\.?", "", name) or "transactions"


@dataclass
class Reference:
    """A bundle's stored reference, parsed for binning: per feature its edges and counts, padded to one width."""

    version: str
    rows: int
    feature_names: tuple[str, ...]
    edges: list[np.ndarray]
    counts: np.ndarray  # (features x width)
    score_edges: np.ndarray
    score_counts: np.ndarray
    inputs: dict[str, float]  # optional field -> missing rate

    @classmethod
    def parse(cls, version: str, stored: Mapping[str, Any]) -> "Reference":
        features = stored["features"]
        names = tuple(features)
        edges = [np.asarray(features[name]["edges"], np.float64) for name in names]
        width = max(len(e) for e in edges) + 2
        counts = np.zeros((len(names), width), np.int64)
        for j, name in enumerate(names):
            counts[j, : len(features[name]["counts"])] = features[name]["counts"]
        return cls(
            version=version,
            rows=int(stored["rows"]),
            feature_names=names,
            edges=edges,
            counts=counts,
            score_edges=np.asarray(stored["score"]["edges"], np.float64),
            score_counts=np.asarray(stored["score"]["counts"], np.int64),
            inputs={name: value["missing_rate"] for name, value in stored.get("inputs", {}).items()},
        )

    @property
    def width(self) -> int:
        return self.counts.shape[1]

    def missing_column(self, j: int) -> int:
        return len(self.edges[j]) + 1


@dataclass
class WindowCounts:
    """Binned counts of some scored rows against one reference version; merged by addition."""

    rows: int
    features: np.ndarray  # (features x width), the reference's bins
    score: np.ndarray
    inputs_missing: dict[str, int] = field(default_factory=dict)

    def add(self, other: "WindowCounts") -> None:
        """Add ``other`` into new arrays: counts that came through Ray (a reporter's flush) are read-only."""
        self.rows += other.rows
        self.features = self.features + other.features
        self.score = self.score + other.score
        for name, count in other.inputs_missing.items():
            self.inputs_missing[name] = self.inputs_missing.get(name, 0) + count


@dataclass
class DecisionBlock:
    """One flush's decisions, kept for the labels: ids, calibrated scores, alert flags, cards and the UTC day
    decided."""

    transaction_ids: list[str]
    scores: np.ndarray
    flagged: np.ndarray
    day: str
    cards: list[str] | None = None  # user_id of each decision, for card precision at k

    @classmethod
    def of(cls, decisions: Sequence[dict[str, Any]], day: str, cards: Sequence[str] | None = None) -> "DecisionBlock":
        return cls(
            transaction_ids=[d["transaction_id"] for d in decisions],
            scores=np.array([d["fraud_score"] for d in decisions], np.float64),
            flagged=np.array([d["is_fraud"] for d in decisions], bool),
            day=day,
            cards=None if cards is None else [str(card) for card in cards],
        )

    def __len__(self) -> int:
        return len(self.transaction_ids)


def count_rows(
    reference: Reference, x: np.ndarray, scores: np.ndarray, columns: Mapping[str, Sequence[Any]]
) -> WindowCounts:
    """Bin a scored (rows x features) matrix and its scores into ``reference``'s bins; count absent optional
    fields of the transactions' ``columns``."""
    missing = {
        name: int(pd.isna(np.asarray(columns[name], dtype=object)).sum()) for name in OPTIONAL_INPUTS if name in columns
    }
    score = bin_matrix(
        np.asarray(scores, np.float64)[:, None], [reference.score_edges], len(reference.score_edges) + 2
    )[0]
    return WindowCounts(
        rows=len(x), features=bin_matrix(x, reference.edges, reference.width), score=score, inputs_missing=missing
    )


@dataclass(frozen=True)
class DriftPolicy:
    """When a feature drifts (its defaults are the settings': ``DriftPolicy.of``)."""

    threshold: float
    clear_below: float
    consecutive: int
    min_rows: int

    @classmethod
    def of(cls, settings: Settings) -> "DriftPolicy":
        return cls(
            threshold=settings.drift_psi_threshold,
            clear_below=settings.drift_psi_clear,
            consecutive=settings.drift_consecutive,
            min_rows=settings.drift_min_rows,
        )


class DriftTracker:
    """Hysteresis over successive evaluations: a feature becomes drifted after ``consecutive`` evaluations above
    ``threshold`` and clears only once below ``clear_below``; an evaluation of a window with fewer than
    ``min_rows`` rows judges nothing. ``update`` returns the features whose episode starts now."""

    def __init__(self, policy: DriftPolicy):
        self.policy = policy
        self.streaks: dict[str, int] = {}
        self.drifted: set[str] = set()

    def update(self, psi_by_feature: Mapping[str, float | None], rows: int) -> list[str]:
        if rows < self.policy.min_rows:
            return []
        started = []
        for name, value in psi_by_feature.items():
            if value is None:
                continue
            if name in self.drifted:
                if value < self.policy.clear_below:
                    self.drifted.discard(name)
                    self.streaks[name] = 0
            elif value > self.policy.threshold:
                self.streaks[name] = self.streaks.get(name, 0) + 1
                if self.streaks[name] >= self.policy.consecutive:
                    self.drifted.add(name)
                    started.append(name)
            else:
                self.streaks[name] = 0
        return sorted(started)

    def reset(self) -> None:
        self.streaks.clear()
        self.drifted.clear()


def labelled_performance(scores: np.ndarray, flagged: np.ndarray, labels: np.ndarray, scored: int) -> dict[str, Any]:
    """Precision, recall (at the decisions' own threshold, i.e. ``is_fraud``), average precision of the scores and
    the confusion matrix over labelled decisions; ``coverage`` is labelled / ``scored``."""
    labels, flagged = np.asarray(labels, bool), np.asarray(flagged, bool)
    tp, fp = int(np.sum(flagged & labels)), int(np.sum(flagged & ~labels))
    fn, tn = int(np.sum(~flagged & labels)), int(np.sum(~flagged & ~labels))
    return {
        "count": int(len(labels)),
        "coverage": round(len(labels) / scored, 6) if scored else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "average_precision": float(average_precision_score(labels, scores)) if tp + fn else None,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def card_precision_at_k(cards: Sequence[str], scores: np.ndarray, labels: Mapping[int, bool], k: int) -> dict[str, Any]:
    """Card precision at ``k`` for one day (the Fraud Detection Handbook's CP@k): of the ``k`` cards with the
    highest score that day, the share with a fraud among their labelled transactions. Labels arrive late, so
    ``labelled_cards`` says how many of those cards have any label yet; ``labels`` maps row -> is_fraud."""
    best: dict[str, float] = {}
    for card, score in zip(cards, scores):
        if score > best.get(card, -1.0):
            best[card] = float(score)
    top = set(sorted(best, key=best.__getitem__, reverse=True)[:k])
    fraud_cards = {cards[row] for row, is_fraud in labels.items() if is_fraud and cards[row] in top}
    labelled_cards = {cards[row] for row in labels if cards[row] in top}
    return {
        "k": k,
        "cards": len(top),
        "labelled_cards": len(labelled_cards),
        "cp_at_k": round(len(fraud_cards) / len(top), 6) if top else None,
    }


class DriftNotifier:
    """One SNS message per evaluation that starts drift episodes, to the drift topic (created if absent)."""

    def __init__(self, settings: Settings):
        self.sns = client("sns", settings)
        self.topic_arn = self.sns.create_topic(Name=settings.drift_topic)["TopicArn"]  # idempotent: the ARN

    def __call__(self, message: dict[str, Any]) -> None:
        try:
            self.sns.publish(TopicArn=self.topic_arn, Subject="Feature drift", Message=json.dumps(message))
        except Exception:  # monitoring must not stop on a notification: the drift stays in GET /api/monitoring
            log.exception("publishing the drift notification failed")


class LaneWindow:
    """The newest anomaly scores one model version answered with, as many as its live lane level reads. The level
    moves once per ``lane_block_rows`` new rows, as the offline replay moves it, so readers between two moves agree."""

    def __init__(self, policy: RiskPolicy):
        self.policy = policy
        self.blocks: deque[np.ndarray] = deque()
        self.rows = 0
        self._since_level = 0
        self._level = math.inf

    def add(self, scores: np.ndarray) -> None:
        keep = self.policy.lane_window_rows()
        self.blocks.append(np.asarray(scores, dtype=np.float64))
        self.rows += len(scores)
        self._since_level += len(scores)
        while self.blocks and self.rows - len(self.blocks[0]) >= keep:
            self.rows -= len(self.blocks.popleft())
        if self._since_level >= self.policy.lane_block_rows():
            self._level = self.policy.live_lane_level(np.concatenate(self.blocks)[-keep:])
            self._since_level = 0

    def level(self) -> float:
        return self._level

    def view(self) -> dict[str, Any]:
        return {
            "rate": self.policy.anomaly_review_rate,
            "trained_level": self.policy.anomaly_review,
            "live_level": None if math.isinf(self._level) else round(self._level, 6),
            "open": not math.isinf(self._level),
            "window_rows": min(self.rows, self.policy.lane_window_rows()),
            "rows_to_open": self.policy.lane_min_rows(),
        }


@dataclass
class _Bucket:
    start: float
    counts: dict[str, WindowCounts] = field(default_factory=dict)  # reference version -> counts
    rejected: Counter = field(default_factory=Counter)
    scored: int = 0


class MonitoringCollector:
    """The window over every reporter (run as the named actor ``monitoring_actor`` returns).

    ``references`` maps a model version to its stored reference (None when the bundle has none; by default read
    from the registry); ``notify`` gets one message per evaluation that starts drift episodes (by default
    ``DriftNotifier``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        references: Callable[[str], Mapping[str, Any] | None] | None = None,
        notify: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.settings = settings
        self.clock = clock
        self.window_s = settings.monitoring_window_s
        self.bucket_s = self.window_s / WINDOW_BUCKETS
        self.buckets: deque[_Bucket] = deque()
        self.tracker = DriftTracker(DriftPolicy.of(settings))
        self._stored_reference = references or _registry_references(settings)
        self._notify = notify or DriftNotifier(settings)
        self._references: dict[str, Reference | None] = {}
        self.version: str | None = None  # the reference version of the newest rows: the champion
        self.serving_version: str | None = None  # the newest rows' model, with a reference or not
        self.evaluated_at: float | None = None
        self.notifications = 0
        self.decisions: deque[DecisionBlock] = deque()  # the newest blocks, about MAX_KEPT_DECISIONS rows
        self.kept = 0
        self.labels: OrderedDict[str, bool] = OrderedDict()
        self.lanes: OrderedDict[str, LaneWindow] = OrderedDict()  # model version -> its anomaly lane's window

    def reference(self, version: str | None) -> Reference | None:
        if version is None:
            return None
        if version not in self._references:
            stored = self._stored_reference(version)
            self._references[version] = Reference.parse(version, stored) if stored else None
        return self._references[version]

    def _bucket(self, now: float) -> _Bucket:
        start = now - now % self.bucket_s
        if not self.buckets or self.buckets[-1].start != start:
            self.buckets.append(_Bucket(start=start))
        while self.buckets and self.buckets[0].start <= now - self.window_s:
            self.buckets.popleft()
        return self.buckets[-1]

    def record(
        self,
        *,
        counts: Mapping[str, WindowCounts] | None = None,
        scored: int = 0,
        rejected: Mapping[str, int] | None = None,
        decisions: DecisionBlock | None = None,
        labels: Sequence[tuple[str, bool]] = (),
        model_version: str | None = None,
        anomaly: Mapping[str, tuple[Mapping[str, Any], np.ndarray]] | None = None,
    ) -> None:
        """One reporter's flush: counts per reference version, rows scored, rejected fields, decisions kept for
        labels, labels (id, is_fraud), the model of its newest rows, and per model version with a live anomaly
        lane its risk policy and the anomaly scores it answered with."""
        for version, (policy, scores) in (anomaly or {}).items():
            if version not in self.lanes:
                self.lanes[version] = LaneWindow(RiskPolicy.from_dict(policy))
                while len(self.lanes) > MAX_LANE_VERSIONS:
                    self.lanes.popitem(last=False)
            self.lanes[version].add(scores)
            self.lanes.move_to_end(version)
        now = self.clock()
        self.serving_version = model_version or self.serving_version
        bucket = self._bucket(now)
        bucket.scored += scored
        bucket.rejected.update(rejected or {})
        for version, part in (counts or {}).items():
            if version != self.version and self.reference(version) is not None:
                if self.version is not None:
                    self.tracker.reset()  # a new champion: drift is judged against its own reference
                self.version = version
            if version in bucket.counts:
                bucket.counts[version].add(part)
            else:
                bucket.counts[version] = part
        if decisions is not None and len(decisions):
            self.decisions.append(decisions)
            self.kept += len(decisions)
            while self.kept - len(self.decisions[0]) >= MAX_KEPT_DECISIONS:
                self.kept -= len(self.decisions.popleft())
        for transaction_id, label in labels:
            self.labels[transaction_id] = bool(label)
            self.labels.move_to_end(transaction_id)
        while len(self.labels) > MAX_KEPT_LABELS:
            self.labels.popitem(last=False)
        if self.evaluated_at is None or now - self.evaluated_at >= self.settings.monitoring_evaluate_s:
            self.evaluate()

    def lane_levels(self) -> dict[str, float]:
        """The anomaly lane's live level per model version seen (``math.inf``: closed, too few rows yet)."""
        return {version: window.level() for version, window in self.lanes.items()}

    def _window(self, version: str | None) -> WindowCounts | None:
        parts = [bucket.counts[version] for bucket in self.buckets if version in bucket.counts]
        if not parts:
            return None
        total = WindowCounts(rows=0, features=np.zeros_like(parts[0].features), score=np.zeros_like(parts[0].score))
        for part in parts:
            total.add(part)
        return total

    def drift(self) -> tuple[Reference | None, WindowCounts | None, dict[str, dict[str, float | None]], float | None]:
        """The champion's reference, its window counts, PSI and missing rate per feature, and the score's PSI."""
        self._bucket(self.clock())
        reference = self.reference(self.version)
        window = self._window(self.version)
        if reference is None or window is None:
            return reference, window, {}, None
        features = {}
        for j, name in enumerate(reference.feature_names):
            features[name] = {
                "psi": _rounded(psi(reference.counts[j], window.features[j])),
                "missing_rate": _rounded(window.features[j, reference.missing_column(j)] / window.rows),
            }
        return reference, window, features, _rounded(psi(reference.score_counts, window.score))

    def evaluate(self) -> list[str]:
        """Advance the hysteresis by one evaluation; returns the features whose drift episode started now."""
        self.evaluated_at = self.clock()
        reference, window, features, score_psi = self.drift()
        if window is None:
            return []
        started = self.tracker.update({name: figures["psi"] for name, figures in features.items()}, window.rows)
        if started:
            self._notify(
                {
                    "model_version": self.version,
                    "window_s": self.window_s,
                    "rows": window.rows,
                    "threshold": self.tracker.policy.threshold,
                    "features": {name: features[name]["psi"] for name in started},
                    "drifted": sorted(self.tracker.drifted),
                    "score_psi": score_psi,
                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
            self.notifications += 1
        return started

    def view(self) -> dict[str, Any]:
        """The ``GET /api/monitoring`` body (the contract's shape, plus inputs, the policy and per-day labels)."""
        reference, window, features, score_psi = self.drift()
        rejected: Counter = Counter()
        for bucket in self.buckets:
            rejected.update(bucket.rejected)
        rows = window.rows if window is not None else 0
        inputs = {
            name: {
                "missing_rate": _rounded(window.inputs_missing.get(name, 0) / rows) if rows else None,
                "reference_missing_rate": _rounded(rate),
            }
            for name, rate in (reference.inputs if reference is not None else {}).items()
        }
        policy = self.tracker.policy
        return {
            "reference": {
                "model_version": reference.version if reference else self.serving_version,
                "rows": reference.rows if reference else None,
            },
            "window_s": self.window_s,
            "scored": sum(bucket.scored for bucket in self.buckets),
            "compared_rows": rows,
            "features": features,
            "score": {"psi": score_psi},
            "drifted": sorted(self.tracker.drifted),
            "rejected_inputs": {"count": sum(rejected.values()), "by_field": dict(rejected.most_common())},
            "inputs": inputs,
            "labelled": self.labelled(),
            "drift_policy": {
                "psi_threshold": policy.threshold,
                "psi_clear": policy.clear_below,
                "consecutive": policy.consecutive,
                "min_rows": policy.min_rows,
                "psi_formula": "sum((q - p) * ln(q / p)), proportions floored at 1e-4",
            },
            "notifications": self.notifications,
            "anomaly_review": {version: window.view() for version, window in self.lanes.items()},
        }

    def labelled(self) -> dict[str, Any]:
        """Performance on the kept decisions that have a label, overall and per UTC day of the decision (a
        transaction decided twice, e.g. replayed, counts once: its newest decision)."""
        seen: set[str] = set()
        joined: list[tuple[float, bool, str, bool]] = []
        scored_per_day: Counter = Counter()
        for block in reversed(self.decisions):
            for tid, score, flagged in zip(block.transaction_ids, block.scores, block.flagged):
                if tid in seen:
                    continue
                seen.add(tid)
                scored_per_day[block.day] += 1
                if tid in self.labels:
                    joined.append((float(score), bool(flagged), block.day, self.labels[tid]))
        overall = _performance(joined, len(seen))
        per_day = {
            day: {
                **_performance([row for row in joined if row[2] == day], scored_per_day[day]),
                "card_precision": self._card_precision(day),
            }
            for day in sorted(scored_per_day)
        }
        return {**overall, "kept_decisions": len(seen), "per_day": per_day}

    def _card_precision(self, day: str) -> dict[str, Any] | None:
        """CP@k over the day's kept decisions that name their card (each transaction once, its newest decision)."""
        cards: list[str] = []
        scores: list[float] = []
        labels: dict[int, bool] = {}
        seen: set[str] = set()
        for block in reversed(self.decisions):
            if block.day != day or block.cards is None:
                continue
            for tid, score, card in zip(block.transaction_ids, block.scores, block.cards):
                if tid in seen:
                    continue
                seen.add(tid)
                if tid in self.labels:
                    labels[len(cards)] = self.labels[tid]
                cards.append(card)
                scores.append(float(score))
        if not cards:
            return None
        return card_precision_at_k(cards, np.array(scores), labels, self.settings.monitoring_card_precision_k)


def _performance(joined: list[tuple[float, bool, str, bool]], scored: int) -> dict[str, Any]:
    if not joined:
        return {
            "count": 0,
            "coverage": 0.0 if scored else None,
            "precision": None,
            "recall": None,
            "average_precision": None,
            "confusion": {"tp": 0, "fp": 0, "fn": 0, "tn": 0},
        }
    scores, flagged, _, labels = zip(*joined)
    return labelled_performance(np.array(scores), np.array(flagged), np.array(labels), scored)


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def _registry_references(settings: Settings) -> Callable[[str], Mapping[str, Any] | None]:
    registry = registry_for(settings)

    def stored(version: str) -> Mapping[str, Any] | None:
        try:
            return registry.metadata(version).get("reference")
        except ModelNotFound:
            return None

    return stored


def monitoring_actor(settings: Settings) -> Any:
    """The cluster's one monitoring actor (created on first use; restarted, with an empty window, if lost)."""
    return (
        ray.remote(MonitoringCollector)
        .options(
            name=MONITORING_ACTOR,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_restarts=-1,
        )
        .remote(settings)
    )


class MonitoringReporter:
    """Per replica / consumer: scored batches held by reference and binned when flushed (off the request: the
    ingress's background loop, the consumer's writer thread), decisions kept for the labels, rejected fields and
    labels. ``add`` is an append under a lock, so scoring and flushing may run in different threads."""

    def __init__(self, settings: Settings, *, actor: Any | None = None, flush_every_s: float = 1.0):
        self.enabled = settings.monitoring_enabled
        self.keeps_lanes = settings.anomaly_review_live  # else no scorer reads the lanes' windows
        self.actor = actor or monitoring_actor(settings)
        self.flush_every_s = flush_every_s
        self._lock = threading.Lock()
        self._references: dict[str, Reference | None] = {}
        self._batches: list[tuple[Any, np.ndarray, Sequence[dict[str, Any]], Any]] = []
        self._pending_rows = 0
        self._rejected: Counter = Counter()
        self._labels: list[tuple[str, bool]] = []
        self._shadowed: list[tuple[Any, Sequence[dict[str, Any]]]] = []
        self._last_flush = time.monotonic()

    def add(
        self, bundle: Any, x: np.ndarray, decisions: Sequence[dict[str, Any]], columns: Mapping[str, Sequence[Any]]
    ) -> None:
        """Note a scored batch of ``bundle`` (its features ``x``, its decisions, the transactions' columns)."""
        if not self.enabled or not len(decisions):
            return
        with self._lock:
            self._batches.append((bundle, x, decisions, columns))
            self._pending_rows += len(decisions)

    def shadowed(self, bundle: Any, decisions: Sequence[dict[str, Any]]) -> None:
        """Note a challenger's decisions (shadow or canary) for its anomaly lane's window only, so its lane is open
        when it is promoted; drift and the labels follow the champion's."""
        if self.enabled and self.keeps_lanes and len(decisions) and bundle.ensemble.policy.live_lane:
            with self._lock:
                self._shadowed.append((bundle, decisions))

    def rejected(self, errors: Sequence[Mapping[str, str]]) -> None:
        """Count the fields of a 4xx answer to a scoring request (each field once per request)."""
        if not self.enabled:
            return
        with self._lock:
            self._rejected.update({rejected_field(error["field"]) for error in errors})

    def label(self, transaction_id: str, is_fraud: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._labels.append((transaction_id, bool(is_fraud)))

    def due(self) -> bool:
        return time.monotonic() - self._last_flush >= self.flush_every_s or self._pending_rows >= MAX_PENDING_ROWS

    def flush(self) -> Any:
        """Bin what was noted and send it to the actor (an ObjectRef, or None when there was nothing)."""
        with self._lock:
            batches, rejected, labels, shadowed = self._batches, self._rejected, self._labels, self._shadowed
            self._batches, self._pending_rows, self._rejected, self._labels = [], 0, Counter(), []
            self._shadowed = []
            self._last_flush = time.monotonic()
        every = [d for _, _, decisions, _ in batches for d in decisions]
        if not (every or rejected or labels or shadowed):
            return None
        named = batches and all("user_id" in columns for _, _, _, columns in batches)
        kept = DecisionBlock.of(
            every,
            datetime.now(timezone.utc).date().isoformat(),
            np.concatenate([np.asarray(columns["user_id"], dtype=object) for _, _, _, columns in batches])
            if named
            else None,
        )
        by_version: dict[str, list[tuple[Any, np.ndarray, Sequence[dict[str, Any]], Any]]] = {}
        for batch in batches:
            by_version.setdefault(batch[0].version, []).append(batch)
        counts = {}
        for version, group in by_version.items():  # one binning per model version: per batch would cost more
            reference = self._reference(group[0][0])
            if reference is not None:
                counts[version] = count_rows(
                    reference,
                    np.concatenate([x for _, x, _, _ in group]),
                    kept.scores
                    if len(group) == len(batches)
                    else np.array([d["fraud_score"] for _, _, decisions, _ in group for d in decisions], np.float64),
                    {
                        name: np.concatenate([np.asarray(columns[name], dtype=object) for _, _, _, columns in group])
                        for name in OPTIONAL_INPUTS
                        if all(name in columns for _, _, _, columns in group)
                    },
                )
        lanes: dict[str, tuple[Any, list[float]]] = {}
        scored = [(bundle, decisions) for bundle, _, decisions, _ in batches] if self.keeps_lanes else []
        for bundle, decisions in scored + shadowed:  # ``shadowed`` holds live lanes only
            if bundle.ensemble.policy.live_lane:
                lanes.setdefault(bundle.version, (bundle, []))[1].extend(
                    d["anomaly_score"] for d in decisions if d.get("anomaly_score") is not None
                )
        anomaly = {
            version: (bundle.ensemble.policy.to_dict(), np.array(scores, np.float64))
            for version, (bundle, scores) in lanes.items()
        }
        return self.actor.record.remote(
            counts=counts,
            scored=len(kept),
            rejected=dict(rejected),
            decisions=kept,
            labels=labels,
            model_version=batches[-1][0].version if batches else None,
            anomaly=anomaly,
        )

    def _reference(self, bundle: Any) -> Reference | None:
        if bundle.version not in self._references:
            stored = bundle.reference
            self._references[bundle.version] = Reference.parse(bundle.version, stored) if stored else None
        return self._references[bundle.version]


class LaneLevels:
    """The anomaly review lane's live level per model version, as the monitoring actor keeps it, re-read about every
    ``rules_refresh_s`` (as the rule set is) so the replicas, the stream and the SDK apply one level per refresh.
    Reading waits in the scoring path only for the first levels: after them a caller that finds the levels stale
    asks the actor, and a later one takes the answer once it is there (a failed or lost read keeps the last levels).
    Without monitoring nothing keeps recent scores, so a live lane stays closed (``anomaly_review_live`` off applies
    the trained level instead)."""

    def __init__(self, settings: Settings, *, actor: Any | None = None):
        self.settings = settings
        self.enabled = settings.monitoring_enabled
        self.refresh_s = settings.rules_refresh_s
        self._actor = actor
        self._levels: dict[str, float] = {}
        self._pending: Any | None = None
        self._asked = self._checked = -math.inf
        self._failing = False
        self._lock = threading.Lock()

    def level(self, bundle: Any) -> float | None:
        """The level for ``bundle``'s decisions (``training.predict.decide``'s ``lane_level``): None where the
        trained level applies (no live lane, or ``anomaly_review_live`` off), ``math.inf`` while its lane is closed."""
        if not (self.settings.anomaly_review_live and bundle.ensemble.policy.live_lane):
            return None
        if not self.enabled:
            if not self._failing:
                log.warning(
                    "monitoring is off, so the anomaly lane keeps no level: closed (FRAUD_ANOMALY_REVIEW_LIVE"
                    "=false applies the trained level instead)"
                )
                self._failing = True
            return math.inf
        if time.monotonic() - self._checked >= self.refresh_s and self._lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return self._levels.get(bundle.version, math.inf)

    def _refresh(self) -> None:
        first = self._checked == -math.inf
        if self._pending is None:
            self._ask()
            if not first or self._pending is None:
                return
            ray.wait([self._pending], timeout=LANE_READ_TIMEOUT_S)  # once, at start: first decisions at the live level
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            if time.monotonic() - self._asked >= LANE_READ_TIMEOUT_S:
                self._failed("no answer", ask=True)
            return
        try:
            self._levels = ray.get(ready[0])
            self._failing = False
            self._checked = time.monotonic()
            self._pending = None
        except Exception as exc:  # keep deciding with the last levels; ask again
            self._failed(exc, ask=True)

    def _ask(self) -> None:
        try:
            self._actor = self._actor or monitoring_actor(self.settings)
            self._pending, self._asked = self._actor.lane_levels.remote(), time.monotonic()
        except Exception as exc:
            self._failed(exc, ask=False)

    def _failed(self, reason: Any, *, ask: bool) -> None:
        if not self._failing:  # once per outage
            log.warning("reading the anomaly lane's live levels failed (%s); keeping the last ones", reason)
        self._failing = True
        self._pending = None
        self._checked = time.monotonic()
        if ask:
            self._ask()
