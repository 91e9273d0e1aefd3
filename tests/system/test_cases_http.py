"""The review queue over HTTP on the session's Serve app: review decisions (forced by a rule) open one case each,
listed by risk; an analyst's decision closes a case once (the API key, 404, 409, 422 naming the field) and its
label reaches merchant risk for the transactions that follow, as feedback does. Each test leaves the store with no
rules (the other system tests share it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from ray import serve

from cluster.config import Settings
from cluster.schema import format_timestamp
from cluster.waiting import wait_until
from serve.api import MAX_ANALYST_CHARS, MAX_NOTE_CHARS
from serve.app import build_app
from serve.cases import CaseStore, case_id
from serve.champion import FEEDBACK_PREFIX, TRANSACTIONS_PREFIX, read_log
from tests.conftest import API_KEY

KEY = {"X-API-Key": API_KEY}
REVIEW_AMOUNT = 7000.5  # the review rule's amounts: 7000 < amount < 7001
PROBE_AMOUNT = 5000.5  # the merchant rule's: 5000 < amount < 5001
RULES = {
    "mode": "first_matched",
    "rules": [
        {
            "id": "MERCHANT",
            "expression": "merchant_fraud_count_7d >= 1 and amount > 5000 and amount < 5001",
            "action": "block",
            "description": "merchant with a confirmed fraud",
        },
        {
            "id": "REVIEW",
            "expression": "amount > 7000 and amount < 7001",
            "action": "review",
            "description": "amount for a human",
        },
    ],
}


@pytest.fixture()
def review_api(served: tuple[str, Settings]) -> Iterator[str]:
    """The app with the rules above applied on every replica."""
    url, _ = served
    assert requests.put(f"{url}/api/rules", json=RULES, headers=KEY, timeout=30).status_code == 200
    wait_until(
        lambda: all(
            _check(url, f"warm-{uuid.uuid4().hex[:12]}")["rules"] == [{"id": "REVIEW", "action": "review"}]
            for _ in range(8)
        ),
        timeout_s=10,
        interval_s=0.2,
        what="the review rule applied on every replica",
    )
    yield url
    response = requests.put(f"{url}/api/rules", json={"mode": "first_matched", "rules": []}, headers=KEY, timeout=30)
    assert response.status_code == 200, response.text


def _at(minutes: float) -> str:
    return format_timestamp(datetime.now(timezone.utc) + timedelta(minutes=minutes))


def _transaction(tid: str, **fields: Any) -> dict[str, Any]:
    return {
        "transaction_id": tid,
        "user_id": f"u-{tid}",
        "merchant_id": "m-cases",
        "amount": REVIEW_AMOUNT,
        "currency": "EUR",
        "timestamp": _at(-1),
        "channel": "online",
        "country": "DE",
        **fields,
    }


def _check(url: str, tid: str, **fields: Any) -> dict[str, Any]:
    response = requests.post(f"{url}/api/check-fraud", json=_transaction(tid, **fields), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _cases(url: str, **params: Any) -> dict[str, Any]:
    response = requests.get(f"{url}/api/cases", params={"limit": 500, **params}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _opened(url: str, tids: set[str]) -> dict[str, dict[str, Any]]:
    """The open cases of ``tids`` once every one is listed (opening does not hold up the answer)."""

    def listed() -> dict[str, dict[str, Any]]:
        mine = {c["transaction_id"]: c for c in _cases(url)["cases"] if c["transaction_id"] in tids}
        return mine if set(mine) == tids else {}

    return wait_until(listed, timeout_s=30, interval_s=0.25, what=f"a case for each of {sorted(tids)}")


def _decide(url: str, case: str, body: Any, headers: dict[str, str] | None = KEY) -> requests.Response:
    return requests.post(f"{url}/api/cases/{case}/decision", json=body, headers=headers, timeout=30)


def test_each_review_decision_opens_one_case_listed_by_risk(review_api: str) -> None:
    url = review_api
    tag = uuid.uuid4().hex[:8]
    tids = [f"case-{tag}-{i}" for i in range(4)]
    decisions = {tid: _check(url, tid, amount=REVIEW_AMOUNT + i * 0.1) for i, tid in enumerate(tids)}
    assert all(
        d["action"] == "review" and d["rules"] == [{"id": "REVIEW", "action": "review"}] for d in decisions.values()
    )
    again = _check(url, tids[0], amount=REVIEW_AMOUNT)  # a client's retry
    batch = requests.post(
        f"{url}/api/check-fraud/batch",
        timeout=30,
        json={
            "transactions": [
                _transaction(tids[1], amount=REVIEW_AMOUNT + 0.1),
                _transaction(tids[1], amount=REVIEW_AMOUNT + 0.1),
            ]
        },
    )
    assert batch.status_code == 200 and again["action"] == "review"
    allowed = _check(url, f"case-{tag}-small", amount=12.0)
    cases = _opened(url, set(tids))

    queue = _cases(url)
    listed = [c["transaction_id"] for c in queue["cases"]]
    assert all(listed.count(tid) == 1 for tid in tids), "one case per transaction_id, retries included"
    if allowed["action"] != "review":
        assert allowed["transaction_id"] not in listed
    ranks = [
        (c["anomaly_review"], c["anomaly_score"] if c["anomaly_review"] else c["fraud_score"], c["amount"])
        for c in queue["cases"]
    ]
    assert ranks == sorted(ranks, reverse=True), "the anomaly lane's first, then by fraud score, then amount"
    assert queue["open"] >= len(tids) and queue["oldest_open_at"] <= min(c["opened_at"] for c in cases.values())
    for i, tid in enumerate(tids):
        case, decision = cases[tid], decisions[tid]
        assert case["case_id"] == case_id(tid) and case["status"] == "open"
        assert {k: case[k] for k in ("fraud_score", "risk_level", "factors", "rules", "action")} == {
            k: decision[k] for k in ("fraud_score", "risk_level", "factors", "rules", "action")
        }
        assert (case["user_id"], case["merchant_id"], case["amount"], case["currency"]) == (
            f"u-{tid}",
            "m-cases",
            REVIEW_AMOUNT + i * 0.1,
            "EUR",
        )
        assert "closed_at" not in case and "analyst" not in case
    assert len(_cases(url, limit=2)["cases"]) == 2


def test_an_analyst_decision_closes_a_case_once_with_the_key(review_api: str) -> None:
    url = review_api
    tid = f"case-{uuid.uuid4().hex[:8]}"
    _check(url, tid)
    case = _opened(url, {tid})[tid]["case_id"]
    label = {"is_fraud": True, "analyst": "ana", "note": "cardholder confirmed"}
    assert _decide(url, case, label, headers=None).status_code == 401
    wrong = _decide(url, case, label, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["errors"][0]["field"] == "X-API-Key"
    for body, field in (
        ({"is_fraud": "yes", "analyst": "ana"}, "is_fraud"),
        ({"analyst": "ana"}, "is_fraud"),
        ({"is_fraud": True}, "analyst"),
        ({"is_fraud": True, "analyst": ""}, "analyst"),
        ({"is_fraud": True, "analyst": "   "}, "analyst"),
        ({"is_fraud": True, "analyst": "a" * (MAX_ANALYST_CHARS + 1)}, "analyst"),
        ({"is_fraud": True, "analyst": "ana", "note": "n" * (MAX_NOTE_CHARS + 1)}, "note"),
        ({"is_fraud": True, "analyst": "ana", "note": 5}, "note"),
        ([label], "body"),
    ):
        response = _decide(url, case, body)
        assert response.status_code == 422, (body, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field], response.text
    assert requests.post(f"{url}/api/cases/{case}/decision", data=b"{", headers=KEY, timeout=30).status_code == 400
    unknown = _decide(url, case_id(f"never-{tid}"), label)
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "case_id"
    malformed = _decide(url, "not-a-case", label)
    assert malformed.status_code == 422 and malformed.json()["errors"][0]["field"] == "path.case_id"
    assert _cases(url)["open"] >= 1

    closed = _decide(url, case, label)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert (
        body["case_id"],
        body["transaction_id"],
        body["status"],
        body["is_fraud"],
        body["analyst"],
        body["note"],
    ) == (case, tid, "closed", True, "ana", "cardholder confirmed")
    assert body["closed_at"] >= body["opened_at"]
    again = _decide(url, case, {"is_fraud": False, "analyst": "bob"})
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "case_id"
    assert tid not in {c["transaction_id"] for c in _cases(url)["cases"]}
    assert body in _cases(url, status="closed")["cases"], "the first decision stands"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "pending"}, "query.status"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
    ],
)
def test_bad_queue_queries_are_a_422_naming_the_field(
    served: tuple[str, Settings], params: dict[str, Any], field: str
) -> None:
    url, _ = served
    response = requests.get(f"{url}/api/cases", params=params, timeout=30)
    assert response.status_code == 422 and [e["field"] for e in response.json()["errors"]] == [field]


def test_an_analyst_decision_changes_merchant_risk_for_later_transactions(
    served: tuple[str, Settings], review_api: str
) -> None:
    url, settings = served
    tag = uuid.uuid4().hex[:8]
    merchant, tid = f"m-{tag}", f"case-{tag}"
    _check(url, tid, merchant_id=merchant)
    case = _opened(url, {tid})[tid]["case_id"]
    before = _check(url, f"probe-{tag}-0", merchant_id=merchant, amount=PROBE_AMOUNT, timestamp=_at(1))
    assert before["rules"] == [], "no confirmed fraud at the merchant yet"
    assert _decide(url, case, {"is_fraud": True, "analyst": "ana"}).status_code == 200
    after = _check(url, f"probe-{tag}-1", merchant_id=merchant, amount=PROBE_AMOUNT, timestamp=_at(2))
    assert after["rules"] == [{"id": "MERCHANT", "action": "block"}], "the label counts for the merchant at once"
    assert after["factors"][0] == "Rule MERCHANT: merchant with a confirmed fraud"
    other = _check(url, f"probe-{tag}-2", merchant_id=f"m-other-{tag}", amount=PROBE_AMOUNT, timestamp=_at(2))
    assert other["rules"] == [], "only that merchant"
    labels = read_log(settings, FEEDBACK_PREFIX)
    assert set(labels[labels["transaction_id"] == tid]["is_fraud"]) == {1}, "stored like feedback, for retraining"


def test_cases_are_in_the_openapi_document(served: tuple[str, Settings]) -> None:
    url, _ = served
    paths = requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    listing, decision = paths["/api/cases"]["get"], paths["/api/cases/{case_id}/decision"]["post"]
    assert {p["name"] for p in listing["parameters"]} == {"status", "limit"} and "422" in listing["responses"]
    assert decision["security"] == [{"ApiKey": []}]
    assert {"200", "401", "404", "409", "422"} <= set(decision["responses"])
    assert "analyst" in str(decision["requestBody"])


def test_a_replica_stopped_right_after_answering_still_opens_its_cases_and_keeps_its_transactions(
    review_api: str, served: tuple[str, Settings]
) -> None:
    """Serve calls the ingress' ``__del__`` once a stopping replica has drained: the cases still on its pool and
    the transactions in its log buffer (written every few seconds) reach their stores before the process ends."""
    _, settings = served
    serve.run(build_app(settings), name="drain-test", route_prefix="/drain")
    url = f"http://{settings.api_host}:{settings.api_port}/drain"
    wait_until(
        lambda: requests.get(f"{url}/healthz", timeout=30).status_code == 200,
        timeout_s=120,
        interval_s=0.5,
        what="the second app healthy",
    )
    wait_until(
        lambda: _check(url, f"warm-{uuid.uuid4().hex[:12]}")["action"] == "review",
        timeout_s=30,
        interval_s=0.5,
        what="the review rule on the second app",
    )
    ids = [f"drain-{uuid.uuid4().hex[:12]}" for _ in range(20)]
    assert all(_check(url, tid)["action"] == "review" for tid in ids)
    serve.delete("drain-test")  # at once: well within the replica's log-flush interval

    store = CaseStore(settings)
    assert all(store.get(case_id(tid))["status"] == "open" for tid in ids)
    logged = set(read_log(settings, TRANSACTIONS_PREFIX)["transaction_id"])
    assert set(ids) <= logged, f"{len(set(ids) - logged)} of {len(ids)} transactions not kept"
