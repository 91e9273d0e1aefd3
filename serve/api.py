"""HTTP request handling for the ingress: body limits, JSON parsing, validation against the canonical schema, the
API key, and error bodies that name each offending field. Bad input is always a 4xx, never a 5xx.

Bodies are parsed by hand (not FastAPI body parameters) so NaN/Infinity reach the schema and come back naming
their field, and so the batch endpoint validates 1,000 transactions at schema speed; the OpenAPI document still
describes every body through ``openapi_extra``.
"""

from __future__ import annotations

import copy
import hmac
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cluster.config import Settings
from cluster.schema import (
    COUNTRY_PATTERN,
    ID_PATTERN,
    Identifier,
    TimestampText,
    Transaction,
    field_errors,
    item_field_errors,
    parse_timestamp,
)
from serve.cases import CASE_ID_PATTERN, STATUSES
from training.policy import RISK_LEVELS
from training.rules import ACTIONS, LIST_KINDS, RuleSet, RuleSetBody

MAX_BATCH = 1000
MAX_ERRORS_SHOWN = 100
MAX_JSON_DEPTH = 1024  # orjson's own limit: every body accepted before the limit was named still is
MAX_INT_DIGITS = 4300  # Python's int() limit for decimal strings (sys.get_int_max_str_digits)
TOO_DEEP = f"nested too deeply (at most {MAX_JSON_DEPTH} levels)"
API_KEY_HEADER = "X-API-Key"
TRANSACTION_LIST = TypeAdapter(list[Transaction])
EXPLAIN = Annotated[
    bool,
    Query(
        description=(
            'Give LOW decisions their factors too: the strongest reasons either way, each starting "Raises risk: " or '
            '"Lowers risk: ". MEDIUM and HIGH decisions, and the response without it, are unchanged.'
        ),
        # explicit: Serve ships the app to its replicas pickled, and an unset example there comes out as `{}`
        openapi_examples={"explain": {"value": True}},
    ),
]


class ApiError(Exception):
    def __init__(self, status: int, errors: list[dict[str, str]], detail: str):
        super().__init__(detail)
        self.status, self.errors, self.detail = status, errors, detail


def _optional_timestamp(value: Any) -> Any:
    return None if value is None else parse_timestamp(value)


class Feedback(BaseModel):
    """A confirmed label (chargeback, analyst decision) for a scored transaction."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: Identifier
    is_fraud: StrictBool | Literal[0, 1]
    reported_at: Annotated[
        datetime | None, BeforeValidator(_optional_timestamp, json_schema_input_type=TimestampText | None)
    ] = None
    merchant_id: Identifier | None = None

    def record(self) -> dict[str, Any]:
        reported = self.reported_at or datetime.now(timezone.utc)
        return {
            "transaction_id": self.transaction_id,
            "is_fraud": int(self.is_fraud),
            "reported_at": reported.isoformat(),
            **({"merchant_id": self.merchant_id} if self.merchant_id else {}),
        }


class RuleHit(BaseModel):
    """An active rule that matched the transaction, and its action."""

    id: str
    action: Literal[ACTIONS]


class Decision(BaseModel):
    transaction_id: str
    fraud_score: float = Field(ge=0, le=1)
    is_fraud: bool
    risk_level: Literal[RISK_LEVELS]
    factors: list[str]
    model_version: str | None
    processing_time_ms: float
    action: Literal[ACTIONS] = Field(
        description=(
            "What to do: the matched active rules' action (see the rule set's mode), else the model's "
            "(HIGH -> block, MEDIUM -> review, LOW -> allow)."
        )
    )
    rules: list[RuleHit] = Field(description="The active rules that matched and decided the action.")
    anomaly_score: float | None = Field(
        None, ge=0, le=1, description="The autoencoder's score: the quantile of how unusual the transaction is."
    )
    anomaly_review: bool = Field(
        False,
        description=(
            "The anomaly review lane sent it to review below the alert threshold: among the most unusual of recent "
            "traffic by anomaly score (at least MEDIUM, never HIGH)."
        ),
    )


class BatchDecisions(BaseModel):
    results: list[Decision]


class Batch(BaseModel):
    """The batch body as documented; ``parse_batch`` validates it item by item to name each field."""

    model_config = ConfigDict(extra="ignore")

    transactions: Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)]


class FeedbackAccepted(BaseModel):
    accepted: bool
    transaction_id: str
    merchant_risk_updates: int


class Versions(BaseModel):
    champion: str | None
    challenger: str | None


class FieldError(BaseModel):
    field: str = Field(description="the offending field (``transactions.3.amount``), ``body`` or a header name")
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/503 of the API: what went wrong and each offending field."""

    detail: str
    errors: Annotated[list[FieldError], Field(max_length=MAX_ERRORS_SHOWN)]


