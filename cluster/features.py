"""The feature definitions: the single home of every feature, used by the stream and by training alike.

One vectorised core serves both paths, which is how online/offline parity is guaranteed:

- ``prepare_rows`` turns canonical transactions into numeric rows (stable 64-bit key hashes, epoch milliseconds);
- ``user_pass_values`` / ``event_pass`` compute the keyed window features for a batch of new rows given the retained
  history of their keys (history first, then the batch; sorted by key then time, ties keep arrival order);
- ``assemble`` turns pass outputs, row values and profiles into ``FEATURE_NAMES`` (float32, never NaN).

Offline the whole table is one batch with empty history; online each micro-batch brings its keys' history from
the state actors. Every lookback is bounded by ``RETENTION_MS`` (30 days; merchants: plus the label delay) and by
the last ``*_HISTORY_CAP`` rows of the key, so an online state that keeps exactly that much sees the same numbers as
the offline builder.

Merchant risk only uses label events whose ``known_at`` is strictly before the transaction's time: labels arrive
late (chargebacks, analyst decisions), and a feature must never see a label the scorer could not have seen. The
delayed merchant risk looks at windows ending one label delay back, where (nearly) every label is already in, so
its fraud share is not diluted by transactions whose verdict is still pending.

Compromise point (how issuers find a skimmer: the common point of purchase of cards that later turned out
stolen): a card's confirmed fraud, once known, casts suspicion on its earlier purchases at every merchant
(``exposure_events``); the merchant features count those purchases as label events of their merchant, in the
same known-time and delayed windows as the merchant's own frauds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, conform
from cluster.schema import LABEL_EVENT_COLUMNS, REQUIRED_COLUMNS, label_values, require_columns
from cluster.wording import Reason, Seen, Template, count, distance, duration, number, relative, share

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
RETENTION_MS = 30 * DAY_MS
# The relative-time origin sits this far before the earliest time, so "t - window" never leaves a key's range.
_ORIGIN_MARGIN_MS = RETENTION_MS + DAY_MS
_TIME_BITS = 40  # 2**40 ms ≈ 34 years of relative time below the key index
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
SMALL_BATCH = 64  # up to this many rows, per-value Python beats pandas' per-call overhead

USER_WINDOWS = {"10m": 10 * MINUTE_MS, "1h": HOUR_MS, "24h": DAY_MS, "7d": 7 * DAY_MS, "30d": RETENTION_MS}
MERCHANT_COUNT_WINDOWS = {"1h": HOUR_MS, "24h": DAY_MS, "7d": 7 * DAY_MS}
MERCHANT_RISK_WINDOWS = {"1d": DAY_MS, "7d": 7 * DAY_MS, "30d": RETENTION_MS}
# Delayed merchant risk looks at [t - label delay - window, t - label delay): a window whose labels are all in.
MERCHANT_DELAYED_WINDOWS = {"1d": DAY_MS, "7d": 7 * DAY_MS, "30d": RETENTION_MS}
MCC_RISK_WINDOWS = {"7d": 7 * DAY_MS, "30d": RETENTION_MS}
DISTINCT_MERCHANT_WINDOWS = {"1h": HOUR_MS, "24h": DAY_MS}
# Compromise point: a card's purchases from this long before its fraud became known up to the fraud itself are
# suspect; a merchant counts them in these windows (known time, and delayed like the merchant's delayed risk).
EXPOSURE_LOOKBACK_MS = RETENTION_MS
COMPROMISE_COUNT_WINDOWS = {"7d": 7 * DAY_MS}
COMPROMISE_DELAYED_WINDOWS = {"7d": 7 * DAY_MS, "30d": RETENTION_MS}
# Device linking: distinct cards seen on a device in these windows (a phone or browser many cards pass through).
DEVICE_CARD_WINDOWS = {"7d": 7 * DAY_MS, "30d": RETENTION_MS}

USER_HISTORY_CAP = 2_000  # a user's lookback sees at most this many earlier transactions
MERCHANT_HISTORY_CAP = 50_000  # same for a merchant or a merchant category
DEVICE_HISTORY_CAP = 500  # same for a device: beyond this many recent uses its card count no longer matters
TINY_AMOUNT = 2.0  # card testers probe with amounts below this
NIGHT_HOURS = (0, 6)  # [start, end) in UTC
RISK_PRIOR_RATE = 0.005  # merchant risk shrinks towards this rate ...
RISK_PRIOR_WEIGHT = 20.0  # ... as if this many prior transactions had it
MIN_LOG_STD = 0.1  # z-score floor: one earlier amount gives no spread
SPEED_MIN_HOURS = 1 / 60  # implied speed divides by at least a minute
MAX_SPEED_KMH = 20_000.0
EARTH_RADIUS_KM = 6371.0088

NEUTRAL_ACCOUNT_AGE_DAYS = 365.0
NEUTRAL_SECONDS_SINCE_PREV = RETENTION_MS / 1000.0
CHANNEL_CODES = {"card_present": 1, "online": 2, "mobile": 3}
# No card-not-present habit features: a trailing share of a card's remote spend follows the population's channel
# mix over the calendar, so a model learns the date instead of the card (docs/MODEL_DETAILS.md has the figures).
NEUTRAL_HOURS_SINCE_CARD_FRAUD = RETENTION_MS / HOUR_MS  # a card without a known fraud in the lookback

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "log_amount",
    "hour_of_day",
    "is_night",
    "is_weekend",
    *(f"user_{stat}_{window}" for window in USER_WINDOWS for stat in ("count", "sum")),
    "amount_to_user_mean_30d",
    "log_amount_zscore_30d",
    "user_no_history_30d",
    "log_seconds_since_prev",
    "user_distinct_merchants_1h",
    "user_distinct_merchants_24h",
    "user_tiny_count_10m",
    "first_time_at_merchant",
    "new_device",
    "device_missing",
    *(f"device_cards_{window}" for window in DEVICE_CARD_WINDOWS),
    "card_fraud_known_30d",
    "log_hours_since_card_fraud",
    "distance_from_home_km",
    "home_distance_missing",
    "distance_from_prev_km",
    "speed_from_prev_kmh",
    "prev_location_missing",
    "location_missing",
    "country_changed",
    "country_missing",
    "country_differs_from_home",
    "channel_card_present",
    "channel_online",
    "channel_mobile",
    "channel_missing",
    *(f"merchant_count_{window}" for window in MERCHANT_COUNT_WINDOWS),
    *(f"merchant_risk_{window}" for window in MERCHANT_RISK_WINDOWS),
    "merchant_fraud_count_7d",
    *(f"merchant_delayed_{stat}_{window}" for window in MERCHANT_DELAYED_WINDOWS for stat in ("risk", "count")),
    *(f"merchant_compromise_count_{window}" for window in COMPROMISE_COUNT_WINDOWS),
    *(f"merchant_compromise_share_{window}" for window in COMPROMISE_DELAYED_WINDOWS),
    *(f"mcc_risk_{window}" for window in MCC_RISK_WINDOWS),
    "mcc_missing",
    "account_age_days",
    "credit_utilisation_30d",
    "kyc_level",
    "user_profile_missing",
    "amount_to_merchant_typical",
    "merchant_profile_missing",
)

# Bump when a feature's meaning changes while its name and parameters stay (a formula, a missing-value rule).
FEATURE_SPEC_VERSION = "4"


def feature_spec() -> dict[str, object]:
    """What a model's features depend on: the spec version, the feature names and every parameter that changes a
    feature's value. Comments, reasons and refactors leave it as it is, so they force no retraining."""
    return {
        "version": FEATURE_SPEC_VERSION,
        "features": list(FEATURE_NAMES),
        "parameters": {
            "user_windows_ms": USER_WINDOWS,
            "merchant_count_windows_ms": MERCHANT_COUNT_WINDOWS,
            "merchant_risk_windows_ms": MERCHANT_RISK_WINDOWS,
            "merchant_delayed_windows_ms": MERCHANT_DELAYED_WINDOWS,
            "mcc_risk_windows_ms": MCC_RISK_WINDOWS,
            "distinct_merchant_windows_ms": DISTINCT_MERCHANT_WINDOWS,
            "retention_ms": RETENTION_MS,
            "user_history_cap": USER_HISTORY_CAP,
            "merchant_history_cap": MERCHANT_HISTORY_CAP,
            "tiny_amount": TINY_AMOUNT,
            "night_hours": NIGHT_HOURS,
            "risk_prior_rate": RISK_PRIOR_RATE,
            "risk_prior_weight": RISK_PRIOR_WEIGHT,
            "min_log_std": MIN_LOG_STD,
            "speed_min_hours": SPEED_MIN_HOURS,
            "max_speed_kmh": MAX_SPEED_KMH,
            "earth_radius_km": EARTH_RADIUS_KM,
            "neutral_account_age_days": NEUTRAL_ACCOUNT_AGE_DAYS,
            "neutral_seconds_since_prev": NEUTRAL_SECONDS_SINCE_PREV,
            "channel_codes": CHANNEL_CODES,
            "neutral_hours_since_card_fraud": NEUTRAL_HOURS_SINCE_CARD_FRAUD,
            "exposure_lookback_ms": EXPOSURE_LOOKBACK_MS,
            "compromise_count_windows_ms": COMPROMISE_COUNT_WINDOWS,
            "compromise_delayed_windows_ms": COMPROMISE_DELAYED_WINDOWS,
            "device_card_windows_ms": DEVICE_CARD_WINDOWS,
            "device_history_cap": DEVICE_HISTORY_CAP,
        },
    }


