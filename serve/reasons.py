"""Reason codes: XGBoost per-feature contributions (``pred_contribs``) turned into sentences an analyst reads.

Features that say the same thing (the amount in four guises, the velocity windows) form one reason whose weight is
their summed contribution; its sentence comes from its strongest member. Only reasons that push towards fraud are
given, strongest first, at most ``MAX_FACTORS``. An autoencoder that finds the row unusual adds its own reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

MAX_FACTORS = 5
MIN_CONTRIBUTION = 0.05     # log-odds; smaller pushes are noise, not reasons
UNUSUAL_AE_SCORE = 0.99     # above the 99th percentile of genuine reconstruction errors

Template = Callable[[float], str]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


WINDOW_WORDS = {"10m": "10 minutes", "1h": "hour", "24h": "24 hours", "1d": "day", "7d": "7 days", "30d": "30 days"}


# feature -> (reason group, sentence from the feature's value)
TEMPLATES: dict[str, tuple[str, Template]] = {
    "amount_to_user_mean_30d": ("amount", lambda v: f"Amount {v:.1f}× this user's 30-day average"),
    "log_amount_zscore_30d": ("amount", lambda v: f"Amount {v:.1f} standard deviations above this user's usual"),
    "amount": ("amount", lambda v: f"High amount ({v:,.2f})"),
    "log_amount": ("amount", lambda v: f"High amount ({math.expm1(v):,.2f})"),
    "amount_to_merchant_typical": ("merchant_amount", lambda v: f"Amount {v:.1f}× this merchant's typical ticket"),
    "user_no_history_30d": ("history", lambda v: "No purchases by this card in the last 30 days"),
    "log_seconds_since_prev": ("velocity", lambda v: f"Only {_duration(math.expm1(v))} since this card's previous purchase"),
    "user_tiny_count_10m": ("testing", lambda v: f"{v:.0f} tiny test amounts in the last 10 minutes"),
    "user_distinct_merchants_1h": ("merchants", lambda v: f"{v:.0f} different merchants in the last hour"),
    "user_distinct_merchants_24h": ("merchants", lambda v: f"{v:.0f} different merchants in the last 24 hours"),
    "first_time_at_merchant": ("merchant_new", lambda v: "First purchase at this merchant"),
    "new_device": ("device", lambda v: "First purchase on a new device"),
    "device_missing": ("device", lambda v: "No device information"),
    "distance_from_home_km": ("geo", lambda v: f"{v:,.0f} km from the card holder's home"),
    "distance_from_prev_km": ("travel", lambda v: f"{v:,.0f} km from this card's previous purchase"),
    "speed_from_prev_kmh": ("travel", lambda v: f"Implied travel at {v:,.0f} km/h since the previous purchase"),
    "country_changed": ("country", lambda v: "Country differs from this card's previous purchase"),
    "country_differs_from_home": ("country", lambda v: "Purchase outside the card holder's home country"),
    "channel_online": ("channel", lambda v: "Online (card-not-present) purchase"),
    "channel_mobile": ("channel", lambda v: "Mobile purchase"),
    "merchant_fraud_count_7d": ("merchant_risk", lambda v: f"Merchant had {v:.0f} confirmed frauds in the last 7 days"),
    "account_age_days": ("account", lambda v: f"Account opened {v:.0f} days ago"),
    "credit_utilisation_30d": ("credit", lambda v: f"{v:.0%} of the credit limit spent in 30 days"),
    "kyc_level": ("kyc", lambda v: f"Low identity-verification level ({v:.0f})"),
    "is_night": ("time", lambda v: "Night-time purchase (00:00-06:00 UTC)"),
    "hour_of_day": ("time", lambda v: f"Unusual hour ({v:02.0f}:00 UTC)"),
    "is_weekend": ("time", lambda v: "Weekend purchase"),
}
for _w in ("10m", "1h", "24h", "7d", "30d"):
    TEMPLATES[f"user_count_{_w}"] = ("velocity", lambda v, w=_w: f"{v:.0f} purchases by this card in the last {WINDOW_WORDS[w]}")
    TEMPLATES[f"user_sum_{_w}"] = ("spend", lambda v, w=_w: f"{v:,.2f} spent by this card in the last {WINDOW_WORDS[w]}")
for _w in ("1d", "7d", "30d"):
    TEMPLATES[f"merchant_risk_{_w}"] = ("merchant_risk", lambda v, w=_w: f"Merchant fraud rate {v:.1%} over the last {WINDOW_WORDS[w]}")
for _w in ("7d", "30d"):
    TEMPLATES[f"mcc_risk_{_w}"] = ("category_risk", lambda v, w=_w: f"Merchant category fraud rate {v:.1%} over the last {WINDOW_WORDS[w]}")
for _w in ("1h", "24h", "7d"):
    TEMPLATES[f"merchant_count_{_w}"] = ("merchant_volume", lambda v, w=_w: f"Merchant volume: {v:.0f} purchases in the last {WINDOW_WORDS[w]}")

AUTOENCODER_REASON = "Unusual pattern (autoencoder)"


def _generic(name: str) -> tuple[str, Template]:
    label = name.replace("_", " ")
    if name.endswith("_missing"):
        return name, lambda v: f"Missing {label[:-len(' missing')]} information"
    return name, lambda v: f"Unusual {label} ({v:g})"


def explain_row(feature_names: Sequence[str], values: np.ndarray, contributions: np.ndarray, ae_score: float,
                ae_weight: float, limit: int = MAX_FACTORS) -> list[str]:
    """Sentences for one row: ``values`` and ``contributions`` align with ``feature_names`` (bias excluded)."""
    groups: dict[str, list[float | int]] = {}  # group -> [summed contribution, best member index, best contribution]
    for index, contribution in enumerate(contributions[:len(feature_names)]):
        group, _ = TEMPLATES.get(feature_names[index]) or _generic(feature_names[index])
        entry = groups.setdefault(group, [0.0, index, -math.inf])
        entry[0] += float(contribution)
        if contribution > entry[2]:
            entry[1], entry[2] = index, float(contribution)
    ranked = sorted((entry for entry in groups.values() if entry[0] >= MIN_CONTRIBUTION), key=lambda e: -e[0])
    reasons: list[tuple[float, str]] = []
    for total, index, _ in ranked:
        name = feature_names[int(index)]
        _, template = TEMPLATES.get(name) or _generic(name)
        reasons.append((total, template(float(values[int(index)]))))
    sentences = [sentence for _, sentence in reasons]
    if ae_weight > 0 and ae_score >= UNUSUAL_AE_SCORE:
        sentences.insert(min(1, len(sentences)), AUTOENCODER_REASON)  # after the strongest XGBoost reason
    return sentences[:limit]


def explain(feature_names: Sequence[str], x: np.ndarray, contributions: np.ndarray, ae_scores: np.ndarray,
            ae_weight: float, limit: int = MAX_FACTORS) -> list[list[str]]:
    """Reasons for every row of a batch (``contributions`` may carry the bias as its last column)."""
    return [explain_row(feature_names, x[row], contributions[row], float(ae_scores[row]), ae_weight, limit)
            for row in range(len(x))]
