"""Stream scoring against the embedded Kinesis over HTTP: N produced -> exactly N decisions, through a consumer
crash and through resharding; never a second alert nor a second review case for a transaction; no ground truth in
decisions or alerts, and the simulation's scoreboard joins it back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pandas as pd
import pytest

from cluster.aws import client
from cluster.config import Settings
from cluster.kinesis import put_records_reliably, read_stream, to_entries
from cluster.waiting import wait_until
from tests.streams import drain_alerts, own_streams, stop_feature_state, subscribe_alert_queue
from training.registry import registry_for


def stream_settings(settings: Settings, shards: int) -> Settings:
    """Streams and a feature state of the test's own (``tests.streams.own_streams``)."""
    return own_streams(settings, shards)


def traffic(history: Any, rows: int, tag: str) -> pd.DataFrame:
    """The latest simulated rows (labels included, as the simulator sends them), ids made unique per test."""
    frame = history.transactions.tail(rows).reset_index(drop=True).copy()
    frame["transaction_id"] = [f"{tag}-{i}" for i in range(len(frame))]
    return frame


def produce(settings: Settings, frame: pd.DataFrame) -> None:
    put_records_reliably(client("kinesis", settings), settings.stream_name, to_entries(frame))


def wait_for_decisions(settings: Settings, expected: set[str], timeout_s: float = 240) -> list[dict[str, Any]]:
    def complete() -> list[dict[str, Any]]:
        decisions = read_stream(settings, settings.decisions_stream_name)
        return decisions if {d["transaction_id"] for d in decisions} >= expected else []

    try:
        return wait_until(complete, timeout_s=timeout_s, interval_s=1.0, what="a decision for every transaction")
    except TimeoutError:  # the caller's assertion names what is missing
        return read_stream(settings, settings.decisions_stream_name)


def ledger_ids(settings: Settings, prefix: str) -> list[str]:
    items = client("dynamodb", settings).scan(TableName=settings.alert_ledger_table)["Items"]
    return [i["transaction_id"]["S"] for i in items if i["transaction_id"]["S"].startswith(prefix)]


@pytest.fixture()
def scoring():
    started = []

    def start(settings: Settings):
        from serve.stream import StreamScoring

        started.append(StreamScoring(settings, poll_shards_s=0.5).start())
        return started[-1]

    yield start
    for stream in started:
        stream.stop()
        stop_feature_state(stream.settings)


def test_every_transaction_gets_exactly_one_decision(ray_session, champion_model, small_history, scoring) -> None:
    settings = stream_settings(ray_session, shards=2)
    frame = traffic(small_history, 600, "once")
    produce(settings, frame)
    stream = scoring(settings)
    decisions = wait_for_decisions(settings, set(frame["transaction_id"]))
    champion = registry_for(settings).resolve("champion")
    ids = [d["transaction_id"] for d in decisions]
    assert sorted(ids) == sorted(frame["transaction_id"]), "exactly N decisions, none lost, none repeated"
    assert all(0.0 <= d["fraud_score"] <= 1.0 and d["model_version"] == champion for d in decisions)
    assert {d["risk_level"] for d in decisions} <= {"LOW", "MEDIUM", "HIGH"}
    high = {d["transaction_id"] for d in decisions if d["risk_level"] == "HIGH"}
    assert sorted(ledger_ids(settings, "once-")) == sorted(high)
    # a consumer counts a batch once its decisions are written: the count may trail the decision stream a moment
    wait_until(
        lambda: sum(s.get("scored", 0) for s in stream.status()["shards"].values()) == len(frame),
        timeout_s=30,
        interval_s=0.5,
        what=lambda: f"the consumers counting {len(frame)} scored ({stream.status()})",
    )


def test_a_killed_consumer_restarts_and_nothing_is_lost_or_alerted_twice(
    ray_session, champion_model, small_history, scoring
) -> None:
    import ray

    settings = stream_settings(ray_session, shards=2)
    frame = traffic(small_history, 1_500, "crash")
    stream = scoring(settings)
    produce(settings, frame.iloc[:500])
    wait_for_decisions(settings, set(frame["transaction_id"].iloc[:100]), timeout_s=120)
    victim = next(iter(stream.consumers.values()))
    ray.kill(victim, no_restart=False)
    produce(settings, frame.iloc[500:])
    decisions = wait_for_decisions(settings, set(frame["transaction_id"]))
    assert {d["transaction_id"] for d in decisions} == set(frame["transaction_id"])
    high = {d["transaction_id"] for d in decisions if d["risk_level"] == "HIGH"}
    alerted = ledger_ids(settings, "crash-")
    assert len(alerted) == len(set(alerted)) and set(alerted) == high
    wait_until(lambda: stream.restarts >= 1, timeout_s=30, interval_s=0.5, what="the supervisor restarting it")


