"""The canonical transaction: the single home of every rule in the contract's table.

The pydantic model validates one transaction (HTTP, Kinesis records); ``validate_frame`` applies the very same
rules, vectorised, to CSV/Parquet tables so a file and an API call accept and reject the same things.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

ID_PATTERN = r"^[A-Za-z0-9_\-.:]{1,64}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
MCC_PATTERN = r"^[0-9]{4}$"
MAX_AMOUNT = 1_000_000.0
CHANNELS = ("card_present", "online", "mobile")
DEFAULT_CURRENCY = "USD"
GENUINE_SCENARIO = "none"

ID_COLUMNS = ("transaction_id", "user_id", "merchant_id")
REQUIRED_COLUMNS = (*ID_COLUMNS, "amount", "timestamp")
OPTIONAL_STRING_COLUMNS = ("currency", "device_id", "channel", "mcc", "country")
OPTIONAL_COLUMNS = (*OPTIONAL_STRING_COLUMNS, "lat", "lon")
LABEL_COLUMN = "is_fraud"
SCENARIO_COLUMN = "fraud_scenario"
CANONICAL_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
LABEL_EVENT_COLUMNS = ("transaction_id", LABEL_COLUMN, "known_at")  # a confirmed label: which, what, known since
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # how every file, record and response writes a time (UTC)


def parse_timestamp(value: Any) -> datetime:
    """ISO-8601 string to an aware UTC datetime; a string without offset means UTC."""
    if not isinstance(value, str):
        raise ValueError("timestamp must be an ISO-8601 string")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError as exc:
        raise ValueError(f"timestamp is not ISO-8601: {_shown(value)}") from exc
    try:
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00 or 9999-12-31T23:00-01:00: no UTC datetime holds it
        raise ValueError(f"timestamp is out of range in UTC: {_shown(value)}") from None


def _shown(value: str, limit: int = 80) -> str:
    """The value for an error message, cut short: a 1 MB string is not echoed back."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def missing_columns(columns: Any, required: tuple[str, ...]) -> list[str]:
    """The required columns a table (or a mapping of column arrays) lacks, in the order required."""
    return [column for column in required if column not in columns]


def require_columns(columns: Any, required: tuple[str, ...], what: str) -> None:
    missing = missing_columns(columns, required)
    if missing:
        raise ValueError(f"{what} lack column(s): {', '.join(missing)}")


def label_values(values: Any) -> np.ndarray:
    """Labels as floats: 1.0 fraud, 0.0 genuine (True/False, 0/1 and "0"/"1" alike), NaN for anything else."""
    return pd.to_numeric(pd.Series(values).replace({True: 1, False: 0}), errors="coerce").to_numpy(np.float64)


def _label_to_int(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)
    return value


# The instants no UTC datetime holds (``parse_timestamp``'s "out of range"): 0001-01-01 east of UTC, 9999-12-31 west.
# The document's ``date-time`` format says the rest; the validator also takes other ISO-8601 forms ("2026-01-22").
TIMESTAMP_SCHEMA_PATTERN = r"^(?!\s*0001-01-01T[^Zz]*\+(?!00:00)|\s*9999-12-31T[^Zz]*-(?!00:00))"


def _none_is_default_currency(value: Any) -> Any:
    return DEFAULT_CURRENCY if value is None else value


Identifier = Annotated[str, Field(strict=True, pattern=ID_PATTERN)]
TimestampText = Annotated[str, Field(json_schema_extra={"format": "date-time", "pattern": TIMESTAMP_SCHEMA_PATTERN})]
CurrencyCode = Annotated[str, Field(strict=True, pattern=CURRENCY_PATTERN)]
LABEL_TEXT_PATTERN = r"^\s*[01]\s*$"
# What ``is_fraud`` takes before ``_label_to_int``: the OpenAPI document shows this, not only the 0/1 it becomes.
LabelInput = Literal[0, 1] | bool | Annotated[str, Field(pattern=LABEL_TEXT_PATTERN)] | None
COORDINATE_PAIR = ("lat", "lon")


def _coordinates_in_pairs_schema(schema: dict[str, Any]) -> None:
    """JSON Schema for "both or neither": a number in one requires a number in the other (null counts as absent,
    as in the validator), both ways."""
    number = {"type": "number"}
    schema["allOf"] = [
        {
            "if": {"required": [given], "properties": {given: number}},
            "then": {"required": [needed], "properties": {needed: number}},
        }
        for given, needed in (COORDINATE_PAIR, COORDINATE_PAIR[::-1])
    ]