# What a model bundle records and the registry checks.
FEATURE_VERSION: str = hashlib.sha256(json.dumps(feature_spec(), sort_keys=True).encode()).hexdigest()

# Numeric row layout shared by both paths (keys are stable 64-bit hashes; 0 means missing).
ROW_COLUMNS = (
    "txn_key",
    "user_key",
    "merchant_key",
    "mcc_key",
    "device_key",
    "country_key",
    "home_country_key",
    "ts_ms",
    "amount",
    "lat",
    "lon",
    "channel_code",
)
USER_ROW_COLUMNS = ("user_key", "ts_ms", "amount", "merchant_key", "device_key", "country_key", "lat", "lon")
EVENT_ROW_COLUMNS = ("key", "ts_ms")
DEVICE_ROW_COLUMNS = ("key", "ts_ms", "user_key")
USER_PASS_OUTPUTS = (
    *(f"user_{stat}_{window}" for window in USER_WINDOWS for stat in ("count", "sum")),
    "user_prev_count_30d",
    "user_prev_mean_amount_30d",
    "user_prev_mean_log_30d",
    "user_prev_std_log_30d",
    "seconds_since_prev",
    "user_distinct_merchants_1h",
    "user_distinct_merchants_24h",
    "user_tiny_count_10m",
    "first_time_at_merchant",
    "new_device",
    "prev_distance_km",
    "prev_hours",
    "prev_location_found",
    "country_changed",
    "card_fraud_known_30d",
    "hours_since_card_fraud",
)
MERCHANT_PASS_OUTPUTS = (
    *(f"count_{w}" for w in {**MERCHANT_COUNT_WINDOWS, **MERCHANT_RISK_WINDOWS}),
    *(f"fraud_{w}" for w in MERCHANT_RISK_WINDOWS),
    *(f"delayed_{stat}_{w}" for w in MERCHANT_DELAYED_WINDOWS for stat in ("count", "fraud")),
    *(f"exposed_{w}" for w in COMPROMISE_COUNT_WINDOWS),
    *(f"delayed_exposed_{w}" for w in COMPROMISE_DELAYED_WINDOWS),
)
MCC_PASS_OUTPUTS = (*(f"count_{w}" for w in MCC_RISK_WINDOWS), *(f"fraud_{w}" for w in MCC_RISK_WINDOWS))
DEVICE_PASS_OUTPUTS = tuple(f"cards_{w}" for w in DEVICE_CARD_WINDOWS)
PASS_OUTPUTS = {
    "user": USER_PASS_OUTPUTS,
    "merchant": MERCHANT_PASS_OUTPUTS,
    "mcc": MCC_PASS_OUTPUTS,
    "device": DEVICE_PASS_OUTPUTS,
}
PASS_KEYS = {"user": "user_key", "merchant": "merchant_key", "mcc": "mcc_key", "device": "device_key"}  # keys a pass

# Pass inputs and outputs: a DataFrame, or plain column arrays on the online hot path (no pandas per call).
Columns = Mapping[str, np.ndarray] | pd.DataFrame


def stable_hash(values: pd.Series | np.ndarray, *, recurring: bool = True) -> np.ndarray:
    """64-bit hash of strings that is the same in every process (unlike ``hash()``); missing values hash to 0.

    A large column hashes only its distinct values, from the column's own dtype (no round trip through Python
    objects). A micro-batch of ``recurring`` values (users, merchants, devices: not transaction ids) looks each one
    up in a memo of earlier hashes, as pandas per call costs more than the hashing. All give ``pd.util.hash_array``
    of the text.
    """
    if len(values) <= SMALL_BATCH:
        if recurring:
            return np.fromiter((_hash_one(v) for v in values), np.int64, len(values))
        texts = [_text(v) for v in values if not _missing(v)]
        hashed = iter(_hash_texts(np.array(texts, dtype=object)).tolist() if texts else ())
        return np.fromiter((0 if _missing(v) else next(hashed) for v in values), np.int64, len(values))
    codes, uniques = pd.factorize(pd.Series(values, copy=False), use_na_sentinel=True)
    if len(uniques) == 0:
        return np.zeros(len(codes), np.int64)
    texts = (
        uniques.to_numpy(dtype=object)
        if pd.api.types.is_string_dtype(uniques.dtype)
        else np.asarray(uniques, dtype=str).astype(object)
    )
    hashed = _hash_texts(texts)
    return np.where(codes >= 0, hashed[np.maximum(codes, 0)], 0).astype(np.int64, copy=False)


def _hash_texts(texts: np.ndarray) -> np.ndarray:
    hashed = pd.util.hash_array(texts, categorize=len(texts) > SMALL_BATCH).view(np.int64)  # same hash either way
    return np.where(hashed == 0, 1, hashed)


_HASH_MEMO: dict[str, int] = {}
_HASH_MEMO_LIMIT = 1_000_000


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or value != value  # NaN is the one value unequal to itself


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _hash_one(value: object) -> int:
    if _missing(value):
        return 0
    text = _text(value)
    hashed = _HASH_MEMO.get(text)
    if hashed is None:
        if len(_HASH_MEMO) >= _HASH_MEMO_LIMIT:
            _HASH_MEMO.clear()
        hashed = _HASH_MEMO[text] = int(_hash_texts(np.array([text], dtype=object))[0])
    return hashed


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Which of ``partitions`` owns each hashed key (stable across processes and restarts)."""
    return (keys.view(np.uint64) % np.uint64(partitions)).astype(np.int64)


def epoch_ms(values: pd.Series | np.ndarray) -> np.ndarray:
    """Epoch milliseconds (floored) of aware datetimes or ISO-8601 texts."""
    if len(values) <= SMALL_BATCH and all(isinstance(v, datetime) and v.tzinfo is not None for v in values):
        return np.fromiter(((v - _EPOCH) // _ONE_MS for v in values), np.int64, len(values))
    stamps = pd.Series(pd.to_datetime(values, utc=True))
    return stamps.dt.as_unit("ms").astype("int64").to_numpy()


def instant_ms(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Epoch milliseconds as floats, NaN where the time is missing or unparsable."""
    if not isinstance(values, pd.DatetimeIndex):
        values = pd.DatetimeIndex(pd.to_datetime(values, utc=True, errors="coerce"))
    stamps = values.as_unit("ms")
    return np.where(stamps.isna(), np.nan, stamps.asi8.astype(np.float64))


