"""The Gradio dashboard that ``fraudctl up`` serves on ``ui_port``: live tiles and charts, the score distribution by
ground-truth class, detection per simulated scenario, recent alerts, a manual check against the API, simulation
controls and the models in the registry.

Everything shown is computed by the plain functions at the top from one view (``joined_view``): the stats actor's
production figures (``serve/stats.py``) with the ground truth of the simulation's scoreboard
(``simulation/scoreboard.py``) joined in by transaction_id, and from the registry; so it is testable without a
browser, and ``build_dashboard`` only lays them out.
The app is Gradio mounted in FastAPI, served by uvicorn in a thread of the main job (``serving_dashboard``).
"""

from __future__ import annotations

import html
import io
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import numpy as np
import pandas as pd
import ray
import uvicorn
import yaml
from fastapi import FastAPI
from PIL import Image
from pydantic import ValidationError

from cluster.config import Settings
from cluster.schema import CHANNELS, GENUINE_SCENARIO, OPTIONAL_COLUMNS
from cluster.waiting import port_in_use, wait_until
from serve.api import API_KEY_HEADER
from serve.lists import ListStore
from serve.rollout import RolloutState, RolloutStore
from serve.stats import stats_actor
from simulation.generator import Progress, SimulationConfig, simulate_history
from simulation.history import HISTORY_STAGES, write_history
from simulation.scenarios import FRAUD_SCENARIOS
from simulation.scoreboard import NO_TRUTH
from simulation.world_shift import WorldShift
from training.registry import ModelNotFound, registry_for
from training.rule_replay import ListFileEntry, RuleSetError, parse_rule_set, replay_rules, replay_steps
from training.rules import ACTIONS, ACTIVE, DISABLED, FIRST_MATCHED, SHADOW, RuleSetBody

REFRESH_S = 2.0
HISTORY_POINTS = 900  # 30 minutes of 2-second points
SCORE_BINS = 20
CHECK_TIMEOUT_S = 30.0
REVIEW_LIMIT = 50  # open cases shown at once
MAX_REVIEW_LIMIT = 500
METRIC_ROWS = (
    "roc_auc",
    "average_precision",
    "precision",
    "recall",
    "f1",
    "false_positive_rate",
    "threshold",
    "card_precision_at_100",
    "rows",
    "frauds",
)
CLASS_COLOURS = {"genuine": "#2563eb", "fraud": "#dc2626"}
SERIES_COLOURS = {"p50": "#0f766e", "p99": "#ea580c"}
View = dict[str, Any]


# -- monitoring (GET /api/monitoring) -----------------------------------------------------------------------
MONITORING_REFRESH_S = 10.0
WORST_FEATURES = 8


def fetch_monitoring(api_url: str, timeout_s: float = CHECK_TIMEOUT_S) -> View:
    """The API's monitoring view, read like any client's."""
    response = httpx.get(f"{api_url}/api/monitoring", timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def monitoring_summary(view: View) -> str:
    """One paragraph: what the window is compared with, the score's drift, drifted features and labelled figures."""
    reference, labelled = view["reference"], view["labelled"]
    if reference["rows"] is None:
        against = f"model {reference['model_version'] or '(none yet)'} has no training reference: no drift figures"
    else:
        against = f"the training reference of {reference['model_version']} ({reference['rows']:,} rows)"
    drifted = ", ".join(view["drifted"]) or "none"
    return (
        f"**{view['scored']:,}** transactions scored in the last {view['window_s']:g} s, compared with {against}. "
        f"Score PSI **{_figure(view['score']['psi'])}** · drifted features: **{drifted}** · drift "
        f"notifications sent: {view['notifications']}.\n\nLabelled decisions: {labelled['count']:,} "
        f"(coverage {_figure(labelled['coverage'])}) · precision {_figure(labelled['precision'])} "
        f"· recall {_figure(labelled['recall'])} · average precision "
        f"{_figure(labelled['average_precision'])}" + lane_state(view)
    )


def lane_state(view: View) -> str:
    """The serving model's anomaly review lane: its live level, or why it is still closed."""
    lane = (view.get("anomaly_review") or {}).get(view["reference"]["model_version"] or "")
    if lane is None:
        return ""
    if not lane["open"]:
        return (
            f"\n\nAnomaly review lane: closed until it has seen {lane['rows_to_open']:,} transactions "
            f"({lane['window_rows']:,} so far; it opens at its next update after that)"
        )
    return (
        f"\n\nAnomaly review lane: the {lane['rate']:.2%} most unusual of the newest "
        f"{lane['window_rows']:,} transactions go to review · live level **{lane['live_level']:.4f}** "
        f"(trained {lane['trained_level']:.4f})"
    )


def _figure(value: Any) -> str:
    return "n/a" if value is None else _format_metric(value)


def worst_features(view: View, count: int = WORST_FEATURES) -> pd.DataFrame:
    """The ``count`` features furthest from their reference and every drifted one besides (highest PSI first),
    with their missing rate: a drift notification names features this table must show, however many drift."""
    rows = [
        {
            "feature": name,
            "psi": figures["psi"],
            "missing_rate": figures["missing_rate"],
            "drifted": name in view["drifted"],
        }
        for name, figures in view["features"].items()
    ]
    frame = pd.DataFrame(rows, columns=["feature", "psi", "missing_rate", "drifted"])
    ranked = frame.sort_values("psi", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return ranked[(ranked.index < count) | ranked["drifted"]].reset_index(drop=True)


def inputs_table(view: View) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"field": name, "missing_rate": figures["missing_rate"], "at training": figures["reference_missing_rate"]}
            for name, figures in view["inputs"].items()
        ],
        columns=["field", "missing_rate", "at training"],
    )


def rejected_table(view: View) -> pd.DataFrame:
    return pd.DataFrame(list(view["rejected_inputs"]["by_field"].items()), columns=["field", "rejected"])


class DriftHistory:
    """Each feature's PSI over time, kept in the dashboard process (bounded), for the worst features' chart."""

    def __init__(self, points: int = HISTORY_POINTS):
        self.points: deque[tuple[datetime, dict[str, float | None]]] = deque(maxlen=points)
        self._lock = threading.Lock()

    def observe(self, view: View, at: datetime) -> None:
        with self._lock:
            self.points.append((at, {name: figures["psi"] for name, figures in view["features"].items()}))

    def frame(self, features: Sequence[str]) -> pd.DataFrame:
        """(time, feature, psi) in long form for ``features``."""
        with self._lock:
            rows = [
                {"time": at, "feature": name, "psi": psi[name]}
                for at, psi in self.points
                for name in features
                if psi.get(name) is not None
            ]
        frame = pd.DataFrame(rows, columns=["time", "feature", "psi"])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame.astype({"psi": float})


# -- live figures ----------------------------------------------------------------------------------------------
def joined_view(production: View, truth: View | None = None) -> View:
    """The stats actor's ``dashboard_view()`` with the scoreboard's ``view()`` of its alerts joined in: last-minute
    labelled / truly fraudulent counts, per-scenario counts, score samples per class, and each alert's scenario
    (``truth`` None: the simulation is off, nothing is labelled)."""
    truth = truth or NO_TRUTH
    scenarios = truth["alert_scenarios"]
    return {
        **production,
        "window": {**production["window"], **truth["window"]},
        "scenarios": truth["scenarios"],
        "samples": truth["samples"],
        "alerts": [{**alert, "scenario": scenarios.get(alert["transaction_id"])} for alert in production["alerts"]],
    }


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    note: str = ""


