"""The reference the backtest is judged against, and data to judge it on.

``simulate_handbook`` writes transactions in the style of the "Reproducible Machine Learning for Credit Card
Fraud Detection" handbook's simulator: customers and terminals on a 100 x 100 grid, each customer using the
terminals within radius 5; fraud is (1) any amount above 220, (2) every transaction of a compromised terminal
for 28 days, (3) a third of a compromised customer's transactions for 14 days, with the amount x5. Files carry
only ids, amount, timestamp and the label, like the external dataset of the acceptance check.

``baseline_scores`` is the handbook's baseline: customer 1/7/30-day count and mean amount, terminal 1/7/30-day
count and risk with the label delay, amount, weekend and night flags, and a default XGBoost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from cluster.schema import LABEL_COLUMN

WINDOWS_DAYS = (1, 7, 30)
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class HandbookConfig:
    customers: int = 5000
    terminals: int = 10000
    days: int = 50
    start: date = date(2026, 1, 1)
    seed: int = 0
    radius: float = 5.0
    compromised_terminals_per_day: float = 2.0
    compromised_customers_per_day: float = 3.0


def simulate_handbook(config: HandbookConfig) -> pd.DataFrame:
    """Canonical required columns plus ``is_fraud`` and ``fraud_scenario`` (drop it to mimic the external file)."""
    rng = np.random.default_rng(config.seed)
    customer_xy = rng.uniform(0, 100, (config.customers, 2))
    terminal_xy = rng.uniform(0, 100, (config.terminals, 2))
    mean_amount = rng.uniform(5, 100, config.customers)
    tx_per_day = rng.uniform(0, 4, config.customers)
    reachable = [np.flatnonzero(((terminal_xy - xy) ** 2).sum(axis=1) < config.radius**2) for xy in customer_xy]

    counts = rng.poisson(np.repeat(tx_per_day[None, :], config.days, axis=0))  # days x customers
    day_of, customer_of = np.nonzero(counts)
    repeats = counts[day_of, customer_of]
    day, customer = np.repeat(day_of, repeats), np.repeat(customer_of, repeats)
    seconds = rng.normal(43_200, 20_000, len(day))
    keep = (seconds > 0) & (seconds < 86_400) & np.array([len(reachable[c]) > 0 for c in customer])
    day, customer, seconds = day[keep], customer[keep], seconds[keep]
    amount = rng.normal(mean_amount[customer], mean_amount[customer] / 2)
    negative = amount <= 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[customer[negative]])
    amount = np.maximum(np.round(amount, 2), 0.01)
    terminal = np.array([reachable[c][rng.integers(len(reachable[c]))] for c in customer])
    ts_ns = (
        pd.Timestamp(config.start, tz="UTC").value + day.astype(np.int64) * DAY_NS + (seconds * 1e9).astype(np.int64)
    )

    scenario = np.where(amount > 220, "high_amount", "none").astype(object)
    for d in range(config.days):
        for t in rng.choice(config.terminals, rng.poisson(config.compromised_terminals_per_day), replace=False):
            hit = (terminal == t) & (day >= d) & (day < d + 28) & (scenario == "none")
            scenario[hit] = "compromised_terminal"
        for c in rng.choice(config.customers, rng.poisson(config.compromised_customers_per_day), replace=False):
            rows = np.flatnonzero((customer == c) & (day >= d) & (day < d + 14) & (scenario == "none"))
            chosen = rng.choice(rows, len(rows) // 3, replace=False)
            amount[chosen] = np.round(amount[chosen] * 5, 2)
            scenario[chosen] = "compromised_customer"

    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(len(day)),
            "user_id": customer,
            "merchant_id": terminal,
            "amount": amount,
            "timestamp": pd.to_datetime(ts_ns, utc=True),
            LABEL_COLUMN: (scenario != "none").astype(np.int8),
            "fraud_scenario": scenario,
        }
    )
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame["transaction_id"] = [f"t{i}" for i in range(len(frame))]
    frame["user_id"] = "c" + frame["user_id"].astype(str)
    frame["merchant_id"] = "m" + frame["merchant_id"].astype(str)
    return frame


def _trailing(
    keys: np.ndarray, ts: np.ndarray, window_ns: int, values: np.ndarray, lag_ns: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: count and sum of ``values`` over the same key's rows with time in (t - lag - window, t - lag]."""
    order = np.lexsort((ts, keys))
    k, v = keys[order], values[order]
    t = (ts[order] - ts.min()) // 10**6  # milliseconds keep key * span inside int64
    lag_ms, window_ms = lag_ns // 10**6, window_ns // 10**6
    position = np.unique(k, return_inverse=True)[1].astype(np.int64) * 2 * (t.max() + window_ms + lag_ms + 1) + t
    cumulative = np.r_[0.0, np.cumsum(v)]
    end = np.searchsorted(position, position - lag_ms, side="right")
    begin = np.searchsorted(position, position - lag_ms - window_ms, side="right")
    count, total = np.empty(len(k)), np.empty(len(k))
    count[order] = end - begin
    total[order] = cumulative[end] - cumulative[begin]
    return count, total