def test_resharding_from_two_to_four_shards_loses_nothing(ray_session, champion_model, small_history, scoring) -> None:
    settings = stream_settings(ray_session, shards=2)
    frame = traffic(small_history, 1_200, "reshard")
    stream = scoring(settings)
    produce(settings, frame.iloc[:600])
    client("kinesis", settings).update_shard_count(
        StreamName=settings.stream_name, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
    )
    produce(settings, frame.iloc[600:])
    decisions = wait_for_decisions(settings, set(frame["transaction_id"]))
    assert {d["transaction_id"] for d in decisions} == set(frame["transaction_id"])
    wait_until(
        lambda: len(stream.finished) == 2, timeout_s=30, interval_s=0.5, what="both parent shards drained and closed"
    )
    assert len(stream.consumers) >= 4


def test_decisions_and_alerts_carry_no_ground_truth_and_the_scoreboard_joins_it(
    ray_session, champion_model, small_history, scoring
) -> None:
    import ray

    from simulation.scoreboard import start_scoreboard, stop_scoreboard

    settings = stream_settings(ray_session, shards=2)
    queue = subscribe_alert_queue(settings, f"q-{uuid.uuid4().hex[:8]}")
    history = small_history.transactions
    frame = traffic(small_history, 500, "truth")
    frauds = history[history["is_fraud"] == 1].tail(40).assign(transaction_id=[f"truth-fraud-{i}" for i in range(40)])
    frame = pd.concat([frame, frauds], ignore_index=True)  # labelled, as the simulator's frames are
    board = start_scoreboard(settings)
    try:
        ray.get(board.report.remote(frame["transaction_id"].tolist(), frame["fraud_scenario"].tolist()))
        produce(settings, frame)
        scoring(settings)
        decisions = wait_for_decisions(settings, set(frame["transaction_id"]))
        assert {d["transaction_id"] for d in decisions} == set(frame["transaction_id"])
        assert not any("fraud_scenario" in d for d in decisions), "no simulator scenario in a decision"
        assert all(isinstance(d["is_fraud"], bool) for d in decisions), "is_fraud is the model's flag, not the label"

        messages = [m for m in drain_alerts(settings, queue) if m["transaction"]["transaction_id"].startswith("truth-")]
        assert {m["transaction"]["transaction_id"] for m in messages} == {
            d["transaction_id"] for d in decisions if d["risk_level"] == "HIGH"
        }
        assert not any({"is_fraud", "fraud_scenario"} & (set(m) | set(m["transaction"])) for m in messages)

        direct = (
            pd.DataFrame(decisions)
            .drop_duplicates("transaction_id")
            .merge(frame[["transaction_id", "fraud_scenario"]], on="transaction_id")
        )
        expected = {
            name: {"seen": int(len(rows)), "flagged": int(rows["is_fraud"].sum())}
            for name, rows in direct.groupby("fraud_scenario")
        }
        view = wait_until(
            lambda: (seen := ray.get(board.view.remote()))["scenarios"] == expected and seen,
            timeout_s=60,
            interval_s=1.0,
            what=f"the scoreboard's detection equal to {expected}",
        )
        assert view["window"] == {"labelled": len(frame), "truly_fraud": int(frame["is_fraud"].sum())}
    finally:
        stop_scoreboard(board)


def test_stream_decisions_follow_the_rule_set_and_its_changes(
    ray_session, champion_model, small_history, scoring
) -> None:
    from cluster.aws import bootstrap
    from serve.api import parse_rules
    from serve.rule_store import RuleStore

    settings = stream_settings(ray_session, shards=1).model_copy(
        update={"rules_table": f"rules-{uuid.uuid4().hex[:8]}"}
    )
    bootstrap(settings)  # this test's own rules table: the session's Serve app keeps its rules
    store = RuleStore(settings)
    store.put(
        parse_rules(
            {
                "mode": "first_matched",
                "rules": [
                    {"id": "S1", "expression": "amount > 0", "action": "review", "state": "shadow"},
                    {
                        "id": "B1",
                        "expression": "transaction_id in ('rules-3', 'rules-7')",
                        "action": "block",
                        "description": "two known bad ones",
                    },
                ],
            }
        )
    )
    first = traffic(small_history, 200, "rules")
    produce(settings, first)
    scoring(settings)
    decisions = {d["transaction_id"]: d for d in wait_for_decisions(settings, set(first["transaction_id"]))}
    model_action = {"LOW": "allow", "MEDIUM": "review", "HIGH": "block"}
    for tid, decision in decisions.items():
        if tid in ("rules-3", "rules-7"):
            assert decision["action"] == "block" and decision["rules"] == [{"id": "B1", "action": "block"}]
            assert decision["factors"][0] == "Rule B1: two known bad ones"
        else:
            assert decision["rules"] == [] and decision["action"] == model_action[decision["risk_level"]]

    store.put(parse_rules({"rules": [{"id": "A1", "expression": "amount > 0", "action": "allow"}]}))
    time.sleep(5.0)  # every consumer applies a change within 5 s
    second = traffic(small_history, 50, "rules-v2")
    produce(settings, second)
    later = [
        d
        for d in wait_for_decisions(settings, set(first["transaction_id"]) | set(second["transaction_id"]))
        if d["transaction_id"].startswith("rules-v2-")
    ]
    assert len(later) == 50
    assert all(d["action"] == "allow" and d["rules"] == [{"id": "A1", "action": "allow"}] for d in later)