def _share(part: int, whole: int, digits: int = 2) -> str:
    return f"{100.0 * part / whole:.{digits}f} %" if whole else "–"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def live_tiles(view: View) -> list[Tile]:
    """The headline figures: throughput, latency, flagged vs true fraud rate (last minute), alerts per minute."""
    stats, window = view["stats"], view["window"]
    minutes = view["window_s"] / 60.0
    latency, lag = stats["latency_ms"], stats["stream_lag_ms"]
    return [
        Tile(
            "transactions / s", f"{stats['tps']:,.1f}", f"{stats['scored']:,} scored · {stats['produced']:,} produced"
        ),
        Tile(
            "latency p50 / p99 (ms)",
            f"{_ms(latency['p50'])} / {_ms(latency['p99'])}",
            f"stream lag p99 {_ms(lag['p99'])} ms",
        ),
        Tile(
            "flagged as fraud",
            _share(window["flagged"], window["scored"]),
            f"of {window['scored']:,} decisions in the last minute",
        ),
        Tile(
            "true fraud rate",
            _share(window["truly_fraud"], window["labelled"]),
            f"simulated ground truth, {window['labelled']:,} labelled decisions",
        ),
        Tile("alerts / min", f"{window['alerts'] / minutes:,.1f}", f"{stats['alerts']:,} alerts in total"),
        _consumers_tile(view.get("consumers", {})),
    ]


def _consumers_tile(consumers: dict[str, dict[str, Any]]) -> Tile:
    """The furthest-behind stream consumer (Kinesis ``MillisBehindLatest``): a consumer falling behind shows here."""
    if not consumers:
        return Tile("stream consumers behind", "–", "no consumer reported in the last minute")
    shard, furthest = max(consumers.items(), key=lambda item: item[1]["millis_behind_latest"])
    return Tile(
        "stream consumers behind",
        f"{furthest['millis_behind_latest'] / 1000:,.1f} s",
        f"furthest of {len(consumers)}: {shard}",
    )


def tiles_html(tiles: Sequence[Tile], problem: str = "") -> str:
    cards = "".join(
        f'<div class="tile"><div class="tile-label">{html.escape(t.label)}</div>'
        f'<div class="tile-value">{html.escape(t.value)}</div>'
        f'<div class="tile-note">{html.escape(t.note)}</div></div>'
        for t in tiles
    )
    banner = f'<div class="tile-problem">{html.escape(problem)}</div>' if problem else ""
    return f'{banner}<div class="tiles">{cards}</div>'


class History:
    """The live figures over time, kept in the dashboard process (bounded; shared by every open browser)."""

    def __init__(self, points: int = HISTORY_POINTS, min_gap_s: float = REFRESH_S / 2):
        self.points: deque[dict[str, Any]] = deque(maxlen=points)
        self.min_gap_s = min_gap_s
        self._lock = threading.Lock()

    def observe(self, stats: dict[str, Any], at: datetime) -> None:
        """Add a point unless another browser added one moments ago."""
        with self._lock:
            if self.points and (at - self.points[-1]["time"]).total_seconds() < self.min_gap_s:
                return
            self.points.append(
                {
                    "time": at,
                    "tx/s": stats["tps"],
                    "latency p50": stats["latency_ms"]["p50"],
                    "latency p99": stats["latency_ms"]["p99"],
                    "lag p50": stats["stream_lag_ms"]["p50"],
                    "lag p99": stats["stream_lag_ms"]["p99"],
                }
            )

    def frames(self) -> dict[str, pd.DataFrame]:
        """``tps`` (time, tx/s) and ``latency`` / ``lag`` in long form (time, ms, series) for line plots."""
        with self._lock:
            wide = pd.DataFrame(
                list(self.points), columns=["time", "tx/s", "latency p50", "latency p99", "lag p50", "lag p99"]
            )
        wide["time"] = pd.to_datetime(wide["time"], utc=True)

        def long(prefix: str) -> pd.DataFrame:
            frame = wide.melt(
                id_vars="time", value_vars=[f"{prefix} p50", f"{prefix} p99"], var_name="series", value_name="ms"
            ).dropna()
            frame["series"] = frame["series"].str.removeprefix(f"{prefix} ")
            frame["ms"] = frame["ms"].astype(float)
            return frame.reset_index(drop=True)

        return {"tps": wide[["time", "tx/s"]].astype({"tx/s": float}), "latency": long("latency"), "lag": long("lag")}


def score_distribution(samples: dict[str, list[dict[str, Any]]], bins: int = SCORE_BINS) -> tuple[pd.DataFrame, str]:
    """Share of each ground-truth class's sampled decisions per fraud_score bin, and a plot title with the sample
    sizes."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    parts, sizes = [], []
    for name in ("genuine", "fraud"):
        scores = np.array([s["fraud_score"] for s in samples.get(name, [])], dtype=float)
        sizes.append(f"{len(scores):,} {name}")
        if not len(scores):
            continue
        counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=edges)
        parts.append(
            pd.DataFrame({"fraud_score": centres.round(3), "% of class": 100.0 * counts / len(scores), "class": name})
        )
    frame = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(
            {"fraud_score": pd.Series(dtype=float), "% of class": pd.Series(dtype=float), "class": pd.Series(dtype=str)}
        )
    )
    return frame, f"Score by ground truth · {', '.join(sizes)}"


def detection_table(scenarios: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Per simulated scenario: decisions seen, flagged is_fraud, detection rate; genuine traffic gives the
    false-positive rate."""
    known = list(FRAUD_SCENARIOS) + sorted(set(scenarios) - set(FRAUD_SCENARIOS) - {GENUINE_SCENARIO})
    rows = []
    for name in known:
        counts = scenarios.get(name, {"seen": 0, "flagged": 0})
        rows.append(
            {
                "scenario": name,
                "seen": counts["seen"],
                "flagged": counts["flagged"],
                "rate": _share(counts["flagged"], counts["seen"], 1),
            }
        )
    fraud_seen = sum(r["seen"] for r in rows)
    fraud_flagged = sum(r["flagged"] for r in rows)
    rows.append(
        {
            "scenario": "all fraud (recall)",
            "seen": fraud_seen,
            "flagged": fraud_flagged,
            "rate": _share(fraud_flagged, fraud_seen, 1),
        }
    )
    genuine = scenarios.get(GENUINE_SCENARIO, {"seen": 0, "flagged": 0})
    rows.append(
        {
            "scenario": "genuine (false positives)",
            "seen": genuine["seen"],
            "flagged": genuine["flagged"],
            "rate": _share(genuine["flagged"], genuine["seen"], 3),
        }
    )
    return pd.DataFrame(rows).rename(columns={"rate": "detection rate"})