def baseline_features(transactions: pd.DataFrame, delay_days: int) -> pd.DataFrame:
    """The handbook's features; terminal risk counts only frauds older than the label delay."""
    ts = transactions["timestamp"].astype("int64").to_numpy()
    customer = pd.factorize(transactions["user_id"])[0]
    terminal = pd.factorize(transactions["merchant_id"])[0]
    amount = transactions["amount"].to_numpy(dtype=np.float64)
    fraud = transactions[LABEL_COLUMN].to_numpy(dtype=np.float64)
    stamps = transactions["timestamp"]
    out = {
        "amount": amount,
        "weekend": (stamps.dt.weekday >= 5).to_numpy(np.float64),
        "night": (stamps.dt.hour < 6).to_numpy(np.float64),
    }
    lag = delay_days * DAY_NS
    for days in WINDOWS_DAYS:
        count, total = _trailing(customer, ts, days * DAY_NS, amount)
        out[f"customer_count_{days}d"] = count
        out[f"customer_mean_amount_{days}d"] = total / np.maximum(count, 1)
        terminal_count, terminal_fraud = _trailing(terminal, ts, days * DAY_NS, fraud, lag_ns=lag)
        out[f"terminal_count_{days}d"] = terminal_count
        out[f"terminal_risk_{days}d"] = terminal_fraud / np.maximum(terminal_count, 1)
    return pd.DataFrame(out)


def baseline_scores(
    transactions: pd.DataFrame,
    *,
    train: tuple[pd.Timestamp, pd.Timestamp],
    test: tuple[pd.Timestamp, pd.Timestamp],
    delay_days: int,
    seed: int = 0,
) -> pd.DataFrame:
    """Fit the baseline XGBoost on the training window; ``transaction_id, fraud_score`` for the test window."""
    features = baseline_features(transactions, delay_days)
    stamps = transactions["timestamp"]
    in_train = ((stamps >= train[0]) & (stamps < train[1])).to_numpy()
    in_test = ((stamps >= test[0]) & (stamps < test[1])).to_numpy()
    model = xgb.train(
        {"objective": "binary:logistic", "tree_method": "hist", "seed": seed, "nthread": 2},
        xgb.DMatrix(features[in_train], label=transactions.loc[in_train, LABEL_COLUMN]),
        num_boost_round=100,
    )
    return pd.DataFrame(
        {
            "transaction_id": transactions.loc[in_test, "transaction_id"].to_numpy(),
            "fraud_score": model.inplace_predict(features[in_test].to_numpy(np.float32)),
        }
    )


def window_of(config: HandbookConfig, train_days: int = 7, delay_days: int = 7, test_days: int = 7) -> dict[str, Any]:
    """The latest window that fits the simulated days: as much feature history before it as possible."""
    first = config.start + timedelta(days=config.days - train_days - delay_days - test_days)
    return {"train_start": first, "train_days": train_days, "delay_days": delay_days, "test_days": test_days}
