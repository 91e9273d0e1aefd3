"""``fraudctl bench`` section "rules": what the rule set costs the scoring core, and rule testing on history.

Scoring: the in-process core the stream consumers run and the batch endpoint composes (``FraudDetector``:
features from the online state actors -> XGBoost and the autoencoder -> ``combine`` -> ``apply_rules``), on
micro-batches of simulated traffic in time order, with 0, 20 and 200 active rules and with one rule reading a
100,000-value deny list, all in one run against one feature state. Each round scores one batch once per
configuration (each round in another order), so the machine's load and the batch's weight fall on all alike; each
figure is the median batch, and its cost is the median ratio to the 0-rule batch of the same round, in CPU time
(wall time beside it: on a shared machine it swings with everyone else's load). In process rather than over
HTTP, so the ratio is about rules and not request noise. The rules stage alone (``apply_rules`` on one scored
batch, repeated) is timed beside it. Rule sets and the list go through the real stores and caches
(``RuleStore``, ``ListStore``, ``RuleCache``) as on a replica.

Rule testing: ``training.rule_replay.run_rule_test`` (features rebuilt causally, the champion's scores, every rule
measured) over a simulated history of about 500,000 rows, in rows per second.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from tqdm import tqdm

from cluster.aws import bootstrap
from cluster.config import Settings
from cluster.datasets import write_transactions
from cluster.profiles import profile_paths
from cluster.schema import CANONICAL_COLUMNS, TIMESTAMP_FORMAT, Transaction
from fraudctl.bench.environment import trained_environment
from serve.api import parse_rules, parse_transaction
from serve.lists import ListCache, ListStore
from serve.rule_store import RuleCache, RuleStore
from serve.scoring import apply_rules, canonical_columns, scoring_record
from serve.sdk import FraudDetector
from simulation.generator import SimulationConfig, simulate_history
from training.rule_replay import run_rule_test

RULE_COUNTS = (0, 20, 200)
DENY_LIST = "bench_deny"
DENY_LIST_VALUES = 100_000
DENY_SHARE_OF_USERS = 0.02  # simulated cards on the deny list, so the rule matches now and then
BATCH_ROWS = 1_000  # a stream consumer's micro-batch (``ShardConsumer.batch_limit``)
WARMUP_BATCHES = 3
ROUNDS = 20  # batches per configuration
STAGE_REPEATS = 30  # ``apply_rules`` alone, per configuration
REPLAY_USERS = 6_800  # about 500,000 simulated rows over REPLAY_DAYS (74 a user)
REPLAY_DAYS = 30
REPLAY_RULES = 20
SEED = 18


def bench_rules(settings: Settings) -> dict[str, Any]:
    with trained_environment(settings) as (live, data, version):
        history = pd.read_parquet(data)
        scoring = _scoring_costs(live, history)
        replay = _rule_testing(live)
    return {
        "model_version": version,
        "scoring": scoring,
        "rule_testing": replay,
        "goals": {"deny_list_100k_cost_ratio_max": 1.05, "rule_testing_500k_rows_seconds_max": 120},
    }


# -- rule sets --------------------------------------------------------------------------------------------------


def generated_rules(count: int, *, seed: int = SEED) -> list[dict[str, Any]]:
    """``count`` active rules of the kinds fraud teams write (thresholds over the amount, velocity and profile
    features, the model's score and risk level, countries, channels), thresholds drawn from ``seed``: the same
    set on every run. Thresholds sit in the tails, so each rule matches a small share of traffic."""
    rng = np.random.default_rng(seed)
    foreign = ["GB", "CA", "MX", "FR", "DE", "ES", "IT", "NL", "BR", "JP", "IN", "AU", "NG", "AE", "SG", "TH"]

    def countries() -> str:
        return "(" + ", ".join(f"'{c}'" for c in rng.choice(foreign, int(rng.integers(2, 6)), replace=False)) + ")"

    templates = [
        lambda: (f"amount > {rng.integers(5, 40) * 100} and user_count_1h >= {rng.integers(3, 8)}", "block"),
        lambda: (f"fraud_score >= {rng.uniform(0.5, 0.95):.2f} and country != 'US'", "block"),
        lambda: (f"amount > {rng.integers(2, 20) * 100} and country in {countries()}", "review"),
        lambda: (
            f"user_count_10m >= {rng.integers(3, 7)} and amount_to_user_mean_30d > {rng.uniform(2, 6):.1f}",
            "review",
        ),
        lambda: (f"risk_level == 'MEDIUM' and new_device == 1 and amount > {rng.integers(1, 10) * 100}", "block"),
        lambda: (f"distance_from_home_km > {rng.integers(5, 50) * 100} and channel == 'online'", "review"),
        lambda: (
            f"user_sum_24h > {rng.integers(20, 100) * 100} and fraud_score >= {rng.uniform(0.3, 0.8):.2f}",
            "block",
        ),
        lambda: (f"merchant_risk_7d > {rng.uniform(0.05, 0.3):.2f} and amount > {rng.integers(1, 10) * 100}", "review"),
        lambda: (
            f"user_distinct_merchants_1h >= {rng.integers(3, 8)} or user_tiny_count_10m >= {rng.integers(3, 8)}",
            "review",
        ),
        lambda: (f"country_differs_from_home == 1 and speed_from_prev_kmh > {rng.integers(5, 20) * 100}", "block"),
        lambda: (
            f"amount < {rng.integers(2, 10)} and kyc_level >= 2 and account_age_days > {rng.integers(1, 5) * 365}",
            "allow",
        ),
    ]
    rules = []
    for index in range(count):
        expression, action = templates[int(rng.integers(len(templates)))]()
        rules.append(
            {
                "id": f"B{index:03d}",
                "expression": expression,
                "action": action,
                "description": f"generated rule {index}",
            }
        )
    return rules


def _rule_sets() -> dict[str, dict[str, Any]]:
    sets = {f"rules_{count}": {"mode": "first_matched", "rules": generated_rules(count)} for count in RULE_COUNTS}
    sets["deny_list_100k"] = {
        "mode": "first_matched",
        "rules": [
            {"id": "DENY", "expression": f"user_id in @{DENY_LIST}", "action": "block", "description": "deny list"}
        ],
    }
    return sets


def _deny_values(history: pd.DataFrame) -> list[str]:
    users = np.sort(history["user_id"].unique())
    listed = list(
        np.random.default_rng(SEED).choice(users, max(1, int(len(users) * DENY_SHARE_OF_USERS)), replace=False)
    )
    return listed + [f"u-denied-{i:06d}" for i in range(DENY_LIST_VALUES - len(listed))]


# -- scoring ----------------------------------------------------------------------------------------------------


def _traffic(history: pd.DataFrame, batches: int) -> list[list[Transaction]]:
    """The history's rows in time order as validated transactions (as a consumer holds them), ``BATCH_ROWS`` a
    batch; once the history is used up it comes again later in time (shifted by its own span, under new ids), so
    no card meets its own transactions a second time."""
    frame = history.sort_values("timestamp", kind="stable").reset_index(drop=True)
    times = pd.to_datetime(frame["timestamp"], utc=True)
    span = times.max() - times.min() + pd.Timedelta(days=1)
    rows = batches * BATCH_ROWS
    replays = pd.concat(
        [
            frame.assign(
                timestamp=(times + span * copy).dt.strftime(TIMESTAMP_FORMAT),
                transaction_id=frame["transaction_id"].astype(str) + f"-c{copy}",
            )
            for copy in range(-(-rows // len(frame)))
        ],
        ignore_index=True,
    ).iloc[:rows]
    records = [
        parse_transaction({k: v for k, v in row.items() if k in CANONICAL_COLUMNS and v is not None and v == v})
        for row in replays.to_dict(orient="records")
    ]
    return [records[start : start + BATCH_ROWS] for start in range(0, rows, BATCH_ROWS)]


def _scoring_costs(live: Settings, history: pd.DataFrame) -> dict[str, Any]:
    sets = _rule_sets()
    lists = ListStore(live)
    started = time.perf_counter()
    lists.put(DENY_LIST, "user_id", _deny_values(history))
    list_put_s = time.perf_counter() - started
    shared_lists = ListCache(live, lists)
    started = time.perf_counter()
    shared_lists.current()  # the catalog and the 100k values read once, as a replica's first pass does
    list_read_s = time.perf_counter() - started
    caches = {name: _rule_cache(live, index, body, shared_lists) for index, (name, body) in enumerate(sets.items())}

    detector = FraudDetector(live, model="champion", feature_state="bench-rules", rules=caches["rules_0"])
    names = list(sets)
    traffic = _traffic(history, WARMUP_BATCHES + ROUNDS)
    # each round scores one batch once per configuration (under ids of its own), so a heavier batch weighs on all
    copies = [
        {
            name: [t.model_copy(update={"transaction_id": f"{t.transaction_id}-k{index}"}) for t in batch]
            for index, name in enumerate(names)
        }
        for batch in traffic[WARMUP_BATCHES:]
    ]
    batch_ms: dict[str, list[float]] = {name: [] for name in names}
    cpu_ms: dict[str, list[float]] = {name: [] for name in names}
    matched: dict[str, int] = dict.fromkeys(names, 0)
    try:
        for batch in traffic[:WARMUP_BATCHES]:
            detector.predict_transactions(batch)
        with tqdm(total=ROUNDS * len(names), desc="bench rules: scoring", unit="batch") as bar:
            for round_, batches in enumerate(copies):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    detector.rules = caches[name]
                    started, cpu_started = time.perf_counter(), time.process_time()
                    decisions = detector.predict_transactions(batches[name])
                    batch_ms[name].append((time.perf_counter() - started) * 1000.0)
                    cpu_ms[name].append((time.process_time() - cpu_started) * 1000.0)
                    matched[name] += sum(bool(d["rules"]) for d in decisions)
                    bar.update()
        stage_ms = _rules_stage(detector, caches, copies[-1][names[0]])
    finally:
        detector.features.shutdown()

    def paired(samples: dict[str, list[float]], name: str) -> float:
        """The median over rounds of a batch's figure against the same round's 0-rule batch."""
        return round(statistics.median(value / zero for value, zero in zip(samples[name], samples["rules_0"])), 3)

    base_cpu = statistics.median(cpu_ms["rules_0"])
    figures: dict[str, Any] = {}
    for name in names:
        median = statistics.median(batch_ms[name])
        figures[name] = {
            "active_rules": len(sets[name]["rules"]),
            "batch_ms_p50": round(median, 1),
            "tx_per_s": round(BATCH_ROWS / median * 1000.0),
            "batch_cpu_ms_p50": round(statistics.median(cpu_ms[name]), 1),
            "cost_ratio_to_0_rules": paired(cpu_ms, name),
            "wall_cost_ratio_to_0_rules": paired(batch_ms, name),
            "rules_stage_cpu_ms_per_batch": stage_ms[name],
            "rules_stage_share_of_0_rules_batch_cpu": round(stage_ms[name] / base_cpu, 4),
            "decisions_with_a_rule_share": round(matched[name] / (ROUNDS * BATCH_ROWS), 4),
        }
    return {
        "batch_rows": BATCH_ROWS,
        "batches_per_configuration": ROUNDS,
        "note": "cost ratios in this process's CPU time per batch (models, combine, rules; the feature actors' "
        "share is not in it, so the ratio is an upper bound): on a shared machine wall time swings with "
        "other load; wall_cost_ratio_to_0_rules is the same in wall time",
        **figures,
        "deny_list": {
            "values": DENY_LIST_VALUES,
            "embedded_store_put_s": round(list_put_s, 1),
            "embedded_cache_first_read_s": round(list_read_s, 1),
        },
    }


def _rule_cache(live: Settings, index: int, body: dict[str, Any], lists: ListCache) -> RuleCache:
    """A rule store of its own per configuration (a cache follows its store's newest version), the lists shared."""
    settings = live.model_copy(update={"rules_table": f"{live.rules_table}-bench-{index}"})
    bootstrap(settings)
    store = RuleStore(settings)
    store.put(parse_rules(body, lists=lists.store.kinds()))
    cache = RuleCache(settings, store, lists)
    cache.current()
    return cache


def _rules_stage(detector: FraudDetector, caches: dict[str, RuleCache], batch: list[Transaction]) -> dict[str, float]:
    """``apply_rules`` alone on one scored batch, per configuration: median CPU ms (this thread's) of
    ``STAGE_REPEATS`` runs."""
    columns = canonical_columns([scoring_record(t) for t in batch])
    x = detector.features.matrix(columns)  # a replay of the batch: the features it got when it was scored
    scored = detector.predict_transactions(batch)
    stage: dict[str, float] = {}
    for name, cache in caches.items():
        compiled = cache.current()
        runs = []
        for _ in range(STAGE_REPEATS):
            decisions = orjson.loads(orjson.dumps(scored))
            started = time.thread_time()
            apply_rules(compiled, decisions, columns, x)
            runs.append((time.thread_time() - started) * 1000.0)
        stage[name] = round(statistics.median(runs), 2)
    return stage


# -- rule testing -----------------------------------------------------------------------------------------------


def _rule_testing(live: Settings) -> dict[str, Any]:
    """``run_rule_test`` over about 500,000 simulated rows with ``REPLAY_RULES`` generated rules."""
    history = simulate_history(
        SimulationConfig(n_users=REPLAY_USERS, days=REPLAY_DAYS, start=date(2026, 1, 1), seed=SEED, fraud_rate=0.01)
    )
    with tempfile.TemporaryDirectory(prefix="fraud-bench-replay-") as folder:
        data, rules = Path(folder) / "history.parquet", Path(folder) / "rules.json"
        write_transactions(history.transactions, data)
        users, merchants = profile_paths(data)
        history.users.to_parquet(users, index=False)
        history.merchants.to_parquet(merchants, index=False)
        rules.write_bytes(orjson.dumps({"mode": "first_matched", "rules": generated_rules(REPLAY_RULES)}))
        started = time.perf_counter()
        summary = run_rule_test(live, rules=rules, data=data, delay_days=live.label_delay_days)
        seconds = time.perf_counter() - started
    return {
        "rows": summary["rows"],
        "rules": len(summary["rules"]),
        "skipped": len(summary["skipped"]),
        "model_version": summary["model"]["version"],
        "seconds": round(seconds, 1),
        "rows_per_s": round(summary["rows"] / seconds),
    }
