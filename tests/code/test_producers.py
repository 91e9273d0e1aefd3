"""Producers against the embedded Kinesis over HTTP: every record arrives exactly once, retries included, without
the simulator's labels, whose truth goes to the scoreboard instead."""

from __future__ import annotations

import json
import random
from typing import Any

import pandas as pd
import pytest

from cluster.aws import client
from cluster.config import Settings
from cluster.kinesis import KinesisPutError, put_records_reliably, read_stream
from cluster.schema import GENUINE_SCENARIO, LABEL_COLUMN, SCENARIO_COLUMN
from cluster.waiting import wait_until
from simulation.world_shift import WorldShift
from tests.streams import create_stream


class ThrottlingKinesis:
    """A real Kinesis client whose put_records partially fails, the way a throttled shard answers.

    The throttled entries are not sent to the server at all; the answer marks them failed, as Kinesis does.
    """

    def __init__(self, kinesis: Any, failure_share: float, seed: int = 7, always_fail: bool = False):
        self.kinesis, self.failure_share, self.always_fail = kinesis, failure_share, always_fail
        self.rng = random.Random(seed)
        self.throttled = 0

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        fail = [self.always_fail or self.rng.random() < self.failure_share for _ in Records]
        sent = [record for record, failed in zip(Records, fail) if not failed]
        accepted = iter(self.kinesis.put_records(StreamName=StreamName, Records=sent)["Records"] if sent else [])
        results = []
        for failed in fail:
            if failed:
                self.throttled += 1
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"})
            else:
                results.append(next(accepted))
        return {"FailedRecordCount": sum(fail), "Records": results}


@pytest.fixture()
def fresh_stream(aws_settings: Settings) -> str:
    return create_stream(aws_settings, shards=2)


def entries(n: int) -> list[dict[str, Any]]:
    return [
        {
            "Data": json.dumps({"transaction_id": f"t{i}", "user_id": f"u{i % 37}"}).encode(),
            "PartitionKey": f"u{i % 37}",
        }
        for i in range(n)
    ]


def test_every_record_arrives_once_when_puts_partially_fail(aws_settings: Settings, fresh_stream: str) -> None:
    flaky = ThrottlingKinesis(client("kinesis", aws_settings), failure_share=0.3)
    stats = put_records_reliably(flaky, fresh_stream, entries(1_234), base_delay_s=0.001)
    ids = [r["transaction_id"] for r in read_stream(aws_settings, fresh_stream)]
    assert flaky.throttled > 100
    assert stats.records == 1_234 and stats.retried_records == flaky.throttled
    assert sorted(ids) == sorted(f"t{i}" for i in range(1_234))


def test_calls_respect_the_500_record_limit(aws_settings: Settings, fresh_stream: str) -> None:
    stats = put_records_reliably(client("kinesis", aws_settings), fresh_stream, entries(1_001))
    assert stats.calls == 3 and stats.records == 1_001


def test_gives_up_loudly_when_records_keep_failing(aws_settings: Settings, fresh_stream: str) -> None:
    flaky = ThrottlingKinesis(client("kinesis", aws_settings), failure_share=1.0, always_fail=True)
    with pytest.raises(KinesisPutError, match="still failing"):
        put_records_reliably(flaky, fresh_stream, entries(10), max_attempts=3, base_delay_s=0.001)


@pytest.fixture()
def scoreboard(ray_session: Settings) -> Any:
    from simulation.scoreboard import start_scoreboard, stop_scoreboard

    handle = start_scoreboard(ray_session)
    yield handle
    stop_scoreboard(handle)


def test_producer_actors_deliver_simulated_traffic_exactly_once(ray_session: Settings, scoreboard: Any) -> None:
    import ray

    from simulation.producers import start_producers

    before = {r["transaction_id"] for r in read_stream(ray_session, ray_session.stream_name)}
    handles, runs = start_producers(
        ray_session, tps=50_000, n_users=300, actors=2, max_records_each=700, scoreboard=scoreboard
    )
    results = ray.get(runs, timeout=300)
    for handle in handles:
        ray.kill(handle)
    records = [r for r in read_stream(ray_session, ray_session.stream_name) if r["transaction_id"] not in before]
    ids = [r["transaction_id"] for r in records]
    assert sum(r["produced"] for r in results) == 1_400
    assert len(ids) == len(set(ids)) == 1_400
    assert {r["user_id"] for r in records}, "records carry their partition key"
    assert all(set(r) >= {"transaction_id", "user_id", "merchant_id", "amount", "timestamp"} for r in records)
    assert not any({LABEL_COLUMN, SCENARIO_COLUMN} & set(r) for r in records), "no label enters Kinesis"
    truth = ray.get(scoreboard.truth_of.remote(ids))
    assert set(truth) == set(ids), "every transaction's truth went to the scoreboard"
    frauds = sum(scenario != GENUINE_SCENARIO for scenario in truth.values())
    assert frauds == sum(r["fraud_produced"] for r in results)