class StateKeys(BaseModel):
    user: int = Field(ge=0, description="cards with retained history")
    merchant: int = Field(ge=0, description="merchants with retained history")


class FeatureState(BaseModel):
    """The online feature state, summed over its partitions (``OnlineFeatures.summary``)."""

    rows: int = Field(ge=0, description="retained history rows over every key kind (user, merchant, category)")
    keys: StateKeys
    last_snapshot_at: datetime | None = Field(
        description=(
            "the oldest partition's last snapshot to S3 (null while a partition has none): a lost actor comes back "
            "from it and replays the stream from the positions it holds"
        )
    )
    event_time: datetime | None = Field(
        description=(
            "the latest transaction time the state has seen (null before any): its clock, from which the windows' "
            "retention counts back; history older than that minus 30 days (plus the label delay for merchants) is "
            "evicted, however recent it is on the wall clock"
        )
    )
    recoveries: int = Field(ge=0, description="times a state actor came back from a snapshot or a stream replay")
    replayed: int = Field(ge=0, description="transactions those recoveries re-applied (stream and HTTP-scored)")
    replayed_http: int = Field(
        ge=0,
        description=(
            "of those, transactions scored over HTTP, read back from the ingest stream the ingress appends them to"
        ),
    )
    last_recovery_s: float | None = Field(description="how long the latest recovery took (load + replay), seconds")
    partitions: int = Field(ge=1)
    shards: int = Field(ge=0, description="stream shards whose positions a partition tracks (the most of any)")


class ModelFigures(BaseModel):
    """What one model version answered since the rollout started (within the guard's window)."""

    rows: int = Field(ge=0, description="decisions + errors")
    alert_rate: float
    review_rate: float
    error_rate: float
    latency_p99_ms: float | None


class LiveRollout(BaseModel):
    champion: ModelFigures | None
    challenger: ModelFigures | None


class RolloutStatus(BaseModel):
    """The rollout state and what the guard measures of it now (``RolloutGuard.status``)."""

    version: str | None = Field(description="the challenger")
    share: float = Field(ge=0, le=1, description="of traffic the challenger answers (by transaction_id hash)")
    mode: str = Field(description="shadow | canary | rolled_back | promoted")
    since: str | None
    events: list[dict[str, Any]] = Field(description="state changes: {at, from, to, version, share, reason}")
    stored: bool = Field(description="false while the static settings' challenger applies")
    champion: str | None
    window_s: float = Field(description="the guard compares the rows served in the last window_s at most")
    live: LiveRollout
    verdict: str | None = Field(
        description=("the bound the challenger breaches now (the guard rolls a canary back on its next round), or null")
    )


class MonitoredReference(BaseModel):
    model_version: str | None = Field(
        description="the champion whose training reference the window is compared with (None before any scoring)"
    )
    rows: int | None = Field(description="training rows behind the reference (None: the bundle has no reference)")


class FeatureMonitoring(BaseModel):
    psi: float | None = Field(description="population stability index of the window against the reference bins")
    missing_rate: float | None = Field(description="share of the window's rows where the feature is NaN")


class ScoreMonitoring(BaseModel):
    psi: float | None


class InputMonitoring(BaseModel):
    missing_rate: float | None = Field(description="share of the window's transactions without this field")
    reference_missing_rate: float | None


