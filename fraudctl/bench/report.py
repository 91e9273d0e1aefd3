"""The README's figures, written from one ``fraudctl bench`` JSON object: a compact Markdown table, never edited by
hand (``fraudctl bench --markdown docs/benchmarks.md``, or ``python -m fraudctl.bench.report bench.json OUT.md``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, Callable[[dict[str, Any]], str], str]


def _get(figures: dict[str, Any], path: str) -> Any:
    value: Any = figures
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _number(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def _figure(path: str, unit: str = "", digits: int = 0) -> Callable[[dict[str, Any]], str]:
    return lambda figures: _number(_get(figures, path), unit, digits)


def _pair(first: str, second: str, unit: str, digits: int = 1) -> Callable[[dict[str, Any]], str]:
    return lambda figures: (
        f"{_number(_get(figures, first), '', digits)} / {_number(_get(figures, second), '', digits)}{unit}"
    )


ROWS: dict[str, list[Row]] = {
    "features_offline": [
        (
            "offline features, Ray Data builder",
            _figure("features_offline.ray_data_rows_per_s", " rows/s"),
            "≥ 50,000 rows/s",
        ),
    ],
    "features_online": [
        ("online features through the state actors", _figure("features_online.tx_per_s", " tx/s"), "≥ 20,000 tx/s"),
        ("online state per 100k users", _figure("features_online.user_state_mb_per_100k_users", " MB", 1), "—"),
    ],
    "feature_state": [
        (
            "feature-state snapshot per 100k users, MB / s",
            _pair("feature_state.snapshot_mb_per_100k_users", "feature_state.snapshot_s_per_100k_users", "", 2),
            "—",
        ),
        (
            "state throughput cost of aligned checkpoints",
            _figure("feature_state.checkpoint_cost_pct", " %", 1),
            "≤ 10 %",
        ),
        (
            "state actor recovery after a kill (load + replay)",
            _figure("feature_state.recovery_after_kill_s", " s", 2),
            "—",
        ),
        ("transactions that recovery replayed from the stream", _figure("feature_state.replayed_after_kill"), "—"),
    ],
    "producers": [
        ("producers into the embedded Kinesis", _figure("producers.sustained_tps", " tx/s"), "—"),
    ],
    "training": [
        (
            "backtest AP, ours / the standard baseline (handbook-style data)",
            _pair("training.ours.average_precision", "training.baseline.average_precision", "", 3),
            "≥ 1.10×",
        ),
        (
            "backtest ROC-AUC, ours / baseline",
            _pair("training.ours.roc_auc", "training.baseline.roc_auc", "", 3),
            "ours ≥ baseline",
        ),
    ],
    "serving": [
        (
            "HTTP c=1 p50, app / composed no-op / single no-op (wrk)",
            lambda f: (
                f"{_number(_get(f, 'serving.app.concurrency_1.p50_ms'), '', 2)} / "
                f"{_number(_get(f, 'serving.noop.concurrency_1.p50_ms'), '', 2)} / "
                f"{_number(_get(f, 'serving.single_noop.concurrency_1.p50_ms'), '', 2)} ms"
            ),
            "—",
        ),
        (
            "HTTP c=1 p50 ratio, app / composed no-op (floor: no-op + in-process scoring)",
            lambda f: (
                f"{_number(_get(f, 'serving.p50_ratio_c1'), '×', 2)} "
                f"(floor {_number(_get(f, 'serving.p50_ratio_c1_floor'), '×', 2)})"
            ),
            "≤ 4× (aim 2.5×)",
        ),
        (
            "HTTP c=32 throughput, app / composed no-op",
            _pair("serving.app.concurrency_32.rps", "serving.noop.concurrency_32.rps", " req/s", 0),
            "ratio ≥ 1.0 (aim 1.5)",
        ),
        ("HTTP c=32 p99, app", _figure("serving.app.concurrency_32.p99_ms", " ms", 1), "≤ 80 ms (aim 40)"),
        (
            "HTTP batch endpoint (1,000 per request)",
            _figure("serving.batch.transactions_per_s", " tx/s"),
            "≥ 20,000 tx/s (aim 40,000)",
        ),
        (
            "batch endpoint: service CPU per 1,000 tx; the rate it allows on these cores, with / without the embedded AWS",
            lambda f: (
                f"{_number(_get(f, 'serving.batch.service_cpu_ms_per_1k_tx'), ' ms', 0)}; "
                f"{_number(_get(f, 'serving.batch.cpu_bound_tx_per_s'), ' tx/s', 0)} / "
                f"{_number(_get(f, 'serving.batch.cpu_bound_tx_per_s_without_aws_emulator'), ' tx/s', 0)}"
            ),
            "—",
        ),
    ],
    "rules": [
        (
            "scoring core, 1,000-row batches: 0 / 200 active rules",
            _pair("rules.scoring.rules_0.tx_per_s", "rules.scoring.rules_200.tx_per_s", " tx/s", 0),
            "—",
        ),
        (
            "cost of 20 / 200 active rules (batch time ÷ 0 rules)",
            _pair(
                "rules.scoring.rules_20.cost_ratio_to_0_rules", "rules.scoring.rules_200.cost_ratio_to_0_rules", "×", 3
            ),
            "—",
        ),
        (
            "cost of a rule over a 100,000-value deny list",
            _figure("rules.scoring.deny_list_100k.cost_ratio_to_0_rules", "×", 3),
            "not measurable (≤ 1.05×)",
        ),
        (
            "rule testing on 500k simulated rows",
            _figure("rules.rule_testing.rows_per_s", " rows/s"),
            "500k rows in < 2 min",
        ),
    ],
    "stream": [
        ("stream end to end, warm consumers", _figure("stream.sustained.end_to_end_tps", " tx/s"), "≥ 5,000 tx/s"),
        (
            "stream lag p50 / p99 at the target rate",
            _pair("stream.lag_at_target.p50_ms", "stream.lag_at_target.p99_ms", " ms", 0),
            "p99 ≤ 1,000 ms",
        ),
    ],
    "monitoring": [
        (
            "throughput cost of drift monitoring, batch / HTTP c=32 (1 - on / off, same run)",
            lambda f: (
                f"{_number(_percent(_get(f, 'monitoring.batch_tx_per_s.cost')), ' %', 1)} / "
                f"{_number(_percent(_get(f, 'monitoring.single_c32_rps.cost')), ' %', 1)}"
            ),
            "≤ 5 %",
        ),
    ],
}


def _percent(share: float | None) -> float | None:
    return None if share is None else share * 100


def markdown(figures: dict[str, Any]) -> str:
    """One table row per figure of the sections the run measured."""
    machine = figures.get("machine", {})
    lines = [
        f"Measured by `fraudctl bench` on {machine.get('cpus', '?')} cores (Python {machine.get('python', '?')});"
        " written by `fraudctl/bench/report.py` from the run's JSON.",
        "",
        "| figure | measured | goal |",
        "| --- | --- | --- |",
    ]
    for section, rows in ROWS.items():
        if section in figures:
            lines.extend(f"| {label} | {value(figures)} | {goal} |" for label, value, goal in rows)
    return "\n".join(lines) + "\n"


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def write_markdown(figures: dict[str, Any], out: Path) -> None:
    """The table into ``out``: between its ``START`` and ``END`` markers when it has them (the README), else as the
    whole file."""
    table = markdown(figures)
    text = out.read_text() if out.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        out.write_text(f"{head}{START}\n{table}{END}{rest.split(END, 1)[1]}")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Benchmarks\n\n" + table)


if __name__ == "__main__":
    write_markdown(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
