"""``fraudctl rules test``: what a rule set would have done on labelled history, before it goes live.

Each transaction is judged with the features it had at its own time: the offline builder
(``cluster.features.build_features``) sees only earlier transactions and labels known ``delay_days`` after theirs,
exactly as the online state would have. ``fraud_score`` and ``risk_level`` come from the registry's champion;
without one, rules that read them are reported as skipped and the others still run. Every rule, whatever its
state, is measured on its own (so a shadow or disabled rule can be judged before it is switched on); the rule set
as a whole, by its mode and precedence, is compared with the model's own actions. One vectorised pass per rule.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, RootModel, StrictStr, StringConstraints, ValidationError
from tqdm import tqdm

from cluster.config import Settings
from cluster.features import FEATURE_NAMES, FEATURE_VERSION
from cluster.schema import CANONICAL_COLUMNS, ID_PATTERN, LABEL_COLUMN, field_errors
from training.data import featurize, load_profiles, read_labelled
from training.policy import HIGH
from training.predict import FraudScorer
from training.registry import FeatureVersionMismatch, registry_for
from training.rules import (
    ACTIONS,
    ACTIVE,
    LIST_KINDS,
    SCORE_NAMES,
    CompiledRules,
    Expression,
    ListValues,
    Rule,
    RuleSet,
    RuleSetBody,
    compile_expression,
    model_actions,
    rule_inputs,
)

Progress = Callable[[str], None]
LIST_HINT = " (a rule reading @name needs the list's values: --lists FILE)"


def _read_payload(path: Path, option: str) -> Any:
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        return json.loads(text)
    if path.suffix.lower() in (".yaml", ".yml"):
        return yaml.safe_load(text)
    raise ValueError(f"{option}: {path} must be .json, .yaml or .yml")


def read_rules_file(path: Path, *, lists: dict[str, str] | None = None) -> RuleSetBody:
    """A rules file (.json, .yaml or .yml) holding the ``PUT /api/rules`` body; errors name ``rules.N.field``.
    ``lists`` (name -> kind) are the lists its expressions may read."""
    source = f"--rules {path}"
    try:
        return parse_rule_set(_read_payload(path, "--rules"), source=source, lists=lists or {})
    except RuleSetError as exc:
        if lists:
            raise
        raise RuleSetError(
            source + LIST_HINT if any("@" in e["message"] for e in exc.errors) else source, exc.errors
        ) from None


class RuleSetError(ValueError):
    """A rule set that breaks the ``PUT /api/rules`` body's rules; ``errors`` are its ``{"field", "message"}``."""

    def __init__(self, source: str, errors: list[dict[str, str]]):
        super().__init__(f"{source}: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


def parse_rule_set(payload: Any, source: str, lists: dict[str, str] | None = None) -> RuleSetBody:
    """The ``PUT /api/rules`` body from parsed JSON/YAML (a bare list is the rules); errors name ``rules.N.field``.
    ``lists`` (name -> kind) are the lists its expressions may read; ``None``: any list of a fitting field."""
    try:
        return RuleSetBody.model_validate(
            payload if isinstance(payload, dict) else {"rules": payload},
            context=None if lists is None else {"lists": lists},
        )
    except ValidationError as exc:
        raise RuleSetError(source, field_errors(exc)) from None


class ListFileEntry(BaseModel):
    """One list of a lists file: its kind and values, as ``PUT /api/lists/{name}`` takes them."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal[LIST_KINDS]
    values: list[StrictStr]


class ListsFile(RootModel[dict[Annotated[str, StringConstraints(pattern=ID_PATTERN)], ListFileEntry]]):
    """``{name: {"kind": ..., "values": [...]}}``: the lists a rules file's ``@name`` reads during a test."""


def read_lists_file(path: Path) -> dict[str, ListFileEntry]:
    """A lists file (.json, .yaml or .yml); errors name ``NAME.field``."""
    payload = _read_payload(path, "--lists")
    try:
        return ListsFile.model_validate(payload).root
    except ValidationError as exc:
        raise ValueError(
            f"--lists {path}: " + "; ".join(f"{e['field'] or 'the file'}: {e['message']}" for e in field_errors(exc))
        ) from None


def run_rule_test(
    settings: Settings,
    *,
    rules: Path,
    data: Path,
    delay_days: float,
    start: date | None = None,
    days: int | None = None,
    lists: Path | None = None,
) -> dict[str, Any]:
    """``fraudctl rules test``: the rules file replayed over ``data`` (see ``replay_rules``) with its ``@name``
    lists from ``lists``, with a progress bar."""
    named_lists = read_lists_file(lists) if lists else {}
    body = read_rules_file(rules, lists={name: entry.kind for name, entry in named_lists.items()})
    with tqdm(total=replay_steps(body), desc="rules test", unit="step", file=sys.stderr) as bar:

        def advance(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update()

        return replay_rules(
            settings,
            body,
            data=data,
            delay_days=delay_days,
            start=start,
            days=days,
            lists=named_lists,
            progress=advance,
        )


REPLAY_STAGES = ("history", "causal features", "model scores")  # then one step per rule, then the rule set


def replay_steps(body: RuleSetBody) -> int:
    return len(REPLAY_STAGES) + len(body.rules) + 1


def replay_rules(
    settings: Settings,
    body: RuleSetBody,
    *,
    data: Path,
    delay_days: float,
    start: date | None = None,
    days: int | None = None,
    lists: dict[str, ListFileEntry] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Replay ``data`` causally through each rule of ``body`` (reading ``lists``); the figures of each and of the
    whole set. ``progress(stage)`` hears of each of the ``replay_steps(body)`` steps as it ends."""
    started = time.perf_counter()
    step = progress or (lambda stage: None)
    named_lists = lists or {}
    kinds = {name: entry.kind for name, entry in named_lists.items()}
    list_values = {name: ListValues(entry.values) for name, entry in named_lists.items()}
    transactions = read_labelled(data)
    begin = pd.Timestamp(start, tz="UTC") if start else transactions["timestamp"].min()
    end = begin + pd.Timedelta(days=days) if days else None
    if end is not None:
        transactions = transactions[transactions["timestamp"] < end].reset_index(drop=True)
    window = (transactions["timestamp"] >= begin).to_numpy()
    if not window.any():
        raise ValueError(f"--start/--days: no transactions of {data} in the window from {begin:%Y-%m-%d}")
    step("history")
    users, merchants = load_profiles(data)
    features = featurize(transactions, label_delay=timedelta(days=delay_days), users=users, merchants=merchants)
    step("causal features")
    frame = transactions.loc[window].reset_index(drop=True)
    x = features.loc[window, list(FEATURE_NAMES)].to_numpy(dtype=np.float32)
    model = _champion_scores(settings, x, frame["timestamp"].values)
    step("model scores")
    fields = {
        c: frame[c].to_numpy() if c in frame.columns else np.full(len(frame), None, object) for c in CANONICAL_COLUMNS
    }
    is_fraud = frame[LABEL_COLUMN].to_numpy(dtype=np.int8).astype(bool)
    amount = frame["amount"].to_numpy(dtype=np.float64)
    day = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[D]")
    day_labels, day_index = np.unique(day, return_inverse=True)
    flagged = model["risk_level"] == HIGH if model else None

    measured: list[tuple[Rule, Expression]] = []
    skipped = []
    for rule in body.rules:
        expression = compile_expression(rule.expression, lists=kinds)
        needs = sorted(expression.names & set(SCORE_NAMES))
        if needs and not model:
            skipped.append(
                {
                    "id": rule.id,
                    "error": f"reads {', '.join(needs)}, but the registry has no usable "
                    f"champion model ({model_reason(settings)})",
                }
            )
            step(f"rule {rule.id}")
            continue
        measured.append((rule, expression))
    # the inputs every measured rule reads, converted once for all of them
    env = rule_inputs(
        frozenset().union(*(e.names for _, e in measured)),
        fields,
        x,
        **(_score_inputs(model) if model else {}),
        lists={name: list_values[name] for _, e in measured for name in e.lists},
    )
    results: dict[str, Any] = {}
    for rule, expression in measured:
        matched = expression.evaluate(env, len(frame))
        results[rule.id] = {
            "state": rule.state,
            "action": rule.action,
            **_figures(matched, is_fraud, amount, day_index, day_labels, flagged),
        }
        step(f"rule {rule.id}")

    summary: dict[str, Any] = {
        "rows": int(window.sum()),
        "frauds": int(is_fraud.sum()),
        "window": {
            "start": str(frame["timestamp"].min()),
            "end": str(frame["timestamp"].max()),
            "label_delay_days": delay_days,
        },
        "model": (
            {
                "version": model["version"],
                "flagged": int(flagged.sum()),
                "frauds_flagged": int((flagged & is_fraud).sum()),
            }
            if model
            else {"version": None, "reason": model_reason(settings)}
        ),
        "lists": {name: {"kind": entry.kind, "size": len(list_values[name])} for name, entry in named_lists.items()},
        "rules": results,
        "skipped": skipped,
    }
    if model and not skipped:
        summary["rule_set"] = _rule_set_figures(body, fields, x, model, is_fraud, amount, kinds, list_values)
    step("rule set")
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _figures(
    matched: np.ndarray,
    is_fraud: np.ndarray,
    amount: np.ndarray,
    day_index: np.ndarray,
    day_labels: np.ndarray,
    flagged: np.ndarray | None,
) -> dict[str, Any]:
    frauds, genuine = matched & is_fraud, matched & ~is_fraud
    per_day_matched = np.bincount(day_index[matched], minlength=len(day_labels))
    per_day_frauds = np.bincount(day_index[frauds], minlength=len(day_labels))
    figures: dict[str, Any] = {
        "matched": int(matched.sum()),
        "frauds": int(frauds.sum()),
        "genuine": int(genuine.sum()),
        "precision": round(float(frauds.sum() / matched.sum()), 5) if matched.any() else None,
        "recall": round(float(frauds.sum() / is_fraud.sum()), 5) if is_fraud.any() else None,
        "fraud_amount": round(float(amount[frauds].sum()), 2),
        "genuine_amount": round(float(amount[genuine].sum()), 2),
        "per_day": {
            str(label): {"matched": int(m), "frauds": int(f), "genuine": int(m - f)}
            for label, m, f in zip(day_labels, per_day_matched, per_day_frauds)
        },
    }
    if flagged is not None:
        figures["model_overlap"] = {
            "also_flagged_by_model": int((matched & flagged).sum()),
            "frauds_the_model_missed": int((frauds & ~flagged).sum()),
            "fraud_amount_the_model_missed": round(float(amount[frauds & ~flagged].sum()), 2),
        }
    return figures


def _rule_set_figures(
    body: RuleSetBody,
    fields: dict[str, np.ndarray],
    x: np.ndarray,
    model: dict[str, Any],
    is_fraud: np.ndarray,
    amount: np.ndarray,
    kinds: dict[str, str],
    list_values: dict[str, ListValues],
) -> dict[str, Any]:
    """The active rules together (mode and precedence as live) against the model alone: rows and frauds per action."""
    compiled = CompiledRules(
        RuleSet.model_validate({**body.model_dump(), "version": 0}), lists=kinds, list_values=list_values
    )
    outcome = compiled.apply(compiled.inputs(fields, x, **_score_inputs(model)), model["risk_level"])

    def by_action(actions: np.ndarray) -> dict[str, Any]:
        return {
            a: {
                "count": int((actions == a).sum()),
                "frauds": int(((actions == a) & is_fraud).sum()),
                "fraud_amount": round(float(amount[(actions == a) & is_fraud].sum()), 2),
            }
            for a in ACTIONS
        }

    baseline = model_actions(model["risk_level"])
    return {
        "mode": body.mode,
        "active_rules": sum(rule.state == ACTIVE for rule in body.rules),
        "with_rules": by_action(outcome.action),
        "model_only": by_action(baseline),
        "changed": int((outcome.action != baseline).sum()),
    }


def _score_inputs(model: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"fraud_score": model["fraud_score"], "risk_level": model["risk_level"]}


def _champion_scores(settings: Settings, x: np.ndarray, times: np.ndarray) -> dict[str, Any] | None:
    """The champion's decisions on the history, its anomaly lane's level replayed over it as serving keeps it."""
    registry = registry_for(settings)
    version = registry.resolve("champion")
    if version is None:
        return None
    try:
        bundle = registry.load(version, expected_feature_version=FEATURE_VERSION)
    except FeatureVersionMismatch:
        return None
    scores = FraudScorer(bundle).score(pd.DataFrame(x, columns=list(FEATURE_NAMES), copy=False), times=times)
    return {
        "version": version,
        "fraud_score": scores["fraud_score"].to_numpy(),
        "risk_level": scores["risk_level"].to_numpy(dtype=object),
    }


def model_reason(settings: Settings) -> str:
    registry = registry_for(settings)
    version = registry.resolve("champion")
    if version is None:
        return f"no champion in {registry.location}: run `fraudctl train` first"
    return f"champion {version} was trained on another feature spec: retrain with `fraudctl train`"
