"""Reason codes: XGBoost per-feature contributions (``pred_contribs``) turned into sentences an analyst reads.

The sentences come from the feature definitions (``cluster.features.REASONS``); this module only ranks and groups.
Features that say the same thing (the amount in four guises, the velocity windows) form one reason whose weight is
their summed contribution; its sentence comes from its strongest member that has something true to say about its
value. By default only reasons that push towards fraud are given, strongest first, at most ``MAX_FACTORS``; asked
for ``both_ways`` (a LOW decision an analyst wants explained), the strongest reasons either way, each labelled with
its direction. An autoencoder that finds the row unusual (weighted in the score, or beyond the anomaly review
lane's level) adds its own reason; a score the merchant floor set (``training.ensemble.MerchantFloor``) is
explained first by the merchant's fraud rate, whatever XGBoost's contributions say.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from cluster.features import REASONS
from cluster.schema import DEFAULT_CURRENCY
from cluster.wording import Seen
from training.ensemble import FLOOR_RISK

MAX_FACTORS = 5
MIN_CONTRIBUTION = 0.05  # log-odds; smaller pushes are noise, not reasons
UNUSUAL_AE_SCORE = 0.99  # above the 99th percentile of genuine reconstruction errors

AUTOENCODER_REASON = "Unusual pattern (autoencoder)"
RAISES, LOWERS = "Raises risk: ", "Lowers risk: "


@lru_cache(maxsize=8)
def _groups(feature_names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Reason group -> indices of its features."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(feature_names):
        groups.setdefault(REASONS[name].group, []).append(index)
    return {group: tuple(members) for group, members in groups.items()}


@lru_cache(maxsize=8)
def _group_sums(feature_names: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    """The reason groups, and the 0/1 matrix (features x groups) that sums a row's contributions by group: a
    batch's group totals in one product rather than a sum per group and row."""
    groups = _groups(feature_names)
    matrix = np.zeros((len(feature_names), len(groups)))
    for column, members in enumerate(groups.values()):
        matrix[list(members), column] = 1.0
    return tuple(groups), matrix


def explain_row(
    feature_names: Sequence[str],
    values: np.ndarray,
    contributions: np.ndarray,
    ae_score: float,
    ae_weight: float,
    limit: int = MAX_FACTORS,
    *,
    anomaly_review: float | None = None,
    currency: str = DEFAULT_CURRENCY,
    both_ways: bool = False,
    group_totals: np.ndarray | None = None,
    merchant_floor: bool = False,
) -> list[str]:
    """Sentences for one row: ``values`` and ``contributions`` align with ``feature_names`` (bias excluded);
    ``group_totals`` are the row's contributions summed by reason group, when the batch has them already;
    ``anomaly_review``: the policy's anomaly lane level, from which the autoencoder's reason is given too;
    ``merchant_floor``: the merchant floor set the row's score."""
    names = tuple(feature_names)
    pushes = np.asarray(contributions[: len(names)], dtype=np.float64)
    group_names, matrix = _group_sums(names)
    totals = dict(zip(group_names, (pushes @ matrix if group_totals is None else group_totals).tolist()))
    ranked = sorted(
        (group for group, total in totals.items() if (abs(total) if both_ways else total) >= MIN_CONTRIBUTION),
        key=lambda g: -abs(totals[g]),
    )
    row = dict(zip(names, values.tolist()))
    if merchant_floor and FLOOR_RISK in row:  # the floor's reason replaces its group's own, first
        floor_group = REASONS[FLOOR_RISK].group
        floor_reason = REASONS[FLOOR_RISK].template(Seen(row[FLOOR_RISK], row, currency, True))
        ranked = [group for group in ranked if group != floor_group]
    else:
        floor_reason = None
    sentences: list[str] = []
    for group in ranked:
        raises = totals[group] > 0
        members = sorted(
            (i for i in _groups(names)[group] if (pushes[i] > 0) == raises),
            key=lambda i: -pushes[i] if raises else pushes[i],
        )
        sentence = next(
            (
                text
                for i in members
                if (text := REASONS[names[i]].template(Seen(row[names[i]], row, currency, raises))) is not None
            ),
            None,
        )
        if sentence is not None:
            sentences.append(((RAISES if raises else LOWERS) if both_ways else "") + sentence)
    unusual = ae_weight > 0 and ae_score >= UNUSUAL_AE_SCORE
    if unusual or (anomaly_review is not None and ae_score >= anomaly_review):  # after the strongest XGBoost reason
        sentences.insert(min(1, len(sentences)), (RAISES if both_ways else "") + AUTOENCODER_REASON)
    if floor_reason is not None:
        sentences.insert(0, (RAISES if both_ways else "") + floor_reason)
    return sentences[:limit]


def explain(
    feature_names: Sequence[str],
    x: np.ndarray,
    contributions: np.ndarray,
    ae_scores: np.ndarray,
    ae_weight: float,
    limit: int = MAX_FACTORS,
    *,
    anomaly_review: float | None = None,
    currencies: Sequence[str] | None = None,
    both_ways: Sequence[bool] | None = None,
    merchant_floor: Sequence[bool] | None = None,
) -> list[list[str]]:
    """Reasons for every row of a batch (``contributions`` may carry the bias as its last column); ``currencies``,
    ``both_ways`` and ``merchant_floor`` per row (default: USD, fraud-ward reasons only, no floor);
    ``anomaly_review`` as for ``explain_row``."""
    names = tuple(feature_names)
    pushes = np.asarray(contributions[:, : len(names)], dtype=np.float64)
    totals = pushes @ _group_sums(names)[1]
    return [
        explain_row(
            names,
            x[row],
            pushes[row],
            float(ae_scores[row]),
            ae_weight,
            limit,
            anomaly_review=anomaly_review,
            currency=currencies[row] if currencies is not None else DEFAULT_CURRENCY,
            both_ways=bool(both_ways[row]) if both_ways is not None else False,
            group_totals=totals[row],
            merchant_floor=bool(merchant_floor[row]) if merchant_floor is not None else False,
        )
        for row in range(len(x))
    ]
