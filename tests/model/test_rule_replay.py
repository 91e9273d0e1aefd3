"""``fraudctl rules test`` on a simulated history: per-rule figures equal a direct count over the causal features,
scores come from the champion, and without one the rules that need it are skipped with a reason."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cluster import config
from cluster.config import Settings
from cluster.datasets import write_transactions
from cluster.features import build_features
from cluster.profiles import profile_paths
from fraudctl.cli import app
from tests.conftest import train_small_bundle

RULES = {
    "mode": "all_matched",
    "rules": [
        {"id": "R1", "expression": "amount > 300", "action": "block", "description": "large"},
        {
            "id": "R2",
            "expression": "user_count_24h >= 4 and channel == 'online'",
            "action": "review",
            "state": "shadow",
        },
        {"id": "R3", "expression": "fraud_score >= 0.5", "action": "block", "state": "disabled"},
    ],
}


@pytest.fixture(scope="module")
def history_file(small_history, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "history.parquet"
    write_transactions(small_history.transactions, out)
    users, merchants = profile_paths(out)
    small_history.users.to_parquet(users, index=False)
    small_history.merchants.to_parquet(merchants, index=False)
    return out


def _run(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str):
    monkeypatch.setattr(config, "_current", settings)
    return CliRunner().invoke(app, ["rules", "test", *args])


def test_rule_figures_match_a_direct_count_over_causal_features(
    small_history, history_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(aws_mode="embedded", data_dir=tmp_path / "data")
    champion = train_small_bundle(settings, small_history)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "mode: all_matched\nrules:\n"
        + "".join(
            f'  - id: {r["id"]}\n    expression: "{r["expression"]}"\n    action: {r["action"]}\n'
            f"    state: {r.get('state', 'active')}\n"
            for r in RULES["rules"]
        )
    )
    result = _run(
        settings,
        monkeypatch,
        "--rules",
        str(rules),
        "--data",
        str(history_file),
        "--delay-days",
        "7",
        "--start",
        "2026-01-08",
        "--days",
        "10",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"]["version"] == champion and summary["skipped"] == []

    transactions = small_history.transactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    features = build_features(
        transactions, label_delay=timedelta(days=7), users=small_history.users, merchants=small_history.merchants
    )
    start = np.datetime64("2026-01-08")
    ts = transactions["timestamp"].dt.tz_localize(None).to_numpy()
    window = (ts >= start) & (ts < start + np.timedelta64(10, "D"))
    fraud = transactions["is_fraud"].to_numpy(bool)[window]
    assert summary["rows"] == window.sum() and summary["frauds"] == fraud.sum()
    expected = {
        "R1": (transactions["amount"].to_numpy() > 300)[window],
        "R2": ((features["user_count_24h"].to_numpy() >= 4) & (transactions["channel"].to_numpy() == "online"))[window],
    }
    for rule_id, matched in expected.items():
        figures = summary["rules"][rule_id]
        assert figures["matched"] == matched.sum() > 0
        assert (figures["frauds"], figures["genuine"]) == ((matched & fraud).sum(), (matched & ~fraud).sum())
        assert figures["precision"] == pytest.approx((matched & fraud).sum() / matched.sum(), abs=1e-5)
        amount = transactions["amount"].to_numpy()[window]
        assert figures["fraud_amount"] == pytest.approx(amount[matched & fraud].sum(), abs=0.01)
        assert figures["genuine_amount"] == pytest.approx(amount[matched & ~fraud].sum(), abs=0.01)
        assert len(figures["per_day"]) == 10
        assert sum(day["matched"] for day in figures["per_day"].values()) == figures["matched"]
        assert set(figures["model_overlap"]) == {
            "also_flagged_by_model",
            "frauds_the_model_missed",
            "fraud_amount_the_model_missed",
        }
    assert summary["rules"]["R3"]["state"] == "disabled", "every rule is measured, whatever its state"
    rule_set = summary["rule_set"]
    assert sum(v["count"] for v in rule_set["with_rules"].values()) == summary["rows"]
    assert rule_set["with_rules"]["block"]["count"] >= summary["rules"]["R1"]["matched"]


def test_without_a_champion_rules_that_need_scores_are_skipped(
    history_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    result = _run(
        Settings(aws_mode="embedded", data_dir=tmp_path / "empty"),
        monkeypatch,
        "--rules",
        str(rules),
        "--data",
        str(history_file),
        "--delay-days",
        "7",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["id"] for s in summary["skipped"]] == ["R3"]
    assert "fraud_score" in summary["skipped"][0]["error"] and "no champion" in summary["skipped"][0]["error"]
    assert set(summary["rules"]) == {"R1", "R2"} and "rule_set" not in summary


def test_an_invalid_rules_file_names_the_expression(
    history_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"id": "X", "expression": "amount.__class__", "action": "block"}]}))
    result = _run(
        Settings(aws_mode="embedded", data_dir=tmp_path / "empty"),
        monkeypatch,
        "--rules",
        str(rules),
        "--data",
        str(history_file),
        "--delay-days",
        "7",
    )
    assert result.exit_code == 2 and "rules.0.expression" in result.output


def test_rules_reading_lists_are_measured_with_a_lists_file(
    small_history, history_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = small_history.transactions
    denied = sorted(transactions["user_id"].unique())[:5]
    lists = tmp_path / "lists.yaml"
    lists.write_text(
        "blocked_cards:\n  kind: user_id\n  values: [" + ", ".join(denied) + ", u-not-seen]\n"
        "risky_countries:\n  kind: country\n  values: [NG, BR]\n"
    )
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "rules": [
                    {"id": "DENY", "expression": "user_id in @blocked_cards", "action": "block"},
                    {"id": "ABROAD", "expression": "country in @risky_countries and amount > 50", "action": "review"},
                    {
                        "id": "OTHERS",
                        "expression": "user_id not in @blocked_cards",
                        "action": "allow",
                        "state": "shadow",
                    },
                ]
            }
        )
    )
    settings = Settings(aws_mode="embedded", data_dir=tmp_path / "empty")
    result = _run(
        settings,
        monkeypatch,
        "--rules",
        str(rules),
        "--data",
        str(history_file),
        "--delay-days",
        "7",
        "--lists",
        str(lists),
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["lists"] == {
        "blocked_cards": {"kind": "user_id", "size": 6},
        "risky_countries": {"kind": "country", "size": 2},
    }
    listed = transactions["user_id"].isin(denied).to_numpy()
    abroad = (transactions["country"].isin(["NG", "BR"]) & (transactions["amount"] > 50)).to_numpy()
    fraud = transactions["is_fraud"].to_numpy(bool)
    for rule_id, matched in (("DENY", listed), ("ABROAD", abroad), ("OTHERS", ~listed)):
        figures = summary["rules"][rule_id]
        assert (figures["matched"], figures["frauds"]) == (matched.sum(), (matched & fraud).sum()), rule_id
    assert summary["rules"]["DENY"]["matched"] > 0 and summary["rules"]["ABROAD"]["matched"] > 0

    # the contract's command line, unchanged: without --lists a rule reading a list is refused by its position
    result = _run(settings, monkeypatch, "--rules", str(rules), "--data", str(history_file), "--delay-days", "7")
    assert result.exit_code == 2 and "rules.0.expression" in result.output and "--lists" in result.output
    # a list of the wrong kind for the field, and a malformed lists file, name what is wrong
    lists.write_text(
        json.dumps(
            {
                "blocked_cards": {"kind": "merchant_id", "values": ["m1"]},
                "risky_countries": {"kind": "country", "values": ["NG"]},
            }
        )
    )
    lists.rename(wrong := tmp_path / "lists.json")
    result = _run(
        settings,
        monkeypatch,
        "--rules",
        str(rules),
        "--data",
        str(history_file),
        "--delay-days",
        "7",
        "--lists",
        str(wrong),
    )
    assert result.exit_code == 2 and "rules.0.expression" in result.output and "merchant_id" in result.output
    wrong.write_text(json.dumps({"blocked_cards": {"kind": "email", "values": ["a"]}}))
    result = _run(
        settings,
        monkeypatch,
        "--rules",
        str(rules),
        "--data",
        str(history_file),
        "--delay-days",
        "7",
        "--lists",
        str(wrong),
    )
    assert result.exit_code == 2 and "blocked_cards.kind" in result.output