class Transaction(BaseModel):
    """One card transaction. Unknown fields are ignored; optional fields may be absent or null."""

    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra=_coordinates_in_pairs_schema)

    transaction_id: Identifier
    user_id: Identifier
    merchant_id: Identifier
    amount: Annotated[float, Field(strict=True, gt=0, le=MAX_AMOUNT, allow_inf_nan=False)]
    timestamp: Annotated[datetime, BeforeValidator(parse_timestamp, json_schema_input_type=TimestampText)]
    currency: Annotated[
        CurrencyCode, BeforeValidator(_none_is_default_currency, json_schema_input_type=CurrencyCode | None)
    ] = DEFAULT_CURRENCY
    device_id: Annotated[str | None, Field(strict=True, pattern=ID_PATTERN)] = None
    channel: Literal["card_present", "online", "mobile"] | None = None
    mcc: Annotated[str | None, Field(strict=True, pattern=MCC_PATTERN)] = None
    country: Annotated[str | None, Field(strict=True, pattern=COUNTRY_PATTERN)] = None
    lat: Annotated[float | None, Field(strict=True, ge=-90, le=90, allow_inf_nan=False)] = None
    lon: Annotated[float | None, Field(strict=True, ge=-180, le=180, allow_inf_nan=False)] = None
    is_fraud: Annotated[Literal[0, 1] | None, BeforeValidator(_label_to_int, json_schema_input_type=LabelInput)] = None
    fraud_scenario: Annotated[str | None, Field(strict=True, max_length=64)] = None

    @model_validator(mode="after")
    def _coordinates_come_in_pairs(self) -> "Transaction":
        if (self.lat is None) != (self.lon is None):
            missing = "lon" if self.lon is None else "lat"
            raise ValueError(f"lat and lon must be given together: {missing} is missing")
        return self

    def to_record(self) -> dict[str, Any]:
        """JSON-ready dict with the canonical ISO-8601 UTC timestamp."""
        record = self.model_dump(exclude_none=True)
        record["timestamp"] = format_timestamp(self.timestamp)
        return record


def scoring_record(transaction: Transaction) -> dict[str, Any]:
    """What scoring uses of a transaction: labels and scenario names never reach the features."""
    return {column: getattr(transaction, column) for column in CANONICAL_COLUMNS}