class RejectedInputs(BaseModel):
    count: int = Field(description="fields named by 4xx answers to scoring requests in the window")
    by_field: dict[str, int] = Field(description="per field, `transactions.3.amount` counted as `amount`")


class Confusion(BaseModel):
    tp: int
    fp: int
    fn: int
    tn: int


class CardPrecision(BaseModel):
    k: int = Field(description="cards judged: the day's k highest-scored (FRAUD_MONITORING_CARD_PRECISION_K)")
    cards: int
    labelled_cards: int = Field(description="of them, cards with any label yet (labels arrive days late)")
    cp_at_k: float | None = Field(description="share of those cards with a labelled fraud that day")


class LabelledDay(BaseModel):
    count: int
    coverage: float | None
    precision: float | None
    recall: float | None
    average_precision: float | None
    confusion: Confusion
    card_precision: CardPrecision | None = Field(None, description="per day only: card precision at k (CP@k)")


class LabelledPerformance(LabelledDay):
    """Kept decisions joined to the labels of ``POST /api/feedback``, at the champion's threshold."""

    kept_decisions: int = Field(description="decisions kept for labels (the newest 200,000)")
    per_day: dict[str, LabelledDay] = Field(description="by the decision's UTC day")


class DriftPolicyView(BaseModel):
    psi_threshold: float
    psi_clear: float
    consecutive: int
    min_rows: int
    psi_formula: str


class AnomalyLaneView(BaseModel):
    """One model version's anomaly review lane as serving keeps it (``training.policy.RiskPolicy.live_lane_level``)."""

    rate: float = Field(description="the share of traffic the lane may send to review")
    trained_level: float = Field(description="the level set at training: the live level's floor")
    live_level: float | None = Field(description="the level applied now (null while closed)")
    open: bool
    window_rows: int = Field(description="the newest anomaly scores the level is the quantile of")
    rows_to_open: int = Field(description="rows the lane must see before it opens")


class Monitoring(BaseModel):
    """Every scored transaction (HTTP and stream) of the last ``window_s`` against the champion's reference."""

    reference: MonitoredReference
    window_s: float
    scored: int = Field(description="transactions scored in the window")
    compared_rows: int = Field(description="of them, scored by the reference's model and binned against it")
    features: dict[str, FeatureMonitoring]
    score: ScoreMonitoring
    drifted: list[str] = Field(description="features in a drift episode now (hysteresis, see drift_policy)")
    rejected_inputs: RejectedInputs
    inputs: dict[str, InputMonitoring] = Field(description="optional transaction fields' missing rates")
    labelled: LabelledPerformance
    drift_policy: DriftPolicyView
    notifications: int = Field(description="drift notifications sent since the monitoring actor started")
    anomaly_review: dict[str, AnomalyLaneView] = Field(
        default_factory=dict, description="per model version with a live anomaly lane"
    )
    enabled: bool = Field(description="false when `FRAUD_MONITORING_ENABLED` is off on this replica")


class Health(BaseModel):
    status: Literal["ok"]
    champion: str
    challenger: str | None