def floats(values: pd.Series | np.ndarray) -> np.ndarray:
    """float64 values, NaN where missing or not a number."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    return pd.to_numeric(pd.Series(values, copy=False), errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _codes(values: pd.Series | np.ndarray, mapping: dict[str, int]) -> np.ndarray:
    """``mapping`` of each value, 0 where missing or unmapped."""
    if len(values) <= SMALL_BATCH:
        return np.fromiter((mapping.get(v, 0) if isinstance(v, str) else 0 for v in values), np.int64, len(values))
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    lookup = np.array([*(mapping.get(str(u), 0) for u in uniques), 0], np.int64)
    return lookup[codes]  # -1 (missing) takes the trailing 0


def align_profiles(ids: pd.Series, profiles: pd.DataFrame | None, key: str, columns: dict[str, str]) -> pd.DataFrame:
    """Profile rows aligned with ``ids`` (missing profiles give all-missing rows), in the profile dtypes."""
    table = conform(profiles if profiles is not None else pd.DataFrame(columns=list(columns)), columns)
    table = table.drop_duplicates(key, keep="last").set_index(key)
    aligned = table.reindex(pd.Index(ids.astype("string"), name=key))
    return aligned.reset_index()


def prepare_rows(transactions: Columns, users: Columns, merchants: Columns) -> dict[str, np.ndarray]:
    """Numeric rows (``ROW_COLUMNS``) for the passes; ``users``/``merchants`` are profiles aligned with
    ``transactions``. Takes a DataFrame (files, Ray Data blocks) or plain column arrays (micro-batches).

    The merchant category is the transaction's ``mcc``, else the merchant profile's.
    """
    require_columns(transactions, REQUIRED_COLUMNS, "transactions")
    count = len(transactions["transaction_id"])

    def column(name: str) -> pd.Series | np.ndarray:
        return transactions[name] if name in transactions else np.full(count, None, dtype=object)

    own_mcc = stable_hash(column("mcc"))
    keyed = (
        ("user_key", transactions["user_id"]),
        ("merchant_key", transactions["merchant_id"]),
        ("device_key", column("device_id")),
        ("country_key", column("country")),
        ("home_country_key", users["home_country"]),
    )
    rows = {
        "txn_key": stable_hash(transactions["transaction_id"], recurring=False),
        **{name: stable_hash(values) for name, values in keyed},
    }
    rows["mcc_key"] = np.where(own_mcc != 0, own_mcc, stable_hash(merchants["mcc"]))
    rows["ts_ms"] = epoch_ms(transactions["timestamp"])
    rows["amount"] = floats(transactions["amount"])
    rows["lat"], rows["lon"] = floats(column("lat")), floats(column("lon"))
    rows["channel_code"] = _codes(column("channel"), CHANNEL_CODES)
    return {name: rows[name] for name in ROW_COLUMNS}


def duration_ms(delta: timedelta) -> int:
    """A duration (a label delay, a window) in the integer milliseconds the feature rows use."""
    return int(delta / _ONE_MS)


def default_label_events(rows: Columns, is_fraud: np.ndarray, label_delay: timedelta) -> pd.DataFrame:
    """Confirmed-fraud events when no explicit labels are given: each fraud becomes known ``label_delay`` later."""
    fraud = np.asarray(is_fraud, dtype=np.float64) == 1
    delay_ms = duration_ms(label_delay)
    return pd.DataFrame(
        {
            "txn_key": np.asarray(rows["txn_key"], np.int64)[fraud],
            "known_ms": np.asarray(rows["ts_ms"], np.int64)[fraud] + delay_ms,
        }
    )


def label_anchor(tx_ms: np.ndarray, known_ms: np.ndarray, label_delay_ms: int) -> np.ndarray:
    """Where a confirmed fraud counts in the delayed windows: at its transaction, or ``known - delay`` when the label
    came later than the delay. A delayed window ends at ``t - delay``, so it only holds labels known before t."""
    return np.maximum(np.asarray(tx_ms, np.int64), np.asarray(known_ms, np.int64) - label_delay_ms)


def explicit_label_events(labels: pd.DataFrame) -> pd.DataFrame:
    """Confirmed-fraud events from ``(transaction_id, is_fraud, known_at)`` rows; a fraud counts once, when first known."""
    require_columns(labels.columns, LABEL_EVENT_COLUMNS, "labels")
    fraud = label_values(labels["is_fraud"].to_numpy(dtype=object)) == 1
    events = pd.DataFrame(
        {"txn_key": stable_hash(labels["transaction_id"])[fraud], "known_ms": epoch_ms(labels["known_at"])[fraud]}
    )
    return events.sort_values("known_ms", kind="stable").drop_duplicates("txn_key").reset_index(drop=True)


def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct int64 keys and each key's index among them, as ``np.unique(keys, return_inverse=True)``
    gives them, by hashing rather than sorting every row: keys repeat (a batch's cards over their history)."""
    inverse, unique_keys = pd.factorize(keys, sort=True)
    return unique_keys, inverse


def _layout(keys: np.ndarray, ts: np.ndarray, origin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable order by (key, time) and the sorted combined int64 keys; also each row's dense key index."""
    unique_keys, inverse = _distinct(keys)
    combined = (inverse.astype(np.int64) << _TIME_BITS) | (ts - origin)
    order = np.argsort(combined, kind="stable")
    return order, combined[order], unique_keys


def _window_start(combined: np.ndarray, positions: np.ndarray, window_ms: int, cap: int) -> np.ndarray:
    """First sorted position inside (t - window, t] of the same key, at most ``cap`` rows back."""
    start = np.searchsorted(combined, combined[positions] - window_ms, side="right")
    return np.maximum(start, positions - cap)


def _previous_same(group: np.ndarray, present: np.ndarray) -> np.ndarray:
    """For each sorted position, the previous position with the same ``group`` value (-1 if none/absent)."""
    n = len(group)
    previous = np.full(n, -1, dtype=np.int64)
    candidates = np.flatnonzero(present)
    if len(candidates) == 0:
        return previous
    by_group = candidates[np.argsort(group[candidates], kind="stable")]
    same = group[by_group[1:]] == group[by_group[:-1]]
    previous[by_group[1:][same]] = by_group[:-1][same]
    return previous


def _pair_index(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One int64 per (dense index, hashed key) pair."""
    values, second_index = _distinct(second)
    return first * len(values) + second_index.astype(np.int64)


def _last_present_before(present: np.ndarray) -> np.ndarray:
    """For each sorted position p, the last position q < p where ``present`` holds (-1 if none)."""
    marks = np.where(present, np.arange(len(present)), -1)
    running = np.maximum.accumulate(marks) if len(marks) else marks
    return np.concatenate(([-1], running[:-1])).astype(np.int64)


def _distinct_in_window(previous_same: np.ndarray, positions: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Distinct values in sorted rows [start, p]: rows whose previous occurrence lies before the window."""
    counts = np.zeros(len(positions), dtype=np.int64)
    active = np.arange(len(positions))
    lag = 0
    while len(active):
        row = positions[active] - lag
        inside = row >= start[active]
        active, row = active[inside], row[inside]
        counts[active] += previous_same[row] < start[active]
        lag += 1
    return counts


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km (vectorised): the one Earth model of the features and the simulator alike."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _stacked(history: Columns, batch: Columns, columns: tuple[str, ...]) -> tuple[dict[str, np.ndarray], int, int]:
    """History rows then batch rows, per column; and the two row counts."""
    n_history = len(history[columns[0]])
    rows = {
        c: np.concatenate([np.asarray(history[c]), np.asarray(batch[c])]) if n_history else np.asarray(batch[c])
        for c in columns
    }
    return rows, n_history, len(rows[columns[0]]) - n_history


def _in_batch_order(out: dict[str, np.ndarray], names: tuple[str, ...], target: np.ndarray) -> np.ndarray:
    """Outputs computed in sorted order as a (batch rows x names) matrix in batch order (column-major)."""
    source = np.empty_like(target)
    source[target] = np.arange(len(target))
    matrix = np.empty((len(names), len(target)), dtype=np.float64)
    for column, name in enumerate(names):
        np.take(out[name], source, out=matrix[column], mode="clip")
    return matrix.T


def user_pass_values(history: Columns, batch: Columns, labels: Columns) -> np.ndarray:
    """Per-user window features for ``batch`` rows given earlier rows of their users: a (batch rows x
    ``USER_PASS_OUTPUTS``) matrix in batch order. ``labels`` holds ``key, known_ms`` of the cards' confirmed
    frauds; one counts for a transaction at time t when t - 30 days < known_ms < t (card state)."""
    rows, n_history, n_batch = _stacked(history, batch, USER_ROW_COLUMNS)
    n = n_history + n_batch
    if n_batch == 0:
        return np.zeros((0, len(USER_PASS_OUTPUTS)))
    ts = rows["ts_ms"].astype(np.int64, copy=False)
    origin = int(ts.min()) - _ORIGIN_MARGIN_MS
    order, combined, unique_keys = _layout(rows["user_key"].astype(np.int64, copy=False), ts, origin)
    ts_s = ts[order]
    amount = rows["amount"].astype(np.float64, copy=False)[order]
    log_amount = np.log1p(amount)
    new = np.flatnonzero(order >= n_history)  # sorted positions of the batch rows
    target = order[new] - n_history  # their batch index
    out: dict[str, np.ndarray] = {}

    def cumulative(values: np.ndarray) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))

    amount_cum, log_cum, log_sq_cum = cumulative(amount), cumulative(log_amount), cumulative(log_amount**2)
    tiny_cum = cumulative((amount < TINY_AMOUNT).astype(np.float64))
    starts = {}
    for name, window in USER_WINDOWS.items():
        start = starts[name] = _window_start(combined, new, window, USER_HISTORY_CAP)
        out[f"user_count_{name}"] = (new - start + 1).astype(np.float64)
        out[f"user_sum_{name}"] = amount_cum[new + 1] - amount_cum[start]
    start30 = starts["30d"]
    prior = (new - start30).astype(np.float64)
    has_prior = prior > 0
    safe_prior = np.where(has_prior, prior, 1.0)
    mean_log = (log_cum[new] - log_cum[start30]) / safe_prior
    var_log = np.maximum((log_sq_cum[new] - log_sq_cum[start30]) / safe_prior - mean_log**2, 0.0)
    out["user_prev_count_30d"] = prior
    out["user_prev_mean_amount_30d"] = np.where(has_prior, (amount_cum[new] - amount_cum[start30]) / safe_prior, 0.0)
    out["user_prev_mean_log_30d"] = np.where(has_prior, mean_log, 0.0)
    out["user_prev_std_log_30d"] = np.where(has_prior, np.sqrt(var_log), 0.0)
    out["seconds_since_prev"] = np.where(has_prior, (ts_s[new] - ts_s[np.maximum(new - 1, 0)]) / 1000.0, np.nan)

    merchants = rows["merchant_key"].astype(np.int64, copy=False)[order]
    user_index = combined >> _TIME_BITS
    pair_merchant = _previous_same(_pair_index(user_index, merchants), np.ones(n, bool))
    for name in DISTINCT_MERCHANT_WINDOWS:
        out[f"user_distinct_merchants_{name}"] = _distinct_in_window(pair_merchant, new, starts[name]).astype(float)
    out["user_tiny_count_10m"] = tiny_cum[new + 1] - tiny_cum[starts["10m"]]
    out["first_time_at_merchant"] = (pair_merchant[new] < start30).astype(np.float64)

    devices = rows["device_key"].astype(np.int64, copy=False)[order]
    pair_device = _previous_same(_pair_index(user_index, devices), devices != 0)
    out["new_device"] = ((devices[new] != 0) & (pair_device[new] < start30)).astype(np.float64)

    lat, lon = rows["lat"].astype(np.float64, copy=False)[order], rows["lon"].astype(np.float64, copy=False)[order]
    located = ~(np.isnan(lat) | np.isnan(lon))
    previous_located = _last_present_before(located)[new]
    found = (previous_located >= start30) & located[new]
    prev = np.where(found, previous_located, 0)
    out["prev_distance_km"] = np.where(found, haversine_km(lat[prev], lon[prev], lat[new], lon[new]), 0.0)
    out["prev_hours"] = np.where(found, (ts_s[new] - ts_s[prev]) / HOUR_MS, 0.0)
    out["prev_location_found"] = found.astype(np.float64)

    countries = rows["country_key"].astype(np.int64, copy=False)[order]
    previous_country = _last_present_before(countries != 0)[new]
    known = (previous_country >= start30) & (countries[new] != 0)
    out["country_changed"] = (known & (countries[np.where(known, previous_country, 0)] != countries[new])).astype(float)
    out.update(_card_state(labels, unique_keys, combined[new], origin))
    return _in_batch_order(out, USER_PASS_OUTPUTS, target)


