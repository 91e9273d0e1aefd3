"""The review queue's store against the embedded DynamoDB: a case per review decision opened once, a replay that
neither duplicates nor reopens, the queue's order and counts, a decision that closes a case exactly once, a case
that cannot be stored retried, logged by id and opened on the replay, and the cluster's case desk opening each case
once for callers racing with the same transactions."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cluster.aws import bootstrap
from cluster.config import Settings
from cluster.schema import Transaction
from serve.cases import CaseClosed, CaseNotFound, CaseOpener, CasesNotOpened, CaseStore, case_id, new_cases

START = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def store(aws_settings: Settings) -> tuple[CaseStore, Clock]:
    settings = aws_settings.model_copy(update={"cases_table": f"cases-{uuid.uuid4().hex[:8]}"})
    bootstrap(settings)
    clock = Clock()
    return CaseStore(settings, clock=clock), clock


def scored(
    tid: str, action: str = "review", score: float = 0.5, amount: float = 100.0, **decision: Any
) -> tuple[dict[str, Any], Transaction]:
    transaction = Transaction.model_validate(
        {
            "transaction_id": tid,
            "user_id": f"u-{tid}",
            "merchant_id": "m-cases",
            "amount": amount,
            "currency": "EUR",
            "timestamp": "2026-12-01T08:59:00Z",
        }
    )
    level = {"allow": "LOW", "review": "MEDIUM", "block": "HIGH"}[action]
    return (
        {
            "transaction_id": tid,
            "fraud_score": score,
            "is_fraud": action == "block",
            "risk_level": level,
            "factors": ["Amount 3.0x the card's 30-day average"],
            "model_version": "v1",
            "action": action,
            "rules": [],
            **decision,
        },
        transaction,
    )


def open_all(store: CaseStore, batch: list[tuple[dict[str, Any], Transaction]]) -> int:
    return store.open_many([d for d, _ in batch], [t for _, t in batch])


def test_each_review_decision_opens_one_case_with_what_an_analyst_needs(store) -> None:
    cases, _ = store
    batch = [
        scored("t1", rules=[{"id": "R1", "action": "review"}], reasons=["The amount is high for this card"]),
        scored("t2", "allow"),
        scored("t3", "block"),
        scored("t1"),
    ]
    assert open_all(cases, batch) == 1
    [case] = cases.list()
    assert case == {
        "case_id": case_id("t1"),
        "transaction_id": "t1",
        "opened_at": "2026-12-01T09:00:00.000000Z",
        "fraud_score": 0.5,
        "risk_level": "MEDIUM",
        "factors": ["Amount 3.0x the card's 30-day average"],
        "rules": [{"id": "R1", "action": "review"}],
        "action": "review",
        "status": "open",
        "user_id": "u-t1",
        "merchant_id": "m-cases",
        "amount": 100.0,
        "currency": "EUR",
        "timestamp": "2026-12-01T08:59:00.000000Z",
        "reasons": ["The amount is high for this card"],
        "anomaly_review": False,
        "anomaly_score": None,
    }
    assert cases.get(case_id("t1")) == case
    assert case_id("t1") == case_id("t1") != case_id("t2")


def test_a_replay_neither_duplicates_a_case_nor_reopens_a_closed_one(store) -> None:
    cases, clock = store
    batch = [scored(f"r{i}") for i in range(5)]
    assert open_all(cases, batch) == 5
    clock.now += timedelta(minutes=5)
    assert open_all(cases, batch) == 0, "replayed: every case was open already"
    closed = cases.decide(case_id("r2"), is_fraud=True, analyst="ana")
    clock.now += timedelta(minutes=5)
    assert open_all(cases, batch) == 0
    assert open_all(cases, batch[2:3]) == 0, "a pass of one case (put singly) does not reopen it either"
    assert cases.get(case_id("r2")) == closed and closed["status"] == "closed"
    assert sorted(c["transaction_id"] for c in cases.list("open")) == ["r0", "r1", "r3", "r4"]
    assert [c["transaction_id"] for c in cases.list("closed")] == ["r2"]
    assert {c["opened_at"] for c in cases.list("open")} == {"2026-12-01T09:00:00.000000Z"}, "first opening kept"


def test_open_cases_come_by_fraud_score_then_amount_with_the_count_and_the_oldest(store) -> None:
    cases, clock = store
    assert cases.queue() == {"cases": [], "open": 0, "oldest_open_at": None}
    open_all(cases, [scored("low", score=0.41, amount=9_000.0), scored("mid-small", score=0.6, amount=20.0)])
    clock.now += timedelta(hours=1)
    open_all(
        cases,
        [
            scored("mid-large", score=0.6, amount=999_999.5),
            scored("top", score=0.79, amount=1.0),
            scored("mid-medium", score=0.6, amount=300.25),
        ],
    )
    order = ["top", "mid-large", "mid-medium", "mid-small", "low"]
    assert [c["transaction_id"] for c in cases.list()] == order
    assert [c["transaction_id"] for c in cases.list(limit=2)] == order[:2]
    queue = cases.queue(limit=3)
    assert [c["transaction_id"] for c in queue["cases"]] == order[:3]
    assert queue["open"] == 5 and queue["oldest_open_at"] == "2026-12-01T09:00:00.000000Z"
    cases.decide(case_id("low"), is_fraud=False, analyst="ana")
    cases.decide(case_id("mid-small"), is_fraud=False, analyst="ana")
    assert cases.queue()["open"] == 3 and cases.oldest_open_at() == "2026-12-01T10:00:00.000000Z"


def test_the_anomaly_lanes_cases_come_first_by_anomaly_score(store) -> None:
    cases, _ = store
    open_all(
        cases,
        [
            scored("model-top", score=0.79),
            scored("lane-a", score=0.02, anomaly_score=0.9991, anomaly_review=True),
            scored("model-low", score=0.41),
            scored("lane-b", score=0.01, anomaly_score=0.9998, anomaly_review=True),
            scored("doubtful-and-unusual", score=0.5, anomaly_score=0.9995, anomaly_review=False),
        ],
    )
    listed = cases.list()
    assert [c["transaction_id"] for c in listed] == [
        "lane-b",
        "lane-a",
        "model-top",
        "doubtful-and-unusual",
        "model-low",
    ]
    assert [c["anomaly_review"] for c in listed] == [True, True, False, False, False]
    assert listed[0]["anomaly_score"] == 0.9998


def test_a_decision_closes_a_case_once(store) -> None:
    cases, clock = store
    open_all(cases, [scored("d1"), scored("d2")])
    clock.now += timedelta(minutes=3)
    closed = cases.decide(case_id("d1"), is_fraud=True, analyst="ana", note="card reported stolen")
    assert closed == {**cases.get(case_id("d1")), "status": "closed"}
    assert (closed["status"], closed["closed_at"], closed["analyst"], closed["is_fraud"], closed["note"]) == (
        "closed",
        "2026-12-01T09:03:00.000000Z",
        "ana",
        True,
        "card reported stolen",
    )
    with pytest.raises(CaseClosed) as raised:
        cases.decide(case_id("d1"), is_fraud=False, analyst="bob")
    assert raised.value.case == closed, "the first decision stands"
    with pytest.raises(CaseNotFound):
        cases.decide(case_id("never-opened"), is_fraud=True, analyst="ana")
    with pytest.raises(CaseNotFound):
        cases.get(case_id("never-opened"))
    clock.now += timedelta(minutes=1)
    assert "note" not in cases.decide(case_id("d2"), is_fraud=False, analyst="bob")
    assert [c["transaction_id"] for c in cases.list("closed")] == ["d2", "d1"], "latest closed first"
    assert cases.queue()["open"] == 0


def test_a_case_reopened_after_a_failed_label_can_be_decided_again(store) -> None:
    cases, clock = store
    open_all(cases, [scored("x1")])
    cases.decide(case_id("x1"), is_fraud=True, analyst="ana", note="n")
    cases.reopen(case_id("x1"))
    reopened = cases.get(case_id("x1"))
    assert reopened["status"] == "open" and not {"closed_at", "analyst", "is_fraud", "note"} & set(reopened)
    assert cases.queue()["oldest_open_at"] == reopened["opened_at"]
    assert cases.decide(case_id("x1"), is_fraud=False, analyst="bob")["analyst"] == "bob"


def test_only_review_decisions_become_cases() -> None:
    batch = [scored("a", "allow"), scored("b", "review"), scored("c", "block"), scored("b")]
    made = new_cases([d for d, _ in batch], [t for _, t in batch], START)
    assert [c["transaction_id"] for c in made] == ["b"] and "reasons" not in made[0]


def test_a_case_that_cannot_be_stored_is_retried_logged_by_id_and_opened_on_the_replay(aws_settings, caplog) -> None:
    settings = aws_settings.model_copy(update={"cases_table": f"cases-missing-{uuid.uuid4().hex[:8]}"})
    cases = CaseStore(settings)
    batch = [scored("lost-1", amount=4321.0)]
    with caplog.at_level("ERROR", logger="serve.cases"), pytest.raises(CasesNotOpened):
        open_all(cases, batch)  # no table yet: every attempt fails
    [record] = [r for r in caplog.records if r.name == "serve.cases"]
    assert "lost-1" in record.getMessage() and "4321" not in record.getMessage(), "logged by id only"
    bootstrap(settings)
    assert open_all(cases, batch) == 1, "the replay (the stream's, or a retried batch) opens it"


def test_a_batch_larger_than_one_call_opens_every_case_once(store) -> None:
    cases, _ = store
    batch = [scored(f"many-{i}", score=0.4 + i / 1000) for i in range(130)]  # 2 reads of 100, 6 writes of 25
    assert open_all(cases, batch[:7]) == 7
    assert open_all(cases, batch) == 123
    assert cases.queue(limit=200)["open"] == 130 and len(cases.list(limit=200)) == 130


def test_the_case_desk_opens_each_case_once_for_callers_racing_with_the_same_transactions(ray_session) -> None:
    settings = ray_session.model_copy(update={"cases_table": f"cases-desk-{uuid.uuid4().hex[:8]}"})
    bootstrap(settings)
    openers = [CaseOpener(settings) for _ in range(2)]  # e.g. two replicas: one desk behind both
    batch = [scored(f"race-{i}") for i in range(60)] + [scored("race-allow", "allow")]
    decisions, transactions = [d for d, _ in batch], [t for _, t in batch]
    with ThreadPoolExecutor(8) as pool:
        new = list(pool.map(lambda i: openers[i % 2].open_many(decisions[i % 3 :], transactions[i % 3 :]), range(8)))
    assert sum(new) == 60
    store = CaseStore(settings)
    assert sorted(c["transaction_id"] for c in store.list(limit=100)) == sorted(f"race-{i}" for i in range(60))
    store.decide(case_id("race-5"), is_fraud=True, analyst="ana")
    assert openers[0].open_many(decisions, transactions) == 0, "a replay: nothing new, the closed case stays closed"
    assert store.get(case_id("race-5"))["status"] == "closed"
