"""Allow/deny lists: the DynamoDB store (embedded moto), the cache's TTL and staleness, and rules reading lists."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cluster.aws import LIST_EXPIRY_ATTRIBUTE, bootstrap, client
from cluster.features import FEATURE_NAMES
from serve.api import (
    MAX_LIST_VALUES,
    ApiError,
    parse_list,
    parse_list_items,
    parse_list_name,
    parse_list_value,
    parse_rules,
)
from serve.lists import ListCache, ListStore
from serve.rule_store import RuleCache, RuleStore
from serve.scoring import apply_rules
from training.rules import CompiledRules, ListValues, RuleError, RuleSet, compile_expression


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _settings(aws_settings):
    return aws_settings.model_copy(update={"rules_refresh_s": 0.05})


def test_put_add_remove_and_summary(aws_settings) -> None:
    store = ListStore(_settings(aws_settings))
    first = store.put("t_blocked", "user_id", ["u1", "u2", "u3"])
    assert sorted(store.values("t_blocked")) == ["u1", "u2", "u3"]
    second = store.put("t_blocked", "user_id", ["u2", "u4"])  # a put replaces the list
    assert second.version == first.version + 1
    assert sorted(store.values("t_blocked")) == ["u2", "u4"]
    store.add("t_blocked", ["u5", "u2"])
    assert sorted(store.values("t_blocked")) == ["u2", "u4", "u5"]
    assert store.remove("t_blocked", "u4") is True and store.remove("t_blocked", "nope") is False
    assert {"name": "t_blocked", "kind": "user_id", "size": 2} in store.summary()
    with pytest.raises(KeyError):
        store.add("t_missing", ["u1"])
    with pytest.raises(ValueError):
        store.put("t_bad", "email", ["x"])


def test_a_large_list_reads_back_through_pages(aws_settings) -> None:
    store = ListStore(_settings(aws_settings))
    values = [f"m{i:05d}" for i in range(3_000)]
    store.put("t_large", "merchant_id", values)
    assert sorted(store.values("t_large")) == values  # moto pages a Query at 1 MB, so keep this honest
    cache = ListCache(_settings(aws_settings), store)
    assert len(cache.current().values["t_large"]) == 3_000


def test_a_ttl_value_expires_at_read_time(aws_settings) -> None:
    clock = Clock()
    store = ListStore(_settings(aws_settings), clock=clock)
    store.put("t_ttl", "device_id", ["d-forever"])
    store.add("t_ttl", ["d-brief"], ttl_s=60)
    cache = ListCache(_settings(aws_settings), store)
    assert sorted(cache.current().values["t_ttl"]) == ["d-brief", "d-forever"]
    clock.now += 61  # no refresh needed: the cache re-filters when the next expiry passes
    assert cache.current().values["t_ttl"].tolist() == ["d-forever"]
    assert store.values("t_ttl") == ["d-forever"]
    assert {"name": "t_ttl", "kind": "device_id", "size": 1} in store.summary()


def test_the_lists_table_has_dynamodb_ttl_on_the_expiry_attribute(aws_settings) -> None:
    """Read-time filtering hides an expired value; the table's TTL is what deletes it on real AWS."""
    bootstrap(aws_settings)  # a second bootstrap leaves the enabled TTL as it is (AWS refuses enabling it twice)
    description = client("dynamodb", aws_settings).describe_time_to_live(TableName=aws_settings.lists_table)[
        "TimeToLiveDescription"
    ]
    assert description == {"TimeToLiveStatus": "ENABLED", "AttributeName": LIST_EXPIRY_ATTRIBUTE}
    ListStore(aws_settings).put("t_ttl_attr", "user_id", ["u-brief"], ttl_s=60)
    item = client("dynamodb", aws_settings).get_item(
        TableName=aws_settings.lists_table, Key={"list": {"S": "t_ttl_attr"}, "value": {"S": "u-brief"}}
    )["Item"]
    assert float(item[LIST_EXPIRY_ATTRIBUTE]["N"]) > time.time() + 50


def test_the_cache_follows_writes_within_its_refresh(aws_settings) -> None:
    settings = _settings(aws_settings)
    store = ListStore(settings)
    store.put("t_follow", "country", ["RU"])
    cache = ListCache(settings, store)
    patient = ListCache(settings.model_copy(update={"rules_refresh_s": 3_600.0}), store)
    before, patient_before = cache.current(), patient.current()
    assert before.kinds["t_follow"] == "country" and before.values["t_follow"].tolist() == ["RU"]
    store.add("t_follow", ["KP"])
    assert patient.current() is patient_before  # bounded staleness: not re-read before the refresh interval
    time.sleep(0.1)
    assert sorted(cache.current().values["t_follow"]) == ["KP", "RU"]