class Unavailable(BaseModel):
    status: Literal["unavailable"]
    errors: list[FieldError]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` put in place: a request body in ``openapi_extra`` cannot point to
    them."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(model.model_json_schema())}},
        }
    }


TRANSACTION_BODY = _body_schema(Transaction)
BATCH_BODY = _body_schema(Batch)
FEEDBACK_BODY = _body_schema(Feedback)
RULES_BODY = _body_schema(RuleSetBody)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


NOT_READY = {
    503: _error(
        "no champion model yet, or alerts could not be published, or the ingest log could not be written: retry"
    )
}
BODY_ERRORS = {
    400: _error("the body is not JSON (or not UTF-8, or nested deeper than 1024 levels); field `body`"),
    413: _error("the body exceeds `FRAUD_SERVE_MAX_BODY_BYTES`; field `body`"),
    422: _error("valid JSON that breaks a rule: each offending field named (at most 100 shown)"),
}
SCORING_ERRORS = {**BODY_ERRORS, **NOT_READY}
KEY_ERRORS = {401: _error(f"missing or wrong `{API_KEY_HEADER}` (when an API key is configured)")}
RULES_ERRORS = {
    **KEY_ERRORS,
    **BODY_ERRORS,
    422: _error("an invalid rule set: each error names its field, e.g. `rules.0.expression`"),
}
HEALTH_RESPONSES = {
    503: {"model": Unavailable, "description": "not ready: no model loaded, or the feature state is unreachable"}
}
API_KEY_SCHEME = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    auto_error=False,
    description="Needed on write endpoints whenever the server has a key configured",
)


def document_security(api: FastAPI, key_configured: bool) -> None:
    """The document asks for the key only where the server checks one: with none configured (embedded mode) the
    write endpoints are open, and the document says so."""
    generate = api.openapi
    documents: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not documents:  # a copy: FastAPI's cached document stays whole
            schema = copy.deepcopy(generate())
            if not key_configured:
                schema.get("components", {}).pop("securitySchemes", None)
                for operation in (op for path in schema["paths"].values() for op in path.values()):
                    operation.pop("security", None)
                    operation.get("responses", {}).pop("401", None)
            documents.append(schema)
        return documents[0]

    api.openapi = openapi  # type: ignore[method-assign]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, [{"field": "body", "message": f"body exceeds {limit} bytes"}], "request too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, [{"field": "body", "message": f"body exceeds {limit} bytes"}], "request too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON (``parse_json``), refusing more than ``limit`` bytes before reading it all."""
    return parse_json(await read_body(request, limit), request.headers.get("content-type"))


def _int_or_float(digits: str) -> int | float:
    """Integers past Python's digit limit become floats (``inf`` when huge), so the schema names their field."""
    return int(digits) if len(digits) <= MAX_INT_DIGITS else float(digits)


def _not_json(message: str, content_type: str | None) -> ApiError:
    if content_type and "json" not in content_type.lower():
        message += f" (the body is read as JSON whatever the Content-Type; this one was {content_type!r})"
    return ApiError(400, [{"field": "body", "message": message}], "invalid JSON")


def parse_json(body: bytes, content_type: str | None = None) -> Any:
    """UTF-8 JSON whatever the Content-Type says; a body that is not JSON, or nests deeper than
    ``MAX_JSON_DEPTH``, is a 400 naming ``body``. Duplicate keys: the last one wins (as in orjson, Python and
    JavaScript). NaN, Infinity and numbers out of the double range parse (as NaN/inf) so the schema names the
    field that carries them."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise _not_json(TOO_DEEP, content_type) from None
    try:  # NaN / Infinity literals, huge numbers, a UTF-8 byte order mark
        return json.loads(body, parse_int=_int_or_float)
    except RecursionError:
        raise _not_json(TOO_DEEP, content_type) from None
    except UnicodeDecodeError as exc:
        raise _not_json(f"not valid UTF-8: {exc.reason} at byte {exc.start}", content_type) from None
    except ValueError as exc:
        raise _not_json(f"not valid JSON: {exc}", content_type) from None


def _invalid(errors: list[dict[str, str]]) -> ApiError:
    shown = errors[:MAX_ERRORS_SHOWN]
    more = f" ({len(errors) - len(shown)} more not shown)" if len(errors) > len(shown) else ""
    return ApiError(422, shown, f"invalid request: {len(errors)} error(s){more}")


def _object(payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(422, [{"field": "body", "message": f"{what} must be a JSON object"}], "invalid request")
    return payload


def parse_transaction(payload: Any, prefix: str = "") -> Transaction:
    try:
        return Transaction.model_validate(_object(payload, "a transaction"))
    except ValidationError as exc:
        raise _invalid([{**e, "field": prefix + e["field"]} for e in field_errors(exc)]) from None
    except ApiError as exc:
        raise ApiError(
            422, [{**e, "field": prefix.rstrip(".") or e["field"]} for e in exc.errors], exc.detail
        ) from None


def parse_batch(payload: Any) -> list[Transaction]:
    """All transactions validated in one pydantic call; every offending item and field named."""
    items = _object(payload, "the batch").get("transactions")
    if not isinstance(items, list):
        raise _invalid([{"field": "transactions", "message": "must be a list of transactions"}])
    if not items or len(items) > MAX_BATCH:
        raise _invalid(
            [{"field": "transactions", "message": f"must hold 1 to {MAX_BATCH} transactions, got {len(items)}"}]
        )
    try:
        return TRANSACTION_LIST.validate_python(items)
    except ValidationError as exc:
        raise _invalid(item_field_errors(exc, "transactions.")) from None


def parse_transaction_body(body: bytes, content_type: str | None = None) -> Transaction:
    """``parse_transaction`` of a raw body, through ``parse_scoring_body``."""
    return parse_scoring_body(body, content_type, Transaction.model_validate_json, parse_transaction)


def parse_batch_body(body: bytes, content_type: str | None = None) -> list[Transaction]:
    """``parse_batch`` of a raw body, through ``parse_scoring_body``."""
    return parse_scoring_body(body, content_type, lambda raw: Batch.model_validate_json(raw).transactions, parse_batch)


def parse_scoring_body(
    body: bytes, content_type: str | None, validate_json: Callable[[bytes], Any], parse: Callable[[Any], Any]
) -> Any:
    """A scoring body validated straight from its bytes in one pydantic call, with no Python objects for the JSON
    in between (the cost of the valid bodies, nearly all of them); a body that call refuses is parsed again the thorough
    way (``parse_json`` then ``parse``), which names each offending field and takes what pydantic's JSON parser
    alone refuses (nesting deeper than its limit, NaN literals, a byte order mark)."""
    try:
        return validate_json(body)
    except ValidationError:
        return parse(parse_json(body, content_type))


def parse_feedback(payload: Any) -> Feedback:
    try:
        return Feedback.model_validate(_object(payload, "feedback"))
    except ValidationError as exc:
        raise _invalid(field_errors(exc)) from None


def parse_rules(payload: Any, lists: Mapping[str, str] | None = None) -> RuleSetBody:
    """A rule set body, every expression compiled: an invalid one is named ``rules.N.expression``. With ``lists``
    (name -> kind: the stored lists) every ``@name`` must be one of them, tested by the field of its kind."""
    try:
        context = None if lists is None else {"lists": lists}
        return RuleSetBody.model_validate(_object(payload, "a rule set"), context=context)
    except ValidationError as exc:
        raise _invalid(field_errors(exc)) from None


MAX_LIST_VALUES = 100_000  # values in one list (and so in one request)
MAX_LIST_TTL_S = 10 * 365 * 86_400.0
_LIST_NAME = re.compile(ID_PATTERN)
_VALUE_PATTERNS = {kind: re.compile(COUNTRY_PATTERN if kind == "country" else ID_PATTERN) for kind in LIST_KINDS}


def _valid_values(values: list[str], kind: str) -> list[str]:
    pattern = _VALUE_PATTERNS[kind]
    for index, value in enumerate(values):
        if not pattern.match(value):
            shape = "2 capital letters (ISO 3166-1)" if kind == "country" else "1-64 chars of A-Za-z0-9_-.:"
            raise ValueError(f"values.{index}: {value[:70]!r} is not a {kind} ({shape})")
    return list(dict.fromkeys(values))


# Every kind's values are identifiers (a country's two capital letters are one too): the document says that much,
# and the validator then checks the kind's own pattern.
ListValue = Annotated[StrictStr, Field(pattern=ID_PATTERN)]
ListName = Annotated[
    str, Path(pattern=ID_PATTERN, openapi_examples={"name": {"value": "blocked_cards"}})
]  # explicit: see EXPLAIN


class ListItems(BaseModel):
    """What ``POST /api/lists/{name}/items`` takes: values of the list's kind, expiring after ``ttl_s`` if given."""

    model_config = ConfigDict(extra="ignore")

    values: list[ListValue] = Field(min_length=1, max_length=MAX_LIST_VALUES)
    ttl_s: float | None = Field(None, gt=0, le=MAX_LIST_TTL_S)

    @field_validator("values")
    @classmethod
    def _of_kind(cls, values: list[str], info: ValidationInfo) -> list[str]:
        return _valid_values(values, (info.context or {}).get("kind", "user_id"))


class ListBody(BaseModel):
    """What ``PUT /api/lists/{name}`` takes: the list's kind and all its values (replacing any before)."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal[LIST_KINDS]
    values: list[ListValue] = Field(max_length=MAX_LIST_VALUES)
    ttl_s: float | None = Field(None, gt=0, le=MAX_LIST_TTL_S)

    @field_validator("values")
    @classmethod
    def _of_kind(cls, values: list[str], info: ValidationInfo) -> list[str]:
        if "kind" not in info.data:
            return values  # the kind's own error says what is wrong
        return _valid_values(values, info.data["kind"])


LIST_BODY = _body_schema(ListBody)
LIST_ITEMS_BODY = _body_schema(ListItems)
LIST_ERRORS = {
    **KEY_ERRORS,
    **BODY_ERRORS,
    409: _error("the rule set tests the list by the field of another kind"),
    422: _error("an invalid list: each error names its field, e.g. `values.3` (a value not of the kind)"),
}
LIST_ITEM_ERRORS = {
    **KEY_ERRORS,
    404: _error("no such list, or no such value in it"),
    422: _error("a name or value that breaks its pattern, or a value not of the list's kind"),
}


def parse_list_name(name: str) -> str:
    if not _LIST_NAME.match(name):
        raise ApiError(
            422, [{"field": "name", "message": "a list name is 1-64 chars of A-Za-z0-9_-.:"}], "invalid request"
        )
    return name


def parse_list(payload: Any) -> ListBody:
    """``PUT /api/lists/{name}``'s body; each offending field named (``values.N`` for a value not of the kind)."""
    try:
        return ListBody.model_validate(_object(payload, "a list"))
    except ValidationError as exc:
        raise _invalid(_value_fields(field_errors(exc))) from None


def _value_fields(errors: list[dict[str, str]]) -> list[dict[str, str]]:
    """Name a value not of the list's kind ``values.N`` (its validator sees the whole list)."""
    named = []
    for error in errors:
        found = re.search(r"\b(values\.\d+): ", error["message"]) if error["field"] == "values" else None
        named.append({"field": found.group(1), "message": error["message"]} if found else error)
    return named


def parse_list_items(payload: Any, kind: str) -> ListItems:
    """``POST /api/lists/{name}/items``'s body, its values checked against the list's ``kind``."""
    try:
        return ListItems.model_validate(_object(payload, "the list items"), context={"kind": kind})
    except ValidationError as exc:
        raise _invalid(_value_fields(field_errors(exc))) from None


def parse_list_value(value: str, kind: str) -> str:
    try:
        return _valid_values([value], kind)[0]
    except ValueError as exc:
        raise ApiError(
            422, [{"field": "value", "message": str(exc).removeprefix("values.0: ")}], "invalid request"
        ) from None


MAX_CASES_LISTED = 500
MAX_ANALYST_CHARS = 128
MAX_NOTE_CHARS = 4000
CaseStatus = Annotated[
    Literal[STATUSES],
    Query(
        description="Which cases: `open` (the queue, highest fraud score then amount first) or `closed` (latest "
        "closed first)",
        openapi_examples={"status": {"value": "open"}},
    ),
]  # explicit: see EXPLAIN
CaseLimit = Annotated[
    int,
    Query(ge=1, le=MAX_CASES_LISTED, description="At most this many cases", openapi_examples={"limit": {"value": 50}}),
]
CaseId = Annotated[
    str,
    Path(
        pattern=CASE_ID_PATTERN,
        description="A case's id, as `GET /api/cases` lists it",
        openapi_examples={"case_id": {"value": "case-0123456789abcdef0123"}},
    ),
]


class Case(BaseModel):
    """A review decision waiting for (or decided by) an analyst: the decision, the transaction, and once closed the
    analyst's label."""

    case_id: str
    transaction_id: str
    opened_at: str
    fraud_score: float = Field(ge=0, le=1)
    risk_level: Literal[RISK_LEVELS]
    factors: list[str]
    rules: list[RuleHit]
    action: Literal[ACTIONS]
    status: Literal[STATUSES]
    user_id: str
    merchant_id: str
    amount: float
    currency: str
    timestamp: str
    reasons: list[str] | None = Field(None, description="The decision's plain-language reasons, when it had them")
    anomaly_review: bool = Field(False, description="Opened by the anomaly review lane: listed first, by anomaly score")
    anomaly_score: float | None = None
    closed_at: str | None = None
    analyst: str | None = None
    is_fraud: bool | None = Field(None, description="The analyst's label, once closed")
    note: str | None = None


class CaseQueue(BaseModel):
    cases: list[Case]
    open: int = Field(ge=0, description="How many cases are open (whatever `status` and `limit` asked for)")
    oldest_open_at: str | None = Field(description="When the longest-waiting open case opened; null with none open")


class CaseDecision(BaseModel):
    """What ``POST /api/cases/{case_id}/decision`` takes: the analyst's label for the case's transaction."""

    model_config = ConfigDict(extra="ignore")

    is_fraud: StrictBool
    analyst: Annotated[
        StrictStr,
        Field(min_length=1, max_length=MAX_ANALYST_CHARS, pattern=r"\S", description="who decided (not only spaces)"),
    ]
    note: Annotated[StrictStr | None, Field(max_length=MAX_NOTE_CHARS)] = None


CASE_DECISION_BODY = _body_schema(CaseDecision)
CASES_ERRORS = {
    422: _error("`status` is not open or closed, or `limit` not 1-500: the field named, e.g. `query.limit`")
}
CASE_DECISION_ERRORS = {
    **KEY_ERRORS,
    **BODY_ERRORS,
    404: _error("no such case; field `case_id`"),
    409: _error("the case was decided already; field `case_id`"),
    422: _error(
        "a malformed case id (`path.case_id`), or a body breaking a rule: each offending field named, e.g. `analyst`"
    ),
    503: _error("the label could not be applied; the case stays open: retry"),
}


def parse_case_decision(payload: Any) -> CaseDecision:
    try:
        return CaseDecision.model_validate(_object(payload, "a case decision"))
    except ValidationError as exc:
        raise _invalid(field_errors(exc)) from None


def rule_set_response(rule_set: RuleSet) -> dict[str, Any]:
    return {"version": rule_set.version, **rule_set.model_dump(mode="json", exclude={"version"})}


def check_api_key(settings: Settings, request: Request) -> None:
    """Admin and write endpoints need the configured key; with none configured they are open (embedded mode)."""
    if settings.api_key is None:
        return
    given = request.headers.get(API_KEY_HEADER, "")
    if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise ApiError(401, [{"field": API_KEY_HEADER, "message": "missing or wrong API key"}], "unauthorised")


def require_key_configured(settings: Settings) -> None:
    if settings.requires_api_key and not settings.api_key:
        raise ValueError(
            "FRAUD_API_KEY must be set: the API key is required outside the embedded mode "
            "(or set FRAUD_API_KEY_REQUIRED=false)"
        )


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": exc.detail, "errors": exc.errors})


def _methods_of(api: FastAPI, request: Request) -> list[str]:
    """Every method some route of the request's path takes."""
    methods: set[str] = set()
    for route in api.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(api: FastAPI) -> None:
    """Every error leaves as JSON naming fields; FastAPI's own validation errors too."""

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404 and 405 in the same shape (405 keeps its ``Allow`` header)."""
        field = "method" if exc.status_code == 405 else "path"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first route of the path only; a path may have several
            headers["Allow"] = ", ".join(_methods_of(api, request))
        return JSONResponse(
            status_code=exc.status_code,
            headers=headers,
            content={"detail": str(exc.detail), "errors": [{"field": field, "message": str(exc.detail)}]},
        )

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return error_response(_invalid(errors))
