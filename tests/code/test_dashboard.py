"""The dashboard's figures without a browser: the stats actor's and the scoreboard's bookkeeping (run in-process)
and the plain functions that turn their joined view into tiles, frames and tables."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cluster.config import Settings
from cluster.schema import Transaction
from serve.lists import ListStore
from serve.rollout import RolloutState, roll_back, start_rollout
from serve.stats import RECENT_ALERTS, StatsCollector, StatsReporter
from simulation.dashboard import (
    History,
    alerts_table,
    api_headers,
    case_choices,
    check_body,
    decision_body,
    describe_case,
    describe_decision,
    describe_failure,
    describe_rejection,
    describe_untested,
    detection_table,
    editor_payload,
    editor_rules,
    joined_view,
    live_tiles,
    model_metrics,
    model_section,
    queue_summary,
    queue_table,
    rollout_view,
    rule_test_history,
    rule_test_per_day,
    rule_test_summary,
    rule_test_table,
    rule_test_window,
    rules_caption,
    rules_table,
    rules_text,
    score_distribution,
    stage_counter,
    stored_lists,
    tiles_html,
)
from simulation.history import HISTORY_STAGES
from simulation.scenarios import FRAUD_SCENARIOS
from simulation.scoreboard import Scoreboard
from training.rule_replay import RuleSetError, replay_rules, replay_steps

CONTRACT_KEYS = {"produced", "scored", "alerts", "tps", "latency_ms", "stream_lag_ms"}


class InProcessActor:
    """The stats actor's class called directly, so the reporter's remote calls land in this process."""

    def __init__(self, collector: StatsCollector | None = None) -> None:
        self.collector = collector or StatsCollector()
        self.record = SimpleNamespace(remote=lambda **kwargs: self.collector.record(**kwargs))


def transaction(i: int, amount: float = 25.0) -> Transaction:
    return Transaction(
        transaction_id=f"t{i}",
        user_id=f"u{i % 7}",
        merchant_id=f"m{i % 5}",
        amount=amount,
        timestamp="2026-03-01T12:00:00Z",
        channel="online",
        country="US",
    )


def decision(i: int, score: float, level: str, flagged: bool) -> dict[str, Any]:
    return {
        "transaction_id": f"t{i}",
        "fraud_score": score,
        "is_fraud": flagged,
        "risk_level": level,
        "factors": ["amount 9x the card's typical spend", "new device"] if level == "HIGH" else [],
        "model_version": "v1",
        "processing_time_ms": 3.0,
    }


def scoreboard(clock: Any = None) -> Scoreboard:
    """A scoreboard for in-process joins (its Kinesis client is never called here)."""
    return Scoreboard(Settings(aws_endpoint_url="http://127.0.0.1:9"), clock=clock or (lambda: 0.0))


def test_reporter_counts_exactly_and_keeps_only_production_figures() -> None:
    actor = InProcessActor()
    reporter = StatsReporter(flush_every_s=3600, actor=actor)
    n = 600
    decisions = [decision(i, 0.01, "LOW", False) for i in range(n)]
    decisions += [decision(n + i, 0.95, "HIGH", True) for i in range(RECENT_ALERTS + 6)]
    reporter.add(
        scored=len(decisions),
        alerts=6,
        latency_ms=4.0,
        stream_lags_ms=[120.0, 340.0],
        decisions=decisions,
        transactions=[transaction(i, 10.0 + i) for i in range(len(decisions))],
    )
    reporter.add(
        scored=2,
        alerts=0,
        latency_ms=8.0,
        decisions=[decision(900, 0.5, "MEDIUM", False)] * 2,
        transactions=[transaction(900)] * 2,
    )
    reporter.flush()
    view = actor.collector.dashboard_view()

    assert set(view["stats"]) == CONTRACT_KEYS  # GET /api/stats keeps the contract's shape exactly
    assert set(view) == {"stats", "window_s", "window", "flagged", "alerts", "consumers"}  # no ground truth
    assert view["stats"]["scored"] == len(decisions) + 2 and view["stats"]["alerts"] == 6
    assert view["flagged"] == RECENT_ALERTS + 6 and view["window"] == {
        "scored": len(decisions) + 2,
        "flagged": RECENT_ALERTS + 6,
        "alerts": 6,
    }
    newest = view["alerts"][0]
    assert len(view["alerts"]) == RECENT_ALERTS and newest["transaction_id"] == f"t{len(decisions) - 1}"
    assert "scenario" not in newest and newest["factors"] == ["amount 9x the card's typical spend", "new device"]
    last = len(decisions) - 1
    assert (newest["user_id"], newest["merchant_id"], newest["amount"]) == (f"u{last % 7}", f"m{last % 5}", 10.0 + last)


def test_the_scoreboard_joins_truth_by_transaction_id_once_each_within_bounds() -> None:
    board = scoreboard()
    board.max_truths = 10
    board.report([f"t{i}" for i in range(12)], ["none"] * 8 + ["card_testing"] * 4)
    assert set(board.truths) == {f"t{i}" for i in range(2, 12)}  # the oldest ids evicted beyond the cap
    decisions = [decision(i, 0.95 if i >= 9 else 0.1, "HIGH" if i >= 9 else "LOW", i >= 9) for i in range(12)]
    decisions[7] = decision(7, 0.97, "HIGH", True)  # a false positive
    assert board.join(decisions + decisions[5:8] + [decision(99, 0.9, "HIGH", True)]) == 10  # repeats and strays out
    view = board.view(alert_ids=["t7", "t10", "t99", "t0"])
    assert view["scenarios"] == {"none": {"seen": 6, "flagged": 1}, "card_testing": {"seen": 4, "flagged": 3}}
    assert view["window"] == {"labelled": 10, "truly_fraud": 4}
    assert len(view["samples"]["genuine"]) == 6 and {s["scenario"] for s in view["samples"]["fraud"]} == {
        "card_testing"
    }
    assert view["alert_scenarios"] == {"t7": "none", "t10": "card_testing"}


def test_rates_cover_the_last_minute_only() -> None:
    clock = [1000.0]
    collector = StatsCollector(clock=lambda: clock[0])
    board = scoreboard(clock=lambda: clock[0])
    board.report([f"old{i}" for i in range(500)], ["none"] * 500)
    board.join([decision(i, 0.1, "LOW", False) | {"transaction_id": f"old{i}"} for i in range(500)])
    collector.record(scored=500, alerts=9, flagged=9)
    clock[0] += 61
    board.report([f"t{i}" for i in range(100)], ["none"] * 95 + ["cash_out"] * 5)
    board.join([decision(i, 0.9, "HIGH", i in (94, 95, 96)) for i in range(100)])
    collector.record(scored=100, alerts=2, flagged=3)
    view = joined_view(collector.dashboard_view(), board.view())
    assert view["window"] == {"scored": 100, "flagged": 3, "labelled": 100, "truly_fraud": 5, "alerts": 2}
    assert view["stats"]["tps"] == 10.0 and view["stats"]["scored"] == 600
    tiles = {tile.label: tile for tile in live_tiles(view)}
    assert tiles["transactions / s"].value == "10.0"
    assert tiles["flagged as fraud"].value == "3.00 %" and tiles["true fraud rate"].value == "5.00 %"
    assert tiles["alerts / min"].value == "2.0" and tiles["alerts / min"].note == "11 alerts in total"
    assert tiles["latency p50 / p99 (ms)"].value == "– / –"  # nothing measured yet is shown as such
    page = tiles_html(live_tiles(view), problem="<b>down</b>")
    assert "5.00 %" in page and "&lt;b&gt;down&lt;/b&gt;" in page


def test_without_a_scoreboard_nothing_is_labelled_and_alerts_show_no_truth() -> None:
    collector = StatsCollector()
    collector.record(scored=10, alerts=1, flagged=1, alert_details=[{"transaction_id": "t1", "fraud_score": 0.9}])
    view = joined_view(collector.dashboard_view())
    assert view["window"]["labelled"] == 0 and view["scenarios"] == {} and view["alerts"][0]["scenario"] is None
    assert {t.label: t for t in live_tiles(view)}["true fraud rate"].value == "–"
    assert score_distribution(view["samples"])[0].empty


def test_the_furthest_behind_stream_consumer_shows_until_it_stops_reporting() -> None:
    clock = [1000.0]
    collector = StatsCollector(clock=lambda: clock[0])
    assert {t.label: t for t in live_tiles(joined_view(collector.dashboard_view()))}[
        "stream consumers behind"
    ].value == "–"
    reporter = StatsReporter(actor=InProcessActor(collector))
    reporter.consumer_behind("shardId-0", 250)
    reporter.consumer_behind("shardId-1", 4_200)
    reporter.flush()
    clock[0] += 30
    collector.record(consumers={"shardId-0": 300})
    view = collector.dashboard_view()
    assert view["consumers"] == {
        "shardId-0": {"millis_behind_latest": 300, "seconds_since_report": 0.0},
        "shardId-1": {"millis_behind_latest": 4_200, "seconds_since_report": 30.0},
    }
    assert set(view["stats"]) == CONTRACT_KEYS  # GET /api/stats keeps its shape
    tile = {t.label: t for t in live_tiles(joined_view(view))}["stream consumers behind"]
    assert (tile.value, tile.note) == ("4.2 s", "furthest of 2: shardId-1")
    clock[0] += 31  # shard 1 has been silent for over a minute (closed, or its consumer gone)
    assert list(collector.dashboard_view()["consumers"]) == ["shardId-0"]


def test_history_keeps_bounded_long_frames_for_the_line_plots() -> None:
    history = History(points=3, min_gap_s=1.0)
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    for second, p50 in enumerate([None, 2.0, 3.0, 4.0]):
        stats = {
            "tps": 10.0 * second,
            "latency_ms": {"p50": p50, "p99": p50 and p50 * 5},
            "stream_lag_ms": {"p50": 100.0, "p99": 900.0},
        }
        history.observe(stats, start + timedelta(seconds=2 * second))
        history.observe(stats, start + timedelta(seconds=2 * second, milliseconds=300))  # a second browser
    frames = history.frames()
    assert frames["tps"]["tx/s"].tolist() == [10.0, 20.0, 30.0]
    assert str(frames["tps"]["time"].dtype).startswith("datetime64")
    latency = frames["latency"]
    assert set(latency["series"]) == {"p50", "p99"} and len(latency) == 6
    assert latency.loc[latency["series"] == "p99", "ms"].tolist() == [10.0, 15.0, 20.0]
    empty = History().frames()
    assert list(empty["lag"].columns) == ["time", "series", "ms"] and empty["lag"].empty


def test_score_distribution_is_a_share_per_ground_truth_class() -> None:
    samples = {
        "genuine": [{"fraud_score": s} for s in [0.01] * 90 + [0.52] * 10],
        "fraud": [{"fraud_score": s} for s in [0.97, 0.99, 1.0, 0.33]],
        "unlabelled": [{"fraud_score": 0.5}],
    }
    frame, title = score_distribution(samples, bins=10)
    assert set(frame["class"]) == {"genuine", "fraud"} and len(frame) == 20
    for name in ("genuine", "fraud"):
        assert frame.loc[frame["class"] == name, "% of class"].sum() == pytest.approx(100.0)
    genuine = frame[frame["class"] == "genuine"].set_index("fraud_score")["% of class"]
    fraud = frame[frame["class"] == "fraud"].set_index("fraud_score")["% of class"]
    assert genuine[0.05] == 90.0 and genuine[0.55] == 10.0 and fraud[0.95] == 75.0 and fraud[0.35] == 25.0
    assert title == "Score by ground truth · 100 genuine, 4 fraud"
    nothing, _ = score_distribution({})
    assert nothing.empty and list(nothing.columns) == ["fraud_score", "% of class", "class"]


def test_detection_table_per_scenario_and_false_positive_rate() -> None:
    table = detection_table(
        {
            "none": {"seen": 20_000, "flagged": 7},
            "card_testing": {"seen": 40, "flagged": 38},
            "cash_out": {"seen": 10, "flagged": 5},
            "unknown": {"seen": 2, "flagged": 0},
        }
    )
    rows = table.set_index("scenario")
    assert list(rows.index[: len(FRAUD_SCENARIOS)]) == list(FRAUD_SCENARIOS)
    assert rows.loc["card_testing", "detection rate"] == "95.0 %"
    assert rows.loc["cnp_leak", "seen"] == 0 and rows.loc["cnp_leak", "detection rate"] == "–"
    assert rows.loc["unknown", "seen"] == 2
    assert (rows.loc["all fraud (recall)", "seen"], rows.loc["all fraud (recall)", "flagged"]) == (52, 43)
    assert rows.loc["genuine (false positives)", "detection rate"] == "0.035 %"


def test_alerts_table_shows_reasons_and_what_the_simulator_says() -> None:
    alerts = [
        {
            "decided_at": "2026-03-01T12:34:56+00:00",
            "transaction_id": "t1",
            "fraud_score": 0.98765,
            "factors": ["new device", "foreign country"],
            "scenario": "none",
            "user_id": "u1",
            "merchant_id": "m1",
            "amount": 1234.5,
            "currency": "USD",
        },
        {
            "decided_at": "2026-03-01T12:30:00+00:00",
            "transaction_id": "t2",
            "fraud_score": 0.9,
            "factors": [],
            "scenario": None,
            "user_id": "u2",
            "merchant_id": "m2",
            "amount": None,
            "currency": None,
        },
    ]
    table = alerts_table(alerts)
    first, second = table.to_dict(orient="records")
    assert first == {
        "time (UTC)": "12:34:56",
        "score": 0.988,
        "amount": "1,234.50 USD",
        "user": "u1",
        "merchant": "m1",
        "reasons": "new device; foreign country",
        "ground truth": "genuine",
    }
    assert second["ground truth"] == "–" and second["amount"] == ""
    assert alerts_table([]).empty


def test_check_form_becomes_a_canonical_transaction() -> None:
    body = check_body(
        transaction_id=" manual-1 ",
        user_id="u1",
        merchant_id="m1",
        amount=12.5,
        timestamp="2026-03-01T12:00:00Z",
        currency="USD",
        channel="",
        country=" ",
        device_id="d-1",
        mcc="",
        lat="52.52",
        lon="13.40",
    )
    assert body == {
        "transaction_id": "manual-1",
        "user_id": "u1",
        "merchant_id": "m1",
        "amount": 12.5,
        "timestamp": "2026-03-01T12:00:00Z",
        "currency": "USD",
        "device_id": "d-1",
        "lat": 52.52,
        "lon": 13.4,
    }
    missing = check_body(transaction_id="x", user_id="", merchant_id="m", amount=None, timestamp="", lat="north")
    assert "amount" not in missing and missing["user_id"] == "" and missing["lat"] == "north"  # the API names them


def test_decisions_and_rejections_read_well() -> None:
    text = describe_decision(
        {
            "transaction_id": "t1",
            "fraud_score": 0.91234,
            "is_fraud": True,
            "risk_level": "HIGH",
            "factors": ["new device"],
            "model_version": "v7",
            "processing_time_ms": 12.34,
        }
    )
    assert "fraud_score 0.9123" in text and "HIGH" in text and "flagged as fraud" in text and "new device" in text
    rejection = describe_rejection(422, {"errors": [{"field": "amount", "message": "must be > 0"}]})
    assert "Rejected (422)" in rejection and "`amount`: must be > 0" in rejection


def test_model_view_reads_metrics_and_report_image_from_the_registry(tmp_path: Path) -> None:
    from training.registry import ModelRegistry

    metadata = {
        "version": "v1",
        "created_at": "2026-03-01T12:00:00+00:00",
        "ensemble": {
            "xgb_weight": 0.8,
            "ae_weight": 0.2,
            "objective": "cost",
            "policy": {"threshold": 0.7, "medium": 0.4},
        },
        "metrics": {
            "test": {
                "roc_auc": 0.99,
                "average_precision": 0.83,
                "false_positive_rate": 0.0003,
                "rows": 42539,
                "operating_points": [
                    {
                        "fpr_at_most": 0.01,
                        "threshold": 0.2,
                        "precision": 0.3,
                        "recall": 0.9,
                        "false_positive_rate": 0.0098,
                        "expected_cost": 900.0,
                    }
                ],
                "least_cost_point": {
                    "threshold": 0.5,
                    "precision": 0.7,
                    "recall": 0.8,
                    "false_positive_rate": 0.001,
                    "expected_cost": 700.0,
                },
                "threshold_point": {
                    "threshold": 0.7,
                    "precision": 0.9,
                    "recall": 0.7,
                    "false_positive_rate": 0.0003,
                    "expected_cost": 800.0,
                },
                "recall_by_scenario": {"card_testing": {"frauds": 33, "recall": 0.94, "average_precision": 0.95}},
            },
            "validation": {"roc_auc": 0.98, "average_precision": 0.9, "false_positive_rate": 0.0001, "rows": 41957},
        },
    }
    metrics, per_scenario = model_metrics(metadata)
    rows = metrics.set_index("metric")
    assert rows.loc["roc_auc", "test"] == "0.9900" and rows.loc["false_positive_rate", "test"] == "3.00e-04"
    assert rows.loc["rows", "validation"] == "41,957"
    assert per_scenario.to_dict(orient="records") == [
        {"scenario": "card_testing", "frauds": 33, "recall": 0.94, "AP vs genuine": 0.95}
    ]

    import io
    import json

    from PIL import Image

    folder = tmp_path / "models" / "versions" / "v1"
    (folder / "report").mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps(metadata))
    png = io.BytesIO()
    Image.fromarray(np.full((20, 40, 3), 200, dtype=np.uint8)).save(png, format="PNG")
    (folder / "report" / "evaluation.png").write_bytes(png.getvalue())
    (tmp_path / "models" / "pointers").mkdir()
    (tmp_path / "models" / "pointers" / "champion").write_text("v1")
    registry = ModelRegistry(root=tmp_path)
    section = model_section(registry, "champion", "Champion")
    assert section is not None and section.title == "### Champion: `v1`" and section.image.size == (40, 20)
    assert "0.80 XGBoost + 0.20 autoencoder" in section.summary and "≥ 0.700" in section.summary
    assert model_section(registry, "latest", "Challenger") is None
    assert isinstance(section.metrics, pd.DataFrame) and not section.scenarios.empty
    assert "chosen on the validation period for the least expected cost" in section.summary
    assert section.operating.to_dict(orient="records") == [
        {
            "at": "FPR ≤ 1.0%",
            "threshold": 0.2,
            "precision": 0.3,
            "recall": 0.9,
            "false_positive_rate": 0.0098,
            "expected_cost": 900.0,
        },
        {
            "at": "least expected cost",
            "threshold": 0.5,
            "precision": 0.7,
            "recall": 0.8,
            "false_positive_rate": 0.001,
            "expected_cost": 700.0,
        },
        {
            "at": "chosen threshold",
            "threshold": 0.7,
            "precision": 0.9,
            "recall": 0.7,
            "false_positive_rate": 0.0003,
            "expected_cost": 800.0,
        },
    ]


# -- rules tab -------------------------------------------------------------------------------------------------
RULE_SET = {
    "version": 3,
    "mode": "all_matched",
    "rules": [
        {
            "id": "R1",
            "expression": "amount > 1000 and user_count_1h >= 5",
            "action": "block",
            "state": "active",
            "description": "big and fast",
        },
        {"id": "R2", "expression": "user_id in @vip", "action": "allow", "state": "shadow", "description": ""},
    ],
}


def test_the_rule_set_shows_as_a_table_and_round_trips_through_the_editor() -> None:
    table = rules_table(RULE_SET)
    assert list(table.columns) == ["id", "state", "action", "expression", "description"]
    assert table["id"].tolist() == ["R1", "R2"] and table.loc[1, "expression"] == "user_id in @vip"
    assert rules_table({}).empty
    caption = rules_caption(RULE_SET)
    assert "version 3" in caption and "`all_matched`" in caption and "1 active, 1 shadow, 0 disabled" in caption
    text = rules_text(RULE_SET)
    assert "version" not in text
    assert editor_payload(text) == {
        "mode": "all_matched",
        "rules": [{k: v for k, v in rule.items() if v} for rule in RULE_SET["rules"]],
    }
    assert editor_rules(text).rules[1].state == "shadow"
    assert editor_payload('{"rules": []}') == {"rules": []}  # JSON is YAML too
    with pytest.raises(ValueError, match="neither YAML nor JSON"):
        editor_payload("rules: [\n  - id: R1\n   bad")


def test_the_rule_test_reads_the_stored_lists(aws_settings) -> None:
    store = ListStore(aws_settings)
    store.put("dash_blocked", "user_id", ["u1", "u2"])
    lists = stored_lists(aws_settings)
    assert lists["dash_blocked"].kind == "user_id" and sorted(lists["dash_blocked"].values) == ["u1", "u2"]
    text = "rules:\n  - {id: DENY, expression: user_id in @dash_blocked, action: block}\n"
    assert editor_rules(text, {"dash_blocked": "user_id"}).rules[0].id == "DENY"
    with pytest.raises(RuleSetError) as unknown:
        editor_rules(text, {})  # no such list stored: named by the expression's field, as the API does
    assert unknown.value.errors[0]["field"] == "rules.0.expression"


def test_an_invalid_editor_rule_set_names_each_field_plainly() -> None:
    with pytest.raises(RuleSetError) as raised:
        editor_rules(
            "rules:\n  - id: R1\n    expression: amount.__class__\n    action: block\n"
            "  - id: R2\n    expression: amount > 1\n    action: hold\n"
        )
    text = describe_untested(raised.value)
    assert "rule set is invalid" in text
    assert "- `rules.0.expression`: " in text and "- `rules.1.action`: " in text
    assert describe_untested(ValueError("first day: 'x' is not a date (YYYY-MM-DD)")).endswith(
        "first day: 'x' is not a date (YYYY-MM-DD)"
    )
    rejected = describe_failure(
        "Not saved",
        422,
        {"detail": "invalid", "errors": [{"field": "rules.0.expression", "message": "unknown name 'amont'"}]},
    )
    assert rejected.startswith("### Not saved: rejected (422)")
    assert "- `rules.0.expression`: unknown name 'amont'" in rejected
    assert "API unreachable" in describe_failure("Not saved", None, "connection refused")


def test_the_rule_test_window_comes_from_the_form() -> None:
    assert rule_test_window("", None) == (None, None) == rule_test_window(" ", 0)
    assert rule_test_window(" 2026-01-08 ", 10.0) == (date(2026, 1, 8), 10)
    with pytest.raises(ValueError, match="first day"):
        rule_test_window("8 January", None)
    with pytest.raises(ValueError, match="days"):
        rule_test_window("", -1)


def test_the_api_key_goes_with_writes_only_when_configured() -> None:
    assert api_headers(Settings(api_key="k")) == {"X-API-Key": "k"} and api_headers(Settings()) == {}


REPLAY = {
    "rows": 1200,
    "frauds": 30,
    "window": {"start": "2026-01-08 00:01:00+00:00", "end": "2026-01-09 23:59:00+00:00", "label_delay_days": 7},
    "model": {"version": "v4", "flagged": 25, "frauds_flagged": 20},
    "rules": {
        "R1": {
            "state": "active",
            "action": "block",
            "matched": 12,
            "frauds": 9,
            "genuine": 3,
            "precision": 0.75,
            "recall": 0.3,
            "fraud_amount": 12345.5,
            "genuine_amount": 99.0,
            "per_day": {
                "2026-01-08": {"matched": 5, "frauds": 4, "genuine": 1},
                "2026-01-09": {"matched": 7, "frauds": 5, "genuine": 2},
            },
            "model_overlap": {
                "also_flagged_by_model": 8,
                "frauds_the_model_missed": 2,
                "fraud_amount_the_model_missed": 100.0,
            },
        },
        "R2": {
            "state": "shadow",
            "action": "allow",
            "matched": 0,
            "frauds": 0,
            "genuine": 0,
            "precision": None,
            "recall": 0.0,
            "fraud_amount": 0.0,
            "genuine_amount": 0.0,
            "per_day": {
                "2026-01-08": {"matched": 0, "frauds": 0, "genuine": 0},
                "2026-01-09": {"matched": 0, "frauds": 0, "genuine": 0},
            },
        },
    },
    "skipped": [{"id": "R3", "error": "reads fraud_score, but the registry has no usable champion model"}],
    "rule_set": {
        "mode": "all_matched",
        "active_rules": 1,
        "changed": 4,
        "with_rules": {
            a: {"count": c, "frauds": f, "fraud_amount": 0.0}
            for a, c, f in (("allow", 1160, 1), ("review", 20, 5), ("block", 20, 24))
        },
        "model_only": {
            a: {"count": c, "frauds": f, "fraud_amount": 0.0}
            for a, c, f in (("allow", 1155, 2), ("review", 20, 8), ("block", 25, 20))
        },
    },
    "seconds": 1.234,
}


def test_rule_test_results_read_as_a_table_a_chart_and_a_summary() -> None:
    table = rule_test_table(REPLAY).set_index("rule")
    assert table.loc["R1", "matched"] == 12 and table.loc["R1", "precision"] == "75.0 %"
    assert table.loc["R1", "fraud amount"] == "12,345.50" and table.loc["R1", "model flags too"] == 8
    assert table.loc["R2", "precision"] == "–" and table.loc["R2", "frauds model missed"] == "–"
    per_day = rule_test_per_day(REPLAY)
    assert list(per_day.columns) == ["day", "matched", "rule"] and len(per_day) == 4
    assert str(per_day["day"].dtype).startswith("datetime64")
    assert per_day[per_day["rule"] == "R1"]["matched"].tolist() == [5.0, 7.0]
    text = rule_test_summary(REPLAY)
    assert "1,200 transactions, 30 frauds" in text and "2026-01-08 to 2026-01-09" in text
    assert "Model `v4` flagged 25" in text and "rule `R3` skipped" in text
    assert "changes 4 actions" in text and "block 25 → 20 (24 frauds)" in text
    empty = rule_test_per_day({"rules": {}})
    assert empty.empty and list(empty.columns) == ["day", "matched", "rule"]


def test_the_rule_test_simulates_its_history_once_and_replays_the_editor_rules(tmp_path: Path) -> None:
    settings = Settings(aws_mode="embedded", data_dir=tmp_path, simulated_users=60, simulated_days=4)
    stages: list[str] = []
    path = rule_test_history(settings, stages.append)
    assert path == settings.bootstrap_history and path.exists() and stages[-1] == "profile files"
    assert rule_test_history(settings, stages.append) == path and len(stages) == len(HISTORY_STAGES)
    body = editor_rules(
        "rules:\n  - {id: big, expression: amount > 100, action: review}\n"
        "  - {id: scored, expression: fraud_score > 0.5, action: block}\n"
    )
    steps: list[str] = []
    summary = replay_rules(settings, body, data=path, delay_days=1, progress=steps.append)
    assert len(steps) == replay_steps(body) and steps[-1] == "rule set"
    assert summary["rules"]["big"]["matched"] > 0 and [s["id"] for s in summary["skipped"]] == ["scored"]
    assert rule_test_table(summary)["rule"].tolist() == ["big"]
    with pytest.raises(ValueError, match="FRAUD_RULE_TEST_DATA"):
        rule_test_history(settings.model_copy(update={"rule_test_data": tmp_path / "missing.parquet"}))


def test_stage_counter_moves_a_progress_bar_one_step_per_stage() -> None:
    seen: list[tuple[float, str]] = []
    advance = stage_counter(lambda fraction, desc: seen.append((fraction, desc)), 4, "rule test")
    for stage in ("history", "causal features", "model scores", "rule R1", "rule set"):
        advance(stage)
    assert seen[0] == (0.25, "rule test: history") and seen[-1] == (1.0, "rule test: rule set")


# -- review tab ------------------------------------------------------------------------------------------------
def case(case_id: str, score: float, amount: float | None, **fields: Any) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "transaction_id": f"tx-{case_id}",
        "opened_at": "2026-03-01T12:00:00+00:00",
        "fraud_score": score,
        "risk_level": "MEDIUM",
        "factors": ["new device"],
        "rules": [],
        "action": "review",
        "status": "open",
        "user_id": "u1",
        "merchant_id": "m1",
        "amount": amount,
        "currency": "USD",
        "timestamp": "2026-03-01T11:59:58+00:00",
        **fields,
    }


def test_the_queue_shows_each_case_in_the_apis_order_with_the_anomaly_lanes_marked() -> None:
    cases = [case("u", 0.02, 5.0, anomaly_review=True), case("b", 0.9, 5.0), case("a", 0.6, 10.0)]
    assert list(queue_table(cases)["case"]) == ["u", "b", "a"]  # the API orders the queue (serve/cases.py)
    assert list(queue_table(cases)["lane"]) == ["unusual", "", ""]
    assert case_choices(cases[:1]) == [("unusual · 0.020 · 5.00 USD · tx-u", "u")]
    table = queue_table([case("r", 0.61234, 1234.5, rules=[{"id": "R7", "action": "review"}])])
    assert table.to_dict(orient="records") == [
        {
            "score": 0.612,
            "risk": "MEDIUM",
            "lane": "",
            "amount": "1,234.50 USD",
            "user": "u1",
            "merchant": "m1",
            "rules": "R7 (review)",
            "opened (UTC)": "2026-03-01 12:00:00",
            "case": "r",
        }
    ]
    assert queue_table([]).empty and list(queue_table([]).columns)[-1] == "case"
    assert case_choices([case("x", 0.5, 20.0)]) == [("0.500 · 20.00 USD · tx-x", "x")]
    assert case_choices([case("y", 0.5, None)])[0][1] == "y"


def test_the_queue_summary_gives_its_size_and_oldest_age() -> None:
    now = datetime(2026, 3, 1, 14, 5, 30, tzinfo=timezone.utc)
    assert queue_summary(
        {"cases": [case("a", 0.5, 1.0)] * 2, "open": 17, "oldest_open_at": "2026-03-01T12:00:00+00:00"}, now
    ) == ("**17 open cases** · the oldest waits for 2 h 5 min")
    assert "4 min" in queue_summary({"cases": [], "open": 1, "oldest_open_at": "2026-03-01T14:01:00Z"}, now)
    assert "3 days 2 h" in queue_summary({"cases": [], "open": 1, "oldest_open_at": "2026-02-26T12:00:00Z"}, now)
    assert queue_summary({"cases": [], "open": 0, "oldest_open_at": None}, now).startswith("**No open cases**")


def test_a_case_shows_its_transaction_reasons_and_rules() -> None:
    text = describe_case(
        case(
            "c1",
            0.73,
            980.0,
            rules=[{"id": "R12", "action": "review"}],
            reasons=["Rule R12: amount over $500 at a new merchant"],
        )
    )
    assert "fraud_score 0.7300 · MEDIUM · action review" in text and "`tx-c1`" in text and "980.00 USD" in text
    assert "R12 (review)" in text and "Rule R12: amount over $500 at a new merchant; new device" in text
    assert "user `u1`" in text and "case `c1`" in text
    assert "the model's score sent it to review" in describe_case(case("c2", 0.5, None))
    assert describe_case(None) == "Select a case in the queue."


def test_a_decision_body_is_what_the_api_takes() -> None:
    assert decision_body(is_fraud=True, analyst=" ana ", note="  ") == {"is_fraud": True, "analyst": "ana"}
    assert decision_body(is_fraud=False, analyst="bo", note=" called the customer ") == {
        "is_fraud": False,
        "analyst": "bo",
        "note": "called the customer",
    }
    assert decision_body(is_fraud=False, analyst="")["analyst"] == ""  # the API names the missing analyst


def test_the_models_tab_shows_the_rollout_and_its_changes_newest_first() -> None:
    state = roll_back(
        start_rollout(None, "v2", 0.3, "by hand", "2026-12-01T10:00:00+00:00"),
        "guardrail: alert rate",
        "2026-12-01T10:05:00+00:00",
    )
    line, events = rollout_view(state)
    assert line == "**Rollout**: `v2` rolled back, share 0, since 2026-12-01 10:05:00 UTC"
    assert list(events["to"]) == ["rolled_back", "canary"] and events["reason"].iloc[0] == "guardrail: alert rate"
    static, none = rollout_view(RolloutState(version="latest", share=0.0, mode="shadow", since=None))
    assert "static settings" in static and none.empty