def test_a_list_must_be_tested_by_the_field_of_its_kind() -> None:
    lists = {"cards": "user_id", "shops": "merchant_id"}
    assert compile_expression("user_id in @cards", lists=lists).lists == {"cards"}
    compile_expression("merchant_id not in @shops and amount > 5", lists=lists)
    for text in ("merchant_id in @cards", "country in @cards", "amount in @cards", "user_id in @unknown"):
        with pytest.raises(RuleError):
            compile_expression(text, lists=lists)
    # a stored rule set reads back without its lists at hand, but the field must still be one a list can hold
    RuleSet.model_validate({"rules": [{"id": "R1", "expression": "user_id in @cards", "action": "block"}]})
    with pytest.raises(ValueError):
        RuleSet.model_validate({"rules": [{"id": "R1", "expression": "channel in @cards", "action": "block"}]})


def test_list_membership_by_binary_search_equals_isin() -> None:
    values = np.array([f"u{i:06d}" for i in range(0, 200_000, 2)], dtype=str)  # 100k, unsorted below
    listed = ListValues(np.random.default_rng(1).permutation(values))
    probe = np.array([f"u{i:06d}" for i in range(0, 1_000)] + ["", "u999999", "a", "zzz", "u"], dtype=str)
    assert len(listed) == 100_000
    assert (listed.contains(probe) == np.isin(probe, values)).all()
    assert (listed.contains(probe, invert=True) == ~np.isin(probe, values)).all()
    empty = ListValues([])
    assert not empty.contains(probe).any() and empty.contains(probe, invert=True).all()


def _decisions(levels: list[str]) -> list[dict]:
    return [
        {"fraud_score": 0.1, "risk_level": level, "action": "allow", "rules": [], "factors": []} for level in levels
    ]


def test_a_deny_listed_card_gets_the_rules_action_vectorised() -> None:
    rule_set = RuleSet.model_validate(
        {
            "version": 1,
            "mode": "all_matched",
            "rules": [
                {"id": "DENY", "expression": "user_id in @blocked_cards", "action": "block"},
                {
                    "id": "ALLOW",
                    "expression": "merchant_id in @trusted and user_id not in @blocked_cards",
                    "action": "allow",
                },
            ],
        }
    )
    compiled = CompiledRules(rule_set, lists={"blocked_cards": "user_id", "trusted": "merchant_id"})
    compiled = compiled.with_values({"blocked_cards": np.array(["u1", "u3"]), "trusted": np.array(["m9"])})
    rows = 1_000
    users = np.array([f"u{i % 5}" for i in range(rows)], dtype=object)
    merchants = np.array(["m9" if i % 2 else "m1" for i in range(rows)], dtype=object)
    decisions = _decisions(["MEDIUM"] * rows)
    counts = apply_rules(
        compiled,
        decisions,
        {"user_id": users, "merchant_id": merchants},
        np.zeros((rows, len(FEATURE_NAMES)), np.float32),
    )
    blocked = np.isin(users, ["u1", "u3"])
    trusted = (merchants == "m9") & ~blocked
    actions = np.array([d["action"] for d in decisions])
    assert (actions[blocked] == "block").all() and (actions[trusted] == "allow").all()
    assert (actions[~blocked & ~trusted] == "review").all()
    assert counts["DENY"] == {"active": int(blocked.sum())}
    assert decisions[1]["rules"] == [{"id": "DENY", "action": "block"}]
    # a list that is empty (or not yet read) matches nothing
    empty = CompiledRules(rule_set, lists={"blocked_cards": "user_id", "trusted": "merchant_id"})
    decisions = _decisions(["LOW"] * rows)
    apply_rules(
        empty, decisions, {"user_id": users, "merchant_id": merchants}, np.zeros((rows, len(FEATURE_NAMES)), np.float32)
    )
    assert {d["action"] for d in decisions} == {"allow"} and not any(d["rules"] for d in decisions)