def alerts_table(alerts: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The latest HIGH decisions, newest first, with their reasons and what the simulator says they were."""
    rows = []
    for alert in alerts:
        amount = alert.get("amount")
        truth = alert.get("scenario")
        rows.append(
            {
                "time (UTC)": str(alert.get("decided_at", ""))[11:19],
                "score": round(float(alert["fraud_score"]), 3),
                "amount": "" if amount is None else f"{amount:,.2f} {alert.get('currency') or ''}".strip(),
                "user": alert.get("user_id") or "",
                "merchant": alert.get("merchant_id") or "",
                "reasons": "; ".join(alert.get("factors") or []),
                "ground truth": "–" if truth is None else ("genuine" if truth == GENUINE_SCENARIO else truth),
            }
        )
    columns = ["time (UTC)", "score", "amount", "user", "merchant", "reasons", "ground truth"]
    return pd.DataFrame(rows, columns=columns)


# -- manual check ----------------------------------------------------------------------------------------------
def _number_or_text(text: str) -> float | str | None:
    """A typed coordinate: blank is absent, a number is a number, anything else goes as typed (the API names it)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def check_body(
    *,
    transaction_id: str,
    user_id: str,
    merchant_id: str,
    amount: float | None,
    timestamp: str,
    currency: str = "",
    channel: str = "",
    country: str = "",
    device_id: str = "",
    mcc: str = "",
    lat: str = "",
    lon: str = "",
) -> dict[str, Any]:
    """The form as a canonical transaction: required fields as typed (the API names what is wrong with them),
    blank optional fields left out."""
    body: dict[str, Any] = {
        "transaction_id": transaction_id.strip(),
        "user_id": user_id.strip(),
        "merchant_id": merchant_id.strip(),
        "timestamp": timestamp.strip(),
    }
    if amount is not None:
        body["amount"] = amount
    optional = {"currency": currency, "channel": channel, "country": country, "device_id": device_id, "mcc": mcc}
    body.update({name: value.strip() for name, value in optional.items() if value and value.strip()})
    coordinates = {"lat": _number_or_text(lat), "lon": _number_or_text(lon)}
    body.update({name: value for name, value in coordinates.items() if value is not None})
    return body


def describe_decision(decision: dict[str, Any]) -> str:
    verdict = "flagged as fraud" if decision["is_fraud"] else "not flagged"
    reasons = decision.get("factors") or []
    lines = [
        f"### fraud_score {decision['fraud_score']:.4f} · {decision['risk_level']} · {verdict}",
        "",
        "**Reasons:** " + ("; ".join(reasons) if reasons else "none given (no feature pushed hard either way)"),
        "",
        f"model {decision['model_version']} · {decision['processing_time_ms']:.1f} ms · "
        f"transaction `{decision['transaction_id']}`",
    ]
    return "\n".join(lines)


def describe_field_errors(title: str, errors: Sequence[dict[str, Any]]) -> str:
    """A heading and one plain line per offending field, as the API names it (``rules.0.expression: ...``)."""
    return "\n".join([f"### {title}", "", *[f"- `{e.get('field', '?')}`: {e.get('message', '')}" for e in errors]])


def describe_rejection(status: int, body: Any, title: str = "Rejected") -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors:
        return f"### {title} ({status})\n\n{body}"
    return describe_field_errors(f"{title} ({status})", errors)


# -- HTTP to the API -------------------------------------------------------------------------------------------
def api_headers(settings: Settings) -> dict[str, str]:
    """The API key header for write endpoints, when the API has a key configured."""
    return {API_KEY_HEADER: settings.api_key} if settings.api_key else {}


def call_api(method: str, url: str, *, timeout_s: float = CHECK_TIMEOUT_S, **request: Any) -> tuple[int | None, Any]:
    """One request: its status and its JSON (or text) body; status None and the error when the API is unreachable."""
    try:
        response = httpx.request(method, url, timeout=timeout_s, **request)
    except httpx.HTTPError as exc:
        return None, f"{url}: {exc}"
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def check_transaction(api_url: str, body: dict[str, Any], timeout_s: float = CHECK_TIMEOUT_S) -> str:
    """POST the transaction to the API; the decision (explained even when LOW, so the analyst sees why it passed), or
    the API's own rejection naming each field."""
    status, answer = call_api(
        "POST", f"{api_url}/api/check-fraud", timeout_s=timeout_s, params={"explain": "true"}, json=body
    )
    if status is None:
        return f"### API unreachable\n\n{answer}"
    if 200 <= status < 300:
        return describe_decision(answer)
    return describe_rejection(status, answer)


def describe_failure(what: str, status: int | None, body: Any) -> str:
    """An unreachable API, or its 4xx with each field it names."""
    if status is None:
        return f"### {what}: API unreachable\n\n{body}"
    return describe_rejection(status, body, title=f"{what}: rejected")


# -- rules -----------------------------------------------------------------------------------------------------
RULE_COLUMNS = ["id", "state", "action", "expression", "description"]
RULE_TEST_COLUMNS = [
    "rule",
    "state",
    "action",
    "matched",
    "frauds",
    "genuine",
    "precision",
    "recall",
    "fraud amount",
    "genuine amount",
    "model flags too",
    "frauds model missed",
]


def rules_table(rule_set: dict[str, Any]) -> pd.DataFrame:
    """The rule set's rules in their order (the order ``first_matched`` applies them in)."""
    return pd.DataFrame(
        [{c: rule.get(c, "") for c in RULE_COLUMNS} for rule in rule_set.get("rules", [])], columns=RULE_COLUMNS
    )


def rules_caption(rule_set: dict[str, Any]) -> str:
    rules = rule_set.get("rules", [])
    states = ", ".join(f"{sum(r.get('state') == s for r in rules)} {s}" for s in (ACTIVE, SHADOW, DISABLED))
    return (
        f"**Active rule set: version {rule_set.get('version', 0)}** · mode `{rule_set.get('mode', FIRST_MATCHED)}`"
        f" · {len(rules)} rules ({states})"
    )


def rules_text(rule_set: dict[str, Any]) -> str:
    """The rule set as YAML for the editor: the ``PUT /api/rules`` body (no version)."""
    body = {
        "mode": rule_set.get("mode", FIRST_MATCHED),
        "rules": [
            {c: rule[c] for c in RULE_COLUMNS if rule.get(c) not in (None, "")} for rule in rule_set.get("rules", [])
        ],
    }
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000)


def editor_payload(text: str) -> Any:
    """The editor's YAML or JSON (JSON is YAML too) as data; a syntax error says where."""
    try:
        return yaml.safe_load(text or "")
    except yaml.YAMLError as exc:
        raise ValueError(f"the editor's text is neither YAML nor JSON: {exc}") from None


def save_rules(api_url: str, headers: dict[str, str], text: str) -> tuple[str, dict[str, Any] | None]:
    """PUT the editor's rule set; a message, and the stored rule set when the API took it."""
    try:
        payload = editor_payload(text)
    except ValueError as exc:
        return f"### Not saved\n\n{exc}", None
    status, answer = call_api("PUT", f"{api_url}/api/rules", json=payload, headers=headers)
    if status == 200:
        return (
            f"### Saved: version {answer['version']}\n\nEvery replica and stream consumer applies it within 5 s.",
            answer,
        )
    return describe_failure("Not saved", status, answer), None


def load_rules(api_url: str) -> tuple[str, dict[str, Any] | None]:
    status, answer = call_api("GET", f"{api_url}/api/rules")
    if status == 200:
        return rules_caption(answer), answer
    return describe_failure("Rules unavailable", status, answer), None


def editor_rules(text: str, lists: dict[str, str] | None = None) -> RuleSetBody:
    """The editor's rule set, checked as the API checks it against the stored lists' kinds (name -> kind): errors
    name ``rules.N.field``."""
    return parse_rule_set(editor_payload(text), source="the editor", lists=lists)


def stored_lists(settings: Settings) -> dict[str, ListFileEntry]:
    """The allow/deny lists as stored now, so a rule test reads the values the live rules would."""
    store = ListStore(settings)
    return {name: ListFileEntry(kind=kind, values=store.values(name)) for name, kind in store.kinds().items()}


def describe_untested(exc: ValueError) -> str:
    """Why the rule test did not run: each invalid field of the rule set, or the problem with its input."""
    if isinstance(exc, RuleSetError):
        return describe_field_errors("Not tested: the rule set is invalid", exc.errors)
    return f"### Not tested\n\n{exc}"


def rule_test_window(start: str, days: float | None) -> tuple[date | None, int | None]:
    """The form's first day and number of days measured (blank and 0: the whole history)."""
    start = (start or "").strip()
    try:
        first = date.fromisoformat(start) if start else None
    except ValueError:
        raise ValueError(f"first day: {start!r} is not a date (YYYY-MM-DD)") from None
    if days is not None and days < 0:
        raise ValueError(f"days: must be 0 (all) or more, got {days:g}")
    return first, int(days) if days else None


def rule_test_history(settings: Settings, progress: Progress | None = None) -> Path:
    """The labelled history the rule test replays: ``FRAUD_RULE_TEST_DATA``, else the simulated history ``fraudctl
    up`` trains its first model on, simulated there now (the simulated world's settings) when missing."""
    if settings.rule_test_data is not None:
        path = Path(settings.rule_test_data)
        if not path.exists():
            raise ValueError(f"rule_test_data: {path} does not exist (FRAUD_RULE_TEST_DATA)")
        return path
    path = settings.bootstrap_history
    if not path.exists():
        config = SimulationConfig(
            n_users=settings.simulated_users,
            days=settings.simulated_days,
            start=settings.simulated_start,
            seed=settings.seed,
            fraud_rate=settings.fraud_rate,
        )
        write_history(simulate_history(config, progress=progress), path, progress=progress)
    return path