def test_a_case_is_opened_exactly_once_under_a_stream_replay(
    ray_session, champion_model, small_history, scoring
) -> None:
    from cluster.aws import bootstrap
    from serve.api import parse_rules
    from serve.cases import CaseStore, case_id
    from serve.rule_store import RuleStore

    tag = uuid.uuid4().hex[:8]
    settings = stream_settings(ray_session, shards=1).model_copy(
        update={"rules_table": f"rules-{tag}", "cases_table": f"cases-{tag}"}
    )
    bootstrap(settings)  # this test's own rules and cases: the session's Serve app keeps its own
    RuleStore(settings).put(
        parse_rules(
            {
                "rules": [
                    {"id": "R1", "expression": "amount > 0", "action": "review", "description": "every transaction"}
                ]
            }
        )
    )
    frame = traffic(small_history, 150, "cases")
    ids = set(frame["transaction_id"])
    produce(settings, frame)
    scoring(settings)
    decisions = wait_for_decisions(settings, ids)
    assert {d["action"] for d in decisions} == {"review"}
    cases = CaseStore(settings)
    first = {c["transaction_id"]: c for c in cases.list(limit=500)}
    assert set(first) == ids, "a case per review decision, written before the checkpoint"
    closed = cases.decide(case_id("cases-7"), is_fraud=True, analyst="ana")

    produce(settings, frame)  # delivered again, as an at-least-once producer or a replayed shard does

    def replayed() -> list[dict[str, Any]]:
        seen = [
            d for d in read_stream(settings, settings.decisions_stream_name) if d["transaction_id"].startswith("cases-")
        ]
        return seen if len(seen) >= 2 * len(frame) else []

    wait_until(replayed, timeout_s=240, interval_s=1.0, what="every transaction decided a second time")
    after = {c["transaction_id"]: c for c in cases.list(limit=500)}
    assert set(after) == ids - {"cases-7"} and all(after[t] == first[t] for t in after), "no case opened again"
    assert cases.get(case_id("cases-7")) == closed, "the closed case stays closed"
    assert cases.open_count() == len(frame) - 1
    assert len(cases.list("closed", limit=500)) == 1


def test_a_deny_listed_card_is_blocked_on_the_stream_within_5_s_of_the_list_change(
    ray_session, champion_model, small_history, scoring
) -> None:
    from cluster.aws import bootstrap
    from serve.api import parse_rules
    from serve.lists import ListStore
    from serve.rule_store import RuleStore

    suffix = uuid.uuid4().hex[:8]
    settings = stream_settings(ray_session, shards=1).model_copy(
        update={"rules_table": f"rules-{suffix}", "lists_table": f"lists-{suffix}"}
    )
    bootstrap(settings)  # this test's own rules and lists: the session's Serve app keeps its own
    lists, rules = ListStore(settings), RuleStore(settings)
    try:
        lists.put("stream_blocked", "user_id", ["u-someone-else"])
        rules.put(
            parse_rules(
                {
                    "rules": [
                        {
                            "id": "DENY",
                            "expression": "user_id in @stream_blocked",
                            "action": "block",
                            "description": "card on the deny list",
                        }
                    ]
                },
                lists=lists.kinds(),
            )
        )
        first = traffic(small_history, 200, "deny-v1")
        card = first["user_id"].value_counts().index[0]
        produce(settings, first)
        scoring(settings)
        decisions = wait_for_decisions(settings, set(first["transaction_id"]))
        assert {d["transaction_id"] for d in decisions} >= set(first["transaction_id"])
        assert not any(d["rules"] for d in decisions), "the card is not listed yet"

        lists.add("stream_blocked", [card])
        changed_at = time.monotonic()
        time.sleep(max(0.0, changed_at + 5.0 - time.monotonic()))  # the contract's bound, and no longer
        second = traffic(small_history, 200, "deny-v2")
        produce(settings, second)
        expected = set(first["transaction_id"]) | set(second["transaction_id"])
        later = [d for d in wait_for_decisions(settings, expected) if d["transaction_id"].startswith("deny-v2-")]
        assert {d["transaction_id"] for d in later} == set(second["transaction_id"])
        of_card = set(second.loc[second["user_id"] == card, "transaction_id"])
        assert of_card, "the card has transactions in the second batch"
        for decision in later:
            if decision["transaction_id"] in of_card:
                assert decision["action"] == "block" and decision["rules"] == [{"id": "DENY", "action": "block"}]
                assert decision["factors"][0] == "Rule DENY: card on the deny list"
            else:
                assert decision["rules"] == [], "only the listed card is blocked by the rule"
    finally:
        dynamodb = client("dynamodb", settings)
        for table in (settings.rules_table, settings.lists_table):
            dynamodb.delete_table(TableName=table)