def test_the_rule_cache_applies_stored_rules_with_the_stored_lists(aws_settings) -> None:
    settings = _settings(aws_settings)
    lists = ListStore(settings)
    lists.put("t_deny", "user_id", ["u-bad"])
    rules = RuleStore(settings)
    stored = rules.put(
        RuleSet.model_validate({"rules": [{"id": "DENYLIST", "expression": "user_id in @t_deny", "action": "block"}]})
    )
    cache = RuleCache(settings, rules, ListCache(settings, lists))
    current = cache.current()
    assert current.version == stored.version and current.list_kinds["t_deny"] == "user_id"
    decisions = _decisions(["LOW", "LOW"])
    apply_rules(
        current,
        decisions,
        {"user_id": np.array(["u-bad", "u-ok"], dtype=object)},
        np.zeros((2, len(FEATURE_NAMES)), np.float32),
    )
    assert [d["action"] for d in decisions] == ["block", "allow"]
    lists.add("t_deny", ["u-ok"])
    time.sleep(0.1)
    decisions = _decisions(["LOW", "LOW"])
    apply_rules(
        cache.current(),
        decisions,
        {"user_id": np.array(["u-bad", "u-ok"], dtype=object)},
        np.zeros((2, len(FEATURE_NAMES)), np.float32),
    )
    assert [d["action"] for d in decisions] == ["block", "block"]
    rules.put(RuleSet.model_validate({"rules": []}))  # leave the shared rule set empty for other tests


def test_a_put_rule_set_is_checked_against_the_stored_lists() -> None:
    body = {
        "rules": [
            {"id": "R1", "expression": "amount > 1", "action": "review"},
            {"id": "R2", "expression": "merchant_id in @cards", "action": "block"},
        ]
    }
    assert parse_rules(body).rules[1].id == "R2"  # without the lists at hand: only the field is checked
    with pytest.raises(ApiError) as kind:
        parse_rules(body, lists={"cards": "user_id"})
    assert [e["field"] for e in kind.value.errors] == ["rules.1.expression"]
    assert "user_id in @cards" in kind.value.errors[0]["message"]
    with pytest.raises(ApiError) as unknown:
        parse_rules(body, lists={})
    assert "unknown list @cards" in unknown.value.errors[0]["message"]
    assert parse_rules(body, lists={"cards": "merchant_id"}).rules[1].expression == "merchant_id in @cards"


def test_list_bodies_are_validated_and_size_limited() -> None:
    body = parse_list({"kind": "country", "values": ["US", "GB", "US"], "ttl_s": 60})
    assert (body.kind, body.values, body.ttl_s) == ("country", ["US", "GB"], 60)
    assert parse_list({"kind": "user_id", "values": []}).values == []  # a put may empty a list
    cases = [
        ({"kind": "email", "values": []}, "kind"),
        ({"kind": "country", "values": ["US", "usa"]}, "values.1"),
        ({"kind": "user_id", "values": ["ok", "not ok"]}, "values.1"),
        ({"kind": "user_id", "values": [7]}, "values.0"),
        ({"kind": "user_id", "values": ["x" * 65]}, "values.0"),
        ({"kind": "user_id", "values": ["u1"], "ttl_s": 0}, "ttl_s"),
        ({"kind": "user_id", "values": ["u1"] * (MAX_LIST_VALUES + 1)}, "values"),
        ({"kind": "user_id"}, "values"),
        (["u1"], "body"),
    ]
    for payload, field in cases:
        with pytest.raises(ApiError) as invalid:
            parse_list(payload)
        assert invalid.value.status == 422 and invalid.value.errors[0]["field"] == field, payload
    items = parse_list_items({"values": ["m1", "m2"], "ttl_s": 3600}, "merchant_id")
    assert (items.values, items.ttl_s) == (["m1", "m2"], 3600)
    for payload, kind, field in (
        ({"values": []}, "user_id", "values"),
        ({"values": ["GB", "x"]}, "country", "values.1"),
        ({"values": ["d1"], "ttl_s": -5}, "device_id", "ttl_s"),
    ):
        with pytest.raises(ApiError) as invalid:
            parse_list_items(payload, kind)
        assert invalid.value.errors[0]["field"] == field
    assert parse_list_name("blocked_cards") == "blocked_cards" and parse_list_value("u-1", "user_id") == "u-1"
    for bad in ("#lists", "", "a/b", "x" * 65):
        with pytest.raises(ApiError):
            parse_list_name(bad)
    with pytest.raises(ApiError) as value:
        parse_list_value("usa", "country")
    assert value.value.errors[0]["field"] == "value"
