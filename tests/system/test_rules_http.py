"""The rules engine over HTTP on the session's Serve app: GET/PUT /api/rules with the API key, 422 naming
``rules.N.expression``, a block rule changing ``action`` everywhere within 5 s, a shadow rule counted but never
acting, and the OpenAPI document. Each test leaves the store with no rules (the stream tests share it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cluster.config import Settings
from cluster.waiting import wait_until
from tests.conftest import API_KEY

KEY = {"X-API-Key": API_KEY}
TRANSACTION = {
    "transaction_id": "rules-1",
    "user_id": "u-rules",
    "merchant_id": "m-rules",
    "amount": 4242.5,
    "timestamp": "2026-01-22T10:00:00Z",
    "channel": "online",
    "country": "US",
}
MODEL_ACTION = {"LOW": "allow", "MEDIUM": "review", "HIGH": "block"}


@pytest.fixture()
def rules_api(served: tuple[str, Settings]) -> Iterator[str]:
    url, _ = served
    yield url
    response = requests.put(f"{url}/api/rules", json={"mode": "first_matched", "rules": []}, headers=KEY, timeout=30)
    assert response.status_code == 200, response.text


def _put(url: str, body: dict[str, Any], headers: dict[str, str] | None = KEY) -> requests.Response:
    return requests.put(f"{url}/api/rules", json=body, headers=headers, timeout=30)


def _check(url: str, tid: str, **fields: Any) -> dict[str, Any]:
    response = requests.post(
        f"{url}/api/check-fraud", json={**TRANSACTION, "transaction_id": tid, **fields}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_get_and_put_rules_with_versions_and_the_key(rules_api: str) -> None:
    url = rules_api
    current = requests.get(f"{url}/api/rules", timeout=30)
    assert current.status_code == 200
    assert set(current.json()) == {"version", "mode", "rules"}
    body = {
        "mode": "all_matched",
        "rules": [
            {
                "id": "R1",
                "expression": "amount > 1000 and user_count_1h >= 5",
                "action": "block",
                "state": "active",
                "description": "large amount in a burst",
            },
            {
                "id": "R2",
                "expression": "fraud_score >= 0.8 and country_differs_from_home == 1",
                "action": "review",
                "state": "shadow",
                "description": "abroad and risky",
            },
        ],
    }
    assert _put(url, body, headers=None).status_code == 401
    assert _put(url, body, headers={"X-API-Key": "wrong"}).status_code == 401
    stored = _put(url, body)
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"version": current.json()["version"] + 1, **body}
    assert requests.get(f"{url}/api/rules", timeout=30).json() == stored.json()
    again = _put(url, body)
    assert again.json()["version"] == stored.json()["version"] + 1


@pytest.mark.parametrize(
    "expression",
    [
        "amount.__class__",
        "__import__('os')",
        "open('/etc/passwd')",
        "9 ** 9 ** 9",
        "amount >",
        "not " * 50 + "amount",
        "unknown_name > 1",
    ],
)
def test_an_invalid_expression_is_a_422_naming_it(rules_api: str, expression: str) -> None:
    url = rules_api
    before = requests.get(f"{url}/api/rules", timeout=30).json()
    response = _put(
        url,
        {
            "rules": [
                {"id": "ok", "expression": "amount > 1", "action": "review"},
                {"id": "bad", "expression": expression, "action": "block"},
            ]
        },
    )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["rules.1.expression"]
    assert requests.get(f"{url}/api/rules", timeout=30).json() == before, "a refused rule set is not stored"


def test_a_block_rule_acts_within_5_s_and_a_shadow_rule_only_counts(rules_api: str) -> None:
    url = rules_api
    baseline = _check(url, "rules-before")
    assert baseline["action"] == MODEL_ACTION[baseline["risk_level"]] and baseline["rules"] == []
    counts_before = requests.get(f"{url}/api/rules/stats", timeout=30).json()["rule_matches"].get("S1", {})
    stored = _put(
        url,
        {
            "mode": "first_matched",
            "rules": [
                {
                    "id": "S1",
                    "expression": "amount > 0",
                    "action": "block",
                    "state": "shadow",
                    "description": "everything",
                },
                {
                    "id": "B1",
                    "expression": "amount > 4242 and amount < 4243 and country == 'US'",
                    "action": "block",
                    "description": "the test amount",
                },
                {"id": "D1", "expression": "amount > 0", "action": "block", "state": "disabled"},
            ],
        },
    )
    assert stored.status_code == 200, stored.text
    put_at = time.monotonic()

    def blocked_everywhere() -> bool:  # several requests, so every ingress replica answers at least once
        return all(_check(url, f"rules-b-{i}")["action"] == "block" for i in range(8))

    wait_until(blocked_everywhere, timeout_s=5.0, interval_s=0.1, what="the block rule applied on every replica")
    assert time.monotonic() - put_at < 5.0
    decision = _check(url, "rules-block")
    assert decision["action"] == "block" and decision["rules"] == [{"id": "B1", "action": "block"}]
    assert decision["factors"][0] == "Rule B1: the test amount"

    other = _check(url, "rules-other", amount=12.0)
    assert other["rules"] == [] and other["action"] == MODEL_ACTION[other["risk_level"]], "shadow rules never act"
    assert not any(f.startswith("Rule ") for f in other["factors"])
    batch = requests.post(
        f"{url}/api/check-fraud/batch",
        json={
            "transactions": [
                {**TRANSACTION, "transaction_id": "rules-batch-0"},
                {**TRANSACTION, "transaction_id": "rules-batch-1", "amount": 12.0},
            ]
        },
        timeout=30,
    ).json()["results"]
    assert [d["rules"] for d in batch] == [[{"id": "B1", "action": "block"}], []]

    def shadow_counted() -> bool:
        counts = requests.get(f"{url}/api/rules/stats", timeout=30).json()["rule_matches"]
        return counts.get("S1", {}).get("shadow", 0) - counts_before.get("shadow", 0) >= 12 and "D1" not in counts

    wait_until(shadow_counted, timeout_s=30, interval_s=0.5, what="the shadow rule's matches counted")


def test_rules_are_in_the_openapi_document(served: tuple[str, Settings]) -> None:
    url, _ = served
    schema = requests.get(f"{url}/openapi.json", timeout=30).json()
    rules = schema["paths"]["/api/rules"]
    assert "get" in rules and "put" in rules
    assert {"200", "401", "422"} <= set(rules["put"]["responses"])
    assert "expression" in str(rules["put"]["requestBody"])
    decision = schema["components"]["schemas"]["Decision"]["properties"]
    assert {"action", "rules"} <= set(decision)


def test_a_deny_listed_card_is_blocked_within_5_s_and_released_when_removed(rules_api: str) -> None:
    url = rules_api
    name = f"blocked_cards_{int(time.time() * 1000)}"
    card = f"u-denied-{name[-6:]}"
    listed = requests.put(
        f"{url}/api/lists/{name}", json={"kind": "user_id", "values": ["u-other"]}, headers=KEY, timeout=30
    )
    assert listed.status_code == 200, listed.text
    assert (
        _put(
            url,
            {
                "mode": "first_matched",
                "rules": [
                    {
                        "id": "DENY",
                        "expression": f"user_id in @{name}",
                        "action": "block",
                        "state": "active",
                        "description": "card on the deny list",
                    }
                ],
            },
        ).status_code
        == 200
    )
    assert _check(url, "deny-before", user_id=card)["rules"] == []
    added = requests.post(f"{url}/api/lists/{name}/items", json={"values": [card]}, headers=KEY, timeout=30)
    assert added.status_code == 200, added.text
    listed_at = time.monotonic()
    decision = wait_until(
        lambda: (d := _check(url, f"deny-{time.monotonic_ns()}", user_id=card))["rules"] and d,
        timeout_s=5,
        interval_s=0.25,
        what="the listed card blocked",
    )
    assert time.monotonic() - listed_at <= 5
    assert decision["action"] == "block" and decision["rules"] == [{"id": "DENY", "action": "block"}]
    assert decision["factors"][0] == "Rule DENY: card on the deny list"
    lists = requests.get(f"{url}/api/lists", timeout=30).json()["lists"]
    assert {"name": name, "kind": "user_id", "size": 2} in lists
    removed = requests.delete(f"{url}/api/lists/{name}/items/{card}", headers=KEY, timeout=30)
    assert removed.status_code == 200, removed.text
    wait_until(
        lambda: _check(url, f"deny-after-{time.monotonic_ns()}", user_id=card)["rules"] == [],
        timeout_s=5,
        interval_s=0.25,
        what="the card released once removed from the list",
    )


def test_a_ttl_item_blocks_until_it_expires(rules_api: str) -> None:
    url = rules_api
    name = f"brief_cards_{int(time.time() * 1000)}"
    card, ttl_s = f"u-brief-{name[-6:]}", 8.0
    listed = requests.put(
        f"{url}/api/lists/{name}", json={"kind": "user_id", "values": ["u-kept"]}, headers=KEY, timeout=30
    )
    assert listed.status_code == 200, listed.text
    assert (
        _put(
            url,
            {
                "mode": "first_matched",
                "rules": [
                    {
                        "id": "BRIEF",
                        "expression": f"user_id in @{name}",
                        "action": "block",
                        "description": "briefly denied",
                    }
                ],
            },
        ).status_code
        == 200
    )
    before_add = time.time()
    added = requests.post(
        f"{url}/api/lists/{name}/items", json={"values": [card], "ttl_s": ttl_s}, headers=KEY, timeout=30
    )
    assert added.status_code == 200, added.text

    def decided(tag: str) -> dict[str, Any]:
        return _check(url, f"ttl-{tag}-{time.monotonic_ns()}", user_id=card)

    blocked = wait_until(
        lambda: (d := decided("in"))["rules"] and d,
        timeout_s=5,
        interval_s=0.25,
        what="the card blocked while its item lives",
    )
    assert blocked["action"] == "block" and blocked["rules"] == [{"id": "BRIEF", "action": "block"}]
    wait_until(
        lambda: decided("out")["rules"] == [],
        timeout_s=ttl_s + 10,
        interval_s=0.25,
        what="the card released once its item expired",
    )
    assert time.time() >= before_add + ttl_s, "released only once the item's ttl_s had passed"
    sizes = {entry["name"]: entry["size"] for entry in requests.get(f"{url}/api/lists", timeout=30).json()["lists"]}
    assert sizes[name] == 1, "the expired value is no longer counted; the one without ttl_s stays"
    assert _check(url, f"ttl-kept-{time.monotonic_ns()}", user_id="u-kept")["rules"] == [
        {"id": "BRIEF", "action": "block"}
    ]
