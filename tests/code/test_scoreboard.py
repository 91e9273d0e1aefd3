"""The scoreboard against the embedded Kinesis over HTTP: it follows every shard of a decisions stream and its
per-scenario detection equals a direct join of the decisions with the simulator's truth."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pandas as pd

from cluster.aws import client
from cluster.config import Settings
from cluster.kinesis import open_shard_starts, pack, put_records_reliably
from simulation.generator import SimulationConfig, simulate_history
from simulation.scoreboard import Scoreboard
from tests.streams import create_stream


def put_decisions(settings: Settings, decisions: pd.DataFrame) -> None:
    kinesis = client("kinesis", settings)
    entries = [
        {"Data": orjson.dumps(row), "PartitionKey": row["transaction_id"]}
        for row in decisions.to_dict(orient="records")
    ]
    put_records_reliably(
        kinesis,
        settings.decisions_stream_name,
        pack(entries, open_shard_starts(kinesis, settings.decisions_stream_name)),
    )


def detection_by_direct_join(truth: pd.DataFrame, decisions: pd.DataFrame) -> dict[str, dict[str, int]]:
    joined = decisions.drop_duplicates("transaction_id").merge(truth, on="transaction_id")
    grouped = joined.groupby("fraud_scenario")["is_fraud"].agg(["size", "sum"])
    return {name: {"seen": int(row["size"]), "flagged": int(row["sum"])} for name, row in grouped.iterrows()}


def test_scoreboard_detection_equals_a_direct_join(aws_settings: Settings) -> None:
    settings = aws_settings.model_copy(update={"decisions_stream_name": create_stream(aws_settings, 2, "decisions")})
    truth = simulate_history(SimulationConfig(n_users=200, days=3, seed=11, fraud_rate=0.05)).transactions[
        ["transaction_id", "fraud_scenario"]
    ]
    rng = np.random.default_rng(3)
    fraud = (truth["fraud_scenario"] != "none").to_numpy()
    score = np.where(fraud, rng.uniform(0.3, 1.0, len(truth)), rng.uniform(0.0, 0.75, len(truth))).round(4)
    decisions = pd.DataFrame(
        {
            "transaction_id": truth["transaction_id"],
            "fraud_score": score,
            "is_fraud": score >= 0.7,
            "risk_level": np.where(score >= 0.7, "HIGH", "LOW"),
        }
    )
    strays = pd.DataFrame(
        {
            "transaction_id": ["http-1", "http-2"],
            "fraud_score": [0.9, 0.1],
            "is_fraud": [True, False],
            "risk_level": ["HIGH", "LOW"],
        }
    )  # not simulated: no truth
    board = Scoreboard(settings, since=datetime.now(timezone.utc) - timedelta(seconds=5))
    board.report(truth["transaction_id"].tolist(), truth["fraud_scenario"].tolist())

    first, rest = decisions.iloc[: len(decisions) // 2], decisions.iloc[len(decisions) // 2 :]
    put_decisions(settings, pd.concat([first, strays]))
    assert board.poll() == len(first)
    put_decisions(settings, pd.concat([rest, first.head(50)]))  # new records, and a replay's repeated decisions
    assert board.poll() == len(rest)
    assert board.poll() == 0, "a round reads only what is new"

    view = board.view(alert_ids=["http-1", decisions["transaction_id"].iloc[-1]])
    assert view["scenarios"] == detection_by_direct_join(truth, decisions)
    assert view["window"] == {"labelled": len(truth), "truly_fraud": int(fraud.sum())}
    assert view["alert_scenarios"] == {truth["transaction_id"].iloc[-1]: truth["fraud_scenario"].iloc[-1]}
    fraud_scores = decisions.loc[fraud, "fraud_score"].tail(len(view["samples"]["fraud"]))
    assert sorted(s["fraud_score"] for s in view["samples"]["fraud"]) == sorted(fraud_scores)
