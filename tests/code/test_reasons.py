"""Reason sentences: every feature has one, and each sentence is true for the value it quotes (rendered from float32
values at low, typical and extreme values, as scoring sees them)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from cluster.features import FEATURE_NAMES, NEUTRAL_ACCOUNT_AGE_DAYS, REASONS
from cluster.wording import Seen, money
from serve.reasons import LOWERS, RAISES, explain_row

# The kind of number each feature's sentence quotes, and the values it is rendered at.
KINDS = {
    "money": ("amount", *(f"user_sum_{w}" for w in ("10m", "1h", "24h", "7d", "30d"))),
    "log_money": ("log_amount",),
    "ratio": ("amount_to_user_mean_30d", "amount_to_merchant_typical"),
    "zscore": ("log_amount_zscore_30d",),
    "count": (
        *(f"user_count_{w}" for w in ("10m", "1h", "24h", "7d", "30d")),
        "user_distinct_merchants_1h",
        "user_distinct_merchants_24h",
        "user_tiny_count_10m",
        "merchant_count_1h",
        "merchant_count_24h",
        "merchant_count_7d",
        "merchant_fraud_count_7d",
        "merchant_delayed_count_1d",
        "merchant_delayed_count_7d",
        "merchant_delayed_count_30d",
        "kyc_level",
        "card_fraud_known_30d",
    ),
    "share": (
        "merchant_risk_1d",
        "merchant_risk_7d",
        "merchant_risk_30d",
        "merchant_delayed_risk_1d",
        "merchant_delayed_risk_7d",
        "merchant_delayed_risk_30d",
        "mcc_risk_7d",
        "mcc_risk_30d",
        "credit_utilisation_30d",
    ),
    "km": ("distance_from_home_km", "distance_from_prev_km"),
    "speed": ("speed_from_prev_kmh",),
    "seconds": ("log_seconds_since_prev",),
    "hours": ("log_hours_since_card_fraud",),
    "hour": ("hour_of_day",),
    "days": ("account_age_days",),
}
VALUES = {
    "money": (1.0, 42.5, 1487.0, 987654.321),
    "log_money": tuple(np.log1p([1.0, 42.5, 1487.0, 987654.321])),
    "ratio": (0.003, 0.08, 1.02, 8.0, 250.0),
    "zscore": (-4.2, 0.1, 0.5, 6.35),
    "count": (0, 1, 7, 12000),
    "share": (0.0, 0.0048, 0.052, 1.0),
    "km": (0.0, 3.24, 12000.0),
    "speed": (0.0, 95.5, 20000.0),
    "seconds": tuple(np.log1p([0.4, 45.0, 5400.0, 2e6])),
    "hours": tuple(np.log1p([0.0001, 0.02, 1.0, 30.0, 720.0])),
    "hour": (0, 14, 23),
    "days": (0.2, 12.7, 400.2, 9000.0),
    "flag": (0.0, 1.0),
}
KIND_OF = {name: kind for kind, names in KINDS.items() for name in names}
# A card with history, a known merchant profile and location: no value is a stand-in.
TYPICAL = {name: 0.0 for name in FEATURE_NAMES} | {
    "amount": 42.5,
    "log_amount": math.log1p(42.5),
    "hour_of_day": 14.0,
    "user_count_30d": 12.0,
    "merchant_delayed_count_1d": 40.0,
    "merchant_delayed_count_7d": 300.0,
    "merchant_delayed_count_30d": 1200.0,
    "account_age_days": 400.0,
    "kyc_level": 2.0,
    "amount_to_user_mean_30d": 1.0,
    "amount_to_merchant_typical": 1.3,
    "card_fraud_known_30d": 1.0,
}
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
NUMBER = r"(\d[\d,]*(?:\.\d+)?)"


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _render(
    name: str, value: float, row: dict[str, float] | None = None, currency: str = "USD", raises: bool = True
) -> str | None:
    row = {k: float(np.float32(v)) for k, v in {**TYPICAL, **(row or {}), name: value}.items()}
    return REASONS[name].template(Seen(row[name], row, currency, raises))


def _close(quoted: float, expected: float, rel: float = 0.05, abs_: float = 0.0) -> bool:
    return math.isclose(quoted, expected, rel_tol=rel, abs_tol=abs_)


def _check_quotes(kind: str, value: float, sentence: str) -> None:
    """The number the sentence quotes is the value, in the unit it names, and the direction word matches."""
    numbers = [_number(n) for n in re.findall(NUMBER, sentence)]
    if kind in ("money", "log_money"):
        amount = math.expm1(value) if kind == "log_money" else value
        assert _close(numbers[0], amount, 1e-6, 0.006), sentence
    elif kind == "ratio":
        if value >= 1.1:
            assert re.search(NUMBER + "×", sentence) and _close(_number(re.search(NUMBER + "×", sentence)[1]), value)
        elif value >= 0.9:
            assert " is about this " in sentence and "×" not in sentence
        else:
            assert "×" not in sentence and _close(_number(re.search(NUMBER + "% of", sentence)[1]), value * 100)
    elif kind == "zscore":
        if abs(value) < 0.5:
            assert "close to" in sentence and "above" not in sentence and "below" not in sentence
        else:
            assert ("above" if value > 0 else "below") in sentence and _close(numbers[-1], abs(value), 0, 0.05)
    elif kind == "count":
        if name_is_inclusive_count(sentence) and value < 1.5:
            assert sentence.startswith("No other"), sentence
        else:
            assert (value < 0.5 and sentence.startswith("No ")) or numbers[0] == round(value), sentence
    elif kind == "share":
        assert _close(_number(re.search(NUMBER + "%", sentence)[1]), value * 100, 0.05), sentence
    elif kind in ("km", "speed"):
        quoted = re.search(NUMBER + " km", sentence)
        assert (value < 0.05 and "under 0.1 km" in sentence) or _close(_number(quoted[1]), value, 0.05), sentence
    elif kind == "seconds":
        seconds = math.expm1(value)
        quoted = re.search(NUMBER + r" (second|minute|hour|day)s?\b", sentence)
        assert (seconds < 1 and "under a second" in sentence) or _close(
            _number(quoted[1]) * UNIT_SECONDS[quoted[2]], seconds, 0.05
        ), sentence
        assert ("only" in sentence) == (seconds < 3600), sentence
    elif kind == "hours":
        seconds = math.expm1(value) * 3600
        quoted = re.search(NUMBER + r" (second|minute|hour|day)s?\b", sentence)
        assert (seconds < 1 and "under a second" in sentence) or _close(
            _number(quoted[1]) * UNIT_SECONDS[quoted[2]], seconds, 0.05
        ), sentence
    elif kind == "hour":
        assert f"between {int(value):02d}:00" in sentence
    elif kind == "days":
        quoted = re.search(NUMBER + r" (day|month|year)s?\b", sentence)
        days = {"day": 1, "month": 30.44, "year": 365.25}
        assert (value < 1 and "less than a day" in sentence) or (
            0 <= value - _number(quoted[1]) * days[quoted[2]] < days[quoted[2]] * 1.05
        ), sentence


def name_is_inclusive_count(sentence: str) -> bool:
    return "this one included" in sentence or sentence.startswith("No other")


def _cases() -> list[tuple[str, float]]:
    return [(name, value) for name in FEATURE_NAMES for value in VALUES[KIND_OF.get(name, "flag")]]


def test_every_feature_has_a_reason() -> None:
    assert set(FEATURE_NAMES) <= set(REASONS), f"features without a reason: {set(FEATURE_NAMES) - set(REASONS)}"
    assert set(REASONS) <= set(FEATURE_NAMES), f"reasons without a feature: {set(REASONS) - set(FEATURE_NAMES)}"


@pytest.mark.parametrize("raises", [True, False], ids=["towards fraud", "against fraud"])
@pytest.mark.parametrize("name,value", _cases(), ids=[f"{n}={v:.3g}" for n, v in _cases()])
def test_every_sentence_is_true_for_the_value_it_quotes(name: str, value: float, raises: bool) -> None:
    sentence = _render(name, value, raises=raises)
    if sentence is None:
        return
    assert not sentence[0].islower() and "  " not in sentence and not sentence.endswith(".")
    assert not re.search(r"\bnan\b|\binf\b|0\.0×|\de[+-]\d|-0\b|\d\.\d{3,}", sentence, re.IGNORECASE), sentence
    assert not re.search(
        r"(?<![\d.,])1 [a-z ]*?(purchases|merchants|frauds|amounts|days|months|seconds|minutes|"
        r"hours)\b",
        sentence,
    ), sentence
    for multiple in re.findall(NUMBER + "×", sentence):
        assert _number(multiple) >= 1.1, sentence
    if name in KIND_OF:
        _check_quotes(KIND_OF[name], float(np.float32(value)), sentence)


@pytest.mark.parametrize(
    "name,row",
    [
        ("amount_to_user_mean_30d", {"user_no_history_30d": 1.0}),
        ("log_amount_zscore_30d", {"user_no_history_30d": 1.0}),
        ("log_seconds_since_prev", {"user_no_history_30d": 1.0}),
        ("amount_to_merchant_typical", {"merchant_profile_missing": 1.0}),
        ("amount_to_merchant_typical", {"amount_to_merchant_typical": 1.0}),
        ("distance_from_home_km", {"home_distance_missing": 1.0}),
        ("distance_from_prev_km", {"prev_location_missing": 1.0}),
        ("speed_from_prev_kmh", {"prev_location_missing": 1.0}),
        ("mcc_risk_7d", {"mcc_missing": 1.0}),
        ("merchant_delayed_risk_30d", {"merchant_delayed_count_30d": 0.0}),
        ("credit_utilisation_30d", {"credit_utilisation_30d": 0.0}),
        ("account_age_days", {"account_age_days": NEUTRAL_ACCOUNT_AGE_DAYS}),
        ("new_device", {"new_device": 0.0, "device_missing": 1.0}),
        ("log_hours_since_card_fraud", {"card_fraud_known_30d": 0.0}),
    ],
)
def test_a_stand_in_for_a_missing_input_gives_no_sentence(name: str, row: dict[str, float]) -> None:
    assert _render(name, row.get(name, TYPICAL[name]), row) is None


@pytest.mark.parametrize(
    "name,value,row,currency,sentence",
    [
        ("amount", 1.0, {}, "USD", "Tiny amount $1.00 — a card-testing probe pattern"),
        ("log_amount", math.log1p(1.0), {}, "USD", "Tiny amount $1.00 — a card-testing probe pattern"),
        ("amount", 1487.0, {}, "EUR", "Amount €1,487"),
        ("amount", 1487.35, {}, "GBP", "Amount £1,487.35"),
        ("amount", 15000.0, {}, "JPY", "Amount ¥15,000"),
        ("amount", 42.5, {}, "SEK", "Amount SEK 42.50"),
        ("amount_to_user_mean_30d", 8.0, {"amount": 1487.0}, "USD", "Amount $1,487 is 8× this card's 30-day average"),
        ("amount_to_user_mean_30d", 2.54, {"amount": 108.0}, "USD", "Amount $108 is 2.5× this card's 30-day average"),
        (
            "amount_to_merchant_typical",
            0.02,
            {"amount": 1.0},
            "USD",
            "Amount $1.00 is 2% of this merchant's typical ticket",
        ),
        (
            "amount_to_merchant_typical",
            0.0004,
            {"amount": 0.5},
            "USD",
            "Amount $0.50 is 0.04% of this merchant's typical ticket",
        ),
        (
            "log_amount_zscore_30d",
            -3.14,
            {"amount": 2.0},
            "USD",
            "Amount $2.00 is 3.1 standard deviations below this card's usual (log scale)",
        ),
        ("user_count_10m", 7.0, {}, "USD", "7 purchases by this card in the last 10 minutes, this one included"),
        ("user_count_1h", 1.0, {}, "USD", "No other purchase by this card in the last hour"),
        (
            "user_tiny_count_10m",
            3.0,
            {"amount": 1.0},
            "USD",
            "3 tiny amounts (under $2.00) by this card in the last 10 minutes, this one included",
        ),
        (
            "user_tiny_count_10m",
            1.0,
            {"amount": 1.0},
            "USD",
            "No other tiny amount (under $2.00) by this card in the last 10 minutes",
        ),
        ("user_tiny_count_10m", 1.0, {}, "USD", "1 tiny amount (under $2.00) by this card in the last 10 minutes"),
        ("merchant_delayed_risk_30d", 0.012, {}, "USD", "Merchant fraud rate 1.2% over a fully labelled 30-day window"),
        (
            "log_seconds_since_prev",
            math.log1p(45.0),
            {},
            "USD",
            "Previous purchase by this card only 45 seconds earlier",
        ),
        ("log_seconds_since_prev", math.log1p(5 * 86400.0), {}, "USD", "Previous purchase by this card 5 days earlier"),
        ("merchant_risk_7d", 0.0048, {}, "USD", "Merchant fraud rate 0.48% over the last 7 days"),
        ("merchant_fraud_count_7d", 1.0, {}, "USD", "Merchant had 1 confirmed fraud in the last 7 days"),
        (
            "speed_from_prev_kmh",
            20000.0,
            {},
            "USD",
            "Implied speed of at least 20,000 km/h since this card's previous purchase",
        ),
        ("speed_from_prev_kmh", 950.4, {}, "USD", "Implied speed of 950 km/h since this card's previous purchase"),
        ("credit_utilisation_30d", 0.873, {}, "USD", "87% of the credit limit spent in the last 30 days"),
        ("account_age_days", 12.7, {}, "USD", "Account opened 12 days ago"),
        ("first_time_at_merchant", 0.0, {}, "USD", "This card bought at this merchant in the last 30 days"),
        ("card_fraud_known_30d", 2.0, {}, "USD", "2 confirmed frauds on this card in the last 30 days"),
        ("card_fraud_known_30d", 0.0, {}, "USD", "No confirmed fraud on this card in the last 30 days"),
        (
            "log_hours_since_card_fraud",
            math.log1p(3.0),
            {},
            "USD",
            "Latest confirmed fraud on this card became known 3 hours ago",
        ),
    ],
)
def test_sentences_read_well(name: str, value: float, row: dict[str, float], currency: str, sentence: str) -> None:
    assert _render(name, value, row, currency) == sentence


def test_a_tiny_amount_is_a_probe_only_when_it_raised_the_risk() -> None:
    assert _render("amount", 1.0, raises=False) == "Amount $1.00"


def test_money_is_formatted_for_people() -> None:
    assert [money(v) for v in (1.0, 42.5, 100.0, 1487.004, 0.001)] == [
        "$1.00",
        "$42.50",
        "$100",
        "$1,487",
        "under $0.01",
    ]
    assert money(12.5, "CHF") == "CHF 12.50" and money(12.5, "") == "$12.50"


def _row(**values: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    names = list(FEATURE_NAMES)
    x = np.array([TYPICAL[n] for n in names], np.float32)
    contributions = np.zeros(len(names) + 1, np.float32)
    for name, (value, contribution) in values.items():
        x[names.index(name)], contributions[names.index(name)] = value, contribution
    return x, contributions


def test_a_group_speaks_through_its_strongest_member_with_something_true_to_say() -> None:
    x, contributions = _row(
        user_no_history_30d=(1.0, 0.2), amount_to_user_mean_30d=(1.0, 0.9), amount=(1.0, 0.3)
    )  # no history: the ratio is a stand-in, the amount speaks
    assert (
        explain_row(FEATURE_NAMES, x, contributions, 0.0, 0.0)[0] == "Tiny amount $1.00 — a card-testing probe pattern"
    )


def test_both_ways_labels_each_reason_with_its_direction() -> None:
    x, contributions = _row(
        first_time_at_merchant=(0.0, -1.2),
        amount=(1487.0, 0.6),
        amount_to_user_mean_30d=(1.0, -0.2),
        is_weekend=(1.0, 0.01),
        channel_online=(1.0, 0.3),
    )
    assert explain_row(FEATURE_NAMES, x, contributions, 0.0, 0.0, currency="EUR") == [
        "Amount €1,487",
        "Online (card-not-present) purchase",
    ]
    assert explain_row(FEATURE_NAMES, x, contributions, 0.0, 0.0, currency="EUR", both_ways=True) == [
        f"{LOWERS}This card bought at this merchant in the last 30 days",
        f"{RAISES}Amount €1,487",  # the amount group sums to +0.4; its ratio member pushed the other way
        f"{RAISES}Online (card-not-present) purchase",
    ]