def _simulated_day(transaction_id: str) -> int:
    """The simulated day of a producer's transaction (ids ``p{producer}d{day}-...``); -1 for attack rows."""
    prefix = transaction_id.split("-")[0]
    return int(prefix.split("d")[1]) if "d" in prefix else -1


def test_dashboard_controls_reach_the_running_producers(ray_session: Settings, scoreboard: Any) -> None:
    """Rate and scenario mix apply to the live producers; a launched attack enters the stream from the simulated
    now on, all of it exactly once."""

    import ray

    from simulation.producers import start_producers

    before = {r["transaction_id"] for r in read_stream(ray_session, ray_session.stream_name)}
    handles, _ = start_producers(ray_session, tps=300, n_users=300, actors=2, scoreboard=scoreboard)
    try:
        ray.get([handle.set_rate.remote(200.0) for handle in handles])
        with pytest.raises(ray.exceptions.RayTaskError, match="scenario_weights"):
            ray.get(handles[0].set_scenario_mix.remote({"phishing": 1.0}))
        ray.get([handle.set_scenario_mix.remote({"card_testing": 1.0}) for handle in handles])
        wait_until(lambda: ray.get(handles[0].get_stats.remote())["produced"], timeout_s=120, what="the first put")
        launched_at = pd.Timestamp(ray.get(handles[0].get_stats.remote())["simulated_time"])
        queued = ray.get(handles[0].launch_attack.remote("cash_out", 2), timeout=120)
        shifted = ray.get([handle.set_world_shift.remote(WorldShift(share=1.0, country="ZZ")) for handle in handles])

        def produced_all() -> list[dict[str, Any]]:
            records = [
                r for r in read_stream(ray_session, ray_session.stream_name) if r["transaction_id"] not in before
            ]
            attack = [r for r in records if r["transaction_id"].startswith("p0atk1-")]
            days = {r["transaction_id"].split("-")[0] for r in records}
            later_days = [r for r in records if _simulated_day(r["transaction_id"]) >= 2]  # after the mix changed
            truth = ray.get(scoreboard.truth_of.remote([r["transaction_id"] for r in records]))
            done = (
                len(attack) >= queued
                and {"p0d3", "p1d3"} <= days
                and any(truth[r["transaction_id"]] != GENUINE_SCENARIO for r in later_days)
                and {r.get("country") for r in records if _simulated_day(r["transaction_id"]) == 3} == {"ZZ"}
            )
            return records if done else []

        records = wait_until(
            produced_all,
            timeout_s=120,
            interval_s=1.0,
            what=f"the {queued} attack rows and simulated day 3 of both producers",
        )
        attack = [r for r in records if r["transaction_id"].startswith("p0atk1-")]
        later_days = [r for r in records if _simulated_day(r["transaction_id"]) >= 2]
        truth = ray.get(scoreboard.truth_of.remote([r["transaction_id"] for r in records]))
        stats = [ray.get(handle.get_stats.remote()) for handle in handles]
    finally:
        for handle in handles:
            handle.stop.remote()
            ray.kill(handle)
    assert [s["target_tps"] for s in stats] == [200.0, 200.0]
    assert shifted == [s["world_shift"] for s in stats] == ["country ZZ on 100% of the traffic"] * 2
    assert stats[0]["attacks"] == 1 and stats[0]["attack_rows"] == queued
    ids = [r["transaction_id"] for r in attack]
    assert len(ids) == len(set(ids)) == queued
    assert {truth[tid] for tid in ids} - {GENUINE_SCENARIO} == {"cash_out"}
    assert min(pd.Timestamp(r["timestamp"]) for r in attack) >= launched_at
    assert {truth[r["transaction_id"]] for r in later_days} - {GENUINE_SCENARIO} == {"card_testing"}