def _amount(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def rule_test_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per measured rule: what it matched, frauds caught, genuine (false positives), amounts, and how much
    of it the model already flags."""
    rows = []
    for rule_id, figures in summary["rules"].items():
        overlap = figures.get("model_overlap") or {}
        rows.append(
            {
                "rule": rule_id,
                "state": figures["state"],
                "action": figures["action"],
                "matched": figures["matched"],
                "frauds": figures["frauds"],
                "genuine": figures["genuine"],
                "precision": _rate(figures["precision"]),
                "recall": _rate(figures["recall"]),
                "fraud amount": _amount(figures["fraud_amount"]),
                "genuine amount": _amount(figures["genuine_amount"]),
                "model flags too": overlap.get("also_flagged_by_model", "–"),
                "frauds model missed": overlap.get("frauds_the_model_missed", "–"),
            }
        )
    return pd.DataFrame(rows, columns=RULE_TEST_COLUMNS)


def rule_test_per_day(summary: dict[str, Any]) -> pd.DataFrame:
    """Matches per day and rule in long form (day, matched, rule) for the line plot."""
    rows = [
        {"day": day, "matched": float(counts["matched"]), "rule": rule_id}
        for rule_id, figures in summary["rules"].items()
        for day, counts in figures["per_day"].items()
    ]
    frame = pd.DataFrame(rows, columns=["day", "matched", "rule"])
    frame["day"] = pd.to_datetime(frame["day"], utc=True)
    return frame


def rule_test_summary(summary: dict[str, Any]) -> str:
    """The replay's window, the model it compared with, skipped rules, and the rule set against the model alone."""
    window, model = summary["window"], summary["model"]
    lines = [
        f"### Rule test: {summary['rows']:,} transactions, {summary['frauds']:,} frauds",
        f"{window['start'][:10]} to {window['end'][:10]} · labels known {window['label_delay_days']:g} days "
        f"later · {summary['seconds']:.1f} s",
        "",
    ]
    if model["version"]:
        lines.append(
            f"Model `{model['version']}` flagged {model['flagged']:,} (of them {model['frauds_flagged']:,} frauds)."
        )
    else:
        lines.append(f"No model to compare with: {model['reason']}.")
    lines += [f"- rule `{s['id']}` skipped: {s['error']}" for s in summary["skipped"]]
    rule_set = summary.get("rule_set")
    if rule_set:
        with_rules, alone = rule_set["with_rules"], rule_set["model_only"]
        lines += [
            "",
            f"**The rule set ({rule_set['mode']}, {rule_set['active_rules']} active)** changes "
            f"{rule_set['changed']:,} actions: "
            + " · ".join(
                f"{a} {alone[a]['count']:,} → {with_rules[a]['count']:,} ({with_rules[a]['frauds']:,} frauds)"
                for a in ACTIONS
            ),
        ]
    return "\n".join(lines)


def stage_counter(report: Callable[..., Any], total: int, what: str) -> Progress:
    """A ``progress(stage)`` callback that moves ``report`` (a ``gr.Progress``) one of ``total`` steps per stage."""
    done = [0]

    def advance(stage: str) -> None:
        done[0] += 1
        report(min(done[0] / total, 1.0), desc=f"{what}: {stage}")

    return advance


# -- review queue ----------------------------------------------------------------------------------------------
QUEUE_COLUMNS = ["score", "risk", "lane", "amount", "user", "merchant", "rules", "opened (UTC)", "case"]
ANOMALY_LANE = "unusual"  # the queue's mark for a case the anomaly review lane opened


def _rule_ids(case: dict[str, Any]) -> str:
    return ", ".join(f"{r['id']} ({r['action']})" for r in case.get("rules") or [])


def queue_table(cases: Sequence[dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "score": round(float(c["fraud_score"]), 3),
            "risk": c.get("risk_level", ""),
            "lane": ANOMALY_LANE if c.get("anomaly_review") else "",
            "amount": "" if c.get("amount") is None else f"{c['amount']:,.2f} {c.get('currency') or ''}".strip(),
            "user": c.get("user_id") or "",
            "merchant": c.get("merchant_id") or "",
            "rules": _rule_ids(c),
            "opened (UTC)": str(c.get("opened_at", ""))[:19].replace("T", " "),
            "case": c["case_id"],
        }
        for c in cases
    ]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def case_choices(cases: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The dropdown's (label, case_id) pairs, in queue order."""
    return [
        (
            (f"{ANOMALY_LANE} · " if c.get("anomaly_review") else "")
            + f"{c['fraud_score']:.3f} · {_amount(c.get('amount'))} {c.get('currency') or ''} · {c['transaction_id']}",
            c["case_id"],
        )
        for c in cases
    ]


def _age(seconds: float) -> str:
    minutes = int(max(seconds, 0) // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} days {hours % 24} h"


def queue_summary(queue: dict[str, Any], now: datetime) -> str:
    """The queue's size and the age of its oldest open case."""
    count, oldest = queue.get("open", len(queue.get("cases", []))), queue.get("oldest_open_at")
    if not count:
        return "**No open cases**: every review decision has been decided."
    age = _age((now - datetime.fromisoformat(oldest)).total_seconds()) if oldest else "–"
    return f"**{count:,} open cases** · the oldest waits for {age}"


def describe_case(case: dict[str, Any] | None) -> str:
    """The case's transaction, why it is in review (the model's reasons and the matched rules)."""
    if case is None:
        return "Select a case in the queue."
    reasons = case.get("reasons") or []
    factors = case.get("factors") or []
    rules = case.get("rules") or []
    amount = case.get("amount")
    lines = [
        f"### fraud_score {case['fraud_score']:.4f} · {case.get('risk_level', '')} · action {case.get('action', '')}",
        "",
        f"**Transaction** `{case['transaction_id']}` · "
        + ("" if amount is None else f"{amount:,.2f} {case.get('currency') or ''} · ")
        + f"user `{case.get('user_id', '')}` · merchant `{case.get('merchant_id', '')}` · "
        f"{case.get('timestamp', '')}",
        "",
        "**Rules matched:** " + (_rule_ids(case) if rules else "none (the model's score sent it to review)"),
        "",
        "**Reasons:** "
        + ("; ".join([*reasons, *[f for f in factors if f not in reasons]]) if reasons or factors else "none given"),
        "",
        f"case `{case['case_id']}` opened {str(case.get('opened_at', ''))[:19].replace('T', ' ')} UTC",
    ]
    return "\n".join(lines)


def decision_body(*, is_fraud: bool, analyst: str, note: str = "") -> dict[str, Any]:
    """The analyst's decision as ``POST /api/cases/{id}/decision`` takes it (the API names a missing analyst)."""
    body: dict[str, Any] = {"is_fraud": bool(is_fraud), "analyst": (analyst or "").strip()}
    if note and note.strip():
        body["note"] = note.strip()
    return body


def load_queue(api_url: str, limit: int) -> tuple[dict[str, Any] | None, str]:
    """The open cases in the API's review order (the anomaly lane's first, then by fraud score and amount) and the
    queue's summary, or why there is none."""
    status, answer = call_api("GET", f"{api_url}/api/cases", params={"status": "open", "limit": int(limit)})
    if status != 200:
        return None, describe_failure("Review queue unavailable", status, answer)
    return answer, queue_summary(answer, datetime.now(timezone.utc))


def decide_case(api_url: str, headers: dict[str, str], case_id: str | None, body: dict[str, Any]) -> str:
    if not case_id:
        return "### Not decided\n\nSelect a case first."
    status, answer = call_api("POST", f"{api_url}/api/cases/{case_id}/decision", json=body, headers=headers)
    verdict = "fraud" if body["is_fraud"] else "genuine"
    if status == 200:
        return f"### Decided: `{case_id}` is {verdict}\n\nThe label goes the way of `/api/feedback`."
    if status == 409:
        return f"### Already decided\n\n`{case_id}` was closed before (another analyst, or another tab)."
    return describe_failure("Not decided", status, answer)


# -- models ----------------------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    title: str
    summary: str
    metrics: pd.DataFrame
    scenarios: pd.DataFrame
    operating: pd.DataFrame  # the test period's trade-off at fixed false-positive rates, the threshold marked
    image: Any  # PIL image of the evaluation report (ROC, precision-recall, score by class), or None


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def model_metrics(metadata: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test-period metrics (validation beside them) and recall per scenario, as stored with the version."""
    metrics = metadata.get("metrics") or {}
    test, validation = metrics.get("test", {}), metrics.get("validation", {})
    table = pd.DataFrame(
        [
            {
                "metric": name,
                "test": _format_metric(test[name]),
                "validation": _format_metric(validation.get(name, "")) if validation else "",
            }
            for name in METRIC_ROWS
            if name in test
        ],
        columns=["metric", "test", "validation"],
    )
    per_scenario = pd.DataFrame(
        [
            {
                "scenario": name,
                "frauds": values["frauds"],
                "recall": values["recall"],
                "AP vs genuine": values["average_precision"],
            }
            for name, values in test.get("recall_by_scenario", {}).items()
        ],
        columns=["scenario", "frauds", "recall", "AP vs genuine"],
    )
    return table, per_scenario


OBJECTIVE_WORDING = {
    "f1": "the best F1 (precision and recall weighed alike)",
    "cost": "the least expected cost (missed fraud amount + review cost per alert)",
}
OPERATING_COLUMNS = ["at", "threshold", "precision", "recall", "false_positive_rate", "expected_cost"]


def operating_table(metadata: dict[str, Any]) -> pd.DataFrame:
    """The stored operating points of the test period, the chosen threshold's own row and the least-cost one."""
    test = (metadata.get("metrics") or {}).get("test", {})
    rows = [{"at": f"FPR ≤ {point['fpr_at_most']:.1%}", **point} for point in test.get("operating_points", [])]
    if "least_cost_point" in test:
        rows.append({"at": "least expected cost", **test["least_cost_point"]})
    if "threshold_point" in test:
        rows.append({"at": "chosen threshold", **test["threshold_point"]})
    return pd.DataFrame(rows, columns=OPERATING_COLUMNS)


def model_section(registry: Any, ref: str, role: str) -> ModelSection | None:
    """One registered version as the models tab shows it; None when ``ref`` names no version."""
    try:
        metadata = registry.metadata(ref)
    except ModelNotFound:
        return None
    version = metadata["version"]
    ensemble = metadata.get("ensemble", {})
    policy = ensemble.get("policy", {})
    details = [f"created {str(metadata.get('created_at', ''))[:19].replace('T', ' ')} UTC"]
    if "xgb_weight" in ensemble:
        details.append(f"ensemble {ensemble['xgb_weight']:.2f} XGBoost + {ensemble['ae_weight']:.2f} autoencoder")
    if "threshold" in policy:
        details.append(f"HIGH/is_fraud at ≥ {policy['threshold']:.3f}, MEDIUM at ≥ {policy.get('medium', 0):.3f}")
        if ensemble.get("objective") in OBJECTIVE_WORDING:
            details.append(f"threshold chosen on the validation period for {OBJECTIVE_WORDING[ensemble['objective']]}")
        if policy.get("anomaly_review") is not None:
            if policy.get("anomaly_review_rate") is not None:
                details.append(
                    f"MEDIUM also for the {policy['anomaly_review_rate']:.2%} most unusual of recent traffic, never "
                    f"below an anomaly score of {policy['anomaly_review']:.4f} (anomaly review lane)"
                )
            else:
                details.append(
                    f"MEDIUM also from an anomaly score ≥ {policy['anomaly_review']:.4f} (anomaly review lane)"
                )
    if not metadata.get("metrics"):
        details.append("no evaluation metrics stored with this version")
    png = registry.attachment(version, "report/evaluation.png")
    image = Image.open(io.BytesIO(png)).convert("RGB") if png else None
    if image is None:
        details.append("no evaluation report image stored with this version")
    metrics, per_scenario = model_metrics(metadata)
    return ModelSection(
        title=f"### {role}: `{version}`",
        summary=" · ".join(details),
        metrics=metrics,
        scenarios=per_scenario,
        operating=operating_table(metadata),
        image=image,
    )


def rollout_view(state: RolloutState) -> tuple[str, pd.DataFrame]:
    """The models tab's rollout line and its state changes, newest first."""
    if state.since is None:
        line = (
            f"**Rollout**: none stored; static settings: challenger `{state.version}` in {state.mode}"
            if state.version
            else "**Rollout**: none (no challenger)"
        )
    else:
        line = (
            f"**Rollout**: `{state.version}` {state.mode.replace('_', ' ')}, share {state.share:g}, "
            f"since {state.since[:19].replace('T', ' ')} UTC"
        )
    events = pd.DataFrame(list(reversed(state.events)), columns=["at", "from", "to", "version", "share", "reason"])
    return line, events


# -- simulation controls ---------------------------------------------------------------------------------------
class SimulationControl:
    """The running ``TrafficProducer`` actors as the dashboard drives them, and their ``Scoreboard`` (none when
    simulation is off)."""

    def __init__(self, producers: Sequence[Any] = (), scoreboard: Any | None = None):
        self.producers = list(producers)
        self.scoreboard = scoreboard  # the producers' ground truth, joined with the decisions

    @property
    def running(self) -> bool:
        return bool(self.producers)

    def _all(self, method: str, *args: Any) -> list[Any]:
        return ray.get([getattr(p, method).remote(*args) for p in self.producers], timeout=120)

    def target_tps(self) -> float:
        """The producers' current aggregate target rate."""
        return float(sum(s["target_tps"] for s in self._all("get_stats")))

    def status(self) -> str:
        if not self.running:
            return "Simulation is off (`fraudctl up --no-simulation`): nothing to control."
        stats = self._all("get_stats")
        mix = stats[0]["scenario_weights"]
        return (
            f"{len(stats)} producers · target {sum(s['target_tps'] for s in stats):,.0f} tx/s · "
            f"{sum(s['produced'] for s in stats):,} produced ({sum(s['fraud_produced'] for s in stats):,} fraud) · "
            f"{sum(s['attack_rows'] for s in stats):,} attack rows injected · scenario mix "
            f"{'even' if not mix else ', '.join(f'{k} {v:g}' for k, v in mix.items() if v)} · "
            f"world shift: {stats[0]['world_shift']}"
        )

    def set_rate(self, tps: float) -> str:
        """Split ``tps`` evenly over the producers."""
        if not self.running:
            return self.status()
        self._all("set_rate", float(tps) / len(self.producers))
        return f"Rate set to {tps:,.0f} tx/s ({tps / len(self.producers):,.0f} per producer)."

    def set_mix(self, weights: dict[str, float]) -> str:
        if not self.running:
            return self.status()
        chosen = {name: float(w) for name, w in weights.items() if w and w > 0}
        if not chosen:
            return "Scenario mix: give at least one scenario a weight above 0."
        self._all("set_scenario_mix", chosen)
        return "Scenario mix applied from each producer's next simulated day: " + ", ".join(
            f"{name} {w:g}" for name, w in chosen.items()
        )

    def launch_attack(self, scenario: str, incidents: int) -> str:
        """About ``incidents`` incidents of ``scenario``, split over the producers, injected from their now on."""
        if not self.running:
            return self.status()
        incidents = int(incidents)
        shares = [
            incidents // len(self.producers) + (i < incidents % len(self.producers)) for i in range(len(self.producers))
        ]
        rows = ray.get(
            [p.launch_attack.remote(scenario, share) for p, share in zip(self.producers, shares) if share], timeout=120
        )
        return (
            f"Attack launched: {scenario}, about {incidents} incidents — {sum(rows):,} rows (the fraud and the "
            f"victims' own card use) entering the stream now."
        )

    def shift_world(
        self, share: float, amount_factor: float, new_merchants: int, country: str, missing: Sequence[str]
    ) -> str:
        """Shift the simulated world from the producers' next batch on (all defaults: back to the world as
        simulated), to watch drift monitoring react; a bad value is named, not raised."""
        if not self.running:
            return self.status()
        try:
            shift = WorldShift(
                share=share,
                amount_factor=amount_factor,
                new_merchants=int(new_merchants),
                country=country.strip().upper() or None,
                missing=tuple(missing),
            )
        except ValidationError as exc:
            return "World shift not applied: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
        described = self._all("set_world_shift", None if shift.changes_nothing else shift)[0]
        return f"World shift applied from the next batch: {described}."


# -- the app ---------------------------------------------------------------------------------------------------
CSS = """
.tiles {display: grid; grid-template-columns: repeat(5, minmax(0, 1fr)); gap: 12px;}
.tile {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 16px;
       background: var(--background-fill-secondary);}
.tile-label {font-size: 0.85rem; color: var(--body-text-color-subdued); text-transform: uppercase;
             letter-spacing: 0.04em;}
.tile-value {font-size: 1.7rem; font-weight: 700; line-height: 1.25; margin: 4px 0;}
.tile-note {font-size: 0.8rem; color: var(--body-text-color-subdued);}
.mono textarea {font-family: ui-monospace, monospace; font-size: 0.85rem;}
.tile-problem {background: #fef3c7; color: #92400e; padding: 8px 12px; border-radius: 8px; margin-bottom: 8px;}
@media (max-width: 1100px) {.tiles {grid-template-columns: repeat(3, minmax(0, 1fr));}}
"""


def actor_view(scoreboard: Any | None = None) -> Callable[[], View]:
    """A source of views: the cluster's stats actor's ``dashboard_view()`` joined with ``scoreboard``'s truth."""
    actor = stats_actor()

    def view() -> View:
        production = ray.get(actor.dashboard_view.remote(), timeout=10)
        if scoreboard is None:
            return joined_view(production)
        alert_ids = [alert["transaction_id"] for alert in production["alerts"]]
        return joined_view(production, ray.get(scoreboard.view.remote(alert_ids), timeout=10))

    return view


def build_dashboard(
    settings: Settings,
    view_source: Callable[[], View],
    simulation: SimulationControl,
    *,
    refresh_s: float = REFRESH_S,
    history: History | None = None,
) -> Any:
    """The Blocks UI (tabs: live, check a transaction, rules, review, simulation, monitoring, models). Open pages add to ``history`` too, so
    charts move even without ``sample_history`` running."""
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    headers = api_headers(settings)
    history = history or History(min_gap_s=refresh_s / 2)
    controls = simulation.running
    with gr.Blocks(title="Fraud analytics", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## Real-time fraud analytics\nLive from the stats actor every {refresh_s:g} s · API "
            f"[{api_url}]({api_url}/docs) · ground truth from the simulation, joined by transaction_id"
        )
        tiles = gr.HTML(tiles_html([]), elem_id="tiles")
        with gr.Tabs():
            with gr.Tab("Live", id="live"):
                over_time = {"x": "time", "x_title": "time", "x_axis_format": "%H:%M:%S", "height": 230}
                percentiles = {"y": "ms", "color": "series", "color_map": SERIES_COLOURS}
                with gr.Row():
                    tps_plot = gr.LinePlot(
                        y="tx/s", title="Transactions scored per second", elem_id="tps-plot", **over_time
                    )
                    latency_plot = gr.LinePlot(
                        title="Scoring latency (ms)", elem_id="latency-plot", **percentiles, **over_time
                    )
                    lag_plot = gr.LinePlot(title="Stream lag (ms)", elem_id="lag-plot", **percentiles, **over_time)
                with gr.Row():
                    with gr.Column(scale=1):
                        score_plot = gr.LinePlot(
                            x="fraud_score",
                            y="% of class",
                            color="class",
                            color_map=CLASS_COLOURS,
                            x_lim=[0, 1],
                            height=260,
                            title="Score by ground truth",
                            x_title="fraud_score",
                            elem_id="score-plot",
                        )
                    with gr.Column(scale=1):
                        detection = gr.Dataframe(
                            detection_table({}),
                            label="Detection per simulated scenario",
                            interactive=False,
                            elem_id="detection",
                        )
                alerts = gr.Dataframe(
                    alerts_table([]),
                    label="Recent alerts (HIGH decisions), newest first",
                    interactive=False,
                    wrap=True,
                    max_height=420,
                    elem_id="alerts",
                    column_widths=["8%", "6%", "9%", "9%", "8%", "45%", "15%"],
                )
            with gr.Tab("Check a transaction", id="check"):
                with gr.Row():
                    with gr.Column():
                        transaction_id = gr.Textbox(
                            label="transaction_id", value=lambda: f"manual-{int(time.time() * 1000)}"
                        )
                        user_id = gr.Textbox(label="user_id", value="u0000042")
                        merchant_id = gr.Textbox(label="merchant_id", value="m000017")
                        amount = gr.Number(label="amount", value=129.99, elem_id="check-amount")
                        timestamp = gr.Textbox(
                            label="timestamp (ISO-8601, UTC if no offset)",
                            value=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        )
                    with gr.Column():
                        currency = gr.Textbox(label="currency", value="USD")
                        channel = gr.Dropdown(label="channel", choices=["", *CHANNELS], value="online")
                        country = gr.Textbox(label="country", value="US")
                        device_id = gr.Textbox(label="device_id (optional)", value="")
                        mcc = gr.Textbox(label="mcc (optional)", value="5732")
                        with gr.Row():
                            lat = gr.Textbox(label="lat (optional)", value="")
                            lon = gr.Textbox(label="lon (optional)", value="")
                check_button = gr.Button("Check transaction", variant="primary", elem_id="check-button")
                check_result = gr.Markdown("", elem_id="check-result")
            with gr.Tab("Rules", id="rules"):
                rules_status = gr.Markdown("", elem_id="rules-status")
                rules_view = gr.Dataframe(
                    rules_table({}),
                    label="The active rules, in the order they apply",
                    interactive=False,
                    wrap=True,
                    elem_id="rules-table",
                    column_widths=["10%", "8%", "8%", "44%", "30%"],
                )
                with gr.Row():
                    with gr.Column(scale=3):
                        editor = gr.Textbox(
                            label="Rule set: YAML or JSON, the PUT /api/rules body",
                            lines=14,
                            max_lines=40,
                            elem_id="rules-editor",
                            elem_classes=["mono"],
                        )
                    with gr.Column(scale=1):
                        save_button = gr.Button("Save", variant="primary", elem_id="rules-save")
                        reload_button = gr.Button("Reload the active rule set", elem_id="rules-reload")
                        delay = gr.Number(label="label delay (days)", value=settings.label_delay_days, minimum=0)
                        test_start = gr.Textbox(label="first day measured (YYYY-MM-DD; blank: the first)")
                        test_days = gr.Number(label="days measured (0: all)", value=0, precision=0, minimum=0)
                        test_button = gr.Button("Test on the simulated history", elem_id="rules-test")
                save_result = gr.Markdown("", elem_id="rules-save-result")
                test_summary = gr.Markdown("", elem_id="rules-test-summary")
                test_table = gr.Dataframe(
                    pd.DataFrame(columns=RULE_TEST_COLUMNS),
                    interactive=False,
                    label="Per rule on the history (each rule alone, whatever its state)",
                    elem_id="rules-test-table",
                )
                per_day_plot = gr.LinePlot(
                    x="day",
                    y="matched",
                    color="rule",
                    title="Matches per day (UTC)",
                    x_title="day",
                    height=260,
                    elem_id="rules-per-day",
                )
            with gr.Tab("Review", id="review") as review_tab:
                with gr.Row():
                    with gr.Column(scale=3):
                        queue_status = gr.Markdown("", elem_id="review-summary")
                    queue_limit = gr.Number(
                        label="cases shown",
                        value=REVIEW_LIMIT,
                        precision=0,
                        minimum=1,
                        maximum=MAX_REVIEW_LIMIT,
                        scale=1,
                        elem_id="review-limit",
                    )
                    queue_button = gr.Button("Refresh the queue", elem_id="review-refresh", scale=1)
                queue = gr.Dataframe(
                    queue_table([]),
                    label="Open cases: highest score first, then largest amount",
                    interactive=False,
                    wrap=True,
                    max_height=360,
                    elem_id="review-queue",
                )
                queue_cases = gr.State([])
                with gr.Row():
                    with gr.Column(scale=2):
                        case_pick = gr.Dropdown(label="case (or click its row)", choices=[], elem_id="review-case")
                        case_details = gr.Markdown(describe_case(None), elem_id="review-details")
                    with gr.Column(scale=1):
                        analyst = gr.Textbox(label="analyst", elem_id="review-analyst")
                        note = gr.Textbox(label="note (optional)", lines=2, elem_id="review-note")
                        with gr.Row():
                            fraud_button = gr.Button("Fraud", variant="stop", elem_id="review-fraud")
                            genuine_button = gr.Button("Genuine", elem_id="review-genuine")
                        decision_result = gr.Markdown("", elem_id="review-result")
            with gr.Tab("Simulation", id="simulation"):
                simulation_status = gr.Markdown(simulation.status() if not controls else "", elem_id="sim-status")
                with gr.Row():
                    rate = gr.Slider(
                        10,
                        5000,
                        value=simulation.target_tps if controls else settings.target_tps,
                        step=10,
                        label="Simulated transactions / s",
                        interactive=controls,
                    )
                    rate_button = gr.Button("Apply rate", interactive=controls)
                gr.Markdown("**Scenario mix** (relative weights of the fraud scenarios in the simulated days)")
                weights = []
                for first in range(0, len(FRAUD_SCENARIOS), 3):
                    with gr.Row():
                        weights += [
                            gr.Slider(0, 5, value=1, step=0.5, label=name, interactive=controls)
                            for name in FRAUD_SCENARIOS[first : first + 3]
                        ]
                mix_button = gr.Button("Apply scenario mix", interactive=controls)
                gr.Markdown("**Launch an attack now**: one scenario injected into the live traffic immediately")
                with gr.Row():
                    scenario = gr.Dropdown(
                        list(FRAUD_SCENARIOS), value=FRAUD_SCENARIOS[0], label="scenario", interactive=controls
                    )
                    incidents = gr.Slider(1, 50, value=10, step=1, label="incidents", interactive=controls)
                    attack_button = gr.Button("Launch attack", variant="stop", interactive=controls)
                gr.Markdown("**Shift the world** (drift: the Monitoring figures should move; labels stay as they were)")
                with gr.Row():
                    shift_share = gr.Slider(
                        0.05,
                        1,
                        value=0.5,
                        step=0.05,
                        label="share of traffic",
                        interactive=controls,
                        elem_id="shift-share",
                    )
                    shift_amount = gr.Slider(
                        0.25, 10, value=1, step=0.25, label="amount ×", interactive=controls, elem_id="shift-amount"
                    )
                    shift_merchants = gr.Number(
                        value=0, precision=0, minimum=0, label="new merchants", interactive=controls
                    )
                    shift_country = gr.Textbox(
                        value="", max_length=2, label="country (ISO, optional)", interactive=controls
                    )
                    shift_missing = gr.CheckboxGroup(
                        list(OPTIONAL_COLUMNS),
                        label="fields going missing",
                        interactive=controls,
                        elem_id="shift-missing",
                    )
                shift_button = gr.Button("Apply world shift", interactive=controls, elem_id="shift-button")
                control_result = gr.Markdown("", elem_id="control-result")
            with gr.Tab("Monitoring", id="monitoring"):
                monitoring_text = gr.Markdown("", elem_id="monitoring-summary")
                drift_plot = gr.LinePlot(
                    x="time",
                    y="psi",
                    color="feature",
                    x_axis_format="%H:%M:%S",
                    height=260,
                    title="PSI of the worst features over time",
                    elem_id="drift-plot",
                )
                with gr.Row():
                    worst_table = gr.Dataframe(
                        worst_features({"features": {}, "drifted": []}),
                        interactive=False,
                        label="Worst features (PSI, missing rate)",
                        elem_id="worst-features",
                    )
                    missing_table = gr.Dataframe(
                        inputs_table({"inputs": {}}),
                        interactive=False,
                        label="Optional fields missing (window vs training)",
                    )
                    rejected = gr.Dataframe(
                        rejected_table({"rejected_inputs": {"by_field": {}}}),
                        interactive=False,
                        label="Rejected inputs by field",
                    )
            with gr.Tab("Models", id="models"):
                models_button = gr.Button("Reload from the registry")
                rollout_line = gr.Markdown(elem_id="rollout-state")
                rollout_events = gr.Dataframe(interactive=False, label="rollout state changes (newest first)")
                model_outputs = [rollout_line, rollout_events]
                for _ in ("champion", "challenger"):
                    with gr.Group():
                        title = gr.Markdown()
                        summary = gr.Markdown()
                        with gr.Row():
                            metrics = gr.Dataframe(interactive=False, label="metrics (test, validation)")
                            per_scenario = gr.Dataframe(interactive=False, label="recall per scenario (test)")
                        operating = gr.Dataframe(
                            interactive=False, label="operating points (test): precision, recall, FPR, expected cost"
                        )
                        image = gr.Image(
                            label="ROC · precision-recall · score by class · operating point (test period)",
                            interactive=False,
                            buttons=["fullscreen"],
                        )
                    model_outputs += [title, summary, metrics, per_scenario, operating, image]

        timer = gr.Timer(refresh_s)
        live_outputs = [tiles, tps_plot, latency_plot, lag_plot, score_plot, detection, alerts, simulation_status]

        def refresh() -> list[Any]:
            try:
                view = view_source()
            except Exception as exc:  # the actor restarting or Ray going down: say so, keep the last figures
                return [
                    tiles_html([], problem=f"Live figures unavailable: {type(exc).__name__}: {exc}"),
                    *[gr.skip()] * (len(live_outputs) - 1),
                ]
            history.observe(view["stats"], datetime.now(timezone.utc))
            frames = history.frames()
            distribution, caption = score_distribution(view["samples"])
            return [
                tiles_html(live_tiles(view)),
                frames["tps"],
                frames["latency"],
                frames["lag"],
                gr.LinePlot(value=distribution, title=caption),
                detection_table(view["scenarios"]),
                alerts_table(view["alerts"]),
                simulation.status() if controls else gr.skip(),
            ]

        def check(*values: Any) -> str:
            names = (
                "transaction_id",
                "user_id",
                "merchant_id",
                "amount",
                "timestamp",
                "currency",
                "channel",
                "country",
                "device_id",
                "mcc",
                "lat",
                "lon",
            )
            return check_transaction(api_url, check_body(**dict(zip(names, values))))

        def models() -> list[Any]:
            registry = registry_for(settings)
            champion = model_section(registry, "champion", "Champion")
            state = RolloutStore(settings).current()
            challenger_version = state.serving and registry.resolve(state.version)
            challenger = (
                model_section(registry, challenger_version, "Challenger")
                if challenger_version and challenger_version != registry.resolve("champion")
                else None
            )
            out: list[Any] = list(rollout_view(state))
            for section, empty in (
                (champion, "### Champion\nNo champion in the registry yet."),
                (
                    challenger,
                    "### Challenger\nNone serving (`fraudctl rollout`, `FRAUD_CHALLENGER`), or it is the champion.",
                ),
            ):
                if section is None:
                    out += [
                        empty,
                        "",
                        gr.Dataframe(visible=False),
                        gr.Dataframe(visible=False),
                        gr.Dataframe(visible=False),
                        gr.Image(value=None, visible=False),
                    ]
                else:
                    out += [
                        section.title,
                        section.summary,
                        gr.Dataframe(section.metrics, visible=True),
                        gr.Dataframe(section.scenarios, visible=not section.scenarios.empty),
                        gr.Dataframe(section.operating, visible=not section.operating.empty),
                        gr.Image(value=section.image, visible=section.image is not None),
                    ]
            return out

        def show_rules() -> list[Any]:
            caption, rule_set = load_rules(api_url)
            if rule_set is None:
                return [caption, gr.skip(), gr.skip()]
            return [caption, rules_table(rule_set), rules_text(rule_set)]

        def save(text: str) -> list[Any]:
            message, rule_set = save_rules(api_url, headers, text)
            if rule_set is None:
                return [message, gr.skip(), gr.skip()]
            return [message, rules_caption(rule_set), rules_table(rule_set)]

        def test_rules(
            text: str, delay_days: float | None, start: str, days: float | None, progress: gr.Progress = gr.Progress()
        ) -> list[Any]:
            try:
                lists = stored_lists(settings)
                body = editor_rules(text, {name: entry.kind for name, entry in lists.items()})
                first_day, day_count = rule_test_window(start, days)
                history = rule_test_history(
                    settings, stage_counter(progress, len(HISTORY_STAGES), "simulating the history")
                )
                summary = replay_rules(
                    settings,
                    body,
                    data=history,
                    delay_days=float(delay_days or 0),
                    start=first_day,
                    days=day_count,
                    lists=lists,
                    progress=stage_counter(progress, replay_steps(body), "rule test"),
                )
            except ValueError as exc:
                return [describe_untested(exc), gr.skip(), gr.skip()]
            return [rule_test_summary(summary), rule_test_table(summary), rule_test_per_day(summary)]

        def show_queue(limit: float | None) -> list[Any]:
            loaded, summary = load_queue(api_url, int(limit or REVIEW_LIMIT))
            if loaded is None:
                return [summary, gr.skip(), gr.skip(), gr.skip(), gr.skip()]
            cases = loaded["cases"]
            first = cases[0] if cases else None
            return [
                summary,
                queue_table(cases),
                cases,
                gr.Dropdown(choices=case_choices(cases), value=first and first["case_id"]),
                describe_case(first),
            ]

        def show_case(case_id: str | None, cases: list[dict[str, Any]]) -> str:
            return describe_case(next((c for c in cases if c["case_id"] == case_id), None))

        def pick_row(cases: list[dict[str, Any]], event: gr.SelectData) -> Any:
            row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            return cases[row]["case_id"] if 0 <= row < len(cases) else gr.skip()

        def decider(is_fraud: bool) -> Callable[..., list[Any]]:
            def decide(case_id: str | None, analyst_name: str, note_text: str, limit: float | None) -> list[Any]:
                body = decision_body(is_fraud=is_fraud, analyst=analyst_name, note=note_text)
                return [decide_case(api_url, headers, case_id, body), *show_queue(limit)]

            return decide

        drift_history = DriftHistory()
        monitoring_outputs = [monitoring_text, drift_plot, worst_table, missing_table, rejected]

        def monitoring() -> list[Any]:
            try:
                view = fetch_monitoring(api_url)
            except Exception as exc:  # the API restarting: say so, keep the last figures
                return [
                    f"Monitoring unavailable: {type(exc).__name__}: {exc}",
                    *[gr.skip()] * (len(monitoring_outputs) - 1),
                ]
            drift_history.observe(view, datetime.now(timezone.utc))
            worst = worst_features(view)
            return [
                monitoring_summary(view),
                drift_history.frame(list(worst["feature"])),
                worst,
                inputs_table(view),
                rejected_table(view),
            ]

        gr.Timer(MONITORING_REFRESH_S).tick(monitoring, outputs=monitoring_outputs, show_progress="hidden")
        demo.load(monitoring, outputs=monitoring_outputs, show_progress="hidden")
        timer.tick(refresh, outputs=live_outputs, show_progress="hidden")
        demo.load(refresh, outputs=live_outputs, show_progress="hidden")
        demo.load(models, outputs=model_outputs)
        models_button.click(models, outputs=model_outputs)
        check_button.click(
            check,
            inputs=[
                transaction_id,
                user_id,
                merchant_id,
                amount,
                timestamp,
                currency,
                channel,
                country,
                device_id,
                mcc,
                lat,
                lon,
            ],
            outputs=check_result,
        )
        rate_button.click(simulation.set_rate, inputs=rate, outputs=control_result)
        mix_button.click(
            lambda *w: simulation.set_mix(dict(zip(FRAUD_SCENARIOS, w))), inputs=weights, outputs=control_result
        )
        attack_button.click(simulation.launch_attack, inputs=[scenario, incidents], outputs=control_result)
        shift_button.click(
            simulation.shift_world,
            inputs=[shift_share, shift_amount, shift_merchants, shift_country, shift_missing],
            outputs=control_result,
        )
        rules_outputs = [rules_status, rules_view, editor]
        demo.load(show_rules, outputs=rules_outputs)
        reload_button.click(show_rules, outputs=rules_outputs)
        save_button.click(save, inputs=editor, outputs=[save_result, rules_status, rules_view])
        test_button.click(
            test_rules, inputs=[editor, delay, test_start, test_days], outputs=[test_summary, test_table, per_day_plot]
        )
        queue_outputs = [queue_status, queue, queue_cases, case_pick, case_details]
        review_tab.select(show_queue, inputs=queue_limit, outputs=queue_outputs)
        queue_button.click(show_queue, inputs=queue_limit, outputs=queue_outputs)
        case_pick.change(show_case, inputs=[case_pick, queue_cases], outputs=case_details)
        queue.select(pick_row, inputs=queue_cases, outputs=case_pick)
        for button, is_fraud in ((fraud_button, True), (genuine_button, False)):
            button.click(
                decider(is_fraud),
                inputs=[case_pick, analyst, note, queue_limit],
                outputs=[decision_result, *queue_outputs],
            )
    return demo


def dashboard_app(blocks: Any) -> Any:
    """The Blocks mounted at ``/`` of a FastAPI app, with a theme that needs no web fonts (works offline)."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    theme = gr.themes.Soft(font=system, font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(
        FastAPI(title="Fraud analytics dashboard"),
        blocks,
        path="/",
        theme=theme,
        css=CSS,
        ssr_mode=False,
        footer_links=[],
    )


def sample_history(history: History, view_source: Callable[[], View], every_s: float, stop: threading.Event) -> None:
    """Add a point every ``every_s`` until ``stop``, so the charts cover the time no page was open."""
    while not stop.wait(every_s):
        try:
            history.observe(view_source()["stats"], datetime.now(timezone.utc))
        except Exception:  # the stats actor restarting: the next round tries again
            continue


@contextmanager
def serving_dashboard(
    settings: Settings,
    simulation: SimulationControl,
    *,
    port: int | None = None,
    view_source: Callable[[], View] | None = None,
    refresh_s: float = REFRESH_S,
) -> Iterator[str]:
    """Serve the dashboard with uvicorn in a background thread for the duration of the block; yields its URL.

    Leaving the block (Ctrl-C in the main job) stops uvicorn and waits until the port is free.
    """
    host, port = settings.api_host, port or settings.ui_port
    if port_in_use(host, port):
        raise RuntimeError(f"ui_port: {host}:{port} is already in use (set FRAUD_UI_PORT to another port)")
    view_source = view_source or actor_view(simulation.scoreboard)
    history, stop = History(min_gap_s=refresh_s / 2), threading.Event()
    sampler = threading.Thread(
        target=sample_history, args=(history, view_source, refresh_s, stop), name="dashboard-history", daemon=True
    )
    app = dashboard_app(build_dashboard(settings, view_source, simulation, refresh_s=refresh_s, history=history))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout_s=60, what="the dashboard's start")
    except TimeoutError:
        server.should_exit = True
        raise
    if not server.started:
        raise RuntimeError(f"the dashboard did not start on {host}:{port}")
    sampler.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        stop.set()
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
