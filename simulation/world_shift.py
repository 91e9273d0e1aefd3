"""Shifts of the simulated world, so drift monitoring can be shown on traffic whose change is known: amounts
inflated, traffic moving to merchants never seen, a new country, a field going missing.

A shift touches a stable ``share`` of the rows (chosen by a hash of each transaction_id, so a replay shifts the same
rows) and never their labels: the fraud is what it was, the world around it moved. The same shift applies to the
live producers (``fraudctl up --shift``, the dashboard's Simulation tab) and to a written history
(``fraudctl simulate --shift``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cluster.schema import COUNTRY_PATTERN, MAX_AMOUNT, OPTIONAL_COLUMNS

MissingColumn = Literal[OPTIONAL_COLUMNS]  # type: ignore[valid-type]
NEW_MERCHANT_PREFIX = "shift-m"


class WorldShift(BaseModel):
    """What changes, on which share of the traffic. ``WorldShift()`` changes nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: Annotated[float, Field(gt=0, le=1)] = 0.5
    amount_factor: Annotated[float, Field(gt=0, le=100)] = 1.0
    new_merchants: Annotated[int, Field(ge=0, le=100_000)] = 0  # shifted rows go to this many merchants never seen
    country: Annotated[str | None, Field(pattern=COUNTRY_PATTERN)] = None
    missing: tuple[MissingColumn, ...] = ()

    @field_validator("missing", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return tuple(part for part in value.split("+") if part) if isinstance(value, str) else value

    @property
    def changes_nothing(self) -> bool:
        return self.amount_factor == 1.0 and not self.new_merchants and self.country is None and not self.missing

    def describe(self) -> str:
        parts = [
            f"amount ×{self.amount_factor:g}" if self.amount_factor != 1.0 else "",
            f"{self.new_merchants} new merchants" if self.new_merchants else "",
            f"country {self.country}" if self.country else "",
            f"{'+'.join(self.missing)} missing" if self.missing else "",
        ]
        changes = ", ".join(part for part in parts if part)
        return f"{changes} on {self.share:.0%} of the traffic" if changes else "no shift"

    def shifted_rows(self, transaction_ids: pd.Series) -> np.ndarray:
        """The rows this shift touches: a stable hash of each id below ``share``."""
        hashes = pd.util.hash_pandas_object(transaction_ids.astype(str), index=False).to_numpy()
        return (hashes / np.float64(2**64)) < self.share

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the shift applied to its share of rows (a copy; labels and ids untouched)."""
        if self.changes_nothing or not len(frame):
            return frame
        shifted = frame.copy()
        rows = self.shifted_rows(shifted["transaction_id"])
        if self.amount_factor != 1.0:
            amounts = shifted.loc[rows, "amount"].astype(float) * self.amount_factor
            shifted.loc[rows, "amount"] = amounts.clip(upper=MAX_AMOUNT).round(2)
        if self.new_merchants:
            hashes = pd.util.hash_pandas_object(shifted.loc[rows, "user_id"].astype(str), index=False).to_numpy()
            shifted.loc[rows, "merchant_id"] = [f"{NEW_MERCHANT_PREFIX}{h % self.new_merchants:05d}" for h in hashes]
        if self.country is not None and "country" in shifted:
            shifted.loc[rows, "country"] = self.country
        for column in self.missing:
            if column in shifted:
                shifted.loc[rows, column] = None
        return shifted


def parse_shift(text: str) -> WorldShift:
    """``amount_factor=3,share=0.5`` or ``missing=device_id+lat,country=BR`` (the CLI's form) to a shift; a bad
    key or value raises pydantic's ``ValidationError`` naming it, an entry without ``=`` a ``ValueError``."""
    fields: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",") if part.strip()):
        key, separator, value = entry.partition("=")
        if not separator:
            raise ValueError(f"shift: {entry!r} is not key=value (keys: {', '.join(WorldShift.model_fields)})")
        fields[key.strip()] = value.strip()
    return WorldShift.model_validate(fields)