def canonical_columns(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Transactions the pydantic model has validated (``scoring_record``) as the column arrays the feature code
    takes; they are not validated a second time (nor put in a DataFrame: pandas per call costs more than the
    features of a micro-batch)."""
    columns = {name: np.array([r[name] for r in records], dtype=object) for name in CANONICAL_COLUMNS}
    columns["amount"] = columns["amount"].astype(np.float64)
    for name in ("lat", "lon"):
        columns[name] = np.array([np.nan if v is None else v for v in columns[name]], dtype=np.float64)
    return columns


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


_UNION_MEMBER_TAGS = frozenset({"bool", "int", "float", "str", "none", "dict", "list"})


def _location(loc: tuple[Any, ...]) -> str:
    """A location as a dotted field path (``rules.1.expression``), without the tags pydantic adds for a union's
    members (``is_fraud.bool``, ``amount.function-after[...]``)."""
    parts = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _UNION_MEMBER_TAGS):
            break
        parts.append(str(part))
    return ".".join(parts)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{field, message}]``; a cross-field error names the field it is about."""
    return [
        {"field": _location(error["loc"]) or _field_named_in(error["msg"]), "message": error["msg"]}
        for error in exc.errors(include_url=False)
    ]


def item_field_errors(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    """``field_errors`` of a list validated in one call, each named ``{prefix}{index}.{field}``."""
    errors = []
    for error in exc.errors(include_url=False):
        index, *path = error["loc"]
        field = str(path[0]) if path else _field_named_in(error["msg"])
        errors.append(
            {"field": f"{prefix}{index}" + ("" if field == "__root__" else f".{field}"), "message": error["msg"]}
        )
    return errors


def _field_named_in(message: str) -> str:
    match = re.search(r"(lat|lon) is missing", message)
    return match.group(1) if match else "__root__"


class FrameValidationError(ValueError):
    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        shown = "; ".join(f"row {e['row']}: {e['field']}: {e['message']}" for e in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        super().__init__(f"{len(errors)} invalid value(s): {shown}{more}")


def validate_frame(frame: pd.DataFrame, *, labelled: bool = False) -> pd.DataFrame:
    """Apply the transaction rules to a whole table; return it in canonical dtypes, sorted columns first.

    Raises ``FrameValidationError`` naming each offending row and field. Extra columns are dropped.
    """
    errors: list[dict[str, Any]] = []

    def reject(mask: np.ndarray, field: str, message: str) -> None:
        for row in np.flatnonzero(mask)[:100]:
            errors.append({"row": int(row), "field": field, "message": message})

    missing = missing_columns(frame.columns, REQUIRED_COLUMNS + ((LABEL_COLUMN,) if labelled else ()))
    if missing:
        raise FrameValidationError([{"row": -1, "field": c, "message": "column is missing"} for c in missing])

    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for column in ID_COLUMNS:
        values = frame[column].astype("string")
        valid = values.str.fullmatch(ID_PATTERN).fillna(False).to_numpy(dtype=bool)
        reject(~valid, column, f"must be 1-64 characters of A-Za-z0-9_-.: ({ID_PATTERN})")
        out[column] = values.to_numpy(dtype=object, na_value=None)

    amount = pd.to_numeric(frame["amount"], errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        reject(
            ~(np.isfinite(amount) & (amount > 0) & (amount <= MAX_AMOUNT)),
            "amount",
            f"must be a finite number > 0 and <= {MAX_AMOUNT:,.0f}",
        )
    out["amount"] = amount

    timestamps = frame["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(timestamps):
        parsed = timestamps.dt.tz_localize("UTC") if timestamps.dt.tz is None else timestamps.dt.tz_convert("UTC")
    else:
        parsed = pd.to_datetime(timestamps, utc=True, errors="coerce", format="ISO8601")
    reject(parsed.isna().to_numpy(), "timestamp", "must be an ISO-8601 timestamp")
    out["timestamp"] = parsed.dt.tz_convert("UTC").astype("datetime64[ns, UTC]").reset_index(drop=True)

    patterns = {"currency": CURRENCY_PATTERN, "device_id": ID_PATTERN, "mcc": MCC_PATTERN, "country": COUNTRY_PATTERN}
    for column in OPTIONAL_STRING_COLUMNS:
        if column not in frame.columns:
            out[column] = DEFAULT_CURRENCY if column == "currency" else None
            continue
        values = frame[column].astype("string")
        if column == "mcc":
            values = values.str.replace(r"\.0$", "", regex=True).str.zfill(4)
        present = values.notna().to_numpy()
        if column == "channel":
            ok = values.isin(CHANNELS).fillna(False).to_numpy(dtype=bool)
            reject(present & ~ok, column, f"must be one of {', '.join(CHANNELS)}")
        else:
            ok = values.str.fullmatch(patterns[column]).fillna(False).to_numpy(dtype=bool)
            reject(present & ~ok, column, f"must match {patterns[column]}")
        column_values = values.to_numpy(dtype=object, na_value=None)
        if column == "currency":
            column_values = np.where(present, column_values, DEFAULT_CURRENCY)
        out[column] = column_values

    coordinates = {}
    for column, limit in (("lat", 90.0), ("lon", 180.0)):
        raw = frame[column] if column in frame.columns else pd.Series(np.nan, index=frame.index)
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        reject(raw.notna().to_numpy() & ~(np.abs(values) <= limit), column, f"must be a number within ±{limit:g}")
        coordinates[column] = values
    reject(
        np.isnan(coordinates["lat"]) != np.isnan(coordinates["lon"]), "lat/lon", "lat and lon must be given together"
    )
    out["lat"], out["lon"] = coordinates["lat"], coordinates["lon"]

    if LABEL_COLUMN in frame.columns:
        labels = label_values(frame[LABEL_COLUMN].to_numpy(dtype=object))
        reject(~np.isin(labels, (0.0, 1.0)), LABEL_COLUMN, "must be 0 or 1")
        out[LABEL_COLUMN] = np.nan_to_num(labels).astype(np.int8)
    if SCENARIO_COLUMN in frame.columns:
        out[SCENARIO_COLUMN] = frame[SCENARIO_COLUMN].astype("string").fillna(GENUINE_SCENARIO).to_numpy(dtype=object)

    if errors:
        raise FrameValidationError(errors)
    return out
