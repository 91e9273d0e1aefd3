"""The Serve application: a FastAPI ingress and the ensemble composed from deployments.

    ingress --(1)--> keyed feature-state actors (online windows + merchant risk; profiles from a DynamoDB cache)
            --(2)--> XGBoost || Autoencoder (parallel deployments, batched, any registry version)
            -> combine in the ingress (calibration, risk policy, reason codes, the rule set's action)
            -> SNS alert for HIGH, a review case for "review" (``serve.cases``, after the answer)

Two sequential remote calls per pass (the pass's transactions go to the ingest stream alongside the first, so a
restarted state actor can replay them), and concurrent requests share a pass: the ingress coalesces them (group
commit, ``serve.coalesce``: a lone request never waits, a loaded replica runs large passes), and ``@serve.batch``
merges the calls of several ingress replicas in the model stages. The feature
stage is the partitioned state actors themselves (``cluster.feature_state.OnlineFeatures``; a partition per actor,
like a keyed stream processor), called straight from the ingress: a Features deployment in between measured one
more hop per request for no work of its own. The combiner is little work, so it runs in the ingress too. The
ingress names the model version on every call, so champion and challenger share the model deployments and a
promotion switches both stages together.

No ``from __future__ import annotations``: FastAPI must see real annotations on the ingress methods.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pandas as pd
import torch
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse, Response
from ray import serve

from cluster.aws import client
from cluster.config import Settings, get_settings, use_settings
from cluster.feature_state import OnlineFeatures
from cluster.features import Columns
from cluster.kinesis import KinesisPutError, put_transactions
from serve.alerts import AlertPublisher, AlertPublishError
from serve.api import (
    API_KEY_SCHEME,
    BATCH_BODY,
    BODY_ERRORS,
    CASE_DECISION_BODY,
    CASE_DECISION_ERRORS,
    CASES_ERRORS,
    EXPLAIN,
    FEEDBACK_BODY,
    HEALTH_RESPONSES,
    KEY_ERRORS,
    LIST_BODY,
    LIST_ERRORS,
    LIST_ITEM_ERRORS,
    LIST_ITEMS_BODY,
    MAX_LIST_VALUES,
    NOT_READY,
    RULES_BODY,
    RULES_ERRORS,
    SCORING_ERRORS,
    TRANSACTION_BODY,
    ApiError,
    BatchDecisions,
    Case,
    CaseId,
    CaseLimit,
    CaseQueue,
    CaseStatus,
    Decision,
    FeatureState,
    Feedback,
    FeedbackAccepted,
    Health,
    ListName,
    Monitoring,
    RolloutStatus,
    Versions,
    check_api_key,
    document_security,
    install_error_handlers,
    parse_batch_body,
    parse_case_decision,
    parse_feedback,
    parse_list,
    parse_list_items,
    parse_list_name,
    parse_list_value,
    parse_rules,
    parse_transaction_body,
    read_body,
    read_json,
    require_key_configured,
    rule_set_response,
)
from serve.cases import CaseClosed, CaseNotFound, CaseOpener, CaseStore
from serve.champion import (
    DECISIONS_PREFIX,
    FEEDBACK_PREFIX,
    TRANSACTIONS_PREFIX,
    JsonLinesLog,
    decision_rows,
    in_canary,
    transaction_rows,
)
from serve.coalesce import Coalescer
from serve.lists import ListCache, ListStore
from serve.monitoring import LaneLevels, MonitoringReporter
from serve.rollout import RolloutStore, guard_actor, read_routing
from serve.rule_store import RuleCache, RuleStore
from serve.runtime import serve_env
from serve.scoring import ModelSet, apply_rules, canonical_columns, combine, scoring_record, split_rows
from serve.stats import StatsReporter
from training.predict import ae_scores, xgb_scores
from training.rules import CompiledRules, RuleError, RuleSet, lenient_lists

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 4096  # rows per model call, summed over the requests a pass merges
CHAMPION_PASSES = 2  # passes in flight per ingress replica: one computes features while another awaits models
FEATURE_ACTOR_CPUS = 0.1

api = FastAPI(
    title="Fraud scoring API",
    version="1.0",
    description="Real-time card fraud scores from the XGBoost + autoencoder ensemble.",
)
install_error_handlers(api)


def json_response(content: Any) -> Response:
    """Decisions are built to the response model already: serialised once by orjson, not validated again
    (``response_model`` still documents them in the OpenAPI schema)."""
    return Response(orjson.dumps(content), media_type="application/json")


def _rows(items: list[Any]) -> int:
    return sum(len(item[-1]) for item in items)


def autoscaling(settings: Settings, *, max_replicas: int | None = None) -> dict[str, Any]:
    return {
        "min_replicas": settings.serve_min_replicas,
        "max_replicas": max(max_replicas or settings.serve_max_replicas, settings.serve_min_replicas),
        "target_ongoing_requests": settings.serve_target_ongoing_requests,
        "upscale_delay_s": settings.serve_upscale_delay_s,
        "downscale_delay_s": settings.serve_downscale_delay_s,
    }


class _ModelStage:
    """Shared by both model deployments: bundles by version, one model call per version in a merged batch.

    Each subclass defines ``predict(bundle, x) -> tuple of per-row arrays``. The model runs on the replica's event
    loop: a call is short and a thread hop would cost more, and calls that arrive meanwhile form the next batch.
    """

    predict: Callable[[Any, np.ndarray], tuple[np.ndarray, ...]]

    def __init__(self, settings: Settings):
        use_settings(settings)
        self.models = ModelSet(settings)

    def _run(self, requests: list[tuple[str, np.ndarray]]) -> list[Any]:
        results: list[Any] = [None] * len(requests)
        for version in {version for version, _ in requests}:
            positions = [i for i, (v, _) in enumerate(requests) if v == version]
            x = np.concatenate([requests[i][1] for i in positions])
            outputs = self.predict(self.models.scorer(version).bundle, x)
            parts = [split_rows(out, [len(requests[i][1]) for i in positions]) for out in outputs]
            for rank, i in enumerate(positions):
                results[i] = tuple(part[rank] for part in parts)
        return results

    async def ready(self, version: str) -> bool:
        await asyncio.to_thread(self.models.scorer, version)
        return True


@serve.deployment(name="XGBoost", ray_actor_options={"num_cpus": 0.3}, max_ongoing_requests=512)
class XGBoostStage(_ModelStage):
    def predict(self, bundle: Any, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return (xgb_scores(bundle, x),)

    @serve.batch(max_batch_size=MAX_BATCH_ROWS, batch_wait_timeout_s=0.0, batch_size_fn=_rows)
    async def score(self, requests: list[tuple[str, np.ndarray]]) -> list[Any]:
        return self._run(requests)


@serve.deployment(name="Autoencoder", ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=512)
class AutoencoderStage(_ModelStage):
    def __init__(self, settings: Settings):
        torch.set_num_threads(1)
        super().__init__(settings)

    def predict(self, bundle: Any, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return (ae_scores(bundle, x),)

    @serve.batch(max_batch_size=MAX_BATCH_ROWS, batch_wait_timeout_s=0.0, batch_size_fn=_rows)
    async def score(self, requests: list[tuple[str, np.ndarray]]) -> list[Any]:
        return self._run(requests)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=512)
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: Settings, xgboost: Any, autoencoder: Any):
        require_key_configured(settings)
        document_security(api, key_configured=settings.api_key is not None)
        use_settings(settings)
        self.settings = settings
        self.features = OnlineFeatures(settings, actor_cpus=FEATURE_ACTOR_CPUS)
        self.kinesis = client("kinesis", settings)
        self.xgboost, self.autoencoder = xgboost, autoencoder
        self.models = ModelSet(settings)
        self.alerts = AlertPublisher(settings)
        self.reporter = StatsReporter()
        self.monitor = MonitoringReporter(settings)
        self.lanes = LaneLevels(settings, actor=self.monitor.actor)
        self.decision_log = JsonLinesLog(settings, DECISIONS_PREFIX)
        self.feedback_log = JsonLinesLog(settings, FEEDBACK_PREFIX, max_rows=1)
        self.transaction_log = JsonLinesLog(settings, TRANSACTIONS_PREFIX)
        self._kept: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []  # (records, decisions) to log
        self.rollout = RolloutStore(settings)
        self.guard = guard_actor(settings)  # the cluster's one rollout guard, started with the app
        self.rule_store = RuleStore(settings)
        self.list_store = ListStore(settings)
        self.rules = RuleCache(settings, self.rule_store, ListCache(settings, self.list_store))
        self.cases = CaseStore(settings)
        self.case_opener = CaseOpener(settings)
        self.champion: str | None = None
        self.challenger: str | None = None
        self.canary_share = 0.0
        self._refreshed = 0.0
        self._background: set[asyncio.Task] = set()
        self._flushers: list[asyncio.Task] = []
        self.champion_pass = Coalescer(
            self._champion_pass, max_size=MAX_BATCH_ROWS, size=lambda item: len(item[0]), concurrency=CHAMPION_PASSES
        )

    def _start_flushers(self) -> None:
        """Once per replica, from the first request that buffers anything (a replica may only ever see feedback)."""
        if not self._flushers:
            self._flushers = [
                asyncio.ensure_future(self._flush_logs()),
                asyncio.ensure_future(self._flush_monitoring()),
            ]

    async def __del__(self) -> None:
        """Serve calls this once a stopping replica has drained its requests (a downscale, a redeploy, a
        shutdown): the shadow passes still running, the cases being opened, the buffered decision and transaction
        logs, stats and monitoring counts reach their stores instead of ending with the process."""
        for task in self._flushers:
            task.cancel()
        if self._background:
            await asyncio.wait(set(self._background))
        kept, self._kept = self._kept, []
        await asyncio.to_thread(self._drain, kept)
        await self.reporter.flush()

    def _drain(self, kept: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> None:
        self._write_logs(kept)
        self.monitor.flush()

    async def _flush_logs(self) -> None:
        """Buffered decision logs and stats reach their stores even when traffic stops."""
        while True:
            await asyncio.sleep(self.decision_log.max_age_s)
            kept, self._kept = self._kept, []  # swapped on the loop, where requests append to it
            await asyncio.to_thread(self._write_logs, kept)
            self.reporter.flush()

    async def _flush_monitoring(self) -> None:
        """Scored batches are binned and sent to the monitoring actor here, in a thread, never in a request."""
        while True:
            await asyncio.sleep(self.monitor.flush_every_s)
            await asyncio.to_thread(self.monitor.flush)

    # -- models ---------------------------------------------------------------------------------------------
    async def _refresh_versions(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed < self.settings.serve_model_refresh_s:
            return
        routing = await asyncio.to_thread(read_routing, self.rollout, self.models)
        champion, challenger = routing.champion, routing.challenger
        if champion is None:
            raise ApiError(503, [{"field": "model", "message": "no champion model in the registry"}], "no model")
        for version in {champion, challenger} - {None}:
            await asyncio.to_thread(self.models.scorer, version)
            await asyncio.gather(self.xgboost.ready.remote(version), self.autoencoder.ready.remote(version))
        self.champion, self.challenger, self.canary_share = champion, challenger, routing.share
        self._refreshed = time.monotonic()

    # -- scoring --------------------------------------------------------------------------------------------
    def _features_of(self, records: list[dict[str, Any]]) -> tuple[Columns, np.ndarray]:
        columns = canonical_columns(records)
        return columns, self.features.matrix(columns, logged_in=self.settings.ingest_stream_name)

    def _log_ingest(self, records: list[dict[str, Any]]) -> None:
        """The pass's transactions appended to the ingest stream, which a restarted state actor replays: a
        request is answered only once its transactions are there."""
        try:
            put_transactions(self.kinesis, self.settings.ingest_stream_name, records)
        except (KinesisPutError, ClientError, BotoCoreError) as exc:
            raise ApiError(
                503,
                [{"field": "transactions", "message": f"the ingest log is unavailable ({type(exc).__name__})"}],
                "ingest log unavailable, retry",
            ) from exc

    async def _champion_pass(
        self, requests: list[tuple[list[dict[str, Any]], bool]]
    ) -> list[tuple[np.ndarray, list[dict[str, Any]], Columns]]:
        """Concurrent requests share one pass (``self.champion_pass`` coalesces them): one call per feature-state
        partition, then one per model stage, all with the champion of the moment. A request is its records and
        whether its LOW decisions are explained; returns each request's (features, decisions, canonical columns:
        built once per pass, the rules read them too). The pass is logged to the ingest stream while the state
        computes its features, not after: the put costs a request only what it takes beyond the state call."""
        records = [record for block, _ in requests for record in block]
        (columns, x), _ = await asyncio.gather(
            asyncio.to_thread(self._features_of, records), asyncio.to_thread(self._log_ingest, records)
        )
        champion = self.champion
        decisions = await self._decide(champion, records, x, [wanted for block, wanted in requests for _ in block])
        self.monitor.add(self.models.scorer(champion).bundle, x, decisions, columns)
        lengths = [len(block) for block, _ in requests]
        bounds = np.cumsum([0, *lengths])
        return [
            (
                part,
                decisions[bounds[i] : bounds[i + 1]],
                {name: values[bounds[i] : bounds[i + 1]] for name, values in columns.items()},
            )
            for i, part in enumerate(split_rows(x, lengths))
        ]

    def _record_labels(self, events: list[dict[str, Any]]) -> int:
        frame = pd.DataFrame(events).rename(columns={"reported_at": "known_at"})
        frame["known_at"] = pd.to_datetime(frame["known_at"], utc=True)
        return self.features.record_labels(frame)

    async def _apply_label(self, label: Feedback) -> dict[str, Any]:
        """A confirmed label, however it came (``/api/feedback``, an analyst's case decision): kept in the feedback
        log (retraining, the champion/challenger comparison), applied to merchant risk and card state, and joined
        to the kept decisions by monitoring. Returns the label's record and how many merchant risk updates it
        made."""
        self._start_flushers()
        record = label.record()
        await asyncio.to_thread(self.feedback_log.add, [record])
        applied = await asyncio.to_thread(self._record_labels, [record])
        self.monitor.label(record["transaction_id"], bool(record["is_fraud"]))
        log.info("label for transaction %s", record["transaction_id"])
        return {"transaction_id": record["transaction_id"], "merchant_risk_updates": applied}

    async def _decide(
        self, version: str, records: list[dict[str, Any]], x: np.ndarray, explain_low: list[bool] | None = None
    ) -> list[dict[str, Any]]:
        (xgb_score,), (ae_score,) = await asyncio.gather(
            self.xgboost.score.remote((version, x)), self.autoencoder.score.remote((version, x))
        )
        bundle = self.models.scorer(version).bundle

        def decisions() -> list[dict[str, Any]]:  # in a thread: the lane's level may be re-read from its actor
            return combine(
                bundle,
                [record["transaction_id"] for record in records],
                x,
                xgb_score,
                ae_score,
                currencies=[record["currency"] for record in records],
                explain_low=explain_low,
                lane_level=self.lanes.level(bundle),
            )

        return await asyncio.to_thread(decisions)

    async def _score(self, transactions: list[Any], explain: bool = False) -> list[dict[str, Any]]:
        started = time.perf_counter()
        self._start_flushers()
        await self._refresh_versions()
        records = [scoring_record(t) for t in transactions]
        ids = [t.transaction_id for t in transactions]
        x, decisions, columns = await self.champion_pass((records, explain))
        if self.challenger is not None:
            canary = [in_canary(tid, self.canary_share) for tid in ids]
            if any(canary):
                decisions = await self._canary(records, x, decisions, canary, explain)
            else:
                self._in_background(self._shadow(records, x, decisions))
        rule_matches = await asyncio.to_thread(self._apply_rules, decisions, columns, x)
        self._open_cases(decisions, transactions)
        alerts = await self._alert(decisions, transactions)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        for decision in decisions:
            decision["processing_time_ms"] = round(elapsed_ms, 3)
        self.reporter.add(
            scored=len(decisions),
            alerts=alerts,
            latency_ms=elapsed_ms,
            decisions=decisions,
            transactions=transactions,
            rule_matches=rule_matches,
        )
        self._kept.append((records, decisions))  # turned into log rows and written by _flush_logs
        return decisions

    def _write_logs(self, kept: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> None:
        """The buffered decision log, and the kept requests as transaction-log rows."""
        self.decision_log.flush()
        self.transaction_log.append(
            [row for records, decisions in kept for row in transaction_rows(records, decisions)]
        )
        self.transaction_log.flush()

    async def _canary(
        self,
        records: list[dict[str, Any]],
        x: np.ndarray,
        decisions: list[dict[str, Any]],
        canary: list[bool],
        explain: bool,
    ) -> list[dict[str, Any]]:
        """The canary rows answered by the challenger; if it fails they keep the champion's answers, and the
        failure counts against the challenger (the rollout guard's error rate)."""
        challenger = self.challenger
        try:
            challenger_decisions = await self._decide(challenger, records, x, [explain] * len(records))
            self.monitor.shadowed(self.models.scorer(challenger).bundle, challenger_decisions)
        except Exception:
            log.exception("challenger %s failed on %d rows; the champion answers them", challenger, sum(canary))
            self.reporter.model_errors(challenger, sum(canary))
            return decisions
        self._log_challenger(decisions, challenger_decisions, canary)
        return [b if c else a for a, b, c in zip(decisions, challenger_decisions, canary)]

    def _apply_rules(
        self, decisions: list[dict[str, Any]], columns: Columns, x: np.ndarray
    ) -> dict[str, dict[str, int]]:
        rules = self.rules.current()
        return apply_rules(rules, decisions, columns, x) if rules.rules else {}

    async def _alert(self, decisions: list[dict[str, Any]], transactions: list[Any]) -> int:
        call = self.alerts.submit(decisions, transactions)
        try:
            return await call if call is not None else 0
        except AlertPublishError as exc:  # nothing claimed is left behind: the client's retry alerts
            raise ApiError(503, [{"field": "alerts", "message": str(exc)}], "alerts unavailable, retry") from exc

    def _open_cases(self, decisions: list[dict[str, Any]], transactions: list[Any]) -> None:
        """The review cases are opened by the case desk after the answer, which does not depend on them."""
        call = self.case_opener.submit(decisions, transactions)
        if call is not None:
            self._in_background(self._cases_opened(call))

    @staticmethod
    async def _cases_opened(call: Any) -> None:
        try:
            await call
        except Exception:  # the desk logged the cases by transaction_id; a client retry or the stream opens them
            log.exception("review cases not opened")

    async def _shadow(self, records: list[dict[str, Any]], x: np.ndarray, champion: list[dict[str, Any]]) -> None:
        version = self.challenger
        challenger = await self._decide(version, records, x)
        self.monitor.shadowed(self.models.scorer(version).bundle, challenger)
        self._log_challenger(champion, challenger, [False] * len(records))

    def _log_challenger(
        self, champion: list[dict[str, Any]], challenger: list[dict[str, Any]], served: list[bool]
    ) -> None:
        self._in_background(asyncio.to_thread(self.decision_log.add, decision_rows(champion, challenger, served)))

    def _in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- endpoints ------------------------------------------------------------------------------------------
    @api.post(
        "/api/check-fraud",
        response_model=Decision,
        openapi_extra=TRANSACTION_BODY,
        responses=SCORING_ERRORS,
        summary="Score one transaction",
    )
    async def check_fraud(self, request: Request, explain: EXPLAIN = False) -> Response:
        transaction = await self._parse_scoring(request, parse_transaction_body)
        return json_response((await self._score([transaction], explain))[0])

    @api.post(
        "/api/check-fraud/batch",
        response_model=BatchDecisions,
        openapi_extra=BATCH_BODY,
        responses=SCORING_ERRORS,
        summary="Score 1 to 1,000 transactions; results in input order",
    )
    async def check_fraud_batch(self, request: Request, explain: EXPLAIN = False) -> Response:
        transactions = await self._parse_scoring(request, parse_batch_body)
        return json_response({"results": await self._score(transactions, explain)})

    async def _parse_scoring(self, request: Request, parse: Callable[[Any], Any]) -> Any:
        """A scoring body, parsed; a rejected one counts its fields for monitoring before its 4xx leaves."""
        try:
            return parse(
                await read_body(request, self.settings.serve_max_body_bytes), request.headers.get("content-type")
            )
        except ApiError as exc:
            self._start_flushers()
            self.monitor.rejected(exc.errors)
            raise

    @api.post(
        "/api/feedback",
        status_code=202,
        openapi_extra=FEEDBACK_BODY,
        response_model=FeedbackAccepted,
        responses={**KEY_ERRORS, **BODY_ERRORS},
        dependencies=[Security(API_KEY_SCHEME)],
        summary="Confirmed label for a transaction (needs the API key)",
    )
    async def feedback(self, request: Request) -> dict[str, Any]:
        check_api_key(self.settings, request)
        label = parse_feedback(await read_json(request, self.settings.serve_max_body_bytes))
        return {"accepted": True, **await self._apply_label(label)}

    @api.get(
        "/api/cases",
        response_model=CaseQueue,
        responses=CASES_ERRORS,
        summary='The review queue: a case per "review" decision, once per transaction_id',
    )
    async def list_cases(self, status: CaseStatus = "open", limit: CaseLimit = 50) -> Response:
        return json_response(await asyncio.to_thread(self.cases.queue, status, limit))

    @api.post(
        "/api/cases/{case_id}/decision",
        response_model=Case,
        openapi_extra=CASE_DECISION_BODY,
        responses=CASE_DECISION_ERRORS,
        dependencies=[Security(API_KEY_SCHEME)],
        summary="An analyst's label closes an open case (needs the API key); the label goes the way of /api/feedback",
    )
    async def decide_case(self, case_id: CaseId, request: Request) -> Response:
        check_api_key(self.settings, request)
        body = parse_case_decision(await read_json(request, self.settings.serve_max_body_bytes))
        try:
            case = await asyncio.to_thread(self.cases.decide, case_id, body.is_fraud, body.analyst, body.note)
        except CaseNotFound:
            raise ApiError(404, [{"field": "case_id", "message": f"no case {case_id}"}], "not found") from None
        except CaseClosed as exc:
            raise ApiError(
                409,
                [{"field": "case_id", "message": f"case {case_id} was decided at {exc.case.get('closed_at')}"}],
                "case closed already",
            ) from None
        label = Feedback.model_validate(
            {
                "transaction_id": case["transaction_id"],
                "is_fraud": body.is_fraud,
                "reported_at": case["closed_at"],
                "merchant_id": case["merchant_id"],
            }
        )
        try:
            await self._apply_label(label)
        except Exception as exc:  # an unlabelled closed case would never be labelled: reopen it for the retry
            await asyncio.to_thread(self.cases.reopen, case_id)
            raise ApiError(
                503,
                [{"field": "is_fraud", "message": f"the label was not applied ({type(exc).__name__})"}],
                "label not applied, retry",
            ) from exc
        log.info("case %s closed by an analyst", case_id)
        return json_response(case)

    @api.get("/api/rules", response_model=RuleSet, summary="The current rule set and its version")
    async def get_rules(self) -> Response:
        return json_response(rule_set_response(await asyncio.to_thread(self.rule_store.get)))

    @api.get(
        "/api/rules/stats",
        summary="Rows each rule matched (active and shadow), over every replica and "
        "stream consumer since the stats actor started",
    )
    async def rule_stats(self) -> dict[str, Any]:
        await self.reporter.flush()
        return {"rule_matches": await self.reporter.actor.rule_counts.remote()}

    @api.put(
        "/api/rules",
        response_model=RuleSet,
        openapi_extra=RULES_BODY,
        responses=RULES_ERRORS,
        dependencies=[Security(API_KEY_SCHEME)],
        summary="Replace the rule set (needs the API key); every replica and stream consumer applies it within 5 s",
    )
    async def put_rules(self, request: Request) -> Response:
        check_api_key(self.settings, request)
        payload = await read_json(request, self.settings.serve_max_body_bytes)
        body = parse_rules(payload, lists=await asyncio.to_thread(self.list_store.kinds))
        stored = await asyncio.to_thread(self.rule_store.put, body)
        self.rules.install(stored)
        log.info("rule set version %s stored (%d rules)", stored.version, len(stored.rules))
        return json_response(rule_set_response(stored))

    @api.get("/api/lists", summary="Every allow/deny list: its name, kind and number of unexpired values")
    async def get_lists(self) -> dict[str, Any]:
        return {"lists": await asyncio.to_thread(self.list_store.summary)}

    @api.put(
        "/api/lists/{name}",
        dependencies=[Security(API_KEY_SCHEME)],
        responses=LIST_ERRORS,
        openapi_extra=LIST_BODY,
        summary="Create or replace a list (needs the API key); rules apply it within 5 s",
    )
    async def put_list(self, name: ListName, request: Request) -> dict[str, Any]:
        check_api_key(self.settings, request)
        name = parse_list_name(name)
        body = parse_list(await read_json(request, self.settings.serve_max_body_bytes))
        await asyncio.to_thread(self._check_rules_with, name, body.kind)
        await asyncio.to_thread(self.list_store.put, name, body.kind, body.values, body.ttl_s)
        log.info("list %s stored (%s, %d values)", name, body.kind, len(body.values))
        return {"name": name, "kind": body.kind, "size": len(body.values)}

    @api.post(
        "/api/lists/{name}/items",
        dependencies=[Security(API_KEY_SCHEME)],
        responses={**LIST_ERRORS, **LIST_ITEM_ERRORS},
        openapi_extra=LIST_ITEMS_BODY,
        summary="Add values to a list (needs the API key)",
    )
    async def add_list_items(self, name: ListName, request: Request) -> dict[str, Any]:
        check_api_key(self.settings, request)
        kind = await self._list_kind(parse_list_name(name))
        body = parse_list_items(await read_json(request, self.settings.serve_max_body_bytes), kind)
        size = len(set(await asyncio.to_thread(self.list_store.values, name)) | set(body.values))
        if size > MAX_LIST_VALUES:
            raise ApiError(
                422,
                [{"field": "values", "message": f"a list holds at most {MAX_LIST_VALUES} values"}],
                "invalid request",
            )
        await asyncio.to_thread(self.list_store.add, name, body.values, body.ttl_s)
        return {"name": name, "kind": kind, "size": size}

    @api.delete(
        "/api/lists/{name}/items/{value}",
        dependencies=[Security(API_KEY_SCHEME)],
        responses=LIST_ITEM_ERRORS,
        summary="Remove one value from a list (needs the API key)",
    )
    async def remove_list_item(self, name: ListName, value: ListName, request: Request) -> dict[str, Any]:
        check_api_key(self.settings, request)
        kind = await self._list_kind(parse_list_name(name))
        if not await asyncio.to_thread(self.list_store.remove, name, parse_list_value(value, kind)):
            raise ApiError(404, [{"field": "value", "message": f"{value!r} is not in list {name}"}], "not found")
        return {"name": name, "kind": kind, "removed": value}

    async def _list_kind(self, name: str) -> str:
        kind = (await asyncio.to_thread(self.list_store.kinds)).get(name)
        if kind is None:
            raise ApiError(404, [{"field": "name", "message": f"no list {name}"}], "not found")
        return kind

    def _check_rules_with(self, name: str, kind: str) -> None:
        """A list may change kind only if the stored rule set still compiles with it (409 otherwise)."""
        try:
            CompiledRules(self.rule_store.get(), lists=lenient_lists({**self.list_store.kinds(), name: kind}))
        except RuleError as exc:
            raise ApiError(
                409,
                [{"field": "kind", "message": f"the rule set uses @{name} otherwise: {exc}"}],
                "conflict with the rule set",
            ) from None

    @api.post(
        "/api/admin/reload",
        response_model=Versions,
        responses={**KEY_ERRORS, **NOT_READY},
        dependencies=[Security(API_KEY_SCHEME)],
        summary="Re-read the champion/challenger pointers now (needs the API key)",
    )
    async def reload(self, request: Request) -> dict[str, Any]:
        check_api_key(self.settings, request)
        await self._refresh_versions(force=True)
        return {"champion": self.champion, "challenger": self.challenger}

    @api.get(
        "/healthz",
        response_model=Health,
        responses=HEALTH_RESPONSES,
        summary="200 once the models are loaded and the pipeline can score",
    )
    async def healthz(self) -> JSONResponse:
        try:
            await self._refresh_versions()
            await asyncio.to_thread(self.features.stats)
        except ApiError as exc:
            return JSONResponse(status_code=503, content={"status": "unavailable", "errors": exc.errors})
        except Exception as exc:  # a model that cannot load is "not ready", with the reason
            return JSONResponse(
                status_code=503, content={"status": "unavailable", "errors": [{"field": "model", "message": str(exc)}]}
            )
        return JSONResponse({"status": "ok", "champion": self.champion, "challenger": self.challenger})

    @api.get(
        "/api/state",
        response_model=FeatureState,
        summary="The online feature state summed over its partitions: rows, keys, last snapshot, recoveries",
    )
    async def state(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.features.summary)

    @api.get(
        "/api/rollout",
        response_model=RolloutStatus,
        summary="The rollout state and the guard's live figures: each model's rates and p99 since it started",
    )
    async def rollout_status(self) -> dict[str, Any]:
        return await self.guard.status.remote()

    @api.get("/api/stats", summary="Live counters")
    async def stats(self) -> dict[str, Any]:
        await self.reporter.flush()
        return await self.reporter.actor.snapshot.remote()

    @api.get(
        "/api/monitoring",
        response_model=Monitoring,
        summary="Drift per feature and of the score, missing rates, rejected inputs and performance on labelled "
        "decisions, over the last window_s against the champion's training reference",
    )
    async def monitoring(self) -> Response:
        await asyncio.to_thread(self.monitor.flush)
        view = await self.monitor.actor.view.remote()
        return json_response({**view, "enabled": self.monitor.enabled})


def build_app(settings: Settings | None = None) -> Any:
    """The composed application, every deployment with its autoscaling config (``serve.run(build_app())``)."""
    settings = settings or get_settings()
    actor_env = {"runtime_env": {"env_vars": {**settings.as_env(), **serve_env(settings)}}}

    def options(deployment: Any, cpus: float, max_replicas: int | None = None) -> Any:
        return deployment.options(
            autoscaling_config=autoscaling(settings, max_replicas=max_replicas),
            ray_actor_options={"num_cpus": cpus, **actor_env},
        )

    return options(Ingress, 0.2).bind(
        settings, options(XGBoostStage, 0.1).bind(settings), options(AutoencoderStage, 0.1).bind(settings)
    )


def app_builder(args: dict[str, str]) -> Any:
    """Entry point for ``serve deploy serve/serve_config.yaml``: settings come from the FRAUD_* environment."""
    return build_app(Settings(**args) if args else get_settings())