def _card_state(labels: Columns, unique_keys: np.ndarray, combined: np.ndarray, origin: int) -> dict[str, np.ndarray]:
    """Known frauds of each row's card in (t - 30 days, t) and the hours since the latest (NaN: none)."""
    label_keys, known = np.asarray(labels["key"], np.int64), np.asarray(labels["known_ms"], np.int64)
    slot = np.searchsorted(unique_keys, label_keys)
    relevant = (
        (slot < len(unique_keys))
        & (unique_keys[np.minimum(slot, len(unique_keys) - 1)] == label_keys)
        & (known >= origin)
    )  # older labels lie outside every window (and below the relative origin)
    label_combined = np.sort((slot[relevant].astype(np.int64) << _TIME_BITS) | (known[relevant] - origin))
    upper = np.searchsorted(label_combined, combined, side="left")
    lower = np.searchsorted(label_combined, combined - RETENTION_MS, side="right")
    latest = label_combined[np.maximum(upper - 1, 0)] if len(label_combined) else np.zeros(len(combined), np.int64)
    found = upper > lower
    return {
        "card_fraud_known_30d": (upper - lower).astype(np.float64),
        "hours_since_card_fraud": np.where(found, (combined - latest) / HOUR_MS, np.nan),
    }


def event_pass(
    history: Columns,
    batch: Columns,
    labels: Columns,
    count_windows: dict[str, int],
    fraud_windows: dict[str, int],
    delayed_windows: dict[str, int],
    label_delay_ms: int,
) -> np.ndarray:
    """Per-key transaction counts and known-fraud counts for ``batch`` rows (merchant or merchant category).

    ``history``/``batch`` hold ``EVENT_ROW_COLUMNS``; ``labels`` holds ``key, known_ms, anchor_ms`` of confirmed
    frauds. A label counts for a transaction at time t when t - window < known_ms < t. The delayed windows end
    ``label_delay_ms`` before t: rows with time in [t - delay - window, t - delay), and labels whose anchor (see
    ``label_anchor``) lies there. Rows with key 0 (missing) get zeros. Returns a (batch rows x ``count_*``,
    ``fraud_*``, then ``delayed_count_*``/``delayed_fraud_*`` per delayed window) matrix.
    """
    rows, n_history, n_batch = _stacked(history, batch, EVENT_ROW_COLUMNS)
    names = (
        *(f"count_{w}" for w in count_windows),
        *(f"fraud_{w}" for w in fraud_windows),
        *(f"delayed_{stat}_{w}" for w in delayed_windows for stat in ("count", "fraud")),
    )
    if n_batch == 0:
        return np.zeros((0, len(names)))
    keys, ts = rows["key"].astype(np.int64, copy=False), rows["ts_ms"].astype(np.int64, copy=False)
    label_keys, known = np.asarray(labels["key"], np.int64), np.asarray(labels["known_ms"], np.int64)
    origin = int(min(ts.min(), known.min() if len(known) else ts.min())) - _ORIGIN_MARGIN_MS - label_delay_ms
    order, combined, unique_keys = _layout(keys, ts, origin)
    new = np.flatnonzero(order >= n_history)
    target = order[new] - n_history
    present = keys[order[new]] != 0
    out: dict[str, np.ndarray] = {}
    for name, window in count_windows.items():
        start = _window_start(combined, new, window, MERCHANT_HISTORY_CAP)
        out[f"count_{name}"] = np.where(present, new - start + 1, 0).astype(np.float64)
    slot = np.searchsorted(unique_keys, label_keys)
    relevant = (slot < len(unique_keys)) & (unique_keys[np.minimum(slot, len(unique_keys) - 1)] == label_keys)
    label_base = slot[relevant].astype(np.int64) << _TIME_BITS
    label_combined = np.sort(label_base | (known[relevant] - origin))
    upper = np.searchsorted(label_combined, combined[new], side="left")
    for name, window in fraud_windows.items():
        lower = np.searchsorted(label_combined, combined[new] - window, side="right")
        out[f"fraud_{name}"] = np.where(present, upper - lower, 0).astype(np.float64)
    if delayed_windows:
        anchor_combined = np.sort(label_base | (np.asarray(labels["anchor_ms"], np.int64)[relevant] - origin))
        end = combined[new] - label_delay_ms
        oldest = new - MERCHANT_HISTORY_CAP  # the same per-key cap as every other lookback
        row_end, label_end = np.searchsorted(combined, end, "left"), np.searchsorted(anchor_combined, end, "left")
        for name, window in delayed_windows.items():
            row_start = np.searchsorted(combined, end - window, "left")
            label_start = np.searchsorted(anchor_combined, end - window, "left")
            count = np.maximum(row_end - np.maximum(row_start, oldest), 0)
            out[f"delayed_count_{name}"] = np.where(present, count, 0).astype(np.float64)
            out[f"delayed_fraud_{name}"] = np.where(present, label_end - label_start, 0).astype(np.float64)
    return _in_batch_order(out, names, target)


def merchant_pass_values(
    history: Columns, batch: Columns, labels: Columns, label_delay_ms: int, exposures: Columns
) -> np.ndarray:
    """Merchant counts, known frauds and known suspect purchases (``exposure_events``), both by ``event_pass``, as
    a (batch rows x ``MERCHANT_PASS_OUTPUTS``) matrix."""
    risk = event_pass(
        history,
        batch,
        labels,
        {**MERCHANT_COUNT_WINDOWS, **MERCHANT_RISK_WINDOWS},
        MERCHANT_RISK_WINDOWS,
        MERCHANT_DELAYED_WINDOWS,
        label_delay_ms,
    )
    suspect = event_pass(
        history, batch, exposures, {}, COMPROMISE_COUNT_WINDOWS, COMPROMISE_DELAYED_WINDOWS, label_delay_ms
    )
    # suspect columns: fraud_* per count window, then delayed_count / delayed_fraud per delayed window
    counted = len(COMPROMISE_COUNT_WINDOWS)
    delayed = [counted + 2 * i + 1 for i in range(len(COMPROMISE_DELAYED_WINDOWS))]
    return np.hstack([risk, suspect[:, :counted], suspect[:, delayed]])


