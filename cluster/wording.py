"""Numbers as an analyst reads them, for the reason templates next to the feature definitions
(``cluster.features.REASONS``): amounts in the transaction's currency, counts with their noun, ratios below one as
shares (never "0.0×"), durations and distances in the unit a person would pick, and no float noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cluster.schema import DEFAULT_CURRENCY

CURRENCY_SYMBOLS = {
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "JPY": "¥",
    "INR": "₹",
    "CNY": "CN¥",
    "KRW": "₩",
    "CAD": "CA$",
    "AUD": "A$",
    "BRL": "R$",
    "MXN": "MX$",
}
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
ABOUT_EQUAL = (0.9, 1.1)  # a ratio in [low, high) reads "about" rather than as a multiple or a share


@dataclass(frozen=True)
class Seen:
    """One feature's value as a template reads it: with its row (a sentence may quote another feature, and a value
    can be a stand-in that the row's missing flags reveal), the currency, and which way the model took it."""

    value: float
    row: Mapping[str, float]
    currency: str = DEFAULT_CURRENCY
    raises: bool = True  # the feature pushed towards fraud

    def __getitem__(self, name: str) -> float:
        return self.row[name]

    def money(self, amount: float) -> str:
        return money(amount, self.currency)


Template = Callable[[Seen], str | None]


@dataclass(frozen=True)
class Reason:
    """How a feature reads as a reason: features of one ``group`` say the same thing and give one reason; the
    ``template`` describes the value seen, whichever way it points, or gives None when the value says nothing true
    (a stand-in for a missing input)."""

    group: str
    template: Template


def _trim(text: str) -> str:
    """ "2.50" -> "2.5", "3.0" -> "3": fixed decimals without trailing zeros."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def money(amount: float, currency: str = DEFAULT_CURRENCY) -> str:
    """ "$1.00", "$42.50", "$1,487", "€1,487.35", "¥1,500", "SEK 12.00": cents unless zero-decimal or a whole amount
    of 100 or more."""
    currency = currency or DEFAULT_CURRENCY
    symbol = CURRENCY_SYMBOLS.get(currency)

    def shown(text: str) -> str:
        return f"{symbol}{text}" if symbol else f"{currency} {text}"

    cents = round(amount, 2)
    if 0 < amount < 0.005:
        return "under " + shown("0.01")
    if currency in ZERO_DECIMAL_CURRENCIES or (cents >= 100 and cents == int(cents)):
        return shown(f"{amount:,.0f}")
    return shown(f"{cents:,.2f}")


def number(value: float) -> str:
    """A count or a figure of a few digits: "7", "1,204", "2.5" (one decimal below 10 when it has one)."""
    return _trim(f"{value:.1f}") if abs(value) < 10 and round(value, 1) != round(value) else f"{value:,.0f}"


def count(value: float, noun: str, plural: str | None = None) -> str:
    """ "1 purchase", "7 purchases", "1,204 purchases"."""
    whole = round(value)
    return f"{whole:,} {noun if whole == 1 else plural or noun + 's'}"


def share(fraction: float) -> str:
    """A fraction as a percentage with two significant digits: "35%", "5.2%", "0.48%", "under 0.01%"."""
    percent = fraction * 100
    if percent == 0:
        return "0%"
    if percent < 0.01:
        return "under 0.01%"
    if percent >= 10:
        return f"{percent:.0f}%"
    return _trim(f"{percent:.1f}" if percent >= 1 else f"{percent:.2f}") + "%"


def relative(ratio: float) -> str:
    """How a value compares with a reference, to be followed by it: "8×", "2.5×", "about", "8% of"."""
    if ratio >= ABOUT_EQUAL[1]:
        return f"{number(ratio)}×"
    if ratio >= ABOUT_EQUAL[0]:
        return "about"
    return f"{share(ratio)} of"


def duration(seconds: float) -> str:
    """ "under a second", "45 seconds", "12 minutes", "3.5 hours", "2 days"."""
    if seconds < 1:
        return "under a second"
    for unit, size, limit in (("second", 1, 90), ("minute", 60, 90 * 60), ("hour", 3600, 36 * 3600)):
        if seconds < limit:
            return _unit(seconds / size, unit)
    return _unit(seconds / 86400, "day")


def _unit(value: float, unit: str) -> str:
    text = number(value)
    return f"{text} {unit if text == '1' else unit + 's'}"


def distance(km: float) -> str:
    """ "under 0.1 km", "3.2 km", "1,234 km"."""
    return "under 0.1 km" if km < 0.05 else f"{number(km)} km"
