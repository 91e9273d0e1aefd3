"""HTTP request handling for the ingress: body limits, JSON parsing, validation against the canonical schema, the
API key, and error bodies that name each offending field. Bad input is always a 4xx, never a 5xx.

Bodies are parsed by hand (not FastAPI body parameters) so NaN/Infinity reach the schema and come back naming
their field, and so the batch endpoint validates 1,000 transactions at schema speed; the OpenAPI document still
describes every body through ``openapi_extra``.
"""

from __future__ import annotations

import hmac
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from cluster.config import Settings
from cluster.schema import Identifier, Transaction, field_errors, item_field_errors, parse_timestamp
from training.policy import RISK_LEVELS
from training.rules import ACTIONS, RuleSet, RuleSetBody

MAX_BATCH = 1000
MAX_ERRORS_SHOWN = 100
API_KEY_HEADER = "X-API-Key"
TRANSACTION_LIST = TypeAdapter(list[Transaction])
EXPLAIN = Annotated[bool, Query(description=(
    "Give LOW decisions their factors too: the strongest reasons either way, each starting \"Raises risk: \" or "
    "\"Lowers risk: \". MEDIUM and HIGH decisions, and the response without it, are unchanged."))]


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
    reported_at: Annotated[datetime | None, BeforeValidator(_optional_timestamp)] = None
    merchant_id: Identifier | None = None

    def record(self) -> dict[str, Any]:
        reported = self.reported_at or datetime.now(timezone.utc)
        return {"transaction_id": self.transaction_id, "is_fraud": int(self.is_fraud),
                "reported_at": reported.isoformat(), **({"merchant_id": self.merchant_id} if self.merchant_id else {})}


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
    action: Literal[ACTIONS] = Field(description=(
        "What to do: the matched active rules' action (see the rule set's mode), else the model's "
        "(HIGH -> block, MEDIUM -> review, LOW -> allow)."))
    rules: list[RuleHit] = Field(description="The active rules that matched and decided the action.")


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: what went wrong and each offending field."""
    detail: str
    errors: list[ErrorItem]


class BatchDecisions(BaseModel):
    results: list[Decision]


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


TRANSACTION_BODY = _body_schema(Transaction.model_json_schema())
BATCH_BODY = _body_schema({"type": "object", "required": ["transactions"], "properties": {
    "transactions": {"type": "array", "maxItems": MAX_BATCH, "items": Transaction.model_json_schema()}}})
FEEDBACK_BODY = _body_schema(Feedback.model_json_schema())
RULES_BODY = _body_schema(RuleSetBody.model_json_schema())
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": f"Missing or wrong {API_KEY_HEADER} (when an API key is configured)"},
    413: {"model": ErrorBody, "description": "Body too large"},
    422: {"model": ErrorBody, "description": "Invalid body; each error names its field, e.g. rules.0.expression"},
}


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, [{"field": "body", "message": f"body exceeds {limit} bytes"}], "request too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, [{"field": "body", "message": f"body exceeds {limit} bytes"}], "request too large")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # NaN / Infinity literals: parse them so the schema can name the field that carries them
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, [{"field": "body", "message": f"not valid JSON: {exc}"}], "invalid JSON") from None


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
        raise ApiError(422, [{**e, "field": prefix.rstrip(".") or e["field"]} for e in exc.errors], exc.detail) from None


def parse_batch(payload: Any) -> list[Transaction]:
    """All transactions validated in one pydantic call; every offending item and field named."""
    items = _object(payload, "the batch").get("transactions")
    if not isinstance(items, list):
        raise _invalid([{"field": "transactions", "message": "must be a list of transactions"}])
    if not items or len(items) > MAX_BATCH:
        raise _invalid([{"field": "transactions", "message": f"must hold 1 to {MAX_BATCH} transactions, "
                                                              f"got {len(items)}"}])
    try:
        return TRANSACTION_LIST.validate_python(items)
    except ValidationError as exc:
        raise _invalid(item_field_errors(exc, "transactions.")) from None


def parse_feedback(payload: Any) -> Feedback:
    try:
        return Feedback.model_validate(_object(payload, "feedback"))
    except ValidationError as exc:
        raise _invalid(field_errors(exc)) from None


def parse_rules(payload: Any) -> RuleSetBody:
    """A rule set body, every expression compiled: an invalid one is named ``rules.N.expression``."""
    try:
        return RuleSetBody.model_validate(_object(payload, "a rule set"))
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
        raise ValueError("FRAUD_API_KEY must be set: the API key is required outside the embedded mode "
                         "(or set FRAUD_API_KEY_REQUIRED=false)")


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": exc.detail, "errors": exc.errors})


def install_error_handlers(api: FastAPI) -> None:
    """Every error leaves as JSON naming fields; FastAPI's own validation errors too."""

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return error_response(_invalid(errors))