def mcc_pass_values(history: Columns, batch: Columns, labels: Columns, label_delay_ms: int) -> np.ndarray:
    """Category counts and known frauds as a (batch rows x ``MCC_PASS_OUTPUTS``) matrix (no delayed windows)."""
    return event_pass(history, batch, labels, MCC_RISK_WINDOWS, MCC_RISK_WINDOWS, {}, label_delay_ms)


def device_pass_values(history: Columns, batch: Columns) -> np.ndarray:
    """Distinct cards seen on each row's device in each ``DEVICE_CARD_WINDOWS`` window, its own card included, over
    at most ``DEVICE_HISTORY_CAP`` earlier uses: a (batch rows x ``DEVICE_PASS_OUTPUTS``) matrix, zeros where the
    device is missing. A cardholder's phone sees one card or a household's few; a ring's sees every card it holds.
    ``history``/``batch`` hold ``DEVICE_ROW_COLUMNS``; rows without a device take no part."""
    values = np.zeros((len(batch["key"]), len(DEVICE_PASS_OUTPUTS)))
    present = np.asarray(batch["key"], np.int64) != 0
    history_present = np.asarray(history["key"], np.int64) != 0
    if not present.any():
        return values
    rows, n_history, _ = _stacked(
        {c: np.asarray(history[c])[history_present] for c in DEVICE_ROW_COLUMNS},
        {c: np.asarray(batch[c])[present] for c in DEVICE_ROW_COLUMNS},
        DEVICE_ROW_COLUMNS,
    )
    ts = rows["ts_ms"].astype(np.int64, copy=False)
    origin = int(ts.min()) - _ORIGIN_MARGIN_MS
    order, combined, _ = _layout(rows["key"].astype(np.int64, copy=False), ts, origin)
    new = np.flatnonzero(order >= n_history)
    target = order[new] - n_history
    cards = rows["user_key"].astype(np.int64, copy=False)[order]
    previous_same_card = _previous_same(_pair_index(combined >> _TIME_BITS, cards), np.ones(len(order), bool))
    out = {
        f"cards_{name}": _distinct_in_window(
            previous_same_card, new, _window_start(combined, new, window, DEVICE_HISTORY_CAP)
        ).astype(np.float64)
        for name, window in DEVICE_CARD_WINDOWS.items()
    }
    values[present] = _in_batch_order(out, DEVICE_PASS_OUTPUTS, target)
    return values


def _risk(fraud: np.ndarray, count: np.ndarray) -> np.ndarray:
    return (fraud + RISK_PRIOR_WEIGHT * RISK_PRIOR_RATE) / (count + RISK_PRIOR_WEIGHT)


def assemble(rows: Columns, passes: Mapping[str, Columns], users: Columns, merchants: Columns) -> np.ndarray:
    """The (rows x ``FEATURE_NAMES``) float32 matrix, never NaN, from the numeric rows, every kind's pass outputs
    (``PASS_OUTPUTS``) and aligned profiles."""
    user, merchant, mcc, device = (passes[kind] for kind in ("user", "merchant", "mcc", "device"))
    f: dict[str, np.ndarray] = {}
    amount = np.asarray(rows["amount"], np.float64)
    ts = np.asarray(rows["ts_ms"], np.int64)
    f["amount"], f["log_amount"] = amount, np.log1p(amount)
    hour = (ts // HOUR_MS) % 24
    f["hour_of_day"] = hour.astype(np.float64)
    f["is_night"] = ((hour >= NIGHT_HOURS[0]) & (hour < NIGHT_HOURS[1])).astype(np.float64)
    f["is_weekend"] = ((ts // DAY_MS + _EPOCH_WEEKDAY) % 7 >= 5).astype(np.float64)  # Monday = 0
    for window in USER_WINDOWS:
        for stat in ("count", "sum"):
            f[f"user_{stat}_{window}"] = np.asarray(user[f"user_{stat}_{window}"])
    has_prior = np.asarray(user["user_prev_count_30d"]) > 0
    prior_mean = np.asarray(user["user_prev_mean_amount_30d"])
    f["amount_to_user_mean_30d"] = np.where(has_prior, amount / np.where(has_prior, prior_mean, 1.0), 1.0)
    spread = np.maximum(np.asarray(user["user_prev_std_log_30d"]), MIN_LOG_STD)
    f["log_amount_zscore_30d"] = np.where(
        has_prior, (np.log1p(amount) - np.asarray(user["user_prev_mean_log_30d"])) / spread, 0.0
    )
    f["user_no_history_30d"] = (~has_prior).astype(np.float64)
    seconds = np.nan_to_num(np.asarray(user["seconds_since_prev"]), nan=NEUTRAL_SECONDS_SINCE_PREV)
    f["log_seconds_since_prev"] = np.log1p(seconds)
    for name in (
        "user_distinct_merchants_1h",
        "user_distinct_merchants_24h",
        "user_tiny_count_10m",
        "first_time_at_merchant",
        "new_device",
    ):
        f[name] = np.asarray(user[name])
    f["device_missing"] = (np.asarray(rows["device_key"]) == 0).astype(np.float64)
    for window in DEVICE_CARD_WINDOWS:
        f[f"device_cards_{window}"] = np.asarray(device[f"cards_{window}"])

    lat, lon = np.asarray(rows["lat"], np.float64), np.asarray(rows["lon"], np.float64)
    home_lat, home_lon = floats(users["home_lat"]), floats(users["home_lon"])
    home_known = ~(np.isnan(lat) | np.isnan(lon) | np.isnan(home_lat) | np.isnan(home_lon))
    f["distance_from_home_km"] = np.where(
        home_known,
        haversine_km(np.nan_to_num(home_lat), np.nan_to_num(home_lon), np.nan_to_num(lat), np.nan_to_num(lon)),
        0.0,
    )
    f["home_distance_missing"] = (~home_known).astype(np.float64)
    found = np.asarray(user["prev_location_found"]) > 0
    f["distance_from_prev_km"] = np.asarray(user["prev_distance_km"])
    hours = np.maximum(np.asarray(user["prev_hours"]), SPEED_MIN_HOURS)
    f["speed_from_prev_kmh"] = np.where(found, np.minimum(f["distance_from_prev_km"] / hours, MAX_SPEED_KMH), 0.0)
    f["prev_location_missing"] = (~found).astype(np.float64)
    f["location_missing"] = (np.isnan(lat) | np.isnan(lon)).astype(np.float64)
    country, home_country = np.asarray(rows["country_key"]), np.asarray(rows["home_country_key"])
    f["country_changed"] = np.asarray(user["country_changed"])
    f["country_missing"] = (country == 0).astype(np.float64)
    f["country_differs_from_home"] = ((country != 0) & (home_country != 0) & (country != home_country)).astype(float)
    channel = np.asarray(rows["channel_code"])
    for name, code in CHANNEL_CODES.items():
        f[f"channel_{name}"] = (channel == code).astype(np.float64)
    f["channel_missing"] = (channel == 0).astype(np.float64)
    f["card_fraud_known_30d"] = np.asarray(user["card_fraud_known_30d"])
    f["log_hours_since_card_fraud"] = np.log1p(
        np.nan_to_num(np.asarray(user["hours_since_card_fraud"]), nan=NEUTRAL_HOURS_SINCE_CARD_FRAUD)
    )

    for window in MERCHANT_COUNT_WINDOWS:
        f[f"merchant_count_{window}"] = np.asarray(merchant[f"count_{window}"])
    for window in MERCHANT_RISK_WINDOWS:
        f[f"merchant_risk_{window}"] = _risk(
            np.asarray(merchant[f"fraud_{window}"]), np.asarray(merchant[f"count_{window}"])
        )
    f["merchant_fraud_count_7d"] = np.asarray(merchant["fraud_7d"])
    for window in MERCHANT_DELAYED_WINDOWS:
        count, fraud = np.asarray(merchant[f"delayed_count_{window}"]), np.asarray(merchant[f"delayed_fraud_{window}"])
        f[f"merchant_delayed_count_{window}"] = count
        f[f"merchant_delayed_risk_{window}"] = np.divide(fraud, count, out=np.zeros(len(count)), where=count > 0)
    for window in COMPROMISE_COUNT_WINDOWS:
        f[f"merchant_compromise_count_{window}"] = np.asarray(merchant[f"exposed_{window}"])
    for window in COMPROMISE_DELAYED_WINDOWS:  # a suspect purchase can predate the window its anchor falls in
        count, suspect = (
            np.asarray(merchant[f"delayed_count_{window}"]),
            np.asarray(merchant[f"delayed_exposed_{window}"]),
        )
        f[f"merchant_compromise_share_{window}"] = np.minimum(
            np.divide(suspect, count, out=np.zeros(len(count)), where=count > 0), 1.0
        )
    mcc_known = np.asarray(rows["mcc_key"]) != 0
    for window in MCC_RISK_WINDOWS:
        f[f"mcc_risk_{window}"] = np.where(
            mcc_known, _risk(np.asarray(mcc[f"fraud_{window}"]), np.asarray(mcc[f"count_{window}"])), RISK_PRIOR_RATE
        )
    f["mcc_missing"] = (~mcc_known).astype(np.float64)

    age_days = (ts - instant_ms(users["account_opened"])) / DAY_MS
    f["account_age_days"] = np.where(np.isnan(age_days), NEUTRAL_ACCOUNT_AGE_DAYS, np.maximum(age_days, 0.0))
    limit = floats(users["credit_limit"])
    limit_known = np.nan_to_num(limit) > 0
    f["credit_utilisation_30d"] = np.where(
        limit_known, np.asarray(user["user_sum_30d"]) / np.where(limit_known, limit, 1), 0
    )
    f["kyc_level"] = np.nan_to_num(floats(users["kyc_level"]), nan=0.0)
    f["user_profile_missing"] = _profile_missing(users, ("home_lat", "account_opened", "credit_limit", "kyc_level"))
    typical = floats(merchants["typical_ticket"])
    typical_known = np.nan_to_num(typical) > 0
    f["amount_to_merchant_typical"] = np.where(typical_known, amount / np.where(typical_known, typical, 1.0), 1.0)
    f["merchant_profile_missing"] = _profile_missing(merchants, ("mcc", "lat", "typical_ticket", "country"))

    matrix = np.empty((len(FEATURE_NAMES), len(amount)), dtype=np.float32)  # one feature per row: contiguous writes
    for index, name in enumerate(FEATURE_NAMES):
        matrix[index] = f[name]
    matrix[~np.isfinite(matrix)] = 0.0
    return matrix.T


def feature_frame(transaction_ids: pd.Series | np.ndarray, matrix: np.ndarray) -> pd.DataFrame:
    """``transaction_id`` + ``FEATURE_NAMES`` columns, the table form of ``assemble``'s matrix."""
    features = pd.DataFrame(matrix, columns=list(FEATURE_NAMES), copy=False)
    features.insert(0, "transaction_id", pd.Series(transaction_ids, copy=False).astype("string").to_numpy(dtype=object))
    return features


def _profile_missing(profiles: Columns, columns: tuple[str, ...]) -> np.ndarray:
    """1 where the profile row is absent (every profile column missing)."""
    return np.all([np.asarray(pd.isna(profiles[c])) for c in columns], axis=0).astype(np.float64)


def build_features(
    transactions: pd.DataFrame,
    *,
    label_delay: timedelta,
    labels: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    merchants: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every transaction's features, aligned with the input rows: ``transaction_id`` + ``FEATURE_NAMES``.

    Each row sees only earlier rows (input order breaks time ties) and labels known before its time: the
    explicit ``labels`` events, or else each row's ``is_fraud`` revealed ``label_delay`` after it.
    """
    require_columns(transactions, REQUIRED_COLUMNS, "transactions")
    transactions = transactions.reset_index(drop=True)
    user_profiles = align_profiles(transactions["user_id"], users, "user_id", USER_PROFILE_COLUMNS)
    merchant_profiles = align_profiles(transactions["merchant_id"], merchants, "merchant_id", MERCHANT_PROFILE_COLUMNS)
    rows = prepare_rows(transactions, user_profiles, merchant_profiles)
    if labels is not None:
        events = explicit_label_events(labels)
    elif "is_fraud" in transactions.columns:
        events = default_label_events(rows, label_values(transactions["is_fraud"].to_numpy(dtype=object)), label_delay)
    else:
        events = pd.DataFrame({"txn_key": np.zeros(0, np.int64), "known_ms": np.zeros(0, np.int64)})
    delay_ms = duration_ms(label_delay)
    card_frauds = card_fraud_events(events, rows)
    passes = {
        kind: dict(zip(names, keyed_pass_values(kind, rows, events, delay_ms, card_frauds).T))
        for kind, names in PASS_OUTPUTS.items()
    }
    return feature_frame(
        transactions["transaction_id"],
        assemble(rows, passes, user_profiles, merchant_profiles),
    )


def keyed_pass_values(
    kind: str, rows: Columns, events: Columns, label_delay_ms: int, card_frauds: Columns | None = None
) -> np.ndarray:
    """One pass ("user", "merchant", "mcc" or "device") over numeric rows holding every row of their keys, in arrival order,
    without history: a (rows x ``PASS_OUTPUTS[kind]``) matrix. ``events`` are confirmed frauds (``txn_key,
    known_ms``); every pass places them by their transaction's row (its card, merchant or category). The merchant
    pass also needs every card's confirmed frauds (``card_fraud_events`` of all rows, not just these keys'), as
    they cast suspicion on the merchants the card used; by default those of ``rows``."""
    if kind == "device":
        keyed = {**event_rows(rows, "device_key"), "user_key": np.asarray(rows["user_key"], np.int64)}
        return device_pass_values({c: values[:0] for c, values in keyed.items()}, keyed)
    labels = label_keys(events, rows, PASS_KEYS[kind], label_delay_ms)
    if kind == "user":
        return user_pass_values({c: np.zeros(0) for c in USER_ROW_COLUMNS}, rows, labels)
    keyed = event_rows(rows, PASS_KEYS[kind])
    empty = {c: values[:0] for c, values in keyed.items()}
    if kind == "mcc":
        return mcc_pass_values(empty, keyed, labels, label_delay_ms)
    if card_frauds is None:
        card_frauds = card_fraud_events(events, rows)
    visits = {c: np.asarray(rows[c], np.int64) for c in ("merchant_key", "user_key", "ts_ms", "txn_key")}
    exposures = exposure_events(card_frauds, visits, label_delay_ms)
    return merchant_pass_values(empty, keyed, labels, label_delay_ms, exposures)


def event_rows(rows: Columns, key: str) -> dict[str, np.ndarray]:
    """The ``EVENT_ROW_COLUMNS`` view of numeric rows for one key kind (merchant or category)."""
    return {"key": np.asarray(rows[key], np.int64), "ts_ms": np.asarray(rows["ts_ms"], np.int64)}


def label_keys(events: Columns, rows: Columns, key: str, label_delay_ms: int) -> dict[str, np.ndarray]:
    """Label events (``txn_key, known_ms``) joined to their transaction's ``key`` and given their ``anchor_ms``
    (``label_anchor``); unknown transactions drop out, a repeated transaction key means its first row."""
    wanted = np.asarray(events["txn_key"], np.int64)
    txn_keys, first = np.unique(np.asarray(rows["txn_key"], np.int64), return_index=True)
    slot = np.searchsorted(txn_keys, wanted)
    listed = slot < len(txn_keys)
    listed[listed] = txn_keys[slot[listed]] == wanted[listed]
    position = first[slot[listed]]
    keys = np.asarray(rows[key], np.int64)[position]
    found = keys != 0
    known = np.asarray(events["known_ms"], np.int64)[listed][found]
    tx_ms = np.asarray(rows["ts_ms"], np.int64)[position[found]]
    return {
        "key": keys[found],
        "known_ms": known,
        "anchor_ms": label_anchor(tx_ms, known, label_delay_ms),
        "tx_ms": tx_ms,
    }


def card_fraud_events(events: Columns, rows: Columns) -> dict[str, np.ndarray]:
    """Confirmed frauds (``txn_key, known_ms``) as ``user_key, ts_ms`` (the fraud's own time), ``known_ms``: what
    ``exposure_events`` takes; frauds of transactions not in ``rows`` drop out."""
    placed = label_keys(events, rows, "user_key", 0)
    return {"user_key": placed["key"], "ts_ms": placed["tx_ms"], "known_ms": placed["known_ms"]}


def exposure_events(card_frauds: Columns, visits: Columns, label_delay_ms: int) -> dict[str, np.ndarray]:
    """The suspect purchases behind confirmed frauds, as label events of their merchants.

    A card's fraud (``user_key, ts_ms, known_ms``) makes each of its ``visits`` (``merchant_key, user_key, ts_ms,
    txn_key``) with known_ms - ``EXPOSURE_LOOKBACK_MS`` < ts_ms <= the fraud's ts_ms suspect from known_ms on; a
    visit counts once, with its earliest known_ms. Returns ``key`` (the merchant), ``known_ms``, ``anchor_ms``
    (``label_anchor`` of the visit) and ``txn_key`` (the visit), ordered by known_ms. Only purchases up to the
    fraud count, all made before its label was known, so the online state can list them when the label arrives.
    """
    users, ts = np.asarray(visits["user_key"], np.int64), np.asarray(visits["ts_ms"], np.int64)
    fraud_users = np.asarray(card_frauds["user_key"], np.int64)
    fraud_ts, known = np.asarray(card_frauds["ts_ms"], np.int64), np.asarray(card_frauds["known_ms"], np.int64)
    empty = {name: np.zeros(0, np.int64) for name in ("key", "known_ms", "anchor_ms", "txn_key")}
    if not len(users) or not len(fraud_users):
        return empty
    unique_users, inverse = _distinct(users)
    slot = np.minimum(np.searchsorted(unique_users, fraud_users), len(unique_users) - 1)
    listed = unique_users[slot] == fraud_users
    slot, fraud_ts, known = slot[listed], fraud_ts[listed], known[listed]
    origin = int(min(ts.min(), (known - EXPOSURE_LOOKBACK_MS).min(initial=ts.min()))) - 1
    combined = (inverse.astype(np.int64) << _TIME_BITS) | (ts - origin)
    order = np.argsort(combined, kind="stable")
    combined = combined[order]
    base = slot.astype(np.int64) << _TIME_BITS
    lower = np.searchsorted(combined, base | (known - EXPOSURE_LOOKBACK_MS - origin), side="right")
    upper = np.searchsorted(combined, base | (np.maximum(fraud_ts, origin) - origin), side="right")
    counts = np.maximum(upper - lower, 0)
    total = int(counts.sum())
    if total == 0:
        return empty
    starts = np.repeat(lower - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    visit = order[starts + np.arange(total)]
    visit_known = np.repeat(known, counts)
    by_known = np.argsort(visit_known, kind="stable")
    visit, visit_known = visit[by_known], visit_known[by_known]
    txn = np.asarray(visits["txn_key"], np.int64)[visit]
    _, first = np.unique(txn, return_index=True)
    first = np.sort(first)  # earliest known per visit, in known order
    visit, visit_known = visit[first], visit_known[first]
    return {
        "key": np.asarray(visits["merchant_key"], np.int64)[visit],
        "known_ms": visit_known,
        "anchor_ms": label_anchor(ts[visit], visit_known, label_delay_ms),
        "txn_key": txn[first],
    }


# -- reasons ------------------------------------------------------------------------------------------------------
# How each feature reads to an analyst (``serve.reasons`` ranks and groups them): a new feature adds its ``Reason``
# here. A template describes the value seen, whichever way it pushed, and gives None where the value is a stand-in
# for a missing input (see ``assemble``), so no sentence claims what was not seen.

_WINDOW_WORDS = {"10m": "10 minutes", "1h": "hour", "24h": "24 hours", "1d": "day", "7d": "7 days", "30d": "30 days"}


def _amount(seen: Seen, amount: float) -> str:
    if amount < TINY_AMOUNT and seen.raises:
        return f"Tiny amount {seen.money(amount)} — a card-testing probe pattern"
    return f"Amount {seen.money(amount)}"


def _amount_to_user_mean(seen: Seen) -> str | None:
    if seen["user_no_history_30d"]:
        return None
    return f"Amount {seen.money(seen['amount'])} is {relative(seen.value)} this card's 30-day average"


def _amount_zscore(seen: Seen) -> str | None:
    if seen["user_no_history_30d"]:
        return None
    amount, z = seen.money(seen["amount"]), seen.value
    if abs(z) < 0.5:
        return f"Amount {amount} is close to this card's usual amounts"
    side = "above" if z > 0 else "below"
    return f"Amount {amount} is {abs(z):.1f} standard deviations {side} this card's usual (log scale)"


def _amount_to_merchant_typical(seen: Seen) -> str | None:
    if seen["merchant_profile_missing"] or seen.value == 1.0:  # 1.0 stands in for an unknown typical ticket
        return None
    return f"Amount {seen.money(seen['amount'])} is {relative(seen.value)} this merchant's typical ticket"


def _since_previous(seen: Seen) -> str | None:
    if seen["user_no_history_30d"]:
        return None
    seconds = math.expm1(seen.value)
    only = "only " if seconds < HOUR_MS / 1000 else ""
    return f"Previous purchase by this card {only}{duration(seconds)} earlier"


def _flag(on: str, off: str | None = None, *, unless: str | None = None) -> Template:
    """A 0/1 feature: ``on`` when set; ``off`` (if any) when not, unless the ``unless`` flag is set."""

    def template(seen: Seen) -> str | None:
        if seen.value >= 0.5:
            return on
        return None if off is None or (unless is not None and seen[unless]) else off

    return template


def _unless(missing: str, template: Template) -> Template:
    """``template`` unless the ``missing`` flag says the value is a stand-in."""
    return lambda seen: None if seen[missing] else template(seen)


def _in_window(noun: str, window: str, *, none: str) -> Template:
    """A count over a user window that includes this purchase."""

    def template(seen: Seen) -> str:
        if seen.value < 1.5:
            return f"No other {none} by this card in the last {_WINDOW_WORDS[window]}"
        return f"{count(seen.value, noun)} by this card in the last {_WINDOW_WORDS[window]}, this one included"

    return template


def _device_cards(window: str) -> Template:
    """Cards seen on this purchase's device, this one's included (0: no device, which its own flag says)."""

    def template(seen: Seen) -> str | None:
        if seen.value < 0.5:
            return None
        if seen.value < 1.5:
            return f"No other card used this device in the last {_WINDOW_WORDS[window]}"
        return f"{count(seen.value, 'card')} used this device in the last {_WINDOW_WORDS[window]}, this one included"

    return template


def _hour(seen: Seen) -> str:
    hour = int(seen.value) % 24
    return f"Purchase between {hour:02d}:00 and {(hour + 1) % 24:02d}:00 UTC"


def _account_age(seen: Seen) -> str | None:
    days = seen.value
    if days == NEUTRAL_ACCOUNT_AGE_DAYS:  # the stand-in for an unknown opening date
        return None
    if days < 1:
        return "Account opened less than a day ago"
    if days < 60:
        return f"Account opened {count(math.floor(days), 'day')} ago"
    if days < 730:
        return f"Account opened {count(math.floor(days / 30.44), 'month')} ago"
    return f"Account opened {count(math.floor(days / 365.25), 'year')} ago"


def _speed(seen: Seen) -> str | None:
    if seen["prev_location_missing"]:
        return None
    at_least = "at least " if seen.value >= MAX_SPEED_KMH else ""
    return f"Implied speed of {at_least}{number(seen.value)} km/h since this card's previous purchase"


def _merchant_fraud_count(seen: Seen) -> str:
    if seen.value < 0.5:
        return "No confirmed frauds at this merchant in the last 7 days"
    return f"Merchant had {count(seen.value, 'confirmed fraud')} in the last 7 days"


def _delayed_risk(window: str) -> Template:
    def template(seen: Seen) -> str | None:
        if seen[f"merchant_delayed_count_{window}"] < 0.5:  # no settled history: the rate is a stand-in
            return None
        return f"Merchant fraud rate {share(seen.value)} over a fully labelled {window[:-1]}-day window"

    return template


def _tiny_count(seen: Seen) -> str:
    under, this_tiny = f"(under {seen.money(TINY_AMOUNT)})", seen["amount"] < TINY_AMOUNT
    if seen.value < 0.5:
        return f"No tiny amounts {under} by this card in the last 10 minutes"
    if this_tiny and seen.value < 1.5:
        return f"No other tiny amount {under} by this card in the last 10 minutes"
    included = ", this one included" if this_tiny else ""
    return f"{count(seen.value, 'tiny amount')} {under} by this card in the last 10 minutes{included}"


def _card_fraud_known(seen: Seen) -> str:
    if seen.value < 0.5:
        return "No confirmed fraud on this card in the last 30 days"
    return f"{count(seen.value, 'confirmed fraud')} on this card in the last 30 days"


def _since_card_fraud(seen: Seen) -> str | None:
    if seen["card_fraud_known_30d"] < 0.5:  # the neutral lookback stands in for "none known"
        return None
    return f"Latest confirmed fraud on this card became known {duration(math.expm1(seen.value) * 3600)} ago"


def _compromise_count(window: str) -> Template:
    def template(seen: Seen) -> str:
        if seen.value < 0.5:
            return f"No card that shopped here had a fraud confirmed in the last {_WINDOW_WORDS[window]}"
        return (
            f"{count(seen.value, 'earlier purchase')} here by cards with a fraud confirmed in the last "
            f"{_WINDOW_WORDS[window]} (a possible point of compromise)"
        )

    return template


def _compromise_share(window: str) -> Template:
    def template(seen: Seen) -> str | None:
        if seen[f"merchant_delayed_count_{window}"] < 0.5:  # no settled history: the share is a stand-in
            return None
        return (
            f"{share(seen.value)} of this merchant's purchases in a fully labelled {window[:-1]}-day window "
            "were by cards later confirmed stolen"
        )

    return template


REASONS: dict[str, Reason] = {
    "amount": Reason("amount", lambda seen: _amount(seen, seen.value)),
    "log_amount": Reason("amount", lambda seen: _amount(seen, math.expm1(seen.value))),
    "hour_of_day": Reason("time", _hour),
    "is_night": Reason(
        "time",
        _flag(
            f"Night-time purchase ({NIGHT_HOURS[0]:02d}:00–{NIGHT_HOURS[1]:02d}:00 UTC)",
            f"Purchase outside night hours ({NIGHT_HOURS[1]:02d}:00–24:00 UTC)",
        ),
    ),
    "is_weekend": Reason("time", _flag("Weekend purchase", "Weekday purchase")),
    **{f"user_count_{w}": Reason("velocity", _in_window("purchase", w, none="purchase")) for w in USER_WINDOWS},
    **{
        f"user_sum_{w}": Reason(
            "spend",
            lambda seen, w=w: (
                f"{seen.money(seen.value)} spent by this card in the last {_WINDOW_WORDS[w]}, this purchase included"
            ),
        )
        for w in USER_WINDOWS
    },
    "amount_to_user_mean_30d": Reason("amount", _amount_to_user_mean),
    "log_amount_zscore_30d": Reason("amount", _amount_zscore),
    "user_no_history_30d": Reason(
        "history", _flag("No purchases by this card in the last 30 days", "This card has purchases in the last 30 days")
    ),
    "log_seconds_since_prev": Reason("velocity", _since_previous),
    **{
        f"user_distinct_merchants_{w}": Reason("merchants", _in_window("different merchant", w, none="merchant"))
        for w in DISTINCT_MERCHANT_WINDOWS
    },
    "user_tiny_count_10m": Reason("testing", _tiny_count),
    "first_time_at_merchant": Reason(
        "merchant_new",
        _flag("First purchase at this merchant in 30 days", "This card bought at this merchant in the last 30 days"),
    ),
    "new_device": Reason(
        "device",
        _flag(
            "First purchase from this device on this card in 30 days",
            "Device already used by this card",
            unless="device_missing",
        ),
    ),
    "device_missing": Reason("device", _flag("No device information", "Device identified")),
    **{f"device_cards_{w}": Reason("device_cards", _device_cards(w)) for w in DEVICE_CARD_WINDOWS},
    "card_fraud_known_30d": Reason("card_fraud", _card_fraud_known),
    "log_hours_since_card_fraud": Reason("card_fraud", _since_card_fraud),
    "distance_from_home_km": Reason(
        "geo",
        _unless("home_distance_missing", lambda seen: f"Purchase {distance(seen.value)} from the card holder's home"),
    ),
    "home_distance_missing": Reason("geo", _flag("Distance from the card holder's home unknown")),
    "distance_from_prev_km": Reason(
        "travel",
        _unless(
            "prev_location_missing", lambda seen: f"Purchase {distance(seen.value)} from this card's previous purchase"
        ),
    ),
    "speed_from_prev_kmh": Reason("travel", _speed),
    "prev_location_missing": Reason("travel", _flag("No location for this card's previous purchase")),
    "location_missing": Reason("geo", _flag("No location for this purchase")),
    "country_changed": Reason("country", _flag("Country differs from this card's previous purchase")),
    "country_missing": Reason("country", _flag("No country for this purchase")),
    "country_differs_from_home": Reason("country", _flag("Purchase outside the card holder's home country")),
    "channel_card_present": Reason("channel", _flag("Card-present purchase")),
    "channel_online": Reason("channel", _flag("Online (card-not-present) purchase")),
    "channel_mobile": Reason("channel", _flag("Mobile purchase")),
    "channel_missing": Reason("channel", _flag("No channel information")),
    **{
        f"merchant_count_{w}": Reason(
            "merchant_volume",
            lambda seen, w=w: f"Merchant volume: {count(seen.value, 'purchase')} in the last {_WINDOW_WORDS[w]}",
        )
        for w in MERCHANT_COUNT_WINDOWS
    },
    **{
        f"merchant_risk_{w}": Reason(
            "merchant_risk",
            lambda seen, w=w: f"Merchant fraud rate {share(seen.value)} over the last {_WINDOW_WORDS[w]}",
        )
        for w in MERCHANT_RISK_WINDOWS
    },
    "merchant_fraud_count_7d": Reason("merchant_risk", _merchant_fraud_count),
    **{f"merchant_delayed_risk_{w}": Reason("merchant_risk", _delayed_risk(w)) for w in MERCHANT_DELAYED_WINDOWS},
    **{
        f"merchant_delayed_count_{w}": Reason(
            "merchant_volume",
            lambda seen, w=w: (
                f"Merchant volume: {count(seen.value, 'purchase')} in a fully labelled {w[:-1]}-day window"
            ),
        )
        for w in MERCHANT_DELAYED_WINDOWS
    },
    **{
        f"merchant_compromise_count_{w}": Reason("merchant_compromise", _compromise_count(w))
        for w in COMPROMISE_COUNT_WINDOWS
    },
    **{
        f"merchant_compromise_share_{w}": Reason("merchant_compromise", _compromise_share(w))
        for w in COMPROMISE_DELAYED_WINDOWS
    },
    **{
        f"mcc_risk_{w}": Reason(
            "category_risk",
            _unless(
                "mcc_missing",
                lambda seen, w=w: f"Merchant category fraud rate {share(seen.value)} over the last {_WINDOW_WORDS[w]}",
            ),
        )
        for w in MCC_RISK_WINDOWS
    },
    "mcc_missing": Reason("category_risk", _flag("No merchant category")),
    "account_age_days": Reason("account", _account_age),
    "credit_utilisation_30d": Reason(
        "credit",
        lambda seen: (  # 0 stands in for an unknown credit limit
            f"{share(seen.value)} of the credit limit spent in the last 30 days" if seen.value > 0 else None
        ),
    ),
    "kyc_level": Reason(
        "kyc",
        lambda seen: (
            f"Identity-verification (KYC) level {seen.value:.0f}"
            if seen.value >= 0.5
            else "No identity-verification (KYC) level"
        ),
    ),
    "user_profile_missing": Reason("account", _flag("No card holder profile")),
    "amount_to_merchant_typical": Reason("merchant_amount", _amount_to_merchant_typical),
    "merchant_profile_missing": Reason("merchant_amount", _flag("No merchant profile")),
}

# Reason groups whose features are computed from fraud labels: what labels already know is the supervised model's
# to use; the autoencoder, whose job is fraud nobody has labelled yet, reads the others (``training.autoencoder``).
LABEL_GROUPS = frozenset({"card_fraud", "merchant_risk", "merchant_compromise", "category_risk"})
LABEL_FEATURES: tuple[str, ...] = tuple(
    name for name in FEATURE_NAMES if REASONS[name].group in LABEL_GROUPS and name != "mcc_missing"
)  # mcc_missing sits in the category-risk group but says only that the caller sent no category

# Confirmed fraud at a merchant or in its category never makes a purchase there safer: the supervised model is held
# to that shape (XGBoost monotone constraints, ``training.xgb``), so a few labelled incidents at some merchants teach
# a rise that holds at the next merchant hit, not a step fitted to those few.
RISING_WITH_MERCHANT_FRAUD: tuple[str, ...] = tuple(
    name for name in LABEL_FEATURES if REASONS[name].group in {"merchant_risk", "merchant_compromise", "category_risk"}
)
